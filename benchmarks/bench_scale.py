"""Benchmark: gen-synthetic at scale — patterns/s, wall and peak RSS of one dose (not a test).

For each target size, derives a design from the shipped one (same probe, doses, seeds; a larger
``random_field`` object so that the raster at the design's step gives about that many
positions; one ``sparse`` view, since a design needs at least one overlap view), runs
``gen-synthetic --dose <first dose>`` on it in a child process and reports the child's wall time
and peak resident memory (``ru_maxrss`` of that child, from ``os.wait4``). Files go under
``tmp/bench_scale`` and are deleted afterwards (``--keep`` keeps them).

    python benchmarks/bench_scale.py                       # about 1e5 and 2e5 patterns
    python benchmarks/bench_scale.py --patterns 20000      # or BENCH_SCALE_PATTERNS="20000": quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ptydose.core.design import load_design  # noqa: E402
from ptydose.core.physics import build_scan  # noqa: E402

#: A lines object costs O(lines x pixels) to draw, which at 1e5 positions dwarfs the generation.
OBJECT_MODEL = "random_field"


def object_side(raw: dict, target: int) -> int:
    """Smallest square object whose raster (the design's step, margin, jitter) has >= target positions."""
    scan, n = raw["scan"], int(raw["probe"]["size"])
    step = float(scan["step_px"])
    # centre_limits: lo = (N - 1)/2 + margin + 0.5 on each side, jitter kept inside both ends.
    border = 2 * ((n - 1) / 2.0 + float(scan.get("margin_px", 0.0)) + 0.5 + float(scan["jitter_px"]))
    per_axis = math.ceil(math.sqrt(target))
    per_axis += per_axis % 2  # rows are made even
    side = math.ceil(border + 1 + step * (per_axis - 1))
    while len(build_scan(scan, (side, side), n, 0)[0]) < target:
        side += 1
    return side


def scaled_design(base: Path, target: int) -> dict:
    raw = json.loads(base.read_text())
    side = object_side(raw, target)
    raw["name"] = f"{raw['name']}_scale_{target}"
    raw["description"] = f"{raw['name']}: bench_scale design, {side} x {side} object"
    raw["object"].update(shape=[side, side], model=OBJECT_MODEL)
    raw["object"].pop("image", None)
    raw["overlap_views"] = {"sparse": raw["overlap_views"].get("sparse", 0.2)}
    return raw


def run_child(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """Run ``cmd``; return its exit status, wall seconds and peak RSS in bytes (Linux: KiB units)."""
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    return proc.returncode, wall, usage.ru_maxrss * 1024


def main() -> int:
    env_sizes = os.environ.get("BENCH_SCALE_PATTERNS", "").split()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", type=Path, default=REPO / "plans" / "fly64_dose_overlap" / "design.json")
    parser.add_argument("--patterns", type=float, nargs="+", default=[float(s) for s in env_sizes] or [1e5, 2e5],
                        help="Target scan sizes (positions); default 1e5 2e5.")
    parser.add_argument("--dir", type=Path, default=REPO / "tmp" / "bench_scale")
    parser.add_argument("--keep", action="store_true", help="Keep the generated files.")
    args = parser.parse_args()

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{'target':>8} {'positions':>9} {'object':>11} {'files':>5} {'written':>9} {'wall':>8} "
          f"{'patterns/s':>10} {'peak RSS':>9}")
    failures = 0
    for target in (int(t) for t in args.patterns):
        work = args.dir / f"p{target}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        raw = scaled_design(args.design, target)
        design_path = work / "design.json"
        design_path.write_text(json.dumps(raw, indent=2))
        design = load_design(design_path)
        dose = design.doses[0]
        cmd = [sys.executable, "-m", "ptydose.gen_synthetic", "--design", str(design_path),
               "--phase-c-root", str(work / "phase_c"), "--phase-d-root", str(work / "phase_d"),
               "--dose", str(dose), "--no-progress", "--json"]
        log = work / "gen_synthetic.log"
        rc, wall, peak = run_child(cmd, log)
        if rc != 0:
            failures += 1
            print(f"{target:>8} gen-synthetic failed (exit {rc}); log: {log}")
            print(log.read_text()[-2000:])
            continue
        text = log.read_text()
        result = json.loads(text[text.index("{"):])
        positions = result["n_positions"]["scan"]
        written = sum(f["size_bytes"] for f in result["files"])
        side = raw["object"]["shape"][0]
        print(f"{target:>8} {positions:>9} {f'{side}x{side}':>11} {len(result['files']):>5} "
              f"{written / 1e9:>7.2f}GB {wall:>7.1f}s {positions / wall:>10,.0f} {peak / 2**20:>7.0f}MB")
        if not args.keep:
            shutil.rmtree(work)
    print(f"one dose ({load_design(args.design).doses[0]}) per size; object model {OBJECT_MODEL}; "
          "views: baseline + sparse; wall and peak RSS of the gen-synthetic child process")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
