"""The policy loop inside the running gateway: drift found and re-enforced, reload, close.

A real Gateway (streams, ONVIF devices and the policy service started by the runtime) in
front of simulated cameras; every wait is on the state database or the camera's state.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.policy import api
from gateway.policy.db import PolicyStore
from gateway.policy.service import PolicyService
from gateway.runtime import Gateway
from gateway.sim import dahua as sim_dahua
from gateway.sim import hikvision as sim_hik
from gateway.sim.runner import SimFleet
from gateway.store import Store
from tests.conftest import gateway_config_text, wait_for

EZVIZ = "/ISAPI/System/Network/EZVIZ"
POLICY = """
[onvif]
discovery = false

[policy]
drift_check_interval = {interval}
auto_enforce = {auto_enforce}
request_timeout = 2
[policy.telemetry]
ntp_server = "127.0.0.1"
"""


def _config(base: str, **policy: str) -> cfgmod.Config:
    """``base`` (the fleet's gateway config, fixed ports) with a [policy] section."""
    return cfgmod.loads(base + POLICY.format(**policy), source="test.toml")


def _service(gw: Gateway) -> PolicyService:
    return next(s for s in gw.services if isinstance(s, PolicyService))


@pytest.mark.slow
async def test_running_gateway_finds_and_reenforces_drift(
    fleet: SimFleet,
    tmp_path: Path,
    vms_password: str,
    camera_password: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    hik = next(c.device for c in fleet.cameras if c.device.vendor == "hikvision")
    dahua = next(c.device for c in fleet.cameras if c.device.vendor == "dahua")
    base = gateway_config_text(fleet, tmp_path, vms_password)
    config = _config(base, interval="0.2", auto_enforce="true")
    gw = Gateway(config)
    await gw.start()
    # A second connection to the same database, as the admin API would hold.
    store = Store.in_state_dir(config.state_dir)
    pstore = PolicyStore(store)

    def verified(camera: str, key: str) -> int:
        return sum(e.key == key and e.verified for e in pstore.audit_log(camera))

    try:
        service = _service(gw)
        assert service.running
        # First round: the factory settings are enforced and read back.
        await wait_for(lambda: verified(hik.name, "EZVIZ.enabled") == 1, 30, "EZVIZ enforced")
        await wait_for(lambda: verified(dahua.name, "T2UServer.Enable") == 1, 30, "P2P enforced")
        assert sim_hik.get_value(hik, EZVIZ, "enabled") == "false"
        assert sim_dahua.get_value(dahua, "T2UServer.Enable") == "false"

        # Someone switches Hik-Connect back on at the camera: found, logged, re-applied.
        sim_hik.set_value(hik, EZVIZ, "enabled", "true")
        await wait_for(lambda: verified(hik.name, "EZVIZ.enabled") == 2, 30, "drift re-enforced")
        assert sim_hik.get_value(hik, EZVIZ, "enabled") == "false"
        drifted = [h for h in pstore.history(hik.name) if h["kind"] == "setting_drifted"]
        assert [(h["key"], h["before"], h["after"]) for h in drifted] == [
            ("EZVIZ.enabled", "false", "true")
        ]
        actors = {e.actor for e in pstore.audit_log(hik.name)}
        assert actors == {"drift"}

        def drift_lines() -> list[str]:
            messages = [r.getMessage() for r in caplog.records]
            return [m for m in messages if "EZVIZ.enabled drifted" in m]

        # The round logs once its cameras are done (just after the write above).
        await wait_for(lambda: bool(drift_lines()), 30, "drift logged")
        assert drift_lines() == [
            f"camera {hik.name}: EZVIZ.enabled drifted from the enforced 'false' to 'true'"
            " (re-applying)"
        ]

        # The admin-facing views show the same state.
        inventory = {i["camera"]: i for i in api.latest_inventory(store)}
        assert inventory[hik.name]["identity"]["serial"] == hik.serial
        # ONVIF adds to the vendor inventory (the simulated camera serves both).
        assert inventory[dahua.name]["settings"]["onvif.Manufacturer"] == "Dahua"
        findings = api.latest_findings(store)
        assert set(findings) == {hik.name, dahua.name}
        assert not [
            f for f in findings[hik.name] if f["kind"] == "telemetry" and f["status"] == "open"
        ]
        assert any(e["key"] == "EZVIZ.enabled" for e in api.audit_log(store, limit=50))

        # Reload without auto_enforce: the next flip is recorded as drift, not re-applied.
        before = len(pstore.audit_log())
        await gw.reload(_config(base, interval="0.2", auto_enforce="false"))
        assert _service(gw) is service and service.running
        sim_dahua.set_value(dahua, "T2UServer.Enable", "true")

        def drift_reported() -> bool:
            findings = pstore.findings(dahua.name)
            return any(f["id"] == "T2UServer.Enable" and f.get("drift") for f in findings)

        await wait_for(drift_reported, 30, "drift finding recorded")
        assert sim_dahua.get_value(dahua, "T2UServer.Enable") == "true"
        assert len(pstore.audit_log()) == before
        await wait_for(
            lambda: any(
                f"camera {dahua.name}: T2UServer.Enable drifted" in r.getMessage()
                and "auto_enforce is off" in r.getMessage()
                for r in caplog.records
            ),
            30,
            "drift without re-enforce logged",
        )
        # The streams were never disturbed by any of this.
        assert set(gw.cameras) == {hik.name, dahua.name}
        assert gw.resolve(f"/{hik.name}/main") is not None
    finally:
        await gw.stop()
        store.close()
    assert not service.running
    assert camera_password not in caplog.text


async def test_no_policy_section_means_no_loop(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    base = gateway_config_text(fleet, tmp_path, vms_password)
    config = cfgmod.loads(base + "\n[onvif]\ndiscovery = false\n", source="test.toml")
    gw = Gateway(config)
    await gw.start()
    try:
        service = _service(gw)
        assert not service.running
        assert not service.refresh()
        # Adding [policy] on reload starts it; an on-demand refresh is then accepted.
        await gw.reload(_config(base, interval="3600", auto_enforce="false"))
        assert service.running
        store = Store.in_state_dir(config.state_dir)
        try:
            pstore = PolicyStore(store)
            await wait_for(lambda: len(pstore.snapshots()) == 2, 30, "first inventory")
            first = {s["camera"]: s["taken_at"] for s in pstore.snapshots()}
            assert service.refresh()
            await wait_for(
                lambda: all(s["taken_at"] > first[s["camera"]] for s in pstore.snapshots()),
                30,
                "on-demand inventory",
            )
        finally:
            store.close()
    finally:
        await gw.stop()
    assert not service.running
