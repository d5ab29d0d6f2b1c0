"""The NPZ data contract as data (docs/data_contract.md): keys, dtypes, shapes, tolerances, limits.

Also the vocabulary of every check: a :class:`Problem` is one line ``path: key: message`` and a
:class:`FileReport` collects them for one file. Everything else in the package builds on this
module and nothing here reads a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FILE_KEY = "(file)"
METADATA_KEY = "_metadata"
METADATA_SCHEMA = "npz_metadata"
NPY_MAGIC = b"\x93NUMPY"
ZIP_LOCAL_MAGIC = b"PK\x03\x04"
MAX_NPY_HEADER_BYTES = 65536  # numpy's own writer stays far below; caps ast.literal_eval input
MAX_METADATA_BYTES = 4 << 20  # _metadata is a few kB of JSON (4 bytes per character in a U array)
# Streamed value checks hold about this much raw data at a time; the diffraction check works on
# float64 copies (5 live at once), so 8 MiB of float32 patterns costs ~80 MB of working memory.
DEFAULT_CHUNK_BYTES = 8 << 20

# --- limits that keep every reader bounded in memory -------------------------------------------
# An NPZ holds eight members: its zip central directory is well under 1 kB. zipfile parses the
# whole directory into Python objects (~10x its size), so a forged huge one is refused first.
MAX_CENTRAL_DIRECTORY_BYTES = 1 << 20
# Arrays the value checks hold whole: probeGuess, the per-pattern coordinates and scan_index
# (8 bytes a pattern: 8 Mi patterns, a ~400 GB file of 64 x 64 frames) and Fortran-ordered
# arrays, which cannot be streamed by pattern.
MAX_WHOLE_READ_BYTES = 64 << 20
# Deflate codes a 258-byte match in at least 2 bits, so no deflate stream expands more than
# 1032:1; a member declaring more is lying about its size.
MAX_DEFLATE_RATIO = 1032
# Measured with zlib on contract data: diffraction amplitudes deflate ~21:1 at 1e3 photons per
# pattern, ~200:1 at 10 photons (99.3 % zero pixels), ~680:1 at 1 photon; objects and Y ~1.1-7:1.
# An all-zero payload deflates ~1030:1. Above this ratio a large member is a likely deflate bomb.
MAX_COMPRESSION_RATIO = 800
BOMB_MIN_BYTES = 64 << 20  # smaller members decompress harmlessly whatever their ratio

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
# N^2 sum |probe|^2 = dose. complex64 rounding moves each |P|^2 by at most ~2^-23 relative, and
# each float32 rescaling (a thinned dose ladder rescales once per step) by about as much again:
# 1e-4 leaves a wide margin above that, yet any probe not scaled to the dose misses by far more.
PROBE_POWER_REL_TOL = 1e-4
# power_fractions are each mode's share of that total, from the same arrays: the same margin.
POWER_FRACTION_ABS_TOL = 1e-4


# --- the contract as data -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """One member: its dtype, symbolic shape and meaning."""

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

# Optional members (realistic conditions), written after the eight required ones in this order.
# A file may hold any of them; a file without them is exactly today's contract.
OPTIONAL: dict[str, KeySpec] = {
    spec.key: spec
    for spec in (
        KeySpec("probe_modes", np.dtype("complex64"), ("K", "N", "N"),
                "K >= 2 mutually orthogonal probe modes at the dose scale: probe_modes[0] == probeGuess, "
                "N^2 sum |probe_modes|^2 = dose"),
        KeySpec("nominal_xcoords", np.dtype("float64"), ("n",),
                "the probe-centre column an experiment reports (the engines get these; xcoords stays the truth)",
                (np.dtype("float32"),)),
        KeySpec("nominal_ycoords", np.dtype("float64"), ("n",),
                "the probe-centre row an experiment reports (the engines get these; ycoords stays the truth)",
                (np.dtype("float32"),)),
        KeySpec("valid_pixels", np.dtype("bool"), ("N", "N"),
                "detector mask, DC-centred like diffraction: True = measured; at least one True"),
    )
}
OPTIONAL_KEYS = tuple(OPTIONAL)
NOMINAL_KEYS = ("nominal_xcoords", "nominal_ycoords")
#: Every member a contract file may hold, in file order.
MEMBERS: dict[str, KeySpec] = {**CONTRACT, **OPTIONAL}


def continuous_counts(metadata: dict | None) -> bool:
    """True when ``_metadata/detector/counts`` says the counts are continuous (readout noise), not integers."""
    detector = metadata.get("detector") if isinstance(metadata, dict) else None
    return isinstance(detector, dict) and detector.get("counts") == "continuous"


def counts_from_diffraction(diffraction: np.ndarray, amplitude_scale: float, continuous: bool = False) -> np.ndarray:
    """The integer counts ``round((diffraction * amplitude_scale)**2)`` as int64; with ``continuous``
    (a detector with readout noise) the unrounded ``(diffraction * amplitude_scale)**2`` as float64."""
    counts = (np.asarray(diffraction, dtype=np.float64) * amplitude_scale) ** 2
    return counts if continuous else np.rint(counts).astype(np.int64)


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as numpy prints it: ``(6,)``, ``(6, 8, 8)``."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def index_text(flat_index: int, shape: tuple[int, ...], offset: int = 0) -> str:
    """The index of element ``flat_index`` of an array of ``shape`` whose first axis starts at ``offset``."""
    index = np.unravel_index(flat_index, shape)
    return shape_text((int(index[0]) + offset, *map(int, index[1:])))


def size_text(nbytes: int) -> str:
    """``123 bytes``, ``4.0 MiB``, ``215.0 GiB``."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"


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
    """What a check found in one file. ``ok`` means no errors (warnings allowed)."""

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
