"""Media2 service (ver20/media/wsdl): the same fixed profiles as Media, with H.265 reported
properly. Advertised by GetServices, so it answers everything a client that switches to it
calls: profiles, URIs, every configuration getter and its options (the ingested stream's own
values), OSDs, analytics and metadata configurations, SetSynchronizationPoint."""

from __future__ import annotations

from gateway.onvif.core import Call, CameraSlot, Handler, Profile, empty_answer
from gateway.onvif.media import (
    QUALITY_RANGE,
    _range,
    _resolution,
    analytics_configuration,
    analytics_slots,
    audio_source_configuration,
    encoder_options_profile,
    multicast_off,
    osd_options,
    osd_slots,
    ptz_configuration,
    snapshot_path,
    synchronization_point,
    video_source_configuration,
    video_source_configuration_options,
)
from gateway.onvif.xml import NS, SoapFault, Xml, el, invalid_arg, text

TR2 = NS["tr2"]
AUDIO_MIME = {"G711": "PCMU", "AAC": "MP4A-LATM", "G726": "G726"}
# Media2's Protocol values (case-sensitive) the gateway knows; multicast is never offered.
RTSP_PROTOCOLS = {"RtspUnicast", "RTSP", "RtspOverHttp", "RtspsUnicast"}


def video_encoder2(p: Profile, tag: str) -> Xml:
    s = p.stream
    return el(
        tag,
        el("tt:Name", f"{p.name} encoder"),
        el("tt:UseCount", "1"),
        el("tt:Encoding", s.codec),
        el("tt:Resolution", _resolution(s.width, s.height)),
        el(
            "tt:RateControl",
            el("tt:FrameRateLimit", text(round(s.fps, 3))),
            el("tt:BitrateLimit", str(s.bitrate_kbps)),
            attrs={"ConstantBitRate": "false"},
        ),
        multicast_off(),
        el("tt:Quality", "5"),
        attrs={"token": p.video_encoder, "GovLength": str(s.gop), "Profile": s.profile or "Main"},
    )


def audio_encoder2(p: Profile, tag: str) -> Xml:
    a = p.stream.audio
    assert a is not None
    return el(
        tag,
        el("tt:Name", f"{p.name} audio encoder"),
        el("tt:UseCount", "1"),
        el("tt:Encoding", AUDIO_MIME.get(a.codec, a.codec)),
        multicast_off(),
        el("tt:Bitrate", str(a.bitrate_kbps)),
        el("tt:SampleRate", str(a.sample_rate // 1000 or 1)),
        attrs={"token": p.audio_encoder},
    )


def service_capabilities(call: Call) -> Xml:
    return el(
        "tr2:Capabilities",
        el(
            "tr2:ProfileCapabilities",
            attrs={
                "MaximumNumberOfProfiles": str(len(call.device.profiles())),
                "ConfigurationsSupported": "VideoSource VideoEncoder AudioSource AudioEncoder PTZ",
            },
        ),
        el(
            "tr2:StreamingCapabilities",
            attrs={
                "RTSPStreaming": "true",
                "RTPMulticast": "false",
                "RTP_RTSP_TCP": "true",
                "NonAggregateControl": "false",
                "AutoStartMulticast": "false",
            },
        ),
        attrs={
            "SnapshotUri": "true",
            "Rotation": "false",
            "VideoSourceMode": "false",
            "OSD": "false",
        },
    )


async def get_service_capabilities(call: Call) -> Xml:
    return el("tr2:GetServiceCapabilitiesResponse", service_capabilities(call))


async def profile2(p: Profile, types: set[str], nvr: bool) -> Xml:
    every = "All" in types
    parts: list[Xml | None] = []
    if every or "VideoSource" in types:
        parts.append(video_source_configuration(p.slot, "tr2:VideoSource"))
    if (every or "AudioSource" in types) and p.stream.audio:
        parts.append(audio_source_configuration(p.slot, "tr2:AudioSource"))
    if every or "VideoEncoder" in types:
        parts.append(video_encoder2(p, "tr2:VideoEncoder"))
    if (every or "AudioEncoder" in types) and p.stream.audio:
        parts.append(audio_encoder2(p, "tr2:AudioEncoder"))
    if every or "PTZ" in types:
        parts.append(await ptz_configuration(p.slot, f"{{{TR2}}}PTZ", nvr=nvr))
    configs = [x for x in parts if x is not None]
    return el(
        "tr2:Profiles",
        el("tr2:Name", p.name),
        el("tr2:Configurations", configs) if configs else None,
        attrs={"token": p.token, "fixed": "true"},
    )


async def get_profiles(call: Call) -> Xml:
    token = call.arg("Token")
    types = {
        (t.text or "").strip()
        for t in call.op
        if isinstance(t.tag, str) and t.tag.endswith("}Type")
    }
    profiles = [call.device.profile(token)] if token else call.device.profiles()
    return el(
        "tr2:GetProfilesResponse", [await profile2(p, types, call.device.nvr) for p in profiles]
    )


def _select(call: Call) -> list[Profile]:
    token = call.arg("ConfigurationToken")
    profile_token = call.arg("ProfileToken")
    profiles = call.device.profiles()
    if profile_token:
        profiles = [call.device.profile(profile_token)]
    return (
        profiles
        if not token
        else [p for p in profiles if token in (p.video_encoder, p.audio_encoder)]
    )


async def get_video_encoder_configurations(call: Call) -> Xml:
    profiles = _select(call)
    if call.arg("ConfigurationToken") and not profiles:
        raise invalid_arg("ter:NoConfig", "no such video encoder configuration")
    return el(
        "tr2:GetVideoEncoderConfigurationsResponse",
        (video_encoder2(p, "tr2:Configurations") for p in profiles),
    )


async def get_audio_encoder_configurations(call: Call) -> Xml:
    profiles = [p for p in _select(call) if p.stream.audio is not None]
    return el(
        "tr2:GetAudioEncoderConfigurationsResponse",
        (audio_encoder2(p, "tr2:Configurations") for p in profiles),
    )


def _source_slots(call: Call, attr: str) -> list[CameraSlot]:
    token = call.arg("ConfigurationToken")
    profile_token = call.arg("ProfileToken")
    if token:
        return [call.device.slot_by_token(token, attr)]
    if profile_token:
        return [call.device.profile(profile_token).slot]
    return list(call.device.slots)


async def get_video_source_configurations(call: Call) -> Xml:
    return el(
        "tr2:GetVideoSourceConfigurationsResponse",
        (
            video_source_configuration(s, "tr2:Configurations")
            for s in _source_slots(call, "video_source_config")
        ),
    )


async def get_audio_source_configurations(call: Call) -> Xml:
    slots = [
        s
        for s in _source_slots(call, "audio_source_config")
        if any(st.audio for st in s.backend.streams())
    ]
    return el(
        "tr2:GetAudioSourceConfigurationsResponse",
        (audio_source_configuration(s, "tr2:Configurations") for s in slots),
    )


def video_encoder_options2(p: Profile) -> Xml:
    """The stream's encoder as it is: each option is the single ingested value."""
    s = p.stream
    fps = text(round(s.fps, 3))
    return el(
        "tr2:Options",
        el("tt:Encoding", s.codec),
        _range("tt:QualityRange", *QUALITY_RANGE),
        el("tt:ResolutionsAvailable", _resolution(s.width, s.height)),
        _range("tt:BitrateRange", s.bitrate_kbps, s.bitrate_kbps),
        attrs={
            "GovLengthRange": f"{s.gop} {s.gop}",
            "FrameRatesSupported": fps,
            "ProfilesSupported": s.profile or "Main",
            "ConstantBitRateSupported": "false",
        },
    )


async def get_video_encoder_configuration_options(call: Call) -> Xml:
    if call.arg("ConfigurationToken") or call.arg("ProfileToken"):
        profiles = [encoder_options_profile(call)]
    else:
        profiles = call.device.profiles()
    return el(
        "tr2:GetVideoEncoderConfigurationOptionsResponse",
        (video_encoder_options2(p) for p in profiles),
    )


async def get_video_source_configuration_options(call: Call) -> Xml:
    slots = _source_slots(call, "video_source_config")
    return el(
        "tr2:GetVideoSourceConfigurationOptionsResponse",
        video_source_configuration_options(call, slots, "tr2:Options"),
    )


async def get_audio_encoder_configuration_options(call: Call) -> Xml:
    profiles = [p for p in _select(call) if p.stream.audio is not None]
    options = []
    for p in profiles:
        a = p.stream.audio
        assert a is not None
        options.append(
            el(
                "tr2:Options",
                el("tt:Encoding", AUDIO_MIME.get(a.codec, a.codec)),
                el("tt:BitrateList", el("tt:Items", str(a.bitrate_kbps))),
                el("tt:SampleRateList", el("tt:Items", str(a.sample_rate // 1000 or 1))),
            )
        )
    return el("tr2:GetAudioEncoderConfigurationOptionsResponse", options)


async def get_analytics_configurations(call: Call) -> Xml:
    return el(
        "tr2:GetAnalyticsConfigurationsResponse",
        (analytics_configuration(s, "tr2:Configurations") for s in analytics_slots(call)),
    )


async def get_osds(call: Call) -> Xml:
    osd_slots(call)
    return el("tr2:GetOSDsResponse")


async def get_osd_options(call: Call) -> Xml:
    return el("tr2:GetOSDOptionsResponse", osd_options(call, "tr2:OSDOptions"))


async def set_synchronization_point(call: Call) -> Xml:
    synchronization_point(call)
    return el("tr2:SetSynchronizationPointResponse")


async def get_stream_uri(call: Call) -> Xml:
    protocol = call.arg("Protocol") or "RtspUnicast"
    p = call.device.profile(call.arg("ProfileToken"))
    if protocol not in RTSP_PROTOCOLS:
        raise invalid_arg("ter:InvalidStreamSetup", f"protocol {protocol} is not offered")
    if protocol == "RtspOverHttp":
        raise invalid_arg("ter:InvalidStreamSetup", "RTSP over HTTP is not offered")
    # RtspsUnicast: RTSP over TLS with the media inside the TLS connection (interleaved);
    # the RTSPS listener refuses RTP over UDP, and SRTP is not offered.
    tls = True if protocol == "RtspsUnicast" else None
    return el("tr2:GetStreamUriResponse", el("tr2:Uri", call.rtsp_url(p, tls=tls)))


async def get_snapshot_uri(call: Call) -> Xml:
    p = call.device.profile(call.arg("ProfileToken"))
    return el("tr2:GetSnapshotUriResponse", el("tr2:Uri", call.http_url(snapshot_path(p.token))))


async def create_profile(call: Call) -> Xml:
    raise SoapFault(
        "Receiver",
        ("ter:Action", "ter:MaxProfiles"),
        "the gateway offers one fixed profile per camera stream; no more can be created",
    )


async def modify(call: Call) -> Xml:
    raise invalid_arg(
        "ter:ConfigModify",
        f"{call.soap.name}: the gateway re-serves the camera's streams as they are",
    )


OPERATIONS: dict[tuple[str, str], Handler] = {
    (TR2, "GetServiceCapabilities"): get_service_capabilities,
    (TR2, "GetProfiles"): get_profiles,
    (TR2, "GetStreamUri"): get_stream_uri,
    (TR2, "GetSnapshotUri"): get_snapshot_uri,
    (TR2, "GetVideoEncoderConfigurations"): get_video_encoder_configurations,
    (TR2, "GetAudioEncoderConfigurations"): get_audio_encoder_configurations,
    (TR2, "GetVideoSourceConfigurations"): get_video_source_configurations,
    (TR2, "GetAudioSourceConfigurations"): get_audio_source_configurations,
    (TR2, "GetVideoEncoderConfigurationOptions"): get_video_encoder_configuration_options,
    (TR2, "GetVideoSourceConfigurationOptions"): get_video_source_configuration_options,
    (TR2, "GetAudioEncoderConfigurationOptions"): get_audio_encoder_configuration_options,
    (TR2, "GetAnalyticsConfigurations"): get_analytics_configurations,
    (TR2, "GetOSDs"): get_osds,
    (TR2, "GetOSDOptions"): get_osd_options,
    (TR2, "SetSynchronizationPoint"): set_synchronization_point,
    (TR2, "CreateProfile"): create_profile,
    (TR2, "DeleteProfile"): modify,
    (TR2, "AddConfiguration"): modify,
    (TR2, "RemoveConfiguration"): modify,
    (TR2, "SetVideoEncoderConfiguration"): modify,
    (TR2, "SetVideoSourceConfiguration"): modify,
    (TR2, "SetAudioEncoderConfiguration"): modify,
    (TR2, "SetAudioSourceConfiguration"): modify,
    (TR2, "CreateOSD"): modify,
    (TR2, "SetOSD"): modify,
    (TR2, "DeleteOSD"): modify,
}

# Getters of what the gateway does not serve (no metadata stream, no audio back-channel).
for _name in (
    "GetMetadataConfigurations",
    "GetAudioOutputConfigurations",
    "GetAudioDecoderConfigurations",
):
    OPERATIONS[(TR2, _name)] = empty_answer(f"tr2:{_name}Response")
