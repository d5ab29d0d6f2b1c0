"""Worker threads under contention: before each chunk of epochs, use only the cores that are free.

Why: torch's OpenMP threads meet at a barrier after every parallel region, and libgomp's threads
busy-wait there. A job with as many threads as cores is then as slow as its most preempted thread:
one competing CPU-bound process made a 2-thread job on 2 cores about 3-4x slower, on a loaded
shared machine 10-30x, while 1 thread lost only its share. A fixed setting cannot serve both the
quiet and the loaded machine (measured in ``benchmarks/bench_contention.py``), so the count adapts:

* the measurement: how many cores *other* processes kept busy since the last call, from
  ``/proc/stat`` (busy clock ticks of the cores this process may run on) minus this process's own
  CPU time (``os.times``) over the same interval. The interval is the last chunk itself, so it costs
  two small reads, no waiting; only a process's first call waits :data:`PROBE_S` to measure at all;
* the choice: every core others used more than :data:`TAKEN_FRACTION` of is taken; the job gets the
  cores left, at least 1 and at most its share (the thread count the worker was given, or torch's
  count at the first call), so it grows back when a competitor leaves.

Without ``/proc`` (not Linux), with ``OMP_NUM_THREADS`` set (the user chose) or with
``PTYDOSE_ADAPT_THREADS=0``, :func:`adapt_threads` changes nothing and returns None.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: Switch: "0" keeps torch's thread count as the worker set it (today's fixed policy).
ADAPT_ENV = "PTYDOSE_ADAPT_THREADS"
#: Where the kernel's per-core tick counters are (a module value so that tests can point elsewhere).
PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
#: The first call's window: 5 clock ticks per core at 100 Hz, enough to tell a spinning competitor
#: (all 5) from an idle core (0-1).
PROBE_S = 0.05
#: A window shorter than this (two calls in a row) holds too few ticks to judge: keep the count.
MIN_WINDOW_S = 0.02
#: A core others use more than this fraction of is taken: a thread placed on it would be preempted
#: often enough to stall every barrier of the job.
TAKEN_FRACTION = 0.25


@dataclass(frozen=True)
class CpuSample:
    """One reading: wall clock, busy and total ticks of the cores we may use, our own CPU ticks."""

    wall_s: float
    busy_ticks: int
    total_ticks: int
    own_ticks: float


@dataclass
class _State:
    ceiling: int | None = None  # the worker's share; None: torch's count at the first call
    current: int | None = None
    last: CpuSample | None = None


_STATE = _State()


def set_thread_ceiling(threads: int | None) -> None:
    """The most threads :func:`adapt_threads` may give this process (the worker's share of the cores)."""
    _STATE.ceiling = threads if threads is None else max(1, int(threads))
    _STATE.current = None


def parse_proc_stat(text: str, cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over the ``cpuN`` lines of ``cpus`` (None: all) in /proc/stat text.

    Busy is user + nice + system + irq + softirq + steal (steal: the hypervisor gave the core to
    someone else); idle and iowait are free. None when no line matches.
    """
    busy = total = 0
    found = False
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        fields = line.split()
        try:
            cpu = int(fields[0][3:])
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            continue
        if cpus is not None and cpu not in cpus:
            continue
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
        found = True
    return (busy, total) if found else None


def usable_cpus() -> set[int] | None:
    """The cores this process may run on (its affinity), None where the platform does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def quota_cores(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Cores a cgroup v2 CPU quota allows (``cpu.max`` "quota period", rounded up), None without one."""
    try:
        quota, period = path.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def take_sample(cpus: set[int] | None) -> CpuSample | None:
    """Read /proc/stat and this process's CPU time now; None without /proc."""
    try:
        text = PROC_STAT.read_text()
    except OSError:
        return None
    ticks = parse_proc_stat(text, cpus)
    if ticks is None:
        return None
    times = os.times()
    return CpuSample(time.monotonic(), ticks[0], ticks[1], (times.user + times.system) * _clock_ticks())


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


def others_busy_cores(before: CpuSample, after: CpuSample, n_cores: int) -> float | None:
    """Cores other processes kept busy between two samples (>= 0); None when the window holds no ticks."""
    elapsed_ticks = (after.total_ticks - before.total_ticks) / max(1, n_cores)  # ticks per core
    if elapsed_ticks <= 0:
        return None
    others = (after.busy_ticks - before.busy_ticks) - (after.own_ticks - before.own_ticks)
    return max(0.0, others / elapsed_ticks)


def threads_for(others: float, cores: int, ceiling: int) -> int:
    """Threads for the next chunk: the cores others leave (a core used > TAKEN_FRACTION is theirs), in [1, ceiling]."""
    taken = max(0, math.ceil(others - TAKEN_FRACTION))
    return max(1, min(ceiling, cores - taken))


def adapt_threads() -> int | None:
    """Set torch's thread count for the next chunk of epochs from the cores free now; returns it (None: unchanged).

    Cheap: two small file reads, except a process's first call, which measures for :data:`PROBE_S`.
    """
    if os.environ.get(ADAPT_ENV, "1") == "0" or os.environ.get("OMP_NUM_THREADS"):
        return None
    torch = sys.modules.get("torch")  # never imports torch: a process without it has nothing to set
    if torch is None:
        return None
    cpus = usable_cpus()
    cores = len(cpus) if cpus else (os.cpu_count() or 1)
    quota = quota_cores()
    if quota is not None:
        cores = min(cores, quota)
    state = _STATE
    if state.ceiling is None:
        state.ceiling = max(1, torch.get_num_threads())
    now = take_sample(cpus)
    if now is None:
        return None
    before = state.last
    if before is None:  # first call: no interval yet, measure a short one
        time.sleep(PROBE_S)
        before, now = now, take_sample(cpus)
        if now is None:
            return None
    elif now.wall_s - before.wall_s < MIN_WINDOW_S and state.current is not None:
        return state.current
    state.last = now
    n_cores = len(cpus) if cpus else (os.cpu_count() or 1)
    others = others_busy_cores(before, now, n_cores)
    if others is None:
        return state.current
    threads = threads_for(others, cores, state.ceiling)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    state.current = threads
    return threads
