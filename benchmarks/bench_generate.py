"""Benchmark gen-synthetic against the FFT + |.|^2 + Poisson floor (not a test; `make bench`).

Side by side in one run, best of ``--repeats``:

* generation: gen-synthetic's own batch pipeline — pty-chi's forward model for every scan
  position of the design on the first dose (kept in a temporary file for the others, as
  gen-synthetic does), then per dose the Poisson draw and sqrt(counts)/scale;
* floor: for the same number of patterns and shape, one fft2 of a complex64 batch, |.|^2 once,
  then per dose a Poisson draw of it — the least any generator must do.

Also prints patterns/s, the Y windows' cost, positions per split and view, measured vs nominal
counts per dose, and the end-to-end time of writing every file (generate_study into a temporary
folder).

Usage: python benchmarks/bench_generate.py [--design plans/fly64_dose_overlap/design.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ptydose.core.design import load_design  # noqa: E402
from ptydose.core.synthetic import (  # noqa: E402
    BATCH_SIZE,
    DoseCounts,
    ExpectedIntensities,
    build_geometry,
    diffraction_batches,
    generate_study,
    window_batches,
)


def run_generation(geometry, doses, spill_dir: Path):
    """Every dose's diffraction batches through gen-synthetic's pipeline (nothing written)."""
    start = time.perf_counter()
    results = []
    expected = ExpectedIntensities(geometry, spill_dir if len(doses) > 1 else None)
    try:
        for dose in doses:
            counts = DoseCounts.start(geometry, dose)
            for _ in diffraction_batches(expected, counts, progress=False):
                pass
            results.append(counts)
    finally:
        expected.close()
    return time.perf_counter() - start, results


def run_windows(geometry) -> float:
    start = time.perf_counter()
    for _ in window_batches(geometry, "Y", progress=False):
        pass
    return time.perf_counter() - start


def run_floor(n_patterns: int, n: int, doses, seed: int = 0):
    rng = np.random.default_rng(seed)
    exit_waves = (rng.standard_normal((BATCH_SIZE, n, n)) + 1j * rng.standard_normal((BATCH_SIZE, n, n)))
    exit_waves = (exit_waves / (n * np.sqrt(2.0 * n * n))).astype(np.complex64)  # ~unit total intensity
    start = time.perf_counter()
    intensity = np.empty((n_patterns, n, n), dtype=np.float32)
    for s in range(0, n_patterns, BATCH_SIZE):
        k = min(BATCH_SIZE, n_patterns - s)
        far = scipy.fft.fft2(exit_waves[:k])
        intensity[s:s + k] = far.real ** 2 + far.imag ** 2
    for dose in doses:
        noise = np.random.default_rng([seed, dose])
        for s in range(0, n_patterns, BATCH_SIZE):
            noise.poisson(intensity[s:s + BATCH_SIZE].astype(np.float64) * dose)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", default=str(REPO / "plans" / "fly64_dose_overlap" / "design.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    design = load_design(args.design)
    t0 = time.perf_counter()
    geometry = build_geometry(design)
    t_geometry = time.perf_counter() - t0
    n_pos, n, doses = len(geometry.coords), design.probe_size, design.doses
    n_patterns = n_pos * len(doses)

    gen_times, floor_times, window_times = [], [], []
    results = None
    with tempfile.TemporaryDirectory() as spill:
        for _ in range(args.repeats):  # interleaved so both see the same machine state
            t, results = run_generation(geometry, doses, Path(spill))
            gen_times.append(t)
            floor_times.append(run_floor(n_pos, n, doses))
            window_times.append(run_windows(geometry))
    t_gen, t_floor, t_windows = min(gen_times), min(floor_times), min(window_times)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_study(args.design, Path(tmp) / "c", Path(tmp) / "d", force=True, progress=False)
        t_write = time.perf_counter() - t0

    print(f"design: {design.path} (N={n}, object {design.object_shape}, {n_pos} positions, doses {doses})")
    print(f"probe diameter: nominal {geometry.probe_meta['nominal_diameter_px']} px, measured "
          f"{geometry.probe_meta['measured_diameter_px']} px ({geometry.probe_meta['diameter_definition']})")
    print(f"geometry (object, probe, scan, views): {t_geometry:.3f} s")
    print(f"patterns simulated: {n_patterns} ({n_pos} positions x {len(doses)} doses), best of {args.repeats}")
    print(f"  generation : {t_gen:.3f} s  ({n_patterns / t_gen:,.0f} patterns/s)")
    print(f"  floor      : {t_floor:.3f} s  ({n_patterns / t_floor:,.0f} patterns/s)  [fft2 + |.|^2 + Poisson]")
    print(f"  ratio      : {t_gen / t_floor:.2f}  (goal <= 1.5)")
    print(f"  Y windows  : {t_windows:.3f} s per dose ({n_pos} windows gathered from the object)")
    print(f"end to end with every NPZ written (all doses): {t_write:.2f} s")
    print("positions per split and view:")
    for (view, split), sel in geometry.selections.items():
        ov = "-" if sel.measured_overlap is None else f"{sel.measured_overlap:.3f}"
        print(f"  {view:<9} {split:<5} n={sel.n_accepted:>5}  {sel.selection_strategy:<6} "
              f"S={sel.spacing_threshold:5.2f} px  overlap={ov}")
    print("counts per pattern (whole scan): nominal dose, expected (dose x transmission), measured:")
    for data in results:
        sigma = np.sqrt(data.expected_total.sum()) / n_pos
        measured = data.counts_total.mean()
        expected = data.expected_total.mean()
        print(f"  dose {data.dose:>7}: expected {expected:12.2f}  measured {measured:12.2f}  "
              f"({(measured - expected) / sigma:+.2f} sigma)  transmission {expected / data.dose:.4f}")


if __name__ == "__main__":
    main()
