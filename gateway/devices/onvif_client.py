"""ONVIF client of one camera: inventory and the settings ONVIF shows.

Used on its own for cameras of vendor ``generic`` (:class:`OnvifClient`), and next to the
vendor API of Hikvision/Dahua cameras to add what only ONVIF tells (:class:`WithOnvif`).

Settings come out flat, every key under ``onvif.``: ``onvif.NTP.FromDHCP``,
``onvif.NTP.Manual`` (the servers set by hand, comma-separated), ``onvif.DateTimeType``,
``onvif.Discovery.Mode``, ``onvif.Scopes[i]``, ``onvif.Profiles[i].Encoding``, ... ONVIF
cannot change what the telemetry policy governs on these cameras, so the client is
read-only: :meth:`OnvifClient.write_settings` refuses.

It speaks through the gateway's one SOAP client towards cameras,
:class:`~gateway.devices.soap.CameraSoap` over :class:`~gateway.devices.http.CameraHttp`:
the camera's clock is read first (GetSystemDateAndTime) so that WS-Security tokens are
dated as the camera counts time, then its services are found (GetServices, else
GetCapabilities). Every operation runs under the request timeout; answers over
:data:`MAX_BODY` are refused unread and parsed with the hardened parser. Failures become the
per-camera errors of :mod:`gateway.devices.errors`, built from the camera name, the operation
and what the camera did; the password is never part of a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from lxml import etree
from yarl import URL

from gateway.devices.base import CameraClient, DeviceIdentity, WriteResult, redact
from gateway.devices.dahua import split_version
from gateway.devices.errors import (
    DeviceAuthError,
    DeviceConnectionError,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeoutError,
    DeviceUnsupportedError,
)
from gateway.devices.http import CameraHttp
from gateway.devices.nvr import RemoteChannel
from gateway.devices.soap import DEVICE_PATH, CameraReplyTooLarge, CameraSoap, CameraSoapError
from gateway.devices.xmlsafe import looks_like_html
from gateway.soap import NS, SoapFault, child, child_text, children, el

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
_HIK_FIRMWARE = re.compile(r"^(?P<version>\S+)\s+(?P<build>build\s+\S+)$", re.I)
# The services this client calls, by the name :meth:`OnvifClient.call` takes.
SERVICES = {"devicemgmt": NS["tds"], "media": NS["trt"]}


def vendor_from_manufacturer(manufacturer: str) -> str:
    """``hikvision`` / ``dahua`` when ONVIF names one of them, else ``generic``."""
    name = manufacturer.strip().lower()
    if "hikvision" in name:
        return "hikvision"
    if "dahua" in name:
        return "dahua"
    return "generic"


def split_firmware(vendor: str, text: str) -> tuple[str, str]:
    """ONVIF FirmwareVersion in the vendor clients' (version, build) form, when known."""
    text = " ".join(text.split())
    if vendor == "hikvision":
        match = _HIK_FIRMWARE.match(text)
        if match:
            return match.group("version"), match.group("build")
    elif vendor == "dahua" and "build" in text.lower():
        return split_version(text)
    return text, ""


def _text(node: etree._Element | None, *path: str) -> str:
    """The text at ``path`` below ``node`` (local names), "" when any step is missing."""
    return child_text(node, *path) or ""


def _boolean(value: str, *, absent: str = "false") -> str:
    """An xs:boolean as ``true``/``false`` (``1``/``0`` are xs:boolean too); ``absent``
    when the camera left it out."""
    if not value:
        return absent
    return "true" if value.strip().lower() in ("true", "1") else "false"


def _ntp_hosts(entries: list[etree._Element]) -> list[str]:
    hosts: list[str] = []
    for entry in entries:
        for name in ("IPv4Address", "IPv6Address", "DNSname"):
            value = _text(entry, name)
            if value:
                hosts.append(value)
                break
    return hosts


class OnvifClient:
    """One camera's ONVIF device (and media) service."""

    def __init__(
        self,
        camera: str,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        max_body: int = MAX_BODY,
    ) -> None:
        self.camera = camera
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_body = max_body
        self._username = username
        self._password = password
        self._soap: CameraSoap | None = None
        self._services: dict[str, URL] | None = None

    # ---------------------------------------------------------------- plumbing

    def _client(self) -> CameraSoap:
        if self._soap is None:
            http = CameraHttp(
                self.camera,
                self.host,
                self.port,
                self._username,
                self._password,
                timeout=self.timeout,
                max_body=self.max_body,
            )
            self._soap = CameraSoap(http, self._username, self._password, max_reply=self.max_body)
        return self._soap

    async def close(self) -> None:
        soap, self._soap = self._soap, None
        self._services = None
        if soap is not None:
            await soap.http.close()

    @contextlib.asynccontextmanager
    async def _guard(self, operation: str) -> AsyncIterator[None]:
        """Bound ``operation`` by the timeout; turn every failure into a DeviceError."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except DeviceError:
            raise
        except TimeoutError:
            raise DeviceTimeoutError(
                self.camera, f"ONVIF {operation}: no answer within {self.timeout:g} s"
            ) from None
        except Exception as exc:
            raise self._error(operation, exc) from None

    def _error(self, operation: str, error: BaseException) -> DeviceError:
        """The DeviceError for what the SOAP client or aiohttp raised."""
        what = f"ONVIF {operation}"
        if isinstance(error, SoapFault):
            return self._fault(what, error)
        if isinstance(error, CameraReplyTooLarge):
            return DeviceProtocolError(self.camera, f"ONVIF {error}")
        if isinstance(error, CameraSoapError):
            return self._refusal(what, error)
        if isinstance(error, aiohttp.ClientConnectorError):
            reason = error.os_error.strerror or type(error.os_error).__name__
            return DeviceConnectionError(self.camera, f"cannot connect: {reason}")
        if isinstance(error, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
            return DeviceConnectionError(
                self.camera, f"{what}: the camera closed the connection without answering"
            )
        if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
            return DeviceConnectionError(self.camera, f"{what}: connection reset")
        if isinstance(error, aiohttp.ClientResponseError):
            return DeviceProtocolError(self.camera, f"{what}: malformed HTTP answer")
        log.error("unexpected ONVIF failure", exc_info=error, extra={"camera": self.camera})
        return DeviceProtocolError(self.camera, f"{what}: failed ({type(error).__name__})")

    def _refusal(self, what: str, error: CameraSoapError) -> DeviceError:
        """An answer that is no SOAP reply: an HTTP refusal, an error page or unusable XML."""
        status = error.status
        if status == 401:
            return DeviceAuthError(self.camera, f"{what}: credentials refused (HTTP 401)")
        if status in (404, 405):
            return DeviceUnsupportedError(
                self.camera, f"{what}: no such ONVIF service (HTTP {status})"
            )
        body = error.body.lstrip(b"\xef\xbb\xbf \t\r\n")
        if status not in (200, 400, 500) or looks_like_html(body) or not body.startswith(b"<"):
            # What the camera sent instead, as the SOAP client described it.
            detail = str(error).split(": ", 1)[-1]
            return DeviceProtocolError(self.camera, f"{what}: {detail}")
        return DeviceProtocolError(
            self.camera, f"{what}: answered with XML that is not a SOAP reply"
        )

    def _fault(self, what: str, fault: SoapFault) -> DeviceError:
        codes = [code.split(":")[-1] for code in fault.subcodes]
        text = " ".join(fault.reason.removeprefix(f"camera {self.camera}: ").split())[:120]
        if "NotAuthorized" in codes or "not authorized" in text.lower():
            return DeviceAuthError(self.camera, f"{what}: credentials refused")
        if "ActionNotSupported" in codes or "ActionNotSupported" in text:
            return DeviceUnsupportedError(self.camera, f"{what} is not supported by this camera")
        detail = ", ".join(codes) or "SOAP fault"
        return DeviceProtocolError(self.camera, f"{what}: {detail}: {text}")

    async def _service(self, service: str) -> URL:
        """The address of ``service`` (``devicemgmt`` or ``media``) on the camera."""
        soap = self._client()
        device_url = soap.url(DEVICE_PATH)
        if self._services is None:
            # The camera's clock (WS-Security dates) and its services, once per client.
            await soap.sync_clock(device_url, read_timeout=self.timeout)
            self._services = await soap.service_addresses(device_url, read_timeout=self.timeout)
        if service == "devicemgmt":
            return self._services.get(NS["tds"], device_url)
        address = self._services.get(SERVICES[service])
        if address is None:
            raise DeviceUnsupportedError(
                self.camera, f"the camera lists no ONVIF {service} service"
            )
        return address

    async def call(self, service: str, operation: str) -> etree._Element:
        """One operation without arguments of the device (``devicemgmt``) or ``media``
        service; the response element."""
        async with self._guard(operation):
            url = await self._service(service)
            prefix = "tds" if service == "devicemgmt" else "trt"
            return await self._client().call(
                url,
                operation,
                SERVICES[service],
                el(f"{prefix}:{operation}"),
                read_timeout=self.timeout,
            )

    async def _optional(self, service: str, operation: str) -> etree._Element | None:
        """An operation some cameras lack: None when unsupported, other errors raised."""
        try:
            return await self.call(service, operation)
        except DeviceUnsupportedError:
            return None
        except DeviceProtocolError as exc:
            if service == "media" and "not support" in exc.message.lower():
                return None
            raise

    # ---------------------------------------------------------------- API

    async def device_info(self) -> DeviceIdentity:
        info = await self.call("devicemgmt", "GetDeviceInformation")
        manufacturer = _text(info, "Manufacturer")
        model = _text(info, "Model")
        firmware_text = _text(info, "FirmwareVersion")
        if not model or not firmware_text:
            raise DeviceProtocolError(
                self.camera, "ONVIF GetDeviceInformation without Model or FirmwareVersion"
            )
        vendor = vendor_from_manufacturer(manufacturer)
        firmware, build = split_firmware(vendor, firmware_text)
        return DeviceIdentity(
            vendor=vendor,
            model=model,
            serial=_text(info, "SerialNumber"),
            mac=await self._mac(),
            firmware=firmware,
            build=build,
        )

    async def _mac(self) -> str:
        interfaces = await self._optional("devicemgmt", "GetNetworkInterfaces")
        for interface in children(interfaces, "NetworkInterfaces"):
            mac = _text(interface, "Info", "HwAddress")
            if mac and _text(interface, "Enabled").lower() not in ("false", "0"):
                return mac.lower()
        return ""

    async def read_settings(self) -> dict[str, str]:
        """What ONVIF shows of the camera's configuration, as ``onvif.*`` keys."""
        flat: dict[str, str] = {}
        info = await self.call("devicemgmt", "GetDeviceInformation")
        flat["onvif.Manufacturer"] = _text(info, "Manufacturer")
        flat["onvif.HardwareId"] = _text(info, "HardwareId")
        clock = child(
            await self._optional("devicemgmt", "GetSystemDateAndTime"), "SystemDateAndTime"
        )
        if clock is not None:
            flat["onvif.DateTimeType"] = _text(clock, "DateTimeType")
            flat["onvif.TimeZone"] = _text(clock, "TimeZone", "TZ")
        ntp = child(await self._optional("devicemgmt", "GetNTP"), "NTPInformation")
        if ntp is not None:
            flat["onvif.NTP.FromDHCP"] = _boolean(_text(ntp, "FromDHCP"))
            flat["onvif.NTP.Manual"] = ",".join(_ntp_hosts(children(ntp, "NTPManual")))
            from_dhcp = _ntp_hosts(children(ntp, "NTPFromDHCP"))
            if from_dhcp:
                flat["onvif.NTP.DHCPServers"] = ",".join(from_dhcp)
        mode = await self._optional("devicemgmt", "GetDiscoveryMode")
        if mode is not None:
            flat["onvif.Discovery.Mode"] = _text(mode, "DiscoveryMode")
        scopes = children(await self._optional("devicemgmt", "GetScopes"), "Scopes")
        for index, scope in enumerate(scopes):
            flat[f"onvif.Scopes[{index}]"] = _text(scope, "ScopeItem")
        interfaces = await self._optional("devicemgmt", "GetNetworkInterfaces")
        for index, interface in enumerate(children(interfaces, "NetworkInterfaces")):
            prefix = f"onvif.NetworkInterfaces[{index}]"
            flat[f"{prefix}.Name"] = _text(interface, "Info", "Name")
            flat[f"{prefix}.HwAddress"] = _text(interface, "Info", "HwAddress").lower()
            flat[f"{prefix}.Enabled"] = _boolean(_text(interface, "Enabled"), absent="")
        profiles = children(await self._optional("media", "GetProfiles"), "Profiles")
        for index, profile in enumerate(profiles):
            prefix = f"onvif.Profiles[{index}]"
            encoder = child(profile, "VideoEncoderConfiguration")
            flat[f"{prefix}.Name"] = _text(profile, "Name")
            if encoder is not None:
                width = _text(encoder, "Resolution", "Width")
                height = _text(encoder, "Resolution", "Height")
                flat[f"{prefix}.Encoding"] = _text(encoder, "Encoding")
                flat[f"{prefix}.Resolution"] = f"{width}x{height}"
        return redact(flat)

    async def write_settings(self, changes: Mapping[str, str]) -> WriteResult:
        keys = ", ".join(sorted(changes))
        raise DeviceUnsupportedError(
            self.camera, f"settings cannot be changed through ONVIF by the gateway ({keys})"
        )


class WithOnvif:
    """A vendor client plus what the camera's ONVIF service adds to its inventory.

    The vendor API stays authoritative: ONVIF only fills an empty serial or MAC and adds its
    ``onvif.*`` keys to the settings. A camera whose ONVIF service is off, refuses or hangs
    is inventoried from the vendor API alone (ONVIF is not asked again by this client).
    """

    def __init__(self, vendor: CameraClient, onvif: OnvifClient) -> None:
        self.vendor = vendor
        self.onvif = onvif
        self.camera = vendor.camera
        self._onvif_failed: str | None = None

    @property
    def onvif_error(self) -> str | None:
        """Why ONVIF was given up for this client, if it was."""
        return self._onvif_failed

    async def _from_onvif(self, job: str) -> Any:
        if self._onvif_failed is not None:
            return None
        try:
            # One timeout for the whole enrichment, whatever the number of operations.
            async with asyncio.timeout(self.onvif.timeout):
                if job == "identity":
                    return await self.onvif.device_info()
                return await self.onvif.read_settings()
        except TimeoutError:
            self._onvif_failed = f"no ONVIF answer within {self.onvif.timeout:g} s"
        except DeviceError as exc:
            self._onvif_failed = exc.message
        log.debug(
            "ONVIF inventory unavailable",
            extra={"camera": self.camera, "error": self._onvif_failed},
        )
        return None

    async def device_info(self) -> DeviceIdentity:
        identity = await self.vendor.device_info()
        if identity.serial and identity.mac:
            return identity
        extra = await self._from_onvif("identity")
        if extra is None:
            return identity
        return DeviceIdentity(
            vendor=identity.vendor,
            model=identity.model,
            serial=identity.serial or extra.serial,
            mac=identity.mac or extra.mac,
            firmware=identity.firmware,
            build=identity.build,
        )

    async def channels(self) -> list[RemoteChannel]:
        """The cameras a recorder records, from the vendor API (ONVIF does not say)."""
        lister = getattr(self.vendor, "channels", None)
        return list(await lister()) if lister is not None else []

    async def read_settings(self) -> dict[str, str]:
        settings = await self.vendor.read_settings()
        extra = await self._from_onvif("settings")
        if extra:
            settings.update({k: v for k, v in extra.items() if k not in settings})
        return settings

    async def write_settings(self, changes: Mapping[str, str]) -> WriteResult:
        return await self.vendor.write_settings(changes)

    async def close(self) -> None:
        try:
            await self.vendor.close()
        finally:
            await self.onvif.close()
