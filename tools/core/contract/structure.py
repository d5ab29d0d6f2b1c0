"""Structural checks (header-only mode): keys, dtypes, shapes and the ``_metadata`` document.

:func:`inspect` reads the zip directory, every member's ``.npy`` header and the small
``_metadata`` string — no array data — and returns what the value checks build on.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from typing import Any

from ..geometry import position_origin
from ..manifests import validation_errors
from .reading import MemberHeader, read_member_headers
from .spec import (
    AMPLITUDE_SCALE_REL_TOL,
    CONTRACT,
    MAX_METADATA_BYTES,
    MEMBERS,
    METADATA_KEY,
    METADATA_SCHEMA,
    NOMINAL_KEYS,
    FileReport,
    KeySpec,
    shape_text,
)
from .streaming import read_member_bytes


@dataclass
class Inspection:
    """What the header checks learnt about one file."""

    headers: dict[str, MemberHeader]  # contract keys whose header passed the per-key rules
    bad: set[str] = field(default_factory=set)  # keys with an error: their values are not checked
    metadata: dict | None = None
    n: int | None = None
    frame: int | None = None  # N
    object_shape: tuple[int, int] | None = None
    dose: float | None = None  # the metadata dose, once amplitude_scale agrees with it

    def usable(self, *keys: str) -> bool:
        return all(k in self.headers and k not in self.bad for k in keys)


def _check_dtype(key: str, spec: KeySpec, h: MemberHeader, report: FileReport, insp: Inspection) -> None:
    """Dtype (exact, tolerated with a warning, or wrong), ndim and memory order of one member."""
    if spec.dtype is None:
        if h.dtype.kind != "U" or h.shape != ():
            report.error(key, f"not a 0-d unicode string (expected np.array(json_text), found dtype "
                              f"{h.dtype.str} shape {shape_text(h.shape)})")
            insp.bad.add(key)
        return
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
                          f"found {len(h.shape)}: {shape_text(h.shape)})")
        insp.bad.add(key)
    elif h.fortran_order and h.shape and math.prod(h.shape[1:]) > 1:
        report.warn(key, "Fortran-ordered array (expected C order as np.save writes it); read whole, not streamed")


def _check_key_rules(headers: dict[str, MemberHeader], report: FileReport, insp: Inspection) -> None:
    """Presence of every required key; dtype, ndim and memory order of every member present."""
    for key, spec in MEMBERS.items():
        if key in headers:
            _check_dtype(key, spec, headers[key], report, insp)
        elif key in CONTRACT:
            if not any(p.key == key for p in report.errors):
                report.error(key, f"missing required key (expected {spec.dtype_name} {spec.shape_text})")
            insp.bad.add(key)
    present = [key for key in NOMINAL_KEYS if key in headers]
    if len(present) == 1:
        missing = next(key for key in NOMINAL_KEYS if key not in headers)
        report.error(missing, f"missing (expected nominal_xcoords and nominal_ycoords together, found only {present[0]})")
        insp.bad.add(present[0])
    for key in headers:
        if key not in MEMBERS:
            report.warn(key, "unexpected key (ignored by the tools)")


def _check_shapes(report: FileReport, insp: Inspection) -> None:
    """diffraction (n,N,N) square; Y, probe, coordinates and object consistent with it."""
    h = insp.headers
    if not insp.usable("diffraction"):
        return
    n, rows, cols = h["diffraction"].shape
    report.n_images = n
    if rows != cols:
        report.error("diffraction", f"frames not square (expected (n, N, N), found {shape_text((n, rows, cols))})")
        insp.bad.add("diffraction")
        return
    if n == 0 or rows == 0:
        report.error("diffraction", f"no data (expected n >= 1 patterns of N >= 1, found {shape_text((n, rows, cols))})")
        insp.bad.add("diffraction")
        return
    insp.n, insp.frame = n, rows
    expected = {"Y": (n, rows, rows), "probeGuess": (rows, rows), "xcoords": (n,), "ycoords": (n,), "scan_index": (n,)}
    for key, shape in expected.items():
        if insp.usable(key) and h[key].shape != shape:
            what = "frame size does not match diffraction" if key == "probeGuess" else "shape does not match diffraction"
            report.error(key, f"{what} (expected {shape_text(shape)}, found {shape_text(h[key].shape)})")
            insp.bad.add(key)
    _check_optional_shapes(report, insp)
    if insp.usable("objectGuess"):
        shape = h["objectGuess"].shape
        if shape[0] < rows or shape[1] < rows:
            report.error("objectGuess", f"too small for an N x N window (expected at least {shape_text((rows, rows))}, "
                                        f"found {shape_text(shape)})")
            insp.bad.add("objectGuess")
        else:
            insp.object_shape = (int(shape[0]), int(shape[1]))


def _check_optional_shapes(report: FileReport, insp: Inspection) -> None:
    """Optional members (realistic conditions) consistent with diffraction: n positions, N x N frames."""
    h, n, frame = insp.headers, insp.n, insp.frame
    expected = {"nominal_xcoords": (n,), "nominal_ycoords": (n,), "valid_pixels": (frame, frame)}
    for key, shape in expected.items():
        if insp.usable(key) and h[key].shape != shape:
            what = "frame size does not match diffraction" if key == "valid_pixels" else "shape does not match diffraction"
            report.error(key, f"{what} (expected {shape_text(shape)}, found {shape_text(h[key].shape)})")
            insp.bad.add(key)
    if insp.usable("probe_modes"):
        shape = h["probe_modes"].shape
        if shape[1:] != (frame, frame):
            report.error("probe_modes", f"frame size does not match diffraction (expected (K, {frame}, {frame}), "
                                        f"found {shape_text(shape)})")
            insp.bad.add("probe_modes")
        elif shape[0] < 2:
            report.error("probe_modes", f"fewer than two modes (expected (K, N, N) with K >= 2: a single mode is "
                                        f"probeGuess alone, found {shape_text(shape)})")
            insp.bad.add("probe_modes")


def _check_metadata(zf: zipfile.ZipFile, report: FileReport, insp: Inspection) -> None:
    """Parse ``_metadata`` (a small string, read in header-only mode too) and cross-check it."""
    if not insp.usable(METADATA_KEY):
        return
    header = insp.headers[METADATA_KEY]
    if header.data_bytes > MAX_METADATA_BYTES:
        report.error(METADATA_KEY, f"too large (expected <= {MAX_METADATA_BYTES} bytes, found {header.data_bytes})")
        insp.bad.add(METADATA_KEY)
        return
    try:
        text = str(read_member_bytes(zf, header).item())
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


def number(value: Any) -> float | None:
    """A finite JSON number as float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _cross_check_metadata(doc: dict, report: FileReport, insp: Inspection) -> None:
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
    scale, dose = number(doc.get("amplitude_scale")), number(doc.get("dose"))
    if insp.frame is not None and scale is not None and dose is not None and dose > 0:
        expected = math.sqrt(dose) / insp.frame
        if not math.isclose(scale, expected, rel_tol=AMPLITUDE_SCALE_REL_TOL):
            report.error(f"{METADATA_KEY}/amplitude_scale",
                         f"not sqrt(dose)/N (expected {expected:.9g}, found {scale:.9g})")
        elif METADATA_KEY not in insp.bad:
            insp.dose = dose
    origin = doc.get("position_origin")
    if insp.object_shape is not None and isinstance(origin, list) and len(origin) == 2:
        expected_origin = position_origin(insp.object_shape)
        if [number(v) for v in origin] != expected_origin.tolist():
            report.error(f"{METADATA_KEY}/position_origin",
                         f"not round(M/2) - 0.5 of objectGuess {shape_text(insp.object_shape)} "
                         f"(expected {expected_origin.tolist()}, found {origin})")
    _cross_check_realistic(doc, report, insp)


def _cross_check_realistic(doc: dict, report: FileReport, insp: Inspection) -> None:
    """The realistic-condition metadata blocks agree with the optional members and with each other."""
    detector = doc.get("detector")
    if isinstance(detector, dict):
        noise = number(detector.get("readout_noise_adu"))
        if noise is not None and noise > 0 and detector.get("counts") != "continuous":
            report.error(f"{METADATA_KEY}/detector/counts", f"readout noise makes the counts continuous (expected "
                                                            f"'continuous' with readout_noise_adu {noise:g}, "
                                                            f"found {detector.get('counts')!r})")
        masked = detector.get("n_masked_pixels")
        if isinstance(masked, int) and masked > 0 and "valid_pixels" not in insp.headers:
            report.error("valid_pixels", f"missing (expected the detector mask with _metadata/detector/n_masked_pixels "
                                         f"= {masked})")
    modes = doc.get("probe_modes")
    if isinstance(modes, dict):
        count = modes.get("count")
        if "probe_modes" not in insp.headers:
            if not any(p.key == "probe_modes" for p in report.errors):
                report.error("probe_modes", f"missing (expected the {count} modes _metadata/probe_modes describes)")
        elif insp.usable("probe_modes") and isinstance(count, int) and count != insp.headers["probe_modes"].shape[0]:
            report.error(f"{METADATA_KEY}/probe_modes/count", f"does not match the data (expected "
                                                              f"{insp.headers['probe_modes'].shape[0]} = "
                                                              f"probe_modes.shape[0], found {count})")
        fractions = modes.get("power_fractions")
        if isinstance(count, int) and isinstance(fractions, list) and len(fractions) != count:
            report.error(f"{METADATA_KEY}/probe_modes/power_fractions",
                         f"one per mode (expected {count} values, found {len(fractions)})")
    if isinstance(doc.get("position_errors"), dict):
        for key in NOMINAL_KEYS:
            if key not in insp.headers and not any(p.key == key for p in report.errors):
                report.error(key, "missing (expected the nominal positions _metadata/position_errors describes)")
    thinning = doc.get("thinning")
    dose = number(doc.get("dose"))
    if isinstance(thinning, dict) and dose is not None:
        parent_dose = number(thinning.get("parent_dose"))
        fraction = number(thinning.get("fraction"))
        if parent_dose is not None and parent_dose < dose:
            report.error(f"{METADATA_KEY}/thinning/parent_dose", f"below the file's dose (expected >= {dose:g}: "
                                                                 f"thinning only lowers the dose, found {parent_dose:g})")
        elif parent_dose is not None and fraction is not None and not math.isclose(fraction, dose / parent_dose,
                                                                                    rel_tol=AMPLITUDE_SCALE_REL_TOL):
            report.error(f"{METADATA_KEY}/thinning/fraction", f"not dose / parent_dose (expected "
                                                              f"{dose / parent_dose:.9g}, found {fraction:.9g})")


def inspect(zf: zipfile.ZipFile, report: FileReport) -> Inspection:
    """Header-only checks of an open archive: members, keys, shapes and metadata."""
    headers = read_member_headers(zf, report.size_bytes or 0, report)
    insp = Inspection(headers={k: v for k, v in headers.items() if k in MEMBERS})
    _check_key_rules(headers, report, insp)
    _check_shapes(report, insp)
    _check_metadata(zf, report, insp)
    return insp
