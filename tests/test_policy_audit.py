"""Audit, enforce, drift and the audit trail, end to end against simulated cameras.

Cameras are the simulator's Hikvision and Dahua faces on loopback; the store is real SQLite
in a temporary state directory; the CLI runs as a real subprocess.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import date
from pathlib import Path

import jsonschema
import pytest

from gateway.config import ConfigError, load
from gateway.policy.audit import policy_loop, run_audit, run_enforce
from gateway.policy.config import parse_policy
from gateway.policy.db import PolicyStore
from gateway.policy.telemetry import supported_features
from gateway.sim import dahua as sim_dahua
from gateway.sim import hikvision as sim_hik
from gateway.store import Store
from tests.test_policy_support import (
    PASSWORD,
    enable_all_telemetry,
    make_device,
    sim_cameras,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "gateway/policy/audit.schema.json").read_text())
# Firmware without known advisories, so only telemetry decides compliance.
CLEAN = {
    "hikvision": {"firmware": "V5.5.800", "build": "build 210628"},
    "dahua": {"firmware": "2.820.0000000.28.R", "build": "2025-05-01"},
}


def clean_devices() -> tuple:
    return (
        make_device("lobby", "hikvision", **CLEAN["hikvision"]),
        make_device("gate", "dahua", **CLEAN["dahua"]),
    )


def telemetry(report_camera) -> dict[str, str]:
    return {f.id: f.feature for f in report_camera.findings if f.kind == "telemetry"}


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition the code under test makes true (checked every 20 ms)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_audit_enforce_drift_and_audit_log(tmp_path: Path) -> None:
    hik, dh = clean_devices()
    async with sim_cameras(hik, dh) as cams:
        enable_all_telemetry(hik)
        enable_all_telemetry(dh)
        config = load(write_config(tmp_path, cams))
        store = Store.in_state_dir(config.state_dir)

        report = await run_audit(config, store)
        by_name = {c.name: c for c in report.cameras}
        # Every governed feature of each vendor is found, named by its setting key.
        for name, vendor in (("lobby", "hikvision"), ("gate", "dahua")):
            found = set(telemetry(by_name[name]).values())
            assert found == set(supported_features(vendor)), name
            assert by_name[name].status == "non_compliant"
        assert {"EZVIZ.enabled", "Ehome.enabled", "UPnPPorts.enabled", "time.timeMode"} <= set(
            telemetry(by_name["lobby"])
        )
        assert {"T2UServer.Enable", "VSP_PaaS.Enable", "DDNS[1].Enable", "NTP.Address"} <= set(
            telemetry(by_name["gate"])
        )
        # Audit changed nothing.
        assert sim_dahua.get_value(dh, "T2UServer.Enable") == "true"
        assert report.exit_code() == 1
        jsonschema.validate(report.to_json(), SCHEMA)

        enforced = await run_enforce(config, store)
        jsonschema.validate(enforced.to_json(), SCHEMA)
        assert all(ch.verified for c in enforced.cameras for ch in c.changes)
        assert enforced.exit_code() == 0, enforced.to_json()
        assert sim_hik.get_value(hik, "/ISAPI/System/Network/EZVIZ", "enabled") == "false"
        assert sim_hik.get_value(hik, "/ISAPI/System/time/ntpServers/1", "ipAddress") == (
            "127.0.0.1"
        )
        assert sim_dahua.get_value(dh, "NTP.Address") == "127.0.0.1"
        assert sim_dahua.get_value(dh, "NTP.Enable") == "true"

        second = await run_audit(config, store)
        assert [c.status for c in second.cameras] == ["compliant", "compliant"]
        assert second.exit_code() == 0

        # Someone switches P2P back on from the camera's web UI: the next check finds drift.
        sim_dahua.set_value(dh, "T2UServer.Enable", "true")
        third = await run_audit(config, store)
        gate = next(c for c in third.cameras if c.name == "gate")
        drifted = [f for f in gate.findings if f.drift]
        assert [f.id for f in drifted] == ["T2UServer.Enable"]
        history = PolicyStore(store).history("gate")
        assert {"kind": "setting_drifted", "key": "T2UServer.Enable"}.items() <= history[-1].items()

        log = PolicyStore(store).audit_log()
        keys = {(e.camera, e.key) for e in log}
        assert ("gate", "T2UServer.Enable") in keys and ("lobby", "EZVIZ.enabled") in keys
        entry = next(e for e in log if e.key == "EZVIZ.enabled")
        assert (entry.before, entry.after, entry.verified, entry.actor) == (
            "true",
            "false",
            True,
            "enforce",
        )
        count = len(log)
        store.close()

    # Restart: the log is all there; it cannot be edited or deleted.
    reopened = Store.in_state_dir(config.state_dir)
    pstore = PolicyStore(reopened)
    assert len(pstore.audit_log()) == count
    for statement in ("UPDATE policy_audit_log SET after = 'x'", "DELETE FROM policy_audit_log"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            reopened.execute(statement)
    assert reopened.query("PRAGMA integrity_check")[0][0] == "ok"
    reopened.close()
    # Camera passwords never reach the database (WAL and main file).
    for path in Path(config.state_dir).iterdir():
        assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("fault", ["hang", "garbage", "html", "unauthorized", "reset"])
async def test_a_faulty_camera_never_stops_the_others(tmp_path: Path, fault: str) -> None:
    hik, dh = clean_devices()
    broken = make_device("broken", "hikvision")
    async with sim_cameras(hik, dh, broken) as cams:
        broken.faults.add(fault)
        enable_all_telemetry(dh)
        config = load(write_config(tmp_path, cams, timeout=0.5))
        store = Store.in_state_dir(config.state_dir)
        report = await run_enforce(config, store)
        by_name = {c.name: c for c in report.cameras}
        assert by_name["broken"].status == "error"
        message = by_name["broken"].error.message  # type: ignore[union-attr]
        assert message.startswith("camera broken:") and PASSWORD not in message
        assert by_name["gate"].status == "compliant" and by_name["gate"].changes
        assert by_name["lobby"].status == "compliant"
        assert report.exit_code() == 1
        jsonschema.validate(report.to_json(), SCHEMA)
        store.close()


async def test_allow_list_and_site_rules(tmp_path: Path) -> None:
    vulnerable = make_device(
        "old", "dahua", model="IPC-HFW2431S-S-S2", firmware="2.800.0000016.0.R", build="2020-06-05"
    )
    async with sim_cameras(vulnerable) as cams:
        sim_dahua.set_value(vulnerable, "Email.Enable", "true")
        policy = """
        [[policy.allow]]
        id = "CVE-2022-30563"
        cameras = ["old"]
        expires = 2099-01-01
        reason = "ONVIF reachable only through the gateway"
        [[policy.allow]]
        id = "CVE-2025-31700"
        expires = 2020-01-01
        reason = "old acceptance"
        [[policy.firmware.minimum]]
        vendor = "dahua"
        model = "IPC-HX2XXX"
        version = "2.820.0000000.28.R.230314"
        [policy.telemetry.camera.old]
        email = "allowed"
        """
        config = load(write_config(tmp_path, cams, policy))
        store = Store.in_state_dir(config.state_dir)
        report = await run_audit(config, store, today=date(2026, 1, 1))
        findings = {f.id: f for f in report.cameras[0].findings}
        assert findings["CVE-2022-30563"].status == "accepted"
        assert findings["CVE-2025-31700"].status == "open"
        assert "expired on 2020-01-01" in findings["CVE-2025-31700"].notes[0]
        assert findings["firmware.minimum"].severity == "high"
        assert "Email.Enable" not in findings  # allowed for this camera
        store.close()


def test_policy_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        textwrap.dedent("""
        [vms]
        username = "vms"
        password = "vms-password-123"
        [[camera]]
        name = "a"
        vendor = "dahua"
        host = "127.0.0.1"
        [policy]
        drift_check_interval = -1
        [[policy.firmware.minimum]]
        vendor = "dahua"
        model = "IPC-HX2XXX"
        version = "two point eight"
        [[policy.allow]]
        id = "CVE-2022-30563"
        reason = "x"
        expires = "soon"
        [policy.telemetry]
        cloud = "maybe"
        [policy.telemetry.camera.nobody]
        ftp = "allowed"
        """)
    )
    with pytest.raises(ConfigError) as info:
        parse_policy(load(path))
    keys = {k for k, _ in info.value.problems}
    assert keys >= {
        "policy.drift_check_interval",
        "policy.firmware.minimum[0].version",
        "policy.allow[0].expires",
        "policy.telemetry.cloud",
        "policy.telemetry.camera.nobody",
        "policy.telemetry.ntp_server",
    }


async def test_policy_loop_reenforces_drift(tmp_path: Path) -> None:
    hik, dh = clean_devices()
    async with sim_cameras(hik, dh) as cams:
        path = write_config(tmp_path, cams, timeout=1.0)
        text = path.read_text().replace(
            "[policy]\n", "[policy]\ndrift_check_interval = 0.05\nauto_enforce = true\n"
        )
        path.write_text(text)
        config = load(path)
        store = Store.in_state_dir(config.state_dir)
        stop = asyncio.Event()
        task = asyncio.create_task(policy_loop(config, store, stop))
        pstore = PolicyStore(store)

        def p2p_fixes() -> int:
            """Verified writes of the P2P switch (logged after the read-back is stored)."""
            return sum(e.key == "T2UServer.Enable" and e.verified for e in pstore.audit_log())

        try:
            await wait_until(lambda: p2p_fixes() == 1)
            assert sim_dahua.get_value(dh, "T2UServer.Enable") == "false"
            sim_dahua.set_value(dh, "T2UServer.Enable", "true")  # drift
            await wait_until(lambda: p2p_fixes() == 2)
            assert sim_dahua.get_value(dh, "T2UServer.Enable") == "false"
            actors = {e.actor for e in PolicyStore(store).audit_log("gate")}
            assert actors == {"drift"}
            kinds = {h["kind"] for h in PolicyStore(store).history("gate")}
            assert "setting_drifted" in kinds
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            store.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_cli_audit_enforce_inventory(tmp_path: Path) -> None:
    hik, dh = clean_devices()
    async with sim_cameras(hik, dh) as cams:
        enable_all_telemetry(hik)
        config = write_config(tmp_path, cams)
        outputs: list[str] = []

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            result = await asyncio.to_thread(_cli, *args)
            outputs.extend([result.stdout, result.stderr])
            return result

        audit = await cli("audit", "--config", str(config), "--json")
        assert audit.returncode == 1, audit.stderr
        data = json.loads(audit.stdout)
        jsonschema.validate(data, SCHEMA)
        assert data["summary"]["non_compliant"] == 2

        html = tmp_path / "report.html"
        table = await cli("audit", "--config", str(config), "--html", str(html))
        assert table.returncode == 1
        assert "EZVIZ.enabled" in table.stdout and "\x1b[" not in table.stdout  # no colours
        page = html.read_text()
        assert page.startswith("<!DOCTYPE html>") and "T2UServer.Enable" in page
        outputs.append(page)

        enforce = await cli("enforce", "--config", str(config))
        assert enforce.returncode == 0, enforce.stdout + enforce.stderr
        assert "lobby: applying" in enforce.stderr  # progress
        again = await cli("audit", "--config", str(config), "--json")
        assert again.returncode == 0
        jsonschema.validate(json.loads(again.stdout), SCHEMA)

        inventory = await cli("inventory", "--config", str(config), "--json")
        assert inventory.returncode == 0
        cameras = {c["name"]: c for c in json.loads(inventory.stdout)["cameras"]}
        assert cameras["lobby"]["identity"]["serial"] == hik.serial
        assert cameras["gate"]["identity"]["mac"] == dh.mac
        assert cameras["gate"]["identity"]["build"] == "2025-05-01"

        dh.faults.add("unauthorized")
        failing = await cli("audit", "--config", str(config), "--json")
        assert failing.returncode == 1
        gate = next(c for c in json.loads(failing.stdout)["cameras"] if c["name"] == "gate")
        assert gate["error"]["kind"] == "unauthorized"

        bad = tmp_path / "bad.toml"
        bad.write_text(config.read_text() + "\n[policy.telemetry.vendor.dahua]\nupnp = 1\n")
        broken = await cli("audit", "--config", str(bad))
        assert broken.returncode == 2
        assert "policy.telemetry.vendor.dahua.upnp" in broken.stderr
        assert "Traceback" not in broken.stderr

        for text in outputs:
            assert PASSWORD not in text


async def test_cli_dry_run_one_camera_csv_and_80_columns(tmp_path: Path) -> None:
    hik, dh = clean_devices()
    async with sim_cameras(hik, dh) as cams:
        enable_all_telemetry(hik)
        config = write_config(tmp_path, cams)

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(_cli, *args)

        # A dry run reads and plans; it writes nothing to the camera or the audit log.
        before = sim_hik.get_value(hik, "/ISAPI/System/Network/EZVIZ", "enabled")
        plan = await cli("enforce", "-c", str(config), "--camera", "lobby", "--dry-run", "--json")
        assert plan.returncode == 1, plan.stderr
        data = json.loads(plan.stdout)
        jsonschema.validate(data, SCHEMA)
        assert data["dry_run"] is True
        assert [c["name"] for c in data["cameras"]] == ["lobby"]
        changes = data["cameras"][0]["changes"]
        assert changes and all(c["planned"] and not c["verified"] for c in changes)
        assert sim_hik.get_value(hik, "/ISAPI/System/Network/EZVIZ", "enabled") == before
        store = Store.in_state_dir(tmp_path / "state")
        try:
            assert PolicyStore(store).audit_log("lobby") == []
        finally:
            store.close()
        text = await cli("enforce", "-c", str(config), "--camera", "lobby", "--dry-run")
        assert "would set EZVIZ.enabled" in text.stdout and "dry run" in text.stdout

        # An unknown camera is a usage error that names the nearest one.
        typo = await cli("audit", "-c", str(config), "--camera", "lobyy")
        assert typo.returncode == 2 and 'did you mean "lobby"' in typo.stderr

        # CSV: a header and one row per camera; every cell a plain value.
        rows = list(
            csv.reader((await cli("inventory", "-c", str(config), "--csv")).stdout.splitlines())
        )
        assert rows[0][:4] == ["camera", "model", "firmware", "mac"]
        assert {r[0] for r in rows[1:]} == {"lobby", "gate"}
        audit_rows = list(
            csv.reader((await cli("audit", "-c", str(config), "--csv")).stdout.splitlines())
        )
        assert audit_rows[0][0] == "camera" and any(r[2] == "finding" for r in audit_rows[1:])

        # In an 80-column terminal no line is wider; --wide brings the other columns.
        for command in (["inventory"], ["audit"], ["enforce", "--dry-run"]):
            shown = await asyncio.to_thread(_cli_columns, 80, *command, "-c", str(config))
            assert all(len(line) <= 80 for line in shown.stdout.splitlines()), shown.stdout
        wide = await asyncio.to_thread(_cli_columns, 80, "inventory", "-c", str(config), "--wide")
        assert hik.serial in wide.stdout


def _cli_columns(columns: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)},
    )


WRITER = """
import sys, time
from gateway.store import Store
from gateway.policy.db import PolicyStore
pstore = PolicyStore(Store.in_state_dir(sys.argv[1]))
for i in range(100000):
    pstore.log_change("cam", f"key{i % 7}", "true", "false", verified=True,
                      actor="enforce", now=time.time(), detail="x" * 200)
    print(i, flush=True)
"""


def test_audit_log_survives_sigkill_of_a_writer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    committed = -1
    for line in child.stdout:  # each line follows a committed row
        committed = int(line)
        if committed >= 300:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    store = Store.in_state_dir(state)
    assert store.query("PRAGMA integrity_check")[0][0] == "ok"
    rows = PolicyStore(store).audit_log()
    assert len(rows) >= committed + 1
    assert all(r.after == "false" and r.detail == "x" * 200 for r in rows)
    store.close()
