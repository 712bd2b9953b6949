"""The page that teaches, in headless Chromium: panel explanations, the live model diagram,
a mixture's experts, racing another preset, mechanisms switch-first, and the notice that
says what the server is doing from the moment the page loads (also on a cold compile cache).

The lab runs as ``mugpt serve`` on a loopback port (the fixtures of test_browser.py).
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from test_browser import (  # the same server, browser and page fixtures
    FIRST_BYTES_MS,
    TOKEN,
    WAIT_MS,
    browser,
    get_json,
    page,
    server,
    wait_bytes_above,
)

pytestmark = pytest.mark.browser
__all__ = ["browser", "page", "server"]  # fixtures used by name


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_every_panel_explains_itself_folded_until_opened(page: Any) -> None:
    wait_bytes_above(page, 0)
    panels = page.locator("main > section.panel")
    explained = page.locator("main > section.panel details.explain")
    assert explained.count() == panels.count() >= 12
    assert (
        page.evaluate("() => [...document.querySelectorAll('details.explain')].some(d => d.open)")
        is False
    )
    first = page.locator("#loss-panel details.explain")
    text = first.locator("p")
    assert not text.is_visible()
    first.locator("summary").click()
    assert text.is_visible()
    assert "bits" in text.inner_text() and "gzip" in text.inner_text()
    lengths = page.evaluate(
        "() => [...document.querySelectorAll('details.explain p')].map(p => p.textContent.length)"
    )
    assert all(60 < n < 900 for n in lengths), lengths


def test_the_model_diagram_has_one_block_per_layer_and_is_lit(page: Any, server: str) -> None:
    run = post_json(
        server + "api/runs",
        {"config": {"model": {"n_layers": 3}, "stream": "a=counting:20k"}, "label": "three layers"},
    )
    page.goto(f"{server}?token={TOKEN}&run={run['id']}")
    page.wait_for_function("r => window.mugptLab.runId === r", arg=run["id"])
    blocks = page.get_by_test_id("diagram-block")
    blocks.first.wait_for()
    assert blocks.count() == 3
    params = page.evaluate(
        "() => window.mugptLab.run.architecture.parts.reduce((s, p) => s + p.params, 0)"
    )
    assert params == run["params"]
    diagram = page.get_by_test_id("diagram")
    assert f"{run['params']:,} parameters in all" in diagram.inner_text()
    assert "attention · 4 heads × 4" in blocks.first.inner_text()
    # lit by the current window: each head shows how far back it looks
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=diagram-block] .headcell[title]').length === 12",
        timeout=FIRST_BYTES_MS,
    )
    assert "units fire" in blocks.nth(2).inner_text()
    assert page.locator(".residual .rrow").count() == 1 + 2 * 3
    post_json(server + f"api/runs/{run['id']}/stop", {})


def test_a_strong_run_shows_which_expert_predicted_each_byte(page: Any, server: str) -> None:
    run = post_json(
        server + "api/runs",
        {"config": {"preset": "strong", "stream": "a=counting:40k"}, "max_bytes_per_s": 4000},
    )
    page.goto(f"{server}?token={TOKEN}&run={run['id']}")
    panel = page.locator("#experts-panel")
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=experts] tbody tr').length === 12",
        timeout=FIRST_BYTES_MS,
    )
    assert panel.is_visible()
    rows = page.locator("[data-testid=experts] tbody tr")
    names = [rows.nth(i).locator("td").first.inner_text() for i in range(3)]
    assert names[0].startswith("network") and names[1].startswith("order 0")
    assert page.locator("[data-testid=experts] tbody tr.winner").count() == 1
    assert re.search(r"mixed probability \d+\.\d+%", page.get_by_test_id("experts").inner_text())
    panel.locator("details.explain summary").click()
    opened = panel.locator("details.explain[open] p")  # the panel redraws five times a second:
    opened.wait_for(state="visible")  # wait for the opened explanation before reading it
    assert "display recomputation" in opened.inner_text()
    # winners are remembered and shade the stream's bytes as they are read
    page.wait_for_function(
        "() => document.querySelectorAll('#winner-strip span').length >= 3", timeout=WAIT_MS
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#stream-text span.won').length >= 1", timeout=WAIT_MS
    )
    post_json(server + f"api/runs/{run['id']}/stop", {})


def first_run(page: Any, server: str) -> dict[str, Any]:
    """Views the server's first run (the default stream, seed preset)."""
    run = get_json(server + "api/runs")[0]
    page.goto(f"{server}?token={TOKEN}&run={run['id']}")
    page.wait_for_function("r => window.mugptLab.runId === r", arg=run["id"])
    return run


def test_a_seed_run_hides_the_experts_panel(page: Any, server: str) -> None:
    first_run(page, server)
    wait_bytes_above(page, 0)
    page.wait_for_function("() => window.mugptLab.run && window.mugptLab.latest.pos > 0")
    mixing = page.evaluate(
        "() => (window.mugptLab.run.mechanisms || []).some(m => m.name === 'ngram_mix' && m.enabled)"
    )
    assert not mixing
    assert page.locator("#experts-panel").is_hidden()


def test_one_click_races_another_preset_on_the_same_stream(page: Any, server: str) -> None:
    first_run(page, server)
    wait_bytes_above(page, 0)
    viewed = page.evaluate("() => window.mugptLab.run")
    page.locator("#race-preset option").first.wait_for(state="attached")
    page.select_option("#race-preset", "strong")
    before = {r["id"] for r in get_json(server + "api/runs")}
    page.get_by_test_id("race-go").click()
    page.wait_for_function("() => window.mugptLab.compare.size >= 1")
    new = [r for r in get_json(server + "api/runs") if r["id"] not in before]
    assert len(new) == 1
    raced = new[0]
    assert raced["config"]["preset"] == "strong"
    assert raced["stream"]["spec"] == viewed["stream"]["spec"]
    assert raced["config"]["seed"] == viewed["config"]["seed"]
    assert page.evaluate("() => window.mugptLab.runId") == viewed["id"]  # still the same view
    # both curves on one chart: this run's moving average and the race's
    page.wait_for_function(
        "n => document.querySelector('[data-testid=loss-chart]').data"
        ".some(t => t.name === n + ' (avg)' && t.x.length > 0)",
        arg=raced["label"],
        timeout=FIRST_BYTES_MS,
    )
    names = page.evaluate(
        "() => document.querySelector('[data-testid=loss-chart]').data.map(t => t.name)"
    )
    assert "moving average" in names
    post_json(server + f"api/runs/{raced['id']}/stop", {})


def test_mechanisms_are_switches_first_with_parameters_folded(page: Any) -> None:
    card = page.locator(".mech[data-name=cache]")
    card.wait_for()
    header = card.locator("header")
    assert header.locator("input[type=checkbox]").count() == 1
    assert "cache" in header.inner_text()
    fold = card.locator("details.mech-params")
    assert fold.get_attribute("open") is None
    assert not card.locator(".params").is_visible()
    fold.locator("summary").click()
    assert card.locator(".params [data-key]").first.is_visible()


def test_the_status_notice_is_gone_once_the_run_learns(browser: Any, server: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.goto(f"{server}?token={TOKEN}")
    box = pg.get_by_test_id("status-notice")
    status = get_json(server + "api/status")
    assert status["engine"]["state"] in ("ready", "compiling", "starting", "unknown")
    # once the run learns, the notice is gone
    wait_bytes_above(pg, 0)
    pg.wait_for_function("() => document.querySelector('[data-testid=status-notice]').hidden")
    assert box.is_hidden()
    context.close()
