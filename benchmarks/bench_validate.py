"""Benchmark validate-npz: header-only vs full check, wall time and peak memory (not a test).

For each size in ``--n``, builds a contract-valid file of n patterns of 64 x 64 in tmp/bench
(streamed to disk: the build holds one block of patterns at a time), then runs validate-npz's core
(``check_npz``) header-only and full, each in a fresh child process that reports its wall time
and peak RSS (``ru_maxrss``), prints them with their ratios, and deletes the file (``--keep``
keeps it). A child that only imports the package gives the baseline RSS. Timings are printed,
never asserted.

    python benchmarks/bench_validate.py                    # n = 100000 and 200000 (~5 and ~10 GB)
    python benchmarks/bench_validate.py --n 2000           # or BENCH_VALIDATE_N=2000: a quick run
    python benchmarks/bench_validate.py --n 100000 --deflate   # np.savez_compressed-style members
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the test-data builder, for a complete _metadata
from builders import example_arrays, member_bytes  # noqa: E402
from ptydose.core.geometry import position_origin, window_starts  # noqa: E402

FRAME = 64
STEP = 4  # raster step in object pixels
CHUNK = 1000  # patterns generated and written per block
DOSE = 10000

# Peak RSS is the child's VmHWM: ru_maxrss of an exec'd child starts from the RSS of the process
# it was forked from (Linux carries the old high-water mark across exec), here this benchmark's.
CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from ptydose.core.contract import check_npz
lines = []
if sys.argv[2] != "import":
    t0 = time.perf_counter()
    lines = check_npz(sys.argv[1], full=sys.argv[2] == "full").lines()
wall = time.perf_counter() - t0
try:
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "lines": lines, "peak_rss_mb": peak_kb / 1024}))
"""


def write_member(zf: zipfile.ZipFile, key: str, dtype: np.dtype, shape: tuple[int, ...], blocks,
                 compression: int) -> None:
    """Stream one .npy member: header, then the blocks in order (the np.savez layout)."""
    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compression
    with zf.open(info, "w", force_zip64=True) as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        for block in blocks:
            stream.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def build(path: Path, n: int, seed: int = 0, compression: int = zipfile.ZIP_STORED) -> None:
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n))
    size = side * STEP + FRAME + 2
    shape = (size, size)
    obj = (np.exp(1j * rng.uniform(-1, 1, shape)) * rng.uniform(0.5, 1, shape)).astype(np.complex64)
    origin = position_origin(shape)
    # Probe centres whose pty-chi positions are whole pixels; windows start at 1 + STEP * k.
    k = np.arange(n)
    starts_y, starts_x = 1 + STEP * (k // side), 1 + STEP * (k % side)
    ycoords = starts_y + (FRAME - 1) / 2.0
    xcoords = starts_x + (FRAME - 1) / 2.0
    sy, sx = window_starts(np.stack([ycoords, xcoords], axis=1), shape, FRAME).T
    assert (sy == starts_y).all() and (sx == starts_x).all()
    yy, xx = np.mgrid[:FRAME, :FRAME] - (FRAME - 1) / 2.0
    probe = np.exp(-(xx**2 + yy**2) / (2 * 8.0**2)).astype(np.complex128)
    probe *= math.sqrt(DOSE / (FRAME * FRAME * np.sum(np.abs(probe) ** 2)))
    windows = np.lib.stride_tricks.sliding_window_view(obj, (FRAME, FRAME))
    scale = math.sqrt(DOSE) / FRAME
    totals = np.zeros(n, dtype=np.int64)
    expected_totals = np.zeros(n)

    def diffraction_blocks():
        for start in range(0, n, CHUNK):
            sl = slice(start, min(start + CHUNK, n))
            expected = np.abs(np.fft.fft2(probe * windows[sy[sl], sx[sl]])) ** 2
            counts = np.fft.fftshift(rng.poisson(expected), axes=(-2, -1))
            totals[sl] = counts.sum(axis=(1, 2))
            expected_totals[sl] = expected.sum(axis=(1, 2))
            yield np.sqrt(counts) / scale

    def y_blocks():
        for start in range(0, n, CHUNK):
            yield windows[sy[start:start + CHUNK], sx[start:start + CHUNK]]

    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=compression, allowZip64=True) as zf:
        write_member(zf, "diffraction", np.dtype(np.float32), (n, FRAME, FRAME), diffraction_blocks(), compression)
        write_member(zf, "Y", np.dtype(np.complex64), (n, FRAME, FRAME), y_blocks(), compression)
        write_member(zf, "objectGuess", np.dtype(np.complex64), shape, [obj], compression)
        write_member(zf, "probeGuess", np.dtype(np.complex64), (FRAME, FRAME), [probe], compression)
        write_member(zf, "xcoords", np.dtype(np.float64), (n,), [xcoords], compression)
        write_member(zf, "ycoords", np.dtype(np.float64), (n,), [ycoords], compression)
        write_member(zf, "scan_index", np.dtype(np.int64), (n,), [k], compression)
        _, meta = example_arrays(n=2, frame=FRAME, object_size=FRAME + 8, dose=DOSE)
        meta.update(n_images=n, amplitude_scale=scale, position_origin=origin.tolist(),
                    expected_mean_counts=float(expected_totals.mean()), measured_mean_counts=float(totals.mean()))
        meta["selection"].update(n_accepted=n)
        zf.writestr(zipfile.ZipInfo("_metadata.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                    member_bytes(np.array(json.dumps(meta, sort_keys=True))))
    os.replace(tmp, path)


def measure(path: Path, mode: str) -> dict:
    """Run the check in a fresh process: its own wall time and peak RSS, nothing of this one's."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} check crashed:\n{result.stderr}")
    return json.loads(result.stdout)


def run_size(n: int, folder: Path, keep: bool, compression: int) -> int:
    path = folder / f"validate_bench_{n}.npz"
    t0 = time.perf_counter()
    build(path, n, compression=compression)
    size_gb = path.stat().st_size / 1e9
    kind = "deflated" if compression == zipfile.ZIP_DEFLATED else "stored"
    print(f"built {path} ({size_gb:.2f} GB, {kind}, n={n}, {FRAME}x{FRAME}) in {time.perf_counter() - t0:.1f} s")
    try:
        header, full = measure(path, "header"), measure(path, "full")
    finally:
        if not keep:
            path.unlink(missing_ok=True)
    for result in (header, full):
        if result["lines"]:
            print("\n".join(result["lines"]))
            return 1
    print(f"header-only: {header['wall_s'] * 1e3:.1f} ms, peak RSS {header['peak_rss_mb']:.0f} MB")
    print(f"full check:  {full['wall_s']:.2f} s ({size_gb / full['wall_s']:.2f} GB/s), "
          f"peak RSS {full['peak_rss_mb']:.0f} MB")
    print(f"ratio full / header-only: {full['wall_s'] / header['wall_s']:.0f}x in time, "
          f"{full['peak_rss_mb'] / header['peak_rss_mb']:.2f}x in peak RSS; "
          f"full peak RSS / file size: {full['peak_rss_mb'] / 1e3 / size_gb:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("BENCH_VALIDATE_N", "100000,200000")
    parser.add_argument("--n", type=int, nargs="+", default=[int(v) for v in default.split(",")],
                        help="pattern counts of 64 x 64 frames, one file each (default 100000 200000; "
                             "env BENCH_VALIDATE_N=a,b)")
    parser.add_argument("--deflate", action="store_true", help="deflate every member (np.savez_compressed style)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark files")
    parser.add_argument("--dir", type=Path, default=REPO / "tmp" / "bench",
                        help="folder for the benchmark files (default tmp/bench)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    baseline = measure(Path(os.devnull), "import")
    print(f"baseline: a child that imports the package peaks at {baseline['peak_rss_mb']:.0f} MB RSS")
    compression = zipfile.ZIP_DEFLATED if args.deflate else zipfile.ZIP_STORED
    for n in args.n:
        if run_size(n, args.dir, args.keep, compression):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
