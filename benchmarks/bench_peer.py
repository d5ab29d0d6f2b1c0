"""Benchmark: the baseline (pty-chi LSQML) beside its peers at equal CPU time, per dose.

Not a test (`make bench`). One process, one torch thread (so CPU time is the compute spent), the
same data and jobs for every method, methods interleaved in an order that alternates per dose:

* pty-chi LSQML, EPIE and RPIE with their registry recipes, CDTools ADAM with its recipe, all
  reached through the engine registry exactly as run-ptychi reaches them;
* the CPU budgets are what LSQML spends on ``--budget-epochs`` epochs (30/60/100) of each job;
* quality is the phase SSIM of ``ptydose.core.metrics.compare`` (what summarize reports), scored
  after the runs on objects kept at chunk ends;
* quality against CPU time: pty-chi keeps no schedule, so a run's checkpoint after ``e`` epochs is
  what an ``e``-epoch run gives; CDTools' Adam step decays over the planned epochs, so each of its
  points is a separate run planned to fit a budget. Between points, quality is interpolated
  linearly in CPU time; past a method's last point only within :data:`LAST_POINT_SLACK`.

Printed per job: each method's phase SSIM at every budget and its ratio to the best there, the
CPU time each needs to reach the best other method's quality at that budget, then the choice of
the shipped default (reconstructor and epochs) that meets the goal: at every dose at least the
best peer's SSIM at equal CPU time, and over the jobs at most half of 100-epoch LSQML's CPU time
at an equal or better mean SSIM. Every number goes to ``--json`` (default tmp/bench_peer.json).

Usage: python benchmarks/bench_peer.py [--design plans/fly64_dose_overlap/design.json]
       [--doses 1000,10000,100000] [--views dense] [--budget-epochs 30,60,100] [--tiny]
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch: CPU time = the work done, no spinning threads

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: (label, engine, algorithm): the baseline first.
METHODS = (("pty-chi LSQML", "ptychi", "LSQML"), ("pty-chi EPIE", "ptychi", "EPIE"),
           ("pty-chi RPIE", "ptychi", "RPIE"), ("CDTools ADAM", "cdtools", "ADAM"))
BASELINE = "pty-chi LSQML"
#: A method's last point stands for budgets up to this factor above its CPU time (timing jitter).
LAST_POINT_SLACK = 1.10
#: Planned epochs cover the largest budget with this margin (per-epoch cost is estimated).
EPOCH_MARGIN = 1.15
#: SSIM differences below this are ties (different runs of one deterministic method differ by 0).
TIE = 1e-3
#: The goal's CPU share of 100-epoch LSQML over all jobs.
GOAL_SHARE = 0.5


@dataclass
class Curve:
    """One method on one job: (CPU seconds, epochs, phase SSIM) points, CPU ascending."""

    points: list[tuple[float, int, float]] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    def sorted(self) -> list[tuple[float, int, float]]:
        return sorted(self.points)

    def at(self, cpu: float) -> float | None:
        """Quality at ``cpu`` seconds (linear between points), None before the first or well past the last."""
        pts = self.sorted()
        if not pts or cpu < pts[0][0]:
            return None
        for (c0, _, q0), (c1, _, q1) in zip(pts, pts[1:]):
            if c0 <= cpu <= c1:
                return q0 if c1 == c0 else q0 + (q1 - q0) * (cpu - c0) / (c1 - c0)
        last = pts[-1]
        return last[2] if cpu <= last[0] * LAST_POINT_SLACK else None

    def time_to(self, quality: float) -> float | None:
        """Least CPU time at which the (interpolated) curve reaches ``quality``; None if it never does."""
        pts = self.sorted()
        if not pts:
            return None
        if pts[0][2] >= quality:
            return pts[0][0]
        for (c0, _, q0), (c1, _, q1) in zip(pts, pts[1:]):
            if q0 < quality <= q1:
                return c0 + (c1 - c0) * (quality - q0) / (q1 - q0)
        return None


def _cpu() -> float:
    return time.process_time()


class Runner:
    """Runs one method on one input through the registry and records CPU time at each chunk end."""

    def __init__(self, design, chunk_epochs: int):
        from ptydose.core.run.engines.registry import engine_spec

        self.design = design
        self.chunk_epochs = chunk_epochs
        self.engines = {}
        self.specs = {}
        for _, name, _ in METHODS:
            if name not in self.engines:
                self.specs[name] = engine_spec(name)
                self.engines[name] = self.specs[name].load()
        self.checkpoints_supported = "control" in inspect.signature(self.engines["ptychi"].reconstruct).parameters

    def run(self, engine: str, algorithm: str, inputs, epochs: int, keep_checkpoints: bool) -> dict:
        """{cpu_at: {epoch: CPU s}, objects: {epoch: object}, cpu_s, epochs}."""
        spec = self.specs[engine]
        options = spec.options(spec.design_options(self.design, algorithm, {"chunk_epochs": self.chunk_epochs}))
        cpu_at: dict[int, float] = {}
        start = _cpu()

        def progress(done: int, total: int, loss, seconds: float) -> None:
            cpu_at[done] = _cpu() - start

        extra = {}
        if self.checkpoints_supported:
            from ptydose.core.run.engines.control import RunControl

            extra["control"] = RunControl(checkpoints=keep_checkpoints,
                                          max_checkpoints=max(1, math.ceil(epochs / self.chunk_epochs) + 1))
        result = self.engines[engine].reconstruct(inputs, algorithm, epochs, options, device="cpu",
                                                  progress=progress, **extra)
        total = _cpu() - start
        objects = dict(getattr(result, "checkpoints", {}) or {}) if keep_checkpoints else {}
        objects[epochs] = result.object
        cpu_at[epochs] = total
        return {"cpu_at": cpu_at, "objects": objects, "cpu_s": total, "epochs": epochs}


def per_epoch_cpu(cpu_at: dict[int, float]) -> float:
    """CPU per epoch after the first chunk (which also pays for setting the task up)."""
    ends = sorted(cpu_at)
    if len(ends) >= 2:
        return (cpu_at[ends[-1]] - cpu_at[ends[0]]) / (ends[-1] - ends[0])
    return cpu_at[ends[0]] / ends[0]


def _round_up(value: float, step: int) -> int:
    return max(step, int(math.ceil(value / step)) * step)


def bench_job(runner: Runner, path: Path, budgets_epochs: list[int], order: list[tuple[str, str, str]],
              cost: dict[str, float], plans: dict[str, list[int]], score) -> dict:
    """Every method on one input: curves of phase SSIM against CPU time, and the budgets."""
    from ptydose.core.run.engines.base import load_inputs

    inputs = load_inputs(path)
    curves = {label: Curve() for label, _, _ in METHODS}
    # The baseline sets the budgets, so it runs first whatever the order of the others.
    base_run = runner.run("ptychi", "LSQML", inputs, max(budgets_epochs), keep_checkpoints=True)
    cost[BASELINE] = per_epoch_cpu(base_run["cpu_at"])
    budgets = {e: base_run["cpu_at"].get(e) for e in budgets_epochs}
    missing = [e for e, cpu in budgets.items() if cpu is None]
    if missing:
        raise SystemExit(f"budget epochs {missing} are not chunk ends (chunk_epochs {runner.chunk_epochs})")
    top = max(budgets.values())
    runs = {BASELINE: [base_run]}
    for label, engine, algorithm in order:
        if label == BASELINE:
            continue
        if engine == "cdtools":
            # Each budget its own run (the step decays over the planned epochs). The run lengths are
            # planned on the first job of a view (two chunks measure the cost) and kept for the
            # others, so that every job has the same candidates.
            plan = plans.get(label)
            if plan is None:  # each run's cost per epoch (setup included) plans the next, longer one
                probe = runner.run(engine, algorithm, inputs, 2 * runner.chunk_epochs, keep_checkpoints=False)
                per_epoch = probe["cpu_s"] / probe["epochs"]
                runs[label] = []
                for e in budgets_epochs:
                    run = runner.run(engine, algorithm, inputs, max(1, round(budgets[e] / per_epoch)),
                                     keep_checkpoints=False)
                    per_epoch = run["cpu_s"] / run["epochs"]
                    runs[label].append(run)
                plans[label] = [run["epochs"] for run in runs[label]]
            else:
                runs[label] = [runner.run(engine, algorithm, inputs, epochs, keep_checkpoints=False)
                               for epochs in plan]
        else:
            per_epoch = cost.get(label)
            if per_epoch is None:  # first job: measure two chunks, then plan the run
                probe = runner.run(engine, algorithm, inputs, 2 * runner.chunk_epochs, keep_checkpoints=False)
                per_epoch = per_epoch_cpu(probe["cpu_at"])
            epochs = _round_up(EPOCH_MARGIN * top / per_epoch, runner.chunk_epochs)
            run = runner.run(engine, algorithm, inputs, epochs, keep_checkpoints=True)
            cost[label] = per_epoch_cpu(run["cpu_at"])
            runs[label] = [run]
    for label, method_runs in runs.items():
        for run in method_runs:
            for epoch, obj in sorted(run["objects"].items()):
                curves[label].points.append((run["cpu_at"][epoch], epoch, score(obj)))
            curves[label].runs.append({"epochs": run["epochs"], "cpu_s": run["cpu_s"]})
    return {"budgets": budgets, "curves": curves}


def table(job: dict) -> tuple[list[str], dict]:
    """Lines to print and the JSON numbers of one job."""
    budgets, curves = job["budgets"], job["curves"]
    lines, numbers = [], {"budgets_cpu_s": {str(e): c for e, c in budgets.items()}, "methods": {}}
    head = f"  {'method':<15}" + "".join(f"{'SSIM@' + str(e):>10}{'/best':>7}" for e in budgets)
    head += "".join(f"{'CPU to best@' + str(e):>17}" for e in budgets)
    lines.append(head)
    best = {e: max((q for q in (c.at(cpu) for c in curves.values()) if q is not None), default=None)
            for e, cpu in budgets.items()}
    for label, curve in curves.items():
        row = {"points": [{"cpu_s": c, "epochs": e, "phase_ssim": q} for c, e, q in curve.sorted()],
               "runs": curve.runs, "at_budget": {}}
        line = f"  {label:<15}"
        reach = ""
        for e, cpu in budgets.items():
            q = curve.at(cpu)
            ratio = None if q is None or not best[e] else q / best[e]
            others = [o.at(cpu) for name, o in curves.items() if name != label]
            target = max((o for o in others if o is not None), default=None)
            t = None if target is None else curve.time_to(target)
            row["at_budget"][str(e)] = {"cpu_s": cpu, "phase_ssim": q, "ratio_to_best": ratio,
                                        "best_other_ssim": target, "cpu_s_to_reach_best_other": t,
                                        "cpu_to_reach_vs_budget": None if t is None else t / cpu}
            line += f"{_fmt(q, '.3f'):>10}{_fmt(ratio, '.3f'):>7}"
            # Reached already at the first point: the time is an upper bound.
            bound = "<=" if t is not None and t == curve.sorted()[0][0] else ""
            row["at_budget"][str(e)]["reach_is_upper_bound"] = bool(bound)
            reach += f"{(bound + _fmt(t, '.1f') + ' s (' + _fmt(None if t is None else t / cpu, '.2f') + 'x)'):>17}"
        lines.append(line + reach)
        numbers["methods"][label] = row
    lines.append("  budgets (CPU s of LSQML at " + ", ".join(f"{e} epochs = {c:.1f}" for e, c in budgets.items())
                 + "); 'CPU to best@B': CPU time to reach the best other method's SSIM at B (x B; '-': not within "
                 "the run; '<=': already at the first point)")
    return lines, numbers


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def recommend(jobs: dict[str, dict], base_epochs: int) -> tuple[str, list[dict]]:
    """The default (method, epochs) meeting the goal on these jobs, and every candidate's figures."""
    candidates: dict[tuple[str, int], dict] = {}
    for job_id, job in jobs.items():
        curves = job["curves"]
        for label, curve in curves.items():
            for cpu, epochs, q in curve.sorted():
                peers = [o.at(cpu) for name, o in curves.items() if name != label]
                peer = max((p for p in peers if p is not None), default=None)
                entry = candidates.setdefault((label, epochs), {"jobs": {}})
                entry["jobs"][job_id] = {"cpu_s": cpu, "phase_ssim": q, "best_peer_ssim": peer}
    baseline = {job_id: next(((c, q) for c, e, q in job["curves"][BASELINE].sorted() if e == base_epochs), None)
                for job_id, job in jobs.items()}
    if any(v is None for v in baseline.values()):
        return f"no recommendation: LSQML {base_epochs} epochs missing", []
    base_cpu = sum(c for c, _ in baseline.values())
    base_ssim = sum(q for _, q in baseline.values()) / len(baseline)
    rows = []
    for (label, epochs), entry in candidates.items():
        if set(entry["jobs"]) != set(jobs):
            continue  # not measured on every job (CDTools' run lengths may differ per job)
        per_job = entry["jobs"]
        cpu = sum(j["cpu_s"] for j in per_job.values())
        ssim = sum(j["phase_ssim"] for j in per_job.values()) / len(per_job)
        beats_peers = all(j["best_peer_ssim"] is None or j["phase_ssim"] >= j["best_peer_ssim"] - TIE
                          for j in per_job.values())
        rows.append({"method": label, "epochs": epochs, "cpu_share_of_lsqml": cpu / base_cpu, "mean_phase_ssim": ssim,
                     "lsqml_mean_phase_ssim": base_ssim, "beats_peers_at_every_job": beats_peers,
                     "meets_goal": beats_peers and cpu <= GOAL_SHARE * base_cpu and ssim >= base_ssim - TIE})
    rows.sort(key=lambda r: (not r["meets_goal"], r["cpu_share_of_lsqml"]))
    if rows and rows[0]["meets_goal"]:
        r = rows[0]
        text = (f"recommendation: default {r['method']}, {r['epochs']} epochs: "
                f"{r['cpu_share_of_lsqml']:.0%} of LSQML {base_epochs}'s CPU time, mean phase SSIM "
                f"{r['mean_phase_ssim']:.3f} vs {base_ssim:.3f}, at least the best peer at equal CPU at every job")
    else:
        dominant = [r for r in rows if r["beats_peers_at_every_job"] and r["mean_phase_ssim"] >= base_ssim - TIE]
        if dominant:
            r = min(dominant, key=lambda r: r["cpu_share_of_lsqml"])
            text = (f"recommendation: no candidate meets the goal; closest: {r['method']}, {r['epochs']} epochs "
                    f"({r['cpu_share_of_lsqml']:.0%} of LSQML {base_epochs}'s CPU, mean SSIM "
                    f"{r['mean_phase_ssim']:.3f} vs {base_ssim:.3f}; the goal's CPU share is {GOAL_SHARE:.0%})")
        else:
            r = max(rows, key=lambda r: r["mean_phase_ssim"]) if rows else None
            text = ("recommendation: no candidate meets the goal" +
                    (f"; best mean SSIM: {r['method']}, {r['epochs']} epochs ({r['mean_phase_ssim']:.3f}, "
                     f"{r['cpu_share_of_lsqml']:.0%} of LSQML {base_epochs}'s CPU)" if r else ""))
    return text, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", type=Path, default=REPO / "plans" / "fly64_dose_overlap" / "design.json")
    parser.add_argument("--doses", default=None, help="comma-separated (default: the design's)")
    parser.add_argument("--views", default="dense", help="comma-separated: dense, sparse, baseline (train split)")
    parser.add_argument("--budget-epochs", default="30,60,100", help="LSQML epochs whose CPU time are the budgets")
    parser.add_argument("--chunk-epochs", type=int, default=5, help="epochs between checkpoints")
    parser.add_argument("--json", type=Path, default=REPO / "tmp" / "bench_peer.json")
    parser.add_argument("--tiny", action="store_true", help="smoke design, 2/4 epoch budgets (CI)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.design = REPO / "plans" / "smoke" / "design.json"
        args.budget_epochs, args.chunk_epochs = "2,4", 2
    budgets_epochs = sorted(int(e) for e in args.budget_epochs.split(","))
    if any(e % args.chunk_epochs for e in budgets_epochs):
        parser.error(f"--budget-epochs must be multiples of --chunk-epochs {args.chunk_epochs}")
    views = [v for v in args.views.split(",") if v]

    import torch

    from ptydose.core.contract import read_contract_npz
    from ptydose.core.design import load_design
    from ptydose.core.metrics import MetricSettings, compare
    from ptydose.core.synthetic import generate_study

    torch.set_num_threads(1)
    design = load_design(args.design)
    doses = [float(d) for d in args.doses.split(",")] if args.doses else list(design.doses)
    settings = MetricSettings(ms_ssim_sigma=float(design.metrics["ms_ssim_sigma"]),
                              illumination_threshold=float(design.metrics.get("illumination_threshold", 0.1)))
    runner = Runner(design, args.chunk_epochs)
    (REPO / "tmp").mkdir(exist_ok=True)
    jobs: dict[str, dict] = {}
    printed: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=REPO / "tmp") as tmp:
        work = Path(tmp)
        generate_study(args.design, work / "c", work / "d", doses=doses, progress=False)
        for view in views:
            cost: dict[str, float] = {}
            plans: dict[str, list[int]] = {}
            for i, dose in enumerate(doses):
                d = int(dose)
                path = (work / "c" / f"dose_{d}" / "patched_train.npz" if view == "baseline"
                        else work / "d" / f"dose_{d}" / view / f"{view}_train.npz")
                truth = read_contract_npz(path, check_values=False)

                def score(obj, truth=truth):
                    comparison = compare(obj, truth["objectGuess"], truth["probeGuess"], truth["xcoords"],
                                         truth["ycoords"], settings, design.object_pixel_size_m)
                    return float(comparison.metrics["phase"]["ssim"])

                order = list(METHODS) if i % 2 == 0 else list(METHODS)[::-1]  # alternate per dose
                job_id = f"dose_{d}/{view}/train"
                jobs[job_id] = bench_job(runner, path, budgets_epochs, order, cost, plans, score)
                lines, numbers = table(jobs[job_id])
                head = f"{job_id} ({len(truth['xcoords'])} positions), phase SSIM at equal CPU time (1 thread):"
                print(head, *lines, sep="\n", flush=True)
                printed += [head, *lines]
                jobs[job_id]["numbers"] = numbers
    base_epochs = max(budgets_epochs)
    text, rows = recommend(jobs, base_epochs)
    if not runner.checkpoints_supported:
        text += " (engines without checkpoints: final objects only)"
    print(text)
    result = {"design": str(args.design), "doses": doses, "views": views, "budget_epochs": budgets_epochs,
              "chunk_epochs": args.chunk_epochs, "threads": torch.get_num_threads(),
              "wall_s": time.perf_counter() - started, "jobs": {k: v["numbers"] for k, v in jobs.items()},
              "candidates": rows, "recommendation": text,
              "notes": {"tie": TIE, "last_point_slack": LAST_POINT_SLACK, "goal_cpu_share": GOAL_SHARE,
                        "quality": "phase SSIM, ptydose.core.metrics.compare with the design's metric settings"}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_name(args.json.name + ".tmp")
    tmp_json.write_text(json.dumps(result, indent=2))
    os.replace(tmp_json, args.json)
    print(f"numbers: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
