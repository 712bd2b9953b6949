"""The lab server's HTTP and WebSocket API: runs in worker processes, commands, limits, crashes.

Runs here learn a small phased stream so that workers start in about a second; the losses the
lab records are checked against a straight ``Learner.run`` of the same configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mugpt.cli.common import add_run_config_args, run_config_from_args
from mugpt.corpus import build_stream
from mugpt.engine.config import RunConfig
from mugpt.serve import ServeSettings, create_app
from mugpt.serve.guard import Access
from mugpt.serve.history import RunHistory, empty_loss, fold_loss, history_from_losses
from mugpt.serve.protocol import CommandError, clean, parse_command
from mugpt.serve.runs import Client, cli_command

SMALL = "a=counting:3k,b=random:1k,a=counting:2k"
TOKEN = "test-token"
BASE = "http://127.0.0.1:8000"  # a name the lab answers to (TestClient's own is refused)
WS = "ws://127.0.0.1:8000"


def lab(app: Any) -> TestClient:
    """A client of ``app`` that sends the token, as the page and scripts do."""
    return TestClient(app, base_url=BASE, headers={"Authorization": f"token {TOKEN}"})


def lab_app(settings: ServeSettings, **kwargs: Any) -> Any:
    return create_app(settings, access=Access.local(token=TOKEN), **kwargs)


WAIT = 240.0  # an upper bound only: a cold numba cache compiles for a minute or more


def wait_for(fetch: Callable[[], Any], ok: Callable[[Any], bool], what: str) -> Any:
    """Polls until ``ok(fetch())``; fails naming what it waited for (not a timing test)."""
    deadline = time.monotonic() + WAIT
    value = fetch()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last value: {value}")
        time.sleep(0.05)
        value = fetch()
    return value


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = ServeSettings(
        max_runs=3, runs_dir=tmp_path_factory.mktemp("runs"), publish_hz=20, max_sample_bytes=500
    )
    data = tmp_path_factory.getbasetemp()  # every test's tmp_path may be read
    with lab(lab_app(settings, data_dirs=[data])) as c:
        # runs compare their losses with a straight compiled run: they start once the compiled
        # engine is ready (before, a run learns on the NumPy reference path, float32-close)
        wait_for(
            lambda: c.get("/api/status").json()["engine"]["state"],
            lambda state: state in ("ready", "failed"),
            "the compiled engine",
        )
        yield c


def info(client: TestClient, run_id: str) -> dict[str, Any]:
    r = client.get(f"/api/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def start(client: TestClient, paused: bool = True, **config: Any) -> dict[str, Any]:
    r = client.post("/api/runs", json={"config": {"stream": SMALL, **config}, "paused": paused})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    return wait_for(
        lambda: info(client, run_id),
        lambda i: i["state"] != "starting" and i["total"],
        f"run {run_id} to start",
    )


def command(client: TestClient, run_id: str, **cmd: Any) -> Any:
    return client.post(f"/api/runs/{run_id}/commands", json=cmd)


@pytest.fixture()
def cleanup(client: TestClient) -> Iterator[list[str]]:
    """Runs a test creates are deleted afterwards, so the run limit never bites."""
    ids: list[str] = []
    yield ids
    for run_id in ids:
        client.delete(f"/api/runs/{run_id}")


# ---------------------------------------------------------------------------- protocol


def test_commands_are_validated_with_messages_that_say_what_to_fix() -> None:
    assert parse_command({"type": "step", "bytes": 5}).bytes == 5
    assert parse_command('{"type": "throttle", "max_bytes_per_s": null}').max_bytes_per_s is None
    cases = {
        "not json": "must be a JSON object",
        "[1, 2]": "must be a JSON object",
        '{"bytes": 3}': 'has no "type"',
        '{"type": "fly"}': "unknown command type 'fly'; valid types: pause",
        '{"type": "step", "bytes": 0}': "bytes: Input should be greater than or equal to 1",
        '{"type": "set_lr", "lr": -1}': "lr: Input should be greater than 0",
        '{"type": "pause", "extra": 1}': "extra: Extra inputs are not permitted",
        '{"type": "sample", "top_p": 2}': "top_p: Input should be less than or equal to 1",
    }
    for text, message in cases.items():
        with pytest.raises(CommandError, match=message.replace("(", r"\(")):
            parse_command(text)


def test_messages_are_json_safe() -> None:
    message = clean({"a": np.float32(0.5), "b": [float("inf"), np.arange(2)], 3: np.bool_(True)})
    assert message == {"a": 0.5, "b": [None, [0, 1]], "3": True}
    json.dumps(message, allow_nan=False)


def test_history_merges_bins_without_losing_bytes_or_mass() -> None:
    rng = np.random.default_rng(0)
    history = RunHistory()
    total_n, total_bits, x = 0, 0.0, 0
    for _ in range(300):  # 300 updates of 20 bins: past the 4000-bin cap
        n = rng.integers(1, 5, size=20).tolist()
        mean = rng.uniform(0, 8, size=20).tolist()
        xs = (x + np.concatenate(([0], np.cumsum(n)[:-1]))).tolist()
        x += sum(n)
        zeros = [0] * 20
        loss = {"x": xs, "n": n, "mean": mean, "ema": mean, "skips": zeros, "replays": [1] * 20}
        history.apply({"type": "update", "pos": x, "bpb": 1.0, "loss": loss})
        total_n += sum(n)
        total_bits += float(np.dot(n, mean))
    loss = history.snapshot()["loss"]
    assert len(loss["x"]) <= 4000
    assert sum(loss["n"]) == total_n == x
    assert np.dot(loss["n"], loss["mean"]) == pytest.approx(total_bits)
    assert sum(loss["replays"]) == 300 * 20
    assert loss["x"] == sorted(loss["x"]) and loss["x"][0] == 0
    merged = empty_loss()
    fold_loss(merged, {"x": [0, 3], "n": [3, 1], "mean": [2.0, 6.0], "ema": [1, 2],
                       "skips": [1, 0], "replays": [0, 0]}, cap=1)  # fmt: skip
    assert merged == {"x": [0], "n": [4], "mean": [3.0], "min": [2.0], "max": [6.0], "ema": [2],
                      "skips": [1], "replays": [0], "width": 4}  # fmt: skip


def test_history_of_a_finished_run_keeps_its_numbers() -> None:
    losses = np.linspace(8, 1, 10_001)
    h = history_from_losses(losses, np.full(losses.size, 97, np.uint8), {"baselines": {"xz": 2}})
    snap = h.snapshot()
    assert sum(snap["loss"]["n"]) == losses.size
    assert np.dot(snap["loss"]["n"], snap["loss"]["mean"]) == pytest.approx(losses.sum(), rel=1e-4)
    assert snap["bpb"]["y"][-1] == pytest.approx(losses.mean(), abs=1e-4)
    assert snap["latest"]["pos"] == losses.size and snap["baselines"][0]["n"] == losses.size


def test_a_page_that_falls_behind_gets_the_whole_picture_again() -> None:
    async def scenario() -> list[str]:
        client = Client()
        for i in range(client.queue.maxsize):
            client.offer(f"update {i}", lambda: "hello")
        client.offer("one too many", lambda: "hello")
        return [client.queue.get_nowait() for _ in range(client.queue.qsize())]

    assert asyncio.run(scenario()) == ["hello"]


def test_cli_command_repeats_the_configuration() -> None:
    cfg = RunConfig.from_dict(
        {
            "model": {"d_model": 32, "n_heads": 8, "context": 64},
            "optim": {"lr": 0.003},
            "learner": {"update_every": 4, "freeze_network": True},
            "mechanisms": [
                {"name": "grad_clip", "max_norm": 0.25},
                {"name": "replay", "enabled": False},
            ],
            "stream": "a=text:hello\\, world,b=counting:1k",
            "seed": 7,
        }
    )
    text = cli_command(cfg)
    assert text.startswith("mugpt run --stream ") and "replay" not in text
    parser = argparse.ArgumentParser()
    parser.add_argument("--stream")
    add_run_config_args(parser)
    import shlex

    args = parser.parse_args(shlex.split(text)[2:])
    again = run_config_from_args(args)
    assert args.stream == cfg.stream
    assert again.model == cfg.model and again.optim == cfg.optim and again.learner == cfg.learner
    assert again.mechanisms == [{"name": "grad_clip", "max_norm": 0.25}]


def test_cli_command_of_a_preset_names_it_and_repeats_the_run() -> None:
    import shlex

    cfg = RunConfig.from_dict({"preset": "strong", "model": {"n_layers": 2}, "seed": 5})
    text = cli_command(cfg)
    assert text.startswith("mugpt run --preset strong ")
    parser = argparse.ArgumentParser()
    add_run_config_args(parser)
    again = run_config_from_args(parser.parse_args(shlex.split(text)[2:]))
    assert again.model == cfg.model and again.optim == cfg.optim and again.learner == cfg.learner
    assert [m["name"] for m in again.mechanisms] == ["ngram_mix"]
    assert again.build_mechanisms()[0].config == cfg.build_mechanisms()[0].config


def test_settings_come_from_flags_and_environment() -> None:
    s = ServeSettings.from_env({"MUGPT_SERVE_MAX_RUNS": "2"}, max_params=5000)
    assert (s.max_runs, s.max_params) == (2, 5000)
    from mugpt.errors import ConfigError

    with pytest.raises(ConfigError, match="publish_hz"):
        ServeSettings.from_env({}, publish_hz=50)


def test_port_in_use_is_a_clear_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from mugpt.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--no-browser", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port 0" in err


# ---------------------------------------------------------------------------- the API


def test_api_describes_streams_mechanisms_and_itself(client: TestClient) -> None:
    streams = client.get("/api/streams").json()
    usages = [s["usage"] for s in streams["sources"]]
    assert "stdlib-prose" in usages and "file:PATH" in usages and "stdin" not in usages
    assert streams["default_spec"].startswith("prose=stdlib-prose")
    mechs = client.get("/api/mechanisms").json()
    assert mechs, "no mechanisms installed"
    for m in mechs:
        assert m["schema"]["type"] == "object" and isinstance(m["strict_online"], bool)
    assert any(not m["strict_online"] for m in mechs if m["name"] == "replay")
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/runs", "/api/runs/{run_id}/commands", "/api/runs/{run_id}/export/{what}",
                 "/api/streams", "/api/mechanisms", "/api/uploads", "/api/runs/open"):  # fmt: skip
        assert path in paths
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="loss-chart"' in page.text
    js = client.get("/vendor/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000


def test_the_lab_learns_exactly_what_a_straight_run_learns(
    client: TestClient, cleanup: list[str]
) -> None:
    run = start(client, paused=True)
    cleanup.append(run["id"])
    assert run["state"] == "paused" and run["total"] == 6000 and run["params"] == 11856
    assert [p["label"] for p in run["stream"]["phases"]] == ["a", "b", "a"]
    r = command(client, run["id"], type="step", bytes=150)
    assert r.status_code == 200 and r.json()["ok"]
    done = wait_for(lambda: info(client, run["id"]), lambda i: i["pos"] == 150, "150 bytes")
    assert done["state"] == "paused"
    log = client.get(f"/api/runs/{run['id']}/export/log")
    assert log.status_code == 200 and log.headers["content-type"].startswith("text/csv")
    lines = log.text.splitlines()
    assert lines[0] == "index,byte,phase,loss_bits" and len(lines) == 151
    lab = np.array([float(line.split(",")[3]) for line in lines[1:]])
    straight = RunConfig().build_learner().run(build_stream(SMALL), max_bytes=150).losses
    np.testing.assert_allclose(lab, straight, atol=1e-6)
    assert info(client, run["id"])["bpb"] == pytest.approx(straight.mean(), abs=1e-9)
    history = client.get(f"/api/runs/{run['id']}/history").json()
    assert sum(history["loss"]["n"]) == 150


def test_substreams_in_the_lab_learn_what_a_straight_run_learns(
    client: TestClient, cleanup: list[str]
) -> None:
    """B = 3 sub-streams in blocks of 3·100 bytes: the lab's slices end on block boundaries,
    so its losses are those of one straight call."""
    learner = {"batch_streams": 3, "substream_bytes": 100, "update_every": 4}
    run = start(client, paused=True, learner=learner)
    cleanup.append(run["id"])
    assert command(client, run["id"], type="step", bytes=500).json()["ok"]
    # a step is rounded up to whole blocks
    wait_for(lambda: info(client, run["id"]), lambda i: i["pos"] == 600, "two blocks")
    lines = client.get(f"/api/runs/{run['id']}/export/log").text.splitlines()[1:]
    lab = np.array([float(line.split(",")[3]) for line in lines])
    cfg = RunConfig.from_dict({"learner": learner})
    straight = cfg.build_learner().run(build_stream(SMALL), max_bytes=600).losses
    assert lab.size == 600
    np.testing.assert_allclose(lab, straight, atol=1e-6)
    assert "--batch-streams 3 --substream-bytes 100" in info(client, run["id"])["cli"]


def test_commands_change_the_run_and_are_logged(client: TestClient, cleanup: list[str]) -> None:
    run = start(client, paused=True)
    run_id = run["id"]
    cleanup.append(run_id)
    r = command(client, run_id, type="mechanism", name="grad_clip", enabled=True,
                params={"max_norm": 0.3})  # fmt: skip
    assert r.status_code == 200, r.text
    listed = {m["name"]: m for m in r.json()["result"]["mechanisms"]}
    assert listed["grad_clip"]["enabled"] and listed["grad_clip"]["config"]["max_norm"] == 0.3
    assert command(client, run_id, type="set_lr", lr=0.004).status_code == 200
    command(client, run_id, type="step", bytes=20)
    now = wait_for(lambda: info(client, run_id), lambda i: i["pos"] == 20, "20 bytes")
    assert now["config"]["optim"]["lr"] == 0.004
    assert now["config"]["mechanisms"][0]["name"] == "grad_clip"
    assert "--lr 0.004" in now["cli"] and "--mech grad_clip:max_norm=0.3" in now["cli"]
    events = client.get(f"/api/runs/{run_id}/history").json()["events"]
    kinds = [(e["kind"], e.get("name")) for e in events]
    assert ("mechanism", "grad_clip") in kinds and ("set_lr", None) in kinds
    bad = command(client, run_id, type="mechanism", name="teleport", enabled=True)
    assert bad.status_code == 422 and "unknown mechanism 'teleport'" in bad.json()["detail"]
    bad = command(client, run_id, type="mechanism", name="grad_clip", params={"max_norm": -1})
    assert bad.status_code == 422 and "max_norm" in bad.json()["detail"]
    # the sample continues the stream; the same seed on the same model gives the same text
    one = command(client, run_id, type="sample", prompt="12", length=40, seed=3).json()["result"]
    two = command(client, run_id, type="sample", prompt="12", length=40, seed=3).json()["result"]
    assert one["bytes"] == 40 and one["text"] == two["text"] and one["at_byte"] == 20
    over = command(client, run_id, type="sample", length=501)
    assert over.status_code == 422 and "limit of 500" in over.json()["detail"]
    assert command(client, run_id, type="reset").status_code == 200
    wait_for(lambda: info(client, run_id), lambda i: i["pos"] == 0, "the reset")
    throttle = command(client, run_id, type="throttle", max_bytes_per_s=50)
    assert throttle.status_code == 200
    assert command(client, run_id, type="resume").status_code == 200
    fresh = wait_for(lambda: info(client, run_id), lambda i: i["pos"] > 0, "learning again")
    assert fresh["max_bytes_per_s"] == 50 and fresh["state"] == "running"


def test_websocket_answers_bad_commands_and_stays_open(
    client: TestClient, cleanup: list[str]
) -> None:
    run = start(client, paused=True)
    cleanup.append(run["id"])
    with client.websocket_connect(f"{WS}/ws/runs/{run['id']}") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["run"]["id"] == run["id"]
        errors = []
        for text in ("{nope", '{"type": "warp"}', '{"type": "step", "bytes": -3}', "[]"):
            ws.send_text(text)
            while (msg := ws.receive_json())["type"] != "error":
                pass
            errors.append(msg["message"])
        assert "JSON object" in errors[0] and "unknown command type 'warp'" in errors[1]
        assert "greater than or equal to 1" in errors[2]
        ws.send_json({"type": "sample", "length": 9999, "request_id": "big"})
        while (msg := ws.receive_json())["type"] not in ("error", "reply"):
            pass
        assert msg["type"] == "error" and msg["request_id"] == "big" and "limit" in msg["message"]
        ws.send_json({"type": "step", "bytes": 5, "request_id": "s"})
        replied = reached = False
        while not (replied and reached):
            msg = ws.receive_json()
            if msg["type"] == "reply" and msg["request_id"] == "s":
                replied = msg["ok"]
            reached = reached or (msg["type"] == "update" and msg["pos"] == 5)


def test_updates_are_at_most_twenty_a_second_and_lite_sockets_get_curves_only(
    client: TestClient, cleanup: list[str]
) -> None:
    # throttled so that the run outlasts 25 updates however fast the machine learns
    r = client.post("/api/runs", json={"config": {"stream": SMALL}, "max_bytes_per_s": 1000})
    assert r.status_code == 201, r.text
    run = r.json()
    cleanup.append(run["id"])
    with client.websocket_connect(f"{WS}/ws/runs/{run['id']}") as ws:
        ws.receive_json()
        stamps = []
        while len(stamps) < 25:
            if ws.receive_json()["type"] == "update":
                stamps.append(time.monotonic())
    # 20 per second at most: 24 gaps need at least 1.2 s (a slow machine only widens them)
    assert stamps[-1] - stamps[0] >= 24 / 20 - 0.1
    with client.websocket_connect(f"{WS}/ws/runs/{run['id']}?lite=1") as ws:
        hello = ws.receive_json()
        assert set(hello["history"]) == {"loss", "bpb", "latest"}
        while (msg := ws.receive_json())["type"] != "update":
            pass
        assert set(msg) <= {"type", "generation", "state", "pos", "total", "bpb", "loss"}


def test_stopped_run_leaves_a_run_directory_that_can_be_reopened(
    client: TestClient, cleanup: list[str]
) -> None:
    from mugpt.engine import load_checkpoint

    run = start(client, paused=True)
    cleanup.append(run["id"])
    command(client, run["id"], type="step", bytes=200)
    wait_for(lambda: info(client, run["id"]), lambda i: i["pos"] == 200, "200 bytes")
    summary = client.get(f"/api/runs/{run['id']}/export/summary").json()
    for key in ("bytes", "bpb", "bytes_per_s", "updates", "params", "phases", "boundaries",
                "baselines"):  # fmt: skip
        assert key in summary
    assert summary["bytes"] == 200 and summary["updates"] == 200
    ckpt = client.get(f"/api/runs/{run['id']}/export/checkpoint")
    assert ckpt.status_code == 200
    stopped = client.post(f"/api/runs/{run['id']}/stop").json()
    assert stopped["state"] == "stopped"
    folder = stopped["run_dir"]
    for name in ("config.json", "summary.json", "log.csv", "checkpoint.npz"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert load_checkpoint(os.path.join(folder, "checkpoint.npz")).position == 200
    gone = command(client, run["id"], type="resume")
    assert gone.status_code == 409 and "stopped" in gone.json()["detail"]
    # still downloadable after the worker is gone
    assert client.get(f"/api/runs/{run['id']}/export/log").text.count("\n") == 201
    opened = client.post("/api/runs/open", json={"path": folder})
    assert opened.status_code == 201, opened.text
    view = opened.json()
    cleanup.append(view["id"])
    assert view["readonly"] and view["state"] == "finished" and view["pos"] == 200
    assert view["bpb"] == pytest.approx(summary["bpb"], abs=1e-5)
    assert [p["label"] for p in view["stream"]["phases"]] == ["a"]
    refused = command(client, view["id"], type="resume")
    assert refused.status_code == 409 and "opened from a folder" in refused.json()["detail"]
    missing = client.post("/api/runs/open", json={"path": folder + "-nope"})
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


def test_an_uploaded_text_becomes_a_phase(client: TestClient, cleanup: list[str]) -> None:
    text = "the cat sat on the mat. " * 40
    r = client.post("/api/uploads", files={"file": ("notes, v2.txt", text.encode())},
                    data={"label": "notes"})  # fmt: skip
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["bytes"] == len(text) and up["spec"].startswith("notes=file:")
    run = start(client, stream=f"{up['spec']},after=counting:100")
    cleanup.append(run["id"])
    phases = run["stream"]["phases"]
    assert [(p["label"], p["end"] - p["start"]) for p in phases] == [("notes", 960), ("after", 100)]
    empty = client.post("/api/uploads", files={"file": ("e.txt", b"")})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]


def test_bad_configurations_get_a_422_that_names_the_problem(client: TestClient) -> None:
    cases = [
        ({"modle": {}}, "'modle'], 'msg': 'Extra inputs are not permitted'"),  # the schema
        ({"model": {"d_model": 10, "n_heads": 4}}, "must divide d_model"),
        ({"stream": "a=nowhere:1k"}, "unknown source 'nowhere'"),
        ({"stream": "stdin"}, "cannot read stdin"),
        ({"learner": {"update_every": 64}}, "must not exceed the context"),
        ({"mechanisms": [{"name": "replay", "capacity": -5}]}, "capacity"),
        ({"model": {"context": 5000}}, "--max-context"),
        ({"learner": {"batch_streams": 4}}, "needs learner.substream_bytes > 0 in the lab"),
    ]
    for config, message in cases:
        r = client.post("/api/runs", json={"config": config})
        assert r.status_code == 422, (config, r.text)
        assert message in str(r.json()["detail"]), r.json()
    assert client.get("/api/runs/r999").status_code == 404
    assert client.post("/api/runs/r999/commands", json={"type": "pause"}).status_code == 404


def test_a_crashed_worker_fails_its_run_and_nothing_else(
    client: TestClient, cleanup: list[str], tmp_path: Any
) -> None:
    victim = start(client, paused=False)
    other = start(client, paused=True)
    cleanup += [victim["id"], other["id"]]
    pid = client.app.state.manager.runs[victim["id"]].process.pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    failed = wait_for(lambda: info(client, victim["id"]), lambda i: i["state"] == "failed", "fail")
    assert "killed by signal SIGKILL" in failed["error"]
    r = command(client, victim["id"], type="resume")
    assert r.status_code == 409 and "failed" in r.json()["detail"]
    command(client, other["id"], type="step", bytes=10)
    wait_for(lambda: info(client, other["id"]), lambda i: i["pos"] == 10, "the other run")
    assert client.get("/api/health").json()["ok"]
    # an error inside a worker (here: its stream cannot be built) fails the run with the error
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    r = client.post("/api/runs", json={"config": {"stream": f"e=file:{empty}"}})
    assert r.status_code == 201
    cleanup.append(r.json()["id"])
    broken = wait_for(
        lambda: info(client, r.json()["id"]), lambda i: i["state"] == "failed", "fail"
    )
    assert "gets no bytes" in broken["error"] and "is empty" in broken["error"]


def test_limits_give_clear_4xx_and_the_server_goes_on(tmp_path: Any) -> None:
    settings = ServeSettings(
        max_runs=1, max_params=20_000, max_upload_bytes=100, max_sample_bytes=10, runs_dir=tmp_path
    )
    with lab(lab_app(settings)) as c:
        big = c.post("/api/runs", json={"config": {"model": {"d_model": 64}}})
        assert big.status_code == 422 and "at most 20,000 (start it with --max-params" in big.text
        first = c.post("/api/runs", json={"config": {"stream": SMALL}, "paused": True})
        assert first.status_code == 201
        second = c.post("/api/runs", json={"config": {"stream": SMALL}})
        assert second.status_code == 429 and "--max-runs" in second.json()["detail"]
        upload = c.post("/api/uploads", files={"file": ("big.txt", b"x" * 101)})
        assert upload.status_code == 413 and "at most 100" in upload.json()["detail"]
        sample = c.post(f"/api/runs/{first.json()['id']}/commands",
                        json={"type": "sample", "length": 11})  # fmt: skip
        assert sample.status_code == 422 and "--max-sample-bytes" in sample.json()["detail"]
        assert c.get("/api/health").json()["ok"]
        assert c.delete(f"/api/runs/{first.json()['id']}").status_code == 200


def test_serve_open_shows_a_run_directory_read_only(tmp_path: Any) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    rows = ["index,byte,phase,loss_bits"]
    rows += [f"{i},{97 + i % 3},{'a' if i < 6 else 'b'},{8 - i * 0.5}" for i in range(10)]
    (folder / "log.csv").write_text("\n".join(rows) + "\n")
    (folder / "config.json").write_text(json.dumps({"model": {"d_model": 32}, "seed": 4}))
    with lab(lab_app(ServeSettings(runs_dir=tmp_path), open_dirs=[str(folder)])) as c:
        (view,) = c.get("/api/runs").json()
        assert view["readonly"] and view["pos"] == 10 and view["config"]["seed"] == 4
        assert view["bpb"] == pytest.approx(np.mean([8 - i * 0.5 for i in range(10)]))
        assert [(p["label"], p["start"], p["end"]) for p in view["stream"]["phases"]] == [
            ("a", 0, 6),
            ("b", 6, 10),
        ]
        assert "--d-model 32" in view["cli"] and "--seed 4" in view["cli"]
        log = c.get(f"/api/runs/{view['id']}/export/log")
        assert log.status_code == 200 and log.text.splitlines()[1] == "0,97,a,8.0"
