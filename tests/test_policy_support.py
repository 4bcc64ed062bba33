"""Shared helpers for the fleet-management tests: simulated cameras on loopback, configs.

(Named test_policy_* so it belongs with those tests; it holds no tests itself.)
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.sim import dahua as sim_dahua
from gateway.sim import hikvision as sim_hikvision
from gateway.sim.device import SimDevice

PASSWORD = "Pw-d0nt-LEAK-7x"
INSTALLERS = {"hikvision": sim_hikvision.install, "dahua": sim_dahua.install}


@dataclass
class RunningCamera:
    device: SimDevice
    port: int
    runner: web.AppRunner


@contextlib.asynccontextmanager
async def sim_cameras(*devices: SimDevice) -> AsyncIterator[list[RunningCamera]]:
    """Serve each device's vendor face on 127.0.0.1 (port 0); stop them all at the end."""
    running: list[RunningCamera] = []
    try:
        for device in devices:
            app = web.Application()
            INSTALLERS[device.vendor](app, device)
            runner = web.AppRunner(app, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            device.http_port = port
            running.append(RunningCamera(device, port, runner))
        yield running
    finally:
        for cam in running:
            await cam.runner.cleanup()


def make_device(name: str, vendor: str, **kwargs: object) -> SimDevice:
    return SimDevice(name=name, vendor=vendor, username="admin", password=PASSWORD, **kwargs)


def enable_all_telemetry(device: SimDevice, *, skip_missing: bool = False) -> None:
    """Switch on every feature the policy governs, as a careless installer would.

    ``skip_missing``: leave out the settings of tables the model lacks (``device.missing``).
    """
    if device.vendor == "hikvision":

        def hik(device: SimDevice, path: str, element: str, value: str) -> None:
            if not (skip_missing and path in device.missing):
                sim_hikvision.set_value(device, path, element, value)

        base = "/ISAPI/System/Network"
        hik(device, f"{base}/EZVIZ", "enabled", "true")
        hik(device, f"{base}/Ehome", "enabled", "true")
        hik(device, f"{base}/UPnP", "enabled", "true")
        hik(device, f"{base}/UPnP/ports", "enabled", "true")
        hik(device, f"{base}/DDNS/1", "enabled", "true")
        hik(device, f"{base}/telnetd", "enabled", "true")
        hik(device, f"{base}/ssh", "enabled", "true")
        hik(device, f"{base}/mailing", "mailing/enabled", "true")
        hik(device, f"{base}/ftp", "FTPNotification/enabled", "true")
        hik(device, "/ISAPI/System/time", "timeMode", "manual")
    else:
        for key in (
            "T2UServer.Enable",
            "VSP_PaaS.Enable",
            "UPnP.Enable",
            "DDNS[0].Enable",
            "DDNS[1].Enable",
            "Telnet.Enable",
            "SSHD.Enable",
            "Email.Enable",
            "NAS[0].Enable",
            "SNMP.Enable",
            "Bonjour.Enable",
            "Multicast.TS[0].Enable",
            "Multicast.RTP[0].Enable",
        ):
            if not (skip_missing and key.split(".")[0].split("[")[0] in device.missing):
                sim_dahua.set_value(device, key, "true")
        sim_dahua.set_value(device, "NTP.Address", "pool.ntp.org")


def write_config(
    directory: Path, cameras: list[RunningCamera], policy: str = "", *, timeout: float = 2.0
) -> Path:
    """A config with one ``[[camera]]`` per simulated camera; a device with several
    ``channels`` (a recorder) gets one per channel, named ``<name>-ch<n>``."""
    blocks = []
    for cam in cameras:
        d = cam.device
        for channel in range(1, d.channels + 1):
            name = d.name if d.channels == 1 else f"{d.name}-ch{channel}"
            blocks.append(
                textwrap.dedent(
                    f"""
                    [[camera]]
                    name = "{name}"
                    vendor = "{d.vendor}"
                    host = "127.0.0.1"
                    http_port = {cam.port}
                    channel = {channel}
                    username = "{d.username}"
                    password = "{d.password}"
                    """
                )
            )
    text = textwrap.dedent(
        f"""
        state_dir = "{directory / "state"}"
        [vms]
        username = "vms"
        password = "vms-password-123"
        """
    )
    text += "".join(blocks)
    text += textwrap.dedent(
        f"""
        [policy]
        request_timeout = {timeout}
        [policy.telemetry]
        ntp_server = "127.0.0.1"
        """
    )
    text += textwrap.dedent(policy)
    path = directory / "gateway.toml"
    path.write_text(text)
    return path
