"""``/metrics``: authenticated, accepted by ``promtool check metrics``, and the per-stream
series carry values that match what the gateway is doing."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.rtsp.client import RtspReader
from gateway.sim.runner import SimFleet
from tests.admin_support import admin_gateway
from tests.conftest import require, run_tool, stream_url

SEVERITIES = {"critical", "high", "medium", "low", "info"}


async def test_metrics_pass_promtool_and_describe_the_streams(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    require("promtool")
    async with admin_gateway(fleet, tmp_path, vms_password) as admin:
        reader = RtspReader(stream_url(admin.gateway, "hik1", "main", vms_password))
        await reader.start()
        try:
            # Long enough for the rate estimates to leave the start-up burst behind.
            await reader.wait_frames(100, timeout=20, media="video")
            async with admin.session() as session:
                async with session.get(admin.url + "/metrics") as response:
                    assert response.status == 401
                async with session.get(admin.url + "/metrics", headers=admin.basic()) as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain; version=")
                    text = await response.text()
                async with session.get(
                    admin.url + "/api/v1/findings", headers=admin.basic()
                ) as response:
                    findings = await response.json()
                async with session.get(
                    admin.url + "/api/v1/egress", headers=admin.basic()
                ) as response:
                    egress = await response.json()
        finally:
            await reader.close()

    metrics_file = tmp_path / "metrics.txt"
    metrics_file.write_text(text)
    code, out, err = await run_tool("sh", "-c", f"promtool check metrics < {metrics_file}")
    assert code == 0, out + err

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in samples, f"no series {name}{labels}"
        return samples[key]

    for camera, stream in (
        ("hik1", "main"),
        ("hik1", "sub"),
        ("dahua1", "main"),
        ("dahua1", "sub"),
    ):
        where = {"camera": camera, "stream": stream}
        assert value("onvif_gateway_stream_up", **where) == 1
        assert value("onvif_gateway_stream_state", **where, state="live") == 1
        assert value("onvif_gateway_stream_state", **where, state="down") == 0
        assert value("onvif_gateway_stream_received_bytes_total", **where) > 10_000
        assert value("onvif_gateway_stream_received_frames_total", **where) > 25
        assert 15 <= value("onvif_gateway_stream_frames_per_second", **where) <= 35
        assert value("onvif_gateway_stream_received_bytes_per_second", **where) > 2_500
        assert 0 <= value("onvif_gateway_stream_last_frame_age_seconds", **where) < 2
        assert 0 < value("onvif_gateway_stream_gop_cache_bytes", **where) <= 12 * 1024 * 1024
        assert value("onvif_gateway_stream_upstream_sessions_total", **where) == 1
        assert value("onvif_gateway_stream_upstream_reconnects_total", **where) == 0
        assert value("onvif_gateway_stream_dropped_frames_total", **where) == 0
        # The default ingest reads these cameras natively: their payloads go on as they
        # came, none rebuilt.
        assert value("onvif_gateway_stream_relayed_frames_total", **where) > 0
        assert value("onvif_gateway_stream_repacketized_frames_total", **where) == 0
    # No stream moved to PyAV: the fallback counter has no series.
    assert not [key for key in samples if key[0].startswith("onvif_gateway_ingest_fallbacks")]
    assert "# TYPE onvif_gateway_ingest_fallbacks_total counter" in text
    hik = {"camera": "hik1", "stream": "main"}
    # The scrape happened while the reader was playing.
    assert value("onvif_gateway_stream_clients", **hik, kind="rtsp") == 1
    assert value("onvif_gateway_stream_clients", **hik, kind="live_view") == 0
    assert value("onvif_gateway_stream_sent_frames_total", **hik) >= 30
    assert value("onvif_gateway_stream_sent_bytes_total", **hik) > 10_000
    assert value("onvif_gateway_stream_sent_bytes_total", camera="dahua1", stream="main") == 0
    # Policy and egress series say what the API says (the policy loop may have audited).
    compliant = {"compliant": 1, "non-compliant": 0, "unknown": -1}
    for camera in findings["cameras"]:
        name = camera["camera"]
        assert value("onvif_gateway_policy_compliant", camera=name) == compliant[camera["status"]]
        for severity in SEVERITIES:
            expected = sum(
                1 for f in camera["findings"] if f["status"] == "open" and f["severity"] == severity
            )
            assert (
                value("onvif_gateway_policy_findings", camera=name, severity=severity) == expected
            )
    for camera in egress["cameras"]:
        name = camera["name"]
        assert (
            value("onvif_gateway_egress_blocked_packets_total", camera=name)
            == camera["blocked_packets"]
        )
        assert (
            value("onvif_gateway_egress_dns_phone_home_total", camera=name)
            == camera["dns_phone_home"]
        )
    assert value("onvif_gateway_cameras") == 2
    assert value("process_resident_memory_bytes") > 10_000_000
    assert value("onvif_gateway_build_info", version=__version__) == 1
