"""Cameras behind a recorder: the channels a Hikvision or Dahua NVR says it records.

Hikvision NVRs list their IP channels at ``GET /ISAPI/ContentMgmt/InputProxy/channels``
(``InputProxyChannel``: id, name, ``sourceInputPortDescriptor`` with the camera's address,
protocol and port). Dahua NVRs keep them in the ``RemoteDevice`` config table, one block per
slot keyed ``uuid:System_CONFIG_NETCAMERA_INFO_<n>`` (slot n is channel n + 1); unused slots
are disabled (address ``192.168.0.0``). Cameras (and recorders that expose neither) have none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.devices.xmlsafe import Element, child, child_text, local_name

_SLOT = re.compile(r"^RemoteDevice\.uuid:System_CONFIG_NETCAMERA_INFO_(\d+)\.(.+)$")


@dataclass(frozen=True)
class RemoteChannel:
    """One camera a recorder records, as the recorder describes it."""

    channel: int  # 1-based, as the recorder's RTSP URLs number them
    name: str
    address: str
    port: int | None
    protocol: str  # "HIKVISION", "ONVIF", "Private", "Onvif", ...
    model: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "protocol": self.protocol,
            "model": self.model,
        }


def _port(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def hikvision_channels(root: Element) -> list[RemoteChannel]:
    """An ``InputProxyChannelList`` (elements found by local name, any namespace)."""
    if local_name(root.tag) != "InputProxyChannelList":
        raise ValueError(f"{local_name(root.tag)} is not an InputProxyChannelList")
    channels: list[RemoteChannel] = []
    for item in root:
        if local_name(item.tag) != "InputProxyChannel":
            continue
        number = child_text(item, "id") or ""
        if not number.isdigit():
            raise ValueError(f"InputProxyChannel with id {number[:20]!r}")
        source = child(item, "sourceInputPortDescriptor")
        address = port = protocol = None
        if source is not None:
            address = child_text(source, "ipAddress") or child_text(source, "hostName")
            port = child_text(source, "managePortNo")
            protocol = child_text(source, "proxyProtocol")
        channels.append(
            RemoteChannel(
                int(number),
                child_text(item, "name") or "",
                address or "",
                _port(port),
                protocol or "",
            )
        )
    return sorted(channels, key=lambda c: c.channel)


def dahua_channels(table: Mapping[str, str]) -> list[RemoteChannel]:
    """The enabled slots of a flat ``RemoteDevice`` table (CGI lines or flattened RPC)."""
    slots: dict[int, dict[str, str]] = {}
    for key, value in table.items():
        match = _SLOT.match(key)
        if match is not None:
            slots.setdefault(int(match.group(1)), {})[match.group(2)] = value
    channels = []
    for slot, fields in sorted(slots.items()):
        if fields.get("Enable", "").lower() != "true":
            continue  # an unused slot
        channels.append(
            RemoteChannel(
                slot + 1,
                fields.get("Name", ""),
                fields.get("Address", ""),
                _port(fields.get("Port")),
                fields.get("ProtocolType", ""),
                fields.get("DeviceType", ""),
            )
        )
    return channels
