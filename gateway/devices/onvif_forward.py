"""The camera side of forwarding an ONVIF service of a virtual device (PTZ, Imaging) to the
same service of the real camera.

:class:`CameraServiceForwarder` holds what PTZ and Imaging share. The camera SOAP client
(:class:`~gateway.devices.soap.CameraSoap`, over the camera's
:class:`~gateway.devices.http.CameraHttp`) reads the camera's clock (WS-Security tokens are
dated by it) and finds its services; each forwarded operation is re-encoded from the
service's schema (:mod:`gateway.devices.onvif_requests`: only requests of the operation's
shape reach the camera) with the virtual device's token replaced by the camera's, sent
signed, and the camera's reply is passed back; a fault the camera answers with goes back as
it is. A subclass says which service it forwards
(:attr:`namespace`, :meth:`_discover`) and which request element carries the token to map
(:attr:`token_element`): :class:`OnvifPtzForwarder` and :class:`OnvifImagingForwarder`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from lxml import etree
from yarl import URL

from gateway.cancellation import wait_for
from gateway.devices.errors import DeviceError
from gateway.devices.http import CameraHttp
from gateway.devices.onvif_requests import reencode
from gateway.devices.soap import DEVICE_PATH, CameraSoap, CameraSoapError
from gateway.soap import NS, SoapFault, Xml, child, child_text, children, el, raw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraEndpoint:
    """Where and as whom a forwarder reaches the camera's own ONVIF services."""

    name: str  # the camera's name in the configuration (for logs and faults)
    host: str
    port: int  # the camera's HTTP port
    username: str
    password: str = field(repr=False)
    timeout: float = 10.0  # seconds per request to the camera


# The PTZ service capabilities a client acts on (Frigate trusts MoveStatus): each attribute
# of tptz:Capabilities and the PtzCapabilities field that holds it.
PTZ_CAPABILITY_ATTRIBUTES = {
    "MoveStatus": "move_status",
    "StatusPosition": "status_position",
    "EFlip": "eflip",
    "Reverse": "reverse",
}


@dataclass(frozen=True)
class PtzCapabilities:
    """What a PTZ service claims, of :data:`PTZ_CAPABILITY_ATTRIBUTES` (nothing unless said)."""

    move_status: bool = False
    status_position: bool = False
    eflip: bool = False
    reverse: bool = False

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, str]) -> PtzCapabilities:
        """From the attributes of a camera's tptz:Capabilities (xs:boolean)."""
        return cls(
            **{
                name: attributes.get(attribute, "false") in ("true", "1")
                for attribute, name in PTZ_CAPABILITY_ATTRIBUTES.items()
            }
        )

    def attributes(self) -> dict[str, str]:
        """As the attributes of tptz:Capabilities."""
        return {
            attribute: "true" if getattr(self, name) else "false"
            for attribute, name in PTZ_CAPABILITY_ATTRIBUTES.items()
        }

    def shared_with(self, other: PtzCapabilities) -> PtzCapabilities:
        """What both claim."""
        return PtzCapabilities(
            **{
                name: getattr(self, name) and getattr(other, name)
                for name in PTZ_CAPABILITY_ATTRIBUTES.values()
            }
        )


@dataclass(frozen=True)
class PtzSetup:
    """The camera's PTZ configuration as the virtual device shows it inside profiles."""

    node_token: str
    configuration_token: str
    configuration: etree._Element  # a tt:PTZConfiguration (any element name; re-tagged)
    # What the camera's own PTZ GetServiceCapabilities claims.
    capabilities: PtzCapabilities = field(default_factory=PtzCapabilities)


def camera_lacks(what: str) -> SoapFault:
    """The fault meaning "the camera has no such service" (ends background probing)."""
    return SoapFault("Receiver", ("ter:ActionNotSupported",), what)


class CameraServiceForwarder:
    """One ONVIF service of a real camera, reached with the camera's own credentials."""

    namespace = ""  # the forwarded service's WSDL namespace
    token_element = ""  # request child holding the virtual device's token

    def __init__(self, endpoint: CameraEndpoint) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.timeout = endpoint.timeout
        self._lock = asyncio.Lock()
        self._soap: CameraSoap | None = None
        self._url: URL | None = None  # the forwarded service on the camera
        self.camera_token = ""  # the camera's token for ``token_element``

    async def _discover(self, services: Mapping[str, URL]) -> URL:
        """Find the service among the camera's ``services`` (and set :attr:`camera_token`);
        return its address, or raise :func:`camera_lacks`."""
        raise NotImplementedError

    async def _connected(self) -> None:
        """Called once the service is found (a subclass reads what it caches here)."""

    async def _ask(self, url: URL, namespace: str, operation: str) -> etree._Element:
        """An operation without arguments, asked while finding the service: a fault the
        camera answers with means it cannot be used (not that the VMS asked wrong)."""
        assert self._soap is not None
        prefix = next(p for p, uri in NS.items() if uri == namespace)
        try:
            return await self._soap.call(
                url, operation, namespace, el(f"{prefix}:{operation}"), read_timeout=self.timeout
            )
        except SoapFault as fault:
            raise CameraSoapError(f"{operation}: {fault.reason}") from None

    async def _connect(self) -> None:
        end = self.endpoint
        http = CameraHttp(
            end.name, end.host, end.port, end.username, end.password, timeout=end.timeout
        )
        self._soap = soap = CameraSoap(http, end.username, end.password)
        device_url = soap.url(DEVICE_PATH)
        try:
            await soap.sync_clock(device_url, read_timeout=self.timeout)
            services = await soap.service_addresses(device_url, read_timeout=self.timeout)
        except SoapFault as fault:
            raise CameraSoapError(f"no clock or service list: {fault.reason}") from None
        self._url = await self._discover(services)
        await self._connected()

    async def _ensure(self) -> None:
        async with self._lock:
            if self._url is None:
                try:
                    await wait_for(self._connect(), self.timeout * 3)
                except SoapFault:
                    await self._reset()
                    raise
                except Exception as exc:
                    await self._reset()
                    raise SoapFault(
                        "Receiver", ("ter:Action",), f"camera {self.name} unreachable: {exc}"
                    ) from None

    async def connect(self) -> None:
        """Find the camera's service now (raises SoapFault, ter:ActionNotSupported when the
        camera does not have it); calls connect on demand otherwise."""
        await self._ensure()

    async def _send(self, name: str, body: Xml) -> Xml:
        """Send one operation, signed; returns the camera's response element."""
        assert self._url is not None and self._soap is not None
        try:
            reply = await wait_for(
                self._soap.call(self._url, name, self.namespace, body, read_timeout=self.timeout),
                self.timeout,
            )
        except CameraSoapError as exc:
            raise SoapFault(
                "Receiver", ("ter:Action",), f"camera {self.name}: unusable reply: {exc}"
            ) from None
        return raw(reply)

    async def call(self, operation: etree._Element) -> Xml:
        """Forward ``operation`` (the virtual device's request element) to the camera."""
        await self._ensure()
        name = etree.QName(operation).localname
        request = copy.deepcopy(operation)
        token = child(request, self.token_element) if self.token_element else None
        if token is not None:
            token.text = self.camera_token
        body = reencode(request, self.namespace)
        try:
            return await self._send(name, body)
        except SoapFault:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, DeviceError) as exc:
            await self._reset()
            raise SoapFault(
                "Receiver", ("ter:Action",), f"camera {self.name} unreachable: {exc}"
            ) from None

    async def _reset(self) -> None:
        soap, self._soap, self._url = self._soap, None, None
        if soap is not None:
            await soap.http.close()

    async def close(self) -> None:
        async with self._lock:
            await self._reset()


class OnvifPtzForwarder(CameraServiceForwarder):
    """PTZ of a real camera through its own ONVIF PTZ service."""

    namespace = NS["tptz"]
    token_element = "ProfileToken"

    def __init__(self, endpoint: CameraEndpoint, *, policy: str = "enabled") -> None:
        super().__init__(endpoint)
        self.presets_allowed = policy == "enabled"
        self._setup: PtzSetup | None = None
        self._configuration_token = ""

    async def _discover(self, services: Mapping[str, URL]) -> URL:
        media = services.get(NS["trt"])
        if media is None:
            raise camera_lacks(f"{self.name}: no media service")
        profiles = children(await self._ask(media, NS["trt"], "GetProfiles"), "Profiles")
        ptz_profiles = [p for p in profiles if child(p, "PTZConfiguration") is not None]
        if not ptz_profiles:
            raise camera_lacks(f"{self.name}: no PTZ")
        service = services.get(NS["tptz"])
        if service is None:
            raise camera_lacks(f"{self.name}: no PTZ service")
        configuration = child(ptz_profiles[0], "PTZConfiguration")
        assert configuration is not None
        self.camera_token = ptz_profiles[0].get("token", "")
        self._configuration_token = configuration.get("token", "")
        return service

    async def _connected(self) -> None:
        wanted = self._configuration_token
        configs = etree.fromstring(
            await self._send("GetConfigurations", el("tptz:GetConfigurations"))
        )
        chosen = next(
            (c for c in children(configs, "PTZConfiguration") if c.get("token") == wanted),
            None,
        )
        if chosen is None:
            raise SoapFault("Receiver", ("ter:Action",), f"{self.name}: PTZ configuration gone")
        node_token = child_text(chosen, "NodeToken") or ""
        try:
            caps = etree.fromstring(
                await self._send("GetServiceCapabilities", el("tptz:GetServiceCapabilities"))
            )
            found = child(caps, "Capabilities")
            attributes = dict(found.attrib) if found is not None else {}
        except SoapFault as fault:
            # Older PTZ services lack the call: claim nothing the camera did not say.
            log.info("%s: PTZ GetServiceCapabilities refused (%s)", self.name, fault.reason)
            attributes = {}
        capabilities = PtzCapabilities.from_attributes(attributes)
        self._setup = PtzSetup(node_token, wanted, chosen, capabilities)

    async def setup(self) -> PtzSetup:
        await self._ensure()
        assert self._setup is not None
        return self._setup

    async def _reset(self) -> None:
        self._setup = None
        await super()._reset()


class OnvifImagingForwarder(CameraServiceForwarder):
    """Imaging of a real camera through its own ONVIF Imaging service;
    the video source is the camera's ``channel``-th (the one the gateway streams)."""

    namespace = NS["timg"]
    token_element = "VideoSourceToken"

    def __init__(self, endpoint: CameraEndpoint, *, channel: int = 1) -> None:
        super().__init__(endpoint)
        self.channel = channel

    async def _discover(self, services: Mapping[str, URL]) -> URL:
        service = services.get(NS["timg"])
        if service is None:
            raise camera_lacks(f"{self.name}: no Imaging service")
        media = services.get(NS["trt"])
        if media is None:
            raise camera_lacks(f"{self.name}: no media service")
        sources = children(await self._ask(media, NS["trt"], "GetVideoSources"), "VideoSources")
        if not sources:
            raise camera_lacks(f"{self.name}: no video source")
        self.camera_token = sources[min(self.channel, len(sources)) - 1].get("token", "")
        return service
