"""Imaging service (ver20/imaging/wsdl) of a virtual device, forwarded to the camera's own.

A request names a video source; the service finds the camera it belongs to and hands the
operation to that camera's :class:`~gateway.onvif.backend.ImagingBackend`, which maps the
virtual video source token to the camera's. For real cameras that backend is
:class:`gateway.devices.onvif_forward.OnvifImagingForwarder` (the camera's ONVIF Imaging,
reached as PTZ is).

What a VMS may change is the camera's ``imaging`` policy in ``[[camera]]``:

- ``read-only`` (the default): settings, options and status are read; SetImagingSettings and
  focus moves are refused with ``ter:OperationProhibited``. Exposure, IR cut filter and focus
  act on the real camera for every viewer and recording, so changing them is opted into.
- ``enabled``: every operation is forwarded.
- ``disabled``: the device has no Imaging service (not advertised, every call refused).

The service is advertised (GetServices, GetCapabilities) only once a camera's Imaging service
was found.
"""

from __future__ import annotations

from gateway.onvif.backend import ImagingBackend
from gateway.onvif.core import SERVICE_PATHS, Call, CameraSlot, Handler
from gateway.onvif.xml import NS, SoapFault, Xml, action_not_supported, el, operation_prohibited

TIMG = NS["timg"]

OPERATIONS_FORWARDED = (
    "GetImagingSettings",
    "SetImagingSettings",
    "GetOptions",
    "Move",
    "Stop",
    "GetMoveOptions",
    "GetStatus",
)
# What ``imaging = "read-only"`` refuses: everything that changes the camera's picture or lens.
CHANGES = {"SetImagingSettings", "Move"}


def service_capabilities() -> Xml:
    # Image stabilisation is a camera feature the forwarded settings would show; the
    # capability itself is not forwarded because an NVR-mode device spans several cameras.
    return el("timg:Capabilities", attrs={"ImageStabilization": "false"})


def legacy_capabilities(call: Call) -> Xml:
    return el("tt:Imaging", el("tt:XAddr", call.http_url(SERVICE_PATHS["imaging"])))


async def get_service_capabilities(call: Call) -> Xml:
    return el("timg:GetServiceCapabilitiesResponse", service_capabilities())


def _slot_for(call: Call) -> CameraSlot:
    if not call.device.has_imaging():
        raise action_not_supported(f"{call.soap.name} (this device has no Imaging service)")
    token = call.arg("VideoSourceToken")
    for slot in call.device.slots:
        if slot.video_source == token and slot.imaging_enabled:
            return slot
    raise SoapFault(
        "Sender", ("ter:InvalidArgVal", "ter:NoSource"), f"no imaging for video source {token!r}"
    )


def _backend(slot: CameraSlot) -> ImagingBackend:
    assert slot.backend.imaging is not None
    return slot.backend.imaging


async def forward(call: Call) -> Xml:
    slot = _slot_for(call)
    name = call.soap.name
    if name in CHANGES and slot.config.imaging != "enabled":
        raise operation_prohibited(
            f'{name}: imaging of {slot.name} is read-only (imaging = "enabled" allows it)'
        )
    return await _backend(slot).call(call.op)


OPERATIONS: dict[tuple[str, str], Handler] = {
    (TIMG, "GetServiceCapabilities"): get_service_capabilities,
}
OPERATIONS.update({(TIMG, name): forward for name in OPERATIONS_FORWARDED})
