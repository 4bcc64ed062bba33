"""Dahua face of a simulated camera: HTTP CGI, JSON-RPC and the event stream.

``device.settings`` holds the config tables by name in their JSON-RPC shape (``"NTP":
{"Enable": false, ...}``, ``"DDNS": [{...}, {...}]``); the CGI reads and writes the same
tables in their flat ``table.Name.Key=Value`` form, so both APIs always agree. A device can
be switched to "newer firmware" (:func:`set_cgi_available` False): the CGI then answers 404
and only JSON-RPC works.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any

from aiohttp import web

from gateway.cancellation import wait_for
from gateway.devices.dahua import (
    INVALID_SESSION,
    LOGIN_CHALLENGE,
    flatten_table,
    login_hash,
    parse_key,
    set_in_table,
)
from gateway.sim import httpauth
from gateway.sim.device import SimDevice

BAD_REQUEST = "Error\r\nBad Request!\r\n"
LOGIN_FAILED = 268632085
NO_SUCH_CONFIG = 268959743
HEARTBEAT_SECONDS = 5.0
MAX_RPC_BYTES = 64 * 1024
# Tables whose change makes the firmware ask for a reboot.
REBOOT_TABLES = {"SSHD", "Telnet", "Network"}


def _factory_defaults(device: SimDevice) -> dict[str, Any]:
    """Tables as a freshly reset camera has them: P2P and cloud on, UPnP and Bonjour on."""
    return {
        "Network": {
            "DefaultInterface": "eth0",
            "Domain": "dahua",
            "Hostname": device.name,
            "eth0": {
                "IPAddress": device.host,
                "SubnetMask": "255.255.255.0",
                "DefaultGateway": "192.168.1.1",
                "PhysicalAddress": device.mac,
                "MTU": 1500,
                "DhcpEnable": False,
            },
        },
        "T2UServer": {"Enable": True, "Type": 2},
        "VSP_PaaS": {"Enable": True, "CustomName": ""},
        "UPnP": {
            "Enable": True,
            "Mode": "Auto",
            "MapTable": [
                {
                    "Enable": True,
                    "InnerPort": device.http_port,
                    "OuterPort": 8080,
                    "Protocol": "TCP",
                    "ServiceName": "HTTP",
                },
                {
                    "Enable": True,
                    "InnerPort": device.rtsp_port,
                    "OuterPort": 8554,
                    "Protocol": "TCP",
                    "ServiceName": "RTSP",
                },
            ],
        },
        "DDNS": [
            {
                "Enable": False,
                "Protocol": "Dahua DDNS",
                "Address": "www.dahuaddns.com",
                "Port": 80,
                "HostName": device.mac.replace(":", "") + ".dahuaddns.com",
                "UserName": "",
                "Password": "",
            },
            {
                "Enable": False,
                "Protocol": "NO-IP DDNS",
                "Address": "dynupdate.no-ip.com",
                "Port": 80,
                "HostName": "",
                "UserName": "",
                "Password": "",
            },
        ],
        "NTP": {
            "Enable": False,
            "Address": "clock.isc.org",
            "Port": 123,
            "TimeZone": 0,
            "UpdatePeriod": 10,
        },
        "Telnet": {"Enable": False},
        "SSHD": {"Enable": False},
        "Email": {
            "Enable": False,
            "Address": "",
            "Port": 25,
            "UserName": "",
            "Password": "",
            "Anonymous": False,
            "SendAddress": "",
            "Receivers": ["", "", ""],
        },
        "NAS": [
            {
                "Enable": False,
                "Protocol": "FTP",
                "Address": "",
                "Port": 21,
                "UserName": "",
                "Password": "",
                "Directory": "share",
            },
        ],
        "Bonjour": {"Enable": True, "ServerName": device.model},
        "Multicast": {
            "TS": [{"Enable": False, "MulticastAddr": "224.1.2.4", "Port": 40000}],
            "RTP": [{"Enable": False, "MulticastAddr": "224.1.2.4", "Port": 20000}],
        },
        "SNMP": {"Enable": False, "SNMPV1": False, "SNMPV2": True, "GetCommunity": "public"},
    }


def reset(device: SimDevice) -> None:
    """Factory defaults of every config table (``device.cgi_available`` models the firmware
    and stays; settings of the camera's other faces are left alone). Tables and keys in
    ``device.missing`` are left out, as on a model without them."""
    tables = _factory_defaults(device)
    if device.channels > 1:
        tables["RemoteDevice"] = remote_devices(device)
    for missing in device.missing:
        name, _, key = missing.partition(".")
        if key and name in tables:
            tables[name].pop(key, None)
    device.settings.update(tables)


def remote_devices(device: SimDevice) -> dict[str, Any]:
    """An NVR's RemoteDevice table: one PoE camera per channel, one unused slot after them."""
    table: dict[str, Any] = {}
    for slot in range(device.channels + 1):
        used = slot < device.channels
        table[f"uuid:System_CONFIG_NETCAMERA_INFO_{slot}"] = {
            "Address": f"10.1.1.{65 + slot}" if used else "192.168.0.0",
            "DeviceType": "IPC-HDW2431T-AS-S2" if used else "",
            "Enable": used,
            "Name": f"Channel {slot + 1}" if used else "",
            "Port": 37777,
            "ProtocolType": "Private",
            "VideoInputChannels": 1,
        }
    return table


def has_table(device: SimDevice, name: str) -> bool:
    return not name.startswith("_") and name in device.settings and name not in device.missing


def set_cgi_available(device: SimDevice, available: bool) -> None:
    device.cgi_available = available


def set_value(device: SimDevice, key: str, value: str) -> None:
    """Change one setting by its flat key (``"T2UServer.Enable"``, ``"DDNS[1].Enable"``)."""
    steps = parse_key(key)
    set_in_table(device.settings[str(steps[0])], steps[1:], value, key)


def get_value(device: SimDevice, key: str) -> str:
    name = str(parse_key(key)[0])
    return flatten_table(name, device.settings[name])[key]


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain")


def software_version(device: SimDevice) -> str:
    """``getSoftwareVersion`` in the firmware generation's own form."""
    if device.version_form == "build-date":
        return f"{device.firmware}, Build Date: {device.build}"
    return f"{device.firmware},build:{device.build}"


def _system_info(device: SimDevice) -> dict[str, str]:
    return {
        "deviceType": device.model,
        "hardwareVersion": "1.00",
        "processor": "S2LM",
        "serialNumber": device.serial,
        "updateSerial": device.model,
    }


def install(app: web.Application, device: SimDevice) -> None:
    """Add the CGI, JSON-RPC and event routes for ``device`` to its HTTP application."""
    httpauth.setup(app, device)
    if "Network" not in device.settings:
        reset(device)
    sessions: dict[str, dict[str, Any]] = {}

    async def cgi(request: web.Request) -> web.StreamResponse:
        if not device.cgi_available:
            return web.Response(status=404, text="404 Not Found", content_type="text/html")
        blocked = await httpauth.guard(request, device)
        if blocked is not None:
            return blocked
        script = request.match_info["script"]
        action = request.query.get("action", "")
        if script == "magicBox.cgi":
            return _magic_box(device, action)
        if script == "configManager.cgi":
            return _config_manager(device, request, request.raw_path.partition("?")[2])
        if script == "eventManager.cgi" and action == "attach":
            return await _attach(request, device)
        return _text(BAD_REQUEST, 400)

    async def rpc_login(request: web.Request) -> web.StreamResponse:
        faulted = await httpauth.play_faults(request, device)
        if faulted is not None:
            return faulted
        call = await _read_call(request)
        if call is None or call.get("method") != "global.login":
            return _reply(call, False, error=(268894209, "Invalid request"))
        params = call.get("params") or {}
        session_id = call.get("session")
        state = sessions.get(session_id) if isinstance(session_id, str) else None
        if state is None:
            session_id = os.urandom(16).hex()
            random = os.urandom(12).hex()
            sessions[session_id] = {"random": random, "user": params.get("userName"), "ok": False}
            challenge = {"encryption": "Default", "random": random, "realm": device.realm()}
            return _reply(
                call,
                False,
                params=challenge,
                session=session_id,
                error=(LOGIN_CHALLENGE, "Component error: login challenge!"),
            )
        expected = login_hash(device.username, device.password, device.realm(), state["random"])
        if params.get("userName") != device.username or params.get("password") != expected:
            sessions.pop(str(session_id), None)
            return _reply(call, False, error=(LOGIN_FAILED, "Invalid username or password"))
        state["ok"] = True
        return _reply(call, True, params={"keepAliveInterval": 60}, session=session_id)

    async def rpc(request: web.Request) -> web.StreamResponse:
        faulted = await httpauth.play_faults(request, device)
        if faulted is not None:
            return faulted
        call = await _read_call(request)
        if call is None:
            return _reply(None, False, error=(268894209, "Invalid request"))
        session_id = call.get("session")
        state = sessions.get(session_id) if isinstance(session_id, str) else None
        if state is None or not state["ok"]:
            return _reply(call, False, error=(INVALID_SESSION, "Invalid session in request data!"))
        return _rpc_call(device, call, sessions)

    app.router.add_get("/cgi-bin/{script}", cgi)
    app.router.add_post("/RPC2_Login", rpc_login)
    app.router.add_post("/RPC2", rpc)


def _magic_box(device: SimDevice, action: str) -> web.Response:
    if action == "getSystemInfo":
        return _text("".join(f"{k}={v}\r\n" for k, v in _system_info(device).items()))
    simple = {
        "getSoftwareVersion": f"version={software_version(device)}",
        "getSerialNo": f"sn={device.serial}",
        "getDeviceType": f"type={device.model}",
        "getMachineName": f"name={device.name}",
        "getVendor": "vendor=Dahua",
        "getHardwareVersion": "version=1.00",
    }
    if action in simple:
        return _text(simple[action] + "\r\n")
    return _text(BAD_REQUEST, 400)


def _config_manager(device: SimDevice, request: web.Request, raw_query: str) -> web.Response:
    """getConfig/setConfig; keys are matched exactly (table, index and case), an unknown key
    or table refuses the whole request with ``Error Bad Request!``, as the firmware does."""
    action = request.query.get("action", "")
    if action == "getConfig":
        name = request.query.get("name", "")
        if not has_table(device, name):
            return _text(BAD_REQUEST, 400)
        flat = flatten_table(name, device.settings[name])
        return _text("".join(f"table.{k}={v}\r\n" for k, v in flat.items()))
    if action == "setConfig":
        edits = [(k, v) for k, v in request.query.items() if k != "action"]
        if not edits:
            return _text(BAD_REQUEST, 400)
        # All or nothing, like the firmware: apply to copies, commit when every key is valid.
        staged: dict[str, Any] = {}
        for key, value in edits:
            try:
                steps = parse_key(key)
                name = str(steps[0])
                if not has_table(device, name):
                    return _text(BAD_REQUEST, 400)
                table = staged.setdefault(name, copy.deepcopy(device.settings[name]))
                set_in_table(table, steps[1:], value, key)
            except (KeyError, ValueError):
                return _text(BAD_REQUEST, 400)
        device.settings.update(staged)
        device.writes.append(("configManager.cgi", raw_query.encode()))
        return _text("OK\r\n")
    return _text(BAD_REQUEST, 400)


async def _read_call(request: web.Request) -> dict[str, Any] | None:
    body = await request.content.read(MAX_RPC_BYTES + 1)
    if len(body) > MAX_RPC_BYTES:
        return None
    try:
        call = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return call if isinstance(call, dict) else None


def _reply(
    call: dict[str, Any] | None,
    result: Any,
    *,
    params: Any = None,
    session: str | None = None,
    error: tuple[int, str] | None = None,
) -> web.Response:
    reply: dict[str, Any] = {"id": (call or {}).get("id", 0), "result": result}
    if params is not None:
        reply["params"] = params
    if error is not None:
        reply["error"] = {"code": error[0], "message": error[1]}
    reply["session"] = session if session is not None else (call or {}).get("session", 0)
    return web.json_response(reply)


def _same_shape(old: Any, new: Any, path: str) -> None:
    """A setConfig table must be the complete table as read, every value of the same type
    (the firmware rejects partial tables, unknown keys and changed types)."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            raise ValueError(f"{path} must be an object")
        if set(new) != set(old):
            unknown = sorted(set(new) - set(old))
            absent = sorted(set(old) - set(new))
            raise ValueError(f"{path}: unknown keys {unknown}, missing keys {absent}")
        for key, value in new.items():
            _same_shape(old[key], value, f"{path}.{key}")
    elif isinstance(old, list):
        if not isinstance(new, list) or len(new) != len(old):
            raise ValueError(f"{path} must be a list of {len(old)}")
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            _same_shape(a, b, f"{path}[{index}]")
    elif type(old) is not type(new) and not (isinstance(old, float) and isinstance(new, int)):
        raise ValueError(f"{path} must be {type(old).__name__}")


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict):
        return {k: (_merge(v, new[k]) if k in new else v) for k, v in old.items()}
    if isinstance(old, list):
        return [_merge(a, b) for a, b in zip(old, new, strict=True)]
    return new


def _rpc_call(
    device: SimDevice, call: dict[str, Any], sessions: dict[str, dict[str, Any]]
) -> web.Response:
    method = call.get("method")
    raw_params = call.get("params")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    if method == "global.keepAlive":
        return _reply(call, True, params={"timeout": 60})
    if method == "global.logout":
        sessions.pop(str(call.get("session")), None)
        return _reply(call, True)
    if method == "magicBox.getSystemInfo":
        return _reply(call, True, params=_system_info(device))
    if method == "magicBox.getSoftwareVersion":
        version = {
            "Version": device.firmware,
            "BuildDate": device.build,
            "SecurityBaseLineVersion": "2.1",
            "WebVersion": "3.2.1.1044592",
        }
        return _reply(call, True, params={"version": version})
    if method == "magicBox.getSerialNo":
        return _reply(call, True, params={"sn": device.serial})
    if method == "magicBox.getDeviceType":
        return _reply(call, True, params={"type": device.model})
    name = str(params.get("name"))
    config_call = method in ("configManager.getConfig", "configManager.setConfig")
    if config_call and not has_table(device, name):
        return _reply(call, False, error=(NO_SUCH_CONFIG, "Config not found"))
    if method == "configManager.getConfig":
        return _reply(call, True, params={"table": device.settings[name]})
    if method == "configManager.setConfig":
        table = params.get("table")
        try:
            _same_shape(device.settings[name], table, name)
        except ValueError as exc:
            return _reply(call, False, error=(268959743, f"Invalid table: {exc}"))
        device.settings[name] = _merge(device.settings[name], table)
        device.writes.append((str(method), json.dumps(params).encode()))
        options = ["NeedReboot"] if name in REBOOT_TABLES else []
        return _reply(call, True, params={"options": options})
    return _reply(call, False, error=(268894210, "Method not found"))


def attach_part(device: SimDevice, text: str) -> bytes:
    """One part of the attach stream, with or without Content-Length (``event_form``)."""
    payload = text.encode() + b"\r\n"
    head = "--myboundary\r\nContent-Type: text/plain\r\n"
    if device.event_form == "length":
        head += f"Content-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload + b"\r\n"


async def _attach(request: web.Request, device: SimDevice) -> web.StreamResponse:
    """``eventManager.cgi?action=attach``: multipart VideoMotion Start/Stop and heartbeats."""
    codes = request.query.get("codes", "[All]").strip("[]").split(",")
    wanted = {c.strip() for c in codes}
    response = web.StreamResponse(
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=myboundary"}
    )
    await response.prepare(request)
    release = request.app[httpauth.HANG_RELEASE]
    started = False
    while not release.is_set():
        motion = device.motion_interval > 0 and ("VideoMotion" in wanted or "All" in wanted)
        interval = device.motion_interval if motion else HEARTBEAT_SECONDS
        with contextlib.suppress(TimeoutError):
            await wait_for(release.wait(), interval)
        if release.is_set():
            break
        if motion:
            started = not started
            action = "Start" if started else "Stop"
            texts = [
                f"Code=VideoMotion;action={action};index={index}"
                for index in range(device.channels)  # a recorder: one per channel
            ]
        else:
            texts = ["Heartbeat"]
        try:
            for text in texts:
                await response.write(attach_part(device, text))
        except ConnectionError:
            break
    return response


__all__ = ["get_value", "install", "reset", "set_cgi_available", "set_value"]
