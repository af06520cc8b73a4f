"""The web UI in a real browser (Debian's chromium via Playwright) against the real fleet (`bev up`)
pointed at the demo world, as an analyst uses it: sign in, start an investigation from the form,
watch its events arrive, open the report, follow a citation to its highlighted evidence, see the
graph, watch the avatar react when a threat is found; search and upload, run a collector, look at
the fleet. axe-core checks every page: no serious or critical accessibility violation.

BEV_SCREENSHOTS=DIR saves a screenshot of each page there (docs/screenshots/ holds the README's).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from bev.testing.browser import axe_violations, key_script
from services.swarm.demo.investigate import scope_of
from tests.test_investigations import DemoFleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]
SHOTS = Path(os.environ["BEV_SCREENSHOTS"]) if os.environ.get("BEV_SCREENSHOTS") else None
VIEWPORT = {"width": 1400, "height": 900}

# Records every value the avatar's state attribute takes, however briefly (functions, not strings:
# the page's CSP forbids eval).
AVATAR_STATES = """() => {
  window.__avatarStates = [];
  const note = (el) => { const s = el.getAttribute('data-state'); if (s && window.__avatarStates.at(-1) !== s) window.__avatarStates.push(s); };
  const watch = () => {
    const el = document.querySelector('[data-testid=avatar]');
    if (!el) return setTimeout(watch, 20);
    note(el);
    new MutationObserver(() => note(el)).observe(el, {attributes: true, attributeFilter: ['data-state']});
  };
  watch();
}"""


async def page_for(browser: Browser, demo: DemoFleet, *, signed_in: bool = True) -> Page:
    context = await browser.new_context(base_url=demo.gateway, viewport=VIEWPORT, accept_downloads=True)
    if signed_in:
        await context.add_init_script(key_script(str(demo.state["api_key"])))
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]  # uncaught exceptions: checked by accessible()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text[:300]}"))
    page.console = console  # type: ignore[attr-defined]  # shown when a step fails
    return page


async def accessible(page: Page, name: str) -> None:
    """No serious or critical axe-core violation on the page as it is now, no uncaught error; and,
    with BEV_SCREENSHOTS set, its screenshot."""
    bad = await axe_violations(page)
    assert bad == [], f"{name}: {json.dumps(bad, indent=1)}"
    assert page.errors == [], f"{name}: {page.errors}"  # type: ignore[attr-defined]
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"{name}.png"))


async def test_sign_in_takes_a_valid_key_only(browser: Browser, demo: DemoFleet) -> None:
    page = await page_for(browser, demo, signed_in=False)
    await page.goto("/")
    await expect(page.get_by_label("API key")).to_be_visible()
    await accessible(page, "sign-in")
    await page.get_by_label("API key").fill("bev_nobody_0000")
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("signin-error")).to_contain_text("key")
    await page.get_by_label("API key").fill(str(demo.state["api_key"]))
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("investigations")).to_be_visible()
    # The key lives in this tab's sessionStorage only, never in localStorage or a cookie.
    assert await page.evaluate("() => sessionStorage.getItem('bev.key')") == demo.state["api_key"]
    assert await page.evaluate("() => localStorage.length") == 0
    assert await page.context.cookies() == []
    await page.context.close()


async def test_an_analyst_runs_the_demo_investigation_in_the_browser(browser: Browser, demo: DemoFleet) -> None:
    world = demo.world
    page = await page_for(browser, demo)
    await page.goto("/#/investigations/new")
    await page.locator("#target").fill(world.target[1])
    await page.locator("#mode").select_option("hybrid")
    await page.locator("#allow").fill("\n".join(scope_of(world)))
    await page.locator("#seeds").fill("\n".join(value for kind, value in world.seeds if kind == "url"))
    await page.locator("#max-depth").fill("3")
    await accessible(page, "new-investigation")
    await page.get_by_test_id("start-investigation").click()
    await page.wait_for_url(re.compile(r".*#/investigations/(?!new$)[^/]+$"))
    investigation_id = page.url.rsplit("/", 1)[1]

    # The live page: events stream in; the avatar follows them.
    await page.evaluate(AVATAR_STATES)
    avatar = page.get_by_test_id("avatar")
    await expect(avatar).to_be_visible()
    before_state = await avatar.get_attribute("data-state")
    before = await avatar.screenshot()
    await expect(page.get_by_test_id("event").nth(2)).to_be_attached(timeout=120_000)
    await expect(page.get_by_test_id("phase")).not_to_be_empty()
    # A threat found (the demo world's feeds name its malware) -> alert_discovery.
    await page.wait_for_function("() => window.__avatarStates.includes('alert_discovery')", timeout=600_000,
                                 polling=100)
    after = await avatar.screenshot()
    assert before != after, "the avatar looks the same after a threat was found"
    assert before_state != "alert_discovery"
    await accessible(page, "investigation-live")

    await expect(page.get_by_test_id("status")).to_have_attribute("data-status", "completed", timeout=600_000)
    states = await page.evaluate("() => window.__avatarStates")
    assert states[-1] == "celebration_success" or "celebration_success" in states, states
    kinds = set(await page.get_by_test_id("event").evaluate_all("(items) => items.map((i) => i.dataset.kind)"))
    assert {"phase", "tool_call", "evidence", "hypothesis", "done"} <= kinds, kinds
    await expect(page.get_by_test_id("budget")).not_to_be_empty()
    await accessible(page, "investigation")

    # The report: hypotheses, votes, citations.
    await page.get_by_test_id("report-link").click()
    await expect(page.get_by_test_id("hypothesis").first).to_be_visible()
    await expect(page.get_by_test_id("citation").first).to_be_visible()
    await accessible(page, "report")
    async with page.expect_download() as downloading:
        await page.get_by_test_id("download-md").click()
    markdown = await asyncio.to_thread(Path(await (await downloading.value).path()).read_text)
    assert world.target[1] in markdown

    # A citation opens its evidence with the cited text highlighted at its offsets.
    citation = page.locator("a[data-testid=citation][href*='start=']").first  # one with offsets
    evidence_id = await citation.get_attribute("data-evidence-id")
    await citation.click()
    await page.wait_for_url(re.compile(r".*#/evidence/.*"))
    await expect(page.get_by_test_id("cited").first).to_be_visible()
    query = parse_qs(urlsplit(page.url.split("#", 1)[1]).query)
    spans = [tuple(map(int, span.split("-"))) for span in query["spans"][0].split(",")] if "spans" in query \
        else [(int(query["start"][0]), int(query["end"][0]))]
    async with httpx.AsyncClient(headers=demo.auth, timeout=30) as http:
        evidence = (await http.get(f"{demo.gateway}/api/v1/evidence/{evidence_id}")).json()
    # Offsets are code points into the evidence's content (Python's indices); one mark per span.
    marked = [" ".join(text.split()) for text in await page.get_by_test_id("cited").all_inner_texts()]
    assert sorted(marked) == sorted(" ".join(evidence["content"][start:end].split()) for start, end in spans)
    assert all(end > start for start, end in spans)
    await accessible(page, "evidence")

    # The graph draws the investigation's entities and relations; a node opens its evidence.
    await page.goto(f"/#/investigations/{investigation_id}/graph")
    graph = page.get_by_test_id("graph")
    try:
        await expect(graph).not_to_have_attribute("data-node-count", re.compile(r"^0?$"), timeout=60_000)
    except AssertionError:
        await page.screenshot(path="/tmp/bev-ui-graph-failure.png")
        raise AssertionError("\n".join(page.console[-40:])) from None  # type: ignore[attr-defined]
    assert int(await graph.get_attribute("data-node-count") or 0) >= 5
    assert int(await graph.get_attribute("data-edge-count") or 0) >= 1
    await accessible(page, "graph")
    await page.context.close()


async def test_search_upload_collectors_and_fleet(browser: Browser, demo: DemoFleet, tmp_path: Path) -> None:
    page = await page_for(browser, demo)
    # Upload a document, then find it with a cited hit.
    document = tmp_path / "field-notes.txt"
    document.write_text("Field notes. The operator reused the handle quartzfalcon on every forum in 2025.\n")
    await page.goto("/#/search")
    await page.get_by_test_id("upload").set_input_files(str(document))
    await expect(page.get_by_test_id("upload-status")).to_have_attribute("data-status", "completed", timeout=120_000)
    await page.locator("#q").fill("quartzfalcon handle")
    await page.get_by_test_id("search-submit").click()
    hit = page.get_by_test_id("hit").first
    await expect(hit).to_contain_text("quartzfalcon", timeout=30_000)
    await accessible(page, "search")

    # Run a collector on the demo world's target and see its observations.
    await page.goto("/#/collectors")
    await page.locator("#collector").select_option("dns")
    await page.locator("#collect-target").fill(demo.world.target[1])
    await page.get_by_test_id("run-collector").click()
    await expect(page.get_by_test_id("observation").first).to_be_visible(timeout=60_000)
    await accessible(page, "collectors")

    # Every service instance of the fleet, with its numbers.
    await page.goto("/#/fleet")
    await expect(page.get_by_test_id("instance").nth(6)).to_be_attached(timeout=30_000)
    services = set(await page.get_by_test_id("instance").evaluate_all(
        "(rows) => rows.map((r) => r.querySelector('td').textContent.trim())"))
    assert {"gateway", "swarm", "avatar", "reasoning", "embeddings", "collectors", "monitoring"} <= services
    # Monitoring's incidents (the demo fleet runs Prometheus): the list answers, not "unavailable".
    await expect(page.get_by_test_id("incidents")).to_contain_text(
        re.compile("No incident|open|resolved"), timeout=15_000)
    await accessible(page, "fleet")

    await page.goto("/#/investigations")
    await expect(page.get_by_test_id("investigation-row").first).to_be_visible(timeout=30_000)
    await accessible(page, "investigations")
    await page.context.close()
