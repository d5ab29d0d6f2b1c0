"""Benchmark: a pty-chi job alone and beside one competing CPU-bound process, per thread policy.

Not a test (`make bench`). Side by side in one run (the cells of one repeat interleaved), for each
policy and scenario, the job's seconds inside the engine:

* ``alone``: the machine otherwise as it is;
* ``contended``: one other process spins on one core for the whole job (a shared node, a second
  worker, a user's other work);
* ``arrives``: the competitor starts a third of the way into the job (the policy must notice it
  between chunks of epochs).

Then each scenario's ratio to ``alone``, and each policy's ``alone`` against today's. The goal:
contended / alone <= 1.5 (one core lost of the worker's cores), and alone no slower than today's.

Policies (the job's process set up before torch is imported):

* ``today``: what workers did before adaptive threads: the cores shared out (2 threads on 2
  cores), OpenMP's default wait policy (libgomp busy-waits between parallel regions, so a
  competitor steals a spinning core and every barrier waits for it), never adapted;
* ``passive``: today's, with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep);
* ``1thread``: one thread (nothing to wait for);
* ``run-ptychi``: exactly what a run-ptychi worker does now (``local.configure_threads``, and
  ``threads.adapt_threads`` before every chunk);
* ``run-ptychi+spin10k``: the same with ``GOMP_SPINCOUNT=10000`` (shorter busy-waiting).

Usage: python benchmarks/bench_contention.py [--design plans/fly64_dose_overlap/design.json]
       [--dose 10000] [--view dense] [--epochs 30] [--repeats 2] [--policies a,b] [--scenarios a,b]
       [--json tmp/bench_contention.json (the default)]
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

# name -> (environment changes: None removes the variable, use run-ptychi's worker set-up)
POLICIES = {
    "today": ({"OMP_WAIT_POLICY": None, "PTYDOSE_ADAPT_THREADS": "0"}, False),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE", "PTYDOSE_ADAPT_THREADS": "0"}, False),
    "1thread": ({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None}, False),
    "run-ptychi": ({"OMP_WAIT_POLICY": None}, True),
    "run-ptychi+spin10k": ({"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}, True),
}
SCENARIOS = ("alone", "contended", "arrives")
ARRIVAL_FRACTION = 1 / 3  # of the policy's alone time, when the competitor of ``arrives`` starts

JOB = r"""
import json, os, sys
spec = json.loads(sys.argv[1])
from ptydose.core.run import local
from ptydose.core.run.threads import adapt_threads
import torch
if spec["worker_setup"]:
    local.configure_threads(local.threads_per_worker(1))
elif not os.environ.get("OMP_NUM_THREADS"):
    torch.set_num_threads(local.threads_per_worker(1))  # the cores shared out, as workers did
from ptydose.core.run.engines.base import load_inputs
from ptydose.core.run.engines.registry import engine_spec
engine_def = engine_spec("ptychi")
engine = engine_def.load()
inputs = load_inputs(spec["input"])
options = engine_def.options(spec["options"])
threads = []
def progress(done, total, loss, seconds):
    threads.append(torch.get_num_threads())
    if spec["worker_setup"]:
        adapt_threads()  # before the next chunk (the engine's chunk loop may call it too: a no-op then)
print("ready", flush=True)
sys.stdin.readline()  # start together with the competitor's clock
if spec["worker_setup"]:
    adapt_threads()
result = engine.reconstruct(inputs, "LSQML", spec["epochs"], options, device="cpu", progress=progress)
print(json.dumps({"seconds": result.reconstruction_s, "threads": threads}), flush=True)
"""


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _env(changes: dict) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cell(spec: dict, policy: str, scenario: str, arrival_s: float) -> dict:
    """One job under one policy and scenario: engine seconds and the thread count after each chunk."""
    changes, worker_setup = POLICIES[policy]
    job = subprocess.Popen([sys.executable, "-c", JOB, json.dumps({**spec, "worker_setup": worker_setup})],
                           env=_env(changes), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    spinner = None
    try:
        if job.stdout.readline().strip() != "ready":  # torch imported, data loaded: only the run is timed
            raise SystemExit(f"{policy}/{scenario}: job failed before starting: {job.stderr.read()[-2000:]}")
        if scenario == "contended":
            spinner = _spinner()
            time.sleep(0.5)  # the competitor is running before the job starts
        job.stdin.write("go\n")
        job.stdin.flush()
        if scenario == "arrives":
            time.sleep(arrival_s)
            spinner = _spinner()
        out, err = job.communicate(timeout=1800)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        if job.poll() is None:
            job.kill()
            job.wait()
    if job.returncode != 0:
        raise SystemExit(f"{policy}/{scenario}: job failed: {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def prepare(design: Path, dose: int, view: str, work: Path) -> tuple[Path, dict]:
    from ptydose.core.design import load_design
    from ptydose.core.run.engines.registry import engine_spec
    from ptydose.core.synthetic import generate_study

    generate_study(design, work / "c", work / "d", doses=[dose], progress=False)
    path = (work / "c" / f"dose_{dose}" / "patched_train.npz" if view == "baseline"
            else work / "d" / f"dose_{dose}" / view / f"{view}_train.npz")
    options = engine_spec("ptychi").design_options(load_design(design), "LSQML", {})
    return path, options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", type=Path, default=REPO / "plans" / "fly64_dose_overlap" / "design.json")
    parser.add_argument("--dose", type=int, default=10000)
    parser.add_argument("--view", default="dense")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per cell")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, from: " + ", ".join(POLICIES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: " + ", ".join(SCENARIOS))
    parser.add_argument("--json", type=Path, default=REPO / "tmp" / "bench_contention.json",
                        help="also write the numbers here")
    args = parser.parse_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [p for p in policies if p not in POLICIES] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown policy or scenario: {', '.join(unknown)}")
    if "alone" not in scenarios:
        scenarios.insert(0, "alone")  # every ratio is against it
    (REPO / "tmp").mkdir(exist_ok=True)
    cells: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "tmp") as tmp:
        path, options = prepare(args.design, args.dose, args.view, Path(tmp))
        spec = {"input": str(path), "options": options, "epochs": args.epochs}
        for repeat in range(args.repeats):
            # Interleaved, and the policy order reversed every other repeat: drift on a shared
            # machine falls on every policy alike.
            order = policies if repeat % 2 == 0 else policies[::-1]
            for policy in order:
                for scenario in scenarios:
                    alone = [c["seconds"] for c in cells.get((policy, "alone"), [])]
                    arrival = ARRIVAL_FRACTION * (min(alone) if alone else 1.0)
                    cells.setdefault((policy, scenario), []).append(run_cell(spec, policy, scenario, arrival))
    best = {key: min(runs, key=lambda c: c["seconds"]) for key, runs in cells.items()}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"pty-chi LSQML, {args.epochs} epochs, dose {args.dose}, {args.view}/train, {cores} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the end; best of {args.repeats}, seconds in the engine")
    header = f"{'policy':<19}" + "".join(f"{s + ' s':>13}" for s in scenarios)
    header += "".join(f"{s + '/alone':>17}" for s in scenarios if s != "alone") + f"{'alone/today':>13}  threads per chunk"
    print(header)
    reference = best.get(("today", "alone"))
    rows = {}
    for policy in policies:
        alone = best[(policy, "alone")]["seconds"]
        line = f"{policy:<19}" + "".join(f"{best[(policy, s)]['seconds']:>13.2f}" for s in scenarios)
        line += "".join(f"{best[(policy, s)]['seconds'] / alone:>17.2f}" for s in scenarios if s != "alone")
        vs_today = alone / reference["seconds"] if reference else float("nan")
        line += f"{vs_today:>13.2f}  " + " ".join(f"{s}:{''.join(map(str, best[(policy, s)]['threads']))}"
                                                  for s in scenarios)
        print(line)
        rows[policy] = {s: {"seconds": [c["seconds"] for c in cells[(policy, s)]],
                            "best_seconds": best[(policy, s)]["seconds"],
                            "threads_per_chunk": best[(policy, s)]["threads"],
                            "ratio_to_alone": best[(policy, s)]["seconds"] / alone} for s in scenarios}
        rows[policy]["alone_vs_today"] = vs_today
    if "run-ptychi" in policies and "contended" in scenarios:
        ratio = rows["run-ptychi"]["contended"]["ratio_to_alone"]
        print(f"run-ptychi: contended/alone {ratio:.2f} (goal <= 1.5)"
              + (f", alone/today {rows['run-ptychi']['alone_vs_today']:.2f} (goal <= 1, within noise)"
                 if reference else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"dose": args.dose, "view": args.view, "epochs": args.epochs,
                                         "cores": cores, "repeats": args.repeats, "policies": rows}, indent=2))


if __name__ == "__main__":
    main()
