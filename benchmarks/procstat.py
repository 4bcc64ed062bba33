"""CPU time and resident memory of a process and its descendants, read from /proc.

A relay may run worker processes (the gateway with ``workers > 1``) or threads (PyAV
readers, GStreamer streaming threads); threads are inside their process's counters, and
children are found by walking parent ids. Children that already exited are counted through
the root's ``cutime``/``cstime`` (the kernel adds them when the parent reaps them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TreeSample:
    """One reading of a process tree."""

    pids: tuple[int, ...]
    cpu_seconds: float  # user + system of every live process, plus reaped children
    rss_bytes: int  # sum of VmRSS now
    hwm_bytes: int  # sum of VmHWM (each process's own peak; an upper bound of the tree's)
    # Time the tree's threads were ready to run but waited for a CPU (schedstat), seconds;
    # 0 unless sampled with run_wait.
    run_wait_seconds: float = 0.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out = []
    todo = [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def sample_tree(root: int, run_wait: bool = False) -> TreeSample:
    """CPU and memory of ``root`` and its descendants, and with ``run_wait`` their threads'
    run-queue wait (a file per thread: read at a window's edges, not at every memory
    sample); raises ProcessLookupError if gone."""
    pids = descendants(root)
    cpu_ticks = 0
    rss = hwm = wait_ns = 0
    alive = []
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            if pid == root:
                raise ProcessLookupError(root)
            continue
        alive.append(pid)
        # Fields 14-17 (utime, stime, cutime, cstime) are rest[11..14].
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        cpu_ticks += utime + stime
        if pid == root:
            cpu_ticks += cutime + cstime
        rss += _status_kib(pid, "VmRSS:") * 1024
        hwm += _status_kib(pid, "VmHWM:") * 1024
        if run_wait:
            wait_ns += run_queue_wait_ns(pid)
    return TreeSample(tuple(alive), cpu_ticks / CLOCK_TICKS, rss, hwm, wait_ns / 1e9)


def run_queue_wait_ns(pid: int) -> int:
    """Nanoseconds the threads of ``pid`` have spent runnable but not running, waiting for a
    CPU (the second field of each thread's /proc schedstat; 0 where the kernel has none)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


_POLICY_NAMES = {
    os.SCHED_OTHER: "SCHED_OTHER",
    os.SCHED_BATCH: "SCHED_BATCH",
    os.SCHED_IDLE: "SCHED_IDLE",
    os.SCHED_FIFO: "SCHED_FIFO",
    os.SCHED_RR: "SCHED_RR",
}


def scheduling(pid: int) -> dict[str, str | int | None]:
    """How ``pid`` is scheduled: policy, nice and autogroup (None where the kernel has no
    autogroups). Raises ProcessLookupError if the process is gone."""
    policy = os.sched_getscheduler(pid)
    nice = os.getpriority(os.PRIO_PROCESS, pid)
    try:
        # "/autogroup-12 nice 0": the group's name is what tells two groups apart.
        autogroup: str | None = Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except (OSError, IndexError):
        autogroup = None
    return {"policy": _POLICY_NAMES.get(policy, str(policy)), "nice": nice, "autogroup": autogroup}


def load_below_relay(
    relay: dict[str, Any], cameras: list[dict[str, Any]], readers: list[dict[str, Any]]
) -> list[str]:
    """Why the load is not scheduled below the relay (empty when it is): cameras under
    SCHED_IDLE, readers at a higher nice than the relay or under SCHED_IDLE, and all of them
    in the relay's autogroup, where a policy or nice value counts against the relay at all."""
    problems = []
    for i, cam in enumerate(cameras):
        if cam["policy"] != "SCHED_IDLE":
            problems.append(f"camera process {i} runs {cam['policy']}, not SCHED_IDLE")
    for i, rdr in enumerate(readers):
        if rdr["policy"] != "SCHED_IDLE" and rdr["nice"] <= relay["nice"]:
            problems.append(f"reader process {i} runs at nice {rdr['nice']}, not below the relay")
    for name, procs in (("camera", cameras), ("reader", readers)):
        for i, proc in enumerate(procs):
            if proc["autogroup"] != relay["autogroup"]:
                problems.append(
                    f"{name} process {i} is in {proc['autogroup']}, the relay in "
                    f"{relay['autogroup']}: groups share the CPU as equals"
                )
    return problems


def machine_description() -> dict[str, str | int | float]:
    """nproc, CPU model, memory, kernel: what a result needs to be compared with another."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except (OSError, ValueError):
        pass
    uname = os.uname()
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": f"{uname.sysname} {uname.release}",
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_cpu_ticks() -> tuple[int, int]:
    """(all CPU ticks, ticks stolen by the hypervisor) of the whole machine since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0, 0
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return sum(ticks), ticks[7] if len(ticks) > 7 else 0


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of the machine's CPU time the hypervisor gave to others between two readings
    (on a virtual machine, time neither the relay nor the load could use)."""
    total = after[0] - before[0]
    return round((after[1] - before[1]) / total, 3) if total > 0 else None
