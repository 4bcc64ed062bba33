"""What every camera client offers the policy layer, whatever the vendor API behind it.

Settings are exchanged as a flat ``{key: text}`` mapping in the vendor's own vocabulary
(Hikvision ``EZVIZ.enabled``; Dahua ``T2UServer.Enable``), so the policy can name the exact
setting in findings and the audit log. Secret-looking values the camera stores (DDNS, SMTP,
FTP passwords, cloud verification codes) are replaced by :data:`REDACTED` on reading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

REDACTED = "********"
# Camera-side secrets by key name, whatever the vendor table: passwords (FTP, SMTP, PPPoE,
# DDNS, NAS, Wi-Fi), SNMP communities, pre-shared and other keys (Wi-Fi PSK/WEP/WPA, SNMPv3
# auth/priv, Ehome), cloud verification codes, tokens.
_SECRET_KEY = re.compile(
    r"(passw|pwd|passphrase|secret|token|verificationcode|community|psk|keys?\d*(\[\d+\])?$)",
    re.I,
)


@dataclass(frozen=True)
class DeviceIdentity:
    vendor: str
    model: str
    serial: str
    mac: str
    firmware: str  # vendor's version string: "V5.5.800", "2.800.0000016.0.R"
    build: str  # "build 210628", "2020-06-05"

    def firmware_text(self) -> str:
        """The version as the vendor prints it, the form versions.parse_firmware reads."""
        if not self.build:
            return self.firmware
        if self.vendor == "dahua":
            return f"{self.firmware}, build: {self.build}"
        return f"{self.firmware} {self.build}"

    def to_json(self) -> dict[str, str]:
        return {
            "vendor": self.vendor,
            "model": self.model,
            "serial": self.serial,
            "mac": self.mac,
            "firmware": self.firmware,
            "build": self.build,
        }


@dataclass(frozen=True)
class WriteResult:
    changed: tuple[str, ...]
    reboot_required: bool = False


class CameraClient(Protocol):
    camera: str

    async def device_info(self) -> DeviceIdentity: ...

    async def read_settings(self) -> dict[str, str]: ...

    async def write_settings(self, changes: Mapping[str, str]) -> WriteResult: ...

    async def close(self) -> None: ...


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(settings: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_key(k) and v else v) for k, v in settings.items()}
