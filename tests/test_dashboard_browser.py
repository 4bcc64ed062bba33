"""The dashboard in Debian's headless Chromium (driven by Playwright with the system browser):
sign in, every simulated camera shows a snapshot, the H.264 live view plays through Media
Source Extensions, the H.265 camera explains that the browser cannot play it and offers the
H.264 sub stream, and the page logs no console errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.runner import SimFleet
from tests.admin_support import admin_gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture
async def browser(tmp_path: Path) -> Any:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip("needs Debian's chromium (deploy/bootstrap.sh test)")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user data dir per test
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield context
        finally:
            await context.close()


async def test_dashboard_grid_live_view_and_h265_message(
    fleet: SimFleet, tmp_path: Path, vms_password: str, browser: Any
) -> None:
    async with admin_gateway(fleet, tmp_path, vms_password) as admin:
        page = await browser.new_page()
        problems: list[str] = []
        page.on(
            "console",
            lambda msg: (
                problems.append(f"console {msg.type}: {msg.text}")
                if msg.type in ("error", "assert")
                else None
            ),
        )
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

        await page.goto(admin.url + "/")
        assert "/login" in page.url
        await page.fill("#username", admin.username)
        await page.fill("#password", admin.password)
        await page.click("button[type=submit]")
        await page.wait_for_url(admin.url + "/")
        assert admin.password not in page.url

        # The grid: one card per simulated camera, each with a decoded snapshot.
        await page.wait_for_function(
            """() => {
                const cards = [...document.querySelectorAll('.card')];
                return cards.length === 2 && cards.every(c => {
                    const img = c.querySelector('img');
                    return img.complete && img.naturalWidth > 0;
                });
            }""",
            timeout=20_000,
        )
        cards = await page.eval_on_selector_all(
            ".card",
            """cards => cards.map(c => ({
                name: c.dataset.camera,
                state: c.querySelector('.state').textContent,
                width: c.querySelector('img').naturalWidth,
                facts: c.querySelector('.facts').textContent,
            }))""",
        )
        assert sorted(c["name"] for c in cards) == ["dahua1", "hik1"]
        for card in cards:
            assert card["state"] == "live" and card["width"] == 320, card
            assert "320\u00d7240" in card["facts"], card

        # H.264: the live view plays without transcoding.
        await page.click(".card[data-camera=hik1] .watch")
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 1.0", timeout=20_000
        )
        first = await page.evaluate("document.getElementById('video').currentTime")
        await page.wait_for_function(
            f"() => document.getElementById('video').currentTime > {first} + 1.0",
            timeout=10_000,
        )
        size = await page.evaluate(
            "[document.getElementById('video').videoWidth, "
            "document.getElementById('video').videoHeight]"
        )
        assert size == [320, 240]
        viewers = admin.gateway.stream_info("hik1", "main")
        assert viewers is not None and viewers["clients"] >= 1
        await page.click("#live-close")

        # H.265: Debian's chromium has no HEVC decoder; the dialog says so and offers the
        # camera's H.264 sub stream, which then plays.
        await page.click(".card[data-camera=dahua1] .watch")
        message = page.locator("#live-message")
        await message.wait_for(state="visible", timeout=10_000)
        text = await message.text_content()
        assert text is not None and "cannot play H.265" in text
        await message.locator("button", has_text="sub stream").click()
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 1.0", timeout=20_000
        )
        assert await page.text_content("#live-title") == "dahua1 / sub"
        await page.click("#live-close")
        await page.close()
        assert not problems, problems
