"""The NPZ data contract (docs/data_contract.md): the rules as data, checking and safe reading.

Two entry points do the work:

* :func:`check_npz` inspects one file and returns a :class:`FileReport` (never raises for a bad
  file). Header-only mode reads the zip central directory, every member's ``.npy`` header and the
  small ``_metadata`` string, and nothing else; full mode then streams the array data in chunks of
  patterns and checks the values.
* :func:`read_contract_npz` loads a file for a tool (``np.load(..., allow_pickle=False)`` per key)
  after the same checks, and raises :class:`ContractError` with the first problem line.

Nothing here ever unpickles: an object array is recognised from its header's dtype and reported.
A header whose declared size does not fit its zip member is reported before any array is built,
so a forged shape cannot trigger a huge allocation.

Problem lines read ``path: key: what is wrong (expected ..., found ...)``; ``key`` is an NPZ key,
``(file)`` for the archive itself, or ``_metadata/<json path>``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from .errors import ContractError
from .fileio import write_npz_atomic
from .geometry import position_origin, window_starts
from .manifests import validation_errors

FILE_KEY = "(file)"
METADATA_KEY = "_metadata"
METADATA_SCHEMA = "npz_metadata"
NPY_MAGIC = b"\x93NUMPY"
ZIP_LOCAL_MAGIC = b"PK\x03\x04"
MAX_NPY_HEADER_BYTES = 65536  # numpy's own writer stays far below; caps ast.literal_eval input
MAX_METADATA_BYTES = 4 << 20  # _metadata is a few kB of JSON (4 bytes per character in a U array)
DEFAULT_CHUNK_BYTES = 32 << 20  # streamed value checks hold about this much raw data at a time

# --- counts recovery tolerance (docs/data_contract.md, "Counts") -------------------------------
# diffraction is float32: d = fl32(sqrt(k) / s). A correctly rounded float32 result carries a
# relative error of at most u = 2**-24; a generator that computes sqrt and the division in float32
# with s rounded to float32 accumulates at most ~3u. We allow |delta| <= 4u. Then
# c = (d*s)**2 = k (1 + delta)**2, so |c - k| <= ~2 * 4u * k: the tolerance is 8u * c.
# Rounding c recovers k unambiguously while that tolerance is below 0.5, i.e. c < 2**20; larger
# values cannot be verified from float32 amplitudes and are reported as a warning.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
COUNTS_REL_TOL = 8 * FLOAT32_UNIT_ROUNDOFF
MAX_VERIFIABLE_COUNTS = 0.5 / COUNTS_REL_TOL  # = 2**20
# mean(diffraction**2) = mean total counts / dose = mean transmission <= 1 for normalised
# amplitudes (plus Poisson scatter of the mean, a few percent at the study's doses). Above this
# the data are not normalised by amplitude_scale (raw counts or intensity).
NORMALISED_MEAN_SQUARE_LIMIT = 4.0
# amplitude_scale = sqrt(dose)/N is computed in float64; 1e-6 still accepts a float32 round trip.
AMPLITUDE_SCALE_REL_TOL = 1e-6
# measured_mean_counts comes from the same integer counts; 1e-6 covers summation order.
MEAN_COUNTS_REL_TOL = 1e-6


# --- the contract as data -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """One required key: its dtype, symbolic shape and meaning."""

    key: str
    dtype: np.dtype | None  # None: 0-d unicode string (any length)
    shape: tuple[str, ...]
    meaning: str
    tolerated_dtypes: tuple[np.dtype, ...] = ()  # accepted with a warning

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype_name(self) -> str:
        return "unicode string" if self.dtype is None else self.dtype.name

    @property
    def shape_text(self) -> str:
        return "()" if not self.shape else "(" + ", ".join(self.shape) + ("," if len(self.shape) == 1 else "") + ")"


CONTRACT: dict[str, KeySpec] = {
    spec.key: spec
    for spec in (
        KeySpec("diffraction", np.dtype("float32"), ("n", "N", "N"),
                "measured amplitude sqrt(counts) / amplitude_scale, DC at the centre, >= 0"),
        KeySpec("Y", np.dtype("complex64"), ("n", "N", "N"),
                "ground-truth object window under each exposure: objectGuess[s_y:s_y+N, s_x:s_x+N]"),
        KeySpec("objectGuess", np.dtype("complex64"), ("M", "M'"), "the full ground-truth object"),
        KeySpec("probeGuess", np.dtype("complex64"), ("N", "N"), "the true probe, scaled to the dose"),
        KeySpec("xcoords", np.dtype("float64"), ("n",), "probe-centre column in objectGuess pixel indices",
                (np.dtype("float32"),)),
        KeySpec("ycoords", np.dtype("float64"), ("n",), "probe-centre row in objectGuess pixel indices",
                (np.dtype("float32"),)),
        KeySpec("scan_index", np.dtype("int64"), ("n",), "index of the exposure in the full scan"),
        KeySpec(METADATA_KEY, None, (), "JSON text (schemas/npz_metadata.schema.json)"),
    )
}
ARRAY_KEYS = tuple(k for k in CONTRACT if k != METADATA_KEY)


# --- geometry shared with the generator and the engine adapter ----------------------------------


def counts_from_diffraction(diffraction: np.ndarray, amplitude_scale: float) -> np.ndarray:
    """The integer counts ``round((diffraction * amplitude_scale)**2)`` as int64."""
    return np.rint((np.asarray(diffraction, dtype=np.float64) * amplitude_scale) ** 2).astype(np.int64)


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One contract violation (or tolerated deviation) of one key."""

    key: str
    message: str

    def line(self, path: str | os.PathLike, warning: bool = False) -> str:
        return f"{path}: {self.key}: {'warning: ' if warning else ''}{self.message}"


@dataclass
class FileReport:
    """What :func:`check_npz` found in one file. ``ok`` means no errors (warnings allowed)."""

    path: Path
    mode: str = "full"
    size_bytes: int | None = None
    n_images: int | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def passes(self, strict: bool = False) -> bool:
        """Valid under the given strictness (strict: warnings fail too)."""
        return self.ok and not (strict and self.warnings)

    def error(self, key: str, message: str) -> None:
        self.errors.append(Problem(key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(Problem(key, message))

    def lines(self) -> list[str]:
        """One line per problem, errors first: ``path: key: message``."""
        return [p.line(self.path) for p in self.errors] + [p.line(self.path, warning=True) for p in self.warnings]

    def to_dict(self, strict: bool = False) -> dict:
        """The entry of this file in a validation report (schemas/validation_report.schema.json)."""
        return {
            "path": str(self.path),
            "ok": self.passes(strict),
            "size_bytes": self.size_bytes,
            "n_images": self.n_images,
            "errors": [{"key": p.key, "message": p.message} for p in self.errors],
            "warnings": [{"key": p.key, "message": p.message} for p in self.warnings],
        }


@dataclass(frozen=True)
class MemberHeader:
    """The ``.npy`` header of one zip member, read without touching the array data."""

    key: str
    member: str
    version: tuple[int, int]
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    header_bytes: int  # bytes before the data: magic, length field, header text
    data_bytes: int  # bytes after the header in the (uncompressed) member

    @property
    def declared_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class ContractData:
    """A loaded contract NPZ: the arrays (by key) and the parsed ``_metadata``."""

    path: Path
    arrays: dict[str, np.ndarray]
    metadata: dict
    warnings: list[str]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    @property
    def n_images(self) -> int:
        return int(self.arrays["diffraction"].shape[0])

    @property
    def amplitude_scale(self) -> float:
        return float(self.metadata["amplitude_scale"])

    def counts(self) -> np.ndarray:
        """Integer counts recovered from the diffraction amplitudes (int64, (n, N, N))."""
        return counts_from_diffraction(self.arrays["diffraction"], self.amplitude_scale)


# --- header reading -----------------------------------------------------------------------------


class _HeaderError(Exception):
    """A member's .npy header is unreadable; the message is the problem text."""


def _read_exact(stream, nbytes: int) -> bytes:
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise _HeaderError(f"member ends inside the .npy header (expected {nbytes} more bytes, found {len(data)})")
    return data


def _read_npy_header(stream, key: str, info: zipfile.ZipInfo) -> MemberHeader:
    """Parse magic, version and header dict from the start of a member stream (format 1.0-3.0)."""
    magic = _read_exact(stream, 8)
    if magic[:6] != NPY_MAGIC:
        raise _HeaderError(f"not an .npy array (expected magic {NPY_MAGIC!r}, found {magic[:6]!r})")
    version = (magic[6], magic[7])
    if version == (1, 0):
        (length,) = struct.unpack("<H", _read_exact(stream, 2))
        prefix = 10
    elif version in ((2, 0), (3, 0)):
        (length,) = struct.unpack("<I", _read_exact(stream, 4))
        prefix = 12
    else:
        raise _HeaderError(f"unsupported .npy format version (expected 1.0, 2.0 or 3.0, found {version[0]}.{version[1]})")
    if length > MAX_NPY_HEADER_BYTES:
        raise _HeaderError(f".npy header too long (expected <= {MAX_NPY_HEADER_BYTES} bytes, found {length})")
    text_bytes = _read_exact(stream, length)
    try:
        text = text_bytes.decode("utf8" if version == (3, 0) else "latin1")
        # literal_eval evaluates literals only: no names, calls or imports can run.
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _HeaderError(f"unreadable .npy header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        found = sorted(map(str, header)) if isinstance(header, dict) else type(header).__name__
        raise _HeaderError(f"malformed .npy header (expected keys descr, fortran_order, shape, found {found})")
    shape = header["shape"]
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _HeaderError(f"malformed .npy header (expected a shape of non-negative integers, found {shape!r})")
    if not isinstance(header["fortran_order"], bool):
        raise _HeaderError(f"malformed .npy header (expected fortran_order True/False, found {header['fortran_order']!r})")
    try:
        # Building a dtype (even 'O') never unpickles anything; only loading object data would.
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception:
        raise _HeaderError(f"unreadable dtype in .npy header (found descr {header['descr']!r})") from None
    header_bytes = prefix + length
    return MemberHeader(key=key, member=info.filename, version=version, dtype=dtype, shape=shape,
                        fortran_order=header["fortran_order"], header_bytes=header_bytes,
                        data_bytes=info.file_size - header_bytes)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _open_zip(path: Path, report: FileReport) -> zipfile.ZipFile | None:
    """Open the archive, reporting unreadable, empty, non-zip and truncated files."""
    try:
        st = path.stat()
    except OSError as exc:
        report.error(FILE_KEY, f"cannot read ({exc.strerror or exc})")
        return None
    if not path.is_file():
        report.error(FILE_KEY, "not a regular file (expected an NPZ zip archive)")
        return None
    report.size_bytes = st.st_size
    if st.st_size == 0:
        report.error(FILE_KEY, "empty file (expected an NPZ zip archive, found 0 bytes)")
        return None
    try:
        with open(path, "rb") as handle:
            lead = handle.read(8)
    except OSError as exc:
        report.error(FILE_KEY, f"cannot read ({exc.strerror or exc})")
        return None
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, struct.error) as exc:
        if lead.startswith(NPY_MAGIC):
            report.error(FILE_KEY, "a bare .npy array, not an NPZ archive (expected a zip of .npy members)")
        elif lead.startswith(ZIP_LOCAL_MAGIC):
            report.error(FILE_KEY, f"truncated or damaged zip archive (expected a zip central directory, "
                                   f"found none readable: {exc})")
        else:
            report.error(FILE_KEY, f"not a zip archive (expected an NPZ, found leading bytes {lead!r})")
        return None


# --- inspection: headers, shapes, metadata --------------------------------------------------------


@dataclass
class _Inspection:
    headers: dict[str, MemberHeader]  # contract keys whose header passed the per-key rules
    bad: set[str] = field(default_factory=set)  # keys with an error: their values are not checked
    metadata: dict | None = None
    n: int | None = None
    frame: int | None = None  # N
    object_shape: tuple[int, int] | None = None

    def usable(self, *keys: str) -> bool:
        return all(k in self.headers and k not in self.bad for k in keys)


def _read_member_headers(zf: zipfile.ZipFile, size: int, report: FileReport) -> dict[str, MemberHeader]:
    infos = zf.infolist()
    counts = Counter(info.filename for info in infos)
    headers: dict[str, MemberHeader] = {}
    for name in sorted(name for name, count in counts.items() if count > 1):
        # Readers would silently pick one of them: the file is ambiguous.
        report.error(name.removesuffix(".npy"), f"duplicate zip member (expected one {name!r}, found {counts[name]})")
    for info in infos:
        name = info.filename
        if counts[name] > 1:
            continue
        if not name.endswith(".npy"):
            report.warn(name, "unexpected zip member, not an .npy array (ignored by the tools)")
            continue
        key = name[: -len(".npy")]
        if info.header_offset + info.compress_size > size:
            report.error(key, f"member data runs past the end of the file (truncated: expected "
                              f"{info.header_offset + info.compress_size} bytes, found {size})")
            continue
        try:
            with zf.open(info) as stream:
                # For a deflated member this decompresses only the first block or so.
                header = _read_npy_header(stream, key, info)
        except _HeaderError as exc:
            report.error(key, str(exc))
            continue
        except Exception as exc:  # encrypted, unsupported compression, damaged local header, ...
            report.error(key, f"cannot read zip member ({type(exc).__name__}: {exc})")
            continue
        if header.dtype.hasobject:
            expected = CONTRACT[key].dtype_name if key in CONTRACT else "a numeric dtype"
            report.error(key, f"object array: loading it would need pickle, so it was not loaded "
                              f"(expected {expected}, found dtype object {header.dtype.str!r})")
            continue
        if header.declared_bytes != header.data_bytes:
            report.error(key, f"header does not fit the member: shape {_shape_text(header.shape)} of "
                              f"{header.dtype.name} declares {header.declared_bytes} data bytes "
                              f"(expected {header.declared_bytes}, found {header.data_bytes})")
            continue
        headers[key] = header
    return headers


def _check_key_rules(headers: dict[str, MemberHeader], report: FileReport, insp: _Inspection) -> None:
    """Presence, dtype, ndim and memory order of every contract key."""
    for key, spec in CONTRACT.items():
        if key not in headers:
            if not any(p.key == key for p in report.errors):
                report.error(key, f"missing required key (expected {spec.dtype_name} {spec.shape_text})")
            insp.bad.add(key)
            continue
        h = headers[key]
        if spec.dtype is None:
            if h.dtype.kind != "U" or h.shape != ():
                report.error(key, f"not a 0-d unicode string (expected np.array(json_text), found dtype "
                                  f"{h.dtype.str} shape {_shape_text(h.shape)})")
                insp.bad.add(key)
            continue
        native = h.dtype.newbyteorder("<")
        if native == spec.dtype.newbyteorder("<"):
            if h.dtype.byteorder == ">":
                report.warn(key, f"big-endian data (expected {spec.dtype.newbyteorder('<').str}, found {h.dtype.str})")
        elif native in spec.tolerated_dtypes:
            report.warn(key, f"{native.name} coordinates lose precision (expected {spec.dtype_name}, found {native.name})")
        else:
            report.error(key, f"wrong dtype (expected {spec.dtype_name}, found {h.dtype.name})")
            insp.bad.add(key)
        if len(h.shape) != spec.ndim:
            report.error(key, f"wrong number of dimensions (expected {spec.ndim}: {spec.shape_text}, "
                              f"found {len(h.shape)}: {_shape_text(h.shape)})")
            insp.bad.add(key)
        elif h.fortran_order and h.shape and math.prod(h.shape[1:]) > 1:
            report.warn(key, "Fortran-ordered array (expected C order as np.save writes it); read whole, not streamed")
    for key in headers:
        if key not in CONTRACT:
            report.warn(key, "unexpected key (ignored by the tools)")


def _check_shapes(report: FileReport, insp: _Inspection) -> None:
    """diffraction (n,N,N) square; Y, probe, coordinates and object consistent with it."""
    h = insp.headers
    if not insp.usable("diffraction"):
        return
    n, rows, cols = h["diffraction"].shape
    report.n_images = n
    if rows != cols:
        report.error("diffraction", f"frames not square (expected (n, N, N), found {_shape_text((n, rows, cols))})")
        insp.bad.add("diffraction")
        return
    if n == 0 or rows == 0:
        report.error("diffraction", f"no data (expected n >= 1 patterns of N >= 1, found {_shape_text((n, rows, cols))})")
        insp.bad.add("diffraction")
        return
    insp.n, insp.frame = n, rows
    expected = {"Y": (n, rows, rows), "probeGuess": (rows, rows), "xcoords": (n,), "ycoords": (n,), "scan_index": (n,)}
    for key, shape in expected.items():
        if insp.usable(key) and h[key].shape != shape:
            what = "frame size does not match diffraction" if key == "probeGuess" else "shape does not match diffraction"
            report.error(key, f"{what} (expected {_shape_text(shape)}, found {_shape_text(h[key].shape)})")
            insp.bad.add(key)
    if insp.usable("objectGuess"):
        shape = h["objectGuess"].shape
        if shape[0] < rows or shape[1] < rows:
            report.error("objectGuess", f"too small for an N x N window (expected at least {_shape_text((rows, rows))}, "
                                        f"found {_shape_text(shape)})")
            insp.bad.add("objectGuess")
        else:
            insp.object_shape = (int(shape[0]), int(shape[1]))


def _read_member_bytes(zf: zipfile.ZipFile, header: MemberHeader) -> np.ndarray:
    with zf.open(header.member) as stream:
        stream.read(header.header_bytes)
        data = stream.read(header.data_bytes)
    if len(data) != header.data_bytes:
        raise ValueError(f"member data truncated (expected {header.data_bytes} bytes, found {len(data)})")
    order = "F" if header.fortran_order else "C"
    return np.frombuffer(data, dtype=header.dtype).reshape(header.shape, order=order)


def _check_metadata(zf: zipfile.ZipFile, report: FileReport, insp: _Inspection) -> None:
    """Parse ``_metadata`` (a small string, read in header-only mode too) and cross-check it."""
    if not insp.usable(METADATA_KEY):
        return
    header = insp.headers[METADATA_KEY]
    if header.data_bytes > MAX_METADATA_BYTES:
        report.error(METADATA_KEY, f"too large (expected <= {MAX_METADATA_BYTES} bytes, found {header.data_bytes})")
        insp.bad.add(METADATA_KEY)
        return
    try:
        text = str(_read_member_bytes(zf, header).item())
    except Exception as exc:
        report.error(METADATA_KEY, f"cannot read ({type(exc).__name__}: {exc})")
        insp.bad.add(METADATA_KEY)
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        report.error(METADATA_KEY, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
        insp.bad.add(METADATA_KEY)
        return
    for json_path, message in validation_errors(doc, METADATA_SCHEMA):
        key = METADATA_KEY if json_path == "(root)" else f"{METADATA_KEY}/{json_path}"
        report.error(key, message)
        insp.bad.add(METADATA_KEY)
    if not isinstance(doc, dict):
        return
    insp.metadata = doc
    _cross_check_metadata(doc, report, insp)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _cross_check_metadata(doc: dict, report: FileReport, insp: _Inspection) -> None:
    """Metadata that must agree with the arrays' shapes."""
    if insp.n is not None:
        n_images = doc.get("n_images")
        if isinstance(n_images, int) and n_images != insp.n:
            report.error(f"{METADATA_KEY}/n_images", f"does not match the data (expected {insp.n} = diffraction.shape[0], "
                                                     f"found {n_images})")
        selection = doc.get("selection")
        accepted = selection.get("n_accepted") if isinstance(selection, dict) else None
        if isinstance(accepted, int) and accepted != insp.n:
            report.error(f"{METADATA_KEY}/selection/n_accepted",
                         f"does not match the data (expected {insp.n} = diffraction.shape[0], found {accepted})")
    scale, dose = _number(doc.get("amplitude_scale")), _number(doc.get("dose"))
    if insp.frame is not None and scale is not None and dose is not None and dose > 0:
        expected = math.sqrt(dose) / insp.frame
        if not math.isclose(scale, expected, rel_tol=AMPLITUDE_SCALE_REL_TOL):
            report.error(f"{METADATA_KEY}/amplitude_scale",
                         f"not sqrt(dose)/N (expected {expected:.9g}, found {scale:.9g})")
    origin = doc.get("position_origin")
    if insp.object_shape is not None and isinstance(origin, list) and len(origin) == 2:
        expected_origin = position_origin(insp.object_shape)
        if [_number(v) for v in origin] != expected_origin.tolist():
            report.error(f"{METADATA_KEY}/position_origin",
                         f"not round(M/2) - 0.5 of objectGuess {_shape_text(insp.object_shape)} "
                         f"(expected {expected_origin.tolist()}, found {origin})")


def _inspect(zf: zipfile.ZipFile, report: FileReport) -> _Inspection:
    headers = _read_member_headers(zf, report.size_bytes or 0, report)
    insp = _Inspection(headers={k: v for k, v in headers.items() if k in CONTRACT})
    _check_key_rules(headers, report, insp)
    _check_shapes(report, insp)
    _check_metadata(zf, report, insp)
    return insp


# --- value checks (streamed) ----------------------------------------------------------------------


class _Source(Protocol):
    def array(self, key: str) -> np.ndarray: ...

    def chunks(self, key: str, rows: int) -> Iterator[tuple[int, np.ndarray]]: ...


class _ZipSource:
    """Arrays read straight from the zip member streams (CRC checked by zipfile at the end)."""

    def __init__(self, zf: zipfile.ZipFile, headers: dict[str, MemberHeader]):
        self.zf, self.headers = zf, headers

    def array(self, key: str) -> np.ndarray:
        return _read_member_bytes(self.zf, self.headers[key])

    def chunks(self, key: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        h = self.headers[key]
        if h.fortran_order:
            yield 0, self.array(key)
            return
        row_bytes = math.prod(h.shape[1:]) * h.dtype.itemsize
        with self.zf.open(h.member) as stream:
            stream.read(h.header_bytes)
            for start in range(0, h.shape[0], rows):
                count = min(rows, h.shape[0] - start)
                data = stream.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise ValueError(f"member data truncated at pattern {start} "
                                     f"(expected {count * row_bytes} bytes, found {len(data)})")
                yield start, np.frombuffer(data, dtype=h.dtype).reshape((count, *h.shape[1:]))
            stream.read(1)  # reach EOF so zipfile verifies the CRC of the whole member


class _ArraySource:
    """Arrays already in memory (read_contract_npz)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def array(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def chunks(self, key: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        data = self.arrays[key]
        for start in range(0, data.shape[0], rows):
            yield start, data[start:start + rows]


def _index_text(flat_index: int, shape: tuple[int, ...], offset: int = 0) -> str:
    index = np.unravel_index(flat_index, shape)
    return _shape_text((int(index[0]) + offset, *map(int, index[1:])))


def _check_finite_small(key: str, data: np.ndarray, report: FileReport) -> bool:
    finite = np.isfinite(data)
    if finite.all():
        return True
    first = int(np.flatnonzero(~finite.ravel())[0])
    report.error(key, f"{int((~finite).sum())} non-finite values (expected all finite, found "
                      f"{data.ravel()[first]} at index {_index_text(first, data.shape)})")
    return False


@dataclass
class _DiffractionStats:
    nonfinite: int = 0
    first_nonfinite: str = ""
    negative: int = 0
    min_value: float = math.inf
    min_at: str = ""
    sum_sq: float = 0.0
    n_values: int = 0
    max_value: float = 0.0
    integer_valued: bool = True
    noninteger: int = 0
    worst_frac: float = 0.0
    worst_at: str = ""
    too_large: int = 0
    total_counts: int = 0
    pattern_sum: np.ndarray | None = None  # sum of diffraction^2 over patterns: where the DC sits


def _scan_diffraction_chunk(start: int, chunk: np.ndarray, scale: float | None, st: _DiffractionStats) -> None:
    finite = np.isfinite(chunk)
    if not finite.all():
        bad = ~finite
        if not st.nonfinite:
            st.first_nonfinite = f"{chunk.ravel()[int(np.flatnonzero(bad.ravel())[0])]} at index " \
                                 f"{_index_text(int(np.flatnonzero(bad.ravel())[0]), chunk.shape, start)}"
        st.nonfinite += int(bad.sum())
        chunk = np.where(finite, chunk, np.float32(0))
    values = chunk.astype(np.float64)
    low = int(np.argmin(values))
    if values.ravel()[low] < st.min_value:
        st.min_value, st.min_at = float(values.ravel()[low]), _index_text(low, chunk.shape, start)
    st.negative += int((values < 0).sum())
    st.sum_sq += float(np.vdot(values, values))  # vdot flattens: sum of squares
    intensity = (values * values).sum(axis=0)
    st.pattern_sum = intensity if st.pattern_sum is None else st.pattern_sum + intensity
    st.n_values += values.size
    st.max_value = max(st.max_value, float(values.max()))
    if st.integer_valued:
        st.integer_valued = bool(np.array_equal(values, np.rint(values)))
    if scale is None:
        return
    counts = (values * scale) ** 2
    rounded = np.rint(counts)
    frac = np.abs(counts - rounded)
    verifiable = counts <= MAX_VERIFIABLE_COUNTS
    st.too_large += int(values.size - verifiable.sum())
    failing = (frac > COUNTS_REL_TOL * counts) & verifiable
    if failing.any():
        st.noninteger += int(failing.sum())
        masked = np.where(failing, frac, 0.0)
        worst = int(np.argmax(masked))
        if masked.ravel()[worst] > st.worst_frac:
            st.worst_frac = float(masked.ravel()[worst])
            st.worst_at = f"c = {counts.ravel()[worst]:.6g} at index {_index_text(worst, chunk.shape, start)}"
    st.total_counts += int(rounded.sum())


def _dc_at_corners(total: np.ndarray) -> bool:
    """True when the summed patterns hold more intensity in the four corner N/4 x N/4 blocks than
    in the central N/2 x N/2 block: the signature of DC left in the corner (not fft-shifted).

    Far-field patterns concentrate their intensity around DC (the probe's pupil, low object
    frequencies), so DC-centred data put it in the central N/2 x N/2 block.
    """
    rows, cols = total.shape
    qr, qc = rows // 4, cols // 4
    if qr == 0 or qc == 0:
        return False
    centre = total[qr:rows - qr, qc:cols - qc].sum()
    corners = (total[:qr, :qc].sum() + total[:qr, cols - qc:].sum()
               + total[rows - qr:, :qc].sum() + total[rows - qr:, cols - qc:].sum())
    return bool(corners > centre)


def _report_diffraction(st: _DiffractionStats, scale: float | None, metadata: dict | None, n: int,
                        report: FileReport) -> None:
    key = "diffraction"
    if st.nonfinite:
        report.error(key, f"{st.nonfinite} non-finite values (expected all finite, found {st.first_nonfinite})")
    if st.negative:
        report.error(key, f"{st.negative} negative values (expected >= 0, found {st.min_value:.6g} at index {st.min_at})")
    if st.pattern_sum is not None and _dc_at_corners(st.pattern_sum):
        report.warn(key, "most intensity sits at the frame corners, not the centre: DC looks unshifted "
                         "(expected DC-centred patterns, i.e. np.fft.fftshift applied)")
    mean_sq = st.sum_sq / st.n_values if st.n_values else 0.0
    if mean_sq > NORMALISED_MEAN_SQUARE_LIMIT:
        report.error(key, f"looks like unnormalised intensity, not amplitude / amplitude_scale (expected "
                          f"mean(diffraction^2) = mean transmission <= 1, found {mean_sq:.6g})")
    if scale is None:
        if st.integer_valued and st.max_value > 1:
            report.error(key, f"looks like raw counts, not normalised amplitude (expected sqrt(counts) / "
                              f"amplitude_scale, found integer values up to {st.max_value:.6g})")
        return
    if st.noninteger:
        report.error(key, f"counts not recoverable as integers: {st.noninteger} of {st.n_values} values have "
                          f"|c - round(c)| > {COUNTS_REL_TOL:.2g} * c for c = (diffraction * amplitude_scale)^2 "
                          f"(expected integers, found |c - round(c)| = {st.worst_frac:.3g} for {st.worst_at})")
        return
    if st.too_large:
        report.warn(key, f"{st.too_large} values exceed {MAX_VERIFIABLE_COUNTS:.0f} counts, where float32 amplitudes "
                         f"cannot prove integer counts (expected counts < 2^20, found max "
                         f"{(st.max_value * scale) ** 2:.6g})")
    measured = _number(metadata.get("measured_mean_counts")) if metadata else None
    if measured is not None and not st.nonfinite:
        actual = st.total_counts / n
        if not math.isclose(measured, actual, rel_tol=MEAN_COUNTS_REL_TOL, abs_tol=MEAN_COUNTS_REL_TOL):
            report.error(f"{METADATA_KEY}/measured_mean_counts",
                         f"does not match the data (expected {actual:.9g} = recovered counts per pattern, "
                         f"found {measured:.9g})")


def _chunk_rows(frame: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (frame * frame * itemsize))


def _check_values(src: _Source, insp: _Inspection, report: FileReport, chunk_bytes: int) -> None:
    """Finite values, diffraction >= 0 and integer counts, windows inside the object, Y = windows."""
    small: dict[str, np.ndarray] = {}
    for key in ("objectGuess", "probeGuess", "xcoords", "ycoords", "scan_index"):
        if insp.usable(key):
            try:
                small[key] = src.array(key)
            except Exception as exc:
                report.error(key, f"data unreadable ({type(exc).__name__}: {exc})")
                insp.bad.add(key)
                continue
            if key != "scan_index" and not _check_finite_small(key, small[key], report):
                insp.bad.add(key)
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
            report.error("xcoords", f"{int(outside.sum())} windows leave objectGuess {_shape_text(insp.object_shape)} "
                                    f"(expected 0 <= start and start + {insp.frame} <= size per axis, found start "
                                    f"(row {int(sy[j])}, column {int(sx[j])}) for pattern {j} at "
                                    f"(y {float(small['ycoords'][j]):.6g}, x {float(small['xcoords'][j]):.6g}))")
        else:
            starts = (sy, sx)

    n, frame = insp.n, insp.frame
    if insp.usable("diffraction") and n is not None and frame is not None:
        metadata = insp.metadata
        scale = _number(metadata.get("amplitude_scale")) if metadata else None
        scale = scale if scale is not None and scale > 0 else None
        st = _DiffractionStats()
        try:
            for start, chunk in src.chunks("diffraction", _chunk_rows(frame, 4, chunk_bytes)):
                _scan_diffraction_chunk(start, chunk, scale, st)
        except Exception as exc:
            report.error("diffraction", f"data unreadable ({type(exc).__name__}: {exc})")
        else:
            _report_diffraction(st, scale, metadata, n, report)

    if insp.usable("Y") and n is not None and frame is not None:
        compare = starts is not None and insp.usable("objectGuess")
        windows = np.lib.stride_tricks.sliding_window_view(small["objectGuess"], (frame, frame)) if compare else None
        nonfinite, first_nonfinite, differ, first_differ = 0, "", 0, -1
        try:
            for start, chunk in src.chunks("Y", _chunk_rows(frame, 8, chunk_bytes)):
                finite = np.isfinite(chunk)
                if not finite.all():
                    flat = int(np.flatnonzero(~finite.ravel())[0])
                    first_nonfinite = first_nonfinite or f"{chunk.ravel()[flat]} at index {_index_text(flat, chunk.shape, start)}"
                    nonfinite += int((~finite).sum())
                if windows is not None:
                    stop = start + chunk.shape[0]
                    expected = windows[starts[0][start:stop], starts[1][start:stop]]
                    same = (chunk == expected).all(axis=(1, 2))
                    if not same.all():
                        first_differ = first_differ if first_differ >= 0 else start + int(np.flatnonzero(~same)[0])
                        differ += int((~same).sum())
        except Exception as exc:
            report.error("Y", f"data unreadable ({type(exc).__name__}: {exc})")
            return
        if nonfinite:
            report.error("Y", f"{nonfinite} non-finite values (expected all finite, found {first_nonfinite})")
        if differ:
            j = first_differ
            report.error("Y", f"{differ} patches differ from their objectGuess window (expected Y[j] == "
                              f"objectGuess[s_y:s_y+N, s_x:s_x+N] at the xcoords/ycoords window, found first "
                              f"difference at pattern {j}, window start (row {int(starts[0][j])}, "
                              f"column {int(starts[1][j])}))")


# --- public entry points --------------------------------------------------------------------------


def check_npz(path: str | os.PathLike, full: bool = True, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FileReport:
    """Check one file against the contract; never raises for a bad file.

    ``full=False`` (header-only) reads the zip directory, the ``.npy`` headers and ``_metadata``
    only; ``full=True`` also streams the array data in chunks of about ``chunk_bytes``.
    """
    report = FileReport(path=Path(path), mode="full" if full else "header-only")
    try:
        zf = _open_zip(report.path, report)
        if zf is None:
            return report
        with zf:
            insp = _inspect(zf, report)
            if full:
                _check_values(_ZipSource(zf, insp.headers), insp, report, chunk_bytes)
    except Exception as exc:  # a bad file must become a reported error, never a traceback
        report.error(FILE_KEY, f"could not be checked ({type(exc).__name__}: {exc})")
    return report


def read_contract_npz(path: str | os.PathLike, *, check_values: bool = True,
                      keys: Iterable[str] | None = None) -> ContractData:
    """Load a contract NPZ safely (``allow_pickle=False``) after checking it.

    Headers and metadata are always checked first, so nothing is loaded from a file whose
    headers are wrong; with ``check_values`` the loaded arrays get the full value checks too.
    ``keys`` loads only those arrays (``()``: the checked metadata alone, without reading any
    array data); value checks need every array, so they go with ``keys=None`` only.
    Raises :class:`ContractError` with the first problem line. ``xcoords``/``ycoords`` are
    returned as float64 even when stored as float32 (a warning).
    """
    wanted = ARRAY_KEYS if keys is None else tuple(keys)
    if check_values and keys is not None:
        raise ValueError("value checks need every array: use keys=None with check_values=True")
    report = FileReport(path=Path(path))
    try:
        zf = _open_zip(report.path, report)
        if zf is not None:
            with zf:
                insp = _inspect(zf, report)
    except Exception as exc:
        report.error(FILE_KEY, f"could not be checked ({type(exc).__name__}: {exc})")
    if report.errors:
        raise ContractError(report.lines()[0])
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(report.path, allow_pickle=False) as npz:
            for key in wanted:
                arrays[key] = npz[key]
    except Exception as exc:
        raise ContractError(f"{report.path}: {key}: cannot load ({type(exc).__name__}: {exc})") from None
    if check_values:
        _check_values(_ArraySource(arrays), insp, report, DEFAULT_CHUNK_BYTES)
        if report.errors:
            raise ContractError(report.lines()[0])
    for key in ("xcoords", "ycoords"):
        if key in arrays:
            arrays[key] = arrays[key].astype(np.float64, copy=False)
    return ContractData(path=report.path, arrays=arrays, metadata=insp.metadata or {},
                        warnings=[p.line(report.path, warning=True) for p in report.warnings])


def write_contract_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict) -> Path:
    """Write a contract NPZ: uncompressed ``np.savez`` layout, fixed member order and timestamps.

    The same arrays and metadata give the same bytes. Written to a temporary file in the same
    folder and renamed, so a reader never sees half a file. Arrays are cast to the contract
    dtypes; ``metadata`` is stored as a 0-d unicode JSON string (never an object array).
    """
    path = Path(path)
    members = {key: np.ascontiguousarray(arrays[key], dtype=CONTRACT[key].dtype) for key in ARRAY_KEYS}
    members[METADATA_KEY] = np.array(json.dumps(metadata, sort_keys=True))
    write_npz_atomic(path, members)
    return path


def example_arrays(n: int = 6, frame: int = 8, object_size: int = 20, dose: int = 1000,
                   seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """A tiny, physically consistent contract dataset (for tests, examples and benchmarks).

    A random-phase object, a Gaussian probe scaled to ``dose``, positions on a raster whose
    pty-chi positions are whole pixels (no sub-pixel residual), counts Poisson-drawn from
    ``|fft2(probe * window)|^2`` (the pty-chi forward model) and stored as the contract says.
    """
    rng = np.random.default_rng(seed)
    shape = (object_size, object_size)
    obj = (np.exp(1j * rng.uniform(-0.5, 0.5, shape)) * rng.uniform(0.8, 1.0, shape)).astype(np.complex64)
    yy, xx = np.mgrid[:frame, :frame] - (frame - 1) / 2.0
    probe = np.exp(-(xx**2 + yy**2) / (2 * (frame / 6.0) ** 2)).astype(np.complex128)
    probe *= math.sqrt(dose / (frame * frame * np.sum(np.abs(probe) ** 2)))  # sum |fft2(P)|^2 = dose
    origin = position_origin(shape)
    # Whole-pixel pty-chi positions p keep every window inside: window start = p + O - (N-1)/2.
    lo, hi = -origin[0] + (frame - 1) / 2.0, object_size - frame - origin[0] + (frame - 1) / 2.0
    steps = np.arange(math.ceil(lo), math.floor(hi) + 1)
    grid = [(y, x) for y in steps for x in steps]
    picks = rng.choice(len(grid), size=n, replace=len(grid) < n)
    p = np.array([grid[i] for i in picks], dtype=np.float64)
    ycoords, xcoords = p[:, 0] + origin[0], p[:, 1] + origin[1]
    sy, sx = window_starts(np.stack([ycoords, xcoords], axis=1), shape, frame).T
    windows = np.stack([obj[a:a + frame, b:b + frame] for a, b in zip(sy, sx)])
    expected = np.abs(np.fft.fft2(probe * windows)) ** 2
    counts = np.fft.fftshift(rng.poisson(expected), axes=(-2, -1))
    scale = math.sqrt(dose) / frame
    arrays = {
        "diffraction": (np.sqrt(counts) / scale).astype(np.float32),
        "Y": windows.astype(np.complex64),
        "objectGuess": obj,
        "probeGuess": probe.astype(np.complex64),
        "xcoords": xcoords,
        "ycoords": ycoords,
        "scan_index": picks.astype(np.int64),
    }
    metadata = {
        "schema_version": "1.0", "generator": "example", "generator_version": "0",
        "design_name": "example", "design_hash": "0" * 64, "dose": int(dose), "split": "train",
        "view": "baseline", "n_images": n, "amplitude_scale": scale,
        "expected_mean_counts": float(expected.sum(axis=(1, 2)).mean()),
        "measured_mean_counts": float(counts.sum(axis=(1, 2)).mean()),
        "seeds": {"simulation": seed, "grouping": seed, "subsampling": seed}, "noise_seed": seed,
        "probe": {"model": "gaussian", "nominal_diameter_px": frame / 2.0, "measured_diameter_px": frame / 2.0},
        "object": {"model": "random_phase"}, "scan": {"pattern": "raster"},
        "selection": {"selection_strategy": "direct", "spacing_threshold": 0.0, "n_accepted": n,
                      "n_rejected": 0, "acceptance_rate": 1.0, "measured_overlap": None, "neighbours": 4},
        "object_pixel_size_m": 1e-8, "wavelength_m": 1.4e-10, "probe_diameter_px": frame / 2.0,
        "position_origin": origin.tolist(),
    }
    return arrays, metadata


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
