"""A real browser for the web UI's tests and bench: Debian's chromium (`make setup` installs it),
driven by Playwright, launched by its path: Playwright's own browser download cannot work offline.

The flags keep chromium off the network it would otherwise try at every start (updates, sync,
QUIC probes), which this machine's closed network refuses many at a time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from playwright.async_api import Page

REPO = Path(__file__).resolve().parents[3]
AXE = REPO / "services" / "gateway" / "web" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required"]
KEY_STORAGE = "bev.key"  # services/gateway/web/src/lib/api.js keeps the key in sessionStorage under it


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("chromium is not installed: `make setup` installs it (apt-get install chromium)")
    return path


def launch_options() -> dict[str, Any]:
    """chromium.launch(**launch_options()), for Playwright's sync and async APIs alike."""
    return {"executable_path": chromium_path(), "args": CHROMIUM_FLAGS}


def key_script(key: str) -> str:
    """An init script that puts `key` in the tab's sessionStorage, as signing in does."""
    return f"sessionStorage.setItem({KEY_STORAGE!r}, {key!r});"


async def axe_violations(page: Page,
                         impacts: frozenset[str] = frozenset({"serious", "critical"})) -> list[dict[str, Any]]:
    """axe-core's violations of the page as it is now, of the given impacts, each with its rule id,
    help text and the elements it found (axe-core: the npm package the UI's build installs). Loaded
    by DevTools evaluation, which the page's Content-Security-Policy (no inline script, no eval)
    does not govern, so the page is checked under the policy it ships with."""
    if not AXE.is_file():
        raise RuntimeError(f"{AXE} is missing: `make setup` installs the web UI's packages")
    if not await page.evaluate("() => typeof axe !== 'undefined'"):
        await page.evaluate(AXE.read_text())
    result: dict[str, Any] = await page.evaluate(
        "async () => await axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in impacts]
