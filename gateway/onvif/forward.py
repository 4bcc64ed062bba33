"""Forwarding one ONVIF service of a virtual device to the same service of the real camera.

:class:`CameraServiceForwarder` holds the camera-facing side shared by PTZ and Imaging:
onvif-zeep-async finds the camera's services, corrects for its clock and signs every request
with WS-Security; each forwarded operation is re-encoded through the service's schema (so only
schema-valid requests reach the camera) with the virtual device's token replaced by the
camera's, and the camera's reply is parsed with the hardened parser and passed back. A
subclass says which service it forwards (:attr:`namespace`, :meth:`_discover`) and which
request element carries the token to map (:attr:`token_element`).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import aiohttp
from lxml import etree

from gateway.devices.soap import fault_from_reply
from gateway.onvif.xml import SOAP11, SOAP12, SoapFault, Xml, child, parse_xml, raw

MAX_REPLY_BYTES = 1024 * 1024


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
        self._session: aiohttp.ClientSession | None = None
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
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
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
        """Sign and send one operation; returns the camera's response element."""
        assert self._service is not None and self._session is not None
        client = self._service.zeep_client
        envelope = client.create_message(self._service.ws_client, name, **kwargs)
        body = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
        headers = {
            "Content-Type": f'application/soap+xml; charset=utf-8; action="{self.namespace}/{name}"'
        }
        async with self._session.post(
            self._service.xaddr, data=body, headers=headers, allow_redirects=False
        ) as resp:
            data = await resp.content.read(MAX_REPLY_BYTES + 1)
        try:
            root = parse_xml(data, max_bytes=MAX_REPLY_BYTES)
        except ValueError as exc:
            raise SoapFault(
                "Receiver", ("ter:Action",), f"camera {self.name}: unusable reply: {exc}"
            ) from None
        soap_ns = etree.QName(root).namespace
        body_el = root.find(f"{{{soap_ns}}}Body") if soap_ns in (SOAP12, SOAP11) else None
        first = (
            next((c for c in body_el if isinstance(c.tag, str)), None)
            if body_el is not None
            else None
        )
        if first is None:
            raise SoapFault("Receiver", ("ter:Action",), f"camera {self.name}: empty reply")
        if etree.QName(first).localname == "Fault":
            raise fault_from_reply(first, self.name)
        return raw(first)

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
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            await self._reset()
            raise SoapFault(
                "Receiver", ("ter:Action",), f"camera {self.name} unreachable: {exc}"
            ) from None

    async def _reset(self) -> None:
        camera, session = self._camera, self._session
        self._camera = self._service = self._session = None
        if session is not None:
            await session.close()
        if camera is not None:
            await camera.close()

    async def close(self) -> None:
        async with self._lock:
            await self._reset()
