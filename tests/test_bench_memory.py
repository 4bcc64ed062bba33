"""The memory benchmark, run small: it must measure and report (never judge the figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import memory

pytestmark = pytest.mark.slow


def test_memory_benchmark_reports_baseline_per_stream_and_allocation_sites(
    tmp_path: Path,
) -> None:
    out, markdown = tmp_path / "memory.json", tmp_path / "MEMORY.md"
    argv = ["--cameras", "2", "--profile", "test", "--settle", "0.5", "--window", "1.5"]
    argv += ["--tracemalloc", "--top", "5", "--output", str(out), "--markdown", str(markdown)]
    assert memory.main([*argv, "--workdir", str(tmp_path / "work")]) == 0

    result = json.loads(out.read_text())
    assert result["cameras"] == 2 and result["ingest"] == "auto"
    assert result["baseline_rss_mib"] > 10
    assert result["loaded_rss_mib"] > 0
    # The gateway's own count of each stream's GOP cache came through /metrics.
    assert result["gop_cache_mib"] is not None and result["gop_cache_mib"] > 0
    assert isinstance(result["target_met"], bool)
    assert 0 < len(result["tracemalloc_top"]) <= 5
    assert all(row["bytes"] > 0 and ":" in row["site"] for row in result["tracemalloc_top"])
    text = markdown.read_text()
    assert "| cameras | baseline RSS |" in text and "tracemalloc" in text


def test_stream_series_are_read_from_the_exposition() -> None:
    text = "\n".join(
        [
            "# HELP onvif_gateway_stream_up 1 while live",
            'onvif_gateway_stream_up{camera="cam1",stream="main"} 1.0',
            'onvif_gateway_stream_gop_cache_bytes{camera="cam1",stream="main"} 524288.0',
            'onvif_gateway_stream_state{camera="cam1",stream="main",state="live"} 1.0',
            'onvif_gateway_refusals_total{listener="rtsp",reason="cap"} 3.0',
        ]
    )
    assert memory.parse_stream_series(text) == {
        ("onvif_gateway_stream_up", "cam1/main"): 1.0,
        ("onvif_gateway_stream_gop_cache_bytes", "cam1/main"): 524288.0,
    }


def test_results_md_carries_the_memory_result_when_given(tmp_path: Path) -> None:
    from benchmarks import report

    machine = {"nproc": 2, "cpu_model": "cpu", "memory_gib": 4.0, "kernel": "Linux"}
    machine |= {"python": "3.11", "uvloop": "x", "pyav": "x", "ffmpeg": "x", "gstreamer": "x"}
    memory_result = {
        "machine": machine,
        "profile": "bench",
        "codec": "H264",
        "ingest": "native",
        "cameras": 4,
        "baseline_rss_mib": 50.0,
        "loaded_rss_mib": 54.0,
        "per_stream_rss_mib": 1.0,
        "gop_cache_mib": 0.95,
        "per_stream_over_gop_mib": 0.05,
        "tracemalloc_top": None,
    }
    doc = {
        "date": "2026-12-05",
        "command": "python3 -m benchmarks.run",
        "machine": machine,
        "load_average_before": [0, 0, 0],
        "load_average_after": [0, 0, 0],
        "machine_note": "",
        "options": {"reader_procs": 1, "warmup": 1, "duration": 2, "late_readers": 0},
        "max_held": {},
        "results": [],
        "ratios": [],
        "memory": memory_result,
    }
    path = tmp_path / "RESULTS.md"
    report.write_markdown(doc, path, None, tmp_path / "latest.json")
    text = path.read_text()
    assert "## Memory per stream" in text
    assert "| 4 | 50.0 MiB | 54.0 MiB | 1.00 MiB | 0.95 MiB | +0.05 MiB |" in text
