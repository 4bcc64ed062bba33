"""Per-camera addresses (``[[camera]] bind``, issue 17 item 2): UniFi Protect adopts one
third-party ONVIF camera per IP address, so each camera may get an address of its own.

Configuration checks run anywhere. The end-to-end test builds two network namespaces (as
tests/test_onvif_util.py does): the gateway's, whose interface carries the gateway's own
address and one address per camera, and the VMS's, where every client that can target an
address (onvif-util, Home Assistant's zeep calls, npm ``onvif``, node-onvif, ffprobe) adopts
each camera at its own address on the plain ONVIF port::

    og-ugw-<tag>: sim cameras on 127.0.0.1; gw0 10.213.7.1 (gateway), .21 (hik1), .22 (dahua1)
        |  veth
    og-uvms-<tag>: vms0 10.213.7.2/24, the clients
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, loads
from gateway.onvif.config import camera_ports
from tests.onvif_matrix import record
from tests.test_egress_netns import read_line
from tests.test_onvif_node import NODE_DIR
from tests.test_onvif_util import (
    CAMERA_PASSWORD,
    GATEWAY_IP,
    MATRIX_DEVICES,
    VMS_PASSWORD,
    Pair,
    gateway_config,
    pair,  # noqa: F401  (fixture)
    wait_gateway_ready,
)

BASE = """
[server]
bind = "{server_bind}"
onvif_base_port = 8000
rtsp_port = 8554
[vms]
username = "vms"
password = "vms-secret-1"
"""


def camera(name: str, extra: str = "") -> str:
    return f'[[camera]]\nname = "{name}"\nvendor = "hikvision"\nhost = "192.0.2.10"\n{extra}\n'


# --------------------------------------------------------------------------- configuration


def test_bound_cameras_share_the_base_port_each_on_its_address() -> None:
    config = loads(
        BASE.format(server_bind="10.0.0.1")
        + camera("a", 'bind = "10.0.0.21"')
        + camera("b", 'bind = "10.0.0.22"')
        + camera("c")
    )
    # A camera on its own address gets the plain base port; others base + index.
    assert camera_ports(config) == {"a": 8000, "b": 8000, "c": 8002}
    assert config.camera_addresses() == ["10.0.0.21", "10.0.0.22"]
    # Under a wildcard [server] bind, the RTSP server already listens everywhere.
    wildcard = loads(BASE.format(server_bind="0.0.0.0") + camera("a", 'bind = "10.0.0.21"'))
    assert wildcard.camera_addresses() == []


@pytest.mark.parametrize(
    ("server_bind", "cameras", "message"),
    [
        ("10.0.0.1", camera("a", 'bind = "cam-a.local"'), r"camera\[0\].*bind.*not an IP"),
        ("10.0.0.1", camera("a", 'bind = "0.0.0.0"'), r"bind.*wildcard"),
        # Two cameras on one address and port.
        (
            "10.0.0.1",
            camera("a", 'bind = "10.0.0.21"') + camera("b", 'bind = "10.0.0.21"'),
            r"camera\[1\].*onvif_port.*port 8000 is already used",
        ),
        # The wildcard [server] bind holds base + 0 for camera b on every address.
        (
            "0.0.0.0",
            camera("b") + camera("a", 'bind = "10.0.0.21"'),
            r"port 8000 is already used",
        ),
        # A camera's ONVIF port on its address may not be the RTSP port listened on there.
        (
            "10.0.0.1",
            camera("a", 'bind = "10.0.0.21"\nonvif_port = 8554'),
            r"port 8554 is already used",
        ),
    ],
)
def test_camera_addresses_are_validated(server_bind: str, cameras: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        loads(BASE.format(server_bind=server_bind) + cameras)


async def test_rtsp_server_listens_on_extra_addresses() -> None:
    """What runtime does for each per-camera address (loopback: 127.0.0.2 is local)."""
    import asyncio

    from gateway.rtsp.server import RtspServer

    server = RtspServer(lambda key: None)
    await server.start("127.0.0.1", 0)
    try:
        await server.listen("127.0.0.2")
        await server.listen("127.0.0.2")  # once only
        assert server.addresses == ["127.0.0.1", "127.0.0.2"]
        for host in server.addresses:
            reader, writer = await asyncio.open_connection(host, server.port)
            writer.write(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"RTSP/1.0 200")
            writer.close()
    finally:
        await server.close()
    assert server.addresses == ["127.0.0.1"]


# --------------------------------------------------------------------------- network namespaces

CAMERA_IPS = {"hik1": "10.213.7.21", "dahua1": "10.213.7.22"}


def node_ready() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules").is_dir()


@pytest.mark.netns
def test_each_camera_is_adopted_at_its_own_address(pair: Pair, tmp_path: Path) -> None:  # noqa: F811
    for ip in CAMERA_IPS.values():
        pair.run("gw", "ip", "addr", "add", f"{ip}/24", "dev", "gw0")
    sim = pair.start(
        "gw",
        *("-m", "gateway", "sim", "--profile", "test", "--host", "127.0.0.1"),
        *("--password", CAMERA_PASSWORD),
    )
    ready = json.loads(read_line(sim, 120))
    assert {cam["name"] for cam in ready["cameras"]} == set(CAMERA_IPS)
    config = gateway_config(tmp_path / "gateway.toml", ready["cameras"], tmp_path / "state")
    text = config.read_text(encoding="utf-8")
    for name, ip in CAMERA_IPS.items():
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nbind = "{ip}"\n')
    config.write_text(text, encoding="utf-8")
    gateway = pair.start("gw", "-m", "gateway", "run", "--config", str(config))
    for ready_line in wait_gateway_ready(gateway, 60):
        assert ready_line == {"event": "ready", "rtsp_port": 8554}

    # WS-Discovery: each camera answers from its own address, with XAddrs on it.
    listed = pair.vms_run("onvif-util", "-a", timeout=30)
    for name, ip in CAMERA_IPS.items():
        assert f"{ip} {name}(" in listed, listed
        assert f"{GATEWAY_IP} {name}(" not in listed, listed

    macs = {}
    for name, ip in CAMERA_IPS.items():
        device = MATRIX_DEVICES[name]
        operation = "adopted at its own address (port 8000)"
        uri = f"rtsp://{ip}:8554/{name}/main"

        # onvif-util: logs in at the camera's address; its profiles and its stream there.
        out = onvif_util(pair, ip)
        assert f"Token 0: {name}_main" in out and uri in out, out
        record("onvif-util", device, operation, "pass")

        # Home Assistant (onvif-zeep-async): set-up at the address, URIs on it.
        ha = json.loads(
            pair.vms_run(
                sys.executable,
                str(Path(__file__).parent / "tools" / "zeep_ha_client.py"),
                *(ip, "8000", "vms", VMS_PASSWORD),
            )
            .strip()
            .splitlines()[-1]
        )
        assert ha["ok"], ha.get("error")
        assert ha["stream_uri"] == uri and ha["snapshot_jpeg"], ha
        assert all(x.startswith(f"http://{ip}:8000/") for x in ha["xaddrs"]), ha
        macs[name] = ha["mac"]
        record("zeep: Home Assistant", device, operation, "pass")

        if node_ready():
            npm = node(pair, "npm_onvif_client.js", ip, "8000", "vms", VMS_PASSWORD)
            assert npm["steps"]["connect"] == "ok" and npm["streamUri"] == uri, npm
            record("npm onvif (Media2)", device, operation, "pass")
            xaddr = f"http://{ip}:8000/onvif/device_service"
            result = node(pair, "node_onvif_client.js", xaddr, "vms", VMS_PASSWORD)
            assert result["ok"], result.get("error")
            assert result["profiles"][0]["rtsp"] == uri and result["snapshot"]["ok"], result
            record("node-onvif", device, operation, "pass")

        # The stream URI plays from the VMS side (RTSP listens on the camera's address).
        probed = json.loads(
            pair.vms_run(
                *("ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_streams"),
                *("-of", "json", uri.replace("rtsp://", f"rtsp://vms:{VMS_PASSWORD}@")),
            )
        )
        codecs = {s["codec_type"]: s["codec_name"] for s in probed["streams"]}
        assert codecs["video"] == ("h264" if name == "hik1" else "hevc")
    # Two devices, two identities (Home Assistant's unique id is the MAC).
    assert len(set(macs.values())) == 2, macs


def onvif_util(lab: Pair, ip: str) -> str:
    return lab.vms_run(
        "onvif-util", "-u", "vms", "-p", VMS_PASSWORD, ip, stdin="get profiles\nget rtsp\nquit\n"
    )


def node(lab: Pair, script: str, *args: str) -> dict:
    out = lab.vms_run("node", str(NODE_DIR / script), *args, timeout=60)
    return json.loads(out.strip().splitlines()[-1])


async def test_rtsps_listens_on_extra_addresses_too(tmp_path: Path) -> None:
    """A camera with its own address gets rtsps:// URIs on that address: the TLS listener
    follows every extra address, whichever was added first."""
    import asyncio
    import ssl

    from gateway import tls
    from gateway.rtsp.server import RtspServer

    cert, key = tmp_path / "vms.crt", tmp_path / "vms.key"
    tls.generate(cert, key, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    server = RtspServer(lambda key: None)
    await server.start("127.0.0.1", 0)
    try:
        await server.listen("127.0.0.2")  # before TLS starts
        await server.start_tls("127.0.0.1", 0, context)
        await server.listen("127.0.0.3")  # after
        assert server.tls_port is not None
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            reader, writer = await asyncio.open_connection(
                host, server.tls_port, ssl=client, server_hostname=host
            )
            writer.write(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"RTSP/1.0 200")
            writer.close()
    finally:
        await server.close()
