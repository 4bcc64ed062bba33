"""Device clients against the simulated cameras: identity, settings, writes, faults."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.devices.base import REDACTED
from gateway.devices.dahua import DahuaClient
from gateway.devices.errors import (
    DeviceAuthError,
    DeviceConnectionError,
    DeviceProtocolError,
    DeviceTimeoutError,
)
from gateway.devices.hikvision import HikvisionClient
from gateway.devices.http import CameraHttp
from gateway.sim import dahua as sim_dahua
from gateway.sim import hikvision as sim_hik
from tests.test_policy_support import PASSWORD, make_device, sim_cameras


def _http(name: str, port: int, *, password: str = PASSWORD, timeout: float = 2.0) -> CameraHttp:
    return CameraHttp(name, "127.0.0.1", port, "admin", password, timeout=timeout)


async def test_hikvision_identity_settings_and_read_modify_write() -> None:
    device = make_device(
        "lobby", "hikvision", model="DS-2CD2132F-IWS", firmware="V5.4.0", build="build 160530"
    )
    async with sim_cameras(device) as (cam,):
        client = HikvisionClient(_http("lobby", cam.port))
        try:
            identity = await client.device_info()
            assert (identity.vendor, identity.model, identity.serial, identity.mac) == (
                "hikvision",
                "DS-2CD2132F-IWS",
                device.serial,
                device.mac,
            )
            assert identity.firmware_text() == "V5.4.0 build 160530"
            settings = await client.read_settings()
            assert settings["EZVIZ.enabled"] == "true"
            assert settings["ntpServer.hostName"] == "time.windows.com"
            assert settings["UPnPPorts.portList.port[1].internalPort"] == "rtsp"
            # The cloud verification code is a secret of the camera: never read out.
            assert settings["EZVIZ.verificationCode"] == REDACTED
            # An element the gateway does not manage, set by hand, must survive the write.
            sim_hik.set_value(device, "/ISAPI/System/Network/EZVIZ", "offlineStatus", "custom")
            result = await client.write_settings({"EZVIZ.enabled": "false", "ssh.enabled": "false"})
            assert result.reboot_required  # ssh answers statusCode 7
            assert sim_hik.get_value(device, "/ISAPI/System/Network/EZVIZ", "enabled") == "false"
            assert sim_hik.get_value(device, "/ISAPI/System/Network/EZVIZ", "offlineStatus") == (
                "custom"
            )
            # The real verification code went back unchanged (the document was the device's).
            code = sim_hik.get_value(device, "/ISAPI/System/Network/EZVIZ", "verificationCode")
            assert code == device.serial[-6:]
            # A value the firmware rejects is a clear protocol error naming the setting path.
            with pytest.raises(DeviceProtocolError, match="statusCode 6"):
                await client.write_settings({"EZVIZ.enabled": "perhaps"})
        finally:
            await client.close()


@pytest.mark.parametrize("cgi", [True, False], ids=["cgi", "rpc-fallback"])
async def test_dahua_identity_settings_and_writes(cgi: bool) -> None:
    device = make_device(
        "gate", "dahua", model="IPC-HFW3441E-AS", firmware="2.800.0000016.0.R", build="2021-03-02"
    )
    sim_dahua.reset(device)
    sim_dahua.set_cgi_available(device, cgi)
    async with sim_cameras(device) as (cam,):
        client = DahuaClient(_http("gate", cam.port), "admin", PASSWORD)
        try:
            identity = await client.device_info()
            assert client.mode == ("cgi" if cgi else "rpc")
            assert (identity.model, identity.serial, identity.mac) == (
                "IPC-HFW3441E-AS",
                device.serial,
                device.mac,
            )
            assert identity.firmware_text() == "2.800.0000016.0.R, build: 2021-03-02"
            settings = await client.read_settings()
            assert settings["T2UServer.Enable"] == "true"
            assert settings["DDNS[1].Protocol"] == "NO-IP DDNS"
            sim_dahua.set_value(device, "DDNS[0].Password", "ddns-secret")
            assert (await client.read_settings())["DDNS[0].Password"] == REDACTED
            result = await client.write_settings(
                {"T2UServer.Enable": "false", "DDNS[1].Enable": "true", "NTP.Address": "10.9.8.7"}
            )
            assert set(result.changed) == {"T2UServer.Enable", "DDNS[1].Enable", "NTP.Address"}
            assert sim_dahua.get_value(device, "T2UServer.Enable") == "false"
            assert sim_dahua.get_value(device, "DDNS[1].Enable") == "true"
            assert sim_dahua.get_value(device, "NTP.Address") == "10.9.8.7"
            # The untouched secret stayed what it was (read-modify-write of the device table).
            assert sim_dahua.get_value(device, "DDNS[0].Password") == "ddns-secret"
        finally:
            await client.close()


async def test_wrong_password_is_an_auth_error_without_the_password() -> None:
    hik, dh = make_device("hik", "hikvision"), make_device("dh", "dahua")
    async with sim_cameras(hik, dh) as (h, d):
        wrong = "Wr0ng-Secret-99"
        hik_client = HikvisionClient(_http("hik", h.port, password=wrong))
        dh_client = DahuaClient(_http("dh", d.port, password=wrong), "admin", wrong)
        sim_dahua.set_cgi_available(dh, False)  # RPC login refusal too
        for client in (hik_client, dh_client):
            with pytest.raises(DeviceAuthError) as info:
                await client.device_info()
            text = str(info.value)
            assert text.startswith(f"camera {client.camera}:")
            assert wrong not in text and PASSWORD not in text
            await client.close()


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [
        ("unauthorized", DeviceAuthError, "credentials refused"),
        ("garbage", DeviceProtocolError, "not what the API defines"),
        ("html", DeviceProtocolError, "HTML page"),
        ("reset", DeviceConnectionError, ""),
        ("hang", DeviceTimeoutError, "no answer within 0.5 s"),
    ],
)
async def test_faults_become_per_camera_errors(fault: str, error: type, words: str) -> None:
    hik, dh = make_device("hik", "hikvision"), make_device("dh", "dahua")
    async with sim_cameras(hik, dh) as (h, d):
        hik.faults.add(fault)
        dh.faults.add(fault)
        clients = [
            HikvisionClient(_http("hik", h.port, timeout=0.5)),
            DahuaClient(_http("dh", d.port, timeout=0.5), "admin", PASSWORD),
        ]
        started = time.monotonic()
        results = await asyncio.gather(*(c.device_info() for c in clients), return_exceptions=True)
        # Both bounded by the timeout, in parallel.
        assert time.monotonic() - started < 3.0
        for client, result in zip(clients, results, strict=True):
            assert isinstance(result, error), result
            assert str(result).startswith(f"camera {client.camera}:")
            assert words in str(result)
            assert PASSWORD not in str(result)
            await client.close()
