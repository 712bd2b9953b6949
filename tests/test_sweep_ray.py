"""Sweeps on the Ray backend: the same runs and results as the local backend, faults recorded.

One private Ray instance for the whole module (Ray takes seconds to start), listening on the
loopback interface only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Bind Ray's services to 127.0.0.1; read when ray is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

from mugpt.sweep import SweepSpec, execute_run, load_sweep_results, run_sweep  # noqa: E402

STREAM = "a=counting:500,b=repeat:500"


def quiet(_line: str) -> None:
    return None


def dying_run(**kwargs: Any) -> dict[str, Any]:
    """A run function whose worker dies for seed 1 (as if killed or crashed)."""
    if kwargs["run_config"]["seed"] == 1:
        os._exit(7)
    return execute_run(**kwargs)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    from ray import cloudpickle

    # Ray's workers cannot import this test module; ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        nodes = ray.nodes()
        assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes), nodes
        yield
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_ray_sweep_gives_the_local_results_and_records_faults(
    local_ray: None, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    spec = SweepSpec.from_dict(
        {
            "seeds": 2,
            "budget": 700,
            "base": {"learner": {"update_every": 4}},
            "grid": {"stream": {"good": STREAM, "empty": f"file:{empty}"}},
        }
    )
    out = tmp_path / "sweep"
    result = run_sweep(spec, out, backend="ray", runner=dying_run, echo=quiet)
    assert result.counts == {"done": 1, "failed": 3}
    rows = {(r["labels"]["stream"], r["seed"]): r for r in load_sweep_results(out)}
    done = rows[("good", 0)]
    assert done["status"] == "done" and done["backend"] == "ray" and done["bytes"] == 700
    assert rows[("good", 1)]["error"].startswith("WorkerDied")
    assert rows[("empty", 0)]["error"].startswith("StreamError: phase 'empty.txt'")
    # the same run in this process (as the local backend runs it) gives the same losses
    direct = execute_run(done["config"], tmp_path / "direct", max_bytes=700, baselines=False)
    assert direct["bpb"] == done["bpb"] and direct["run_id"] == done["run_id"]
    assert (out / "results.md").is_file() and (out / "pareto.png").is_file()
    # re-running on Ray with the default run function finishes the failed good run only
    again = run_sweep(spec, out, backend="ray", retry_failed=True, echo=quiet)
    assert again.ran == 3 and again.counts == {"done": 2, "failed": 2}


def test_joining_a_cluster_that_is_not_running_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from mugpt.errors import ConfigError
    from mugpt.sweep.backends import make_backend

    def no_cluster(*_args: Any, **_kwargs: Any) -> None:  # what ray.init says when none runs
        raise ConnectionError("Could not find any running Ray instance. Please specify the one "
                              "to connect to by setting `--address` flag or `RAY_ADDRESS`")  # fmt: skip

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ConfigError) as err:
        make_backend("ray", address="auto")
    message = str(err.value)
    assert message.startswith("no Ray cluster answers at --address auto: start one first")
    assert "ray start --head" in message and "drop --address" in message
