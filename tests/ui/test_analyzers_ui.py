"""The analyzers in the web UI, in a real browser (Debian's chromium via Playwright) against the real
fleet (`bev up`) on the demo world: the geo collector's places on the offline world map, a file sent
to static malware analysis and answered with its SHA-256, and an investigation's map page. axe-core
checks each page: no serious or critical accessibility violation.

BEV_SCREENSHOTS=DIR saves a screenshot of each page there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, FilePayload, Page, expect

from services.swarm.demo.world import WORLD_DIR as WORLD
from tests.test_fleet import BEV
from tests.test_investigations import DemoFleet, request_for, start
from tests.ui.test_browser import accessible, page_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]
NOTE = "Met at 48.8584, 2.2945 near Paris, then flew to Tokyo"


async def points_inside_the_map(page: Page) -> bool:
    """Every point's dot lies within the drawn map (it was projected, not left at the origin)."""
    return bool(await page.evaluate("""() => {
      const map = document.querySelector('[data-testid=world-map-image]').getBoundingClientRect();
      const dots = [...document.querySelectorAll('[data-testid=map-point]')].map((d) => d.getBoundingClientRect());
      return dots.length > 0 && dots.every((d) => d.width > 0 && d.left >= map.left && d.right <= map.right
        && d.top >= map.top && d.bottom <= map.bottom);
    }"""))


async def test_the_geo_collector_draws_the_places_of_a_note_on_the_map(browser: Browser, demo: DemoFleet) -> None:
    page = await page_for(browser, demo)
    await page.goto("/#/collectors")
    await page.locator("#collector").select_option("geo")
    await page.locator("#collect-target-type").select_option("note")
    await page.locator("#collect-target").fill(NOTE)
    await page.get_by_test_id("run-collector").click()

    places = page.get_by_test_id("observed-places")
    await expect(places).to_be_visible(timeout=60_000)
    world = places.get_by_test_id("world-map")
    await expect(world).to_have_attribute("data-atlas", "loaded")
    # The coordinates in the text, Paris and Tokyo: at least the point and Tokyo, in France and Japan.
    assert int(await world.get_attribute("data-point-count") or 0) >= 2
    shaded = (await world.get_attribute("data-shaded") or "").split("|")
    assert {"France", "Japan"} <= set(shaded), shaded
    await expect(places.get_by_test_id("map-place").filter(has_text="48.8584, 2.2945").first).to_be_visible()
    await expect(places.get_by_test_id("map-places")).to_contain_text("Japan")
    assert await points_inside_the_map(page)
    label = await places.get_by_test_id("world-map-image").get_attribute("aria-label") or ""
    assert re.match(r"World map of \d+ places: ", label), label
    await places.scroll_into_view_if_needed()  # the screenshot shows the map
    await accessible(page, "collectors-geo-map")
    await page.context.close()


async def test_a_file_sent_to_static_analysis_is_answered_with_its_sha256(browser: Browser, demo: DemoFleet) -> None:
    content = b"BEV analyzers UI test: a harmless text file, never executed. quartzfalcon 203.0.113.9\n"
    page = await page_for(browser, demo)
    await page.goto("/#/collectors")
    await expect(page.get_by_test_id("quarantine-note")).to_contain_text("never executed")
    await page.get_by_test_id("analyze-file").set_input_files(
        files=FilePayload(name="field-notes.txt", mimeType="text/plain", buffer=content))
    await page.locator("#analyze-tlp").select_option("green")
    await page.get_by_test_id("analyze-submit").click()

    await expect(page.get_by_test_id("file-sha256")).to_have_text(hashlib.sha256(content).hexdigest(), timeout=60_000)
    summary = page.get_by_test_id("file-analysis")
    await expect(summary).to_contain_text(f"{len(content)} bytes")
    await expect(page.locator("[data-testid=observation][data-type=file]").first).to_be_visible()
    await expect(page.get_by_test_id("analyze-error")).to_have_count(0)
    await summary.scroll_into_view_if_needed()
    await accessible(page, "collectors-file-analysis")
    await page.context.close()


async def test_an_investigation_has_a_map_beside_its_graph(browser: Browser, demo: DemoFleet) -> None:
    investigation = start(demo, request_for(demo.world, "hybrid"))
    try:
        page = await page_for(browser, demo)
        await page.goto(f"/#/investigations/{investigation['id']}")
        await page.get_by_test_id("map-link").click()
        await page.wait_for_url(re.compile(rf".*#/investigations/{investigation['id']}/map$"))
        await expect(page.get_by_role("heading", name="Map")).to_be_visible()
        world = page.get_by_test_id("world-map")
        await expect(world).to_have_attribute("data-atlas", "loaded", timeout=30_000)
        await expect(page.locator("path.country")).to_have_count(177)
        # Places, or the empty state saying none were found yet, and the graph a click away.
        places = int(await world.get_attribute("data-place-count") or 0)
        if places:
            await expect(page.get_by_test_id("map-place")).to_have_count(places)
        else:
            await expect(page.get_by_test_id("map-empty")).to_contain_text("No places were found yet")
        await expect(page.get_by_test_id("graph-link")).to_have_attribute(
            "href", f"#/investigations/{investigation['id']}/graph")
        await accessible(page, "investigation-map")
        await page.context.close()
    finally:
        async with httpx.AsyncClient(headers=demo.auth, timeout=30) as http:
            await http.delete(f"{demo.gateway}/api/v1/investigations/{investigation['id']}")


async def test_bev_analyze_links_the_demo_download_to_its_family(demo: DemoFleet, tmp_path: Path) -> None:
    """`bev analyze` (the CLI over the fleet's bus): the world's BrowserUpdate.exe stand-in matches the
    world's YARA rule, so the file is linked to PaleMoth; a missing file is one line, exit code 1."""
    stand_in = WORLD / "sites" / "cdn-updates.example.net" / "download" / "BrowserUpdate.exe"
    sample = tmp_path / "BrowserUpdate.exe"
    sample.write_bytes(stand_in.read_bytes())
    shown = await asyncio.to_thread(subprocess.run, [str(BEV), "analyze", str(sample), "--data-dir", str(demo.data_dir)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert hashlib.sha256(sample.read_bytes()).hexdigest() in shown.stdout and "PaleMoth" in shown.stdout
    as_json = await asyncio.to_thread(subprocess.run, [str(BEV), "analyze", str(sample), "--json", "--data-dir", str(demo.data_dir)],
                             capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    assert "PaleMoth" in {obs["entity"]["value"] for obs in json.loads(as_json.stdout)
                          if obs["entity"]["type"] == "malware"}
    missing = await asyncio.to_thread(subprocess.run, [str(BEV), "analyze", str(tmp_path / "nope.exe"), "--data-dir", str(demo.data_dir)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
