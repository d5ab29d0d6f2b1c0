"""Diffraction value checks, accumulated band by band: finite, >= 0, amplitude not intensity,
integer counts (within the float32 tolerance of ``spec``), the measured mean counts, DC centred.

With a detector mask (``valid_pixels``) the masked pixels' values are not measurements: only
finiteness and ``>= 0`` look at them; the statistics (amplitude not intensity, integer counts,
``measured_mean_counts``, DC centred) use the valid pixels alone. With continuous counts (readout
noise) the integer rule does not apply and the mean counts are unrounded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import (
    COUNTS_REL_TOL,
    MAX_VERIFIABLE_COUNTS,
    MEAN_COUNTS_REL_TOL,
    METADATA_KEY,
    NORMALISED_MEAN_SQUARE_LIMIT,
    FileReport,
    index_text,
)
from .structure import number


@dataclass
class DiffractionStats:
    """Running totals over the bands of diffraction seen so far."""

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
    total_counts: float = 0  # int for integer counts
    pattern_sum: np.ndarray | None = None  # sum of diffraction^2 over patterns: where the DC sits
    valid: np.ndarray | None = None  # bool (N, N) detector mask; None: every pixel is a measurement
    # False when the file has a mask that is itself wrong: which values are measurements is then
    # unknown, so only finiteness and >= 0 are reported (not a cascade of statistics errors).
    statistics: bool = True
    continuous: bool = False  # readout noise: counts are not integers


def scan_diffraction_chunk(start: int, chunk: np.ndarray, scale: float | None, st: DiffractionStats) -> None:
    finite = np.isfinite(chunk)
    if not finite.all():
        bad = ~finite
        if not st.nonfinite:
            st.first_nonfinite = f"{chunk.ravel()[int(np.flatnonzero(bad.ravel())[0])]} at index " \
                                 f"{index_text(int(np.flatnonzero(bad.ravel())[0]), chunk.shape, start)}"
        st.nonfinite += int(bad.sum())
        chunk = np.where(finite, chunk, np.float32(0))
    del finite
    values = chunk.astype(np.float64)
    low = int(np.argmin(values))
    if values.ravel()[low] < st.min_value:
        st.min_value, st.min_at = float(values.ravel()[low]), index_text(low, chunk.shape, start)
    st.negative += int((values < 0).sum())
    if st.valid is not None:
        values *= st.valid  # masked pixels count as 0 in every statistic below
    st.sum_sq += float(np.vdot(values, values))  # vdot flattens: sum of squares
    work = np.multiply(values, values)  # one float64 scratch buffer, reused below (memory stays ~4 copies)
    intensity = work.sum(axis=0)
    st.pattern_sum = intensity if st.pattern_sum is None else st.pattern_sum + intensity
    st.n_values += values.size if st.valid is None else values.shape[0] * int(st.valid.sum())
    st.max_value = max(st.max_value, float(values.max()))
    if st.integer_valued:
        st.integer_valued = bool(np.array_equal(values, np.rint(values, out=work)))
    if scale is None:
        return
    if st.continuous:
        counts = np.multiply(values, scale, out=work)
        st.total_counts += float(np.vdot(counts, counts))  # sum of (values * scale)**2, unrounded
        return
    counts = np.multiply(values, scale, out=work)
    np.square(counts, out=counts)  # (values * scale)**2, elementwise as before
    rounded = np.rint(counts)
    frac = np.subtract(counts, rounded)
    np.abs(frac, out=frac)
    verifiable = counts <= MAX_VERIFIABLE_COUNTS
    st.too_large += int(values.size - verifiable.sum())
    failing = (frac > np.multiply(counts, COUNTS_REL_TOL, out=values)) & verifiable
    if failing.any():
        st.noninteger += int(failing.sum())
        masked = np.where(failing, frac, 0.0)
        worst = int(np.argmax(masked))
        if masked.ravel()[worst] > st.worst_frac:
            st.worst_frac = float(masked.ravel()[worst])
            st.worst_at = f"c = {counts.ravel()[worst]:.6g} at index {index_text(worst, chunk.shape, start)}"
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


def report_diffraction(st: DiffractionStats, scale: float | None, metadata: dict | None, n: int,
                        report: FileReport) -> None:
    key = "diffraction"
    if st.nonfinite:
        report.error(key, f"{st.nonfinite} non-finite values (expected all finite, found {st.first_nonfinite})")
    if st.negative:
        report.error(key, f"{st.negative} negative values (expected >= 0, found {st.min_value:.6g} at index {st.min_at})")
    if not st.statistics:
        return
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
    if st.noninteger and not st.continuous:
        report.error(key, f"counts not recoverable as integers: {st.noninteger} of {st.n_values} values have "
                          f"|c - round(c)| > {COUNTS_REL_TOL:.2g} * c for c = (diffraction * amplitude_scale)^2 "
                          f"(expected integers, found |c - round(c)| = {st.worst_frac:.3g} for {st.worst_at})")
        return
    if st.too_large and not st.continuous:
        report.warn(key, f"{st.too_large} values exceed {MAX_VERIFIABLE_COUNTS:.0f} counts, where float32 amplitudes "
                         f"cannot prove integer counts (expected counts < 2^20, found max "
                         f"{(st.max_value * scale) ** 2:.6g})")
    measured = number(metadata.get("measured_mean_counts")) if metadata else None
    if measured is not None and not st.nonfinite:
        actual = st.total_counts / n
        if not math.isclose(measured, actual, rel_tol=MEAN_COUNTS_REL_TOL, abs_tol=MEAN_COUNTS_REL_TOL):
            report.error(f"{METADATA_KEY}/measured_mean_counts",
                         f"does not match the data (expected {actual:.9g} = recovered counts per pattern, "
                         f"found {measured:.9g})")
