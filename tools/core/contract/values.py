"""Value checks (full mode), streamed: every array is read in bands of about ``chunk_bytes``.

``diffraction`` and ``Y`` go pattern band by pattern band, ``objectGuess`` row band by row band;
the ``Y[j] == objectGuess window`` check reads only the object blocks a band of patterns needs
(:class:`~.streaming.RowAccess`), so no array is ever held whole except the small ones
(``probeGuess``, the per-pattern coordinates and ``scan_index``, within ``MAX_WHOLE_READ_BYTES``).
The same checks run on arrays already in memory (:class:`ArraySource`, for ``read_contract_npz``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..geometry import window_starts
from .diffraction import DiffractionStats, report_diffraction, scan_diffraction_chunk
from .optional import check_mask, check_probe
from .reading import MemberHeader
from .spec import FileReport, continuous_counts, index_text, shape_text
from .streaming import RowAccess, Rows, Source, chunk_rows, member_chunks, read_member_bytes, unreadable
from .structure import Inspection, number


class ZipSource:
    """Arrays read from the archive's member streams (CRC checked by zipfile at the end)."""

    def __init__(self, zf: zipfile.ZipFile, path: Path, headers: dict[str, MemberHeader]):
        self.zf, self.path, self.headers = zf, path, headers

    def array(self, key: str) -> np.ndarray:
        return read_member_bytes(self.zf, self.headers[key])

    def chunks(self, key: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        return member_chunks(self.zf, self.headers[key], rows)

    def rows(self, key: str) -> Rows:
        return RowAccess(self.zf, self.path, self.headers[key])


class _ArrayRows:
    def __init__(self, data: np.ndarray):
        self.data, self.unavailable = data, None
        self.row_bytes = data.shape[1] * data.dtype.itemsize if data.ndim == 2 else data.nbytes

    def scan(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.data.shape[0], rows):
            yield start, self.data[start:start + rows]

    def block(self, r0: int, r1: int, c0: int, c1: int, budget: int) -> np.ndarray:
        return self.data[r0:r1, c0:c1]

    def close(self) -> None:
        pass


class ArraySource:
    """Arrays already in memory (read_contract_npz)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def array(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def chunks(self, key: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        return _ArrayRows(self.arrays[key]).scan(rows)

    def rows(self, key: str) -> Rows:
        return _ArrayRows(self.arrays[key])


def _check_finite_small(key: str, data: np.ndarray, report: FileReport) -> bool:
    finite = np.isfinite(data)
    if finite.all():
        return True
    first = int(np.flatnonzero(~finite.ravel())[0])
    report.error(key, f"{int((~finite).sum())} non-finite values (expected all finite, found "
                      f"{data.ravel()[first]} at index {index_text(first, data.shape)})")
    return False


def _scan_object(src: Source, report: FileReport, chunk_bytes: int) -> Rows | None:
    """Finite objectGuess, streamed by row bands; the open row access for the window check, or None."""
    access = src.rows("objectGuess")
    nonfinite, first = 0, ""
    try:
        for start, band in access.scan(max(1, chunk_bytes // max(1, access.row_bytes))):
            finite = np.isfinite(band)
            if not finite.all():
                flat = int(np.flatnonzero(~finite.ravel())[0])
                first = first or f"{band.ravel()[flat]} at index {index_text(flat, band.shape, start)}"
                nonfinite += int((~finite).sum())
    except Exception as exc:
        access.close()
        report.error("objectGuess", unreadable(exc))
        return None
    if nonfinite:
        access.close()
        report.error("objectGuess", f"{nonfinite} non-finite values (expected all finite, found {first})")
        return None
    return access


def _windows(obj: Rows, sy: np.ndarray, sx: np.ndarray, frame: int, dtype: np.dtype, budget: int) -> np.ndarray:
    """The objectGuess windows at starts (sy, sx), read as blocks of at most ``budget`` bytes.

    Windows sorted by row, then column, are grouped while their bounding block stays within the
    budget, so a band of patterns in scan order costs one or a few reads.
    """
    out = np.empty((sy.size, frame, frame), dtype=dtype)
    order = np.lexsort((sx, sy))
    rows, cols = sy[order].tolist(), sx[order].tolist()
    i = 0
    while i < len(order):
        r0, c0 = rows[i], cols[i]
        r1, c1 = r0 + frame, c0 + frame
        j = i + 1
        while j < len(order):
            nr1, nc0, nc1 = max(r1, rows[j] + frame), min(c0, cols[j]), max(c1, cols[j] + frame)
            if (nr1 - r0) * (nc1 - nc0) * dtype.itemsize > budget:
                break
            r1, c0, c1 = nr1, nc0, nc1
            j += 1
        block = obj.block(r0, r1, c0, c1, budget)
        group = order[i:j]
        view = np.lib.stride_tricks.sliding_window_view(block, (frame, frame))
        out[group] = view[sy[group] - r0, sx[group] - c0]
        i = j
    return out


def check_values(src: Source, insp: Inspection, report: FileReport, chunk_bytes: int) -> None:
    """Finite values, diffraction >= 0 and integer counts, windows inside the object, Y = windows;
    the optional members' values (mask, nominal positions, probe modes) and the probe's power."""
    small: dict[str, np.ndarray] = {}
    obj: Rows | None = None
    try:
        for key in ("objectGuess", "probeGuess", "xcoords", "ycoords", "scan_index",
                    "nominal_xcoords", "nominal_ycoords", "valid_pixels"):
            if not insp.usable(key):
                continue
            if key == "objectGuess":
                obj = _scan_object(src, report, chunk_bytes)
                if obj is None:
                    insp.bad.add(key)
                continue
            try:
                small[key] = src.array(key)
            except Exception as exc:
                report.error(key, unreadable(exc))
                insp.bad.add(key)
                continue
            if key == "valid_pixels":
                small[key] = check_mask(small[key], insp, report)
            elif key != "scan_index" and not _check_finite_small(key, small[key], report):
                insp.bad.add(key)
        if small.get("valid_pixels") is None:
            small.pop("valid_pixels", None)
        check_probe(src, insp, report, chunk_bytes, small.get("probeGuess"))
        _check_rest(src, insp, report, chunk_bytes, small, obj)
    finally:
        if obj is not None:
            obj.close()


def _check_rest(src: Source, insp: Inspection, report: FileReport, chunk_bytes: int,
                small: dict[str, np.ndarray], obj: Rows | None) -> None:
    if "scan_index" in small:
        index = small["scan_index"]
        if (index < 0).any():
            report.error("scan_index", f"{int((index < 0).sum())} negative indices (expected >= 0, found {int(index.min())})")
        unique = np.unique(index)
        if unique.size != index.size:
            report.error("scan_index", f"repeated exposures (expected {index.size} distinct indices, found {unique.size})")

    starts = None
    if insp.usable("xcoords", "ycoords") and insp.object_shape is not None and insp.frame is not None:
        sy, sx = window_starts(np.stack([small["ycoords"], small["xcoords"]], axis=1), insp.object_shape, insp.frame).T
        rows, cols = insp.object_shape
        outside = (sy < 0) | (sx < 0) | (sy + insp.frame > rows) | (sx + insp.frame > cols)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            report.error("xcoords", f"{int(outside.sum())} windows leave objectGuess {shape_text(insp.object_shape)} "
                                    f"(expected 0 <= start and start + {insp.frame} <= size per axis, found start "
                                    f"(row {int(sy[j])}, column {int(sx[j])}) for pattern {j} at "
                                    f"(y {float(small['ycoords'][j]):.6g}, x {float(small['xcoords'][j]):.6g}))")
        else:
            starts = (sy, sx)
    # The positions an engine is given must place its windows inside the object frame too.
    if (insp.usable("nominal_xcoords", "nominal_ycoords") and "nominal_xcoords" in small and "nominal_ycoords" in small
            and insp.object_shape is not None and insp.frame is not None):
        ny, nx = small["nominal_ycoords"], small["nominal_xcoords"]
        if ny.shape == nx.shape and np.all(np.isfinite(ny)) and np.all(np.isfinite(nx)):
            rows, cols = insp.object_shape
            limit = 4.0 * max(rows, cols)  # beyond this a window start is not even a representable index
            far = (np.abs(ny) > limit) | (np.abs(nx) > limit)
            sy, sx = window_starts(np.stack([np.clip(ny, -limit, limit), np.clip(nx, -limit, limit)], axis=1),
                                   insp.object_shape, insp.frame).T
            outside = far | (sy < 0) | (sx < 0) | (sy + insp.frame > rows) | (sx + insp.frame > cols)
            if outside.any():
                j = int(np.flatnonzero(outside)[0])
                report.error("nominal_xcoords", f"{int(outside.sum())} windows at the nominal positions leave objectGuess "
                                                f"{shape_text(insp.object_shape)} (expected every window inside, found "
                                                f"pattern {j} at (y {float(ny[j]):.6g}, x {float(nx[j]):.6g}))")

    n, frame = insp.n, insp.frame
    if insp.usable("diffraction") and n is not None and frame is not None:
        metadata = insp.metadata
        scale = number(metadata.get("amplitude_scale")) if metadata else None
        scale = scale if scale is not None and scale > 0 else None
        st = DiffractionStats(valid=small.get("valid_pixels"), continuous=continuous_counts(metadata),
                              statistics="valid_pixels" not in insp.headers or insp.usable("valid_pixels"))
        try:
            for start, chunk in src.chunks("diffraction", chunk_rows(frame, 4, chunk_bytes)):
                scan_diffraction_chunk(start, chunk, scale, st)
        except Exception as exc:
            report.error("diffraction", unreadable(exc))
        else:
            report_diffraction(st, scale, metadata, n, report)

    if insp.usable("Y") and n is not None and frame is not None:
        _check_y(src, insp, report, chunk_bytes, starts, obj)


def _check_y(src: Source, insp: Inspection, report: FileReport, chunk_bytes: int,
             starts: tuple[np.ndarray, np.ndarray] | None, obj: Rows | None) -> None:
    frame = insp.frame
    compare = starts is not None and obj is not None and insp.usable("objectGuess")
    if compare and obj.unavailable:
        report.error("objectGuess", obj.unavailable)
        compare = False
    dtype = insp.headers["objectGuess"].dtype if compare else None
    nonfinite, first_nonfinite, differ, first_differ = 0, "", 0, -1
    try:
        for start, chunk in src.chunks("Y", chunk_rows(frame, 8, chunk_bytes)):
            finite = np.isfinite(chunk)
            if not finite.all():
                flat = int(np.flatnonzero(~finite.ravel())[0])
                first_nonfinite = first_nonfinite or f"{chunk.ravel()[flat]} at index {index_text(flat, chunk.shape, start)}"
                nonfinite += int((~finite).sum())
            if compare:
                stop = start + chunk.shape[0]
                try:
                    expected = _windows(obj, starts[0][start:stop], starts[1][start:stop], frame, dtype, chunk_bytes)
                except Exception as exc:
                    report.error("objectGuess", unreadable(exc))
                    compare = False
                    continue
                same = (chunk == expected).all(axis=(1, 2))
                if not same.all():
                    first_differ = first_differ if first_differ >= 0 else start + int(np.flatnonzero(~same)[0])
                    differ += int((~same).sum())
    except Exception as exc:
        report.error("Y", unreadable(exc))
        return
    if nonfinite:
        report.error("Y", f"{nonfinite} non-finite values (expected all finite, found {first_nonfinite})")
    if differ:
        j = first_differ
        report.error("Y", f"{differ} patches differ from their objectGuess window (expected Y[j] == "
                          f"objectGuess[s_y:s_y+N, s_x:s_x+N] at the xcoords/ycoords window, found first "
                          f"difference at pattern {j}, window start (row {int(starts[0][j])}, "
                          f"column {int(starts[1][j])}))")
