"""PTZ service (ver20/ptz/wsdl) of a virtual device, and the pass-through to the camera.

The service finds the camera a request is for (by profile, node or configuration token) and
hands the operation to that camera's :class:`~gateway.onvif.backend.PtzBackend`.
:class:`OnvifPtzForwarder` is that backend for real cameras: onvif-zeep-async finds the
camera's services, corrects for its clock and signs every request with WS-Security; each
operation is re-encoded through the PTZ schema (so only schema-valid requests reach the
camera) with the virtual profile token replaced by the camera's, and the camera's reply is
parsed with the hardened parser and passed back.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import aiohttp
from lxml import etree

from gateway.onvif.backend import PtzBackend, PtzSetup
from gateway.onvif.core import SERVICE_PATHS, Call, CameraSlot, Handler
from gateway.onvif.xml import (
    NS,
    SOAP11,
    SOAP12,
    SoapFault,
    Xml,
    action_not_supported,
    child,
    child_text,
    children,
    el,
    operation_prohibited,
    parse_markup,
    parse_xml,
    raw,
)

log = logging.getLogger(__name__)

TPTZ = NS["tptz"]
MAX_REPLY_BYTES = 1024 * 1024

OPERATIONS_FORWARDED = (
    "GetNodes",
    "GetNode",
    "GetConfigurations",
    "GetConfiguration",
    "GetConfigurationOptions",
    "GetStatus",
    "ContinuousMove",
    "RelativeMove",
    "AbsoluteMove",
    "Stop",
    "GetPresets",
    "GotoPreset",
    "SetPreset",
    "RemovePreset",
    "GotoHomePosition",
    "SetHomePosition",
)
PRESET_CHANGES = {"SetPreset", "RemovePreset", "SetHomePosition"}
# Operations that name a node or configuration instead of a profile.
BY_NODE = {"GetNode": "NodeToken", "GetConfiguration": "PTZConfigurationToken"}
BY_CONFIG = {"GetConfigurationOptions": "ConfigurationToken"}
AGGREGATED = {"GetNodes": "PTZNode", "GetConfigurations": "PTZConfiguration"}


def service_capabilities() -> Xml:
    return el(
        "tptz:Capabilities",
        attrs={
            "EFlip": "false",
            "Reverse": "false",
            "GetCompatibleConfigurations": "false",
            "MoveStatus": "true",
            "StatusPosition": "true",
        },
    )


def legacy_capabilities(call: Call) -> Xml:
    return el("tt:PTZ", el("tt:XAddr", call.http_url(SERVICE_PATHS["ptz"])))


async def get_service_capabilities(call: Call) -> Xml:
    return el("tptz:GetServiceCapabilitiesResponse", service_capabilities())


def _ptz_slots(call: Call) -> list[CameraSlot]:
    slots = [s for s in call.device.slots if s.ptz_enabled]
    if not slots:
        raise action_not_supported(f"{call.soap.name} (this device has no PTZ)")
    return slots


async def _slot_for(call: Call, name: str) -> CameraSlot:
    slots = _ptz_slots(call)
    token_name = BY_NODE.get(name) or BY_CONFIG.get(name)
    if token_name is None:
        profile = call.device.profile(call.arg("ProfileToken"))
        if not profile.slot.ptz_enabled:
            raise SoapFault("Sender", ("ter:InvalidArgVal", "ter:NoPTZProfile"), "no PTZ")
        return profile.slot
    token = call.arg(token_name)
    for slot in slots:
        assert slot.backend.ptz is not None
        setup = await slot.backend.ptz.setup()
        if token in (setup.node_token, setup.configuration_token):
            return slot
    subcode = "ter:NoEntity" if name == "GetNode" else "ter:NoConfig"
    raise SoapFault("Sender", ("ter:InvalidArgVal", subcode), f"no PTZ entity {token!r}")


def _backend(slot: CameraSlot) -> PtzBackend:
    assert slot.backend.ptz is not None
    return slot.backend.ptz


async def forward(call: Call) -> Xml:
    name = call.soap.name
    if name in AGGREGATED:
        # Every PTZ camera's nodes/configurations, under one response element.
        items: list[Xml] = []
        for slot in _ptz_slots(call):
            reply = parse_markup(await _backend(slot).call(call.op))
            items.extend(raw(c) for c in children(reply, AGGREGATED[name]))
        return el(f"tptz:{name}Response", items)
    slot = await _slot_for(call, name)
    if name in PRESET_CHANGES and (
        slot.config.ptz == "no-presets" or not _backend(slot).presets_allowed
    ):
        raise operation_prohibited(f"{name}: preset changes are disabled for {slot.name}")
    return await _backend(slot).call(call.op)


OPERATIONS: dict[tuple[str, str], Handler] = {
    (TPTZ, "GetServiceCapabilities"): get_service_capabilities,
}
OPERATIONS.update({(TPTZ, name): forward for name in OPERATIONS_FORWARDED})


# --------------------------------------------------------------------------- forwarder


def fault_from_reply(fault: etree._Element, camera: str) -> SoapFault:
    """Re-raise a camera's SOAP fault (1.2 or 1.1) with its ONVIF subcodes."""
    ns = etree.QName(fault).namespace
    if ns == SOAP12:
        code = fault.findtext(f"{{{SOAP12}}}Code/{{{SOAP12}}}Value") or "Receiver"
        subcodes: list[str] = []
        node = fault.find(f"{{{SOAP12}}}Code/{{{SOAP12}}}Subcode")
        while node is not None and len(subcodes) < 4:
            value = (node.findtext(f"{{{SOAP12}}}Value") or "").strip()
            if value:
                subcodes.append("ter:" + value.split(":")[-1])
            node = node.find(f"{{{SOAP12}}}Subcode")
        reason = (fault.findtext(f"{{{SOAP12}}}Reason/{{{SOAP12}}}Text") or "").strip()
    else:
        code = "Sender" if "Client" in (fault.findtext("faultcode") or "") else "Receiver"
        subcodes = []
        reason = (fault.findtext("faultstring") or "").strip()
    side = "Sender" if code.split(":")[-1] in ("Sender", "Client") else "Receiver"
    return SoapFault(side, tuple(subcodes), f"camera {camera}: {reason or 'fault'}")


class OnvifPtzForwarder:
    """PTZ of a real camera through its own ONVIF PTZ service (onvif-zeep-async)."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        username: str,
        password: str,
        policy: str = "enabled",
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.presets_allowed = policy == "enabled"
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._camera: Any = None
        self._service: Any = None
        self._profile_token = ""
        self._setup: PtzSetup | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _connect(self) -> None:
        from onvif import ONVIFCamera

        camera = ONVIFCamera(self.host, self.port, self.username, self.password, adjust_time=True)
        try:
            await camera.update_xaddrs()
            media = await camera.create_media_service()
            profiles = await media.GetProfiles()
            ptz_profiles = [p for p in profiles if getattr(p, "PTZConfiguration", None)]
            if not ptz_profiles:
                raise SoapFault("Receiver", ("ter:ActionNotSupported",), f"{self.name}: no PTZ")
            service = await camera.create_ptz_service()
        except BaseException:
            await camera.close()
            raise
        self._camera = camera
        self._service = service
        self._profile_token = ptz_profiles[0].token
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        wanted = ptz_profiles[0].PTZConfiguration.token
        configs = etree.fromstring(await self._send("GetConfigurations", {}))
        chosen = next(
            (c for c in children(configs, "PTZConfiguration") if c.get("token") == wanted),
            None,
        )
        if chosen is None:
            raise SoapFault("Receiver", ("ter:Action",), f"{self.name}: PTZ configuration gone")
        node_token = child_text(chosen, "NodeToken") or ""
        self._setup = PtzSetup(node_token, wanted, chosen)

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

    async def setup(self) -> PtzSetup:
        await self._ensure()
        assert self._setup is not None
        return self._setup

    async def _send(self, name: str, kwargs: dict[str, Any]) -> Xml:
        """Sign and send one operation; returns the camera's response element."""
        assert self._service is not None and self._session is not None
        client = self._service.zeep_client
        envelope = client.create_message(self._service.ws_client, name, **kwargs)
        body = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
        headers = {"Content-Type": f'application/soap+xml; charset=utf-8; action="{TPTZ}/{name}"'}
        async with self._session.post(self._service.xaddr, data=body, headers=headers) as resp:
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
        await self._ensure()
        from zeep.helpers import serialize_object

        name = etree.QName(operation).localname
        request = copy.deepcopy(operation)
        token = child(request, "ProfileToken")
        if token is not None:
            token.text = self._profile_token
        client = self._service.zeep_client
        try:
            element = client.get_element(f"{{{TPTZ}}}{name}")
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
        self._setup = None
        if session is not None:
            await session.close()
        if camera is not None:
            await camera.close()

    async def close(self) -> None:
        async with self._lock:
            await self._reset()
