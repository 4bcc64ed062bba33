"""Hikvision ISAPI client: device identity and the settings the telemetry policy governs.

Writes are read-modify-write: the device's own document is fetched and PUT back complete,
byte for byte as the camera sent it except for the texts of the elements changed (same
namespace, default or prefixed as the camera wrote it, same element order, same whitespace),
because firmware answers ``badXmlContent`` or ``deviceError`` to documents in another form or
to partial ones. Reads accept either ISAPI namespace (``hikvision.com/ver20`` or, on newer
NVRs, ``isapi.org/ver20``) and documents mixing namespaces: elements are found by local name.
``ResponseStatus`` statusCode 1 is success, 7 success with a reboot due.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.devices.base import DeviceIdentity, WriteResult, redact
from gateway.devices.errors import DeviceProtocolError, DeviceUnsupportedError
from gateway.devices.http import CameraHttp, HttpResponse
from gateway.devices.nvr import RemoteChannel, hikvision_channels
from gateway.devices.optional import NOT_AVAILABLE, REASON
from gateway.devices.xmlsafe import (
    Element,
    XmlDocument,
    child_text,
    describe_body,
    local_name,
    parse_xml,
)

# Settings documents: key prefix -> ISAPI path. Flat keys are "<prefix>.<element path>".
DOCUMENTS: dict[str, str] = {
    "EZVIZ": "/ISAPI/System/Network/EZVIZ",
    "Ehome": "/ISAPI/System/Network/Ehome",
    "UPnP": "/ISAPI/System/Network/UPnP",
    "UPnPPorts": "/ISAPI/System/Network/UPnP/ports",
    "DDNS": "/ISAPI/System/Network/DDNS/1",
    "time": "/ISAPI/System/time",
    "ntpServer": "/ISAPI/System/time/ntpServers/1",
    "telnetd": "/ISAPI/System/Network/telnetd",
    "ssh": "/ISAPI/System/Network/ssh",
    "mailing": "/ISAPI/System/Network/mailing",
    "ftp": "/ISAPI/System/Network/ftp",
    "adminAccesses": "/ISAPI/Security/adminAccesses",
}
INPUT_PROXY = "/ISAPI/ContentMgmt/InputProxy/channels"
# Elements whose value changes by itself (clock) are not settings.
VOLATILE = {"time.localTime"}


def flatten(prefix: str, root: Element) -> dict[str, str]:
    """Leaf elements as ``prefix.a.b[1].c``; items of ``...List`` elements always indexed."""
    flat: dict[str, str] = {}

    def walk(node: Element, path: str) -> None:
        counts: dict[str, int] = {}
        names = [local_name(c.tag) for c in node]
        indexed = local_name(node.tag).endswith("List")
        for element, name in zip(node, names, strict=True):
            index = counts.get(name, 0)
            counts[name] = index + 1
            step = f"{name}[{index}]" if indexed or names.count(name) > 1 else name
            here = f"{path}.{step}"
            if len(element):
                walk(element, here)
            else:
                flat[here] = (element.text or "").strip()

    walk(root, prefix)
    return flat


def locate(root: Element, steps: list[str]) -> Element:
    """The element at ``steps`` (as produced by :func:`flatten`); KeyError naming the first
    step the document does not have (the gateway never adds elements the camera lacks)."""
    node = root
    for position, step in enumerate(steps):
        name, _, index_text = step.partition("[")
        index = int(index_text.rstrip("]")) if index_text else 0
        matches = [c for c in node if local_name(c.tag) == name]
        if index >= len(matches):
            raise KeyError(".".join(steps[: position + 1]))
        node = matches[index]
    return node


def _not_supported(response: HttpResponse) -> bool:
    """404, or a ResponseStatus saying the firmware lacks the resource (403/501 notSupport)."""
    if response.status == 404:
        return True
    if response.status not in (400, 403, 405, 501):
        return False
    try:
        status = parse_xml(response.body)
    except ValueError:
        return False
    sub = (child_text(status, "subStatusCode") or "").lower()
    return child_text(status, "statusCode") == "4" and sub in ("notsupport", "invalidoperation")


class HikvisionClient:
    vendor = "hikvision"

    def __init__(self, http: CameraHttp) -> None:
        self.http = http
        self.camera = http.camera

    async def close(self) -> None:
        await self.http.close()

    async def get_document(self, path: str) -> XmlDocument:
        """The document at ``path`` as the camera sent it (bytes and parsed tree)."""
        response = await self.http.request("GET", path)
        if _not_supported(response):
            raise DeviceUnsupportedError(self.camera, f"{path}: {REASON}")
        if response.status != 200:
            raise DeviceProtocolError(
                self.camera,
                f"GET {path}: HTTP {response.status} with {describe_body(response.body)}",
            )
        try:
            return XmlDocument(response.body)
        except ValueError as exc:
            raise DeviceProtocolError(
                self.camera, f"{path}: answered with {describe_body(response.body)}: {exc}"
            ) from None

    async def get_xml(self, path: str) -> Element:
        return (await self.get_document(path)).root

    async def put_xml(self, path: str, body: bytes) -> bool:
        """PUT a document; True when the camera says a reboot is required (statusCode 7)."""
        response = await self.http.request(
            "PUT", path, body=body, content_type='application/xml; charset="UTF-8"'
        )
        try:
            status = parse_xml(response.body)
        except ValueError as exc:
            raise DeviceProtocolError(
                self.camera,
                f"PUT {path}: HTTP {response.status} with {describe_body(response.body)}: {exc}",
            ) from None
        if local_name(status.tag) != "ResponseStatus":
            raise DeviceProtocolError(
                self.camera, f"PUT {path}: answered {local_name(status.tag)}, not ResponseStatus"
            )
        code = child_text(status, "statusCode")
        if response.status == 200 and code in ("1", "7"):
            return code == "7"
        detail = child_text(status, "subStatusCode") or child_text(status, "statusString")
        raise DeviceProtocolError(
            self.camera, f"PUT {path} refused: HTTP {response.status}, statusCode {code} ({detail})"
        )

    async def device_info(self) -> DeviceIdentity:
        root = await self.get_xml("/ISAPI/System/deviceInfo")
        if local_name(root.tag) != "DeviceInfo":
            raise DeviceProtocolError(
                self.camera, f"/ISAPI/System/deviceInfo: got {local_name(root.tag)}, not DeviceInfo"
            )
        fields = {
            name: child_text(root, name) or ""
            for name in (
                "model",
                "serialNumber",
                "macAddress",
                "firmwareVersion",
                "firmwareReleasedDate",
            )
        }
        if not fields["model"] or not fields["firmwareVersion"]:
            raise DeviceProtocolError(self.camera, "deviceInfo without model or firmwareVersion")
        return DeviceIdentity(
            vendor="hikvision",
            model=fields["model"],
            serial=fields["serialNumber"],
            mac=fields["macAddress"].lower(),
            firmware=fields["firmwareVersion"],
            build=fields["firmwareReleasedDate"],
        )

    async def channels(self) -> list[RemoteChannel]:
        """The IP cameras an NVR records (InputProxy channels); none on a camera."""
        try:
            root = await self.get_xml(INPUT_PROXY)
        except DeviceUnsupportedError:
            return []
        try:
            return hikvision_channels(root)
        except ValueError as exc:
            raise DeviceProtocolError(self.camera, f"{INPUT_PROXY}: {exc}") from None

    async def read_settings(self) -> dict[str, str]:
        """Every governed document, flattened; a document the firmware lacks is marked
        :data:`NOT_AVAILABLE` under its prefix."""
        flat: dict[str, str] = {}
        for prefix, path in DOCUMENTS.items():
            try:
                root = await self.get_xml(path)
            except DeviceUnsupportedError:
                flat[prefix] = NOT_AVAILABLE
                continue
            flat.update(flatten(prefix, root))
        return redact({k: v for k, v in flat.items() if k not in VOLATILE})

    async def write_settings(self, changes: Mapping[str, str]) -> WriteResult:
        """Apply ``{flat key: value}``: one read-modify-write per document touched."""
        by_document: dict[str, dict[str, str]] = {}
        for key, value in changes.items():
            prefix, _, rest = key.partition(".")
            if prefix not in DOCUMENTS or not rest:
                raise DeviceUnsupportedError(self.camera, f"no ISAPI document for setting {key}")
            by_document.setdefault(prefix, {})[key] = value
        reboot = False
        for prefix, edits in by_document.items():
            path = DOCUMENTS[prefix]
            document = await self.get_document(path)
            texts: dict[Element, str] = {}
            for key, value in edits.items():
                try:
                    texts[locate(document.root, key.split(".")[1:])] = value
                except KeyError as exc:
                    raise DeviceUnsupportedError(
                        self.camera,
                        f"{key}: {REASON} ({path} has no element {exc.args[0]})",
                    ) from None
            try:
                body = document.edited(texts)
            except ValueError as exc:
                raise DeviceUnsupportedError(self.camera, f"{path}: {exc}") from None
            reboot = await self.put_xml(path, body) or reboot
        return WriteResult(changed=tuple(changes), reboot_required=reboot)
