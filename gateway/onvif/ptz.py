"""PTZ service (ver20/ptz/wsdl) of a virtual device, and the pass-through to the camera.

The service finds the camera a request is for (by profile, node or configuration token) and
hands the operation to that camera's :class:`~gateway.onvif.backend.PtzBackend`.
For real cameras that backend is :class:`gateway.devices.onvif_forward.OnvifPtzForwarder`.

In NVR mode one device holds several cameras, whose node and configuration tokens may well be
the same (every camera of a model names its node alike): there they are shown prefixed with
the camera name, as profile tokens are, and mapped back on the way to the camera. A single
camera's device shows the camera's own tokens. GetServiceCapabilities says what the cameras
say (MoveStatus, StatusPosition): a client such as Frigate trusts MoveStatus.
"""

from __future__ import annotations

import logging

from lxml import etree

from gateway.devices.onvif_forward import PtzCapabilities
from gateway.onvif.backend import PtzBackend
from gateway.onvif.core import SERVICE_PATHS, Call, CameraSlot, Handler
from gateway.onvif.xml import (
    NS,
    SoapFault,
    Xml,
    action_not_supported,
    child,
    children,
    el,
    operation_prohibited,
    parse_markup,
    raw,
)

log = logging.getLogger(__name__)

TPTZ = NS["tptz"]
TT = NS["tt"]

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
# What every camera claims, before the cameras are asked.
CLAIMED_BY_ALL = PtzCapabilities(move_status=True, status_position=True, eflip=True, reverse=True)


def service_capabilities(claims: PtzCapabilities | None = None) -> Xml:
    """tptz:Capabilities; each capability a client acts on is claimed only if every PTZ
    camera of the device claims it (``claims``)."""
    attrs = (claims or PtzCapabilities()).attributes()
    attrs["GetCompatibleConfigurations"] = "false"
    return el("tptz:Capabilities", attrs=attrs)


def legacy_capabilities(call: Call) -> Xml:
    return el("tt:PTZ", el("tt:XAddr", call.http_url(SERVICE_PATHS["ptz"])))


async def camera_claims(call: Call) -> PtzCapabilities:
    """What every PTZ camera of the device claims, from its own GetServiceCapabilities."""
    claims = CLAIMED_BY_ALL
    for slot in _ptz_slots(call):
        try:
            caps = (await _backend(slot).setup()).capabilities
        except SoapFault as fault:
            log.info("%s: PTZ capabilities unavailable: %s", slot.name, fault.reason)
            caps = PtzCapabilities()
        claims = claims.shared_with(caps)
    return claims


async def get_service_capabilities(call: Call) -> Xml:
    if not call.device.has_ptz():
        return el("tptz:GetServiceCapabilitiesResponse", service_capabilities())
    claims = await camera_claims(call)
    return el("tptz:GetServiceCapabilitiesResponse", service_capabilities(claims))


def _ptz_slots(call: Call) -> list[CameraSlot]:
    slots = [s for s in call.device.slots if s.ptz_enabled]
    if not slots:
        raise action_not_supported(f"{call.soap.name} (this device has no PTZ)")
    return slots


def shown_token(nvr: bool, slot: CameraSlot, token: str) -> str:
    """A camera's node/configuration token as the virtual device shows it."""
    return f"{slot.name}_{token}" if nvr else token


def show_tokens(node: etree._Element, nvr: bool, slot: CameraSlot) -> etree._Element:
    """Prefix the node and configuration tokens inside ``node`` (a reply or a configuration)
    in NVR mode; changes ``node`` in place and returns it."""
    if not nvr:
        return node
    for item in node.iter():
        if not isinstance(item.tag, str):
            continue
        local = etree.QName(item).localname
        if local in ("PTZNode", "PTZConfiguration", "PTZ") and item.get("token"):
            item.set("token", shown_token(nvr, slot, item.get("token", "")))
        elif local == "NodeToken" and item.text:
            item.text = shown_token(nvr, slot, item.text.strip())
    return node


async def _slot_for(call: Call, name: str) -> tuple[CameraSlot, etree._Element]:
    """The camera ``call`` is for, and the request as that camera's tokens name things."""
    slots = _ptz_slots(call)
    token_name = BY_NODE.get(name) or BY_CONFIG.get(name)
    if token_name is None:
        profile = call.device.profile(call.arg("ProfileToken"))
        if not profile.slot.ptz_enabled:
            raise SoapFault("Sender", ("ter:InvalidArgVal", "ter:NoPTZProfile"), "no PTZ")
        return profile.slot, call.op
    token = call.arg(token_name)
    nvr = call.device.nvr
    for slot in slots:
        setup = await _backend(slot).setup()
        for own in (setup.node_token, setup.configuration_token):
            if token == shown_token(nvr, slot, own):
                request = etree.fromstring(etree.tostring(call.op))
                found = child(request, token_name)
                assert found is not None
                found.text = own
                return slot, request
    subcode = "ter:NoEntity" if name == "GetNode" else "ter:NoConfig"
    raise SoapFault("Sender", ("ter:InvalidArgVal", subcode), f"no PTZ entity {token!r}")


def _backend(slot: CameraSlot) -> PtzBackend:
    assert slot.backend.ptz is not None
    return slot.backend.ptz


def _shown(reply: Xml, nvr: bool, slot: CameraSlot) -> Xml:
    if not nvr:
        return reply
    return raw(show_tokens(parse_markup(reply), nvr, slot))


async def forward(call: Call) -> Xml:
    name = call.soap.name
    nvr = call.device.nvr
    if name in AGGREGATED:
        # Every PTZ camera's nodes/configurations, under one response element.
        items: list[Xml] = []
        for slot in _ptz_slots(call):
            reply = parse_markup(await _backend(slot).call(call.op))
            items.extend(raw(show_tokens(c, nvr, slot)) for c in children(reply, AGGREGATED[name]))
        return el(f"tptz:{name}Response", items)
    slot, request = await _slot_for(call, name)
    if name in PRESET_CHANGES and (
        slot.config.ptz == "no-presets" or not _backend(slot).presets_allowed
    ):
        raise operation_prohibited(f"{name}: preset changes are disabled for {slot.name}")
    return _shown(await _backend(slot).call(request), nvr, slot)


OPERATIONS: dict[tuple[str, str], Handler] = {
    (TPTZ, "GetServiceCapabilities"): get_service_capabilities,
}
OPERATIONS.update({(TPTZ, name): forward for name in OPERATIONS_FORWARDED})
