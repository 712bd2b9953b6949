"""The typed wire protocol: every message a page receives matches its pydantic model, the
schema is published, and the server says what it is doing before any run has started.

The worker is started with ``MUGPT_SERVE_CHECK_MESSAGES=1``, so each message it builds is
validated against its model where it is built; the page's side is checked here, message by
message, on a live run of each kind (the seed model, and the ``strong`` preset's mixture).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mugpt.serve import ServeSettings, create_app
from mugpt.serve.guard import Access
from mugpt.serve.protocol import ExpertsView, ModelView, UpdateMessage, check_message

TOKEN = "test-token"
BASE = "http://127.0.0.1:8000"
WS = "ws://127.0.0.1:8000"
STREAM = "a=counting:3k,b=random:1k"
WAIT = 600.0  # an upper bound only: a cold compile on a loaded machine took over 4 minutes


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    os.environ["MUGPT_SERVE_CHECK_MESSAGES"] = "1"
    settings = ServeSettings(max_runs=3, runs_dir=tmp_path_factory.mktemp("runs"), publish_hz=20)
    app = create_app(settings, access=Access.local(token=TOKEN))
    with TestClient(app, base_url=BASE, headers={"Authorization": f"token {TOKEN}"}) as c:
        yield c
    os.environ.pop("MUGPT_SERVE_CHECK_MESSAGES", None)


def collect(
    client: TestClient,
    config: dict[str, Any],
    want: int = 12,
    then: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Messages of a new run's socket until ``want`` updates (or a failure) came; ``then``
    gets the run's id before the run is deleted."""
    body = {"config": {"stream": STREAM, **config}, "max_bytes_per_s": 2000}
    r = client.post("/api/runs", json=body)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT
    try:
        with client.websocket_connect(f"{WS}/ws/runs/{run_id}") as ws:
            while sum(m["type"] == "update" for m in messages) < want:
                assert time.monotonic() < deadline, "the run sent too few updates"
                msg = ws.receive_json()
                messages.append(msg)
                assert msg["type"] != "state" or msg["state"] != "failed", msg
            ws.send_json({"type": "pause", "request_id": "p1"})
            ws.send_json({"type": "jump"})
            for _ in range(200):
                msg = ws.receive_json()
                messages.append(msg)
                if msg["type"] == "reply" and msg.get("request_id") == "p1":
                    break
        if then is not None:
            then(run_id)
    finally:
        client.delete(f"/api/runs/{run_id}")
    return messages


def test_every_message_of_a_seed_run_matches_its_model(client: TestClient) -> None:
    messages = collect(client, {})
    kinds = {m["type"] for m in messages}
    assert {"hello", "update", "reply", "error"} <= kinds
    for msg in messages:
        check_message(msg)  # raises on any field the models do not describe
    hello = next(m for m in messages if m["type"] == "hello")
    arch = hello["run"]["architecture"]
    assert arch["params"] == hello["run"]["params"]
    assert [p["id"] for p in arch["parts"]] == ["embed", "block0", "ln_f", "head"]
    views = [m["model_view"] for m in messages if m.get("model_view")]
    assert views, "the diagram's live numbers come with the attention maps"
    view = ModelView.model_validate(views[-1])
    assert len(view.layers) == 1 and len(view.layers[0].heads) == 4
    assert len(view.stream) == 3  # after the embedding, the attention and the MLP
    assert not any("experts" in m for m in messages), "no mixture, no experts view"


def test_a_strong_run_names_its_experts_and_the_winner(client: TestClient) -> None:
    reconnected: list[dict[str, Any]] = []

    def reconnect(run_id: str) -> None:
        with client.websocket_connect(f"{WS}/ws/runs/{run_id}") as ws:
            reconnected.append(ws.receive_json())

    messages = collect(client, {"preset": "strong", "model": {"n_layers": 2}}, 8, reconnect)
    for msg in messages:
        check_message(msg)
    updates = [UpdateMessage.model_validate(m) for m in messages if m["type"] == "update"]
    views = [u.experts for u in updates if u.experts is not None and u.experts.p is not None]
    assert views, "a run mixing count models shows its experts"
    last: ExpertsView = views[-1]
    assert last.names[:3] == ["network", "order 0", "order 1"]
    assert len(last.names) == 12  # the network and orders 0..10 of the strong preset
    assert last.p is not None and len(last.p) == len(last.weights) == 12
    assert last.winner is not None and last.p[last.winner] == max(last.p)
    assert 0 < (last.mixed or 0) <= 1
    diagram = [m["model_view"] for m in messages if m.get("model_view")]
    assert diagram and len(diagram[-1]["layers"]) == 2  # one block per layer
    assert len(last.step) >= 1 and last.step[0][0] == last.pos  # the next step's winners
    # a page that connects later draws the diagram and the experts from its hello at once
    hello = reconnected[0]
    check_message(hello)
    latest = hello["history"]["latest"]
    ModelView.model_validate(latest["model_view"])
    assert ExpertsView.model_validate(latest["experts"]).names == last.names


def test_the_schema_is_published_with_the_api(client: TestClient) -> None:
    r = client.get("/api/protocol.json")
    assert r.status_code == 200
    schema = r.json()
    mapping = schema["server_messages"]["discriminator"]["mapping"]
    assert set(mapping) == {"hello", "update", "reply", "error", "state"}
    assert set(schema["commands"]["discriminator"]["mapping"]) >= {"pause", "sample", "mechanism"}
    assert "ExpertsView" in schema["server_messages"]["$defs"]
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/api/protocol.json", "/api/status", "/api/presets"):
        assert {"401", "403"} <= set(paths[route]["get"]["responses"]), route
    assert client.get("/api/protocol.json", headers={"Authorization": ""}).status_code == 401


def test_the_status_says_what_the_engine_is_doing_before_any_run(client: TestClient) -> None:
    status = client.get("/api/status").json()
    assert status["engine"]["state"] in ("starting", "compiling", "ready", "failed", "unknown")
    assert status["message"]
    # while it compiles, the status says so and its clock runs; how long a cold compile takes
    # depends on the machine and its load, so the test stops watching after a while
    deadline = time.monotonic() + 60.0
    first_elapsed = None
    while status["engine"]["state"] in ("starting", "compiling") and time.monotonic() < deadline:
        assert status["engine"]["elapsed_s"] is not None
        assert "engine" in status["message"]
        first_elapsed = (
            first_elapsed if first_elapsed is not None else status["engine"]["elapsed_s"]
        )
        time.sleep(0.5)
        status = client.get("/api/status").json()
    if status["engine"]["state"] in ("starting", "compiling"):
        assert first_elapsed is not None and status["engine"]["elapsed_s"] > first_elapsed
    if status["engine"]["state"] == "ready":
        assert status["engine"]["step"] == status["engine"]["steps"]
        assert status["engine"]["seconds"] >= 0


def test_presets_are_listed_for_the_race_button(client: TestClient) -> None:
    presets = {p["name"]: p for p in client.get("/api/presets").json()}
    assert {"seed", "strong"} <= set(presets)
    assert presets["strong"]["mechanisms"] == ["ngram_mix"]
    assert presets["strong"]["params"] > presets["seed"]["params"]


def test_the_worker_dispatches_on_command_classes(tmp_path: Any) -> None:
    from multiprocessing import Pipe

    from mugpt.engine.config import RunConfig
    from mugpt.serve.protocol import Export, StopWorker, parse_worker_command
    from mugpt.serve.worker import RunWorker

    assert isinstance(parse_worker_command({"type": "export", "what": "log"}), Export)
    assert parse_worker_command({"type": "stop"}) == StopWorker(type="stop", write=True)
    commands, _ = Pipe(duplex=False)
    inbox, out = Pipe(duplex=False)
    spec = {"config": RunConfig.from_dict({"stream": STREAM}).to_dict(), "run_dir": str(tmp_path)}
    worker = RunWorker(commands, out, {**spec, "check_messages": True})
    assert inbox.recv()["type"] == "ready"
    worker.apply(1, {"type": "step", "bytes": 0})
    bad = inbox.recv()
    assert bad["ok"] is False and "bytes" in bad["error"] and bad["rid"] == 1
    worker.apply(2, {"type": "export", "what": "everything"})
    assert "export.what" in inbox.recv()["error"]
    worker.apply(3, {"type": "step", "bytes": 5})
    assert inbox.recv()["ok"] is True and worker.state == "paused" and worker.step_budget == 5
    worker.apply(4, {"type": "throttle", "max_bytes_per_s": 100})
    assert inbox.recv()["ok"] is True and worker.throttle == 100.0
    worker.apply(5, {"type": "stop", "write": False})
    assert inbox.recv()["result"] == {"paths": {}} and worker.stopping


def test_a_slow_first_step_is_announced_in_the_terminal(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from multiprocessing import Pipe

    from mugpt.engine.config import RunConfig
    from mugpt.serve import worker as W

    monkeypatch.setattr(W, "FIRST_STEP_NOTICE", 0.0)  # any first step counts as slow
    commands, _ = Pipe(duplex=False)
    _inbox, out = Pipe(duplex=False)  # kept open: the worker writes to it
    spec = {"config": RunConfig.from_dict({"stream": STREAM}).to_dict(), "run_dir": str(tmp_path)}
    worker = W.RunWorker(commands, out, spec)
    worker.learn_slice()
    assert worker.pos > 0
    printed = capsys.readouterr().out
    assert f"run {tmp_path.name}: compiling the kernels" in printed
    assert re.search(rf"run {tmp_path.name}: learning after \d+\.\d s", printed)
    worker.learn_slice()  # announced once, not at every slice
    assert "compiling" not in capsys.readouterr().out


def test_baselines_are_computed_on_a_schedule_from_near_byte_0(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gzip/xz/PPMd points come at n = 1,000, 3,000, 5,000, 7,500 … of the stream, whatever
    the run has read when it is asked (a fast engine may be far ahead): the curves start near
    byte 0, a pending point is never replaced by the next, and the run's end takes all."""
    from multiprocessing import Pipe

    from mugpt.engine.baselines import baseline_bpb
    from mugpt.engine.config import RunConfig
    from mugpt.serve.worker import RunWorker

    commands, _ = Pipe(duplex=False)
    _inbox, out = Pipe(duplex=False)
    cfg = RunConfig.from_dict({"stream": "a=counting:6k,b=random:3k"}).to_dict()
    worker = RunWorker(commands, out, {"config": cfg, "run_dir": str(tmp_path)})
    # as if the first steps had read this much before a status message
    monkeypatch.setattr(RunWorker, "pos", property(lambda self: 8_000))

    def point(force: bool = False) -> dict[str, Any] | None:
        worker._start_baselines(force=force)
        if worker.baseline_thread is not None:
            worker.baseline_thread.join()
        return worker.baseline_result

    first = point()
    assert first is not None and first["n"] == 1_000
    assert first["bpb"] == baseline_bpb(worker.stream.data[:1_000])
    assert point() is first  # not yet sent: the next point waits
    seen = []
    while (got := point()) is not None:
        seen.append(got["n"])
        worker.baseline_result = None  # sent
    assert seen == [1_000, 3_000, 5_000, 7_500]
    last = point(force=True)
    assert last is not None and last["n"] == 8_000


def test_a_mixture_over_sub_streams_sends_no_experts(client: TestClient) -> None:
    config = {"preset": "strong", "learner": {"batch_streams": 2, "substream_bytes": 256}}
    messages = collect(client, config, want=6)
    for msg in messages:
        check_message(msg)
    assert not any("experts" in m for m in messages), "B windows per step: not drawn"
    assert any("model_view" in m for m in messages)
