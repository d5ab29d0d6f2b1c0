"""Join contract NPZs that hold parts of one scan (a dose's train and test files, say) into one
whole-scan NPZ: the parent a dose ladder thins (docs/dose_ladders.md).

The parts must be one measurement: the same object, probe, dose and draw, so everything but what
describes a part (its split, pattern count, mean counts, selection figures) must agree, member by
member and metadata key by metadata key. Their exposures must be distinct. The result holds
every pattern once, in ``scan_index`` order, with metadata recomputed for the whole (pattern
count, mean counts, selection figures, position-error and saturation figures) and the parts
recorded under ``scan/joined_from``. ``split`` stays the first part's: the metadata schema knows
only ``train`` and ``test``.

Memory stays at a few bands of patterns: the per-pattern members are merged band by band from
the parts' member streams (each part in ascending scan order, as gen-synthetic writes it). The
file is checked against the whole contract under its temporary name and only then renamed into
place; the same parts give the same bytes, in whatever order they are named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import overlap, physics
from .contract import check_npz, read_contract_npz, require_valid
from .contract.reading import open_zip
from .contract.spec import (
    CONTRACT,
    DEFAULT_CHUNK_BYTES,
    METADATA_KEY,
    NOMINAL_KEYS,
    OPTIONAL,
    OPTIONAL_KEYS,
    FileReport,
    continuous_counts,
    counts_from_diffraction,
)
from .contract.streaming import chunk_rows
from .contract.structure import inspect
from .contract.values import ZipSource
from .errors import ContractError, StudyError
from .fileio import NpzWriter, atomic_path, sha256_file

log = logging.getLogger(__name__)

#: Members with one row per pattern, merged in scan order; the rest are shared by every part.
PER_PATTERN = ("diffraction", "Y", "xcoords", "ycoords", "scan_index", *NOMINAL_KEYS)
SHARED = ("objectGuess", "probeGuess", "probe_modes", "valid_pixels")
#: Metadata that describes one part, recomputed for the whole; every other key must agree.
PER_PART_METADATA = ("split", "n_images", "expected_mean_counts", "measured_mean_counts", "selection")
PER_PART_NESTED = {"position_errors": ("rms_error_px", "max_error_px"), "detector": ("n_saturated_values",),
                   "scan": ("joined_from",)}
PER_PART_SELECTION = ("selection_strategy", "n_accepted", "n_rejected", "acceptance_rate", "measured_overlap")
JOINED_KEY = "joined_from"  # under _metadata/scan (free-form): the parts of a joined scan


@dataclass
class Part:
    """One input file: its checked metadata and small per-pattern members."""

    path: Path
    sha256: str
    metadata: dict
    arrays: dict[str, np.ndarray]  # scan_index, coordinates (and nominal ones when present)
    members: frozenset[str]
    digests: dict[str, str]  # sha256 of each shared member's dtype, shape and bytes

    @property
    def n_images(self) -> int:
        return int(len(self.arrays["scan_index"]))


@dataclass(frozen=True)
class JoinResult:
    """What was written: the file, its sha256, its pattern count and the parts it joined."""

    path: Path
    sha256: str
    n_images: int
    parts: list[dict]

    def to_json(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "n_images": self.n_images, "parts": self.parts}


# ----------------------------------------------------------------------------------------------
# Reading the parts
# ----------------------------------------------------------------------------------------------
@contextmanager
def _source(path: Path) -> Iterator[ZipSource]:
    """The member streams of a (checked) NPZ."""
    report = FileReport(path=path)
    zf = open_zip(path, report)
    if zf is None:
        raise ContractError(report.lines()[0])
    with zf:
        insp = inspect(zf, report)
        if report.errors:
            raise ContractError(report.lines()[0])
        yield ZipSource(zf, path, insp.headers)


def _member_digest(source: ZipSource, key: str) -> str:
    """sha256 of a member's dtype, shape and data, read in bands."""
    header = source.headers[key]
    digest = hashlib.sha256(f"{header.dtype.str}{header.shape}".encode())
    rows = max(1, DEFAULT_CHUNK_BYTES // max(1, header.row_bytes))
    for _, band in source.chunks(key, rows):
        digest.update(np.ascontiguousarray(band).tobytes())
    return digest.hexdigest()


def read_part(path: Path) -> Part:
    """A part after the full contract check (the first problem is a one-line error)."""
    if not path.is_file():
        why = "not a regular file (a folder, FIFO or device)" if path.exists() else "file not found"
        raise ContractError(f"{path}: {why}")
    for line in require_valid(path):
        log.warning("%s", line)
    keys = ("scan_index", "xcoords", "ycoords", *NOMINAL_KEYS)
    data = read_contract_npz(path, check_values=False, keys=keys)
    arrays = {key: data[key] for key in keys if key in data.arrays}
    with _source(path) as source:
        digests = {key: _member_digest(source, key) for key in SHARED if key in source.headers}
    return Part(path, sha256_file(path), data.metadata, arrays, frozenset(data.members), digests)


# ----------------------------------------------------------------------------------------------
# The parts must be one scan
# ----------------------------------------------------------------------------------------------
def shared_metadata(meta: dict) -> dict:
    """The metadata every part of one scan must share: all but what describes the part."""
    shared = {k: v for k, v in meta.items() if k not in PER_PART_METADATA}
    for key, per_part in PER_PART_NESTED.items():
        if isinstance(shared.get(key), dict):
            shared[key] = {k: v for k, v in shared[key].items() if k not in per_part}
    selection = meta.get("selection")
    if isinstance(selection, dict):
        shared["selection"] = {k: v for k, v in selection.items() if k not in PER_PART_SELECTION}
    return shared


#: Compared first, so that a part of another dose, draw or view is named as such.
FIRST_COMPARED = ("dose", "replicate", "noise_seed", "view")


def _first_difference(a, b, path: str) -> tuple[str, object, object] | None:
    """The first JSON path (FIRST_COMPARED, then sorted keys) where two documents differ, with
    both values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        for key in [k for k in FIRST_COMPARED if k in keys] + sorted(keys - set(FIRST_COMPARED)):
            if key not in a or key not in b:
                return f"{path}/{key}", a.get(key, "(absent)"), b.get(key, "(absent)")
            found = _first_difference(a[key], b[key], f"{path}/{key}")
            if found:
                return found
        return None
    return None if a == b and type(a) is type(b) else (path, a, b)


def _short(value, limit: int = 80) -> str:
    text = value if isinstance(value, str) and value == "(absent)" else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_one_scan(parts: list[Part]) -> None:
    """Refuse parts that are not one measurement, naming the file and key: the members present,
    the shared members' bytes, the shared metadata, distinct exposures, each part in scan order."""
    first = parts[0]
    for part in parts:
        index = part.arrays["scan_index"]
        if len(index) > 1 and not np.all(np.diff(index) > 0):
            row = int(np.flatnonzero(np.diff(index) <= 0)[0])
            raise ContractError(f"{part.path}: scan_index: not ascending (expected each part in scan order, as "
                                f"gen-synthetic writes it; found {int(index[row])} before {int(index[row + 1])} "
                                f"at row {row})")
    for part in parts[1:]:
        for key in sorted(first.members ^ part.members):
            where = "not here" if key in first.members else f"not in {first.path}"
            raise ContractError(f"{part.path}: {key}: present in one part only ({where}; expected the parts of "
                                f"one scan to have the same members)")
        found = _first_difference(shared_metadata(first.metadata), shared_metadata(part.metadata), METADATA_KEY)
        if found:
            key, theirs, ours = found
            raise ContractError(f"{part.path}: {key}: differs from {first.path} (expected {_short(theirs)}, found "
                                f"{_short(ours)}: the parts of one scan share everything but their split, "
                                f"pattern count, mean counts and selection figures)")
        for key in SHARED:
            if key in first.digests and first.digests[key] != part.digests[key]:
                raise ContractError(f"{part.path}: {key}: differs from {first.path} (expected the parts of one "
                                    f"scan to share it byte for byte)")
    owner = np.concatenate([np.full(p.n_images, i) for i, p in enumerate(parts)])
    index = np.concatenate([p.arrays["scan_index"] for p in parts])
    order = np.argsort(index, kind="stable")
    repeated = np.flatnonzero(np.diff(index[order]) == 0)
    if len(repeated):
        j = repeated[0]
        earlier, later = sorted((int(owner[order[j]]), int(owner[order[j + 1]])))
        both = np.intersect1d(parts[earlier].arrays["scan_index"], parts[later].arrays["scan_index"])
        raise ContractError(f"{parts[later].path}: scan_index: {len(both)} exposures also in {parts[earlier].path} "
                            f"(expected each exposure in one part only, found scan_index {int(index[order[j]])} "
                            f"in both)")


# ----------------------------------------------------------------------------------------------
# Writing the whole scan
# ----------------------------------------------------------------------------------------------
class _RowQueue:
    """The rows of one part's member, handed out in order however the bands fall."""

    def __init__(self, chunks: Iterator[tuple[int, np.ndarray]]):
        self._chunks = chunks
        self._pending: np.ndarray | None = None

    def take(self, count: int) -> np.ndarray:
        pieces = []
        while count > 0:
            if self._pending is None or len(self._pending) == 0:
                _, self._pending = next(self._chunks)
            piece, self._pending = self._pending[:count], self._pending[count:]
            pieces.append(piece)
            count -= len(piece)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def finish(self) -> None:
        """Read to the end, so that zipfile verifies the member's CRC."""
        if self._pending is not None and len(self._pending):
            raise ValueError("rows left unread")
        for _, rest in self._chunks:
            if len(rest):
                raise ValueError("rows left unread")


class _Counts:
    """Recovered counts per pattern of the joined diffraction, as the contract computes them
    (masked pixels count 0; continuous counts unrounded)."""

    def __init__(self, meta: dict, valid: np.ndarray | None):
        self.scale = float(meta["amplitude_scale"])
        self.continuous = continuous_counts(meta)
        self.invalid = None if valid is None else ~valid
        self.total = 0.0 if self.continuous else 0

    def add(self, rows: np.ndarray) -> None:
        counts = counts_from_diffraction(rows, self.scale, self.continuous)
        if self.invalid is not None:
            counts[:, self.invalid] = 0
        self.total += float(counts.sum()) if self.continuous else int(counts.sum())


def _merge_member(writer: NpzWriter, sources: list[ZipSource], key: str, owner: np.ndarray,
                  counts: _Counts | None = None) -> None:
    """One per-pattern member of every part, merged in scan order band by band."""
    header = sources[0].headers[key]
    dtype = (CONTRACT.get(key) or OPTIONAL[key]).dtype
    frame = header.shape[1:]
    rows = chunk_rows(frame[0], dtype.itemsize, DEFAULT_CHUNK_BYTES) if frame else max(1, DEFAULT_CHUNK_BYTES // 8)
    queues = [_RowQueue(source.chunks(key, rows)) for source in sources]
    member = writer.begin(key, dtype, (len(owner), *frame))
    for start in range(0, len(owner), rows):
        band_owner = owner[start:start + rows]
        band = np.empty((len(band_owner), *frame), dtype=dtype)
        for i in np.unique(band_owner):
            mask = band_owner == i
            band[mask] = queues[i].take(int(mask.sum()))
        if counts is not None:
            counts.add(band)
        member.write(band)
    member.close()
    for queue in queues:
        queue.finish()


def _copy_member(writer: NpzWriter, source: ZipSource, key: str) -> None:
    """A shared member copied as stored, band by band (an object of any size)."""
    header = source.headers[key]
    member = writer.begin(key, header.dtype, header.shape)
    for _, band in source.chunks(key, max(1, DEFAULT_CHUNK_BYTES // max(1, header.row_bytes))):
        member.write(np.ascontiguousarray(band))
    member.close()


def _relative(path: Path, folder: Path) -> str:
    """``path`` as seen from ``folder`` (the joined file's): moving both together keeps the bytes."""
    return os.path.relpath(path, folder)


def joined_metadata(parts: list[Part], out: Path, counts_total: float, coords: dict[str, np.ndarray]) -> dict:
    """The first part's metadata with what describes the whole scan recomputed, and the parts listed."""
    base = parts[0].metadata
    n = sum(p.n_images for p in parts)
    meta = json.loads(json.dumps(base))  # a deep copy
    meta["n_images"] = n
    meta["expected_mean_counts"] = round(sum(p.metadata["expected_mean_counts"] * p.n_images for p in parts) / n, 6)
    meta["measured_mean_counts"] = round(counts_total / n, 6)
    rejected = sum(int(p.metadata["selection"]["n_rejected"]) for p in parts)
    true_yx = np.stack([coords["ycoords"], coords["xcoords"]], axis=1)
    overlap_value = overlap.measured_overlap(true_yx, float(base["probe_diameter_px"]),
                                             int(base["selection"]["neighbours"]))
    meta["selection"].update({
        "selection_strategy": "direct" if all(p.metadata["selection"]["selection_strategy"] == "direct"
                                              for p in parts) else "greedy",
        "n_accepted": n, "n_rejected": rejected, "acceptance_rate": n / (n + rejected),
        "measured_overlap": None if overlap_value is None else round(overlap_value, 6),
    })
    if isinstance(meta.get("position_errors"), dict) and NOMINAL_KEYS[0] in coords:
        nominal_yx = np.stack([coords["nominal_ycoords"], coords["nominal_xcoords"]], axis=1)
        meta["position_errors"].update(physics.position_error_figures(true_yx, nominal_yx))
    detector = meta.get("detector")
    if isinstance(detector, dict) and "n_saturated_values" in detector:
        detector["n_saturated_values"] = sum(int(p.metadata["detector"]["n_saturated_values"]) for p in parts)
    meta["scan"][JOINED_KEY] = [
        {"path": _relative(p.path, out.parent), "sha256": p.sha256, "split": p.metadata["split"],
         "view": p.metadata["view"], "n_images": p.n_images} for p in parts]
    return meta


def join_scan(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> JoinResult:
    """Join contract NPZs holding parts of one scan into ``out`` (see the module docstring)."""
    out = Path(out).absolute()
    paths = [Path(p).absolute() for p in inputs]
    if not paths:
        raise StudyError(f"{out}: no input files to join")
    seen: dict[Path, Path] = {}
    for path in paths:
        real = path.resolve()
        if real in seen:
            raise ContractError(f"{path}: named twice (expected each part once)")
        seen[real] = path
    if out.resolve() in seen:
        raise ContractError(f"{out}: the output is also an input (expected a new file)")
    if out.is_dir():
        raise StudyError(f"{out}: is a folder, expected the joined NPZ's file name")
    parts = [read_part(path) for path in paths]
    check_one_scan(parts)
    # Output order: by first exposure, so the bytes do not depend on the order the parts are named.
    parts.sort(key=lambda p: int(p.arrays["scan_index"][0]))
    owner = np.concatenate([np.full(p.n_images, i) for i, p in enumerate(parts)])
    order = np.argsort(np.concatenate([p.arrays["scan_index"] for p in parts]), kind="stable")
    owner = owner[order]
    small = {key: np.concatenate([p.arrays[key] for p in parts])[order].astype(np.float64)
             for key in ("xcoords", "ycoords", *NOMINAL_KEYS) if key in parts[0].arrays}
    scan_index = np.concatenate([p.arrays["scan_index"] for p in parts])[order].astype(np.int64)

    with atomic_path(out) as tmp:
        with ExitStack() as stack:
            sources = [stack.enter_context(_source(p.path)) for p in parts]
            valid = sources[0].array("valid_pixels").astype(bool) if "valid_pixels" in sources[0].headers else None
            counts = _Counts(parts[0].metadata, valid)
            handle = stack.enter_context(open(tmp, "w+b"))
            writer = NpzWriter(handle)
            try:
                _merge_member(writer, sources, "diffraction", owner, counts)
                _merge_member(writer, sources, "Y", owner)
                meta = joined_metadata(parts, out, counts.total, small)
                _copy_member(writer, sources[0], "objectGuess")
                _copy_member(writer, sources[0], "probeGuess")
                writer.add("xcoords", small["xcoords"])
                writer.add("ycoords", small["ycoords"])
                writer.add("scan_index", scan_index)
                writer.add(METADATA_KEY, np.array(json.dumps(meta, sort_keys=True)))
                for key in OPTIONAL_KEYS:
                    if key in small:
                        writer.add(key, small[key])
                    elif key in sources[0].headers:
                        _copy_member(writer, sources[0], key)
                sha256 = writer.finish()
            except BaseException:
                writer.discard()
                raise
        report = check_npz(tmp, full=True)
        if not report.ok:
            problem = report.errors[0]
            raise ContractError(f"{out}: {problem.key}: the joined file fails the contract ({problem.message})")
    log.info("joined %d patterns from %d files into %s", len(owner), len(parts), out)
    return JoinResult(out, sha256, int(len(owner)), meta["scan"][JOINED_KEY])
