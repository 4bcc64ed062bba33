"""A fleet of simulated cameras in one process, and the gateway configuration that fronts it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.sim.camera import SimCamera, StreamSpec
from gateway.sim.clips import ClipSpec
from gateway.sim.device import SimDevice

# Stream sizes per profile: (main width, height, bitrate), (sub width, height, bitrate),
# GOP seconds, clip seconds.
_PROFILES = {
    "test": ((320, 240, 400_000), (160, 120, 150_000), 1.0, 2.0),
    "demo": ((1280, 720, 2_000_000), (640, 360, 500_000), 2.0, 8.0),
    "bench": ((1920, 1080, 4_000_000), (1280, 720, 1_000_000), 2.0, 10.0),
}


def default_stream_specs(profile: str = "demo") -> dict[str, StreamSpec]:
    """Stream specs per vendor. ``demo``: 720p main; ``test``: small and quick to encode;
    ``bench``: 1080p 4 Mbit/s main, 720p 1 Mbit/s sub, H.264 for both vendors. Otherwise
    Hikvision sends H.264 with G.711 mu-law and Dahua H.265 with G.711 A-law, as shipped."""
    (mw, mh, mbit), (sw, sh, sbit), gop, seconds = _PROFILES[profile]
    main = ClipSpec(
        codec="H264",
        width=mw,
        height=mh,
        fps=25,
        gop_seconds=gop,
        bitrate=mbit,
        seconds=seconds,
        audio="PCMU",
    )
    sub = replace(main, width=sw, height=sh, bitrate=sbit)
    if profile == "bench":
        return {"hikvision": StreamSpec(main, sub), "dahua": StreamSpec(main, sub)}
    return {
        "hikvision": StreamSpec(main, sub),
        "dahua": StreamSpec(replace(main, codec="H265", audio="PCMA"), replace(sub, audio="PCMA")),
    }


@dataclass
class SimFleet:
    cameras: list[SimCamera] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        *,
        hikvision: int = 1,
        dahua: int = 1,
        host: str = "127.0.0.1",
        username: str = "admin",
        password: str,
        specs: dict[str, StreamSpec],
        rtsp_port: int = 0,
        http_port: int = 0,
        motion_interval: float = 0.0,
        ptz: bool = False,
        phone_home: bool = False,
        timestamp_sei: bool = False,
        discovery: bool = False,
        overrides: dict[str, Any] | None = None,
        free_running: bool = False,
    ) -> SimFleet:
        """``rtsp_port``/``http_port``: first port (camera i gets port + i), 0 for any free.
        ``free_running``: sessions join each camera's clip at a random point (see
        :class:`~gateway.sim.camera.ClipPlayer`)."""
        cameras = []
        vendors = ["hikvision"] * hikvision + ["dahua"] * dahua
        counts: dict[str, int] = {}
        for i, vendor in enumerate(vendors):
            counts[vendor] = counts.get(vendor, 0) + 1
            name = f"{'hik' if vendor == 'hikvision' else 'dahua'}{counts[vendor]}"
            device = SimDevice(
                name=name,
                vendor=vendor,
                username=username,
                password=password,
                host=host,
                rtsp_port=rtsp_port + i if rtsp_port else 0,
                http_port=http_port + i if http_port else 0,
                ptz=ptz and i == 0,
                motion_interval=motion_interval,
                phone_home=phone_home,
                video_codec=specs[vendor].main.codec,
                **(overrides or {}),
            )
            if discovery:
                device.settings["onvif_discovery"] = True  # answer WS-Discovery probes
            cameras.append(
                SimCamera(
                    device, specs[vendor], timestamp_sei=timestamp_sei, free_running=free_running
                )
            )
        return cls(cameras)

    async def start(self) -> None:
        for cam in self.cameras:
            await cam.start()

    async def stop(self) -> None:
        for cam in self.cameras:
            await cam.stop()

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for cam in self.cameras:
            d = cam.device
            out.append(
                {
                    "name": d.name,
                    "vendor": d.vendor,
                    "host": d.host,
                    "rtsp_port": d.rtsp_port,
                    "http_port": d.http_port,
                    "model": d.model,
                    "firmware": d.firmware,
                    "serial": d.serial,
                    "main_url": cam.rtsp_url("main"),
                    "sub_url": cam.rtsp_url("sub"),
                    "username": d.username,
                }
            )
        return out

    def gateway_config(
        self,
        *,
        bind: str,
        rtsp_port: int,
        vms_user: str,
        vms_password: str,
        state_dir: str,
        admin_password: str | None = None,
        onvif_base_port: int = 8000,
        admin_port: int = 8080,
        policy: bool = False,
        admin_tls: bool = True,
    ) -> str:
        """A gateway configuration (TOML) for this fleet; with ``policy``, a ``[policy]``
        section whose telemetry policy points the cameras' NTP at the gateway's address, so
        ``audit``/``enforce`` and the dashboard's compliance badges work out of the box.
        The admin API uses HTTPS (the certificate generated in ``state_dir``) unless
        ``admin_tls`` is false."""
        lines = [
            f"state_dir = {json.dumps(state_dir)}",
            "",
            "[server]",
            f"bind = {json.dumps(bind)}",
            f"rtsp_port = {rtsp_port}",
            f"onvif_base_port = {onvif_base_port}",
            "",
            "[vms]",
            f"username = {json.dumps(vms_user)}",
            f"password = {json.dumps(vms_password)}",
        ]
        if policy:
            lines += [
                "",
                "[policy]",
                "drift_check_interval = 300",
                "[policy.telemetry]",
                f"ntp_server = {json.dumps(bind)}",
            ]
        if admin_password:
            lines += [
                "",
                "[admin]",
                f"bind = {json.dumps(bind)}",
                f"port = {admin_port}",
                'username = "admin"',
                f"password = {json.dumps(admin_password)}",
                *([] if admin_tls else ["tls = false"]),
            ]
        for cam in self.cameras:
            d = cam.device
            lines += [
                "",
                "[[camera]]",
                f"name = {json.dumps(d.name)}",
                f"vendor = {json.dumps(d.vendor)}",
                f"host = {json.dumps(d.host)}",
                f"rtsp_port = {d.rtsp_port}",
                f"http_port = {d.http_port}",
                f"username = {json.dumps(d.username)}",
                f"password = {json.dumps(d.password)}",
            ]
        return "\n".join(lines) + "\n"


def prepare(profile: str) -> list[str]:
    """Encode (or find cached) every clip a profile uses, so timing runs never include it."""
    from gateway.sim.clips import clip_path, load_clip

    done = []
    for spec in {
        s for pair in default_stream_specs(profile).values() for s in (pair.main, pair.sub)
    }:
        load_clip(spec)
        done.append(str(clip_path(spec)))
    return done


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m gateway.sim.runner")
    parser.add_argument(
        "--prepare",
        choices=("demo", "test", "bench"),
        required=True,
        help="pre-encode the clips of a stream profile",
    )
    for path in prepare(parser.parse_args().prepare):
        print(path)
