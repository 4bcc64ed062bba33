"""Dahua client: HTTP CGI (``magicBox.cgi``, ``configManager.cgi``) with a JSON-RPC fallback.

Older firmware answers the CGI API; newer firmware only the JSON-RPC API (``/RPC2_Login``
two-step login, then ``/RPC2`` calls carrying the session). The client tries the CGI first
and switches to RPC for good when the CGI answers 404. Either way settings come out in the
CGI's flat form (``DDNS[0].Enable`` -> ``"true"``); RPC tables are flattened the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from gateway.devices.base import DeviceIdentity, WriteResult, redact
from gateway.devices.errors import (
    DeviceAuthError,
    DeviceError,
    DeviceProtocolError,
    DeviceUnsupportedError,
)
from gateway.devices.http import CameraHttp, query_escape
from gateway.devices.nvr import RemoteChannel, dahua_channels
from gateway.devices.optional import NOT_AVAILABLE, REASON
from gateway.devices.xmlsafe import describe_body

# Config tables the telemetry policy governs (and that inventory reports).
CONFIG_NAMES = (
    "T2UServer",
    "VSP_PaaS",
    "UPnP",
    "DDNS",
    "NTP",
    "Telnet",
    "SSHD",
    "Email",
    "NAS",
    "Bonjour",
    "Multicast",
    "SNMP",
)
LOGIN_CHALLENGE = 268632079
INVALID_SESSION = 287637505
# Keys may hold ":" (RemoteDevice.uuid:System_CONFIG_NETCAMERA_INFO_0.Address on NVRs).
_LINE = re.compile(r"^([A-Za-z0-9_\[\].:\-]+)=(.*)$")
_STEP = re.compile(r"\.?([A-Za-z0-9_\-]+)|\[(\d+)\]")


# --------------------------------------------------------------------------- table codec


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def flatten_table(name: str, value: Any) -> dict[str, str]:
    """An RPC config table as CGI ``key=value`` pairs (without the ``table.`` prefix)."""
    flat: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                walk(item, f"{path}.{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")
        else:
            flat[path] = _text(node)

    walk(value, name)
    return flat


def parse_key(key: str) -> list[str | int]:
    """``DDNS[0].Enable`` -> ``["DDNS", 0, "Enable"]``; ValueError if malformed."""
    steps: list[str | int] = []
    position = 0
    for match in _STEP.finditer(key):
        if match.start() != position or (position == 0 and key.startswith(".")):
            break
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    if position != len(key) or not steps or not isinstance(steps[0], str):
        raise ValueError(f"malformed config key {key!r}")
    return steps


def convert_like(old: Any, text: str, key: str) -> Any:
    """``text`` converted to the type of the value it replaces (as the firmware checks)."""
    if isinstance(old, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{key} must be true or false, not {text!r}")
        return text.lower() == "true"
    if isinstance(old, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key} must be an integer, not {text!r}") from None
    if isinstance(old, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key} must be a number, not {text!r}") from None
    if isinstance(old, (dict, list)):
        raise ValueError(f"{key} is a table, not a value")
    return text


def set_in_table(table: Any, steps: list[str | int], text: str, key: str) -> None:
    """Set the leaf at ``steps`` (without the table name) in a JSON table, type-checked."""
    node = table
    for step in steps[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            raise KeyError(key) from None
    last = steps[-1]
    try:
        old = node[last]
    except (KeyError, IndexError, TypeError):
        raise KeyError(key) from None
    node[last] = convert_like(old, text, key)


def parse_cgi_lines(body: str) -> dict[str, str]:
    """``table.X.Key=Value`` / ``key=value`` lines; ValueError on anything else."""
    values: dict[str, str] = {}
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"unexpected line {line[:40]!r}")
        key = match.group(1)
        values[key.removeprefix("table.")] = match.group(2)
    return values


def login_hash(username: str, password: str, realm: str, random: str) -> str:
    """Second-step ``global.login`` password: MD5(user:random:MD5(user:realm:pass)), upper."""
    inner = hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest().upper()
    return hashlib.md5(f"{username}:{random}:{inner}".encode()).hexdigest().upper()


def split_version(text: str) -> tuple[str, str]:
    """``2.800.0000016.0.R,build:2020-06-05`` or ``2.622.0000000.18.R, Build Date:
    2019-03-29`` -> ``("2.800.0000016.0.R", "2020-06-05")``."""
    version, _, build = text.partition(",")
    build = build.strip()
    build = build.split(":", 1)[1].strip() if ":" in build else build
    return version.strip(), build


# --------------------------------------------------------------------------- client


class DahuaClient:
    vendor = "dahua"

    def __init__(self, http: CameraHttp, username: str, password: str) -> None:
        self.http = http
        self.camera = http.camera
        self._username = username
        self._password = password
        self.mode: str | None = None  # "cgi" | "rpc", decided by the first call
        self._session: str | None = None
        self._rpc_id = 0

    async def close(self) -> None:
        if self._session is not None:
            # A failed logout is harmless: the session expires on its own.
            with contextlib.suppress(DeviceError):
                await self._rpc("global.logout", None)
            self._session = None
        await self.http.close()

    # ---------------------------------------------------------------- CGI

    async def _cgi(self, script: str, query: str) -> dict[str, str]:
        path = f"/cgi-bin/{script}"
        response = await self.http.request("GET", path, raw_query=query)
        text = response.body.decode("utf-8", errors="replace")
        if response.status == 404:
            raise DeviceUnsupportedError(self.camera, f"{path} is not offered by this firmware")
        if response.status == 400 and text.lstrip().startswith("Error"):
            raise DeviceUnsupportedError(self.camera, f"{path}?{query}: Bad Request")
        if response.status != 200:
            raise DeviceProtocolError(
                self.camera,
                f"{path}: HTTP {response.status} with {describe_body(response.body)}",
            )
        if text.strip() == "OK":
            return {}
        try:
            return parse_cgi_lines(text)
        except ValueError:
            raise DeviceProtocolError(
                self.camera, f"{path}: answered with {describe_body(response.body)}"
            ) from None

    async def _use_cgi(self) -> bool:
        """Probe once: CGI when ``magicBox.cgi`` exists, RPC when it answers 404."""
        if self.mode is None:
            try:
                await self._cgi("magicBox.cgi", "action=getSoftwareVersion")
                self.mode = "cgi"
            except DeviceUnsupportedError:
                self.mode = "rpc"
        return self.mode == "cgi"

    # ---------------------------------------------------------------- RPC

    async def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        response = await self.http.request("POST", path, body=body, content_type="application/json")
        if response.status == 404:
            raise DeviceUnsupportedError(self.camera, f"{path} is not offered by this firmware")
        if response.status != 200:
            raise DeviceProtocolError(
                self.camera, f"{path}: HTTP {response.status} with {describe_body(response.body)}"
            )
        try:
            reply = json.loads(response.body)
        except (ValueError, UnicodeDecodeError):
            reply = None
        if not isinstance(reply, dict):
            raise DeviceProtocolError(
                self.camera, f"{path}: answered with {describe_body(response.body)}"
            )
        return reply

    def _next_id(self) -> int:
        self._rpc_id += 1
        return self._rpc_id

    async def _login(self) -> None:
        params: dict[str, Any] = {
            "userName": self._username,
            "password": "",
            "clientType": "Dahua3.0-Web3.0",
        }
        first = await self._post_json(
            "/RPC2_Login", {"method": "global.login", "params": params, "id": self._next_id()}
        )
        error = first.get("error") or {}
        challenge = first.get("params") or {}
        if error.get("code") != LOGIN_CHALLENGE or not isinstance(challenge, dict):
            raise DeviceProtocolError(self.camera, "RPC login did not answer with a challenge")
        realm, random = challenge.get("realm"), challenge.get("random")
        if not isinstance(realm, str) or not isinstance(random, str):
            raise DeviceProtocolError(self.camera, "RPC login challenge without realm/random")
        session = first.get("session")
        params |= {
            "password": login_hash(self._username, self._password, realm, random),
            "authorityType": "Default",
            "passwordType": "Default",
        }
        second = await self._post_json(
            "/RPC2_Login",
            {"method": "global.login", "params": params, "session": session, "id": self._next_id()},
        )
        if second.get("result") is not True:
            raise DeviceAuthError(self.camera, "RPC login refused the credentials")
        self._session = str(second.get("session") or session)

    async def _rpc(self, method: str, params: Any) -> dict[str, Any]:
        for attempt in range(2):
            if self._session is None:
                await self._login()
            reply = await self._post_json(
                "/RPC2",
                {
                    "method": method,
                    "params": params,
                    "session": self._session,
                    "id": self._next_id(),
                },
            )
            if reply.get("result") is not False:
                return reply
            code = (reply.get("error") or {}).get("code")
            if code == INVALID_SESSION and attempt == 0:
                self._session = None
                continue
            message = (reply.get("error") or {}).get("message", "failed")
            raise DeviceUnsupportedError(self.camera, f"RPC {method}: {message} (code {code})")
        raise DeviceProtocolError(self.camera, f"RPC {method}: session refused twice")

    @staticmethod
    def _params(reply: dict[str, Any]) -> dict[str, Any]:
        params = reply.get("params")
        return params if isinstance(params, dict) else {}

    # ---------------------------------------------------------------- API

    async def device_info(self) -> DeviceIdentity:
        if await self._use_cgi():
            info = await self._cgi("magicBox.cgi", "action=getSystemInfo")
            version = await self._cgi("magicBox.cgi", "action=getSoftwareVersion")
            model = info.get("deviceType") or info.get("updateSerial", "")
            serial = info.get("serialNumber", "")
            firmware, build = split_version(version.get("version", ""))
        else:
            info = self._params(await self._rpc("magicBox.getSystemInfo", None))
            version = self._params(await self._rpc("magicBox.getSoftwareVersion", None))
            raw_soft = version.get("version")
            if isinstance(raw_soft, dict):  # {Version, BuildDate, ...}
                firmware = str(raw_soft.get("Version") or "")
                build = str(raw_soft.get("BuildDate") or "")
            else:  # some firmware answers the CGI's text form here too
                firmware, build = split_version(str(raw_soft or ""))
            model = str(info.get("deviceType") or "")
            serial = str(info.get("serialNumber") or "")
        if not model or not firmware:
            raise DeviceProtocolError(self.camera, "device information without model or version")
        return DeviceIdentity("dahua", model, serial, await self._mac(), firmware, build)

    async def _mac(self) -> str:
        """The MAC of the default interface; "" when the firmware refuses the Network table
        (older and OEM firmware): the MAC is an extra of the inventory, not its condition."""
        try:
            network = await self.get_config("Network")
        except DeviceUnsupportedError:
            return ""
        default = network.get("Network.DefaultInterface", "eth0")
        return network.get(f"Network.{default}.PhysicalAddress", "").lower()

    async def get_config(self, name: str) -> dict[str, str]:
        """One config table in flat CGI form (``{"NTP.Enable": "true", ...}``)."""
        if await self._use_cgi():
            return await self._cgi("configManager.cgi", f"action=getConfig&name={name}")
        reply = await self._rpc("configManager.getConfig", {"name": name})
        return flatten_table(name, self._params(reply).get("table"))

    async def channels(self) -> list[RemoteChannel]:
        """The cameras an NVR records (RemoteDevice table); none on a camera."""
        try:
            return dahua_channels(await self.get_config("RemoteDevice"))
        except DeviceUnsupportedError:
            return []

    async def read_settings(self) -> dict[str, str]:
        """Every governed table; a table the model lacks is marked :data:`NOT_AVAILABLE`."""
        flat: dict[str, str] = {}
        for name in CONFIG_NAMES:
            try:
                flat.update(await self.get_config(name))
            except DeviceUnsupportedError:
                flat[name] = NOT_AVAILABLE
        return redact(flat)

    def _as_read(self, table: dict[str, str], edits: dict[str, str]) -> dict[str, str]:
        """``edits`` with every key spelt exactly as the camera's table has it (index and
        case); a key the table does not have is not available on this firmware."""
        spelling = {key.lower(): key for key in table}
        exact: dict[str, str] = {}
        for key, value in edits.items():
            actual = key if key in table else spelling.get(key.lower())
            if actual is None:
                raise DeviceUnsupportedError(self.camera, f"{key}: {REASON}")
            exact[actual] = value
        return exact

    async def write_settings(self, changes: Mapping[str, str]) -> WriteResult:
        """Per table: read it, then set the changed keys as read (CGI ``setConfig`` with the
        keys alone; RPC ``setConfig`` with the complete table as read, values changed)."""
        by_table: dict[str, dict[str, str]] = {}
        for key, value in changes.items():
            try:
                name = str(parse_key(key)[0])
            except ValueError as exc:
                raise DeviceUnsupportedError(self.camera, str(exc)) from None
            by_table.setdefault(name, {})[key] = value
        reboot = False
        for name, edits in by_table.items():
            if await self._use_cgi():
                exact = self._as_read(await self.get_config(name), edits)
                query = "action=setConfig&" + "&".join(
                    f"{query_escape(k, key=True)}={query_escape(v)}" for k, v in exact.items()
                )
                await self._cgi("configManager.cgi", query)
                continue
            reply = await self._rpc("configManager.getConfig", {"name": name})
            table = self._params(reply).get("table")
            exact = self._as_read(flatten_table(name, table), edits)
            for key, value in exact.items():
                try:
                    set_in_table(table, parse_key(key)[1:], value, key)
                except KeyError:
                    raise DeviceUnsupportedError(self.camera, f"{key}: {REASON}") from None
                except ValueError as exc:
                    raise DeviceProtocolError(self.camera, str(exc)) from None
            result = await self._rpc("configManager.setConfig", {"name": name, "table": table})
            options = self._params(result).get("options") or []
            reboot = reboot or "NeedReboot" in options
        return WriteResult(changed=tuple(changes), reboot_required=reboot)
