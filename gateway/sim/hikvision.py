"""Hikvision ISAPI face of a simulated camera, as strict as the fussiest firmware.

Behaves like IP camera firmware of the V5.x line: XML in the ``ver20`` namespace (or, per
device, ``isapi.org/ver20`` as newer NVRs answer, and optionally documents mixing the two),
Digest auth in the ``IP Camera(xxxxx)`` realm, ``ResponseStatus`` documents for every write
and error (statusCode 1 OK, 4 invalid operation, 5 invalid XML format, 6 invalid XML content,
7 reboot required), and the VMD alert stream.

A PUT must carry the complete document as the camera serves it: every element, in the same
order and the same namespace, written with default namespace declarations (no prefixes).
Anything else is refused with statusCode 6 ``badXmlContent``, as firmware with a fussy
embedded parser does. Documents listed in ``device.missing`` answer 403 ``notSupport``.

State lives in ``device.settings``: one lxml element per ISAPI path, created with factory
defaults by :func:`install`. Tests and scenarios change it with :func:`set_value`. Nothing
here changes process-wide state (no namespace registration, no patching).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from lxml import etree

from gateway.cancellation import wait_for
from gateway.devices.xmlsafe import Element, local_name, namespace, parse_xml
from gateway.sim import httpauth
from gateway.sim.device import SimDevice

NAMESPACES = {
    "hikvision": "http://www.hikvision.com/ver20/XMLSchema",
    "isapi": "http://www.isapi.org/ver20/XMLSchema",
}
NS = NAMESPACES["hikvision"]
# Sub-documents that firmware mixing namespaces puts in the other ISAPI namespace.
MIXED_ELEMENTS = {"serverAddress", "portList", "sender"}
MAX_PUT_BYTES = 64 * 1024
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

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


def namespace_of(device: SimDevice) -> str:
    return NAMESPACES[device.isapi_namespace]


def _other_namespace(device: SimDevice) -> str:
    return next(ns for ns in NAMESPACES.values() if ns != namespace_of(device))


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


def build(device: SimDevice, template: str) -> Element:
    """A document in the device's namespace from a template without one.

    Each element gets the namespace of the firmware; with ``mixed_namespaces`` the
    sub-documents in :data:`MIXED_ELEMENTS` are declared in the other ISAPI namespace, as
    some firmware does. Elements go one per line, as the firmware writes them.
    """
    plain = etree.fromstring(template)
    ns = namespace_of(device)
    other = _other_namespace(device)

    def convert(node: Element, current: str) -> Element:
        name = local_name(node.tag)
        mine = other if device.mixed_namespaces and name in MIXED_ELEMENTS else current
        element = etree.Element(f"{{{mine}}}{name}", nsmap={None: mine})
        element.text = node.text
        for item in node:
            element.append(convert(item, mine))
        return element

    root = convert(plain, ns)
    root.set("version", "2.0")
    etree.indent(root, space="")
    return root


def reset(device: SimDevice) -> None:
    """Restore factory defaults (keeps identity and credentials)."""
    for path, text in _factory_defaults(device).items():
        document = build(device, text)
        for missing in device.missing:
            where, _, element = missing.partition("#")
            if where == path and element:
                gone = find(document, element)
                parent = gone.getparent()
                assert parent is not None
                parent.remove(gone)
        device.settings[path] = document


def find(root: Element, element_path: str) -> Element:
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


def to_bytes(root: Element) -> bytes:
    """The document as the firmware sends it: declaration, ``version`` before the default
    namespace declaration on the root (lxml alone would write it after), no prefixes."""
    text = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    head, _, rest = text.partition(b">")
    if b' version="2.0"' in head:
        head = head.replace(b' version="2.0"', b"").replace(b" xmlns=", b' version="2.0" xmlns=', 1)
    return DECLARATION + head + b">" + rest


def xml_response(root: Element, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=to_bytes(root), content_type="application/xml", charset="UTF-8"
    )


def _element(ns: str, name: str, fields: list[tuple[str, str]]) -> Element:
    root = etree.Element(f"{{{ns}}}{name}", nsmap={None: ns})
    root.set("version", "2.0")
    for field_name, value in fields:
        etree.SubElement(root, f"{{{ns}}}{field_name}").text = value
    etree.indent(root, space="")
    return root


def response_status(
    device: SimDevice,
    url: str,
    code: int,
    text: str,
    sub: str,
    http_status: int,
    extra: str = "",
) -> web.Response:
    fields = [
        ("requestURL", url),
        ("statusCode", str(code)),
        ("statusString", text),
        ("subStatusCode", sub),
    ]
    if extra:
        fields.append(("description", extra))
    return xml_response(_element(namespace_of(device), "ResponseStatus", fields), http_status)


def device_info(device: SimDevice) -> Element:
    return _element(
        namespace_of(device),
        "DeviceInfo",
        [
            ("deviceName", "IP CAMERA" if device.channels == 1 else "Network Video Recorder"),
            ("deviceID", f"{device.serial[-8:]}-0000-0000-0000-{device.mac.replace(':', '')}"),
            ("deviceDescription", "IPCamera" if device.channels == 1 else "NVR"),
            ("deviceLocation", "hangzhou"),
            ("model", device.model),
            ("serialNumber", device.serial),
            ("macAddress", device.mac),
            ("firmwareVersion", device.firmware),
            ("firmwareReleasedDate", device.build),
            ("encoderVersion", "V7.3"),
            ("encoderReleasedDate", "build 200601"),
            ("deviceType", "IPCamera" if device.channels == 1 else "NVR"),
            ("telecontrolID", "88"),
        ],
    )


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


def check_form(stored: Element, incoming: Element) -> None:
    """Refuse a document not in the firmware's own form: prefixed elements, elements in
    another namespace, missing, extra or reordered elements, a different root."""
    for node in incoming.iter():
        if node.prefix is not None:
            raise ContentError(f"prefixed element {node.prefix}:{local_name(node.tag)}")
    if local_name(incoming.tag) != local_name(stored.tag):
        raise ContentError(
            f"root element {local_name(incoming.tag)!r}, expected {local_name(stored.tag)!r}"
        )
    old_tags = [node.tag for node in stored.iter()]
    new_tags = [node.tag for node in incoming.iter()]
    for position, (old, new) in enumerate(zip(old_tags, new_tags, strict=False)):
        if old != new:
            if local_name(old) == local_name(new):
                raise ContentError(
                    f"{local_name(new)} in namespace {namespace(new)!r},"
                    f" expected {namespace(old)!r}"
                )
            raise ContentError(
                f"element {position}: {local_name(new)!r} where {local_name(old)!r} belongs"
            )
    if len(new_tags) != len(old_tags):
        raise ContentError(
            f"incomplete document: {len(new_tags)} elements, the firmware's has {len(old_tags)}"
        )


def merge(stored: Element, incoming: Element) -> Element:
    """Validate ``incoming`` (the complete document, see :func:`check_form`) against
    ``stored`` and return the merged copy. Nothing is changed on error."""
    check_form(stored, incoming)
    result = copy.deepcopy(stored)
    for old, new in zip(result.iter(), incoming.iter(), strict=True):
        if len(old):
            continue
        value = (new.text or "").strip()
        _check_value(local_name(old.tag), (old.text or "").strip(), value)
        old.text = value
    # Cross-field rule: an NTP server given as a host name must carry one.
    if local_name(result.tag) == "NTPServer":
        kind = find(result, "addressingFormatType").text
        with contextlib.suppress(KeyError):
            if kind == "hostname" and not (find(result, "hostName").text or "").strip():
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
        if path in device.missing:
            return response_status(device, path, 4, "Invalid Operation", "notSupport", 403)
        handler = _ROUTES.get(path)
        if handler is not None:
            return await handler(request, device)
        if path in DOCUMENTS:
            return await _document(request, device, path)
        if path in LISTS and request.method == "GET":
            list_root, item = LISTS[path]
            ns = namespace_of(device)
            root = etree.Element(f"{{{ns}}}{list_root}", nsmap={None: ns})
            root.set("version", "2.0")
            root.append(copy.deepcopy(device.settings[item]))
            etree.indent(root, space="")
            return xml_response(root)
        return response_status(device, path, 4, "Invalid Operation", "notSupport", 404)

    app.router.add_route("*", "/ISAPI/{tail:.*}", handle)


async def _document(request: web.Request, device: SimDevice, path: str) -> web.Response:
    if request.method == "GET":
        root = device.settings[path]
        if path == "/ISAPI/System/time":
            find(root, "localTime").text = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        return xml_response(root)
    if request.method != "PUT":
        return response_status(device, path, 4, "Invalid Operation", "methodNotAllowed", 405)
    if request.content_length is not None and request.content_length > MAX_PUT_BYTES:
        return response_status(
            device, path, 5, "Invalid XML Format", "badXmlFormat", 400, "too large"
        )
    body = await request.content.read(MAX_PUT_BYTES + 1)
    try:
        incoming = parse_xml(body, limit=MAX_PUT_BYTES)
    except ValueError as exc:
        return response_status(device, path, 5, "Invalid XML Format", "badXmlFormat", 400, str(exc))
    try:
        merged = merge(device.settings[path], incoming)
    except ContentError as exc:
        return response_status(
            device, path, 6, "Invalid XML Content", "badXmlContent", 400, str(exc)
        )
    device.settings[path] = merged
    device.writes.append((path, body))
    if DOCUMENTS[path]:
        return response_status(device, path, 7, "Reboot Required", "rebootRequired", 200)
    return response_status(device, path, 1, "OK", "ok", 200)


async def _device_info(request: web.Request, device: SimDevice) -> web.Response:
    if request.method != "GET":
        return response_status(
            device, request.path, 4, "Invalid Operation", "methodNotAllowed", 405
        )
    return xml_response(device_info(device))


def alert(device: SimDevice, event_type: str, state: str, count: int, channel: int = 1) -> bytes:
    return to_bytes(
        _element(
            namespace_of(device),
            "EventNotificationAlert",
            [
                ("ipAddress", device.host),
                ("portNo", str(device.http_port)),
                ("protocol", "HTTP"),
                ("macAddress", device.mac),
                ("channelID", str(channel)),
                ("dateTime", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())),
                ("activePostCount", str(count)),
                ("eventType", event_type),
                ("eventState", state),
                ("eventDescription", "Motion alarm" if event_type == "VMD" else "videoloss alarm"),
            ],
        )
    )


HEARTBEAT_SECONDS = 10.0
BOUNDARY = "boundary"


def event_part(device: SimDevice, body: bytes) -> bytes:
    """One part of the alert stream in the device's ``event_form``: with a Content-Length
    (most firmware), or delimited by the boundary alone (older firmware)."""
    head = f'--{BOUNDARY}\r\nContent-Type: application/xml; charset="UTF-8"\r\n'
    if device.event_form == "length":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body + b"\r\n"


async def _alert_stream(request: web.Request, device: SimDevice) -> web.StreamResponse:
    """multipart/mixed stream: VMD active/inactive every ``motion_interval`` s; between them
    the ``videoloss`` inactive keep-alives firmware sends as heartbeats."""
    response = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/mixed; boundary={BOUNDARY}",
            "Connection": "close",
        }
    )
    await response.prepare(request)
    release = request.app[httpauth.HANG_RELEASE]
    active = False
    count = 0
    while not release.is_set():
        interval = device.motion_interval if device.motion_interval > 0 else HEARTBEAT_SECONDS
        with contextlib.suppress(TimeoutError):
            await wait_for(release.wait(), interval)
        if release.is_set():
            break
        parts = []
        if device.motion_interval > 0:
            active = not active
            count = count + 1 if active else count
            for channel in range(1, device.channels + 1):
                state = "active" if active else "inactive"
                parts.append(alert(device, "VMD", state, max(count, 1), channel))
        else:
            parts.append(alert(device, "videoloss", "inactive", 0))
        try:
            for body in parts:
                await response.write(event_part(device, body))
        except (ConnectionResetError, ConnectionError):
            break
    return response


def input_proxy_channels(device: SimDevice) -> Element:
    """An NVR's IP channels: one PoE camera per channel on the recorder's own subnet."""
    ns = namespace_of(device)
    root = etree.Element(f"{{{ns}}}InputProxyChannelList", nsmap={None: ns})
    root.set("version", "2.0")
    for number in range(1, device.channels + 1):
        item = etree.SubElement(root, f"{{{ns}}}InputProxyChannel")
        item.set("version", "2.0")
        for name, value in (("id", str(number)), ("name", f"Camera {number:02d}")):
            etree.SubElement(item, f"{{{ns}}}{name}").text = value
        source = etree.SubElement(item, f"{{{ns}}}sourceInputPortDescriptor")
        for name, value in (
            ("proxyProtocol", "HIKVISION"),
            ("addressingFormatType", "ipaddress"),
            ("ipAddress", f"192.168.254.{number + 1}"),
            ("managePortNo", "8000"),
            ("srcInputPort", "1"),
            ("userName", "admin"),
            ("streamType", "auto"),
        ):
            etree.SubElement(source, f"{{{ns}}}{name}").text = value
    etree.indent(root, space="")
    return root


async def _input_proxy(request: web.Request, device: SimDevice) -> web.Response:
    if device.channels < 2:  # a camera: no proxied channels
        return response_status(device, request.path, 4, "Invalid Operation", "notSupport", 404)
    if request.method != "GET":
        return response_status(
            device, request.path, 4, "Invalid Operation", "methodNotAllowed", 405
        )
    return xml_response(input_proxy_channels(device))


_ROUTES: dict[str, Callable[[web.Request, SimDevice], Awaitable[web.StreamResponse]]] = {
    "/ISAPI/System/deviceInfo": _device_info,
    "/ISAPI/Event/notification/alertStream": _alert_stream,
    "/ISAPI/ContentMgmt/InputProxy/channels": _input_proxy,
}
