"""The PTZ and Imaging requests forwarded to cameras, re-encoded from their schema: what comes
out validates against the ONVIF schemas (as onvif-zeep-async ships them), and what does not
match the operation's shape is refused before it reaches a camera."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from lxml import etree

from gateway.devices.onvif_forward import (
    CameraEndpoint,
    OnvifImagingForwarder,
    OnvifPtzForwarder,
)
from gateway.devices.onvif_requests import REQUESTS, reencode
from gateway.sim import onvif as sim_onvif
from gateway.sim.device import SimDevice
from gateway.soap import NS, SoapFault
from tests.test_onvif_gateway import assert_valid

DECLS = f'xmlns:tptz="{NS["tptz"]}" xmlns:timg="{NS["timg"]}" xmlns:tt="{NS["tt"]}"'
PT = '<tt:PanTilt x="0.5" y="-0.25" space="http://www.onvif.org/ver10/tptz/PanTiltSpaces/VelocityGenericSpace"/>'
ZOOM = '<tt:Zoom x="1E-1"/>'
IMAGING = (
    "<tt:BacklightCompensation><tt:Mode>OFF</tt:Mode></tt:BacklightCompensation>"
    "<tt:Brightness>55</tt:Brightness><tt:ColorSaturation>50.5</tt:ColorSaturation>"
    "<tt:Exposure><tt:Mode>MANUAL</tt:Mode>"
    '<tt:Window bottom="1" top="0" right="1" left="0"/><tt:Gain>3</tt:Gain></tt:Exposure>'
    "<tt:Focus><tt:AutoFocusMode>AUTO</tt:AutoFocusMode><tt:DefaultSpeed>1</tt:DefaultSpeed>"
    "</tt:Focus><tt:IrCutFilter>AUTO</tt:IrCutFilter>"
    "<tt:WideDynamicRange><tt:Mode>ON</tt:Mode><tt:Level>40</tt:Level></tt:WideDynamicRange>"
    "<tt:Extension><tt:ImageStabilization><tt:Mode>OFF</tt:Mode></tt:ImageStabilization>"
    "<tt:Extension><tt:IrCutFilterAutoAdjustment><tt:BoundaryType>Common</tt:BoundaryType>"
    "<tt:ResponseTime>PT5S</tt:ResponseTime></tt:IrCutFilterAutoAdjustment></tt:Extension>"
    "</tt:Extension>"
)
# One request of every forwarded operation, as a VMS may write it (prefixes of its own).
SAMPLES = {
    "tptz": {
        "GetServiceCapabilities": "",
        "GetNodes": "",
        "GetNode": "<tptz:NodeToken>n1</tptz:NodeToken>",
        "GetConfigurations": "",
        "GetConfiguration": "<tptz:PTZConfigurationToken>c1</tptz:PTZConfigurationToken>",
        "GetConfigurationOptions": "<tptz:ConfigurationToken>c1</tptz:ConfigurationToken>",
        "GetStatus": "<tptz:ProfileToken>p</tptz:ProfileToken>",
        "ContinuousMove": f"<tptz:ProfileToken>p</tptz:ProfileToken><tptz:Velocity>{PT}{ZOOM}"
        "</tptz:Velocity><tptz:Timeout>PT1.5S</tptz:Timeout>",
        "RelativeMove": f"<tptz:ProfileToken>p</tptz:ProfileToken><tptz:Translation>{PT}"
        f"</tptz:Translation><tptz:Speed>{ZOOM}</tptz:Speed>",
        "AbsoluteMove": f"<tptz:ProfileToken>p</tptz:ProfileToken><tptz:Position>{ZOOM}{PT}"
        "</tptz:Position>",
        "Stop": "<tptz:ProfileToken>p</tptz:ProfileToken><tptz:PanTilt>true</tptz:PanTilt>"
        "<tptz:Zoom>0</tptz:Zoom>",
        "GetPresets": "<tptz:ProfileToken>p</tptz:ProfileToken>",
        "GotoPreset": "<tptz:ProfileToken>p</tptz:ProfileToken>"
        "<tptz:PresetToken>1</tptz:PresetToken>",
        "SetPreset": "<tptz:ProfileToken>p</tptz:ProfileToken>"
        "<tptz:PresetName>Gate &amp; yard</tptz:PresetName>",
        "RemovePreset": "<tptz:ProfileToken>p</tptz:ProfileToken>"
        "<tptz:PresetToken>1</tptz:PresetToken>",
        "GotoHomePosition": "<tptz:ProfileToken>p</tptz:ProfileToken>",
        "SetHomePosition": "<tptz:ProfileToken>p</tptz:ProfileToken>",
    },
    "timg": {
        "GetServiceCapabilities": "",
        "GetImagingSettings": "<timg:VideoSourceToken>v</timg:VideoSourceToken>",
        "SetImagingSettings": "<timg:VideoSourceToken>v</timg:VideoSourceToken>"
        f"<timg:ImagingSettings>{IMAGING}</timg:ImagingSettings>"
        "<timg:ForcePersistence>true</timg:ForcePersistence>",
        "GetOptions": "<timg:VideoSourceToken>v</timg:VideoSourceToken>",
        "Move": "<timg:VideoSourceToken>v</timg:VideoSourceToken><timg:Focus><tt:Continuous>"
        "<tt:Speed>-0.5</tt:Speed></tt:Continuous></timg:Focus>",
        "Stop": "<timg:VideoSourceToken>v</timg:VideoSourceToken>",
        "GetMoveOptions": "<timg:VideoSourceToken>v</timg:VideoSourceToken>",
        "GetStatus": "<timg:VideoSourceToken>v</timg:VideoSourceToken>",
    },
}
WSDL = {"tptz": "ptz", "timg": "imaging"}


def request(prefix: str, name: str, content: str) -> etree._Element:
    return etree.fromstring(f"<{prefix}:{name} {DECLS}>{content}</{prefix}:{name}>")


def test_every_forwarded_operation_has_a_sample() -> None:
    for prefix, samples in SAMPLES.items():
        assert set(samples) == set(REQUESTS[NS[prefix]])


@pytest.mark.parametrize(
    ("prefix", "name"), [(p, n) for p, samples in SAMPLES.items() for n in samples]
)
def test_reencoded_requests_validate_against_the_onvif_schema(prefix: str, name: str) -> None:
    markup = reencode(request(prefix, name, SAMPLES[prefix][name]), NS[prefix])
    assert_valid(WSDL[prefix], etree.fromstring(markup))


def test_reencoding_keeps_values_and_writes_schema_order() -> None:
    # Position given Zoom first: the schema's order is PanTilt, then Zoom.
    # A VMS with prefixes of its own (or none): elements are matched by local name.
    sample = SAMPLES["tptz"]["AbsoluteMove"].replace("tptz:", "").replace("tt:", "")
    op = etree.fromstring(f'<AbsoluteMove xmlns="{NS["tptz"]}">{sample}</AbsoluteMove>')
    out = etree.fromstring(reencode(op, NS["tptz"]))
    assert_valid("ptz", out)
    position = out.find(f"{{{NS['tptz']}}}Position")
    assert position is not None
    assert [etree.QName(c).localname for c in position] == ["PanTilt", "Zoom"]
    assert position[0].get("x") == "0.5" and position[1].get("x") == "1E-1"
    named = etree.fromstring(
        reencode(request("tptz", "SetPreset", SAMPLES["tptz"]["SetPreset"]), NS["tptz"])
    )
    assert named.findtext(f"{{{NS['tptz']}}}PresetName") == "Gate & yard"


def test_vendor_extensions_are_carried_on() -> None:
    vendor = '<v:Defog xmlns:v="urn:vendor">3</v:Defog>'
    settings = (
        "<tt:Focus><tt:AutoFocusMode>MANUAL</tt:AutoFocusMode>"
        f"<tt:Extension>{vendor}</tt:Extension></tt:Focus>"
    )
    op = request(
        "timg",
        "SetImagingSettings",
        "<timg:VideoSourceToken>v</timg:VideoSourceToken>"
        f"<timg:ImagingSettings>{settings}</timg:ImagingSettings>",
    )
    out = etree.fromstring(reencode(op, NS["timg"]))
    assert out.find(".//{urn:vendor}Defog") is not None
    assert_valid("imaging", out)


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("GetStatus", "", "ProfileToken is missing"),
        ("GetStatus", "<tptz:ProfileToken>p</tptz:ProfileToken><tptz:Evil/>", "unexpected"),
        (
            "GetStatus",
            "<tptz:ProfileToken>p</tptz:ProfileToken><tptz:ProfileToken>q</tptz:ProfileToken>",
            "given 2 times",
        ),
        ("GetStatus", f"<tptz:ProfileToken>{'p' * 1025}</tptz:ProfileToken>", "not a valid"),
        (
            "ContinuousMove",
            '<tptz:ProfileToken>p</tptz:ProfileToken><tptz:Velocity><tt:PanTilt x="fast" y="0"/>'
            "</tptz:Velocity>",
            "PanTilt@x",
        ),
        (
            "ContinuousMove",
            f"<tptz:ProfileToken>p</tptz:ProfileToken><tptz:Velocity>{PT}</tptz:Velocity>"
            "<tptz:Timeout>5 seconds</tptz:Timeout>",
            "Timeout",
        ),
        ("Stop", "<tptz:ProfileToken>p</tptz:ProfileToken><tptz:PanTilt>yes</tptz:PanTilt>", "Pan"),
        (
            "GetStatus",
            "<tptz:ProfileToken><tt:Nested/></tptz:ProfileToken>",
            "a value, not elements",
        ),
        ("DeleteEverything", "", "not an operation"),
    ],
)
def test_requests_off_the_schema_are_refused(name: str, content: str, why: str) -> None:
    with pytest.raises(SoapFault) as info:
        reencode(request("tptz", name, content), NS["tptz"])
    assert info.value.subcodes == ("ter:InvalidArgVal",)
    assert why in info.value.reason


def test_imaging_values_are_checked() -> None:
    op = request(
        "timg",
        "SetImagingSettings",
        "<timg:VideoSourceToken>v</timg:VideoSourceToken><timg:ImagingSettings>"
        "<tt:IrCutFilter>SOMETIMES</tt:IrCutFilter></timg:ImagingSettings>",
    )
    with pytest.raises(SoapFault, match="IrCutFilter"):
        reencode(op, NS["timg"])


@pytest.fixture
async def drifted_camera() -> AsyncIterator[SimDevice]:
    """A simulated PTZ camera whose clock runs two hours behind ours."""
    device = SimDevice(
        name="ptzcam", vendor="hikvision", username="admin", password="cam-pw", ptz=True
    )
    device.settings["clock_offset"] = -7200.0
    app = web.Application()
    sim_onvif.install(app, device, rtsp_url_for=lambda s: f"rtsp://127.0.0.1:554/{s}")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    device.http_port = runner.addresses[0][1]
    try:
        yield device
    finally:
        await runner.cleanup()


def _endpoint(device: SimDevice) -> CameraEndpoint:
    return CameraEndpoint("ptzcam", "127.0.0.1", device.http_port, "admin", "cam-pw", 3.0)


async def test_forwarders_reach_a_camera_whose_clock_drifted(drifted_camera: SimDevice) -> None:
    ptz = OnvifPtzForwarder(_endpoint(drifted_camera))
    imaging = OnvifImagingForwarder(_endpoint(drifted_camera))
    try:
        setup = await ptz.setup()
        assert (setup.node_token, setup.configuration_token) == ("PTZNODETOKEN", "PTZToken")
        move = request(
            "tptz", "AbsoluteMove", SAMPLES["tptz"]["AbsoluteMove"].replace(">p<", ">virtual<")
        )
        await ptz.call(move)
        status = etree.fromstring(
            await ptz.call(request("tptz", "GetStatus", "<tptz:ProfileToken>v</tptz:ProfileToken>"))
        )
        pan_tilt = status.find(f".//{{{NS['tt']}}}PanTilt")
        assert pan_tilt is not None and float(pan_tilt.get("x", "nan")) == pytest.approx(0.5)
        settings = etree.fromstring(
            await imaging.call(request("timg", "GetImagingSettings", SAMPLES["timg"]["Stop"]))
        )
        assert etree.QName(settings).localname == "GetImagingSettingsResponse"
        # Off the schema: refused here, the camera never sees it.
        with pytest.raises(SoapFault) as refused:
            await ptz.call(
                request("tptz", "GetStatus", "<tptz:ProfileToken>v</tptz:ProfileToken><x/>")
            )
        assert refused.value.subcodes == ("ter:InvalidArgVal",)
    finally:
        await ptz.close()
        await imaging.close()
