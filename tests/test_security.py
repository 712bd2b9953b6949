"""The lab server is safe by default: it reads only its data folders, uploads and built-in
sources; it answers only its own host names and page; it requires its token; bad frames and
values are answered with an error while the socket stays open.

No run here learns: a refused request never starts a worker, and the socket tests use a
paused run of a tiny stream.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from mugpt.serve import ServeSettings, create_app
from mugpt.serve.guard import Access

TOKEN = "security-test-token"
BASE = "http://127.0.0.1:8000"
WS = "ws://127.0.0.1:8000"
AUTH = {"Authorization": f"token {TOKEN}"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data folder (with a text, a FIFO and links pointing in and out) and a folder
    outside it with a secret."""
    base = tmp_path_factory.mktemp("security")
    data, outside = base / "data", base / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "notes.txt").write_text("inside the data folder " * 20)
    (outside / "secret.txt").write_text("a secret outside the data folder")
    (data / "out-link.txt").symlink_to(outside / "secret.txt")
    (data / "in-link.txt").symlink_to(data / "notes.txt")
    os.mkfifo(data / "pipe")
    leaky = data / "leaky"
    leaky.mkdir()
    (leaky / "a.txt").write_text("fine")
    (leaky / "b.txt").symlink_to(outside / "secret.txt")
    run = outside / "run"
    run.mkdir()
    (run / "log.csv").write_text("index,byte,phase,loss_bits\n0,97,a,8.0\n")
    return {"data": data, "outside": outside, "runs": base / "runs"}


@pytest.fixture(scope="module")
def client(folders: dict[str, Path]) -> Iterator[TestClient]:
    settings = ServeSettings(runs_dir=folders["runs"], max_runs=2)
    app = create_app(settings, access=Access.local(token=TOKEN), data_dirs=[folders["data"]])
    with TestClient(app, base_url=BASE, headers=AUTH) as c:
        yield c


def create(client: TestClient, stream: str) -> Any:
    return client.post("/api/runs", json={"config": {"stream": stream}, "paused": True})


def refused_naming_the_roots(r: Any, data: Path) -> str:
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert "outside the folders this lab may read" in detail, detail
    assert str(data) in detail and "--data DIR" in detail, detail
    return str(detail)


# ---------------------------------------------------------------------------- what it reads


def test_file_reads_outside_the_data_folders_are_refused(
    client: TestClient, folders: dict[str, Path]
) -> None:
    data, outside = folders["data"], folders["outside"]
    relative = os.path.relpath(outside / "secret.txt", Path.cwd())
    for stream in (
        f"a=file:{outside}/secret.txt",  # absolute
        f"a=file:{data}/../outside/secret.txt",  # '..'
        f"a=file:{relative}",  # relative to the working directory, outside the data folder
        f"a=file:{data}/out-link.txt",  # a link pointing out
        "a=file:/etc/passwd",
        "a=file:/dev/zero",
        f"a=dir:{outside}",
        f"a=dir:{data}/..",
    ):
        detail = refused_naming_the_roots(create(client, stream), data)
        assert detail.startswith(f"phase {stream!r} is outside"), detail  # as written
    # where a link points is not told
    assert "secret" not in refused_naming_the_roots(
        create(client, f"a=file:{data}/out-link.txt"), data
    )
    assert client.get("/api/runs").json() == []  # nothing started


def test_a_folder_holding_a_link_out_is_refused(
    client: TestClient, folders: dict[str, Path]
) -> None:
    r = create(client, f"a=dir:{folders['data']}/leaky")
    detail = refused_naming_the_roots(r, folders["data"])
    assert "b.txt" in detail and "a link" in detail


def test_devices_and_fifos_inside_the_folders_are_refused(
    client: TestClient, folders: dict[str, Path]
) -> None:
    r = create(client, f"a=file:{folders['data']}/pipe")
    assert r.status_code == 403, r.text
    assert "not a regular file (devices, FIFOs and sockets are refused)" in r.json()["detail"]


def test_files_inside_the_folders_and_uploads_are_allowed(
    client: TestClient, folders: dict[str, Path]
) -> None:
    data = folders["data"]
    ids = []
    for stream in (f"a=file:{data}/notes.txt", f"a=file:{data}/in-link.txt,b=random:1k"):
        r = create(client, stream)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        client.delete(f"/api/runs/{ids[-1]}")
    up = client.post("/api/uploads", files={"file": ("t.txt", b"uploaded text " * 10)}).json()
    r = create(client, up["spec"])
    assert r.status_code == 201, r.text
    client.delete(f"/api/runs/{r.json()['id']}")
    missing = create(client, f"a=file:{data}/missing.txt")
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]


def test_opening_a_run_outside_says_the_same_whether_or_not_it_exists(
    client: TestClient, folders: dict[str, Path]
) -> None:
    outside = folders["outside"]
    answers = []
    for path in (outside / "run", outside / "no-such-run", "/etc", "/no/such/folder"):
        r = client.post("/api/runs/open", json={"path": str(path)})
        assert r.status_code == 403, r.text
        answers.append(r.json()["detail"].replace(str(path), "PATH"))
    assert len(set(answers)) == 1, answers
    assert "--data DIR" in answers[0] and str(folders["data"]) in answers[0]
    inside = client.post("/api/runs/open", json={"path": str(folders["data"] / "nope")})
    assert inside.status_code == 404 and "does not exist" in inside.json()["detail"]


# ---------------------------------------------------------------------------- who may talk


def test_a_foreign_host_name_gets_400(client: TestClient) -> None:
    for host in ("evil.example:8000", "evil.example", "127.0.0.1.evil.example:8000"):
        r = client.get("/api/health", headers={"Host": host})
        assert r.status_code == 400, (host, r.text)
        assert "--allow-host NAME" in r.json()["detail"]
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host


def test_the_api_and_the_page_need_the_token(folders: dict[str, Path]) -> None:
    settings = ServeSettings(runs_dir=folders["runs"])
    app = create_app(settings, access=Access.local(token=TOKEN), data_dirs=[folders["data"]])
    with TestClient(app, base_url=BASE) as anonymous:
        for method, path in (("get", "/api/runs"), ("get", "/api/settings"), ("get", "/")):
            r = getattr(anonymous, method)(path)
            assert r.status_code == 401, (path, r.text)
            assert "needs its token" in r.text and "?token=" in r.text
        r = anonymous.post("/api/runs", json={"config": {}}, headers={"Authorization": "token x"})
        assert r.status_code == 403 and "the token is wrong" in r.json()["detail"]
        # the schema and the page's code are the same for every install: no token needed
        assert anonymous.get("/openapi.json").status_code == 200
        assert anonymous.get("/static/app.js").status_code == 200
        # the start URL sets the page's cookie; later calls need nothing else
        page = anonymous.get(f"/?token={TOKEN}")
        assert page.status_code == 200
        cookie = page.headers["set-cookie"]
        assert cookie.startswith(f"mugpt-token-8000={TOKEN}") and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        assert anonymous.get("/api/runs").status_code == 200


def socket_refusal(client: TestClient, url: str, **headers: str) -> tuple[int, str]:
    with (
        pytest.raises(WebSocketDisconnect) as caught,
        client.websocket_connect(url, headers=headers) as ws,
    ):
        ws.receive_json()
    return caught.value.code, caught.value.reason


def test_sockets_need_the_token_and_the_pages_own_origin(folders: dict[str, Path]) -> None:
    settings = ServeSettings(runs_dir=folders["runs"])
    app = create_app(settings, access=Access.local(token=TOKEN), data_dirs=[folders["data"]])
    with TestClient(app, base_url=BASE) as c:
        code, reason = socket_refusal(c, f"{WS}/ws/runs/x")
        assert code == 1008 and "missing token" in reason
        code, reason = socket_refusal(c, f"{WS}/ws/runs/x?token=wrong")
        assert code == 1008 and "wrong token" in reason
        for origin in ("http://evil.example", "http://127.0.0.1:9999", "null"):
            code, reason = socket_refusal(c, f"{WS}/ws/runs/x", Origin=origin, **AUTH)
            assert code == 1008 and "foreign origin" in reason, origin
        code, reason = socket_refusal(c, "ws://evil.example:8000/ws/runs/x", **AUTH)
        assert code == 1008 and "foreign host name" in reason
        # the page's own origin with the token gets an answer (no such run here)
        with c.websocket_connect(f"{WS}/ws/runs/x", headers={"Origin": BASE, **AUTH}) as ws:
            assert "no run 'x'" in ws.receive_json()["message"]
        # a foreign page cannot change anything over HTTP either
        r = c.post("/api/runs", json={}, headers={"Origin": "http://evil.example", **AUTH})
        assert r.status_code == 403 and "only the lab's own page" in r.json()["detail"]


def test_run_ids_are_unguessable(client: TestClient, folders: dict[str, Path]) -> None:
    ids = set()
    for _ in range(2):
        r = create(client, "a=counting:1k")
        assert r.status_code == 201, r.text
        ids.add(r.json()["id"])
        client.delete(f"/api/runs/{r.json()['id']}")
    assert len(ids) == 2
    for run_id in ids:
        assert re.fullmatch(r"[0-9a-f]{16}", run_id), run_id  # 64 random bits


def test_no_token_is_refused_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    from mugpt.cli import main

    assert main(["serve", "--no-browser", "--host", "0.0.0.0", "--no-token"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--no-token is allowed only on a loopback address" in err and "\n" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "--port 99999: a port is a number from 0 to 65535"),
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["--token", ""], "--token is empty"),
    ],
)
def test_bad_serve_flags_are_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mugpt.cli import main

    assert main(["serve", "--no-browser", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_token_that_starts_with_a_dash_is_taken_whole_after_an_equals_sign() -> None:
    # secrets.token_urlsafe gives such a token one time in 64; the help says to write
    # --token=VALUE for it (argparse reads "--token -x" as a missing value)
    from mugpt.cli import build_parser

    args = build_parser().parse_args(["serve", "--token=-1IHNKaTjSNyReudLp4Spw"])
    assert args.token == "-1IHNKaTjSNyReudLp4Spw"


def test_runs_dir_that_is_a_file_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mugpt.cli import main

    afile = tmp_path / "a-file"
    afile.write_text("x")
    assert main(["serve", "--no-browser", "--runs-dir", str(afile)]) == 2
    err = capsys.readouterr().err.strip()
    assert "this is a file, not a folder" in err and "\n" not in err


# ---------------------------------------------------------------------------- bad frames


def test_bad_frames_are_answered_and_the_socket_stays_open(client: TestClient) -> None:
    r = create(client, "a=counting:2k")
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    try:
        with client.websocket_connect(f"{WS}/ws/runs/{run_id}") as ws:
            assert ws.receive_json()["type"] == "hello"

            def error_after(send: Any) -> str:
                send()
                deadline = time.monotonic() + 60
                while (msg := ws.receive_json())["type"] != "error":
                    assert time.monotonic() < deadline
                return str(msg["message"])

            assert "binary frame" in error_after(lambda: ws.send_bytes(b'{"type": "pause"}'))
            deep = "[" * 100_000 + "]" * 100_000
            assert "nested too deeply" in error_after(lambda: ws.send_text(deep))
            for value in ("NaN", "Infinity", "-Infinity"):
                text = '{"type": "set_lr", "lr": ' + value + "}"
                assert "lr must be a finite number" in error_after(
                    lambda text=text: ws.send_text(text)  # type: ignore[misc]
                )
            # still open and answering
            ws.send_json({"type": "set_lr", "lr": 0.01, "request_id": "ok"})
            while (msg := ws.receive_json()).get("request_id") != "ok":
                pass
            assert msg["type"] == "reply" and msg["ok"]
    finally:
        client.delete(f"/api/runs/{run_id}")
    deep_http = client.post(
        "/api/runs", content="[" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert deep_http.status_code == 400 and "error parsing the body" in deep_http.text


def test_the_start_url_carries_a_fresh_token_and_the_browser_opens_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import webbrowser

    import uvicorn

    from mugpt.cli import main

    opened: list[str] = []
    apps: list[Any] = []

    def fake_run(self: Any, sockets: Any = None) -> None:  # listen no further
        apps.append(self.config.app)
        self.started = True
        deadline = time.monotonic() + 10
        while not opened and time.monotonic() < deadline:
            time.sleep(0.02)

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert main(["serve", "--port", "0"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_\-]+)", out)
    assert found, out
    token = found.group(2)
    assert len(token) >= 43  # 32 random bytes, URL-safe
    assert apps[0].state.access.token == token
    assert opened == [found.group(0)]
    assert "streams may read:" in out and "--data DIR" in out


def test_a_public_host_warns_that_token_holders_can_read_the_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import uvicorn

    from mugpt.cli import main
    from mugpt.cli import serve as serve_cli

    real_bind = serve_cli.bind_socket
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    # tests listen on loopback only: the socket is bound to 127.0.0.1 whatever --host says
    monkeypatch.setattr(serve_cli, "bind_socket", lambda host, port: real_bind("127.0.0.1", 0))
    args = ["serve", "--no-browser", "--host", "0.0.0.0", "--port", "0", "--data", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "other machines can reach this port" in err
    assert (
        f"whoever gets the token can start runs on this machine and read every file under {tmp_path}"
        in err
    )


def test_a_file_read_whole_counts_its_size_against_the_stream_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    big = data / "big.txt"
    big.write_bytes(b"x" * 5000)
    settings = ServeSettings(runs_dir=tmp_path / "runs", max_stream_bytes=4000)
    app = create_app(settings, access=Access.local(token=TOKEN), data_dirs=[data])
    with TestClient(app, base_url=BASE, headers=AUTH) as c:
        for stream in (f"a=file:{big}", f"a=dir:{data}"):
            r = create(c, stream)
            assert r.status_code == 422, r.text
            assert "asks for 5,000 bytes; this server allows at most 4,000" in r.json()["detail"]
        r = create(c, f"a=file:{big}:3k")  # a budget within the limit is fine
        assert r.status_code == 201, r.text
        c.delete(f"/api/runs/{r.json()['id']}")


def test_the_users_own_stream_flag_is_trusted(folders: dict[str, Path]) -> None:
    """``mugpt serve --stream file:...`` names a file on the command line: runs of that stream
    (sent back by the page or left out) may read it; other files outside stay refused."""
    own = f"mine=file:{folders['outside']}/secret.txt"
    settings = ServeSettings(runs_dir=folders["runs"], default_stream=own)
    app = create_app(settings, access=Access.local(token=TOKEN), data_dirs=[folders["data"]])
    with TestClient(app, base_url=BASE, headers=AUTH) as c:
        for body in ({"stream": own}, {}):
            r = c.post("/api/runs", json={"config": body, "paused": True})
            assert r.status_code == 201, r.text
            c.delete(f"/api/runs/{r.json()['id']}")
        other = create(c, f"a=file:{folders['outside']}/run/log.csv")
        refused_naming_the_roots(other, folders["data"])


def test_tinystories_is_used_only_from_the_cache(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mugpt.corpus

    monkeypatch.setattr(mugpt.corpus, "tinystories_cached", lambda split="valid": False)
    r = create(client, "t=tinystories:train:1M")
    assert r.status_code == 422, r.text
    assert "not in the local cache and the lab does not download it" in r.json()["detail"]


def test_no_token_on_loopback_still_checks_host_and_origin(folders: dict[str, Path]) -> None:
    settings = ServeSettings(runs_dir=folders["runs"])
    access = Access.for_host("127.0.0.1", None)  # mugpt serve --no-token
    with TestClient(create_app(settings, access=access), base_url=BASE) as c:
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs", headers={"Host": "evil.example"}).status_code == 400
        r = c.post("/api/runs", json={}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
