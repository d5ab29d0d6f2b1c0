"""Entry points: check a file, load one safely, write one, and the validate-npz helpers.

* :func:`check_npz` inspects one file and returns a :class:`FileReport` (never raises for a bad
  file). Header-only mode reads the zip central directory, every member's ``.npy`` header and the
  small ``_metadata`` string, and nothing else; full mode then streams every array in bands of
  about ``chunk_bytes`` and checks the values, in memory that does not grow with the file.
* :func:`read_contract_npz` loads a file for a tool (``np.load(..., allow_pickle=False)`` per key)
  after the same checks and after checking that the arrays it would load fit in the memory
  available; it raises :class:`ContractError` with the first problem line.

Problem lines read ``path: key: what is wrong (expected ..., found ...)``; ``key`` is an NPZ key,
``(file)`` for the archive itself, or ``_metadata/<json path>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ContractError
from ..fileio import write_npz_atomic
from ..safepath import available_memory_bytes
from .reading import open_zip, read_member_headers
from .spec import (
    ARRAY_KEYS,
    CONTRACT,
    DEFAULT_CHUNK_BYTES,
    FILE_KEY,
    METADATA_KEY,
    NOMINAL_KEYS,
    OPTIONAL,
    OPTIONAL_KEYS,
    FileReport,
    continuous_counts,
    counts_from_diffraction,
    size_text,
)
from .structure import inspect
from .values import ArraySource, ZipSource
from .values import check_values as check_array_values

# The value checks on loaded arrays work in bands: a few float64 copies of one band at a time.
VALUE_CHECK_WORKING_BYTES = 8 * DEFAULT_CHUNK_BYTES


@dataclass
class ContractData:
    """A loaded contract NPZ: the arrays (by key) and the parsed ``_metadata``."""

    path: Path
    arrays: dict[str, np.ndarray]
    metadata: dict
    warnings: list[str]
    #: Every contract member the file holds, loaded or not: a getter can tell "absent" from "not loaded".
    members: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    @property
    def n_images(self) -> int:
        return int(self.arrays["diffraction"].shape[0])

    @property
    def amplitude_scale(self) -> float:
        return float(self.metadata["amplitude_scale"])

    @property
    def continuous_counts(self) -> bool:
        """True when the detector's readout noise makes the counts continuous (``_metadata/detector/counts``)."""
        return continuous_counts(self.metadata)

    def counts(self) -> np.ndarray:
        """Counts recovered from the diffraction amplitudes, (n, N, N): integers (int64), or with
        continuous counts the unrounded ``(diffraction * amplitude_scale)**2`` (float64)."""
        return counts_from_diffraction(self.arrays["diffraction"], self.amplitude_scale, self.continuous_counts)

    def _optional(self, key: str) -> np.ndarray | None:
        if key in self.arrays:
            return self.arrays[key]
        if key in self.members:
            raise ContractError(f"{self.path}: {key}: in the file but not loaded (expected it among the keys read)")
        return None

    def valid_pixels(self) -> np.ndarray | None:
        """The detector mask, bool (N, N), True = measured; None when every pixel is measured."""
        return self._optional("valid_pixels")

    def engine_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` float64 (n,): the positions an experiment reports, which an engine gets:
        ``nominal_xcoords/nominal_ycoords`` when the file has them, else ``xcoords/ycoords``."""
        x, y = (self._optional(key) for key in NOMINAL_KEYS)
        if x is None or y is None:
            return self.arrays["xcoords"], self.arrays["ycoords"]
        return x, y


def check_npz(path: str | os.PathLike, full: bool = True, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FileReport:
    """Check one file against the contract; never raises for a bad file.

    ``full=False`` (header-only) reads the zip directory, the ``.npy`` headers and ``_metadata``
    only; ``full=True`` also streams every array in bands of about ``chunk_bytes``.
    """
    report = FileReport(path=Path(path), mode="full" if full else "header-only")
    try:
        zf = open_zip(report.path, report)
        if zf is None:
            return report
        with zf:
            insp = inspect(zf, report)
            if full:
                check_array_values(ZipSource(zf, report.path, insp.headers), insp, report, chunk_bytes)
    except Exception as exc:  # a bad file must become a reported error, never a traceback
        report.error(FILE_KEY, f"could not be checked ({type(exc).__name__}: {exc})")
    return report


def require_valid(path: str | os.PathLike) -> list[str]:
    """Full contract check of a file a tool takes whole (a ladder's parent, a scan's part): the first
    problem raises :class:`ContractError` as its one line; the warning lines are returned."""
    report = check_npz(path, full=True)
    if not report.ok:
        raise ContractError(report.lines()[0])
    return report.lines()


def _refuse_beyond_memory(path: Path, sizes: dict[str, int], working_bytes: int, memory_limit: int | None) -> None:
    """Refuse, before allocating anything, arrays whose declared sizes exceed the memory available."""
    if not sizes:
        return
    needed = sum(sizes.values()) + working_bytes
    available = available_memory_bytes() if memory_limit is None else memory_limit
    if needed > available:
        key = max(sizes, key=sizes.__getitem__)
        raise ContractError(f"{path}: {key}: too large to load (expected the {len(sizes)} arrays to fit in the "
                            f"{size_text(available)} of memory available, found {size_text(needed)} needed, "
                            f"{size_text(sizes[key])} of it {key})")


def _load_arrays(path: Path, keys) -> dict[str, np.ndarray]:
    """``np.load(allow_pickle=False)`` of ``keys``, after the header checks; one line naming the key on failure."""
    arrays: dict[str, np.ndarray] = {}
    key = FILE_KEY
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in keys:
                arrays[key] = npz[key]
    except Exception as exc:
        raise ContractError(f"{path}: {key}: cannot load ({type(exc).__name__}: {exc})") from None
    return arrays


def read_contract_npz(path: str | os.PathLike, *, check_values: bool = True, keys: Iterable[str] | None = None,
                      memory_limit: int | None = None) -> ContractData:
    """Load a contract NPZ safely (``allow_pickle=False``) after checking it.

    Headers and metadata are always checked first, so nothing is loaded from a file whose
    headers are wrong, nor from one whose arrays would not fit in the memory available (or in
    ``memory_limit`` bytes); with ``check_values`` the loaded arrays get the full value checks
    too. ``keys`` loads only those arrays (``()``: the checked metadata alone, without reading any
    array data); value checks need every array, so they go with ``keys=None`` only.
    Raises :class:`ContractError` with the first problem line. ``xcoords``/``ycoords`` (and the
    nominal ones) are returned as float64 even when stored as float32 (a warning). ``keys=None``
    loads the optional members the file has too; an optional member named in ``keys`` that the
    file lacks is skipped (its getter, e.g. :meth:`ContractData.valid_pixels`, returns None).
    """
    if check_values and keys is not None:
        raise ValueError("value checks need every array: use keys=None with check_values=True")
    report = FileReport(path=Path(path))
    insp = None
    try:
        zf = open_zip(report.path, report)
        if zf is not None:
            with zf:
                insp = inspect(zf, report)
    except Exception as exc:
        report.error(FILE_KEY, f"could not be checked ({type(exc).__name__}: {exc})")
    if report.errors:
        raise ContractError(report.lines()[0])
    present = (*ARRAY_KEYS, *(key for key in OPTIONAL_KEYS if key in insp.headers))
    # An optional member the file lacks is simply not loaded: its getter then returns None.
    wanted = present if keys is None else tuple(key for key in keys if key not in OPTIONAL or key in insp.headers)
    _refuse_beyond_memory(report.path, {key: insp.headers[key].declared_bytes for key in wanted if key in insp.headers},
                          VALUE_CHECK_WORKING_BYTES if check_values else 0, memory_limit)
    arrays = _load_arrays(report.path, wanted)
    if check_values:
        check_array_values(ArraySource(arrays), insp, report, DEFAULT_CHUNK_BYTES)
        if report.errors:
            raise ContractError(report.lines()[0])
    for key in ("xcoords", "ycoords", *NOMINAL_KEYS):
        if key in arrays:
            arrays[key] = arrays[key].astype(np.float64, copy=False)
    return ContractData(path=report.path, arrays=arrays, metadata=insp.metadata or {},
                        warnings=[p.line(report.path, warning=True) for p in report.warnings],
                        members=frozenset(present) | {METADATA_KEY})


def read_npz_arrays(path: str | os.PathLike, required: dict[str, str], optional: dict[str, str] | None = None, *,
                    memory_limit: int | None = None) -> dict[str, np.ndarray]:
    """Load named arrays of any NPZ (a reconstruction, say) with the contract reader's safety.

    ``required``/``optional``: key -> accepted numpy kind codes (``"c"`` complex, ``"f"`` float,
    ``"iu"`` integers, ``"U"`` unicode). Before anything is allocated: the zip directory and every
    member's ``.npy`` header are read (a bare ``.npy``, text, truncated, encrypted, unknown
    compression, forged sizes and deflate bombs are refused), object dtypes are refused without
    unpickling, and the declared sizes must fit in the memory available. Raises
    :class:`ContractError` ``path: key: what is wrong`` with the first problem.
    """
    optional = optional or {}
    report = FileReport(path=Path(path))
    headers = {}
    try:
        zf = open_zip(report.path, report)
        if zf is not None:
            with zf:
                headers = read_member_headers(zf, report.size_bytes or 0, report)
    except Exception as exc:
        report.error(FILE_KEY, f"could not be checked ({type(exc).__name__}: {exc})")
    wanted = {**required, **{k: v for k, v in optional.items() if k in headers}}
    problems = [p for p in report.errors if p.key == FILE_KEY or p.key in wanted]
    if problems:
        raise ContractError(problems[0].line(report.path))
    for key, kinds in wanted.items():
        if key not in headers:
            raise ContractError(f"{report.path}: {key}: key missing")
        if headers[key].dtype.kind not in kinds:
            raise ContractError(f"{report.path}: {key}: unexpected dtype {headers[key].dtype} "
                                f"(expected kind {' or '.join(kinds)})")
    _refuse_beyond_memory(report.path, {key: headers[key].declared_bytes for key in wanted}, 0, memory_limit)
    arrays = _load_arrays(report.path, wanted)
    return arrays


def write_contract_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict) -> Path:
    """Write a contract NPZ: uncompressed ``np.savez`` layout, fixed member order and timestamps.

    The same arrays and metadata give the same bytes. Written to a temporary file in the same
    folder and renamed, so a reader never sees half a file. Arrays are cast to the contract
    dtypes; ``metadata`` is stored as a 0-d unicode JSON string (never an object array). The
    optional members in ``arrays`` (``probe_modes``, ``nominal_xcoords``, ``nominal_ycoords``,
    ``valid_pixels``) follow ``_metadata`` in that order; other keys are not written.
    """
    path = Path(path)
    members = {key: np.ascontiguousarray(arrays[key], dtype=CONTRACT[key].dtype) for key in ARRAY_KEYS}
    members[METADATA_KEY] = np.array(json.dumps(metadata, sort_keys=True))
    for key in OPTIONAL_KEYS:
        if key in arrays:
            members[key] = np.ascontiguousarray(arrays[key], dtype=OPTIONAL[key].dtype)
    write_npz_atomic(path, members)
    return path


def find_npz_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly plus every ``*.npz`` under named folders (sorted, de-duplicated).

    Raises :class:`ContractError` for a path that does not exist or a folder without NPZ files.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.npz") if p.is_file())
            if not files:
                raise ContractError(f"{path}: no .npz files under this folder")
        elif path.exists():
            files = [path]
        else:
            raise ContractError(f"{path}: no such file or folder")
        for file in files:
            resolved = file.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append(file)
    return found


def validate_files(files: Iterable[str | os.PathLike], *, full: bool = True,
                   progress: Callable[[int, Path], None] | None = None) -> list[FileReport]:
    """:func:`check_npz` on each file in order; ``progress(i, path)`` is called before each."""
    reports = []
    for i, file in enumerate(files):
        if progress is not None:
            progress(i, Path(file))
        reports.append(check_npz(file, full=full))
    return reports


def report_document(reports: list[FileReport], *, full: bool, strict: bool, tool_version: str,
                    created: str) -> dict:
    """The validation report (schemas/validation_report.schema.json) of a set of file reports."""
    entries = [r.to_dict(strict) for r in reports]
    n_valid = sum(e["ok"] for e in entries)
    return {
        "schema_version": "1.0",
        "tool": "validate-npz",
        "tool_version": tool_version,
        "created": created,
        "mode": "full" if full else "header-only",
        "strict": strict,
        "ok": n_valid == len(entries),
        "n_files": len(entries),
        "n_valid": n_valid,
        "n_invalid": len(entries) - n_valid,
        "files": entries,
    }
