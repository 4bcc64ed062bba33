"""The dashboard at site scale, in Chromium over HTTPS: 200 cameras load and filter within a
second (search, down, non-compliant, phoning home, sort), in the grid and the list view;
each card carries the VMS-side addresses; a camera's compliance badge opens its findings."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from gateway import config as cfgmod
from gateway.admin import service as admin_service
from gateway.admin.tls import generated_paths
from gateway.runtime import Gateway
from tests.conftest import free_port, wait_for
from tests.test_dashboard_browser import browser  # noqa: F401  (the Chromium fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CAMERAS = 200
DOWN = {f"cam{i:03d}" for i in range(0, CAMERAS, 20)}  # 10 always-on cameras nobody answers
NON_COMPLIANT = {f"cam{i:03d}" for i in range(5, CAMERAS, 25)}  # 8
PHONING = {f"cam{i:03d}" for i in range(7, CAMERAS, 50)}  # 4


def site_config(tmp_path: Path, admin_port: int, password: str) -> str:
    dead = free_port()  # nothing listens there: the always-on cameras are down
    lines = [
        f'state_dir = "{tmp_path / "state"}"',
        "[server]",
        'bind = "127.0.0.1"',
        f"rtsp_port = {free_port()}",
        "onvif_base_port = 20000",  # ONVIF is not started in this test
        'ingest = "native"',
        "[vms]",
        'username = "vms"',
        'password = "vms-password-1"',
        "[admin]",
        'bind = "127.0.0.1"',
        f"port = {admin_port}",
        'username = "admin"',
        f'password = "{password}"',
    ]
    for i in range(CAMERAS):
        name = f"cam{i:03d}"
        host = "127.0.0.1" if name in DOWN else f"10.1.{i // 250}.{i % 250 + 1}"
        lines += [
            "[[camera]]",
            f'name = "{name}"',
            f'vendor = "{"hikvision" if i % 2 else "dahua"}"',
            f'host = "{host}"',
            'username = "admin"',
            'password = "camera-password"',
            f"rtsp_port = {dead}",
            f"on_demand = {'false' if name in DOWN else 'true'}",
        ]
    return "\n".join(lines) + "\n"


async def test_two_hundred_cameras_load_and_filter_within_a_second(
    tmp_path: Path,
    browser: Any,  # noqa: F811
) -> None:
    password = "adm-" + secrets.token_urlsafe(12)
    port = free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(site_config(tmp_path, port, password))
    gw = Gateway(cfgmod.load(path), start_services=False)
    await gw.start()
    service = await admin_service.start(gw)
    try:
        ctx = service.ctx
        # The policy and egress records a site would have (the cameras are not real).
        ctx.camera_findings = lambda name: (
            ("non-compliant", [_finding(name)]) if name in NON_COMPLIANT else ("compliant", [])
        )
        ctx.egress = lambda: {
            "cameras": [
                {"name": n, "blocked_packets": 3, "dns_queries": 1, "dns_phone_home": 1}
                for n in sorted(PHONING)
            ]
        }
        await wait_for(
            lambda: all(gw.hub(n, "main").state == "down" for n in DOWN), 30, "cameras down"
        )
        assert generated_paths(tmp_path / "state")[0].exists()
        url = f"https://127.0.0.1:{port}"

        page = await browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: problems.append(msg.text) if msg.type in ("error", "assert") else None,
        )
        await page.goto(url + "/login")
        await page.fill("#username", "admin")
        await page.fill("#password", password)
        await page.click("button[type=submit]")
        await page.wait_for_url(url + "/")

        # Loading: from navigation to 200 cards with their state, in the page's own clock.
        await page.goto(url + "/")
        loaded = await page.wait_for_function(
            f"""() => {{
                const cards = document.querySelectorAll('.card');
                const states = [...cards].filter(c => c.querySelector('.state').textContent);
                return states.length === {CAMERAS} && performance.now();
            }}""",
            polling="raf",
            timeout=20_000,
        )
        assert await loaded.json_value() < 1000

        async def filtered(action: str) -> tuple[float, list[str]]:
            """Run ``action`` in the page; the time until the view shows the result."""
            return tuple(  # type: ignore[return-value]
                await page.evaluate(
                    f"""() => {{
                        const started = performance.now();
                        {action}
                        const shown = [...document.querySelectorAll('.card:not([hidden])')]
                            .map(c => c.dataset.camera);
                        return [performance.now() - started, shown];
                    }}"""
                )
            )

        def set_input(selector: str, value: str) -> str:
            return (
                f"const el = document.querySelector('{selector}'); el.value = '{value}';"
                "el.dispatchEvent(new Event('input'));"
            )

        def set_check(selector: str, on: bool) -> str:
            return (
                f"const el = document.querySelector('{selector}'); el.checked = {str(on).lower()};"
                "el.dispatchEvent(new Event('input'));"
            )

        seconds, shown = await filtered(set_input("#search", "cam01"))
        assert seconds < 1000 and shown == [f"cam{i:03d}" for i in range(10, 20)]
        seconds, shown = await filtered(set_input("#search", "10.1.0.200"))
        assert seconds < 1000 and shown == ["cam199"]  # by IP
        await filtered(set_input("#search", ""))
        seconds, shown = await filtered(set_check("#only-down", True))
        assert seconds < 1000 and set(shown) == DOWN
        await filtered(set_check("#only-down", False))
        # Findings and egress come with the slower poll.
        await page.wait_for_function(
            "() => document.querySelector('.card[data-camera=cam005] .compliance')"
            ".textContent.startsWith('non-compliant')",
            timeout=20_000,
        )
        seconds, shown = await filtered(set_check("#only-noncompliant", True))
        assert seconds < 1000 and set(shown) == NON_COMPLIANT
        await filtered(set_check("#only-noncompliant", False))
        seconds, shown = await filtered(set_check("#only-phoning", True))
        assert seconds < 1000 and set(shown) == PHONING
        await filtered(set_check("#only-phoning", False))
        seconds, shown = await filtered(set_input("#sort", "state"))
        assert seconds < 1000 and set(shown[: len(DOWN)]) == DOWN  # down first

        # The list view: one row per camera, still all 200 with their addresses.
        await page.click("#view-toggle")
        assert await page.evaluate("document.getElementById('grid').classList.contains('list')")
        seconds, shown = await filtered(set_input("#search", "hik"))
        assert seconds < 1000 and len(shown) == CAMERAS // 2
        card = page.locator(".card[data-camera=cam001]")
        assert (await card.locator(".rtsp").text_content()) == (
            f"rtsp://127.0.0.1:{gw.config.server.rtsp_port}/cam001/main"
        )
        assert (await card.locator(".onvif").text_content()) == (
            "http://127.0.0.1:20001/onvif/device_service"
        )
        assert (await card.locator(".ip").text_content()) == "10.1.0.2"
        # A down camera says since when.
        down = page.locator(".card[data-camera=cam000] .error")
        assert (await down.text_content() or "").startswith("down since")

        # The compliance badge opens that camera's findings.
        await page.click("#view-toggle")
        await filtered(set_input("#search", "cam005"))
        await page.click(".card[data-camera=cam005] .compliance")
        await page.wait_for_selector("#findings[open]")
        rows = await page.locator("#findings-table tbody tr").all_text_contents()
        assert len(rows) == 1 and "cam005" in rows[0] and "Cloud service enabled" in rows[0]
        assert problems == []
    finally:
        await service.close()
        await gw.stop()


def _finding(camera: str) -> dict[str, Any]:
    return {
        "id": "telemetry.cloud",
        "kind": "telemetry",
        "severity": "medium",
        "title": "Cloud service enabled",
        "action": "enforce switches it off",
        "status": "open",
    }
