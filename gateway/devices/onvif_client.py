"""ONVIF client of one camera (onvif-zeep-async): inventory and the settings ONVIF shows.

Used on its own for cameras of vendor ``generic`` (:class:`OnvifClient`), and next to the
vendor API of Hikvision/Dahua cameras to add what only ONVIF tells (:class:`WithOnvif`).

Settings come out flat, every key under ``onvif.``: ``onvif.NTP.FromDHCP``,
``onvif.NTP.Manual`` (the servers set by hand, comma-separated), ``onvif.DateTimeType``,
``onvif.Discovery.Mode``, ``onvif.Scopes[i]``, ``onvif.Profiles[i].Encoding``, ... ONVIF
cannot change what the telemetry policy governs on these cameras, so the client is
read-only: :meth:`OnvifClient.write_settings` refuses.

Hardening: every operation runs under the request timeout; answers are read through a session
that refuses bodies over :data:`MAX_BODY`; zeep parses them with DTDs and entities forbidden.
Failures become the per-camera errors of :mod:`gateway.devices.errors`, built from the camera
name, the operation and what the camera did; the password is never part of a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import zeep.exceptions
from onvif import ONVIFCamera, ONVIFService
from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError
from zeep.settings import Settings

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
from gateway.devices.nvr import RemoteChannel
from gateway.devices.xmlsafe import describe_body, looks_like_html

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
# zeep's transport logs whole SOAP messages at DEBUG, WS-Security digests included.
for _name in ("zeep.transports", "onvif.zeep_aiohttp"):
    logging.getLogger(_name).setLevel(logging.INFO)

# Lenient about sloppy camera XML (strict off), never about DTDs, entities or huge trees.
PARSER_SETTINGS = Settings(
    strict=False,
    xml_huge_tree=False,
    forbid_dtd=True,
    forbid_entities=True,
    forbid_external=True,
)
_HIK_FIRMWARE = re.compile(r"^(?P<version>\S+)\s+(?P<build>build\s+\S+)$", re.I)


class BodyTooLarge(aiohttp.ClientError):
    """An answer longer than the client accepts (raised while reading it)."""


class HttpRefused(aiohttp.ClientError):
    """An HTTP-level refusal (401, or an error page instead of SOAP), seen before zeep."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


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


def _get(node: Any, *path: str) -> Any:
    """``node.a.b`` for zeep objects, None as soon as a step is missing."""
    for name in path:
        if node is None:
            return None
        node = getattr(node, name, None)
    return node


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value).strip()


def _ntp_hosts(entries: Any) -> list[str]:
    hosts: list[str] = []
    for entry in entries or []:
        for name in ("IPv4Address", "IPv6Address", "DNSname"):
            value = _text(_get(entry, name))
            if value:
                hosts.append(value)
                break
    return hosts


class _BoundedCamera(ONVIFCamera):
    """ONVIFCamera whose services send through our size-limited session and parse hardened."""

    def __init__(self, session: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounded = session

    async def create_onvif_service(
        self,
        name: str,
        port_type: str | None = None,
        read_timeout: int | None = None,
        write_timeout: int | None = None,
    ) -> ONVIFService:
        service = await super().create_onvif_service(name, port_type, read_timeout, write_timeout)
        if service.transport.session is not self._bounded:
            service.transport.session = self._bounded
            for client in (service.zeep_client, service.zeep_client_authless):
                if client is not None:
                    client.settings = PARSER_SETTINGS
        return service


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
        self._session: aiohttp.ClientSession | None = None
        self._onvif: _BoundedCamera | None = None
        self._connected = False

    # ---------------------------------------------------------------- plumbing

    async def _limit_body(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Read the answer here, refusing more than ``max_body`` bytes, before zeep does."""
        response = await handler(request)
        length = response.content_length
        if length is not None and length > self.max_body:
            response.close()
            raise BodyTooLarge(f"answer of {length} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            body += chunk
            if len(body) > self.max_body:
                response.close()
                raise BodyTooLarge(f"answer larger than {self.max_body} bytes")
        # zeep reports a 401 or an error page as an anonymous fault, and its lenient parser
        # can make nothing at all of text that is not XML: say here what the camera sent.
        data = bytes(body)
        status = response.status
        is_soap = status in (200, 400, 500) and not looks_like_html(data)
        if not is_soap or not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            raise HttpRefused(status, data)
        # ClientResponse.read() returns the body it already holds instead of reading again.
        response._body = data
        return response

    def _camera(self) -> _BoundedCamera:
        if self._onvif is None:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                connector=aiohttp.TCPConnector(limit=4),
                middlewares=(self._limit_body,),
            )
            self._onvif = _BoundedCamera(
                self._session,
                self.host,
                self.port,
                self._username,
                self._password,
                adjust_time=True,
                no_cache=True,
            )
        return self._onvif

    async def close(self) -> None:
        if self._onvif is not None:
            with contextlib.suppress(Exception):
                await self._onvif.close()
            self._onvif = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._connected = False

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

    def _error(self, operation: str, exc: BaseException) -> DeviceError:
        """The DeviceError for what the library raised (its cause chain is searched)."""
        seen: list[BaseException] = []
        cause: BaseException | None = exc
        while cause is not None and cause not in seen and len(seen) < 8:
            seen.append(cause)
            cause = cause.__cause__ or cause.__context__
        what = f"ONVIF {operation}"
        for error in seen:
            if isinstance(error, (TimeoutError, ONVIFTimeoutError)):
                return DeviceTimeoutError(
                    self.camera, f"{what}: no answer within {self.timeout:g} s"
                )
            if isinstance(error, BodyTooLarge):
                return DeviceProtocolError(self.camera, f"{what}: {error}")
            if isinstance(error, HttpRefused):
                if error.status == 401:
                    return DeviceAuthError(self.camera, f"{what}: credentials refused (HTTP 401)")
                if error.status in (404, 405):
                    return DeviceUnsupportedError(
                        self.camera, f"{what}: no such ONVIF service (HTTP {error.status})"
                    )
                return DeviceProtocolError(
                    self.camera, f"{what}: HTTP {error.status} with {describe_body(error.body)}"
                )
            if isinstance(error, ONVIFAuthError):
                return DeviceAuthError(self.camera, f"{what}: credentials refused")
            if isinstance(error, zeep.exceptions.Fault):
                return self._fault(what, error)
            if isinstance(error, zeep.exceptions.TransportError):
                return self._transport_error(what, error)
            if isinstance(
                error,
                (
                    zeep.exceptions.XMLSyntaxError,
                    zeep.exceptions.XMLParseError,
                    zeep.exceptions.DTDForbidden,
                    zeep.exceptions.EntitiesForbidden,
                    zeep.exceptions.ExternalReferenceForbidden,
                ),
            ):
                return DeviceProtocolError(
                    self.camera, f"{what}: answered with XML that is not a SOAP reply"
                )
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
        if isinstance(exc, (ONVIFError, zeep.exceptions.Error)):
            # zeep could not make sense of the answer (wrong elements, missing fields).
            return DeviceProtocolError(
                self.camera, f"{what}: the answer is not what ONVIF defines ({type(exc).__name__})"
            )
        log.error("unexpected ONVIF failure", exc_info=exc, extra={"camera": self.camera})
        return DeviceProtocolError(self.camera, f"{what}: failed ({type(exc).__name__})")

    def _fault(self, what: str, fault: zeep.exceptions.Fault) -> DeviceError:
        codes = [str(getattr(c, "localname", c)) for c in (fault.subcodes or [])]
        text = " ".join(str(fault.message or "").split())[:120]
        if "NotAuthorized" in codes or "not authorized" in text.lower():
            return DeviceAuthError(self.camera, f"{what}: credentials refused")
        if "ActionNotSupported" in codes or "ActionNotSupported" in text:
            return DeviceUnsupportedError(self.camera, f"{what} is not supported by this camera")
        detail = ", ".join(codes) or "SOAP fault"
        return DeviceProtocolError(self.camera, f"{what}: {detail}: {text}")

    def _transport_error(self, what: str, error: zeep.exceptions.TransportError) -> DeviceError:
        status = error.status_code
        if status == 401:
            return DeviceAuthError(self.camera, f"{what}: credentials refused (HTTP 401)")
        if status == 404:
            return DeviceUnsupportedError(self.camera, f"{what}: no such ONVIF service (HTTP 404)")
        body = error.content if isinstance(error.content, bytes) else b""
        return DeviceProtocolError(self.camera, f"{what}: HTTP {status} with {describe_body(body)}")

    async def _service(self, name: str) -> ONVIFService:
        camera = self._camera()
        if not self._connected:
            # Clock offset (adjust_time) and service addresses, once per client.
            await camera.update_xaddrs()
            self._connected = True
        if name == "media":
            return await camera.create_media_service()
        return await camera.create_devicemgmt_service()

    async def call(self, service: str, operation: str, params: Any = None) -> Any:
        """One operation of the device (``devicemgmt``) or ``media`` service."""
        async with self._guard(operation):
            target = await self._service(service)
            return await getattr(target, operation)(params)

    async def _optional(self, service: str, operation: str) -> Any:
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
        manufacturer = _text(_get(info, "Manufacturer"))
        model = _text(_get(info, "Model"))
        firmware_text = _text(_get(info, "FirmwareVersion"))
        if not model or not firmware_text:
            raise DeviceProtocolError(
                self.camera, "ONVIF GetDeviceInformation without Model or FirmwareVersion"
            )
        vendor = vendor_from_manufacturer(manufacturer)
        firmware, build = split_firmware(vendor, firmware_text)
        return DeviceIdentity(
            vendor=vendor,
            model=model,
            serial=_text(_get(info, "SerialNumber")),
            mac=await self._mac(),
            firmware=firmware,
            build=build,
        )

    async def _mac(self) -> str:
        interfaces = await self._optional("devicemgmt", "GetNetworkInterfaces")
        for interface in interfaces or []:
            mac = _text(_get(interface, "Info", "HwAddress"))
            if mac and _get(interface, "Enabled") is not False:
                return mac.lower()
        return ""

    async def read_settings(self) -> dict[str, str]:
        """What ONVIF shows of the camera's configuration, as ``onvif.*`` keys."""
        flat: dict[str, str] = {}
        info = await self.call("devicemgmt", "GetDeviceInformation")
        flat["onvif.Manufacturer"] = _text(_get(info, "Manufacturer"))
        flat["onvif.HardwareId"] = _text(_get(info, "HardwareId"))
        clock = await self._optional("devicemgmt", "GetSystemDateAndTime")
        if clock is not None:
            flat["onvif.DateTimeType"] = _text(_get(clock, "DateTimeType"))
            flat["onvif.TimeZone"] = _text(_get(clock, "TimeZone", "TZ"))
        ntp = await self._optional("devicemgmt", "GetNTP")
        if ntp is not None:
            flat["onvif.NTP.FromDHCP"] = _text(bool(_get(ntp, "FromDHCP")))
            flat["onvif.NTP.Manual"] = ",".join(_ntp_hosts(_get(ntp, "NTPManual")))
            from_dhcp = _ntp_hosts(_get(ntp, "NTPFromDHCP"))
            if from_dhcp:
                flat["onvif.NTP.DHCPServers"] = ",".join(from_dhcp)
        mode = await self._optional("devicemgmt", "GetDiscoveryMode")
        if mode is not None:
            flat["onvif.Discovery.Mode"] = _text(mode)
        for index, scope in enumerate(await self._optional("devicemgmt", "GetScopes") or []):
            flat[f"onvif.Scopes[{index}]"] = _text(_get(scope, "ScopeItem"))
        interfaces = await self._optional("devicemgmt", "GetNetworkInterfaces")
        for index, interface in enumerate(interfaces or []):
            prefix = f"onvif.NetworkInterfaces[{index}]"
            flat[f"{prefix}.Name"] = _text(_get(interface, "Info", "Name"))
            flat[f"{prefix}.HwAddress"] = _text(_get(interface, "Info", "HwAddress")).lower()
            flat[f"{prefix}.Enabled"] = _text(_get(interface, "Enabled"))
        profiles = await self._optional("media", "GetProfiles")
        for index, profile in enumerate(profiles or []):
            prefix = f"onvif.Profiles[{index}]"
            encoder = _get(profile, "VideoEncoderConfiguration")
            flat[f"{prefix}.Name"] = _text(_get(profile, "Name"))
            if encoder is not None:
                width = _text(_get(encoder, "Resolution", "Width"))
                height = _text(_get(encoder, "Resolution", "Height"))
                flat[f"{prefix}.Encoding"] = _text(_get(encoder, "Encoding"))
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
