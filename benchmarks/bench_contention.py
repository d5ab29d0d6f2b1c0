"""Benchmark: a pty-chi job alone and beside one competing CPU-bound process, per thread policy.

Not a test (`make bench`). Side by side in one run, for each policy:

* ``alone``: the job's seconds inside the engine with the machine otherwise as it is;
* ``contended``: the same job while one other process spins on one core (what a shared node,
  a second worker or a user's other work does);
* the ratio contended / alone, and each policy's ``alone`` against the ``spin`` policy's.

Policies (environment of the job's process, set before torch is imported):

* ``spin``: OpenMP's default wait policy at 2 threads (libgomp busy-waits between parallel
  regions, so a competitor steals the spinning core and every barrier waits for it);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` at 2 threads (idle threads sleep);
* ``1thread``: one thread (nothing to wait for);
* ``run-ptychi``: whatever the run path's worker sets up (:func:`ptydose.core.run.local.worker_environment`
  if it exists), so the shipped choice is measured with the others.

Usage: python benchmarks/bench_contention.py [--design plans/fly64_dose_overlap/design.json]
       [--dose 10000] [--view dense] [--epochs 30] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

POLICIES = {
    "spin": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None},
    "passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "1thread": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None},
    "spin10k": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"},
    "spin100k": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "100000"},
}

JOB = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
setup = spec.get("setup")
if setup:  # the run path's own worker set-up, before torch is imported
    import importlib
    module, _, name = setup.rpartition(".")
    getattr(importlib.import_module(module), name)()
from ptydose.core.run.engines.base import load_inputs
from ptydose.core.run.engines.registry import engine_spec
engine_def = engine_spec("ptychi")
engine = engine_def.load()
inputs = load_inputs(spec["input"])
options = engine_def.options(spec["options"])
result = engine.reconstruct(inputs, "LSQML", spec["epochs"], options, device="cpu")
import torch
print(json.dumps({"seconds": result.reconstruction_s, "threads": torch.get_num_threads()}))
"""


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _run_job(spec: dict, env_changes: dict) -> dict:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    out = subprocess.run([sys.executable, "-c", JOB, json.dumps(spec)], env=env, capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"job failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _prepare(design: Path, dose: int, view: str, work: Path) -> tuple[Path, dict]:
    from ptydose.core.design import load_design
    from ptydose.core.run.engines.registry import engine_spec
    from ptydose.core.synthetic import generate_study

    generate_study(design, work / "c", work / "d", doses=[dose], progress=False)
    path = (work / "c" / f"dose_{dose}" / "patched_train.npz" if view == "baseline"
            else work / "d" / f"dose_{dose}" / view / f"{view}_train.npz")
    options = engine_spec("ptychi").design_options(load_design(design))
    return path, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", type=Path, default=REPO / "plans" / "fly64_dose_overlap" / "design.json")
    parser.add_argument("--dose", type=int, default=10000)
    parser.add_argument("--view", default="dense")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per cell")
    args = parser.parse_args()
    policies = dict(POLICIES)
    try:
        from ptydose.core.run import local

        if hasattr(local, "worker_environment"):
            policies["run-ptychi"] = {"setup": "ptydose.core.run.local.worker_environment"}
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(dir=REPO / "tmp") as tmp:
        path, options = _prepare(args.design, args.dose, args.view, Path(tmp))
        base = {"input": str(path), "options": options, "epochs": args.epochs}
        rows = {}
        for name, env_changes in policies.items():
            spec = dict(base)
            env = dict(env_changes)
            if "setup" in env:
                spec["setup"] = env.pop("setup")
                env = {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None}
            alone = min(_run_job(spec, env)["seconds"] for _ in range(args.repeats))
            times = []
            for _ in range(args.repeats):
                spinner = _spinner()
                try:
                    time.sleep(0.5)
                    times.append(_run_job(spec, env)["seconds"])
                finally:
                    spinner.kill()
                    spinner.wait()
            rows[name] = (alone, min(times))
    print(f"pty-chi LSQML, {args.epochs} epochs, dose {args.dose}, {args.view}/train, {os.cpu_count()} cores; "
          f"best of {args.repeats}")
    print(f"{'policy':<11} {'alone s':>8} {'contended s':>12} {'contended/alone':>16} {'alone/spin alone':>17}")
    spin_alone = rows["spin"][0]
    for name, (alone, contended) in rows.items():
        print(f"{name:<11} {alone:>8.2f} {contended:>12.2f} {contended / alone:>16.2f} {alone / spin_alone:>17.2f}")


if __name__ == "__main__":
    main()
