"""Results: ratios to the gateway, the largest load each relay held, RESULTS.md and the plot."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

# Lower is better for each; a ratio is peer / gateway, so > 1 means the gateway does better.
RATIO_FIELDS = ("cpu_s_per_gbit", "latency_p99_ms", "ttff_p99_ms", "peak_rss_mib")
# Measured earlier on this kind of machine (2 cores, loopback, efficient reader, 1080p25
# H.264 about 5 Mbit/s, 2 s GOP); these relays do not install from the registries here.
REFERENCE_FIGURES = [
    "Reference, not from this run (go2rtc and MediaMTX do not install here; figures measured "
    "earlier on this kind of machine, CPU-s per relayed Gbit):",
    "",
    "| relay | 1 camera x 40 readers | 8 cameras x 2 readers | time to first frame |",
    "|---|---|---|---|",
    "| go2rtc 1.9.14 | 0.08-0.10 | 0.39 | 0.3-1.7 s (waits for a keyframe) |",
    "| GStreamer 1.22 relay | 0.10-0.12 | 0.79 | 0.7-1.4 s |",
    "| MediaMTX 1.16.3 | 0.45-0.50 | 0.82 | 0.3-2.0 s |",
]
LESSON_START = "<!-- lesson: kept across runs -->"
LESSON_END = "<!-- /lesson -->"


def step_key(result: dict[str, Any]) -> tuple[str, str, int, int]:
    return (result["shape"], result["codec"], result["cameras"], result["readers_per_stream"])


def ratios(results: list[dict[str, Any]], baseline: str = "gateway") -> list[dict[str, Any]]:
    """Each other relay's figures divided by the baseline's at the same step of the same run."""
    base = {step_key(r): r for r in results if r["relay"] == baseline}
    out = []
    for r in results:
        ref = base.get(step_key(r))
        if r["relay"] == baseline or ref is None:
            continue
        row: dict[str, Any] = {"relay": r["relay"], "step": step_label(r)}
        for name in RATIO_FIELDS:
            a, b = r.get(name), ref.get(name)
            row[name] = round(a / b, 2) if a is not None and b else None
        out.append(row)
    return out


def max_held(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per relay and ladder (shape, codec): the largest load carried with zero loss."""
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        if not r.get("held"):
            continue
        key = f"{r['relay']} {r['shape']} {r['codec']}"
        if key not in best or r["readers"] > best[key]["readers"]:
            best[key] = {
                "cameras": r["cameras"],
                "readers_per_stream": r["readers_per_stream"],
                "readers": r["readers"],
            }
    return best


def step_label(r: dict[str, Any]) -> str:
    return f"{r['shape']} {r['codec']} {r['cameras']}x{r['readers_per_stream']}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def results_table(results: list[dict[str, Any]]) -> list[str]:
    head = (
        "| load (cameras x readers) | relay | held | frames min/expected | lost | "
        "Mbit/s out | relay CPU (cores) | CPU-s per Gbit | latency p50 / p99 ms | "
        "TTFF p50 / p99 ms | peak RSS MiB (per stream) | upstream per camera | "
        "p99 app ms | reader CPU (cores) | relay threads waiting for a CPU | steal | "
        "vCPU stalls > 10 ms (longest) |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in results:
        if "error" in r and "readers_sustained" not in r:
            lines.append(
                f"| {step_label(r)} | {r['relay']} | error: {_one_line(r['error'])} |" + " |" * 14
            )
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    step_label(r),
                    r["relay"],
                    "yes" if r["held"] else "**no**",
                    f"{_fmt(r.get('frames_received_min'))}/{_fmt(r.get('frames_expected_per_reader'))}",
                    _fmt(r.get("packets_lost")),
                    _fmt(r.get("relayed_mbit_per_s")),
                    _fmt(r.get("relay_cpu_share")),
                    _fmt(r.get("cpu_s_per_gbit")),
                    f"{_fmt(r.get('latency_p50_ms'))} / {_fmt(r.get('latency_p99_ms'))}",
                    f"{_fmt(r.get('ttff_p50_ms'))} / {_fmt(r.get('ttff_p99_ms'))}",
                    f"{_fmt(r.get('peak_rss_mib'))} ({_fmt(r.get('rss_per_stream_mib'))})",
                    _fmt(r.get("upstream_sessions_per_camera_max")),
                    _fmt(r.get("latency_app_p99_ms")),
                    _fmt(_per_second(r.get("reader_cpu_seconds"), r.get("duration"))),
                    _fmt(r.get("relay_run_wait_share")),
                    _percent(r.get("steal_share")),
                    _stalls(r.get("vcpu_stalls")),
                ]
            )
            + " |"
        )
    return lines


def as_shipped(results: list[dict[str, Any]], peer: str = "gstreamer") -> list[str]:
    """The headline: at the largest load of each ladder (shape, codec), every relay of the
    run next to ``peer``, led by plain ``gateway`` (the configuration a user gets)."""
    ladders: dict[tuple[str, str], tuple[int, int]] = {}
    for one in results:
        load = (one["cameras"], one["readers_per_stream"])
        ladder = (one["shape"], one["codec"])
        ladders[ladder] = max(ladders.get(ladder, load), load)
    relays = list(dict.fromkeys(r["relay"] for r in results))
    relays.sort(key=lambda name: (name != "gateway", name == peer))
    at = {(step_key(r), r["relay"]): r for r in results}
    lines = [
        f"| load | relay | held | lost | latency p99 ms | CPU-s per Gbit | x {peer}'s CPU per "
        "Gbit | peak RSS MiB per stream |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (shape, codec), (cameras, readers) in sorted(ladders.items()):
        key = (shape, codec, cameras, readers)
        ref = at.get((key, peer))
        for name in relays:
            r = at.get((key, name))
            if r is None:
                continue
            if "error" in r and "readers_sustained" not in r:
                lines.append(f"| {step_label(r)} | {name} | error | | | | | |")
                continue
            own, theirs = r.get("cpu_s_per_gbit"), (ref or {}).get("cpu_s_per_gbit")
            ratio = round(own / theirs, 2) if own is not None and theirs else None
            lines.append(
                f"| {step_label(r)} | {name} | {'yes' if r['held'] else '**no**'} | "
                f"{_fmt(r.get('packets_lost'))} | {_fmt(r.get('latency_p99_ms'))} | "
                f"{_fmt(own)} | {_fmt(ratio)} | {_fmt(r.get('rss_per_stream_mib'))} |"
            )
    return lines


def _one_line(text: str, limit: int = 80) -> str:
    """The start of a message for a table cell: its first line, without pipes."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.replace("|", "/")[:limit]


def _stalls(report: dict[str, Any] | None) -> str:
    if not report:
        return "-"
    return f"{report.get('over_10ms', '-')} ({report.get('max_ms', '-')} ms)"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


def _per_second(seconds: float | None, duration: float | None) -> float | None:
    return round(seconds / duration, 3) if seconds is not None and duration else None


def receive_time_note(results: list[dict[str, Any]]) -> str:
    """Which receive time the readers had, when any run fell back from the kernel's."""
    sources = {r["receive_timestamp"] for r in results if r.get("receive_timestamp")}
    odd = sorted(s for s in sources if s != "kernel (SO_TIMESTAMPNS)")
    return f" Receive time actually taken: {'; '.join(odd)}." if odd else ""


def scheduling_note(doc: dict[str, Any]) -> str:
    """How the load was scheduled against the relay, as checked at each window's start."""
    if doc.get("load_priority") != "low":
        return " Cameras and readers competed with the relay as equals (`--load-priority normal`)."
    checked = [r["scheduling"] for r in doc["results"] if "problems" in r.get("scheduling", {})]
    problems = sorted({p for sched in checked for p in sched["problems"]})
    if not checked:
        return ""
    if problems:
        return " The load was NOT scheduled below the relay: " + "; ".join(problems) + "."
    return (
        " Cameras ran under SCHED_IDLE and readers at nice 19, in the relay's scheduling "
        f"autogroup (checked at the start of {len(checked)} windows)."
    )


def ratio_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| load | relay | CPU per Gbit | latency p99 | TTFF p99 | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["step"], row["relay"]] + [_fmt(row[f]) for f in RATIO_FIELDS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def existing_lesson(path: Path) -> str:
    if not path.exists():
        return ""
    match = re.search(
        re.escape(LESSON_START) + r"(.*?)" + re.escape(LESSON_END), path.read_text(), re.S
    )
    return match.group(1).strip("\n") if match else ""


def write_markdown(doc: dict[str, Any], path: Path, plot: Path | None, raw: Path) -> None:
    m = doc["machine"]
    raw_link = os.path.relpath(raw, path.parent)
    title = "# Benchmark results" + ("" if path.name == "RESULTS.md" else f": {path.stem}")
    lines = [
        title,
        "",
        f"Date: {doc['date']}, commit {doc.get('commit', 'unknown')}. Command (from the "
        "repository root):",
        "",
        "```",
        doc["command"],
        "```",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, {m['kernel']}; "
        f"Python {m['python']}, uvloop {m['uvloop']}, PyAV {m['pyav']} (FFmpeg {m['ffmpeg']}), "
        f"GStreamer {m['gstreamer']}; gateway span walks: {m.get('span_walks', 'Python')}.",
        "",
        f"Load average before the run: {doc['load_average_before']}; after: "
        f"{doc['load_average_after']}. {doc['machine_note']}",
        "",
        "Cameras, relay and readers each run as their own processes on this machine; the "
        "relay's CPU and memory are read from /proc for its whole process tree. Readers are "
        f"{doc['options']['reader_procs']} uvloop process(es) of lean readers "
        "(`benchmarks.readers.LeanReader`: TCP interleaved, the socket read from an "
        "`add_reader` callback with kernel receive timestamps, counted by the gateway's "
        "`ClientConnection` and `RtpReceiver`, the SEI stamp read once per frame); the late "
        "readers are `RtspReader`. Each "
        "measurement: "
        f"{doc['options']['warmup']} s warm-up, {doc['options']['duration']} s window, "
        f"{doc['options']['late_readers']} late readers for time to first frame. Raw figures: "
        f"[{raw_link}]({raw_link}).",
        "",
        "## As shipped, against GStreamer",
        "",
        "Plain `gateway` is the configuration a user gets (no `ingest` or `workers` setting: "
        '`ingest = "auto"`, `workers = "auto"`); other `gateway-*` rows set one explicitly. '
        "At the largest load of each shape and codec, from this run:",
        "",
        *as_shipped(doc["results"]),
        "",
        "## Largest load held (zero loss, every reader in real time)",
        "",
        "| relay, shape, codec | cameras x readers per stream | reader sessions |",
        "|---|---|---|",
    ]
    for key, best in sorted(doc["max_held"].items()):
        lines.append(
            f"| {key} | {best['cameras']} x {best['readers_per_stream']} | {best['readers']} |"
        )
    lines += ["", "## Every measurement", "", *results_table(doc["results"])]
    lines += [
        "",
        "Columns: *held* = every reader attached and received at least "
        "97% of the frames due at 25 fps with no RTP sequence gap; *relay CPU* = CPU "
        "seconds per second of the relay's process tree; *CPU-s per Gbit* = relay CPU "
        "seconds per Gbit of RTP delivered to readers; *latency* = reader receive time minus "
        "the camera's send stamp (SEI) for every video frame, where reader receive = kernel "
        "receive timestamp of the reader's socket (SO_TIMESTAMPNS) for the read that "
        "completed the frame (a read holding several frames dates them all by its last segment, "
        "so a reader late to read overstates latency, never understates it); the reader "
        "process's own handling time is shown as *p99 app* (the same stamp against the "
        "time the reader process handled the read, `time.time_ns()`); *TTFF* = PLAY to the first "
        "complete keyframe for a reader attached mid-run; *upstream per camera* = playing "
        "sessions the camera counts; *reader CPU* = CPU seconds per second of the reader "
        "processes (they share the cores with the relay, below it unless the command says "
        "`--load-priority normal`); *relay threads waiting for a CPU* = seconds "
        "per second that the relay's threads were ready to run but not running, summed over "
        "its threads (the kernel's schedstat run-queue wait: another task, or kernel work "
        "that cannot be preempted, held the CPU); for a relay on one event loop thread, the "
        "share of the window it waited; *steal* = share of the machine's CPU time "
        "the hypervisor gave to other guests during the window (this is a virtual machine); "
        "*vCPU stalls* = wake-ups of a 1 ms SCHED_FIFO sleeper (`python3 -m benchmarks.stalls`) "
        "more than 10 ms late during the window, and the latest: times when its virtual CPU, "
        "and so every process on it, did not run at all."
        + receive_time_note(doc["results"])
        + scheduling_note(doc),
        "",
        "## Peers as a ratio to the gateway in the same run",
        "",
        "Peer figure divided by the gateway's at the same load (> 1: the gateway does better).",
        "",
    ]
    lines += ratio_table(doc["ratios"])
    if doc.get("memory"):
        # The gateway's baseline and memory per stream (benchmarks.memory, --memory-result).
        from benchmarks.memory import render_markdown

        lines += ["", render_markdown(doc["memory"]).rstrip("\n")]
    lines += ["", *REFERENCE_FIGURES]
    if plot is not None:
        lines += ["", f"![CPU and latency against load]({os.path.relpath(plot, path.parent)})"]
    for p in doc.get("profiles", []):
        lines += [
            "",
            f"## Profile of {p['relay']} at {p['step']} (py-spy, {p['samples']} samples, "
            f"raw stacks in results/{p['raw']})",
            "",
            "By thread: " + ", ".join(f"{name} {pct}%" for name, pct in p.get("threads", [])),
            "",
            "Own time (the function itself, % of all samples of the gateway's threads):",
            "",
            "| % | function |",
            "|---|---|",
        ]
        lines += [f"| {pct} | `{fn}` |" for fn, pct in p["self"][:20]]
        lines += ["", "Inclusive time (the function and what it calls):", "", "| % | function |"]
        lines += ["|---|---|"] + [f"| {pct} | `{fn}` |" for fn, pct in p["inclusive"][:20]]
    lines += [
        "",
        "## What the profile says",
        "",
        LESSON_START,
        doc.get("lesson") or "(not written yet)",
        LESSON_END,
        "",
    ]
    path.write_text("\n".join(lines))


def plot(results: list[dict[str, Any]], path: Path) -> Path | None:
    """CPU per Gbit and latency p99 against load, one line per relay and codec."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shapes = [s for s in ("fanout", "many") if any(r["shape"] == s for r in results)]
    if not shapes:
        return None
    fig, axes = plt.subplots(3, len(shapes), figsize=(6 * len(shapes), 10), squeeze=False)
    metrics = (
        ("cpu_s_per_gbit", "relay CPU-s per relayed Gbit"),
        ("relay_cpu_share", "relay CPU (cores busy)"),
        ("latency_p99_ms", "added latency p99 (ms, log; dashed: 10 ms)"),
    )
    for col, shape in enumerate(shapes):
        series: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for r in results:
            if r["shape"] == shape and "readers_sustained" in r:
                x = r["readers_per_stream"] if shape == "fanout" else r["cameras"]
                series[f"{r['relay']} {r['codec']}"].append((x, r))
        for row, (name, label) in enumerate(metrics):
            ax = axes[row][col]
            for line, points in sorted(series.items()):
                points.sort(key=lambda p: p[0])
                xs = [x for x, r in points if r.get(name) is not None]
                ys = [r[name] for _, r in points if r.get(name) is not None]
                ax.plot(xs, ys, marker="o", label=line)
                for x, r in points:
                    if not r["held"] and r.get(name) is not None:
                        ax.plot([x], [r[name]], marker="x", color="red", markersize=10)
            ax.set_ylabel(label)
            ax.set_xscale("log", base=2)  # the steps double
            steps = sorted({x for points in series.values() for x, _ in points})
            ax.set_xticks(steps, [str(x) for x in steps])
            ax.minorticks_off()
            if name == "latency_p99_ms":
                # Milliseconds next to seconds (a relay that fell behind): a log scale keeps
                # both readable, with the 10 ms target drawn in.
                ax.set_yscale("log")
                ax.axhline(10, color="grey", linestyle="--", linewidth=1)
            else:
                ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            if row == 0:
                title = "1 camera x N readers" if shape == "fanout" else "N cameras x M readers"
                ax.set_title(title + " (red x: not held)")
            if row == len(metrics) - 1:
                ax.set_xlabel("readers per stream" if shape == "fanout" else "cameras")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Own and inclusive shares per function from py-spy's raw (collapsed stack) output."""
    own: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    threads: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = stack.split(";")
        thread = next((f for f in raw_frames if f.startswith("thread ")), "")
        # "thread (123): ingest:cam1/main" -> "ingest"; the main thread runs the event loop.
        name = thread.split("): ", 1)[-1] if thread else "?"
        threads["event loop (MainThread)" if name == "MainThread" else name.split(":")[0]] += count
        frames = [_function_name(f) for f in raw_frames]
        # Process and thread frames, and the interpreter's thread start-up, are not code
        # anyone can optimise; leaving them out keeps the inclusive table readable.
        frames = [f for f in frames if f and not f.startswith(_PLUMBING)]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        items = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in items]

    return {
        "samples": total,
        "threads": ranked(threads),
        "self": ranked(own),
        "inclusive": ranked(inclusive),
    }


_PLUMBING = ("threading.py:", "<frozen runpy>:", "gateway/__main__.py:", "gateway/cli.py:main")
_FRAME = re.compile(r"^(?P<fn>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def _function_name(frame: str) -> str:
    """``deliver (gateway/rtsp/server.py:131)`` -> ``gateway/rtsp/server.py:deliver``."""
    frame = frame.strip()
    match = _FRAME.match(frame)
    if match is None:
        return "" if frame.startswith(("process ", "thread ")) else frame
    path = match.group("file")
    for marker in ("/gateway/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path[path.index(marker) + 1 :]
            break
    return f"{path}:{match.group('fn')}"
