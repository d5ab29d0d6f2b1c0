"""Adaptive worker threads: the /proc/stat reading, the choice of thread count, and a real competitor."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ptydose.core.run import threads
from ptydose.core.run.local import threads_per_worker, usable_cores

STAT = textwrap.dedent("""\
    cpu  300 10 100 900 20 5 5 0 0 0
    cpu0 100 0 50 400 10 0 0 0 0 0
    cpu1 200 10 50 500 10 5 5 0 0 0
    intr 12345 1 2
    ctxt 999
    """)


def test_parse_proc_stat_sums_busy_and_total_ticks_of_the_chosen_cores():
    """Busy = user+nice+system+irq+softirq+steal; total adds idle and iowait; the aggregate line is skipped."""
    assert threads.parse_proc_stat(STAT, None) == (150 + 270, 560 + 780)
    assert threads.parse_proc_stat(STAT, {0}) == (150, 560)
    assert threads.parse_proc_stat(STAT, {1}) == (270, 780)
    assert threads.parse_proc_stat(STAT, {7}) is None
    assert threads.parse_proc_stat("garbage\n", None) is None


def test_steal_counts_as_busy():
    """Ticks the hypervisor gave away are a core someone else uses."""
    assert threads.parse_proc_stat("cpu0 0 0 0 60 0 0 0 40\n", None) == (40, 100)


def test_others_busy_cores_subtracts_our_own_cpu_time():
    """Over 100 ticks per core on 2 cores: 150 busy ticks, 50 of them ours -> others kept 1 core busy."""
    before = threads.CpuSample(0.0, busy_ticks=1000, total_ticks=5000, own_ticks=10.0)
    after = threads.CpuSample(1.0, busy_ticks=1150, total_ticks=5200, own_ticks=60.0)
    assert threads.others_busy_cores(before, after, 2) == pytest.approx(1.0)
    # Our own time exceeding the busy count (tick rounding) is never negative.
    assert threads.others_busy_cores(before, threads.CpuSample(1.0, 1010, 5200, 60.0), 2) == 0.0
    assert threads.others_busy_cores(before, before, 2) is None  # no ticks elapsed: nothing to judge


@pytest.mark.parametrize(("others", "cores", "ceiling", "expected"), [
    (0.0, 2, 2, 2),     # alone: the worker's share
    (0.25, 2, 2, 2),    # background noise up to TAKEN_FRACTION leaves the core free
    (0.3, 2, 2, 1),     # more than that: the core is taken
    (0.67, 2, 2, 1),    # a spinner sharing 2 cores with our 2 threads gets 2/3 of a core
    (1.0, 2, 2, 1),
    (3.5, 2, 2, 1),     # a loaded machine: never below 1
    (1.0, 16, 8, 8),    # plenty left: capped at the worker's share
    (10.0, 16, 8, 6),
])
def test_threads_for(others, cores, ceiling, expected):
    assert threads.threads_for(others, cores, ceiling) == expected


def test_quota_cores_reads_cgroup_cpu_max(tmp_path):
    path = tmp_path / "cpu.max"
    path.write_text("150000 100000\n")
    assert threads.quota_cores(path) == 2  # 1.5 cores of quota: 2 threads can use it
    path.write_text("max 100000\n")
    assert threads.quota_cores(path) is None
    assert threads.quota_cores(tmp_path / "absent") is None


def test_threads_per_worker_shares_the_usable_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_worker(1) == usable_cores()
    assert threads_per_worker(10 * usable_cores()) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_worker(1) is None  # the user's choice stands


PROBE = textwrap.dedent("""\
    import json, os, sys, time
    import torch
    from ptydose.core.run import threads
    {setup}
    torch.set_num_threads(2)
    threads.set_thread_ceiling(2)
    first = threads.adapt_threads()
    again = threads.adapt_threads()
    print(json.dumps({{"first": first, "again": again, "torch": torch.get_num_threads()}}))
    """)


def _probe(setup: str = "", env: dict | None = None) -> dict:
    import json

    full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.ADAPT_ENV)}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], env=full_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_spinning_competitor_on_our_cores_takes_a_thread_away():
    """Pinned to 2 cores with a process spinning on one of them, the job gets 1 thread (any extra load
    on the machine can only lower it further), and torch is set to it."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpus[0]}}})\n"
                                                      "while True: pass"])
    try:
        result = _probe(setup=f"os.sched_setaffinity(0, {set(cpus)})\ntime.sleep(0.3)")
    finally:
        spinner.kill()
        spinner.wait()
    assert result["first"] == 1 and result["torch"] == 1
    assert result["again"] == 1  # a call right after the first keeps the count (window too short to judge)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_switched_off_by_the_user_or_by_the_fixed_policy():
    """OMP_NUM_THREADS (the user's count) or PTYDOSE_ADAPT_THREADS=0: nothing changes, None returned."""
    for env in ({"OMP_NUM_THREADS": "2"}, {threads.ADAPT_ENV: "0"}):
        result = _probe(env=env)
        assert result["first"] is None and result["again"] is None and result["torch"] == 2


def test_without_proc_stat_nothing_changes(monkeypatch, tmp_path):
    """No /proc (another OS, a sandbox): adapt_threads returns None and leaves torch alone."""
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ADAPT_ENV, raising=False)
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "no_proc_stat")
    monkeypatch.setattr(threads, "_STATE", threads._State())
    before = torch.get_num_threads()
    assert threads.adapt_threads() is None
    assert torch.get_num_threads() == before


def test_without_torch_imported_nothing_is_imported():
    """A process that never imported torch (planning, the parent) gets None and no torch import."""
    code = ("import sys\nfrom ptydose.core.run.threads import adapt_threads\n"
            "print(adapt_threads(), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "False"]


@pytest.mark.parametrize(("engine", "algorithm"), [("ptychi", "LSQML"), ("cdtools", "ADAM")])
def test_the_thread_count_does_not_change_a_reconstruction(smoke_data, engine, algorithm, monkeypatch):
    """Adapting threads to the load must not make results depend on it: 1 and 2 torch threads give
    bit-identical objects (so a rerun on a busier machine reproduces the published numbers)."""
    import numpy as np
    import torch

    from ptydose.core.design import load_design
    from ptydose.core.run.engines.base import load_inputs
    from ptydose.core.run.engines.registry import engine_spec

    monkeypatch.setenv("PTYDOSE_ADAPT_THREADS", "0")  # the counts under test, not the load's
    design = load_design(smoke_data["design"])
    inputs = load_inputs(smoke_data["phase_d_root"] / "dose_1000" / "dense" / "dense_train.npz")
    spec = engine_spec(engine)
    options = spec.options(spec.design_options(design, algorithm, {"chunk_epochs": 2}))
    before = torch.get_num_threads()
    objects = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            objects.append(spec.load().reconstruct(inputs, algorithm, 4, options, device="cpu").object)
            assert torch.get_num_threads() == count
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(objects[0], objects[1])
