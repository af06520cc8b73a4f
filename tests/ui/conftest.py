"""The browser tests' fixtures: per test module, the real fleet on the demo world and a chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from bev.testing.browser import launch_options
from tests.test_investigations import DemoFleet, demo_fleet


@pytest.fixture(scope="module")
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoFleet]:
    with demo_fleet(tmp_path_factory.mktemp(f"ui-fleet-{request.module.__name__.rsplit('.', 1)[-1]}")) as fleet:
        yield fleet


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(**launch_options())
        yield launched
        await launched.close()
