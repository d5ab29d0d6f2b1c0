"""Benchmark: validate-npz header-only vs full check on a 1 GB-class contract NPZ (not a test).

Builds a contract-valid file in tmp/bench (streamed to disk, so memory stays small), times
``check_npz(full=False)`` and ``check_npz(full=True)`` in the same run, prints both and their
ratio, then deletes the file (``--keep`` keeps it).

    python benchmarks/bench_validate.py              # n = 20000 patterns of 64 x 64 (about 1 GB)
    python benchmarks/bench_validate.py --n 2000     # or BENCH_VALIDATE_N=2000: a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ptydose.core import contract  # noqa: E402
from ptydose.core.geometry import position_origin, window_starts  # noqa: E402

FRAME = 64
STEP = 4  # raster step in object pixels
CHUNK = 1000  # patterns generated and written per block
DOSE = 10000


def write_member(zf: zipfile.ZipFile, key: str, dtype: np.dtype, shape: tuple[int, ...], blocks) -> None:
    """Stream one .npy member: header, then the blocks in order (the np.savez layout)."""
    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    with zf.open(info, "w", force_zip64=True) as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        for block in blocks:
            stream.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def build(path: Path, n: int, seed: int = 0) -> None:
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
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        write_member(zf, "diffraction", np.dtype(np.float32), (n, FRAME, FRAME), diffraction_blocks())
        write_member(zf, "Y", np.dtype(np.complex64), (n, FRAME, FRAME), y_blocks())
        write_member(zf, "objectGuess", np.dtype(np.complex64), shape, [obj])
        write_member(zf, "probeGuess", np.dtype(np.complex64), (FRAME, FRAME), [probe])
        write_member(zf, "xcoords", np.dtype(np.float64), (n,), [xcoords])
        write_member(zf, "ycoords", np.dtype(np.float64), (n,), [ycoords])
        write_member(zf, "scan_index", np.dtype(np.int64), (n,), [k])
        _, meta = contract.example_arrays(n=2, frame=FRAME, object_size=FRAME + 8, dose=DOSE)
        meta.update(n_images=n, amplitude_scale=scale, position_origin=origin.tolist(),
                    expected_mean_counts=float(expected_totals.mean()), measured_mean_counts=float(totals.mean()))
        meta["selection"].update(n_accepted=n)
        zf.writestr(zipfile.ZipInfo("_metadata.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                    _npy_bytes(np.array(json.dumps(meta, sort_keys=True))))
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=int(os.environ.get("BENCH_VALIDATE_N", 20000)),
                        help="patterns of 64 x 64 (default 20000, about 1 GB; env BENCH_VALIDATE_N)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark file")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[1] / "tmp" / "bench",
                        help="folder for the benchmark file (default tmp/bench)")
    args = parser.parse_args()
    path = args.dir / "validate_bench.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build(path, args.n)
    size_gb = path.stat().st_size / 1e9
    print(f"built {path} ({size_gb:.2f} GB, n={args.n}, {FRAME}x{FRAME}) in {time.perf_counter() - t0:.1f} s")
    try:
        t0 = time.perf_counter()
        header = contract.check_npz(path, full=False)
        t_header = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = contract.check_npz(path, full=True)
        t_full = time.perf_counter() - t0
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    for report in (header, full):
        if not report.ok or report.warnings:
            print("\n".join(report.lines()))
            return 1
    print(f"header-only: {t_header * 1e3:.1f} ms")
    print(f"full check:  {t_full:.2f} s ({size_gb / t_full:.2f} GB/s)")
    print(f"ratio full / header-only: {t_full / t_header:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
