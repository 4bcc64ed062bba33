"""``[server] rtp_ports``: UDP RTP/RTCP to VMS clients from a fixed range (firewall rules
can name it); a range with no free pair refuses UDP with 461 so clients fall back to TCP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet
from tests.conftest import gateway_config_text, require, run_tool, stream_url
from tests.test_codecs_interop import _bind_pair
from tests.test_rtsp_server import RawClient


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"30000-30999"', None),
        ('"30001-30003"', None),
        ('"30001-30002"', "even/odd port pair"),
        ('"3000"', "must be a range like"),
        ('"100-200"', "between 1024 and 65535"),
        ('"31000-30000"', "must not be above"),
        ("30000", "must be a str"),
        ('"3700-3710"', "includes discovery_port 3702"),
    ],
)
def test_rtp_ports_are_validated(value: str, message: str | None) -> None:
    text = f'[server]\nrtp_ports = {value}\n[vms]\nusername = "vms"\npassword = "pw-123456"\n'
    if message is None:
        config = cfgmod.loads(text)
        assert config.server.rtp_ports == tuple(map(int, value.strip('"').split("-")))
        return
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.loads(text)
    problems = dict(info.value.problems)
    assert "server.rtp_ports" in problems and message in problems["server.rtp_ports"], problems


async def _udp_setup(client: RawClient, base: str) -> tuple[int, str]:
    response = await client.request(
        "SETUP",
        f"{base}/hik1/main/trackID=0",
        {"Transport": "RTP/AVP;unicast;client_port=40000-40001"},
    )
    return response.status, response.headers.get("Transport") or ""


async def test_udp_clients_get_ports_from_the_range_or_461(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    held = _bind_pair()  # the whole range, taken
    first = held[0].getsockname()[1]
    text = gateway_config_text(
        fleet, tmp_path, vms_password, server_extra=f'rtp_ports = "{first}-{first + 1}"'
    )
    gw = Gateway(cfgmod.loads(text, source="test.toml"), start_services=False)
    await gw.start()
    try:
        assert gw.rtsp is not None
        base = f"rtsp://127.0.0.1:{gw.rtsp.port}"
        client = await RawClient.connect(gw.rtsp.port, vms_password)
        try:
            # Every port of the range taken (by this test): UDP is refused, TCP still works.
            status, _ = await _udp_setup(client, base)
            assert status == 461
            tcp = await client.request(
                "SETUP",
                f"{base}/hik1/main/trackID=0",
                {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
            )
            assert tcp.status == 200
        finally:
            client.close()
        for sock in held:
            sock.close()
        client = await RawClient.connect(gw.rtsp.port, vms_password)
        try:
            status, transport = await _udp_setup(client, base)
            assert status == 200
            assert f"server_port={first}-{first + 1}" in transport, transport
        finally:
            client.close()
        # A real client plays over UDP through the range.
        require("ffprobe")
        code, out, err = await run_tool(
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "udp",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "json",
            stream_url(gw, "hik1", "main", vms_password),
            timeout=60,
        )
        assert code == 0, err
        assert {s["codec_name"] for s in json.loads(out)["streams"]} >= {"h264"}
    finally:
        for sock in held:
            sock.close()
        await gw.stop()


CHECKED = """
state_dir = "{state}"
[server]
bind = "10.0.0.5"
rtp_ports = "30000-30999"
workers = 2
[vms]
username = "vms"
password = "vms-password-1"
[admin]
username = "admin"
password = "admin-password-1"
[camera_network]
interface = "eth1"
address = "192.168.50.1"
subnets = ["192.168.50.0/24"]
[[camera]]
name = "lobby"
vendor = "hikvision"
host = "192.168.50.10"
username = "admin"
password = "camera-password"
[[camera]]
name = "yard"
vendor = "dahua"
host = "192.168.50.11"
username = "admin"
password = "camera-password"
onvif_port = 8100
"""


async def test_check_lists_every_port_the_gateway_listens_on(tmp_path: Path) -> None:
    from tests.test_cli import gateway_cli

    path = tmp_path / "gateway.toml"
    path.write_text(CHECKED.format(state=tmp_path / "state"))
    code, out, err = await gateway_cli("check", "-c", str(path), "--json")
    assert code == 0, err
    listed = {
        (p["service"], p["protocol"], p["address"], p["ports"]) for p in json.loads(out)["ports"]
    }
    assert listed == {
        ("RTSP", "TCP", "10.0.0.5", "8554"),
        ("RTP/RTCP", "UDP", "10.0.0.5", "30000-30999"),
        ("ONVIF", "TCP", "10.0.0.5", "8000, 8100"),
        ("WS-Discovery", "UDP", "10.0.0.5", "3702"),
        ("admin API", "TCP", "127.0.0.1", "8080"),  # one for every worker
        ("DNS", "TCP+UDP", "192.168.50.1", "53"),
        ("NTP", "UDP", "192.168.50.1", "123"),
    }
    code, out, err = await gateway_cli("check", "-c", str(path), env={"COLUMNS": "80"})
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert re.search(r"^RTP/RTCP\s+UDP\s+10\.0\.0\.5\s+30000-30999\s", out, re.M), out
    # Without rtp_ports, check says the UDP ports are the system's ephemeral ones.
    path.write_text(
        CHECKED.format(state=tmp_path / "state").replace('rtp_ports = "30000-30999"\n', "")
    )
    code, out, err = await gateway_cli("check", "-c", str(path), env={"COLUMNS": "80"})
    assert code == 0 and re.search(r"^RTP/RTCP\s+UDP\s+10\.0\.0\.5\s+ephemeral\s", out, re.M), out
