"""Hikvision ISAPI client: device identity and the settings the telemetry policy governs.

Writes are read-modify-write: the device's own document is fetched, the named elements are
changed in place and the whole document is PUT back, so fields the gateway does not know
survive untouched. ``ResponseStatus`` statusCode 1 is success, 7 success with a reboot due.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from gateway.devices.base import DeviceIdentity, WriteResult, redact
from gateway.devices.errors import DeviceProtocolError, DeviceUnsupportedError
from gateway.devices.http import CameraHttp
from gateway.devices.xmlsafe import child_text, describe_body, local_name, parse_xml

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
# Elements whose value changes by itself (clock) are not settings.
VOLATILE = {"time.localTime"}


def flatten(prefix: str, root: ET.Element) -> dict[str, str]:
    """Leaf elements as ``prefix.a.b[1].c``; items of ``...List`` elements always indexed."""
    flat: dict[str, str] = {}

    def walk(node: ET.Element, path: str) -> None:
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


def locate(root: ET.Element, steps: list[str], *, create: bool) -> ET.Element:
    """The element at ``steps`` (as produced by :func:`flatten`); optionally create the leaf."""
    node = root
    for position, step in enumerate(steps):
        name, _, index_text = step.partition("[")
        index = int(index_text.rstrip("]")) if index_text else 0
        matches = [c for c in node if local_name(c.tag) == name]
        if index < len(matches):
            node = matches[index]
            continue
        if create and position == len(steps) - 1 and index == len(matches):
            ns = node.tag[: node.tag.index("}") + 1] if node.tag.startswith("{") else ""
            node = ET.SubElement(node, ns + name)
            continue
        raise KeyError(".".join(steps[: position + 1]))
    return node


class HikvisionClient:
    vendor = "hikvision"

    def __init__(self, http: CameraHttp) -> None:
        self.http = http
        self.camera = http.camera

    async def close(self) -> None:
        await self.http.close()

    async def get_xml(self, path: str) -> ET.Element:
        response = await self.http.request("GET", path)
        if response.status == 404:
            raise DeviceUnsupportedError(self.camera, f"{path} is not supported by this firmware")
        if response.status != 200:
            raise DeviceProtocolError(
                self.camera,
                f"GET {path}: HTTP {response.status} with {describe_body(response.body)}",
            )
        return self._parse(path, response.body)

    def _parse(self, path: str, body: bytes) -> ET.Element:
        try:
            return parse_xml(body)
        except ValueError as exc:
            raise DeviceProtocolError(
                self.camera, f"{path}: answered with {describe_body(body)}: {exc}"
            ) from None

    async def put_xml(self, path: str, root: ET.Element) -> bool:
        """PUT a document; True when the camera says a reboot is required (statusCode 7)."""
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
        response = await self.http.request(
            "PUT", path, body=body, content_type='application/xml; charset="UTF-8"'
        )
        status = self._parse(path, response.body)
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

    async def read_settings(self) -> dict[str, str]:
        """Every governed document, flattened; documents the firmware lacks are left out."""
        flat: dict[str, str] = {}
        for prefix, path in DOCUMENTS.items():
            try:
                root = await self.get_xml(path)
            except DeviceUnsupportedError:
                continue
            flat.update(flatten(prefix, root))
        return redact({k: v for k, v in flat.items() if k not in VOLATILE})

    async def write_settings(self, changes: Mapping[str, str]) -> WriteResult:
        """Apply ``{flat key: value}``: one read-modify-write per document touched."""
        by_document: dict[str, dict[tuple[str, ...], str]] = {}
        for key, value in changes.items():
            prefix, _, rest = key.partition(".")
            if prefix not in DOCUMENTS or not rest:
                raise DeviceUnsupportedError(self.camera, f"no ISAPI document for setting {key}")
            by_document.setdefault(prefix, {})[tuple(rest.split("."))] = value
        reboot = False
        for prefix, edits in by_document.items():
            path = DOCUMENTS[prefix]
            root = await self.get_xml(path)
            for steps, value in edits.items():
                try:
                    locate(root, list(steps), create=True).text = value
                except KeyError as exc:
                    raise DeviceUnsupportedError(
                        self.camera, f"{path} has no element {exc.args[0]}"
                    ) from None
            reboot = await self.put_xml(path, root) or reboot
        return WriteResult(changed=tuple(changes), reboot_required=reboot)
