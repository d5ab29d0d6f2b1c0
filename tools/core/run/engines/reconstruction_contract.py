"""The reconstruction contract (docs/reconstruction_contract.md): the NPZ an external method writes.

An external program run by the ``command`` engine hands back one NPZ. Before anything in it is
accepted, :func:`check_reconstruction_npz` checks it against the :class:`ReconstructionFrame` of
the job (object shape, probe size, number of positions, epochs): the zip directory and every
``.npy`` header first (declared sizes against the file, no pickle, shapes against the frame), so
nothing is loaded whose size was not already known to be the job's own; then the values
(``np.load(..., allow_pickle=False)``), which must be finite, and the optional ``_metadata``.

Every violation is one line ``path: key: what is wrong (expected ..., found ...)``;
:func:`read_reconstruction_npz` raises :class:`ContractError` holding all of them, errors first.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...contract.reading import MemberHeader, open_zip, read_member_headers
from ...contract.spec import (
    FILE_KEY,
    MAX_METADATA_BYTES,
    METADATA_KEY,
    FileReport,
    index_text,
    shape_text,
)
from ...contract.streaming import read_member_bytes
from ...errors import ContractError, ManifestError
from ...manifests import parse_json

COMPLEX_DTYPES = (np.dtype("complex64"), np.dtype("complex128"))
FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))
INTEGER_KINDS = "iu"


@dataclass(frozen=True)
class ReconstructionFrame:
    """What a job's reconstruction must fit, taken from the engine's inputs."""

    object_shape: tuple[int, int]  # (M, M'): the objectGuess frame
    probe_size: int  # N
    n_positions: int  # n
    num_epochs: int  # loss epochs lie in [0, num_epochs]

    def dims(self) -> dict[str, int]:
        return {"M": self.object_shape[0], "M'": self.object_shape[1], "N": self.probe_size, "n": self.n_positions}


@dataclass(frozen=True)
class OutputKey:
    """One key of the reconstruction NPZ."""

    key: str
    dtypes: tuple[np.dtype, ...] | str  # accepted dtypes, or the accepted numpy kinds ("iu")
    shape: tuple[str, ...]  # symbols of ReconstructionFrame.dims(); "k" is the loss length
    required: bool
    meaning: str

    @property
    def dtype_text(self) -> str:
        if isinstance(self.dtypes, str):
            return "an integer dtype"
        return " or ".join(d.name for d in self.dtypes)

    @property
    def shape_text(self) -> str:
        return "(" + ", ".join(self.shape) + ("," if len(self.shape) == 1 else "") + ")"

    def accepts(self, dtype: np.dtype) -> bool:
        if isinstance(self.dtypes, str):
            return dtype.kind in self.dtypes
        return dtype.newbyteorder("<") in self.dtypes


OUTPUT_KEYS: dict[str, OutputKey] = {
    spec.key: spec
    for spec in (
        OutputKey("object", COMPLEX_DTYPES, ("M", "M'"), True,
                  "the reconstructed object, in the objectGuess frame (pixel i at coordinate i)"),
        OutputKey("probe", COMPLEX_DTYPES, ("N", "N"), False,
                  "the reconstructed probe (first mode), same frame and scale as probeGuess"),
        OutputKey("positions_x_px", FLOAT_DTYPES, ("n",), False,
                  "refined probe-centre columns, xcoords frame, in input order"),
        OutputKey("positions_y_px", FLOAT_DTYPES, ("n",), False,
                  "refined probe-centre rows, ycoords frame, in input order"),
        OutputKey("loss_epochs", INTEGER_KINDS, ("k",), False,
                  "epoch of each loss value: strictly increasing, within [0, num_epochs]"),
        OutputKey("loss_values", FLOAT_DTYPES, ("k",), False, "the method's loss at each of those epochs"),
    )
}
#: Keys that come together or not at all.
PAIRED_KEYS = (("positions_x_px", "positions_y_px"), ("loss_epochs", "loss_values"))

#: The optional fields of ``_metadata`` (a JSON object), each with its check.
METADATA_FIELDS: dict[str, str] = {
    "method": "a non-empty string: the method's name",
    "method_version": "a non-empty string: the method's version",
    "reconstruction_s": "a finite number >= 0: seconds spent reconstructing (without start-up and I/O)",
    "parameters": "a JSON object: the method's settings, recorded as given",
    "notes": "a string",
}


@dataclass
class Reconstruction:
    """A reconstruction NPZ that passed the contract: object complex64, the optional parts or None."""

    path: Path
    object: np.ndarray
    probe: np.ndarray | None
    positions_x_px: np.ndarray | None  # float64
    positions_y_px: np.ndarray | None
    loss_epochs: np.ndarray | None  # int64
    loss_values: np.ndarray | None  # float64
    metadata: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _check_header(header: MemberHeader, spec: OutputKey, frame: ReconstructionFrame, report: FileReport) -> bool:
    """dtype and shape of one member against the frame; True when its data may be loaded."""
    ok = True
    if not spec.accepts(header.dtype):
        report.error(spec.key, f"wrong dtype (expected {spec.dtype_text}, found {header.dtype.name})")
        ok = False
    dims = frame.dims()
    if len(header.shape) != len(spec.shape):
        report.error(spec.key, f"wrong number of dimensions (expected {len(spec.shape)}: {spec.shape_text}, "
                               f"found {len(header.shape)}: {shape_text(header.shape)})")
        return False
    if spec.shape == ("k",):
        limit = frame.num_epochs + 1
        if header.shape[0] > limit:
            report.error(spec.key, f"more entries than epochs (expected at most {limit} for epochs 0..{frame.num_epochs}, "
                                   f"found {header.shape[0]})")
            ok = False
        return ok
    expected = tuple(dims[s] for s in spec.shape)
    if header.shape != expected:
        report.error(spec.key, f"wrong shape (expected {spec.shape_text} = {shape_text(expected)}, "
                               f"found {shape_text(header.shape)})")
        ok = False
    return ok


def _check_metadata(zf: Any, header: MemberHeader, report: FileReport) -> dict | None:
    """The optional ``_metadata``: a 0-d unicode JSON object with known fields only."""
    if header.dtype.kind != "U" or header.shape != ():
        report.error(METADATA_KEY, f"not a 0-d unicode string (expected np.array(json_text), found dtype "
                                   f"{header.dtype.str} shape {shape_text(header.shape)})")
        return None
    if header.data_bytes > MAX_METADATA_BYTES:
        report.error(METADATA_KEY, f"too large (expected <= {MAX_METADATA_BYTES} bytes, found {header.data_bytes})")
        return None
    try:
        text = str(read_member_bytes(zf, header).item())
    except Exception as exc:  # noqa: BLE001 - a damaged member is a reported problem, never a traceback
        report.error(METADATA_KEY, f"cannot read ({type(exc).__name__}: {exc})")
        return None
    try:
        doc = parse_json(text, METADATA_KEY)
    except ManifestError as exc:
        report.error(METADATA_KEY, str(exc).removeprefix(f"{METADATA_KEY}: "))
        return None
    if not isinstance(doc, dict):
        report.error(METADATA_KEY, f"not a JSON object (expected {{...}}, found {type(doc).__name__})")
        return None
    for name, value in doc.items():
        where = f"{METADATA_KEY}/{name}"
        if name not in METADATA_FIELDS:
            report.error(where, f"unknown field (expected one of {', '.join(METADATA_FIELDS)})")
        elif ((name in ("method", "method_version") and not (isinstance(value, str) and value))
              or (name == "notes" and not isinstance(value, str))):
            report.error(where, f"expected {METADATA_FIELDS[name]}, found {value!r}")
        elif name == "parameters" and not isinstance(value, dict):
            report.error(where, f"expected {METADATA_FIELDS[name]}, found {type(value).__name__}")
        elif name == "reconstruction_s" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                             or not math.isfinite(value) or value < 0):
            report.error(where, f"expected {METADATA_FIELDS[name]}, found {value!r}")
    return doc


def _check_finite(key: str, values: np.ndarray, report: FileReport) -> None:
    bad = ~np.isfinite(values)
    count = int(np.count_nonzero(bad))
    if count:
        first = index_text(int(np.flatnonzero(bad)[0]), values.shape)
        report.error(key, f"not finite (expected finite values, found {count} NaN or inf, first at {first})")


def _check_values(arrays: dict[str, np.ndarray], frame: ReconstructionFrame, report: FileReport) -> None:
    for key in ("object", "probe", "positions_x_px", "positions_y_px", "loss_values"):
        if key in arrays:
            _check_finite(key, arrays[key], report)
    epochs = arrays.get("loss_epochs")
    if epochs is not None and epochs.size:
        low, high = int(epochs.min()), int(epochs.max())
        if low < 0 or high > frame.num_epochs:
            report.error("loss_epochs", f"outside the job's epochs (expected 0 <= epoch <= {frame.num_epochs}, "
                                        f"found {low}..{high})")
        steps = np.diff(epochs.astype(np.int64))
        if np.any(steps <= 0):
            at = int(np.flatnonzero(steps <= 0)[0]) + 1
            report.error("loss_epochs", f"not strictly increasing (expected each epoch once, in order, "
                                        f"found {int(epochs[at - 1])} then {int(epochs[at])} at index {at})")


def _check_pairs(present: set[str], report: FileReport) -> None:
    for first, second in PAIRED_KEYS:
        if (first in present) != (second in present):
            have, lack = (first, second) if first in present else (second, first)
            report.error(lack, f"missing (expected together with {have}, or neither)")


def check_reconstruction_npz(path: str | os.PathLike,
                             frame: ReconstructionFrame) -> tuple[FileReport, Reconstruction | None]:
    """Check ``path`` against the reconstruction contract for ``frame``; never raises for a bad file.

    Returns the report and, when it has no errors, the loaded :class:`Reconstruction`.
    """
    report = FileReport(path=Path(path), mode="reconstruction")
    arrays: dict[str, np.ndarray] = {}
    metadata: dict | None = None
    try:
        zf = open_zip(report.path, report)
        if zf is None:
            return report, None
        with zf:
            headers = read_member_headers(zf, report.size_bytes or 0, report)
            reported = {p.key for p in report.errors}
            loadable = []
            for key, spec in OUTPUT_KEYS.items():
                if key in headers:
                    if _check_header(headers[key], spec, frame, report):
                        loadable.append(key)
                elif spec.required and key not in reported:
                    report.error(key, f"missing required key (expected {spec.dtype_text} {spec.shape_text})")
            for key in sorted(set(headers) - set(OUTPUT_KEYS) - {METADATA_KEY}):
                report.warn(key, "unexpected key (ignored)")
            _check_pairs({k for k in OUTPUT_KEYS if k in headers or k in reported}, report)
            if METADATA_KEY in headers:
                metadata = _check_metadata(zf, headers[METADATA_KEY], report)
        loss_lengths = {headers[k].shape[0] for k in ("loss_epochs", "loss_values") if k in loadable}
        if len(loss_lengths) > 1:
            report.error("loss_values", f"length differs from loss_epochs (expected {headers['loss_epochs'].shape[0]}, "
                                        f"found {headers['loss_values'].shape[0]})")
        if loadable:
            # Every loadable member's declared size is the job's own (checked above), so this is bounded.
            with np.load(report.path, allow_pickle=False) as npz:
                for key in loadable:
                    arrays[key] = np.asarray(npz[key])
            _check_values(arrays, frame, report)
    except Exception as exc:  # noqa: BLE001 - a bad file must become a reported error, never a traceback
        report.error(FILE_KEY, f"could not be checked ({type(exc).__name__}: {exc})")
    if report.errors:
        return report, None

    def optional(key: str, dtype: str) -> np.ndarray | None:
        return arrays[key].astype(dtype) if key in arrays else None

    return report, Reconstruction(
        path=report.path,
        object=arrays["object"].astype(np.complex64),
        probe=optional("probe", "complex64"),
        positions_x_px=optional("positions_x_px", "float64"),
        positions_y_px=optional("positions_y_px", "float64"),
        loss_epochs=optional("loss_epochs", "int64"),
        loss_values=optional("loss_values", "float64"),
        metadata=metadata or {},
        warnings=[p.line(report.path, warning=True) for p in report.warnings],
    )


def read_reconstruction_npz(path: str | os.PathLike, frame: ReconstructionFrame) -> Reconstruction:
    """The reconstruction at ``path`` once it passed the contract for ``frame``.

    Raises :class:`ContractError` whose message is every problem line, errors first (its first
    line is what a job records as its error).
    """
    report, reconstruction = check_reconstruction_npz(path, frame)
    if reconstruction is None:
        raise ContractError("\n".join(report.lines()))
    return reconstruction
