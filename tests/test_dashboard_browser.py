"""The dashboard in Debian's headless Chromium (driven by Playwright with the system browser),
over HTTPS with the gateway's generated certificate: sign in, every simulated camera shows a
snapshot, the H.264 live view plays through Media Source Extensions, the H.265 camera
explains that the browser cannot play it and offers the H.264 sub stream, and the page logs
no console errors. Then each role signs in and finds what it may and may not do."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.runner import SimFleet
from tests.admin_support import AdminGateway, admin_gateway
from tests.test_admin_roles import PASSWORDS, users_toml

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
    # The generated certificate is self-signed; only this test browser skips the warning.
    "--ignore-certificate-errors",
]


# True once the grid shows the simulated fleet's two cameras, each with a decoded snapshot.
TWO_CARDS_WITH_PICTURES = """() => {
    const cards = [...document.querySelectorAll('.card')];
    return cards.length === 2 && cards.every(c => {
        const img = c.querySelector('img');
        return img.complete && img.naturalWidth > 0;
    });
}"""


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
            TWO_CARDS_WITH_PICTURES,
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
        viewers = admin.gateway.stream_status("hik1", "main")
        assert viewers is not None and viewers.clients >= 1
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


async def sign_in(page: Any, admin: AdminGateway, name: str) -> None:
    await page.goto(admin.url + "/")
    assert "/login" in page.url
    await page.fill("#username", name)
    await page.fill("#password", PASSWORDS[name])
    await page.click("button[type=submit]")
    await page.wait_for_url(admin.url + "/")
    await page.wait_for_function("() => document.body.dataset.role !== undefined")


async def post_from_page(page: Any, path: str) -> int:
    """A POST from the dashboard's own script context (its CSRF token included)."""
    return int(
        await page.evaluate(
            """async (path) => {
                const s = await (await fetch('/api/v1/session')).json();
                const r = await fetch(path, {method: 'POST',
                                             headers: {'X-CSRF-Token': s.csrf_token}});
                return r.status;
            }""",
            path,
        )
    )


async def test_each_role_sees_and_may_do_its_part(
    fleet: SimFleet, tmp_path: Path, vms_password: str, browser: Any
) -> None:
    extra = users_toml(tmp_path)
    async with admin_gateway(
        fleet, tmp_path, vms_password, wait_pictures=False, extra_admin=extra
    ) as admin:
        assert admin.url.startswith("https://")
        visible: dict[str, dict[str, bool]] = {}
        for name in ("vera", "otto", "ada"):
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc, p=problems: p.append(str(exc)))
            await sign_in(page, admin, name)
            await page.wait_for_selector(".card[data-camera=hik1]")
            visible[name] = {
                control: await page.is_visible(selector)
                for control, selector in (
                    ("reconnect", ".card[data-camera=hik1] .reconnect"),
                    ("reload", "#reload"),
                    ("trail", "#trail-open"),
                    ("live", ".card[data-camera=hik1] .watch"),
                )
            }
            role = await page.evaluate("document.body.dataset.role")
            text = await page.text_content("#user")
            assert text == f"{name} ({role})"
            # What the page hides, the API refuses; what it shows, works.
            reload_status = await post_from_page(page, "/api/v1/reload")
            reconnect_status = await post_from_page(page, "/api/v1/cameras/hik1/reconnect")
            expected = {"vera": (403, 403), "otto": (403, 202), "ada": (200, 202)}[name]
            assert (reload_status, reconnect_status) == expected, name
            if visible[name]["trail"]:
                await page.click("#trail-open")
                await page.wait_for_selector("#trail[open] #trail-table tbody tr")
                rows = await page.eval_on_selector_all(
                    "#trail-table tbody tr", "rows => rows.map(r => r.textContent)"
                )
                assert any("vera (viewer)" in r and "reload" in r and "refused" in r for r in rows)
                assert any(f"{name} (" in r and "sign-in" in r for r in rows)
                await page.click("#trail-close")
            cookies = [c for c in await browser.cookies() if c["name"] == "gw_session"]
            assert cookies and all(
                c["secure"] and c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies
            )
            await page.click("#logout")
            await page.wait_for_url("**/login")
            await page.close()
            assert not problems, problems
        assert visible == {
            "vera": {"reconnect": False, "reload": False, "trail": False, "live": True},
            "otto": {"reconnect": True, "reload": False, "trail": True, "live": True},
            "ada": {"reconnect": True, "reload": True, "trail": True, "live": True},
        }
