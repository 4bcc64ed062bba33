"""Hikvision ISAPI face of a simulated camera.

Behaves like IP camera firmware of the V5.x line: XML in the ``ver20`` namespace, Digest auth
in the ``IP Camera(xxxxx)`` realm, ``ResponseStatus`` documents for every write and error
(statusCode 1 OK, 4 invalid operation, 5 invalid XML format, 6 invalid XML content,
7 reboot required), read-modify-write of the stored documents, and the VMD alert stream.

State lives in ``device.settings``: one ``xml.etree`` element per ISAPI path, created with
factory defaults by :func:`install`. Tests and scenarios change it with :func:`set_value`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.devices.xmlsafe import local_name, parse_xml
from gateway.sim import httpauth
from gateway.sim.device import SimDevice

NS = "http://www.hikvision.com/ver20/XMLSchema"
ET.register_namespace("", NS)
MAX_PUT_BYTES = 64 * 1024

# Paths whose document is stored and may be read and written; value: reboot needed on PUT.
DOCUMENTS: dict[str, bool] = {
    "/ISAPI/System/Network/EZVIZ": False,
    "/ISAPI/System/Network/Ehome": False,
    "/ISAPI/System/Network/UPnP": False,
    "/ISAPI/System/Network/UPnP/ports": False,
    "/ISAPI/System/Network/DDNS/1": False,
    "/ISAPI/System/time": False,
    "/ISAPI/System/time/ntpServers/1": False,
    "/ISAPI/System/Network/telnetd": False,
    "/ISAPI/System/Network/ssh": True,
    "/ISAPI/System/Network/mailing": False,
    "/ISAPI/System/Network/ftp": False,
    "/ISAPI/Security/adminAccesses": False,
}
# Read-only list views of single documents: list path -> (list root, item path).
LISTS = {
    "/ISAPI/System/Network/DDNS": ("DDNSList", "/ISAPI/System/Network/DDNS/1"),
    "/ISAPI/System/time/ntpServers": ("NTPServerList", "/ISAPI/System/time/ntpServers/1"),
}
# Element values restricted to a set, as the firmware's schema does.
ENUMS = {
    "timeMode": {"NTP", "manual", "satellite", "timecorrect"},
    "addressingFormatType": {"ipaddress", "hostname"},
    "mapmode": {"auto", "manual"},
    "protocol": {"HTTP", "HTTPS", "DEV_MANAGE", "RTSP", "SSH", "WebSocket", "WebSocketS"},
}


def _factory_defaults(device: SimDevice) -> dict[str, str]:
    """The documents a freshly reset camera serves (cloud on, UPnP on, public NTP)."""
    return {
        "/ISAPI/System/Network/EZVIZ": (
            "<EZVIZ><enabled>true</enabled><registerStatus>false</registerStatus>"
            "<redirect>true</redirect><serverAddress><addressingFormatType>hostname"
            "</addressingFormatType><hostName>litedev.hik-connect.com</hostName></serverAddress>"
            f"<verificationCode>{device.serial[-6:]}</verificationCode>"
            "<offlineStatus>timeout</offlineStatus></EZVIZ>"
        ),
        "/ISAPI/System/Network/Ehome": (
            "<Ehome><enabled>false</enabled><addressingFormatType>ipaddress"
            "</addressingFormatType><ipAddress>0.0.0.0</ipAddress><portNo>7660</portNo>"
            "<deviceID></deviceID><key></key><registerStatus>false</registerStatus></Ehome>"
        ),
        "/ISAPI/System/Network/UPnP": (
            "<UPnP><enabled>true</enabled>"
            f"<name>{device.model} - {device.serial[-9:]}</name></UPnP>"
        ),
        "/ISAPI/System/Network/UPnP/ports": (
            "<ports><enabled>true</enabled><mapmode>auto</mapmode><portList>"
            "<port><id>1</id><enabled>true</enabled><internalPort>http</internalPort>"
            f"<externalPort>{device.http_port}</externalPort><status>valid</status></port>"
            "<port><id>2</id><enabled>true</enabled><internalPort>rtsp</internalPort>"
            f"<externalPort>{device.rtsp_port}</externalPort><status>valid</status></port>"
            "</portList></ports>"
        ),
        "/ISAPI/System/Network/DDNS/1": (
            "<DDNS><id>1</id><enabled>false</enabled><provider>HiDDNS</provider>"
            "<serverAddress><addressingFormatType>hostname</addressingFormatType>"
            "<hostName>www.hik-online.com</hostName></serverAddress><portNo>0</portNo>"
            f"<deviceDomainName>{device.serial[-9:].lower()}</deviceDomainName>"
            "<userName></userName><password></password></DDNS>"
        ),
        "/ISAPI/System/time": (
            "<Time><timeMode>NTP</timeMode><localTime></localTime>"
            "<timeZone>CST+0:00:00</timeZone></Time>"
        ),
        "/ISAPI/System/time/ntpServers/1": (
            "<NTPServer><id>1</id><addressingFormatType>hostname</addressingFormatType>"
            "<hostName>time.windows.com</hostName><ipAddress>0.0.0.0</ipAddress>"
            "<portNo>123</portNo><synchronizeInterval>1440</synchronizeInterval></NTPServer>"
        ),
        "/ISAPI/System/Network/telnetd": "<Telnetd><enabled>false</enabled></Telnetd>",
        "/ISAPI/System/Network/ssh": "<SSH><enabled>true</enabled></SSH>",
        "/ISAPI/System/Network/mailing": (
            "<mailingList><mailing><id>1</id><enabled>false</enabled><sender>"
            "<emailAddress></emailAddress><name></name><smtp><enableAuthorization>false"
            "</enableAuthorization><enableSSL>false</enableSSL><addressingFormatType>hostname"
            "</addressingFormatType><hostName></hostName><portNo>25</portNo>"
            "<accountName></accountName><password></password></smtp></sender></mailing>"
            "</mailingList>"
        ),
        "/ISAPI/System/Network/ftp": (
            "<FTPNotificationList><FTPNotification><id>1</id><enabled>false</enabled>"
            "<addressingFormatType>ipaddress</addressingFormatType><ipAddress>0.0.0.0"
            "</ipAddress><portNo>21</portNo><userName></userName><password></password>"
            "<uploadPicture>false</uploadPicture></FTPNotification></FTPNotificationList>"
        ),
        "/ISAPI/Security/adminAccesses": (
            "<AdminAccessProtocolList>"
            + "".join(
                f"<AdminAccessProtocol><id>{i}</id><enabled>true</enabled>"
                f"<protocol>{proto}</protocol><portNo>{port}</portNo></AdminAccessProtocol>"
                for i, (proto, port) in enumerate(
                    [
                        ("HTTP", device.http_port),
                        ("HTTPS", 443),
                        ("DEV_MANAGE", 8000),
                        ("RTSP", device.rtsp_port),
                        ("SSH", 22),
                    ],
                    start=1,
                )
            )
            + "</AdminAccessProtocolList>"
        ),
    }


def _qualify(element: ET.Element) -> ET.Element:
    """Put every element of a factory template into the ISAPI namespace."""
    for node in element.iter():
        if not node.tag.startswith("{"):
            node.tag = f"{{{NS}}}{node.tag}"
    element.set("version", "2.0")
    return element


def reset(device: SimDevice) -> None:
    """Restore factory defaults (keeps identity and credentials)."""
    for path, text in _factory_defaults(device).items():
        device.settings[path] = _qualify(ET.fromstring(text))


def find(root: ET.Element, element_path: str) -> ET.Element:
    """``a/b[1]/c`` (local names, 0-based indexes among same-named siblings)."""
    node = root
    for step in element_path.split("/"):
        name, _, index_text = step.partition("[")
        index = int(index_text.rstrip("]")) if index_text else 0
        matches = [c for c in node if local_name(c.tag) == name]
        if len(matches) <= index:
            raise KeyError(f"no element {element_path!r} in {local_name(root.tag)}")
        node = matches[index]
    return node


def set_value(device: SimDevice, path: str, element_path: str, value: str) -> None:
    """Change one element of a stored document, as a user in the web UI would."""
    find(device.settings[path], element_path).text = value


def get_value(device: SimDevice, path: str, element_path: str) -> str:
    return (find(device.settings[path], element_path).text or "").strip()


def _to_bytes(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def xml_response(root: ET.Element, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=_to_bytes(root), content_type="application/xml", charset="UTF-8"
    )


def response_status(
    url: str, code: int, text: str, sub: str, http_status: int, extra: str = ""
) -> web.Response:
    root = ET.Element(f"{{{NS}}}ResponseStatus", version="2.0")
    for name, value in (
        ("requestURL", url),
        ("statusCode", str(code)),
        ("statusString", text),
        ("subStatusCode", sub),
    ):
        ET.SubElement(root, f"{{{NS}}}{name}").text = value
    if extra:
        ET.SubElement(root, f"{{{NS}}}description").text = extra
    return xml_response(root, http_status)


def device_info(device: SimDevice) -> ET.Element:
    root = ET.Element(f"{{{NS}}}DeviceInfo", version="2.0")
    for name, value in (
        ("deviceName", "IP CAMERA"),
        ("deviceID", f"{device.serial[-8:]}-0000-0000-0000-{device.mac.replace(':', '')}"),
        ("deviceDescription", "IPCamera"),
        ("deviceLocation", "hangzhou"),
        ("model", device.model),
        ("serialNumber", device.serial),
        ("macAddress", device.mac),
        ("firmwareVersion", device.firmware),
        ("firmwareReleasedDate", device.build),
        ("encoderVersion", "V7.3"),
        ("encoderReleasedDate", "build 200601"),
        ("deviceType", "IPCamera"),
        ("telecontrolID", "88"),
    ):
        ET.SubElement(root, f"{{{NS}}}{name}").text = value
    return root


class ContentError(ValueError):
    """A well-formed PUT body whose content the firmware rejects (statusCode 6)."""


def _check_value(name: str, old: str, new: str) -> None:
    if old in ("true", "false") and new not in ("true", "false"):
        raise ContentError(f"{name} must be true or false, not {new!r}")
    if old.isdigit() and not new.isdigit():
        raise ContentError(f"{name} must be a number, not {new!r}")
    if name in ENUMS and new not in ENUMS[name]:
        raise ContentError(f"{name} must be one of {sorted(ENUMS[name])}, not {new!r}")
    if name == "ipAddress":
        try:
            ipaddress.ip_address(new)
        except ValueError:
            raise ContentError(f"ipAddress {new!r} is not an IP address") from None


def merge(stored: ET.Element, incoming: ET.Element) -> ET.Element:
    """Validate ``incoming`` against ``stored`` and return the merged copy.

    Leaves present in both take the new value; unknown elements are ignored and missing
    ones keep their value, as the firmware does. Nothing is changed on error.
    """
    if local_name(incoming.tag) != local_name(stored.tag):
        raise ContentError(
            f"root element {local_name(incoming.tag)!r}, expected {local_name(stored.tag)!r}"
        )
    result = ET.fromstring(ET.tostring(stored))

    def walk(old: ET.Element, new: ET.Element) -> None:
        counts: dict[str, int] = {}
        for new_child in new:
            name = local_name(new_child.tag)
            index = counts.get(name, 0)
            counts[name] = index + 1
            olds = [c for c in old if local_name(c.tag) == name]
            if index >= len(olds):
                continue
            old_child = olds[index]
            if len(old_child):
                walk(old_child, new_child)
            else:
                value = (new_child.text or "").strip()
                _check_value(name, (old_child.text or "").strip(), value)
                old_child.text = value

    walk(result, incoming)
    # Cross-field rule: an NTP server given as an address must carry a usable one.
    kind = result.findtext(f"{{{NS}}}addressingFormatType")
    host = (result.findtext(f"{{{NS}}}hostName") or "").strip()
    if local_name(result.tag) == "NTPServer" and kind == "hostname" and not host:
        raise ContentError("hostName is required when addressingFormatType is hostname")
    return result


def install(app: web.Application, device: SimDevice) -> None:
    """Add the ISAPI routes for ``device`` to its HTTP application."""
    httpauth.setup(app, device)
    if not device.settings:
        reset(device)

    async def handle(request: web.Request) -> web.StreamResponse:
        blocked = await httpauth.guard(request, device)
        if blocked is not None:
            return blocked
        path = request.path.rstrip("/")
        handler = _ROUTES.get(path)
        if handler is not None:
            return await handler(request, device)
        if path in DOCUMENTS:
            return await _document(request, device, path)
        if path in LISTS and request.method == "GET":
            list_root, item = LISTS[path]
            root = ET.Element(f"{{{NS}}}{list_root}", version="2.0")
            root.append(device.settings[item])
            return xml_response(root)
        return response_status(path, 4, "Invalid Operation", "notSupport", 404)

    app.router.add_route("*", "/ISAPI/{tail:.*}", handle)


async def _document(request: web.Request, device: SimDevice, path: str) -> web.Response:
    if request.method == "GET":
        root = device.settings[path]
        if path == "/ISAPI/System/time":
            find(root, "localTime").text = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        return xml_response(root)
    if request.method != "PUT":
        return response_status(path, 4, "Invalid Operation", "methodNotAllowed", 405)
    if request.content_length is not None and request.content_length > MAX_PUT_BYTES:
        return response_status(path, 5, "Invalid XML Format", "badXmlFormat", 400, "too large")
    body = await request.content.read(MAX_PUT_BYTES + 1)
    try:
        incoming = parse_xml(body, limit=MAX_PUT_BYTES)
    except ValueError as exc:
        return response_status(path, 5, "Invalid XML Format", "badXmlFormat", 400, str(exc))
    try:
        merged = merge(device.settings[path], incoming)
    except ContentError as exc:
        return response_status(path, 6, "Invalid XML Content", "badXmlContent", 400, str(exc))
    device.settings[path] = merged
    if DOCUMENTS[path]:
        return response_status(path, 7, "Reboot Required", "rebootRequired", 200)
    return response_status(path, 1, "OK", "ok", 200)


async def _device_info(request: web.Request, device: SimDevice) -> web.Response:
    if request.method != "GET":
        return response_status(request.path, 4, "Invalid Operation", "methodNotAllowed", 405)
    return xml_response(device_info(device))


def alert(device: SimDevice, event_type: str, state: str, count: int) -> bytes:
    root = ET.Element(f"{{{NS}}}EventNotificationAlert", version="2.0")
    for name, value in (
        ("ipAddress", device.host),
        ("portNo", str(device.http_port)),
        ("protocol", "HTTP"),
        ("macAddress", device.mac),
        ("channelID", "1"),
        ("dateTime", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())),
        ("activePostCount", str(count)),
        ("eventType", event_type),
        ("eventState", state),
        ("eventDescription", "Motion alarm" if event_type == "VMD" else "videoloss alarm"),
    ):
        ET.SubElement(root, f"{{{NS}}}{name}").text = value
    return _to_bytes(root)


HEARTBEAT_SECONDS = 10.0


async def _alert_stream(request: web.Request, device: SimDevice) -> web.StreamResponse:
    """multipart/mixed stream: VMD active/inactive every ``motion_interval`` s, heartbeats."""
    response = web.StreamResponse(
        headers={"Content-Type": "multipart/mixed; boundary=boundary", "Connection": "close"}
    )
    await response.prepare(request)
    release = request.app[httpauth.HANG_RELEASE]
    active = False
    count = 0
    while not release.is_set():
        interval = device.motion_interval if device.motion_interval > 0 else HEARTBEAT_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), interval)
        if release.is_set():
            break
        if device.motion_interval > 0:
            active = not active
            count = count + 1 if active else count
            body = alert(device, "VMD", "active" if active else "inactive", max(count, 1))
        else:
            body = alert(device, "videoloss", "inactive", 0)
        part = (
            b'--boundary\r\nContent-Type: application/xml; charset="UTF-8"\r\n'
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
            + b"\r\n"
        )
        try:
            await response.write(part)
        except (ConnectionResetError, ConnectionError):
            break
    return response


_ROUTES: dict[str, Callable[[web.Request, SimDevice], Awaitable[web.StreamResponse]]] = {
    "/ISAPI/System/deviceInfo": _device_info,
    "/ISAPI/Event/notification/alertStream": _alert_stream,
}
