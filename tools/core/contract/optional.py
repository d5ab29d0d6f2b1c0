"""Value checks of the optional members (realistic conditions) and of the probe's power.

``valid_pixels`` (a bool mask with at least one True), ``probe_modes`` (streamed mode by mode:
finite, mode 0 = ``probeGuess``, the stated power fractions) and the total probe power
``N^2 sum |P|^2 = dose`` over every mode (``probeGuess`` alone without modes). Used by
:mod:`.values`, which reads the arrays.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import METADATA_KEY, POWER_FRACTION_ABS_TOL, PROBE_POWER_REL_TOL, FileReport, index_text
from .streaming import Source, chunk_rows, unreadable
from .structure import Inspection, number


def check_mask(data: np.ndarray, insp: Inspection, report: FileReport) -> np.ndarray | None:
    """valid_pixels: stored bytes 0 or 1 only, at least one True, as many False as the metadata says.

    The mask as a bool array, or None (the value checks then look at every pixel).
    """
    raw = data.view(np.uint8)  # numpy reads any byte as a bool; only 0 and 1 are a mask
    if (raw > 1).any():
        first = int(np.flatnonzero(raw.ravel() > 1)[0])
        report.error("valid_pixels", f"{int((raw > 1).sum())} values not a bool (expected bytes 0 or 1, found "
                                     f"{int(raw.ravel()[first])} at index {index_text(first, data.shape)})")
        insp.bad.add("valid_pixels")
        return None
    mask = np.asarray(data, dtype=bool)
    if not mask.any():
        report.error("valid_pixels", f"no valid pixel (expected at least one True, found all {mask.size} False)")
        insp.bad.add("valid_pixels")
        return None
    detector = insp.metadata.get("detector") if insp.metadata else None
    masked = detector.get("n_masked_pixels") if isinstance(detector, dict) else None
    if isinstance(masked, int) and not isinstance(masked, bool) and masked != int((~mask).sum()):
        report.error(f"{METADATA_KEY}/detector/n_masked_pixels", f"does not match the data (expected "
                                                                 f"{int((~mask).sum())} = False pixels of "
                                                                 f"valid_pixels, found {masked})")
    return mask


def check_probe(src: Source, insp: Inspection, report: FileReport, chunk_bytes: int,
                 probe: np.ndarray | None) -> None:
    """probe_modes (streamed mode by mode): finite, mode 0 = probeGuess, power fractions as stated;
    the total probe power (all modes, else probeGuess) N^2 sum |P|^2 = dose."""
    frame = insp.frame
    powers: list[float] | None = None
    if insp.usable("probe_modes") and frame is not None:
        nonfinite, first, mode0, powers = 0, "", None, []
        try:
            for start, chunk in src.chunks("probe_modes", chunk_rows(frame, 8, chunk_bytes)):
                finite = np.isfinite(chunk)
                if not finite.all():
                    flat = int(np.flatnonzero(~finite.ravel())[0])
                    first = first or f"{chunk.ravel()[flat]} at index {index_text(flat, chunk.shape, start)}"
                    nonfinite += int((~finite).sum())
                if start == 0:
                    mode0 = np.array(chunk[0])
                values = chunk.astype(np.complex128)
                powers.extend(float(v) for v in np.sum(values.real**2 + values.imag**2, axis=(1, 2)))
        except Exception as exc:
            report.error("probe_modes", unreadable(exc))
            insp.bad.add("probe_modes")
            return
        if nonfinite:
            report.error("probe_modes", f"{nonfinite} non-finite values (expected all finite, found {first})")
            insp.bad.add("probe_modes")
            return
        if probe is not None and insp.usable("probeGuess") and not np.array_equal(mode0, probe):
            report.error("probe_modes", "mode 0 is not probeGuess (expected probe_modes[0] == probeGuess, "
                                        f"found {int((mode0 != probe).sum())} of {probe.size} values differ)")
        _check_power_fractions(powers, insp, report)
    elif probe is not None and insp.usable("probeGuess"):
        values = probe.astype(np.complex128)
        powers = [float(np.sum(values.real**2 + values.imag**2))]
    if powers is None or insp.dose is None or frame is None:
        return
    total = frame * frame * math.fsum(powers)
    if not math.isclose(total, insp.dose, rel_tol=PROBE_POWER_REL_TOL):
        key, what = ("probe_modes", "N^2 sum |probe_modes|^2 over all modes") if len(powers) > 1 and \
            insp.usable("probe_modes") else ("probeGuess", "N^2 sum |probeGuess|^2")
        # A file with probe modes (this contract's newer rule) must hold it; a single-mode probe
        # predates the rule, so there it is a warning (--strict fails on it).
        flag = report.error if key == "probe_modes" else report.warn
        flag(key, f"probe not scaled to the dose (expected {what} = _metadata/dose = {insp.dose:g} "
                  f"within {PROBE_POWER_REL_TOL:g} relative, found {total:.9g})")


def _check_power_fractions(powers: list[float], insp: Inspection, report: FileReport) -> None:
    modes = insp.metadata.get("probe_modes") if insp.metadata else None
    fractions = modes.get("power_fractions") if isinstance(modes, dict) else None
    total = math.fsum(powers)
    if not isinstance(fractions, list) or len(fractions) != len(powers) or total <= 0:
        return
    actual = [p / total for p in powers]
    worst = max(range(len(actual)), key=lambda k: abs(actual[k] - _as_float(fractions[k])))
    if abs(actual[worst] - _as_float(fractions[worst])) > POWER_FRACTION_ABS_TOL:
        report.error(f"{METADATA_KEY}/probe_modes/power_fractions",
                     f"does not match the data (expected each mode's share of sum |probe_modes|^2 within "
                     f"{POWER_FRACTION_ABS_TOL:g}, found {fractions[worst]} for mode {worst}, whose share is "
                     f"{actual[worst]:.6g})")


def _as_float(value) -> float:
    number_value = number(value)
    return math.nan if number_value is None else number_value
