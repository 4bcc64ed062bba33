"""``python3 -m benchmarks.run``: the benchmark, with peers side by side, and its report.

For each codec and shape it grows the load in steps (fan-out: 1 camera x more readers;
many-camera: more cameras x a few readers each), measures every relay at every step on the
same cameras with the same readers, stops growing a relay's load once it loses a packet, and
writes the raw JSON, RESULTS.md (tables, ratios to the gateway) and a plot. With
``--py-spy`` it then profiles the gateway at one load in a separate measurement, so the
profiler's own cost never reaches the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import relays as relays_mod
from benchmarks import report
from benchmarks.cameras import CODECS, prepare
from benchmarks.harness import CameraFleet, Options, Step, measure, run_ladder
from benchmarks.procstat import load_average, machine_description
from benchmarks.relays import GST_PYTHON, make_relay, which_py_spy

log = logging.getLogger("benchmarks")
HERE = Path(__file__).parent
QUICK: dict[str, str | float] = {
    "fanout_readers": "10,40",
    "many_cameras": "4,16",
    "duration": 6.0,
    "warmup": 2.0,
    "codecs": "H264",
}


def versions() -> dict[str, str]:
    import av
    import uvloop

    from gateway.rtp import spans

    out = {
        # The relay path's per-packet walks: the C build, or the Python reference (the
        # gateway runs from this checkout: `python3 setup.py build_ext --inplace` builds it).
        "span_walks": spans.IMPLEMENTATION,
        "python": platform.python_version(),
        "uvloop": uvloop.__version__,
        "pyav": av.__version__,
        "ffmpeg": _ffmpeg_version(av),
        "gstreamer": "not available",
    }
    try:
        done = subprocess.run(
            [GST_PYTHON, "-c", "import gi; from gi.repository import Gst; "
             "Gst.init(None); print(Gst.version_string())"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if done.returncode == 0:
            out["gstreamer"] = done.stdout.strip().removeprefix("GStreamer ")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _ffmpeg_version(av: Any) -> str:
    version = getattr(av, "ffmpeg_version_info", None)
    if isinstance(version, str):
        return version
    libs = getattr(av, "library_versions", {})
    avformat = libs.get("libavformat")
    return f"libavformat {'.'.join(map(str, avformat))}" if avformat else "unknown"


def commit() -> str:
    """The checkout's commit (with "+changes" when the working tree differs from it)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE.parent, capture_output=True, text=True,
        )  # fmt: skip
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return values


def parse_step(text: str) -> Step:
    """``many:H264:16x4`` -> Step."""
    try:
        shape, codec, load = text.split(":")
        cameras, readers = (int(x) for x in load.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SHAPE:CODEC:CAMERASxREADERS, e.g. many:H264:16x4"
        ) from None
    if shape not in ("fanout", "many") or codec not in CODECS:
        raise argparse.ArgumentTypeError(f"{text!r}: shape fanout|many, codec H264|H265")
    return Step(shape, codec, cameras, readers)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.run", description=__doc__)
    ap.add_argument(
        "--relays",
        default="gateway,gstreamer",
        help="gateway (the default configuration), gateway-native, gateway-pyav (that "
        "ingest only), each also with -wK (K worker processes), gstreamer, direct "
        "(comma-separated; the first is the ratio baseline)",
    )
    ap.add_argument(
        "--load-priority",
        choices=("low", "normal"),
        default="low",
        help="low: the load runs below the relay, as if on other machines (cameras under "
        "SCHED_IDLE, readers at nice 19, all in the relay's scheduling autogroup); normal: "
        "cameras and readers compete with the relay as equals",
    )
    ap.add_argument("--codecs", default="H264,H265")
    ap.add_argument("--shapes", default="fanout,many")
    ap.add_argument(
        "--fanout-readers",
        type=ints,
        default=ints("10,20,40,80"),
        help="readers on the single camera, per step",
    )
    ap.add_argument(
        "--many-cameras",
        type=ints,
        default=ints("4,8,16,32,64"),
        help="cameras per step of the many-camera shape",
    )
    ap.add_argument("--many-readers", type=int, default=4, help="readers per camera stream")
    ap.add_argument(
        "--profile",
        choices=("bench", "test"),
        default="bench",
        help="bench: 1080p25 4 Mbit/s H.264/H.265 + PCMU, 2 s GOP; test: tiny",
    )
    ap.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--late-readers",
        type=int,
        default=4,
        help="readers attached during the window, for time to first frame",
    )
    ap.add_argument(
        "--no-stall-probe",
        dest="stall_probe",
        action="store_false",
        help="do not run benchmarks.stalls (vCPU stalls) through each window",
    )
    ap.add_argument("--reader-procs", type=int, default=1)
    ap.add_argument("--camera-procs", type=int, default=1)
    ap.add_argument(
        "--py-spy",
        type=parse_step,
        metavar="SHAPE:CODEC:NxM",
        help="also profile the gateway at this load, e.g. many:H264:16x4",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a short run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    ap.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    ap.add_argument("--markdown", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--plot", type=Path, default=HERE / "results" / "load.png")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="logs and configs of every process (default: a temporary directory)",
    )
    ap.add_argument("--note", default="", help="a sentence for RESULTS.md about the conditions")
    ap.add_argument(
        "--memory-result",
        type=Path,
        default=None,
        help="a `benchmarks.memory --output` JSON: its baseline and per-stream memory go in",
    )
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite RESULTS.md and the plot from --output",
    )
    return ap  # fmt: skip


def steps_for(args: argparse.Namespace) -> list[Step]:
    steps = []
    for codec in args.codecs.split(","):
        if "fanout" in args.shapes:
            steps += [Step("fanout", codec, 1, m) for m in args.fanout_readers]
        if "many" in args.shapes:
            steps += [Step("many", codec, n, args.many_readers) for n in args.many_cameras]
    return steps


async def profile_gateway(relay: str, step: Step, opts: Options, raw: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="onvif-gw-profile-"))
    fleet = CameraFleet(step.cameras, step.codec, opts.profile, opts.camera_procs, workdir)
    try:
        await fleet.start()
        profiled = Options(**{**opts.__dict__, "py_spy": str(raw), "late_readers": 0})
        result = await measure(make_relay(relay), fleet, step, profiled, workdir)
    finally:
        await fleet.stop()
    if "error" in result:
        raise RuntimeError(f"the profiled measurement failed: {result['error']}")
    if not raw.exists():
        log_file = workdir / "py-spy.stderr.log"
        tail = log_file.read_text(errors="replace")[-500:] if log_file.exists() else ""
        raise RuntimeError(f"py-spy wrote no profile: {tail}")
    summary = report.summarize_profile(raw)
    return {"relay": relay, "step": step.label, "measurement": result, "raw": raw.name, **summary}


def render_only(args: argparse.Namespace) -> int:
    """Rewrite RESULTS.md and the plot from the JSON of the last run (keeping the lesson)."""
    doc = json.loads(args.output.read_text())
    doc["lesson"] = report.existing_lesson(args.markdown) or doc.get("lesson", "")
    if args.memory_result is not None:
        doc["memory"] = json.loads(args.memory_result.read_text())
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    report.write_markdown(doc, args.markdown, report.plot(doc["results"], args.plot), args.output)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so every finally block stops the processes it started.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.quick:
        # Shorter defaults; options given on the command line still win.
        ap.set_defaults(
            **{
                k: ints(str(v)) if k.endswith(("readers", "cameras")) else v
                for k, v in QUICK.items()
            }
        )
        args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.render_only:
        return render_only(args)
    for codec in args.codecs.split(","):
        if codec not in CODECS:
            ap.error(f"--codecs: {codec!r} is not one of {', '.join(CODECS)}")
    if args.py_spy is not None and which_py_spy() is None:
        # Found out before the measurements, not after twenty minutes of them.
        ap.error("--py-spy: py-spy is not installed (pip install -e '.[bench]')")
    relays = [make_relay(name) for name in args.relays.split(",")]
    usable = []
    skipped = {}
    for relay in relays:
        reason = relay.available()
        if reason is None:
            usable.append(relay)
        else:
            skipped[relay.name] = reason
            log.warning("skipping %s: %s", relay.name, reason)
    relays_mod.LOAD_LOW = args.load_priority == "low"
    log.info("preparing clips (encoded once, never inside a timed run)")
    prepare(args.profile, tuple(args.codecs.split(",")))
    opts = Options(
        profile=args.profile,
        duration=args.duration,
        warmup=args.warmup,
        late_readers=args.late_readers,
        reader_procs=args.reader_procs,
        camera_procs=args.camera_procs,
        workdir=args.workdir,
        stall_probe=args.stall_probe,
    )
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python3 -m benchmarks.run " + shlex.join(argv or sys.argv[1:]),
        "commit": commit(),
        "machine": {**machine_description(), **versions()},
        "load_average_before": [round(x, 2) for x in load_average()],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.__dict__.items()},
        "skipped_relays": skipped,
        "load_priority": args.load_priority,
    }

    def progress(result: dict[str, Any]) -> None:
        log.info(
            "%s %s: held=%s cpu/Gbit=%s latency p99=%s ms ttff p99=%s ms rss=%s MiB",
            result["relay"], report.step_label(result), result["held"],
            result.get("cpu_s_per_gbit"), result.get("latency_p99_ms"),
            result.get("ttff_p99_ms"), result.get("peak_rss_mib"),
        )  # fmt: skip

    results = asyncio.run(run_ladder(steps_for(args), usable, opts, progress))
    doc["results"] = results
    doc["ratios"] = report.ratios(results, usable[0].name if usable else "gateway")
    doc["max_held"] = report.max_held(results)
    doc["profiles"] = []
    for relay in usable if args.py_spy is not None else []:
        if not relay.name.startswith("gateway"):
            continue
        raw = args.output.parent / f"profile-{relay.name}.raw.txt"
        try:
            doc["profiles"].append(asyncio.run(profile_gateway(relay.name, args.py_spy, opts, raw)))
        except RuntimeError as exc:
            log.error("profiling %s failed: %s", relay.name, exc)
            doc.setdefault("profile_errors", []).append(f"{relay.name}: {exc}")
    doc["load_average_after"] = [round(x, 2) for x in load_average()]
    doc["machine_note"] = args.note or (
        "Other processes shared the machine during the run (see load averages)."
        if max(doc["load_average_before"][0], doc["load_average_after"][0]) > 0.5
        else "The machine was otherwise idle."
    )
    doc["lesson"] = report.existing_lesson(args.markdown)
    if args.memory_result is not None:
        doc["memory"] = json.loads(args.memory_result.read_text())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    plot = report.plot(results, args.plot)
    report.write_markdown(doc, args.markdown, plot, args.output)
    log.info("wrote %s, %s%s", args.output, args.markdown, f", {plot}" if plot else "")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
