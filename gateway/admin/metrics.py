"""Prometheus metrics, gathered at scrape time.

Nothing here runs on the packet path: :class:`GatewayCollector` reads, each time
``/metrics`` is scraped, the counters the hubs and sessions keep anyway (one
:class:`~gateway.view.StreamSample` per stream, from the gateway's view, and the clients of
each stream by kind), the policy findings and the egress report from the store. Process
metrics come from prometheus-client's collectors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.view import STREAM_STATES, StreamSample

log = logging.getLogger("gateway.admin")

PREFIX = "onvif_gateway"
SEVERITIES = ("critical", "high", "medium", "low", "info")
# The client kinds of a stream nobody watches (every kind is exported, at 0).
NO_CLIENTS: Mapping[str, int] = {"rtsp": 0, "live_view": 0}

# (name, help, StreamSample attribute) for the per-stream counters.
STREAM_COUNTERS = (
    ("stream_received_bytes", "Bytes received from the camera (RTP as relayed)", "bytes_in"),
    ("stream_received_frames", "Frames received from the camera", "frames_in"),
    ("stream_sent_bytes", "Bytes sent to all clients of the stream", "bytes_out"),
    ("stream_sent_frames", "Frames sent, summed over clients", "frames_out"),
    (
        "stream_dropped_frames",
        "Frames skipped for clients over their send budget",
        "dropped_frames",
    ),
    ("stream_slow_client_disconnects", "Clients disconnected for stalling", "slow_disconnects"),
    (
        "stream_malformed_frames",
        "Frames from the camera that could not be packetized",
        "malformed_frames",
    ),
    (
        "stream_relayed_frames",
        "Frames sent on as the camera's own RTP payloads (native ingest)",
        "relayed_frames",
    ),
    (
        "stream_repacketized_frames",
        "Camera frames that had to be depacketized and packetized again (native ingest)",
        "repacketized_frames",
    ),
    ("stream_upstream_reconnects", "Times the camera stream came back after a loss", "reconnects"),
    ("stream_upstream_sessions", "Upstream sessions opened to the camera", "upstream_sessions"),
)
# (name, help, StreamSample attribute) for the per-stream rates.
STREAM_GAUGES = (
    (
        "stream_received_bytes_per_second",
        "Ingest rate over the last seconds (x8 for the bitrate)",
        "byte_rate",
    ),
    ("stream_frames_per_second", "Video frame rate as received", "fps"),
    ("stream_gop_seconds", "Seconds between the last two keyframes", "gop_seconds"),
    (
        "stream_gop_cache_bytes",
        "Bytes the GOP cache holds for new clients (RTP as sent, interleaved framing included)",
        "gop_cache_bytes",
    ),
)


class GatewayCollector(Collector):
    """Reads the live gateway at scrape time. ``sources`` supplies what to read."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def describe(self) -> Iterable[Any]:
        return []  # no collection at registration time

    def collect(self) -> Iterator[Any]:
        src = self.sources
        yield InfoMetricFamily(f"{PREFIX}_build", "Gateway version", value={"version": __version__})
        streams = src.streams()
        kinds = src.client_kinds()
        labels = ["camera", "stream"]

        up = GaugeMetricFamily(
            f"{PREFIX}_stream_up",
            "1 while the camera stream delivers frames, 0 while it should and does not; "
            "absent for a stream that is not expected to (idle on demand, disabled)",
            labels=labels,
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_stream_state",
            "State of the stream: live, idle (on demand, nobody watching), connecting, "
            "down, disabled (1 for the current state)",
            labels=[*labels, "state"],
        )
        clients = GaugeMetricFamily(
            f"{PREFIX}_stream_clients",
            "Clients receiving the stream, by kind",
            labels=[*labels, "kind"],
        )
        down_since = GaugeMetricFamily(
            f"{PREFIX}_stream_down_since_timestamp_seconds",
            "When the stream went down (Unix time), while it is down",
            labels=labels,
        )
        age = GaugeMetricFamily(
            f"{PREFIX}_stream_last_frame_age_seconds",
            "Seconds since the last frame arrived from the camera",
            labels=labels,
        )
        counters = {
            key: CounterMetricFamily(f"{PREFIX}_{name}", text, labels=labels)
            for name, text, key in STREAM_COUNTERS
        }
        gauges = {
            key: GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=labels)
            for name, text, key in STREAM_GAUGES
        }
        for sample in streams:
            values = [sample.camera, sample.stream]
            live = sample.state == "live"
            if sample.should_stream:
                up.add_metric(values, 1.0 if live else 0.0)
            for name in STREAM_STATES:
                state.add_metric([*values, name], 1.0 if sample.state == name else 0.0)
            if sample.state == "disabled":
                continue  # nothing runs for it: no counters
            by_kind = kinds.get((sample.camera, sample.stream), NO_CLIENTS)
            for kind, count in by_kind.items():
                clients.add_metric([*values, kind], float(count))
            if sample.down_since is not None:
                down_since.add_metric(values, sample.down_since)
            if sample.last_frame_age is not None:
                age.add_metric(values, sample.last_frame_age)
            for key, family in counters.items():
                family.add_metric(values, float(getattr(sample, key)))
            for key, gfamily in gauges.items():
                # Rates of a stream that is not live are 0, not its last measurement.
                gfamily.add_metric(values, float(getattr(sample, key)) if live else 0.0)
        yield up
        yield state
        yield clients
        yield down_since
        yield age
        yield from counters.values()
        yield from gauges.values()

        yield GaugeMetricFamily(
            f"{PREFIX}_cameras", "Cameras in the configuration", value=src.camera_count()
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_auth_failures",
            "Credentials refused, by service (a stale-nonce re-challenge is not counted)",
            labels=["service"],
        )
        for service, count in sorted(src.auth_failures().items()):
            failures.add_metric([service], float(count))
        yield failures
        yield GaugeMetricFamily(
            f"{PREFIX}_config_reload_timestamp_seconds",
            "When the configuration was last loaded (Unix time)",
            value=src.config_loaded_at(),
        )

        findings = GaugeMetricFamily(
            f"{PREFIX}_policy_findings",
            "Open policy findings from the latest audit, by camera and severity",
            labels=["camera", "severity"],
        )
        compliant = GaugeMetricFamily(
            f"{PREFIX}_policy_compliant",
            "1 compliant, 0 non-compliant, -1 unknown (no inventory yet or unreachable)",
            labels=["camera"],
        )
        try:
            for camera, status, by_severity in src.findings():
                compliant.add_metric(
                    [camera], {"compliant": 1.0, "non-compliant": 0.0}.get(status, -1.0)
                )
                for severity in SEVERITIES:
                    findings.add_metric([camera, severity], float(by_severity.get(severity, 0)))
        except Exception:  # a locked or broken database must not break the scrape
            log.exception("metrics: cannot read policy findings")
        yield findings
        yield compliant

        blocked = CounterMetricFamily(
            f"{PREFIX}_egress_blocked_packets",
            "Packets from the camera to the outside that the firewall dropped",
            labels=["camera"],
        )
        dns = CounterMetricFamily(
            f"{PREFIX}_egress_dns_queries",
            "DNS queries the camera sent to the sinkhole",
            labels=["camera"],
        )
        phone_home = CounterMetricFamily(
            f"{PREFIX}_egress_dns_phone_home",
            "DNS queries for known vendor cloud, P2P or telemetry names",
            labels=["camera"],
        )
        try:
            for camera in src.egress().get("cameras", []):
                blocked.add_metric([camera["name"]], float(camera["blocked_packets"]))
                dns.add_metric([camera["name"]], float(camera["dns_queries"]))
                phone_home.add_metric([camera["name"]], float(camera["dns_phone_home"]))
        except Exception:
            log.exception("metrics: cannot read the egress report")
        yield blocked
        yield dns
        yield phone_home

        refused = CounterMetricFamily(
            f"{PREFIX}_refusals",
            "Connections and requests refused under hostile load or failed logins, by listener "
            "and reason (docs/security.md)",
            labels=["listener", "reason"],
        )
        for (listener, reason), count in sorted(src.refusals().items()):
            refused.add_metric([listener, reason], float(count))
        yield refused

        fallbacks = CounterMetricFamily(
            f"{PREFIX}_ingest_fallbacks",
            'Streams moved from the native RTSP client to PyAV under ingest = "auto", by '
            "reason: not_rtsp, unsupported_sdp, setup_failed, malformed_frames "
            "(docs/operations.md)",
            labels=["camera", "stream", "reason"],
        )
        for (camera, stream, reason), count in sorted(src.ingest_fallbacks().items()):
            fallbacks.add_metric([camera, stream, reason], float(count))
        yield fallbacks


class MetricSources:
    """What the collector reads; the admin service wires these to the running gateway."""

    def __init__(
        self,
        streams: Callable[[], list[StreamSample]],
        client_kinds: Callable[[], Mapping[tuple[str, str], Mapping[str, int]]],
        findings: Callable[[], list[tuple[str, str, dict[str, int]]]],
        egress: Callable[[], dict[str, Any]],
        camera_count: Callable[[], int],
        config_loaded_at: Callable[[], float],
        refusals: Callable[[], dict[tuple[str, str], int]] = dict,
        auth_failures: Callable[[], dict[str, int]] = dict,
        ingest_fallbacks: Callable[[], dict[tuple[str, str, str], int]] = dict,
    ) -> None:
        self.streams = streams
        self.client_kinds = client_kinds
        self.findings = findings
        self.egress = egress
        self.camera_count = camera_count
        self.config_loaded_at = config_loaded_at
        self.refusals = refusals
        self.auth_failures = auth_failures
        self.ingest_fallbacks = ingest_fallbacks


def build_registry(sources: MetricSources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(GatewayCollector(sources))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition format and its content type."""
    started = time.perf_counter()
    body = generate_latest(registry)
    log.debug("metrics generated", extra={"seconds": round(time.perf_counter() - started, 4)})
    return body, CONTENT_TYPE_LATEST


# With several worker processes (gateway.admin.sitewide), worker 0 merges every worker's
# exposition: per-stream families are concatenated (each camera is one worker's); the
# families of one process (CPU, memory, GC; refusals and failed logins, counted by each
# process's listeners) get a ``worker`` label; the site's own (build, camera count, when
# the configuration was loaded, and the policy findings and egress counters every worker
# reads for every camera from the shared state database) are worker 0's alone.
PROCESS_PREFIXES = ("process_", "python_")
PROCESS_FAMILIES = (f"{PREFIX}_auth_failures", f"{PREFIX}_refusals")
SITE_FAMILIES = (
    f"{PREFIX}_build_info",
    f"{PREFIX}_cameras",
    f"{PREFIX}_config_reload_timestamp_seconds",
    f"{PREFIX}_policy_findings",
    f"{PREFIX}_policy_compliant",
    f"{PREFIX}_egress_blocked_packets",
    f"{PREFIX}_egress_dns_queries",
    f"{PREFIX}_egress_dns_phone_home",
)


def merge_workers(texts: Mapping[int, str | None]) -> bytes:
    """One exposition from each worker's (None: the worker did not answer), with
    ``onvif_gateway_worker_up`` per worker."""
    from prometheus_client.parser import text_string_to_metric_families

    merged: dict[str, Any] = {}
    for worker, text in sorted(texts.items()):
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            per_process = family.name.startswith(PROCESS_PREFIXES) or (
                family.name in PROCESS_FAMILIES
            )
            if worker and family.name in SITE_FAMILIES:
                continue
            if per_process:
                family.samples = [
                    s._replace(labels={**s.labels, "worker": str(worker)}) for s in family.samples
                ]
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = family
            else:
                known.samples.extend(family.samples)
    up = GaugeMetricFamily(
        f"{PREFIX}_worker_up",
        "1 when the worker process answered this scrape in time, 0 when it did not",
        labels=["worker"],
    )
    for worker, text in sorted(texts.items()):
        up.add_metric([str(worker)], 0.0 if text is None else 1.0)
    families = [*merged.values(), up]

    class Merged(Collector):
        def collect(self) -> Iterator[Any]:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    return generate_latest(registry)
