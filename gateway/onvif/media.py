"""Media service (ver10/media/wsdl): fixed profiles, one per camera stream, describing each
stream as the gateway ingested it.

The gateway re-serves the cameras' streams unchanged, so configurations cannot be modified:
option ranges are the single current value and every modifying call gets a fault. H.265
streams are reported with Encoding ``H265`` (the ver10 enumeration predates it; Media2 is the
standard place for H.265 and is complete).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lxml import etree

from gateway.onvif.core import SERVICE_PATHS, Call, CameraSlot, Handler, Profile, empty_answer
from gateway.onvif.ptz import show_tokens
from gateway.onvif.xml import NS, SoapFault, Xml, el, invalid_arg, raw, text

log = logging.getLogger(__name__)

TRT = NS["trt"]
TT = NS["tt"]
# The stream's quality setting is not observable from the bitstream; ONVIF requires a value
# in QualityRange, so the middle of the advertised range is reported.
QUALITY = 5
QUALITY_RANGE = (1, 10)


def _range(tag: str, low: float | int, high: float | int) -> Xml:
    return el(tag, el("tt:Min", text(low)), el("tt:Max", text(high)))


def _resolution(width: int, height: int) -> Xml:
    return Xml(el("tt:Width", str(width)) + el("tt:Height", str(height)))


def multicast_off() -> Xml:
    return el(
        "tt:Multicast",
        el("tt:Address", el("tt:Type", "IPv4"), el("tt:IPv4Address", "0.0.0.0")),
        el("tt:Port", "0"),
        el("tt:TTL", "0"),
        el("tt:AutoStart", "false"),
    )


def session_timeout(call: Call) -> str:
    return "PT60S"


def frame_rate(p: Profile) -> str:
    return text(round(p.stream.fps, 3))


def video_source_configuration(slot: CameraSlot, tag: str = "tt:VideoSourceConfiguration") -> Xml:
    streams = list(slot.backend.streams())
    main = streams[0]
    return el(
        tag,
        el("tt:Name", f"{slot.name} video source"),
        el("tt:UseCount", str(len(streams))),
        el("tt:SourceToken", slot.video_source),
        el(
            "tt:Bounds",
            attrs={"x": "0", "y": "0", "width": str(main.width), "height": str(main.height)},
        ),
        attrs={"token": slot.video_source_config},
    )


def video_encoder_configuration(p: Profile, tag: str = "tt:VideoEncoderConfiguration") -> Xml:
    s = p.stream
    codec_block: Xml | None = None
    h265_block: Xml | None = None
    if s.codec == "H264":
        codec_block = el(
            "tt:H264", el("tt:GovLength", str(s.gop)), el("tt:H264Profile", s.profile or "Main")
        )
    elif s.codec == "H265":
        # ver10 has no H.265 element; the encoder configuration's trailing xs:any carries it
        # in the tt namespace, as H.265 cameras do, so Media1-only clients still see the GOP.
        h265_block = el(
            "tt:H265", el("tt:GovLength", str(s.gop)), el("tt:H265Profile", s.profile or "Main")
        )
    return el(
        tag,
        el("tt:Name", f"{p.name} encoder"),
        el("tt:UseCount", "1"),
        el("tt:Encoding", s.codec),
        el("tt:Resolution", _resolution(s.width, s.height)),
        el("tt:Quality", str(QUALITY)),
        el(
            "tt:RateControl",
            el("tt:FrameRateLimit", str(max(1, round(s.fps)))),
            el("tt:EncodingInterval", "1"),
            el("tt:BitrateLimit", str(s.bitrate_kbps)),
        ),
        codec_block,
        multicast_off(),
        el("tt:SessionTimeout", "PT60S"),
        h265_block,
        attrs={"token": p.video_encoder},
    )


def audio_source_configuration(slot: CameraSlot, tag: str = "tt:AudioSourceConfiguration") -> Xml:
    return el(
        tag,
        el("tt:Name", f"{slot.name} audio source"),
        el("tt:UseCount", str(len(list(slot.backend.streams())))),
        el("tt:SourceToken", slot.audio_source),
        attrs={"token": slot.audio_source_config},
    )


def audio_encoder_configuration(p: Profile, tag: str = "tt:AudioEncoderConfiguration") -> Xml:
    a = p.stream.audio
    assert a is not None
    return el(
        tag,
        el("tt:Name", f"{p.name} audio encoder"),
        el("tt:UseCount", "1"),
        el("tt:Encoding", a.codec),
        el("tt:Bitrate", str(a.bitrate_kbps)),
        el("tt:SampleRate", str(a.sample_rate // 1000 or 1)),
        multicast_off(),
        el("tt:SessionTimeout", "PT60S"),
        attrs={"token": p.audio_encoder},
    )


async def ptz_configuration(
    slot: CameraSlot, tag: str = f"{{{TT}}}PTZConfiguration", *, nvr: bool = False
) -> Xml | None:
    """The camera's PTZ configuration re-tagged as ``tag`` (Clark notation), or None; its
    tokens as the PTZ service shows them (prefixed in NVR mode)."""
    if not slot.ptz_enabled or slot.backend.ptz is None:
        return None
    try:
        setup = await slot.backend.ptz.setup()
    except SoapFault as exc:
        log.warning("%s: PTZ configuration unavailable: %s", slot.name, exc.reason)
        return None
    except (OSError, TimeoutError, ValueError) as exc:
        log.warning("%s: PTZ configuration unavailable: %s", slot.name, exc)
        return None
    node = show_tokens(etree.fromstring(etree.tostring(setup.configuration)), nvr, slot)
    node.tag = tag
    return raw(node)


async def profile_xml(p: Profile, nvr: bool, tag: str = "trt:Profiles") -> Xml:
    ptz = await ptz_configuration(p.slot, nvr=nvr)
    return el(
        tag,
        el("tt:Name", p.name),
        video_source_configuration(p.slot),
        audio_source_configuration(p.slot) if p.stream.audio else None,
        video_encoder_configuration(p),
        audio_encoder_configuration(p) if p.stream.audio else None,
        ptz,
        attrs={"token": p.token, "fixed": "true"},
    )


def service_capabilities(call: Call) -> Xml:
    return el(
        "trt:Capabilities",
        el(
            "trt:ProfileCapabilities",
            attrs={"MaximumNumberOfProfiles": str(len(call.device.profiles()))},
        ),
        el(
            "trt:StreamingCapabilities",
            attrs={
                "RTPMulticast": "false",
                "RTP_TCP": "true",
                "RTP_RTSP_TCP": "true",
                "NonAggregateControl": "false",
            },
        ),
        attrs={"SnapshotUri": "true", "Rotation": "false"},
    )


def legacy_capabilities(call: Call) -> Xml:
    return el(
        "tt:Media",
        el("tt:XAddr", call.http_url(SERVICE_PATHS["media"])),
        el(
            "tt:StreamingCapabilities",
            el("tt:RTPMulticast", "false"),
            el("tt:RTP_TCP", "true"),
            el("tt:RTP_RTSP_TCP", "true"),
        ),
        el(
            "tt:Extension",
            el(
                "tt:ProfileCapabilities",
                el("tt:MaximumNumberOfProfiles", str(len(call.device.profiles()))),
            ),
        ),
    )


# --------------------------------------------------------------------------- operations


async def get_service_capabilities(call: Call) -> Xml:
    return el("trt:GetServiceCapabilitiesResponse", service_capabilities(call))


async def get_profiles(call: Call) -> Xml:
    nvr = call.device.nvr
    return el(
        "trt:GetProfilesResponse", [await profile_xml(p, nvr) for p in call.device.profiles()]
    )


async def get_profile(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    return el("trt:GetProfileResponse", await profile_xml(p, call.device.nvr, "trt:Profile"))


async def get_video_sources(call: Call) -> Xml:
    items = []
    for slot in call.device.slots:
        main = next(iter(slot.backend.streams()))
        items.append(
            el(
                "trt:VideoSources",
                el("tt:Framerate", text(round(main.fps, 3))),
                el("tt:Resolution", _resolution(main.width, main.height)),
                attrs={"token": slot.video_source},
            )
        )
    return el("trt:GetVideoSourcesResponse", items)


def _slots_for(call: Call, token: str | None, attr: str) -> list[CameraSlot]:
    if token:
        return [call.device.slot_by_token(token, attr)]
    return list(call.device.slots)


async def get_video_source_configurations(call: Call) -> Xml:
    return el(
        "trt:GetVideoSourceConfigurationsResponse",
        (video_source_configuration(s, "trt:Configurations") for s in call.device.slots),
    )


async def get_video_source_configuration(call: Call) -> Xml:
    slot = call.device.slot_by_token(call.arg("ConfigurationToken"), "video_source_config")
    return el(
        "trt:GetVideoSourceConfigurationResponse",
        video_source_configuration(slot, "trt:Configuration"),
    )


async def get_compatible_video_source_configurations(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    return el(
        "trt:GetCompatibleVideoSourceConfigurationsResponse",
        video_source_configuration(p.slot, "trt:Configurations"),
    )


def video_source_configuration_options(call: Call, slots: list[CameraSlot], tag: str) -> Xml:
    """Bounds are the full picture of the camera's main stream: the only value there is."""
    main = next(iter(slots[0].backend.streams()), None) if slots else None
    if main is None:
        raise invalid_arg("ter:NoConfig", "no stream of this camera has been seen yet")
    return el(
        tag,
        el(
            "tt:BoundsRange",
            _range("tt:XRange", 0, 0),
            _range("tt:YRange", 0, 0),
            _range("tt:WidthRange", main.width, main.width),
            _range("tt:HeightRange", main.height, main.height),
        ),
        (el("tt:VideoSourceTokensAvailable", s.video_source) for s in slots),
        attrs={"MaximumNumberOfProfiles": str(len(call.device.profiles()))},
    )


async def get_video_source_configuration_options(call: Call) -> Xml:
    token = call.arg("ConfigurationToken")
    profile_token = call.arg("ProfileToken")
    if token:
        slots = [call.device.slot_by_token(token, "video_source_config")]
    elif profile_token:
        slots = [call.device.profile(profile_token).slot]
    else:
        slots = list(call.device.slots)
    return el(
        "trt:GetVideoSourceConfigurationOptionsResponse",
        video_source_configuration_options(call, slots, "trt:Options"),
    )


def _encoder_profiles(call: Call, token: str | None) -> list[Profile]:
    profiles = call.device.profiles()
    if token is None:
        return profiles
    found = [p for p in profiles if p.video_encoder == token]
    if not found:
        raise invalid_arg("ter:NoConfig", f"no video encoder configuration {token!r}")
    return found


async def get_video_encoder_configurations(call: Call) -> Xml:
    return el(
        "trt:GetVideoEncoderConfigurationsResponse",
        (
            video_encoder_configuration(p, "trt:Configurations")
            for p in _encoder_profiles(call, None)
        ),
    )


async def get_video_encoder_configuration(call: Call) -> Xml:
    p = _encoder_profiles(call, call.arg("ConfigurationToken") or "")[0]
    return el(
        "trt:GetVideoEncoderConfigurationResponse",
        video_encoder_configuration(p, "trt:Configuration"),
    )


async def get_compatible_video_encoder_configurations(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    # Any stream of the same camera could feed this profile.
    same_camera = [q for q in call.device.profiles() if q.slot is p.slot]
    return el(
        "trt:GetCompatibleVideoEncoderConfigurationsResponse",
        (video_encoder_configuration(q, "trt:Configurations") for q in same_camera),
    )


def encoder_options_profile(call: Call) -> Profile:
    """The profile whose encoder options are asked for (by configuration or profile token)."""
    token = call.arg("ConfigurationToken")
    profile_token = call.arg("ProfileToken")
    if token:
        return _encoder_profiles(call, token)[0]
    if profile_token:
        return call.device.profile(profile_token)
    profiles = call.device.profiles()
    if not profiles:
        raise invalid_arg("ter:NoConfig", "no stream has been seen yet")
    return profiles[0]


async def get_video_encoder_configuration_options(call: Call) -> Xml:
    """The stream as it is: every range is the single ingested value (nothing can be set)."""
    s = encoder_options_profile(call).stream
    fps = max(1, round(s.fps))
    common = [
        el("tt:ResolutionsAvailable", _resolution(s.width, s.height)),
        _range("tt:GovLengthRange", s.gop, s.gop),
        _range("tt:FrameRateRange", fps, fps),
        _range("tt:EncodingIntervalRange", 1, 1),
    ]
    bitrate = _range("tt:BitrateRange", s.bitrate_kbps, s.bitrate_kbps)
    h264: Xml | None = None
    extension: Xml | None = None
    if s.codec == "H264":
        profiles = el("tt:H264ProfilesSupported", s.profile or "Main")
        h264 = el("tt:H264", common, profiles)
        extension = el("tt:Extension", el("tt:H264", common, profiles, bitrate))
    elif s.codec == "H265":
        # As for the configuration: H.265 in the ver10 extension point (tt namespace).
        h265 = el("tt:H265", common, el("tt:H265ProfilesSupported", s.profile or "Main"), bitrate)
        extension = el("tt:Extension", el("tt:Extension", h265))
    return el(
        "trt:GetVideoEncoderConfigurationOptionsResponse",
        el("trt:Options", _range("tt:QualityRange", *QUALITY_RANGE), h264, extension),
    )


async def get_guaranteed_number_of_video_encoder_instances(call: Call) -> Xml:
    slot = call.device.slot_by_token(call.arg("ConfigurationToken"), "video_source_config")
    streams = list(slot.backend.streams())
    h264 = sum(1 for s in streams if s.codec == "H264")
    return el(
        "trt:GetGuaranteedNumberOfVideoEncoderInstancesResponse",
        el("trt:TotalNumber", str(len(streams))),
        el("trt:H264", str(h264)) if h264 else None,
    )


async def get_audio_sources(call: Call) -> Xml:
    items = []
    for slot in call.device.slots:
        audio = next((s.audio for s in slot.backend.streams() if s.audio), None)
        if audio is not None:
            items.append(
                el(
                    "trt:AudioSources",
                    el("tt:Channels", str(audio.channels)),
                    attrs={"token": slot.audio_source},
                )
            )
    return el("trt:GetAudioSourcesResponse", items)


def _audio_slots(call: Call) -> list[CameraSlot]:
    return [s for s in call.device.slots if any(st.audio for st in s.backend.streams())]


async def get_audio_source_configurations(call: Call) -> Xml:
    return el(
        "trt:GetAudioSourceConfigurationsResponse",
        (audio_source_configuration(s, "trt:Configurations") for s in _audio_slots(call)),
    )


async def get_audio_source_configuration(call: Call) -> Xml:
    token = call.arg("ConfigurationToken")
    slot = call.device.slot_by_token(token, "audio_source_config")
    if slot not in _audio_slots(call):
        raise invalid_arg("ter:NoConfig", f"no audio source configuration {token!r}")
    return el(
        "trt:GetAudioSourceConfigurationResponse",
        audio_source_configuration(slot, "trt:Configuration"),
    )


async def get_compatible_audio_source_configurations(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    items = [audio_source_configuration(p.slot, "trt:Configurations")] if p.stream.audio else []
    return el("trt:GetCompatibleAudioSourceConfigurationsResponse", items)


def _audio_profiles(call: Call) -> list[Profile]:
    return [p for p in call.device.profiles() if p.stream.audio is not None]


async def get_audio_encoder_configurations(call: Call) -> Xml:
    return el(
        "trt:GetAudioEncoderConfigurationsResponse",
        (audio_encoder_configuration(p, "trt:Configurations") for p in _audio_profiles(call)),
    )


async def get_audio_encoder_configuration(call: Call) -> Xml:
    token = call.arg("ConfigurationToken")
    for p in _audio_profiles(call):
        if p.audio_encoder == token:
            return el(
                "trt:GetAudioEncoderConfigurationResponse",
                audio_encoder_configuration(p, "trt:Configuration"),
            )
    raise invalid_arg("ter:NoConfig", f"no audio encoder configuration {token!r}")


async def get_compatible_audio_encoder_configurations(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    items: Iterable[Xml] = (
        [audio_encoder_configuration(p, "trt:Configurations")] if p.stream.audio else []
    )
    return el("trt:GetCompatibleAudioEncoderConfigurationsResponse", items)


def media_uri(uri: str) -> Xml:
    return Xml(
        el("tt:Uri", uri)
        + el("tt:InvalidAfterConnect", "false")
        + el("tt:InvalidAfterReboot", "false")
        + el("tt:Timeout", "PT0S")
    )


async def get_stream_uri(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    stream_type = call.arg("StreamSetup", "Stream") or "RTP-Unicast"
    protocol = call.arg("StreamSetup", "Transport", "Protocol") or "RTSP"
    if stream_type != "RTP-Unicast":
        raise invalid_arg("ter:InvalidStreamSetup", f"stream type {stream_type} is not offered")
    if protocol not in ("UDP", "TCP", "RTSP"):
        raise invalid_arg("ter:InvalidStreamSetup", f"transport {protocol} is not offered")
    return el("trt:GetStreamUriResponse", el("trt:MediaUri", media_uri(call.rtsp_url(p))))


def snapshot_path(token: str) -> str:
    return f"/onvif/snapshot/{token}.jpg"


async def get_snapshot_uri(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    return el(
        "trt:GetSnapshotUriResponse",
        el("trt:MediaUri", media_uri(call.http_url(snapshot_path(p.token)))),
    )


# ------------------------------------------------------- getters of what the gateway has not


def osd_slots(call: Call) -> list[CameraSlot]:
    """The cameras a GetOSDs/GetOSDOptions names (by video source configuration token)."""
    token = call.arg("ConfigurationToken")
    if token:
        return [call.device.slot_by_token(token, "video_source_config")]
    return list(call.device.slots)


def osd_options(call: Call, tag: str) -> Xml:
    """No overlay can be created through the gateway: it relays the camera's pixels, whose
    own OSD (set on the camera) is already burnt in. Total 0 says so in ONVIF's terms."""
    osd_slots(call)  # an unknown token is a fault, not an empty answer
    return el(
        tag,
        el("tt:MaximumNumberOfOSDs", attrs={"Total": "0", "PlainText": "0", "Image": "0"}),
        el("tt:Type", "Text"),
        el("tt:PositionOption", "Custom"),
        el("tt:TextOption", el("tt:Type", "Plain")),
    )


async def get_osds(call: Call) -> Xml:
    osd_slots(call)
    return el("trt:GetOSDsResponse")


async def get_osd_options(call: Call) -> Xml:
    return el("trt:GetOSDOptionsResponse", osd_options(call, "trt:OSDOptions"))


def analytics_configuration(slot: CameraSlot, tag: str) -> Xml:
    """The camera's motion detection as the analytics configuration the motion events name
    (``VideoAnalyticsConfigurationToken`` of ``tns1:RuleEngine/CellMotionDetector/Motion``)."""
    return el(
        tag,
        el("tt:Name", f"{slot.name} motion detection"),
        el("tt:UseCount", str(len(list(slot.backend.streams())))),
        el("tt:AnalyticsEngineConfiguration"),
        el(
            "tt:RuleEngineConfiguration",
            el(
                "tt:Rule",
                el("tt:Parameters"),
                attrs={"Name": "MotionDetectorRule", "Type": "tt:CellMotionDetector"},
            ),
        ),
        attrs={"token": slot.analytics_config},
    )


def analytics_slots(call: Call) -> list[CameraSlot]:
    token = call.arg("ConfigurationToken")
    profile_token = call.arg("ProfileToken")
    slots = [s for s in call.device.slots if s.backend.motion is not None]
    if profile_token:
        wanted = call.device.profile(profile_token).slot
        slots = [s for s in slots if s is wanted]
    if token:
        slots = [s for s in slots if s.analytics_config == token]
        if not slots:
            raise invalid_arg("ter:NoConfig", f"no analytics configuration {token!r}")
    return slots


async def get_video_analytics_configurations(call: Call) -> Xml:
    return el(
        "trt:GetVideoAnalyticsConfigurationsResponse",
        (analytics_configuration(s, "trt:Configurations") for s in analytics_slots(call)),
    )


def synchronization_point(call: Call) -> Profile:
    """SetSynchronizationPoint: the gateway cannot make the camera's encoder send a keyframe,
    but every client joining or re-joining a stream starts at the last keyframe from the GOP
    cache at once. So the call succeeds when that keyframe is there to start from."""
    p = call.device.profile(call.arg("ProfileToken"))
    if not p.slot.backend.has_keyframe(p.stream.name):
        raise SoapFault(
            "Receiver",
            ("ter:Action", "ter:NotAvailable"),
            f"{p.token}: no keyframe yet (the camera's stream is not live)",
        )
    return p


async def set_synchronization_point(call: Call) -> Xml:
    synchronization_point(call)
    return el("trt:SetSynchronizationPointResponse")


async def create_profile(call: Call) -> Xml:
    raise SoapFault(
        "Receiver",
        ("ter:Action", "ter:MaxNVTProfiles"),
        "the gateway offers one fixed profile per camera stream; no more can be created",
    )


async def delete_profile(call: Call) -> Xml:
    call.device.profile(call.arg("ProfileToken"))
    raise SoapFault(
        "Sender",
        ("ter:Action", "ter:DeletionOfFixedProfile"),
        "profiles of the gateway are fixed",
    )


async def modify_configuration(call: Call) -> Xml:
    raise invalid_arg(
        "ter:ConfigModify",
        f"{call.soap.name}: the gateway re-serves the camera's streams as they are; "
        "change the camera's own encoder settings instead",
    )


OPERATIONS: dict[tuple[str, str], Handler] = {
    (TRT, "GetServiceCapabilities"): get_service_capabilities,
    (TRT, "GetProfiles"): get_profiles,
    (TRT, "GetProfile"): get_profile,
    (TRT, "GetVideoSources"): get_video_sources,
    (TRT, "GetVideoSourceConfigurations"): get_video_source_configurations,
    (TRT, "GetVideoSourceConfiguration"): get_video_source_configuration,
    (TRT, "GetCompatibleVideoSourceConfigurations"): get_compatible_video_source_configurations,
    (TRT, "GetVideoSourceConfigurationOptions"): get_video_source_configuration_options,
    (TRT, "GetVideoEncoderConfigurations"): get_video_encoder_configurations,
    (TRT, "GetVideoEncoderConfiguration"): get_video_encoder_configuration,
    (TRT, "GetCompatibleVideoEncoderConfigurations"): get_compatible_video_encoder_configurations,
    (TRT, "GetVideoEncoderConfigurationOptions"): get_video_encoder_configuration_options,
    (TRT, "GetGuaranteedNumberOfVideoEncoderInstances"): (
        get_guaranteed_number_of_video_encoder_instances
    ),
    (TRT, "GetAudioSources"): get_audio_sources,
    (TRT, "GetAudioSourceConfigurations"): get_audio_source_configurations,
    (TRT, "GetAudioSourceConfiguration"): get_audio_source_configuration,
    (TRT, "GetCompatibleAudioSourceConfigurations"): get_compatible_audio_source_configurations,
    (TRT, "GetAudioEncoderConfigurations"): get_audio_encoder_configurations,
    (TRT, "GetAudioEncoderConfiguration"): get_audio_encoder_configuration,
    (TRT, "GetCompatibleAudioEncoderConfigurations"): get_compatible_audio_encoder_configurations,
    (TRT, "GetStreamUri"): get_stream_uri,
    (TRT, "GetSnapshotUri"): get_snapshot_uri,
    (TRT, "CreateProfile"): create_profile,
    (TRT, "DeleteProfile"): delete_profile,
    (TRT, "GetOSDs"): get_osds,
    (TRT, "GetOSDOptions"): get_osd_options,
    (TRT, "GetVideoAnalyticsConfigurations"): get_video_analytics_configurations,
    (TRT, "SetSynchronizationPoint"): set_synchronization_point,
}
for _name in (
    "AddVideoSourceConfiguration",
    "AddVideoEncoderConfiguration",
    "AddAudioSourceConfiguration",
    "AddAudioEncoderConfiguration",
    "AddPTZConfiguration",
    "AddVideoAnalyticsConfiguration",
    "AddMetadataConfiguration",
    "AddAudioOutputConfiguration",
    "AddAudioDecoderConfiguration",
    "RemoveVideoSourceConfiguration",
    "RemoveVideoEncoderConfiguration",
    "RemoveAudioSourceConfiguration",
    "RemoveAudioEncoderConfiguration",
    "RemovePTZConfiguration",
    "RemoveVideoAnalyticsConfiguration",
    "RemoveMetadataConfiguration",
    "SetVideoSourceConfiguration",
    "SetVideoEncoderConfiguration",
    "SetAudioSourceConfiguration",
    "SetAudioEncoderConfiguration",
    "SetMetadataConfiguration",
    "CreateOSD",
    "SetOSD",
    "DeleteOSD",
):
    OPERATIONS[(TRT, _name)] = modify_configuration

# Getters of what the gateway does not serve (no metadata stream, no audio back-channel).
for _name in (
    "GetMetadataConfigurations",
    "GetAudioOutputs",
    "GetAudioOutputConfigurations",
    "GetAudioDecoderConfigurations",
):
    OPERATIONS[(TRT, _name)] = empty_answer(f"trt:{_name}Response")
