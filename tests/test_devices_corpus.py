"""The fixture corpus (tests/fixtures/devices): every client parser on every fixture.

Each generation directory is served as a camera (files at the endpoints they answer, the
rest refused as that firmware refuses) and read by the real client: identity, settings,
recorder channels, a policy write (its bytes checked against the fixture), and the event
stream through the motion parsers. Every fixture file must be used.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from gateway.devices.dahua import DahuaClient, flatten_table, parse_cgi_lines
from gateway.devices.events import (
    MotionChange,
    MultipartParser,
    parse_dahua_event,
    parse_hikvision_alert,
)
from gateway.devices.hikvision import DOCUMENTS, HikvisionClient, flatten
from gateway.devices.http import CameraHttp
from gateway.devices.optional import NOT_AVAILABLE
from gateway.devices.xmlsafe import parse_xml
from gateway.policy.telemetry import TelemetryPolicy
from gateway.policy.versions import FirmwareVersion
from tests.test_devices_fidelity import assert_only_texts_changed

FIXTURES = Path(__file__).resolve().parent / "fixtures/devices"
GENERATIONS = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*") if p.is_dir())
# generation: model, firmware text, MAC, recorder channels (channel, address)
EXPECTED: dict[str, tuple[str, str, str, list[tuple[int, str]]]] = {
    "hikvision/ipc-v5.4": ("DS-2CD2132F-IWS", "V5.4.0 build 160530", "c4:2f:90:00:00:01", []),
    "hikvision/ipc-v5.5": ("DS-2CD2142FWD-I", "V5.5.800 build 210628", "bc:ad:28:00:00:02", []),
    "hikvision/nvr-v4.21": (
        "DS-7608NI-K2",
        "V4.21.000 build 190722",
        "24:28:fd:00:00:03",
        [(1, "192.168.254.2"), (2, "192.168.254.6")],
    ),
    "dahua/ipc-2.622-cgi": ("IPC-HDW4431C-A", "2.622.0000000.18.R, build: 2019-03-29", "", []),
    "dahua/ipc-2.800-cgi": (
        "IPC-HFW2431S-S-S2",
        "2.800.0000016.0.R, build: 2020-06-05",
        "3c:ef:8c:00:00:02",
        [],
    ),
    "dahua/ipc-rpc": (
        "IPC-HFW3441E-AS",
        "2.800.0000016.0.R, build: 2021-03-02",
        "3c:ef:8c:00:00:04",
        [],
    ),
    "dahua/nvr-cgi": (
        "DHI-NVR4208-8P-4KS2",
        "4.001.0000000.3.R, build: 2020-11-20",
        "3c:ef:8c:00:00:03",
        [(1, "192.168.1.108"), (2, "192.168.1.109")],
    ),
}
# generation: motion changes its event stream carries, in order
MOTION: dict[str, list[MotionChange]] = {
    "hikvision/ipc-v5.4": [MotionChange(True, 1)],
    "hikvision/ipc-v5.5": [MotionChange(True, 1), MotionChange(True, 1), MotionChange(False, 1)],
    "hikvision/nvr-v4.21": [MotionChange(True, 2), MotionChange(True, 1), MotionChange(False, 2)],
    "dahua/ipc-2.622-cgi": [MotionChange(True, 1), MotionChange(False, 1)],
    "dahua/ipc-2.800-cgi": [MotionChange(True, 1), MotionChange(False, 1)],
    "dahua/nvr-cgi": [MotionChange(True, 2), MotionChange(False, 2)],
}
# A host name for NTP, so self-closing <hostName/> elements get filled in too.
POLICY = TelemetryPolicy(ntp_server="ntp.site.example")
OK_STATUS = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ResponseStatus version="2.0" '
    b'xmlns="http://www.hikvision.com/ver20/XMLSchema"><statusCode>1</statusCode>'
    b"<statusString>OK</statusString><subStatusCode>ok</subStatusCode></ResponseStatus>"
)
BAD_REQUEST = b"Error\r\nBad Request!\r\n"


def isapi_path(stem: str) -> str:
    """File name -> ISAPI path: ``Network_UPnP_ports`` -> ``/ISAPI/System/Network/UPnP/ports``."""
    parts = stem.split("_")
    if parts[0] not in ("Security", "ContentMgmt", "Event"):
        parts.insert(0, "System")
    return "/ISAPI/" + "/".join(parts)


@dataclass
class FixtureCamera:
    directory: Path
    used: set[str] = field(default_factory=set)
    writes: list[tuple[str, bytes]] = field(default_factory=list)

    def file(self, name: str) -> bytes | None:
        path = self.directory / name
        if not path.is_file():
            return None
        self.used.add(name)
        return path.read_bytes()

    # ------------------------------------------------------------------ Hikvision

    async def isapi(self, request: web.Request) -> web.Response:
        stem = request.path.removeprefix("/ISAPI/").removeprefix("System/").replace("/", "_")
        if request.method == "PUT":
            self.writes.append((request.path, await request.read()))
            return web.Response(body=OK_STATUS, content_type="application/xml")
        if stem == "Event_notification_alertStream":
            body = self.file(stem + ".multipart")
            content_type = "multipart/mixed; boundary=boundary"
            return web.Response(body=body, headers={"Content-Type": content_type})
        body = self.file(stem + ".xml")
        if body is not None:
            return web.Response(body=body, content_type="application/xml")
        refusal = self.file("notSupport.xml")
        if refusal is not None:  # this firmware answers 403 notSupport
            return web.Response(status=403, body=refusal, content_type="application/xml")
        return web.Response(status=404, text="Not Found")

    # ------------------------------------------------------------------ Dahua

    async def cgi(self, request: web.Request) -> web.Response:
        if any(self.directory.glob("rpc_*")):
            return web.Response(status=404, text="Not Found")  # newer firmware: RPC only
        script = request.match_info["script"].removesuffix(".cgi")
        action = request.query.get("action", "")
        if script == "configManager" and action == "setConfig":
            self.writes.append((script, request.raw_path.partition("?")[2].encode()))
            return web.Response(text="OK\r\n")
        if script == "eventManager":
            body = self.file("eventManager_attach.multipart")
            headers = {"Content-Type": "multipart/x-mixed-replace; boundary=myboundary"}
            return web.Response(body=body, headers=headers)
        name = f"{script}_{action}"
        if action == "getConfig":
            name += "_" + request.query.get("name", "")
        body = self.file(name + ".txt")
        if body is None:
            return web.Response(status=400, body=BAD_REQUEST)
        return web.Response(body=body, content_type="text/plain")

    async def rpc_login(self, request: web.Request) -> web.Response:
        call = await request.json()
        if call.get("session"):
            return web.json_response({"id": call["id"], "result": True, "session": "s1"})
        return web.json_response(
            {
                "id": call["id"],
                "result": False,
                "error": {"code": 268632079, "message": "Component error: login challenge!"},
                "params": {"encryption": "Default", "random": "1234", "realm": "Login to X"},
                "session": "s1",
            }
        )

    async def rpc(self, request: web.Request) -> web.Response:
        call = await request.json()
        method, params = call["method"], call.get("params") or {}
        if method == "configManager.setConfig":
            self.writes.append((method, json.dumps(params).encode()))
            return web.json_response({"id": call["id"], "result": True, "params": {}})
        if method == "global.logout":
            return web.json_response({"id": call["id"], "result": True})
        name = f"rpc_{method}" + (f"_{params['name']}" if "name" in params else "")
        body = self.file(name + ".json")
        if body is None:
            error = {"code": 268959743, "message": "Config not found"}
            return web.json_response({"id": call["id"], "result": False, "error": error})
        return web.json_response(dict(json.loads(body), id=call["id"]))


@asynccontextmanager
async def serve(camera: FixtureCamera) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/ISAPI/{tail:.*}", camera.isapi)
    app.router.add_get("/cgi-bin/{script}", camera.cgi)
    app.router.add_post("/RPC2_Login", camera.rpc_login)
    app.router.add_post("/RPC2", camera.rpc)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def motion_of(generation: str, stream: bytes, boundary: str) -> list[MotionChange]:
    """The stream through the motion parsers, fed in small chunks as a socket delivers it."""
    parser = MultipartParser(boundary)
    # A part without Content-Length ends at the next boundary: the stream's next one.
    stream += f"--{boundary}--\r\n".encode()
    parse = parse_hikvision_alert if generation.startswith("hikvision") else parse_dahua_event
    changes = []
    for start in range(0, len(stream), 7):
        for part in parser.feed(stream[start : start + 7]):
            change = parse(part.body)
            if change is not None:
                changes.append(change)
    return changes


def expand_empty(data: bytes) -> bytes:
    """``<a/>`` as ``<a></a>``: the one form change a write makes, when it fills one in."""
    return re.sub(rb"<([A-Za-z0-9_:]+)/>", rb"<\1></\1>", data)


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_every_parser_on_every_fixture(generation: str) -> None:
    vendor = generation.split("/")[0]
    camera = FixtureCamera(FIXTURES / generation)
    model, firmware, mac, channels = EXPECTED[generation]
    async with serve(camera) as port:
        http = CameraHttp("fixture", "127.0.0.1", port, "admin", "unused", timeout=5.0)
        client: Any = (
            HikvisionClient(http) if vendor == "hikvision" else DahuaClient(http, "admin", "x")
        )
        try:
            identity = await client.device_info()
            assert (identity.model, identity.firmware_text(), identity.mac) == (
                model,
                firmware,
                mac,
            )
            # Every firmware string the corpus holds parses, whatever its form.
            assert FirmwareVersion.parse(vendor, identity.firmware_text()).build is not None
            settings = await client.read_settings()
            assert [(c.channel, c.address) for c in await client.channels()] == channels
            desired = {k: v for k, (_f, v) in POLICY.desired_for("cam", vendor, settings).items()}
            desired = {k: v for k, v in desired.items() if k in settings}
            await client.write_settings(desired)
            stream_path = (
                "/ISAPI/Event/notification/alertStream"
                if vendor == "hikvision"
                else "/cgi-bin/eventManager.cgi?action=attach&codes=[VideoMotion]"
            )
            path, _, query = stream_path.partition("?")
            stream = await http.request("GET", path, raw_query=query or None)
        finally:
            await client.close()
    if generation in MOTION:
        boundary = "boundary" if vendor == "hikvision" else "myboundary"
        assert motion_of(generation, stream.body, boundary) == MOTION[generation]
    # Tables and documents the firmware lacks are marked, never a failure.
    for name in settings:
        if settings[name] == NOT_AVAILABLE:
            assert "." not in name
    if vendor == "hikvision":
        check_isapi_writes(camera, desired)
    else:
        check_dahua_writes(camera, desired)
    unused = {p.name for p in camera.directory.iterdir()} - camera.used
    assert not unused, f"fixtures no parser read: {sorted(unused)}"


def check_isapi_writes(camera: FixtureCamera, desired: dict[str, str]) -> None:
    prefixes = {k.partition(".")[0] for k in desired}
    assert sorted(p for p, _ in camera.writes) == sorted(DOCUMENTS[p] for p in prefixes)
    for path, body in camera.writes:
        prefix = next(p for p, d in DOCUMENTS.items() if d == path)
        changed = {k.partition(".")[2]: v for k, v in desired.items() if k.startswith(prefix + ".")}
        stem = path.removeprefix("/ISAPI/").removeprefix("System/").replace("/", "_")
        original = (camera.directory / f"{stem}.xml").read_bytes()
        assert_only_texts_changed(expand_empty(original), expand_empty(body), changed)
        # Only an empty element that received a value changed its form.
        filled = sum(
            1 for k, v in changed.items() if v and f"<{k.split('.')[-1]}/>" in original.decode()
        )
        assert body.count(b"/>") == original.count(b"/>") - filled


def check_dahua_writes(camera: FixtureCamera, desired: dict[str, str]) -> None:
    rpc = any(camera.directory.glob("rpc_*"))
    for _kind, body in camera.writes:
        if rpc:
            params = json.loads(body)
            name = params["name"]
            read = json.loads(
                (camera.directory / f"rpc_configManager.getConfig_{name}.json").read_text()
            )
            before = flatten_table(name, read["params"]["table"])
            after = flatten_table(name, params["table"])
            assert before.keys() == after.keys()
            for key in before:
                assert after[key] == desired.get(key, before[key])
        else:
            pairs = [item.split("=", 1) for item in body.decode().split("&")[1:]]
            for raw_key, value in pairs:
                key = unquote(raw_key)
                table = key.split(".")[0].split("[")[0]
                lines = (camera.directory / f"configManager_getConfig_{table}.txt").read_text()
                assert key in parse_cgi_lines(lines)  # spelt exactly as the table has it
                assert unquote(value) == desired[key]
    assert {k.split(".")[0].split("[")[0] for k in desired} == {
        json.loads(b)["name"]
        if rpc
        else unquote(b.decode().split("&")[1]).split(".")[0].split("[")[0]
        for _k, b in camera.writes
    }


def test_ntp_by_address_on_firmware_without_an_ip_element() -> None:
    """The NVR's NTPServer has only hostName: the gateway's IP goes there."""
    settings: dict[str, str] = {}
    root = FIXTURES / "hikvision/nvr-v4.21/time_ntpServers_1.xml"
    settings.update(flatten("ntpServer", parse_xml(root.read_bytes())))
    desired = TelemetryPolicy(ntp_server="192.0.2.10").desired_for("nvr", "hikvision", settings)
    assert desired["ntpServer.hostName"] == ("ntp", "192.0.2.10")
    assert desired["ntpServer.addressingFormatType"] == ("ntp", "hostname")
    assert "ntpServer.ipAddress" not in desired
