"""The dashboard's live view plays within half a second of the newest frame it received
(Chromium, H.264 over the fragmented-MP4 WebSocket)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.sim.runner import SimFleet
from tests.admin_support import admin_gateway
from tests.test_dashboard_browser import browser  # noqa: F401  (the Chromium fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_live_view_stays_near_the_live_edge(
    fleet: SimFleet,
    tmp_path: Path,
    vms_password: str,
    browser: Any,  # noqa: F811
) -> None:
    async with admin_gateway(fleet, tmp_path, vms_password) as admin:
        page = await browser.new_page()
        await page.goto(admin.url + "/login")
        await page.fill("#username", admin.username)
        await page.fill("#password", admin.password)
        await page.click("button[type=submit]")
        await page.wait_for_url(admin.url + "/")
        await page.wait_for_selector(".card[data-camera=hik1] .watch")
        await page.click(".card[data-camera=hik1] .watch")
        # Past the start (the cached GOP is sent at once and played through first).
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 3.0", timeout=30_000
        )
        # The lag behind the newest buffered frame, sampled every frame for two seconds.
        lags = await page.evaluate(
            """() => new Promise((resolve) => {
                const video = document.getElementById('video');
                const lags = [];
                const started = performance.now();
                function sample() {
                    const b = video.buffered;
                    if (b.length) lags.push(b.end(b.length - 1) - video.currentTime);
                    if (performance.now() - started < 2000) requestAnimationFrame(sample);
                    else resolve(lags);
                }
                requestAnimationFrame(sample);
            })"""
        )
        assert lags and max(lags) < 0.5, (max(lags), len(lags))
