"""End to end: ``mugpt serve`` on a free loopback port, driven in headless Chromium.

The page must load without console errors, learn the default stream as soon as it connects,
draw the loss chart, pause and resume, log a mechanism switched on, turn an uploaded text into
a phase of a new run, and sample text.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labserver import start_lab, stop_lab

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000  # generous upper bounds for slow, shared CI machines (not timing tests)
FIRST_BYTES_MS = 240_000  # the first run waits for the engine to compile on a cold cache
TOKEN = secrets.token_urlsafe(16)  # the lab's token (a script sends it as a header)


def get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mugpt serve --no-browser --port 0`` in a subprocess; yields its URL (without the
    token, which the page gets from the start URL it prints)."""
    runs = tmp_path_factory.mktemp("lab-runs")
    proc, url, _ = start_lab(runs, TOKEN, args=["--max-sample-bytes", "1000"])
    deadline = time.monotonic() + 60
    while True:
        try:
            assert get_json(url + "api/health")["ok"]
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)
    yield url
    stop_lab(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page on the lab; fails the test if the page logs any error."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(WAIT_MS)
    pg.goto(f"{server}?token={TOKEN}")  # the start URL, as mugpt serve opens it
    yield pg
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def bytes_seen(pg: Any) -> int:
    return int(pg.get_by_test_id("bytes-seen").inner_text())


def wait_bytes_above(pg: Any, value: int) -> int:
    pg.wait_for_function(
        "v => Number(document.querySelector('[data-testid=bytes-seen]').textContent) > v",
        arg=value,
        timeout=FIRST_BYTES_MS,
    )
    return bytes_seen(pg)


def test_page_loads_learns_the_default_stream_and_draws(page: Any, server: str) -> None:
    seen = wait_bytes_above(page, 0)
    assert page.locator("#run-state").inner_text() == "running"
    run = get_json(server + "api/runs")[0]
    assert run["stream"]["spec"].startswith("prose=stdlib-prose:75k,code=stdlib-code:75k")
    chart = page.get_by_test_id("loss-chart")
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=loss-chart]').dataset.lastX) > 0"
    )
    last_x = float(chart.get_attribute("data-last-x"))
    wait_bytes_above(page, seen)
    page.wait_for_function(
        "x => Number(document.querySelector('[data-testid=loss-chart]').dataset.lastX) > x",
        arg=last_x,
    )
    assert float(page.get_by_test_id("bpb").inner_text()) > 0
    assert page.locator("#topk .sym").count() == 10
    assert page.locator("#attention canvas").count() == 4  # one map per head of the seed model
    assert page.locator("#phase-table tbody tr").count() == 4
    assert "run=" in page.url and "d_model=16" in page.url and "seed=0" in page.url


def test_pause_stops_bytes_seen_and_resume_restarts_it(page: Any, server: str) -> None:
    wait_bytes_above(page, 0)
    page.get_by_test_id("pause").click()
    page.wait_for_function("() => document.querySelector('#run-state').textContent === 'paused'")
    run_id = page.evaluate("window.mugptLab.runId")
    server_pos = get_json(f"{server}api/runs/{run_id}")["pos"]
    page.wait_for_function(
        "p => Number(document.querySelector('[data-testid=bytes-seen]').textContent) === p",
        arg=server_pos,
    )
    page.wait_for_timeout(1500)  # paused: nothing is learned meanwhile
    assert bytes_seen(page) == server_pos
    assert get_json(f"{server}api/runs/{run_id}")["pos"] == server_pos
    page.get_by_test_id("resume").click()
    wait_bytes_above(page, server_pos)
    assert page.locator("#run-state").inner_text() == "running"


def test_toggling_a_mechanism_shows_in_the_event_log(page: Any) -> None:
    wait_bytes_above(page, 0)
    toggle = page.get_by_test_id("mech-toggle-grad_clip")
    toggle.check()
    log = page.get_by_test_id("event-log")
    log.get_by_text(re.compile(r"grad_clip on")).first.wait_for()
    assert page.locator(".mech[data-name=grad_clip]").get_attribute("class") == "mech on"
    assert "mech=grad_clip" in page.url
    toggle.uncheck()
    log.get_by_text(re.compile(r"grad_clip off")).first.wait_for()


def test_an_uploaded_text_becomes_a_phase_of_a_new_run(page: Any, tmp_path: Path) -> None:
    wait_bytes_above(page, 0)
    first_run = page.evaluate("window.mugptLab.runId")
    text = "the quick brown fox jumps over the lazy dog. " * 60
    page.locator("#upload-file").set_input_files(
        files=[{"name": "fox.txt", "mimeType": "text/plain", "buffer": text.encode()}]
    )
    page.locator("#upload-label").fill("mine")
    page.locator("#upload-go").click()
    spec = page.locator("#stream-spec")
    page.wait_for_function(
        "() => document.querySelector('#stream-spec').value.includes('mine=file:')"
    )
    # learn only the upload, then a generated phase
    while page.locator("#phase-editor tbody tr").count() > 1:
        page.locator("#phase-editor tbody tr").first.get_by_role("button", name="Remove").click()
    assert spec.input_value().startswith("mine=file:")
    page.locator("#new-run").click()
    page.wait_for_function("r => window.mugptLab.runId !== r", arg=first_run)
    page.locator("#phase-table tbody tr").filter(has_text="mine").wait_for()
    page.wait_for_function(
        "() => document.querySelector('#stream-text').textContent.includes('quick brown')"
    )
    assert page.locator("#current-phase").inner_text() == "mine"
    # the previous run is overlaid for comparison
    page.wait_for_function(
        "() => document.querySelector('[data-testid=loss-chart]').data.some("
        "t => t.name && t.name.endsWith('(avg)') && t.x.length > 0)"
    )


def test_a_run_with_substreams_starts_from_the_model_panel(page: Any, server: str) -> None:
    wait_bytes_above(page, 0)
    first_run = page.evaluate("window.mugptLab.runId")
    form = page.locator("#model-form")
    form.locator("input[name=batch_streams]").fill("4")
    form.locator("input[name=substream_bytes]").fill("256")
    form.locator("input[name=update_every]").fill("8")
    page.locator("#new-run").click()
    page.wait_for_function("r => window.mugptLab.runId !== r", arg=first_run)
    run_id = page.evaluate("window.mugptLab.runId")
    learner = get_json(f"{server}api/runs/{run_id}")["config"]["learner"]
    assert (learner["batch_streams"], learner["substream_bytes"], learner["update_every"]) == (
        4,
        256,
        8,
    )
    # the lab learns whole blocks of 4 · 256 bytes
    seen = wait_bytes_above(page, 0)
    assert seen % 1024 == 0 or seen == get_json(f"{server}api/runs/{run_id}")["total"]
    page.wait_for_function(
        "() => document.querySelector('#cli-text').textContent.includes("
        "'--batch-streams 4 --substream-bytes 256')"
    )


def test_sampling_returns_text_and_a_limit_is_explained(page: Any) -> None:
    wait_bytes_above(page, 0)
    page.locator("#sample-length").fill("60")
    page.locator("#sample-prompt").fill("the ")
    page.locator("#sample-go").click()
    out = page.get_by_test_id("sample-output")
    page.wait_for_function(
        "() => { const t = document.querySelector('[data-testid=sample-output]').textContent;"
        " return t.length > 4 && t !== 'sampling…'; }"
    )
    assert out.inner_text().startswith("the ")
    page.locator("#sample-length").fill("5000")
    page.locator("#sample-go").click()
    page.locator("#notice").get_by_text(re.compile("over this server's limit of 1000")).wait_for()


def test_a_reloaded_tab_draws_every_loss_curve_from_near_byte_0(page: Any, server: str) -> None:
    target = 40_000
    # a run long enough (earlier tests may have left a short one on view)
    run = next(r for r in get_json(server + "api/runs") if (r["total"] or 0) > 2 * target)
    page.goto(f"{server}?token={TOKEN}&run={run['id']}")
    page.wait_for_function("r => window.mugptLab.runId === r", arg=run["id"])
    wait_bytes_above(page, target)
    page.reload()
    page.wait_for_function(
        "x => Number(document.querySelector('[data-testid=loss-chart]').dataset.lastX) > x",
        arg=target,
        timeout=FIRST_BYTES_MS,
    )
    starts = page.evaluate(
        "() => document.querySelector('[data-testid=loss-chart]').data"
        ".filter(t => t.yaxis !== 'y2' && t.x.length > 0).map(t => [t.name, t.x[0]])"
    )
    names = [name for name, _ in starts]
    assert any(n.startswith("loss per byte") for n in names), names
    assert "moving average" in names and "bpb so far" in names
    late = [(name, x) for name, x in starts if x > 0.05 * target]
    assert late == [], f"curves that forget the run's beginning: {late}"


def test_the_api_page_renders_offline(browser: Any, server: str) -> None:
    context = browser.new_context()
    outside: list[str] = []

    def block_outside(route: Any) -> None:
        host = urllib.parse.urlsplit(route.request.url).hostname
        if host == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", block_outside)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server + "docs")
    ops = pg.get_by_test_id("api-ops")
    ops.locator("details.op").first.wait_for(timeout=WAIT_MS)
    assert ops.locator("details.op").count() >= 10
    ops.get_by_text("/api/runs/{run_id}/history").first.click()
    assert "bounded resolution" in ops.inner_text()
    assert outside == [] and errors == []
    assert pg.locator("#api-title").inner_text().startswith("μGPT lab")
    context.close()


def test_a_phone_never_scrolls_sideways(browser: Any, server: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"{server}?token={TOKEN}")
    pg.wait_for_function("() => document.querySelectorAll('#phase-editor tbody tr').length > 0")
    pg.wait_for_function(
        "() => Number(document.querySelector('[data-testid=loss-chart]').dataset.points) > 0",
        timeout=FIRST_BYTES_MS,
    )
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390
    # the stream editor's labels show whole ("prose", not "pros")
    cut = pg.evaluate(
        "() => [...document.querySelectorAll('#phase-editor tbody td:first-child input')]"
        ".filter(i => i.scrollWidth > i.clientWidth + 1).map(i => i.value)"
    )
    assert cut == []
    assert errors == []
    context.close()


def test_the_top_bar_and_the_runs_table_show_the_same_bytes_read(page: Any) -> None:
    wait_bytes_above(page, 0)
    page.locator("#runs-table tr.viewing td.run-pos").wait_for()
    for _ in range(3):  # at every redraw, not once
        seen = bytes_seen(page)
        page.wait_for_function(
            "() => document.querySelector('#runs-table tr.viewing td.run-pos').textContent"
            ".replace(/,/g, '') === document.querySelector('[data-testid=bytes-seen]').textContent"
        )
        page.wait_for_timeout(300)
        assert bytes_seen(page) >= seen


@pytest.mark.slow
def test_a_cold_start_learns_on_the_reference_path_while_the_engine_compiles(
    browser: Any, tmp_path: Path
) -> None:
    """An empty compile cache (a new NUMBA_CACHE_DIR): the page shows the compile's progress
    and learns on the reference path before the compile ends; the run says which engine it
    is on. The server's stop ends the compile process (checked in test_serve_coldstart)."""
    proc, url, log_path = start_lab(
        tmp_path / "runs", TOKEN, {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    )
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(WAIT_MS)
        pg.goto(f"{url}?token={TOKEN}")
        wait_bytes_above(pg, 0)
        engine = get_json(url + "api/status")["engine"]
        assert engine["state"] in ("starting", "compiling"), "a cold compile ended first"
        notice = pg.get_by_test_id("status-notice")
        assert notice.get_attribute("data-phase") == "compiling"
        text = notice.inner_text()
        assert "Compiling the engine" in text and "reference path" in text, text
        assert re.search(r"stage \d of \d", text) and re.search(r"\d+ s so far", text), text
        wait_bytes_above(pg, 200)  # it goes on learning while the compile goes on
        if get_json(url + "api/status")["engine"]["state"] == "compiling":
            run = get_json(url + "api/runs")[0]
            assert run["engine"]["backend"] == "numpy" and run["engine"]["state"] == "waiting"
            assert notice.is_visible()
        pg.wait_for_function(  # the notice's time moves on (or it goes: the engine is ready)
            "(t) => { const n = document.querySelector('[data-testid=status-notice]');"
            " return n.hidden || n.innerText !== t; }",
            arg=text,
        )
        assert errors == []
        context.close()
        # the terminal says so too, once the compile has gone on for 3 s (a fast machine can
        # reach this line sooner, so it waits for it)
        deadline = time.monotonic() + 60
        while "compiling its kernels" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        stop_lab(proc)
