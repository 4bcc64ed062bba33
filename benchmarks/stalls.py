"""``python3 -m benchmarks.stalls``: how often, and how long, this machine stops running us.

A process at the highest real-time priority (SCHED_FIFO 99, when allowed) sleeps 1 ms at a
time and records how late each wake-up comes. No ordinary task in the guest can hold it off,
so a wake-up many milliseconds late means its virtual CPU was not running at all: the
hypervisor gave the time to another guest, or throttled this one. Every process on that CPU,
the relay under test included, lost the same time, and each frame that arrived meanwhile
waited for it. The harness runs this probe through every measured window, so each row's
latency tail can be read against the stalls of the same window.

``--seconds S`` (default 10) sets the duration; ``--start-at T`` (seconds since the epoch)
waits until then to begin, so the harness can start the probe before a window and keep the
interpreter's own start-up out of it; ``--json`` prints one JSON object instead of a line of
text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

INTERVAL = 0.001
THRESHOLDS_MS = (5, 10, 20)


@dataclass
class StallCount:
    """Late wake-ups counted by threshold (sans-IO: lateness in, counts out)."""

    samples: int = 0
    max_ms: float = 0.0
    over: dict[int, int] = field(default_factory=lambda: dict.fromkeys(THRESHOLDS_MS, 0))

    def add(self, late_ms: float) -> None:
        self.samples += 1
        self.max_ms = max(self.max_ms, late_ms)
        for threshold in THRESHOLDS_MS:
            if late_ms > threshold:
                self.over[threshold] += 1

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"samples": self.samples, "max_ms": round(self.max_ms, 1)}
        out.update({f"over_{t}ms": n for t, n in self.over.items()})
        return out


def realtime_priority() -> bool:
    """SCHED_FIFO at the top priority for this process; False when not permitted."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))
    except (OSError, AttributeError):
        return False
    return True


def probe(seconds: float) -> StallCount:
    count = StallCount()
    clock = time.monotonic
    end = clock() + seconds
    last = clock()
    while last < end:
        time.sleep(INTERVAL)
        now = clock()
        count.add(max(0.0, (now - last - INTERVAL) * 1000))
        last = now
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.stalls", description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--start-at", type=float, default=0.0, help="epoch seconds to begin at")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    realtime = realtime_priority()
    time.sleep(max(0.0, args.start_at - time.time()))
    count = probe(args.seconds)
    report = {**count.as_dict(), "realtime": realtime}
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        priority = "SCHED_FIFO 99" if realtime else "normal priority (no permission for RT)"
        over = ", ".join(f"> {t} ms: {n}" for t, n in count.over.items())
        print(
            f"{count.samples} wake-ups in {args.seconds:g} s at {priority}: late {over}; "
            f"the latest by {count.max_ms:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
