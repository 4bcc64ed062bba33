"""The simulated cameras' Hikvision ISAPI and Dahua CGI/RPC faces, spoken to as raw HTTP.

Each check is what real firmware does and what the gateway (or other tools) rely on.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET

import aiohttp
import pytest
import yarl

from gateway.devices.events import (
    MotionChange,
    MultipartParser,
    Part,
    multipart_boundary,
    parse_dahua_event,
    parse_hikvision_alert,
)
from gateway.devices.xmlsafe import parse_xml
from gateway.digest import DigestClient
from gateway.sim import dahua as sim_dahua
from gateway.sim import hikvision as sim_hik
from gateway.sim.device import SimDevice
from tests.test_policy_support import PASSWORD, make_device, sim_cameras

NS = "{http://www.hikvision.com/ver20/XMLSchema}"


async def _digest(
    session: aiohttp.ClientSession, method: str, url: str, path: str, data: bytes | None = None
) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    """One request answered the way a Digest client does (401, then authorised)."""
    target = yarl.URL(url + path, encoded=True)  # sent byte for byte, as Digest signs it
    async with session.request(method, target, data=data) as first:
        assert first.status == 401
        challenges = first.headers.getall("WWW-Authenticate")
        await first.read()
    auth = DigestClient("admin", PASSWORD, allow_basic=False)
    auth.handle_challenge(challenges)
    headers = {"Authorization": auth.authorization(method, path) or ""}
    async with session.request(method, target, data=data, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_hikvision_isapi_face() -> None:
    device = make_device("hik", "hikvision", firmware="V5.4.0", build="build 160530")
    async with sim_cameras(device) as (cam,), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{cam.port}"
        async with session.get(url + "/ISAPI/System/deviceInfo") as resp:
            assert resp.status == 401
            challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith("Digest ") and f'realm="{device.realm()}"' in challenge
        assert 'qop="auth"' in challenge

        status, body, _ = await _digest(session, "GET", url, "/ISAPI/System/deviceInfo")
        assert status == 200
        info = parse_xml(body)
        assert info.tag == f"{NS}DeviceInfo"
        assert info.findtext(f"{NS}firmwareVersion") == "V5.4.0"
        assert info.findtext(f"{NS}firmwareReleasedDate") == "build 160530"
        assert info.findtext(f"{NS}serialNumber") == device.serial

        # Read-modify-write of the device's own document, sent back in its own form.
        status, body, _ = await _digest(session, "GET", url, "/ISAPI/System/Network/UPnP")
        assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<UPnP version="2.0"')
        assert b'xmlns="http://www.hikvision.com/ver20/XMLSchema"' in body
        changed = body.replace(b"<enabled>true</enabled>", b"<enabled>false</enabled>")
        status, reply_body, _ = await _digest(
            session, "PUT", url, "/ISAPI/System/Network/UPnP", changed
        )
        reply = parse_xml(reply_body)
        assert (status, reply.tag, reply.findtext(f"{NS}statusCode")) == (
            200,
            f"{NS}ResponseStatus",
            "1",
        )
        assert sim_hik.get_value(device, "/ISAPI/System/Network/UPnP", "enabled") == "false"

        # The fussiest firmware's parser: the same document with prefixes (what
        # xml.etree writes), a partial one, one with elements reordered or in another
        # namespace: all refused with statusCode 6 badXmlContent, and nothing changes.
        doc = ET.fromstring(changed.replace(b"<enabled>false", b"<enabled>true"))
        prefixed = ET.tostring(doc)
        assert b"<ns0:UPnP" in prefixed
        partial = (
            b'<UPnP xmlns="http://www.hikvision.com/ver20/XMLSchema"><enabled>true</enabled></UPnP>'
        )
        name = sim_hik.get_value(device, "/ISAPI/System/Network/UPnP", "name").encode()
        reordered = (
            b'<UPnP version="2.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">'
            b"<name>" + name + b"</name><enabled>true</enabled></UPnP>"
        )
        foreign = changed.replace(b"hikvision.com/ver20", b"isapi.org/ver20")
        for wrong, words in (
            (prefixed, b"prefixed element"),
            (partial, b"incomplete document"),
            (reordered, b"where 'enabled' belongs"),
            (foreign, b"in namespace"),
        ):
            status, reply_body, _ = await _digest(
                session, "PUT", url, "/ISAPI/System/Network/UPnP", wrong
            )
            reply = parse_xml(reply_body)
            assert status == 400, wrong
            assert reply.findtext(f"{NS}statusCode") == "6"
            assert reply.findtext(f"{NS}subStatusCode") == "badXmlContent"
            assert words in reply_body
        assert sim_hik.get_value(device, "/ISAPI/System/Network/UPnP", "enabled") == "false"

        # SSH changes ask for a reboot (statusCode 7).
        status, body, _ = await _digest(session, "GET", url, "/ISAPI/System/Network/ssh")
        status, body, _ = await _digest(
            session,
            "PUT",
            url,
            "/ISAPI/System/Network/ssh",
            body.replace(b"<enabled>true</enabled>", b"<enabled>false</enabled>"),
        )
        assert status == 200 and parse_xml(body).findtext(f"{NS}statusCode") == "7"

        # Malformed XML: 400 statusCode 5; wrong value type: 400 statusCode 6; nothing changed.
        status, body, _ = await _digest(
            session, "PUT", url, "/ISAPI/System/Network/EZVIZ", b"<EZVIZ><enabled>true"
        )
        assert status == 400
        assert parse_xml(body).findtext(f"{NS}subStatusCode") == "badXmlFormat"
        status, body, _ = await _digest(session, "GET", url, "/ISAPI/System/Network/EZVIZ")
        status, body, _ = await _digest(
            session,
            "PUT",
            url,
            "/ISAPI/System/Network/EZVIZ",
            body.replace(b"<enabled>true</enabled>", b"<enabled>maybe</enabled>"),
        )
        assert status == 400 and parse_xml(body).findtext(f"{NS}statusCode") == "6"
        assert sim_hik.get_value(device, "/ISAPI/System/Network/EZVIZ", "enabled") == "true"
        # DTDs (entity expansion) are refused as bad XML, never expanded.
        bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa">]><EZVIZ><enabled>&a;</enabled></EZVIZ>'
        status, body, _ = await _digest(session, "PUT", url, "/ISAPI/System/Network/EZVIZ", bomb)
        assert status == 400 and parse_xml(body).findtext(f"{NS}statusCode") == "5"

        status, body, _ = await _digest(session, "GET", url, "/ISAPI/System/nothing")
        assert status == 404 and parse_xml(body).findtext(f"{NS}statusCode") == "4"


async def test_hikvision_alert_stream_reports_motion() -> None:
    device = make_device("hik", "hikvision", motion_interval=0.05)
    async with sim_cameras(device) as (cam,), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{cam.port}"
        path = "/ISAPI/Event/notification/alertStream"
        async with session.get(url + path) as first:
            challenges = first.headers.getall("WWW-Authenticate")
        auth = DigestClient("admin", PASSWORD)
        auth.handle_challenge(challenges)
        headers = {"Authorization": auth.authorization("GET", path) or ""}
        async with session.get(url + path, headers=headers) as resp:
            assert resp.headers["Content-Type"].startswith("multipart/mixed; boundary=boundary")
            reader = aiohttp.MultipartReader.from_response(resp)
            states = []
            while len(states) < 2:
                part = await reader.next()
                assert part is not None
                alert = parse_xml(await part.read())  # type: ignore[union-attr]
                assert alert.findtext(f"{NS}eventType") == "VMD"
                states.append(alert.findtext(f"{NS}eventState"))
        assert states == ["active", "inactive"]


async def test_dahua_cgi_face() -> None:
    device = make_device("dh", "dahua")
    async with sim_cameras(device) as (cam,), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{cam.port}"
        status, body, _ = await _digest(
            session, "GET", url, "/cgi-bin/magicBox.cgi?action=getSoftwareVersion"
        )
        assert (status, body) == (200, b"version=2.800.0000016.0.R,build:2020-06-05\r\n")
        status, body, _ = await _digest(
            session, "GET", url, "/cgi-bin/magicBox.cgi?action=getSystemInfo"
        )
        assert f"serialNumber={device.serial}\r\n".encode() in body
        status, body, _ = await _digest(
            session, "GET", url, "/cgi-bin/configManager.cgi?action=getConfig&name=DDNS"
        )
        assert b"table.DDNS[0].Enable=false\r\n" in body
        assert b"table.DDNS[1].Protocol=NO-IP DDNS\r\n" in body
        status, body, _ = await _digest(
            session,
            "GET",
            url,
            "/cgi-bin/configManager.cgi?action=setConfig&DDNS[1].Enable=true&UPnP.Enable=false",
        )
        assert (status, body) == (200, b"OK\r\n")
        assert sim_dahua.get_value(device, "DDNS[1].Enable") == "true"
        assert sim_dahua.get_value(device, "UPnP.Enable") == "false"
        # All or nothing: one bad key and nothing changes.
        status, body, _ = await _digest(
            session,
            "GET",
            url,
            "/cgi-bin/configManager.cgi?action=setConfig&UPnP.Enable=true&NTP.Port=abc",
        )
        assert (status, body) == (400, b"Error\r\nBad Request!\r\n")
        assert sim_dahua.get_value(device, "UPnP.Enable") == "false"

        # Newer firmware: no CGI at all.
        sim_dahua.set_cgi_available(device, False)
        async with session.get(url + "/cgi-bin/magicBox.cgi?action=getSerialNo") as resp:
            assert resp.status == 404


async def test_dahua_rpc_two_step_login_and_config() -> None:
    device = make_device("dh", "dahua")
    async with sim_cameras(device) as (cam,), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{cam.port}"
        login = {
            "method": "global.login",
            "id": 1,
            "params": {"userName": "admin", "password": "", "clientType": "Dahua3.0-Web3.0"},
        }
        async with session.post(url + "/RPC2_Login", json=login) as resp:
            first = await resp.json()
        assert first["result"] is False and first["error"]["code"] == 268632079
        realm, random = first["params"]["realm"], first["params"]["random"]
        assert realm == device.realm()
        # The hash computed independently of the gateway's helper.
        inner = hashlib.md5(f"admin:{realm}:{PASSWORD}".encode()).hexdigest().upper()
        answer = hashlib.md5(f"admin:{random}:{inner}".encode()).hexdigest().upper()
        wrong = dict(
            login, session=first["session"], params=dict(login["params"], password="0" * 32)
        )
        async with session.post(url + "/RPC2_Login", json=wrong) as resp:
            assert (await resp.json())["result"] is False
        async with session.post(url + "/RPC2_Login", json=login) as resp:
            first = await resp.json()
        inner_random = first["params"]["random"]
        answer = hashlib.md5(f"admin:{inner_random}:{inner}".encode()).hexdigest().upper()
        second = dict(
            login,
            session=first["session"],
            params=dict(
                login["params"], password=answer, authorityType="Default", passwordType="Default"
            ),
        )
        async with session.post(url + "/RPC2_Login", json=second) as resp:
            assert (await resp.json())["result"] is True
        sid = first["session"]
        call = {
            "method": "configManager.getConfig",
            "params": {"name": "NTP"},
            "id": 3,
            "session": sid,
        }
        async with session.post(url + "/RPC2", json=call) as resp:
            table = (await resp.json())["params"]["table"]
        assert table["Address"] == "clock.isc.org" and table["Enable"] is False
        table["Enable"] = True
        call = {
            "method": "configManager.setConfig",
            "params": {"name": "NTP", "table": table},
            "id": 4,
            "session": sid,
        }
        async with session.post(url + "/RPC2", json=call) as resp:
            assert (await resp.json())["result"] is True
        assert sim_dahua.get_value(device, "NTP.Enable") == "true"
        bad = dict(call, params={"name": "NTP", "table": dict(table, Port="123")})
        async with session.post(url + "/RPC2", json=bad) as resp:
            assert (await resp.json())["result"] is False
        stranger = dict(call, session="not-a-session")
        async with session.post(url + "/RPC2", data=json.dumps(stranger)) as resp:
            assert (await resp.json())["error"]["code"] == 287637505


async def test_dahua_event_stream_reports_motion() -> None:
    device = make_device("dh", "dahua", motion_interval=0.05)
    async with sim_cameras(device) as (cam,), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{cam.port}"
        path = "/cgi-bin/eventManager.cgi?action=attach&codes=[VideoMotion]"
        target = yarl.URL(url + path, encoded=True)
        async with session.get(target) as first:
            challenges = first.headers.getall("WWW-Authenticate")
        auth = DigestClient("admin", PASSWORD)
        auth.handle_challenge(challenges)
        headers = {"Authorization": auth.authorization("GET", path) or ""}
        async with session.get(target, headers=headers) as resp:
            reader = aiohttp.MultipartReader.from_response(resp)
            lines = []
            while len(lines) < 2:
                part = await reader.next()
                assert part is not None
                lines.append((await part.read()).decode().strip())  # type: ignore[union-attr]
        assert lines == [
            "Code=VideoMotion;action=Start;index=0",
            "Code=VideoMotion;action=Stop;index=0",
        ]


@pytest.mark.parametrize("fault", ["garbage", "html", "unauthorized"])
async def test_faults_on_both_faces(fault: str) -> None:
    hik, dh = make_device("hik", "hikvision"), make_device("dh", "dahua")
    async with sim_cameras(hik, dh) as cams, aiohttp.ClientSession() as session:
        for cam, path in zip(
            cams,
            ["/ISAPI/System/deviceInfo", "/cgi-bin/magicBox.cgi?action=getSerialNo"],
            strict=True,
        ):
            cam.device.faults.add(fault)
            async with session.get(f"http://127.0.0.1:{cam.port}{path}") as resp:
                body = await resp.read()
                if fault == "unauthorized":
                    assert resp.status == 401 and "WWW-Authenticate" in resp.headers
                elif fault == "html":
                    assert resp.status == 500 and body.startswith(b"<!DOCTYPE html>")
                else:
                    assert resp.status == 200
                    with pytest.raises(ValueError):
                        parse_xml(body)


async def read_motion(device: SimDevice, count: int) -> list[tuple[MotionChange, Part]]:
    """The first ``count`` motion changes of the device's event stream, as the gateway's
    own parsers read them."""
    if device.vendor == "hikvision":
        path, query, parse = "/ISAPI/Event/notification/alertStream", "", parse_hikvision_alert
    else:
        path, query = "/cgi-bin/eventManager.cgi", "action=attach&codes=[VideoMotion]"
        parse = parse_dahua_event
    uri = path + ("?" + query if query else "")
    found: list[tuple[MotionChange, Part]] = []
    async with sim_cameras(device) as (cam,), aiohttp.ClientSession() as session:
        target = yarl.URL(f"http://127.0.0.1:{cam.port}{uri}", encoded=True)
        async with session.get(target) as first:
            challenges = first.headers.getall("WWW-Authenticate")
        auth = DigestClient("admin", PASSWORD)
        auth.handle_challenge(challenges)
        headers = {"Authorization": auth.authorization("GET", uri) or ""}
        async with session.get(target, headers=headers) as resp:
            parser = MultipartParser(multipart_boundary(resp.headers["Content-Type"]))
            while len(found) < count:
                chunk = await resp.content.readany()
                assert chunk
                for part in parser.feed(chunk):
                    change = parse(part.body)
                    if change is not None:
                        found.append((change, part))
    return found[:count]


@pytest.mark.parametrize("form", ["length", "boundary"])
@pytest.mark.parametrize("vendor", ["hikvision", "dahua"])
async def test_event_stream_forms_read_by_the_motion_parsers(vendor: str, form: str) -> None:
    """Both part forms of both vendors' streams, through the gateway's own parsers."""
    device = make_device("cam", vendor, motion_interval=0.05, event_form=form)
    found = await read_motion(device, 3)
    assert [change for change, _ in found] == [
        MotionChange(True, 1),
        MotionChange(False, 1),
        MotionChange(True, 1),
    ]
    assert all(("content-length" in part.headers) == (form == "length") for _, part in found)


@pytest.mark.parametrize("vendor", ["hikvision", "dahua"])
async def test_a_recorder_streams_motion_for_every_channel(vendor: str) -> None:
    device = make_device("nvr", vendor, motion_interval=0.05, channels=3)
    found = await read_motion(device, 6)
    assert [change for change, _ in found] == [MotionChange(True, n) for n in (1, 2, 3)] + [
        MotionChange(False, n) for n in (1, 2, 3)
    ]


async def test_digest_challenges_in_each_vendors_form() -> None:
    hik, dh = make_device("hik", "hikvision"), make_device("dh", "dahua")
    async with sim_cameras(hik, dh) as cams, aiohttp.ClientSession() as session:
        seen = {}
        for cam, path in zip(
            cams,
            ["/ISAPI/System/deviceInfo", "/cgi-bin/magicBox.cgi?action=getSerialNo"],
            strict=True,
        ):
            async with session.get(f"http://127.0.0.1:{cam.port}{path}") as resp:
                assert resp.status == 401
                seen[cam.device.vendor] = resp.headers["WWW-Authenticate"]
    assert re.fullmatch(
        r'Digest qop="auth", realm="IP Camera\(\w{5}\)", nonce="[^"]+", stale="FALSE"',
        seen["hikvision"],
    )
    assert re.fullmatch(
        rf'Digest realm="Login to {dh.serial}", qop="auth", nonce="[^"]+", opaque="[0-9a-f]+"',
        seen["dahua"],
    )
