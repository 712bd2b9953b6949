"""A cold start of the lab: runs learn at once on the NumPy reference path while a separate
process compiles the engine, then hand over to the compiled engine between two steps.

The hand-over keeps the weights and the optimiser state exactly, the loss sequence goes on
with no gap and no repeat, and an ``engine`` event records it (in the updates and in the
run's events file). A failed compile leaves the run on the reference path with the reason,
and the compile process ends with the server.
"""

from __future__ import annotations

import json
import subprocess
import time
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from labserver import start_lab, stop_lab

from mugpt.corpus import Stream
from mugpt.engine.checkpoint import load_checkpoint, save_checkpoint
from mugpt.engine.config import RunConfig
from mugpt.engine.learner import Learner, LearnerConfig
from mugpt.mechanisms import make_mechanism
from mugpt.model import ModelConfig, OptimConfig
from mugpt.serve import worker as W

TEXT = (b"the cat sat on the mat. the dog sat on the log. " * 40)[:1600]
STREAM = "a=counting:3k,b=random:1k"


def reference_learner(mechanisms: list[Any]) -> Learner:
    return Learner(
        ModelConfig(),
        OptimConfig(name="adam", lr=0.01),
        mechanisms,
        LearnerConfig(backend="numpy", update_every=4),
    )


def test_the_hand_over_keeps_weights_and_optimiser_state_and_the_losses_go_on(
    tmp_path: Path,
) -> None:
    stream = Stream.from_bytes(TEXT)
    learner = reference_learner([make_mechanism(("grad_clip", {}))])
    learner.run(stream, max_bytes=400)
    assert learner.model.backend == "numpy" and learner.position == 400
    params = learner.model.params.flat.copy()
    opt = learner.optimizer
    m, v, t = opt.m.copy(), opt.v.copy(), opt.t
    before = learner.losses
    save_checkpoint(learner, tmp_path / "at400.npz")

    learner.use_backend("numba", reason="ready")
    # the same weights (the very buffer) and optimiser state, bit for bit
    assert learner.model.backend == "numba"
    assert np.array_equal(learner.model.params.flat, params)
    assert learner.optimizer is opt and opt.t == t == 100
    assert np.array_equal(opt.m, m) and np.array_equal(opt.v, v)
    event = learner.events[-1]
    assert event == {
        "pos": 400, "step": 100, "kind": "engine", "backend": "numba", "previous": "numpy",
        "reason": "ready",
    }  # fmt: skip

    learner.run(stream, max_bytes=800)
    losses = learner.losses
    # no gap, no repeat: one loss per byte, the first 400 unchanged
    assert losses.size == learner.position == 800
    assert np.array_equal(losses[:400], before) and np.isfinite(losses).all()
    assert learner.counters.steps == 200 and learner.optimizer.t == 200

    # the compiled continuation is the compiled engine's own run from the reference state
    twin = load_checkpoint(tmp_path / "at400.npz")
    twin.use_backend("numba")
    twin.run(stream, max_bytes=800)
    assert np.array_equal(twin.losses[400:], losses[400:])
    assert np.array_equal(twin.model.params.flat, learner.model.params.flat)
    # and the network learned on after the switch
    assert losses[700:].mean() < losses[:100].mean()


def test_a_cache_mechanism_switched_on_before_the_hand_over_keeps_its_state() -> None:
    stream = Stream.from_bytes(TEXT)
    learner = reference_learner([])
    learner.run(stream, max_bytes=200)
    learner.add_mechanism(make_mechanism(("ngram_mix", {"max_order": 3, "table_bits": 12})))
    learner.run(stream, max_bytes=400)
    mech = learner.mechanism("ngram_mix")
    state = {k: np.array(v, copy=True) for k, v in mech.state_dict().items()}
    learner.use_backend("numba")
    assert all(np.array_equal(mech.state_dict()[k], v) for k, v in state.items())
    learner.run(stream, max_bytes=800)
    assert learner.losses.size == 800
    # the compiled loop went on from the counts the reference path had made
    after = mech.state_dict()
    assert any(not np.array_equal(after[k], v) for k, v in state.items())
    kinds = [e["kind"] for e in learner.events]
    assert kinds.index("mechanism") < kinds.index("engine")


def report(path: Path, state: str, **extra: Any) -> None:
    now = time.time()
    body = {"state": state, "stage": state, "step": 1, "steps": 3, "started": now,
            "updated": now, **extra}  # fmt: skip
    path.write_text(json.dumps(body))


@pytest.fixture()
def lab_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a lab worker: a compile report file (still compiling)."""
    status = tmp_path / "warm.json"
    report(status, "compiling")
    monkeypatch.setenv(W.WARM_STATUS_ENV, str(status))
    monkeypatch.delenv(W.WARM_OWNER_ENV, raising=False)
    return status


def new_worker(tmp_path: Path, config: dict[str, Any] | None = None) -> tuple[Any, Any]:
    commands, _keep = Pipe(duplex=False)
    inbox, out = Pipe(duplex=False)
    cfg = RunConfig.from_dict({"stream": STREAM, **(config or {})})
    spec = {"config": cfg.to_dict(), "run_dir": str(tmp_path / "run"), "check_messages": True}
    worker = W.RunWorker(commands, out, spec)
    worker._keep = _keep  # the command pipe stays open while the worker lives
    return worker, inbox


def messages(inbox: Any) -> list[dict[str, Any]]:
    out = []
    while inbox.poll(0):
        out.append(inbox.recv())
    return out


def test_a_lab_run_learns_on_the_reference_path_then_hands_over_between_steps(
    tmp_path: Path, lab_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker, inbox = new_worker(tmp_path)
    ready = inbox.recv()
    assert ready["type"] == "ready" and ready["engine"]["state"] == "waiting"
    assert worker.learner.model.backend == "numpy"
    worker.learn_slice()
    worker.apply(1, {"type": "mechanism", "name": "grad_clip", "enabled": True})
    worker.learn_slice()
    worker.publish()
    early = [m for m in messages(inbox) if m["type"] == "update"]
    assert early[-1]["engine"] == {
        "backend": "numpy", "state": "waiting",
        "detail": "learning on the NumPy reference path while the engine compiles",
    }  # fmt: skip
    assert not worker.hand_over()  # still compiling: nothing changes
    at = worker.pos
    assert at > 0

    report(lab_env, "ready")
    params = worker.learner.model.params.flat.copy()
    m = worker.learner.optimizer.m.copy()
    deadline = time.monotonic() + 600
    while not worker.hand_over():  # grad_clip came after its kernels were asked for: again
        assert worker.prep is not None and worker.prep.error is None, worker.prep.error
        assert time.monotonic() < deadline, "the compiled engine never got ready"
        worker.prep.finished.wait(0.5)
    assert ("grad_clip", True) in worker.prep.signature[2]
    assert worker.learner.model.backend == "numba" and worker.engine == "compiled"
    assert np.array_equal(worker.learner.model.params.flat, params)
    assert np.array_equal(worker.learner.optimizer.m, m)
    assert worker.learner.mechanism("grad_clip").enabled
    assert f"switched to the compiled engine at byte {at:,}" in capsys.readouterr().out

    worker.learn_slice()
    worker.publish()
    update = [m for m in messages(inbox) if m["type"] == "update"][-1]
    assert update["engine"]["state"] == "compiled" and update["engine"]["backend"] == "numba"
    events = [e for e in update["events"] if e["kind"] == "engine"]
    assert events and events[0]["pos"] == at and events[0]["previous"] == "numpy"
    # the bins of the update start where the reference path stopped: no gap, no repeat
    assert update["loss"]["x"][0] == at
    assert worker.pos > at and worker.learner.losses.size == worker.pos
    paths = worker.write_files(("all",))
    saved = json.loads(Path(paths["events.json"]).read_text())
    assert [e["pos"] for e in saved if e["kind"] == "engine"] == [at]


def test_a_failed_compile_leaves_the_run_on_the_reference_path_and_says_why(
    tmp_path: Path, lab_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker, inbox = new_worker(tmp_path)
    report(lab_env, "failed", error="RuntimeError: no compiler today")
    assert worker.prep is not None and worker.prep.finished.wait(10)
    assert not worker.hand_over()
    assert worker.engine == "reference" and worker.learner.model.backend == "numpy"
    assert "no compiler today" in worker.engine_detail
    assert "stays on the NumPy reference path" in capsys.readouterr().out
    start = worker.pos
    worker.learn_slice()
    assert worker.pos > start  # it learns on
    worker.publish()
    update = [m for m in messages(inbox) if m["type"] == "update"][-1]
    assert update["engine"]["state"] == "reference"
    assert "no compiler today" in update["engine"]["detail"]


def test_a_run_started_once_the_engine_is_ready_starts_compiled(
    tmp_path: Path, lab_env: Path
) -> None:
    report(lab_env, "ready")
    worker, inbox = new_worker(tmp_path)
    ready = inbox.recv()
    assert worker.prep is not None and worker.prep.finished.wait(600)
    if ready["engine"]["state"] == "compiled":  # its kernels loaded within PREPARE_WAIT
        assert worker.learner.model.backend == "numba"
    else:  # a busy machine: it started on the reference path and hands over at once
        assert worker.hand_over()
    assert worker.engine == "compiled"


def test_the_compile_estimate_follows_the_kernels_compiled() -> None:
    assert W.compile_estimate(0, 0.0) == W.TYPICAL_COMPILE_S
    # 56 kernels in 34 s: the loop's own kernel (a third of the time) is still to come
    assert W.compile_estimate(56, 34.0) == pytest.approx(50.0)
    assert W.compile_estimate(57, 50.0) == pytest.approx(50.0)
    assert W.compile_estimate(80, 70.0) == 70.0  # more kernels than measured: done when done


def serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    return start_lab(tmp_path / "runs", "tok", env)


def status(url: str) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(url + "api/status", headers={"Authorization": "token tok"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def compilers_of(pid: int) -> list[int]:
    """Child processes of ``pid`` that run the compile process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"compile_main" in cmdline:
            found.append(int(entry.name))
    return found


stop = stop_lab


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_compile_process_ends_with_the_server(tmp_path: Path) -> None:
    proc, url, _log = serve(tmp_path, {"NUMBA_CACHE_DIR": str(tmp_path / "numba")})
    try:
        deadline = time.monotonic() + 30
        while not (pids := compilers_of(proc.pid)):
            assert time.monotonic() < deadline, "no compile process started"
            time.sleep(0.2)
        engine = status(url)["engine"]
        assert engine["state"] in ("starting", "compiling")  # an empty cache: a long compile
    finally:
        stop(proc)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
        assert time.monotonic() < deadline, "the compile process outlived the server"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_failed_compile_is_reported_by_the_status_and_the_terminal(tmp_path: Path) -> None:
    proc, url, log = serve(tmp_path, {"MUGPT_SERVE_FAIL_COMPILE": "1"})
    try:
        deadline = time.monotonic() + 60
        while (engine := status(url)["engine"])["state"] != "failed":
            assert time.monotonic() < deadline, engine
            time.sleep(0.2)
        assert "MUGPT_SERVE_FAIL_COMPILE" in engine["error"]
        message = status(url)["message"]
        assert "failed" in message and "reference path" in message
        deadline = time.monotonic() + 10
        while "runs stay on the NumPy reference path" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        stop(proc)


def test_kernels_compiled_after_ready_keep_the_report_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compile process reports ``ready`` and then takes one more step, whose kernels may
    still compile on a fresh machine: those must not turn the report back to ``compiling``
    (the server then reads a process that ended without a verdict as a failed compile, and
    no run ever hands over)."""
    report = tmp_path / "warm.json"
    monkeypatch.setenv(W.WARM_STATUS_ENV, str(report))
    monkeypatch.setenv(W.WARM_OWNER_ENV, "")
    progress = W._Progress(time.time(), report=True)
    progress.stage(0)
    progress.kernel_done("run_steps")
    assert W.read_warm_report()["state"] == "compiling"  # type: ignore[index]
    assert W.read_warm_report()["kernels"] == 1  # type: ignore[index]
    progress.stage(len(W.WARM_STAGES), "ready", seconds=12.5)
    progress.kernel_done("step_kernel_of_a_python_mechanism")
    final = W.read_warm_report()
    assert final is not None
    assert final["state"] == "ready" and final["seconds"] == 12.5 and final["kernels"] == 1
