"""Device fidelity: writes in the camera's own form, reads that tolerate firmware variation.

Every write the policy makes is checked byte for byte against the document (or table) the
camera served: only the intended values differ. Audit and enforce run against the strict
simulator in each firmware variant. A subprocess test shows the product writes the same bytes
whether or not the simulator has been imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
import pytest

from gateway.config import load
from gateway.devices.dahua import DahuaClient, flatten_table, parse_cgi_lines
from gateway.devices.hikvision import DOCUMENTS, HikvisionClient, flatten
from gateway.devices.http import CameraHttp
from gateway.devices.optional import REASON
from gateway.devices.xmlsafe import parse_xml
from gateway.policy.audit import run_audit, run_enforce
from gateway.policy.telemetry import TelemetryPolicy
from gateway.sim import dahua as sim_dahua
from gateway.sim import hikvision as sim_hik
from gateway.sim.device import SimDevice
from gateway.store import Store
from tests.test_policy_audit import CLEAN, SCHEMA
from tests.test_policy_support import (
    PASSWORD,
    enable_all_telemetry,
    make_device,
    sim_cameras,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests/fixtures/devices"
POLICY = TelemetryPolicy(ntp_server="192.0.2.10")
TEXT = re.compile(rb">([^<]*)<")


def _http(name: str, port: int) -> CameraHttp:
    return CameraHttp(name, "127.0.0.1", port, "admin", PASSWORD, timeout=5.0)


def _desired(vendor: str, settings: dict[str, str]) -> dict[str, str]:
    return {k: v for k, (_f, v) in POLICY.desired_for("cam", vendor, settings).items()}


def assert_only_texts_changed(read: bytes, written: bytes, changed: dict[str, str]) -> None:
    """``written`` is ``read`` byte for byte, except the texts of the elements named in
    ``changed`` (flat keys relative to the document), which carry the new values."""
    assert TEXT.sub(b"><", written) == TEXT.sub(b"><", read), "markup differs"
    before, after = TEXT.findall(read), TEXT.findall(written)
    assert len(before) == len(after)
    differing = {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    flat_before = flatten("d", parse_xml(read))
    flat_after = flatten("d", parse_xml(written))
    expected = {k for k, v in changed.items() if flat_before[f"d.{k}"] != v}
    assert len(differing) == len(expected)
    for key in expected:
        assert flat_after[f"d.{key}"] == changed[key]
    for key in flat_before.keys() - {f"d.{k}" for k in expected}:
        assert flat_after[key] == flat_before[key], key


HIK_VARIANTS = {
    "hikvision-ns": {},
    "isapi-ns": {"isapi_namespace": "isapi"},
    "mixed-ns": {"mixed_namespaces": True},
    "isapi-mixed": {"isapi_namespace": "isapi", "mixed_namespaces": True},
}


@pytest.mark.parametrize("variant", HIK_VARIANTS)
async def test_hikvision_writes_are_the_read_document_with_only_the_change(variant: str) -> None:
    device = make_device("hik", "hikvision", **HIK_VARIANTS[variant])
    async with sim_cameras(device) as (cam,):
        sim_hik.reset(device)
        enable_all_telemetry(device)
        client = HikvisionClient(_http("hik", cam.port))
        try:
            settings = await client.read_settings()
            desired = _desired("hikvision", settings)
            read = {}
            for path in DOCUMENTS.values():
                read[path] = (await client.http.request("GET", path)).body
                assert f'xmlns="{sim_hik.namespace_of(device)}"'.encode() in read[path]
            await client.write_settings(desired)
        finally:
            await client.close()
    touched = {DOCUMENTS[k.partition(".")[0]] for k in desired}
    # Every document the policy touches was written once, complete and in its own form.
    assert sorted(path for path, _ in device.writes) == sorted(touched)
    assert len(touched) >= 10
    for path, body in device.writes:
        prefix = next(p for p, d in DOCUMENTS.items() if d == path)
        changed = {k.partition(".")[2]: v for k, v in desired.items() if k.startswith(prefix + ".")}
        original = read[path]
        if path == "/ISAPI/System/time":  # the clock moved between the two reads
            original = re.sub(
                rb"<localTime>[^<]*<", b"<localTime>" + _local_time(body) + b"<", original
            )
        assert_only_texts_changed(original, body, changed)
        assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
        assert b"ns0:" not in body and b"xmlns:" not in body


def _local_time(body: bytes) -> bytes:
    match = re.search(rb"<localTime>([^<]*)<", body)
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize("cgi", [True, False], ids=["cgi", "rpc"])
async def test_dahua_writes_use_the_tables_as_read(cgi: bool) -> None:
    device = make_device("dh", "dahua")
    async with sim_cameras(device) as (cam,):
        sim_dahua.set_cgi_available(device, cgi)
        enable_all_telemetry(device)
        tables = {name: json.loads(json.dumps(device.settings[name])) for name in device.settings}
        client = DahuaClient(_http("dh", cam.port), "admin", PASSWORD)
        try:
            desired = _desired("dahua", await client.read_settings())
            await client.write_settings(desired)
        finally:
            await client.close()
    written_tables = {str(k.split(".")[0].split("[")[0]) for k in desired}
    assert len(written_tables) >= 10
    if cgi:
        # One setConfig per table; every key exactly as getConfig spelt it (table, index, case).
        assert len(device.writes) == len(written_tables)
        for script, query in device.writes:
            assert script == "configManager.cgi"
            pairs = [item.split("=", 1) for item in query.decode().split("&")]
            assert pairs[0] == ["action", "setConfig"]
            for key, value in pairs[1:]:
                key = unquote(key)
                table = key.split(".")[0].split("[")[0]
                assert key in flatten_table(table, tables[table])
                assert desired[key] == unquote(value)
    else:
        # One setConfig per table with the complete table as read, only the values changed.
        assert len(device.writes) == len(written_tables)
        for method, body in device.writes:
            assert method == "configManager.setConfig"
            params = json.loads(body)
            name = params["name"]
            before, after = flatten_table(name, tables[name]), flatten_table(name, params["table"])
            assert before.keys() == after.keys()
            for key in before:
                assert after[key] == desired.get(key, before[key]), key


async def test_strict_dahua_refuses_unknown_or_miscased_keys() -> None:
    device = make_device("dh", "dahua")
    async with sim_cameras(device) as (cam,):
        http = _http("dh", cam.port)
        try:
            for query in (
                "action=setConfig&NTP.port=123",  # case differs from the table's "Port"
                "action=setConfig&DDNS[5].Enable=false",  # index the table does not have
                "action=setConfig&Nonsense.Enable=false",
                "action=getConfig&name=ntp",
            ):
                response = await http.request("GET", "/cgi-bin/configManager.cgi", raw_query=query)
                assert (response.status, response.body) == (400, b"Error\r\nBad Request!\r\n")
            assert device.writes == []
        finally:
            await http.close()


PRODUCT_WRITE = textwrap.dedent(
    """
    import asyncio, sys
    import xml.etree.ElementTree as ET
    if sys.argv[1] == "with-sim":
        import gateway.sim.runner, gateway.sim.hikvision, gateway.sim.dahua  # noqa: F401
    from aiohttp import web
    from gateway.devices.dahua import DahuaClient
    from gateway.devices.hikvision import HikvisionClient
    from gateway.devices.http import CameraHttp

    DOCUMENT = open(sys.argv[2], "rb").read()
    TABLE = open(sys.argv[3], "rb").read()
    OK = (b'<?xml version="1.0" encoding="UTF-8"?>\\n<ResponseStatus version="2.0" '
          b'xmlns="http://www.hikvision.com/ver20/XMLSchema"><statusCode>1</statusCode>'
          b"</ResponseStatus>")

    async def main():
        received = []
        async def isapi(request):
            if request.method == "PUT":
                received.append(await request.read())
                return web.Response(body=OK, content_type="application/xml")
            return web.Response(body=DOCUMENT, content_type="application/xml")
        async def cgi(request):
            if request.query.get("action") == "setConfig":
                received.append(request.raw_path.encode())
                return web.Response(text="OK\\r\\n")
            if request.query.get("action") == "getConfig":
                return web.Response(body=TABLE)
            return web.Response(text="version=2.800.0000016.0.R,build:2020-06-05\\r\\n")
        app = web.Application()
        app.router.add_route("*", "/ISAPI/System/Network/EZVIZ", isapi)
        app.router.add_get("/cgi-bin/{script}", cgi)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        hik = HikvisionClient(CameraHttp("cam", "127.0.0.1", port, "u", "p"))
        await hik.write_settings({"EZVIZ.enabled": "false"})
        await hik.close()
        dahua = DahuaClient(CameraHttp("cam", "127.0.0.1", port, "u", "p"), "u", "p")
        await dahua.write_settings({"NTP.Address": "192.0.2.10", "NTP.Enable": "true"})
        await dahua.close()
        await runner.cleanup()
        # What xml.etree would write: changed by register_namespace, if anything called it.
        probe = ET.tostring(ET.Element("{http://www.hikvision.com/ver20/XMLSchema}x"))
        for body in received:
            print(body.hex())
        print(probe.decode())

    asyncio.run(main())
    """
)


def test_simulator_import_changes_no_product_bytes(tmp_path: Path) -> None:
    document = FIXTURES / "hikvision/ipc-v5.5/Network_EZVIZ.xml"
    table = FIXTURES / "dahua/ipc-2.800-cgi/configManager_getConfig_NTP.txt"
    script = tmp_path / "write.py"
    script.write_text(PRODUCT_WRITE)
    outputs = {}
    for mode in ("product-only", "with-sim"):
        done = subprocess.run(
            [sys.executable, str(script), mode, str(document), str(table)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs[mode] = done.stdout.splitlines()
    assert outputs["product-only"] == outputs["with-sim"]
    isapi, cgi, probe = outputs["with-sim"]
    assert_only_texts_changed(document.read_bytes(), bytes.fromhex(isapi), {"enabled": "false"})
    assert bytes.fromhex(cgi) == (
        b"/cgi-bin/configManager.cgi?action=setConfig&NTP.Address=192.0.2.10&NTP.Enable=true"
    )
    assert probe.startswith("<ns0:x")


# --------------------------------------------------------------------------- variants end to end

VARIANTS: dict[str, list[dict[str, Any]]] = {
    # name: [hikvision device options, dahua device options]
    "default": [{}, {}],
    "isapi-namespace": [{"isapi_namespace": "isapi"}, {"cgi_available": False}],
    "mixed-namespaces": [{"mixed_namespaces": True}, {"version_form": "build-date"}],
    "missing-tables": [
        {
            "missing": {
                "/ISAPI/System/Network/UPnP",
                "/ISAPI/System/Network/UPnP/ports",
                "/ISAPI/System/Network/Ehome",
                "/ISAPI/System/time/ntpServers/1#portNo",
            }
        },
        {"missing": {"Network", "UPnP", "VSP_PaaS", "NTP.Port"}},
    ],
    "missing-tables-rpc": [
        {"isapi_namespace": "isapi", "missing": {"/ISAPI/System/Network/ftp"}},
        {"missing": {"Network", "UPnP", "NTP.Port"}, "cgi_available": False},
    ],
}
NOT_AVAILABLE_EXPECTED = {
    "missing-tables": (
        {"UPnP", "UPnPPorts", "Ehome", "ntpServer.portNo"},
        {"UPnP", "VSP_PaaS", "NTP.Port"},
    ),
    "missing-tables-rpc": ({"ftp"}, {"UPnP", "NTP.Port"}),
}


def variant_devices(variant: str) -> tuple[SimDevice, SimDevice]:
    hik_options, dh_options = VARIANTS[variant]
    hik = make_device("lobby", "hikvision", **CLEAN["hikvision"], **hik_options)
    dh = make_device("gate", "dahua", **CLEAN["dahua"], **dh_options)
    return hik, dh


@pytest.mark.parametrize("variant", VARIANTS)
async def test_audit_and_enforce_in_every_variant(tmp_path: Path, variant: str) -> None:
    hik, dh = variant_devices(variant)
    async with sim_cameras(hik, dh) as cams:
        sim_hik.reset(hik)
        sim_dahua.reset(dh)
        for device in (hik, dh):
            enable_all_telemetry(device, skip_missing=True)
        config = load(write_config(tmp_path, cams))
        store = Store.in_state_dir(config.state_dir)
        try:
            audit = await run_audit(config, store)
            jsonschema.validate(audit.to_json(), SCHEMA)
            assert [c.error for c in audit.cameras] == [None, None]
            assert [c.status for c in audit.cameras] == ["non_compliant", "non_compliant"]
            identities = [c.record.identity for c in audit.cameras if c.record]
            assert identities[0] and identities[0].firmware_text() == "V5.5.800 build 210628"
            assert identities[1] and identities[1].firmware_text() == (
                "2.820.0000000.28.R, build: 2025-05-01"
            )
            # The MAC is a nice-to-have: a refused Network table leaves it empty, no more.
            assert identities[1].mac == ("" if "Network" in dh.missing else dh.mac)

            enforced = await run_enforce(config, store)
            jsonschema.validate(enforced.to_json(), SCHEMA)
            assert enforced.exit_code() == 0, enforced.to_json()
            assert all(ch.verified for c in enforced.cameras for ch in c.changes)
            assert hik.writes and dh.writes

            again = await run_audit(config, store)
            assert again.exit_code() == 0, again.to_json()
            expected = NOT_AVAILABLE_EXPECTED.get(variant, (set(), set()))
            for camera, keys in zip(again.cameras, expected, strict=True):
                shown = {n["setting"] for n in camera.to_json()["not_available"]}
                assert shown == keys, camera.name
                assert all(n["reason"] == REASON for n in camera.to_json()["not_available"])
        finally:
            store.close()


def test_cgi_lines_tolerate_build_date_form() -> None:
    lines = parse_cgi_lines("version=2.622.0000000.18.R, Build Date: 2019-03-29\r\n")
    assert lines == {"version": "2.622.0000000.18.R, Build Date: 2019-03-29"}
