"""The camera side of forwarding an ONVIF service of a virtual device (PTZ, Imaging) to the
same service of the real camera.

:class:`CameraServiceForwarder` holds what PTZ and Imaging share: onvif-zeep-async finds the
camera's services, corrects for its clock and signs every request with WS-Security; each
forwarded operation is re-encoded through the service's schema (so only schema-valid
requests reach the camera) with the virtual device's token replaced by the camera's, sent
with the camera SOAP client (:class:`~gateway.devices.soap.CameraSoap`, over the camera's
:class:`~gateway.devices.http.CameraHttp`), and the camera's reply is passed back; a fault
the camera answers with goes back as it is. A subclass says which service it forwards
(:attr:`namespace`, :meth:`_discover`) and which request element carries the token to map
(:attr:`token_element`): :class:`OnvifPtzForwarder` and :class:`OnvifImagingForwarder`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from lxml import etree

from gateway.devices.errors import DeviceError
from gateway.devices.http import CameraHttp
from gateway.devices.soap import CameraSoap, CameraSoapError
from gateway.soap import NS, SoapFault, Xml, child, child_text, children, raw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PtzSetup:
    """The camera's PTZ configuration as the virtual device shows it inside profiles."""

    node_token: str
    configuration_token: str
    configuration: etree._Element  # a tt:PTZConfiguration (any element name; re-tagged)
    # The attributes of the camera's own PTZ GetServiceCapabilities (MoveStatus, ...).
    capabilities: Mapping[str, str] = field(default_factory=dict)


def camera_lacks(what: str) -> SoapFault:
    """The fault meaning "the camera has no such service" (ends background probing)."""
    return SoapFault("Receiver", ("ter:ActionNotSupported",), what)


class CameraServiceForwarder:
    """One ONVIF service of a real camera, reached with the camera's own credentials."""

    namespace = ""  # the forwarded service's WSDL namespace
    token_element = ""  # request child holding the virtual device's token

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        username: str,
        password: str,
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._camera: Any = None
        self._service: Any = None
        self._soap: CameraSoap | None = None
        self.camera_token = ""  # the camera's token for ``token_element``

    async def _discover(self, camera: Any) -> Any:
        """Find the service on the connected ``camera`` (and set :attr:`camera_token`);
        return its onvif-zeep-async service, or raise :func:`camera_lacks`."""
        raise NotImplementedError

    async def _connected(self) -> None:
        """Called once the service is found (a subclass reads what it caches here)."""

    async def _connect(self) -> None:
        from onvif import ONVIFCamera

        camera = ONVIFCamera(self.host, self.port, self.username, self.password, adjust_time=True)
        try:
            await camera.update_xaddrs()
            service = await self._discover(camera)
        except BaseException:
            await camera.close()
            raise
        self._camera = camera
        self._service = service
        http = CameraHttp(
            self.name, self.host, self.port, self.username, self.password, timeout=self.timeout
        )
        self._soap = CameraSoap(http, self.username, self.password)
        await self._connected()

    async def _ensure(self) -> None:
        async with self._lock:
            if self._service is None:
                try:
                    await asyncio.wait_for(self._connect(), self.timeout * 3)
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

    async def _send(self, name: str, kwargs: dict[str, Any]) -> Xml:
        """Send one operation, signed by zeep; returns the camera's response element."""
        assert self._service is not None and self._soap is not None
        client = self._service.zeep_client
        envelope = client.create_message(self._service.ws_client, name, **kwargs)
        body = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
        soap = self._soap
        try:
            reply = await asyncio.wait_for(
                soap.post(
                    soap.on_camera(self._service.xaddr),
                    f"{self.namespace}/{name}",
                    body,
                    read_timeout=self.timeout,
                ),
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
        from zeep.helpers import serialize_object

        name = etree.QName(operation).localname
        request = copy.deepcopy(operation)
        token = child(request, self.token_element) if self.token_element else None
        if token is not None:
            token.text = self.camera_token
        client = self._service.zeep_client
        try:
            element = client.get_element(f"{{{self.namespace}}}{name}")
            value = element.parse(request, client.wsdl.types)
        except Exception as exc:  # zeep raises many types for schema mismatches
            raise SoapFault("Sender", ("ter:InvalidArgVal",), f"{name}: {exc}") from None
        kwargs = {k: v for k, v in (serialize_object(value) or {}).items() if v is not None}
        try:
            return await self._send(name, kwargs)
        except SoapFault:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, DeviceError) as exc:
            await self._reset()
            raise SoapFault(
                "Receiver", ("ter:Action",), f"camera {self.name} unreachable: {exc}"
            ) from None

    async def _reset(self) -> None:
        camera, soap = self._camera, self._soap
        self._camera = self._service = self._soap = None
        if soap is not None:
            await soap.http.close()
        if camera is not None:
            await camera.close()

    async def close(self) -> None:
        async with self._lock:
            await self._reset()


class OnvifPtzForwarder(CameraServiceForwarder):
    """PTZ of a real camera through its own ONVIF PTZ service (onvif-zeep-async)."""

    namespace = NS["tptz"]
    token_element = "ProfileToken"

    def __init__(self, *, policy: str = "enabled", **endpoint: Any) -> None:
        """``endpoint``: :class:`CameraServiceForwarder`'s name, host, port, credentials."""
        super().__init__(**endpoint)
        self.presets_allowed = policy == "enabled"
        self._setup: PtzSetup | None = None
        self._configuration_token = ""

    async def _discover(self, camera: Any) -> Any:
        media = await camera.create_media_service()
        profiles = await media.GetProfiles()
        ptz_profiles = [p for p in profiles if getattr(p, "PTZConfiguration", None)]
        if not ptz_profiles:
            raise camera_lacks(f"{self.name}: no PTZ")
        service = await camera.create_ptz_service()
        self.camera_token = ptz_profiles[0].token
        self._configuration_token = ptz_profiles[0].PTZConfiguration.token
        return service

    async def _connected(self) -> None:
        wanted = self._configuration_token
        configs = etree.fromstring(await self._send("GetConfigurations", {}))
        chosen = next(
            (c for c in children(configs, "PTZConfiguration") if c.get("token") == wanted),
            None,
        )
        if chosen is None:
            raise SoapFault("Receiver", ("ter:Action",), f"{self.name}: PTZ configuration gone")
        node_token = child_text(chosen, "NodeToken") or ""
        try:
            caps = etree.fromstring(await self._send("GetServiceCapabilities", {}))
            found = child(caps, "Capabilities")
            capabilities = dict(found.attrib) if found is not None else {}
        except SoapFault as fault:
            # Older PTZ services lack the call: claim nothing the camera did not say.
            log.info("%s: PTZ GetServiceCapabilities refused (%s)", self.name, fault.reason)
            capabilities = {}
        self._setup = PtzSetup(node_token, wanted, chosen, capabilities)

    async def setup(self) -> PtzSetup:
        await self._ensure()
        assert self._setup is not None
        return self._setup

    async def _reset(self) -> None:
        self._setup = None
        await super()._reset()


class OnvifImagingForwarder(CameraServiceForwarder):
    """Imaging of a real camera through its own ONVIF Imaging service (onvif-zeep-async);
    the video source is the camera's ``channel``-th (the one the gateway streams)."""

    namespace = NS["timg"]
    token_element = "VideoSourceToken"

    def __init__(self, *, channel: int = 1, **endpoint: Any) -> None:
        """``endpoint``: :class:`CameraServiceForwarder`'s name, host, port, credentials."""
        super().__init__(**endpoint)
        self.channel = channel

    async def _discover(self, camera: Any) -> Any:
        if not camera.xaddrs.get(NS["timg"]):
            raise camera_lacks(f"{self.name}: no Imaging service")
        media = await camera.create_media_service()
        sources = await media.GetVideoSources()
        if not sources:
            raise camera_lacks(f"{self.name}: no video source")
        self.camera_token = sources[min(self.channel, len(sources)) - 1].token
        return await camera.create_imaging_service()
