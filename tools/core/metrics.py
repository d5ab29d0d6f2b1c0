"""Metrics of a reconstructed object against the ground truth (pure numpy / scipy / scikit-image).

The comparison (:func:`compare`) follows DESIGN §9:

1. **Illuminated region.** The ground-truth probe intensity ``|probeGuess|^2`` is summed at every
   scan position with pty-chi's own window rule (:func:`window_starts`); pixels above
   ``illumination_threshold x max`` form the mask (optionally eroded). Only those pixels count.
   The mask comes from the *input* probe and positions, so every reconstruction of one input is
   judged on the same pixels whatever it did to its own probe.
2. **Registration.** A coarse sub-pixel shift from ``skimage.registration.phase_cross_correlation``
   (plain cross-correlation, upsampled) on the apodised, mean-free complex crops of the mask's
   bounding box, then refined to ~1e-4 px by maximising the zero-mean normalised complex
   correlation over the mask (Nelder-Mead, each trial a ``scipy.ndimage.fourier_shift`` of the
   whole object). That criterion is blind to a global phase factor and peaks exactly at the true
   shift of a shifted copy, which the upsampled grid alone would only find to 1/upsample px.
3. **Phase.** Optional linear ramp removal (robust gradient estimate, then a least-squares plane
   fit of the wrapped phase difference over the mask), then the global phase offset
   ``angle(sum(rec * conj(gt)))`` over the mask.
3b. **Amplitude scale.** Object and probe trade a global scale freely (``O * a`` with ``P / a``
   gives the same data), so the amplitude is compared after the least-squares real factor
   ``a = sum(|rec| |gt|) / sum(|rec|^2)`` over the mask; ``a`` is reported. Phase, the complex
   correlation and the FRC do not depend on it.
4. **Scores** over the mask. The reconstructed phase is unwrapped *relative to the ground truth*
   (``angle(rec)`` moved to the 2 pi branch nearest ``angle(gt)``) so a 2 pi jump is never an error. PSNR uses the
   peak-to-peak of the ground truth over the mask as data range. SSIM is a Gaussian-window SSIM
   (sigma = ``ms_ssim_sigma``, truncated at 3.5 sigma like scikit-image) averaged over the mask
   eroded by the window radius, so pixels outside the mask never enter a window; MS-SSIM builds
   on it (:func:`ms_ssim`). The complex correlation is ``|<rec, gt>| / (||rec|| ||gt||)``.
5. **FRC** of the complex images on the mask's bounding box (weighted mean removed, weighted by
   the softened mask times a separable Tukey window, so unilluminated pixels add nothing), rings
   one Fourier pixel wide, with the half-bit threshold; the first crossing gives the resolution.

:func:`compare_pair` applies the same registration, phase and FRC rules to two reconstructions of
one view and split from independent noise draws (two replicates), the second registered on the
first: the field's two-reconstruction FRC, for which the half-bit threshold is defined.
:func:`frc_measures` gives the scalars of a curve: the half-bit crossing, the integral (mean FRC
up to Nyquist) and the 0.5 crossing, the last two still ranking curves that never cross.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize
from scipy.signal.windows import tukey
from skimage.registration import phase_cross_correlation

from .geometry import window_starts

# Standard MS-SSIM exponents (Wang, Simoncelli & Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_TRUNCATE = 3.5  # Gaussian window truncated at 3.5 sigma, as scikit-image does
MS_SSIM_MIN_PIXELS = 16  # a scale is used only if its eroded mask keeps this many pixels
FRC_MASK_SOFTEN_PX = 2.0  # sigma of the Gaussian that softens the mask used as FRC weight
FRC_TUKEY_ALPHA = 0.25  # fraction of each bounding-box side tapered by the apodising window
COARSE_UPSAMPLE = 20  # phase_cross_correlation grid: 1/20 px, refined afterwards


@dataclass(frozen=True)
class MetricSettings:
    """How a reconstruction is compared with the ground truth."""

    ms_ssim_sigma: float = 1.0
    illumination_threshold: float = 0.1
    erode_px: int = 0
    remove_ramp: bool = False

    def to_dict(self) -> dict:
        return {
            "ms_ssim_sigma": self.ms_ssim_sigma,
            "illumination_threshold": self.illumination_threshold,
            "erode_px": self.erode_px,
            "remove_ramp": self.remove_ramp,
            "ssim_window": f"Gaussian, sigma = ms_ssim_sigma, truncated at {SSIM_TRUNCATE} sigma",
            "ssim_constants": {"K1": SSIM_K1, "K2": SSIM_K2},
            "ms_ssim_weights": list(MS_SSIM_WEIGHTS),
            "psnr_data_range": "peak-to-peak of the ground truth over the mask",
            "registration": "phase_cross_correlation (1/20 px) refined by maximising the normalised complex correlation",
            "frc_window": f"separable Tukey, alpha = {FRC_TUKEY_ALPHA}",
            "frc_threshold": "half-bit: (0.2071 + 1.9102/sqrt(n)) / (1.2071 + 0.9102/sqrt(n))",
        }


# --------------------------------------------------------------------------- illuminated region


def illumination_map(probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray,
                     object_shape: tuple[int, int]) -> np.ndarray:
    """Sum of ``|probe|^2`` placed at every scan position (windows clipped to the object)."""
    intensity = np.abs(np.asarray(probe, dtype=np.complex128)) ** 2
    n_rows, n_cols = intensity.shape
    total = np.zeros(object_shape, dtype=np.float64)
    if n_rows != n_cols:
        raise ValueError(f"probe must be square (N x N), found {intensity.shape}")
    rows, cols = window_starts(np.stack([ycoords, xcoords], axis=1), object_shape, n_rows).T
    for r, c in zip(rows.tolist(), cols.tolist()):
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + n_rows, object_shape[0]), min(c + n_cols, object_shape[1])
        if r1 > r0 and c1 > c0:
            total[r0:r1, c0:c1] += intensity[r0 - r:r1 - r, c0 - c:c1 - c]
    return total


def illuminated_mask(probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray,
                     object_shape: tuple[int, int], threshold: float, erode_px: int = 0) -> np.ndarray:
    """Pixels whose summed probe intensity exceeds ``threshold x max``, eroded by ``erode_px``."""
    illumination = illumination_map(probe, xcoords, ycoords, object_shape)
    peak = illumination.max()
    if peak <= 0:
        return np.zeros(object_shape, dtype=bool)
    mask = illumination > threshold * peak
    if erode_px > 0:
        mask = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=erode_px)
    return mask


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The smallest (row, col) slices holding every True pixel of ``mask``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask")
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


# --------------------------------------------------------------------------- alignment


def fourier_shift_image(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Shift ``image`` by ``shift`` (rows, cols) pixels, periodically, in Fourier space."""
    spectrum = np.fft.fft2(np.asarray(image, dtype=np.complex128))
    return np.fft.ifft2(ndimage.fourier_shift(spectrum, shift))


def _apodised(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    weighted_mean = np.sum(image * window) / np.sum(window)
    return (image - weighted_mean) * window


def _tukey2d(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(tukey(shape[0], FRC_TUKEY_ALPHA), tukey(shape[1], FRC_TUKEY_ALPHA))


def register(reference: np.ndarray, moving: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Sub-pixel (rows, cols) shift that, applied to ``moving``, aligns it with ``reference``.

    A ``moving`` image with no structure over the mask (constant, e.g. all zero) has nothing to
    register: the shift is (0, 0).
    """
    box = bounding_box(mask)
    values = np.asarray(moving)[mask]
    if values.size == 0 or np.ptp(values.real) == 0 and np.ptp(values.imag) == 0:
        return 0.0, 0.0
    window = _tukey2d(mask[box].shape)
    coarse, _, _ = phase_cross_correlation(
        _apodised(np.asarray(reference[box], np.complex128), window),
        _apodised(np.asarray(moving[box], np.complex128), window),
        upsample_factor=COARSE_UPSAMPLE, normalization=None,
    )
    ref = np.asarray(reference, np.complex128)[mask]
    ref = ref - ref.mean()
    ref_norm = np.linalg.norm(ref)
    spectrum = np.fft.fft2(np.asarray(moving, dtype=np.complex128))

    def negative_correlation(shift: np.ndarray) -> float:
        shifted = np.fft.ifft2(ndimage.fourier_shift(spectrum, shift))[mask]
        shifted = shifted - shifted.mean()
        denominator = np.linalg.norm(shifted) * ref_norm
        return -abs(np.vdot(ref, shifted)) / denominator if denominator > 0 else 0.0

    step = 1.0 / COARSE_UPSAMPLE
    start = np.asarray(coarse, dtype=np.float64)
    simplex = np.array([start, start + [step, 0.0], start + [0.0, step]])
    result = optimize.minimize(negative_correlation, start, method="Nelder-Mead",
                               options={"initial_simplex": simplex, "xatol": 1e-6, "fatol": 1e-14,
                                        "maxiter": 400})
    best = result.x if result.fun <= negative_correlation(start) else start
    return float(best[0]), float(best[1])


def global_phase_offset(rec: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """The constant phase ``angle(sum(rec * conj(gt)))`` over the mask."""
    return float(np.angle(np.vdot(gt[mask], rec[mask])))


def amplitude_scale_factor(rec: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Least-squares real factor ``a`` minimising ``sum(|a |rec| - |gt||^2)`` over the mask."""
    rec_amp, gt_amp = np.abs(rec[mask]), np.abs(gt[mask])
    energy = float(np.sum(rec_amp * rec_amp))
    return float(np.sum(rec_amp * gt_amp) / energy) if energy > 0 else 1.0


def fit_phase_ramp(rec: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Linear phase ramp (rad/px along rows, cols) of ``rec`` relative to ``gt`` over the mask.

    A first estimate from the mean neighbour phase increment copes with wrapped differences;
    a least-squares plane fit of the remaining (small) wrapped difference refines it.
    """
    diff = np.where(mask, rec * np.conj(gt), 0)
    gy = float(np.angle(np.sum(diff[1:, :] * np.conj(diff[:-1, :]))))
    gx = float(np.angle(np.sum(diff[:, 1:] * np.conj(diff[:, :-1]))))
    rows, cols = np.nonzero(mask)
    residual = np.angle(diff[rows, cols] * np.exp(-1j * (gy * rows + gx * cols)))
    design = np.column_stack([np.ones(rows.size), rows, cols]).astype(np.float64)
    (_, dy, dx), *_ = np.linalg.lstsq(design, residual, rcond=None)
    return gy + float(dy), gx + float(dx)


def apply_phase_ramp(image: np.ndarray, ramp: tuple[float, float]) -> np.ndarray:
    """``image * exp(-i (ramp_y * row + ramp_x * col))``: removes a fitted ramp."""
    rows, cols = np.indices(image.shape, dtype=np.float64)
    return image * np.exp(-1j * (ramp[0] * rows + ramp[1] * cols))


# --------------------------------------------------------------------------- scores


def rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a[mask] - b[mask]) ** 2)))


def psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """``10 log10(data_range^2 / MSE)`` over the mask (inf when identical)."""
    mse = float(np.mean((reference[mask] - test[mask]) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def window_radius(sigma: float) -> int:
    """Half-width of the truncated Gaussian window (scipy's rule for truncate=3.5)."""
    return int(SSIM_TRUNCATE * sigma + 0.5)


def ssim_maps(a: np.ndarray, b: np.ndarray, data_range: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Luminance and contrast-structure maps of the Gaussian-window SSIM (SSIM = l * cs).

    Population (not sample) covariances, constants K1 = 0.01, K2 = 0.03: identical to
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
    return luminance, contrast_structure


def _eroded(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    structure = np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool)
    return ndimage.binary_erosion(mask, structure=structure, border_value=0)


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float, sigma: float) -> float:
    """Mean Gaussian SSIM over the mask eroded by the window radius (the mask if that empties it)."""
    luminance, cs = ssim_maps(a, b, data_range, sigma)
    inner = _eroded(mask, window_radius(sigma))
    region = inner if inner.any() else mask
    return float(np.mean((luminance * cs)[region]))


def _downsample(image: np.ndarray) -> np.ndarray:
    """2 x 2 mean pooling (the low-pass + decimation step between MS-SSIM scales)."""
    rows, cols = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    x = image[:rows, :cols]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def _downsample_mask(mask: np.ndarray) -> np.ndarray:
    """A coarse pixel is inside only if all four fine pixels are."""
    rows, cols = (mask.shape[0] // 2) * 2, (mask.shape[1] // 2) * 2
    m = mask[:rows, :cols]
    return m[0::2, 0::2] & m[1::2, 0::2] & m[0::2, 1::2] & m[1::2, 1::2]


def ms_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float, sigma: float,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> tuple[float, int]:
    """Multi-scale SSIM over the mask; returns (value, number of scales used).

    ``MS-SSIM = prod_{j<K} cs_j^{w_j} * (l_K cs_K)^{w_K}`` with each factor the mean over the
    scale's mask eroded by the window radius, clipped at 0 (a negative mean has no real power).
    Scales are 2 x 2 mean-pooled; the mask shrinks with them (a coarse pixel needs all four fine
    ones). Small images use fewer scales: a scale counts only while its eroded mask keeps at
    least ``MS_SSIM_MIN_PIXELS`` pixels; the used weights are renormalised to sum to 1. A mask
    too thin for even the first scale falls back to the SSIM over the un-eroded mask (clipped at 0).
    """
    radius = window_radius(sigma)
    factors: list[tuple[float, float]] = []  # (mean cs, mean l*cs) per scale
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    current = mask
    for scale in range(len(weights)):
        inner = _eroded(current, radius)
        if np.count_nonzero(inner) < MS_SSIM_MIN_PIXELS:
            break
        luminance, cs = ssim_maps(a, b, data_range, sigma)
        factors.append((float(np.mean(cs[inner])), float(np.mean((luminance * cs)[inner]))))
        if scale + 1 < len(weights):
            a, b, current = _downsample(a), _downsample(b), _downsample_mask(current)
    if not factors:  # mask too small for even one eroded window: plain SSIM over the mask, clipped
        return max(ssim(a, b, mask, data_range, sigma), 0.0), 1
    used = np.asarray(weights[: len(factors)], dtype=np.float64)
    used = used / used.sum()
    value = 1.0
    for j, (cs_mean, ssim_mean) in enumerate(factors):
        base = ssim_mean if j == len(factors) - 1 else cs_mean
        value *= max(base, 0.0) ** used[j]
    return float(value), len(factors)


def complex_correlation(rec: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """``|<rec, gt>| / (||rec|| ||gt||)`` over the mask (1 = identical up to a complex factor)."""
    r, g = rec[mask], gt[mask]
    denominator = np.linalg.norm(r) * np.linalg.norm(g)
    return float(abs(np.vdot(g, r)) / denominator) if denominator > 0 else 0.0


# --------------------------------------------------------------------------- FRC


def half_bit_threshold(n: np.ndarray | float) -> np.ndarray | float:
    """van Heel & Schatz (2005) half-bit threshold for a ring of ``n`` pixels."""
    root = np.sqrt(n)
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


@dataclass
class FRCResult:
    """FRC per ring: ``frequency`` (cycles/px, ring centre), ``frc``, ``threshold``, ``n_pixels``."""

    frequency: np.ndarray
    frc: np.ndarray
    threshold: np.ndarray
    n_pixels: np.ndarray
    crossed: bool = False
    crossing_frequency: float = 0.5  # Nyquist unless the curve crosses the threshold

    @property
    def fraction_of_nyquist(self) -> float:
        return self.crossing_frequency / 0.5

    @property
    def resolution_px(self) -> float:
        """Half-period resolution in pixels (1 px at Nyquist)."""
        return 1.0 / (2.0 * self.crossing_frequency) if self.crossing_frequency > 0 else math.inf


def fourier_ring_correlation(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> FRCResult:
    """FRC of two same-shape (complex or real) images, with the half-bit crossing.

    Both images lose their weighted mean and are apodised by a separable Tukey window (a sharp
    border would correlate at every frequency). Ring ``i`` holds the Fourier pixels with radial
    frequency in ``[i, i+1) / L`` cycles/px, ``L`` the shorter side, for ``i = 1 .. L/2 - 1``
    (up to Nyquist; ring 0, the DC term, is zero after mean removal and is left out).
    ``FRC_i = Re sum(A conj(B)) / sqrt(sum|A|^2 sum|B|^2)`` (the global phase is already removed,
    so the real part keeps a phase error an error). The crossing is the first ring where the FRC
    falls below the half-bit threshold after having been above it (rings below it at the very
    start are skipped; an FRC never above it crosses at the first ring), interpolated linearly
    with the ring before it; with no crossing the resolution is Nyquist. ``weight`` (same shape, >= 0) multiplies the window: the
    soft illuminated mask, so unilluminated pixels -- never reconstructed -- add no power.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    window = _tukey2d(a.shape)
    if weight is not None:
        window = window * weight
    fa = np.fft.fft2(_apodised(np.asarray(a, np.complex128), window))
    fb = np.fft.fft2(_apodised(np.asarray(b, np.complex128), window))
    length = min(a.shape)
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.fftfreq(a.shape[1])[None, :]
    ring = np.floor(np.sqrt(fy**2 + fx**2) * length).astype(np.int64)
    n_rings = length // 2
    inside = (ring >= 1) & (ring < n_rings)
    idx = ring[inside]
    cross = np.bincount(idx, weights=np.real(fa * np.conj(fb))[inside], minlength=n_rings)[1:]
    power_a = np.bincount(idx, weights=(np.abs(fa) ** 2)[inside], minlength=n_rings)[1:]
    power_b = np.bincount(idx, weights=(np.abs(fb) ** 2)[inside], minlength=n_rings)[1:]
    n_pixels = np.bincount(idx, minlength=n_rings)[1:]
    denominator = np.sqrt(power_a * power_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        frc = np.where(denominator > 0, cross / denominator, 0.0)
    threshold = half_bit_threshold(np.maximum(n_pixels, 1).astype(np.float64))
    frequency = (np.arange(1, n_rings) + 0.5) / length
    crossed, crossing = threshold_crossing(frequency, frc, threshold)
    return FRCResult(frequency=frequency, frc=frc, threshold=threshold, n_pixels=n_pixels, crossed=crossed,
                     crossing_frequency=crossing)


def threshold_crossing(frequency: np.ndarray, frc: np.ndarray, threshold: np.ndarray | float) -> tuple[bool, float]:
    """(crossed, frequency) where ``frc`` first falls below ``threshold`` after having been at or above it.

    The lowest rings hold a handful of pixels (a high half-bit threshold) and, for weakly
    overlapping scans, the phase offsets between barely-linked islands -- a dip there is no
    resolution limit, so rings below the threshold at the very start are skipped; a curve never at
    or above it crosses at the first ring. The crossing is interpolated linearly with the ring
    before it. Never crossed: (False, 0.5), Nyquist.
    """
    frc = np.asarray(frc, np.float64)
    threshold = np.broadcast_to(np.asarray(threshold, np.float64), frc.shape)
    above = np.flatnonzero(frc >= threshold)
    first_above = int(above[0]) if above.size else 0
    below = np.flatnonzero(frc[first_above:] < threshold[first_above:]) + first_above
    if not below.size:
        return False, 0.5
    i = int(below[0])
    if i == 0:
        return True, float(frequency[0])
    d0, d1 = frc[i - 1] - threshold[i - 1], frc[i] - threshold[i]
    t = d0 / (d0 - d1)  # d0 >= 0 > d1, so 0 <= t < 1
    return True, float(frequency[i - 1] + t * (frequency[i] - frequency[i - 1]))


# --------------------------------------------------------------------------- the whole comparison


@dataclass
class Comparison:
    """Everything one reconstruction-vs-truth comparison yields."""

    metrics: dict
    frc: FRCResult
    mask: np.ndarray
    box: tuple[slice, slice]
    aligned: np.ndarray  # the registered, phase-corrected reconstruction (full frame)


def _image_scores(gt: np.ndarray, rec: np.ndarray, mask: np.ndarray, sigma: float) -> dict:
    values = gt[mask]
    data_range = float(values.max() - values.min())
    if data_range <= 0:
        data_range = 1.0  # a flat ground truth: fall back to unit range (recorded)
    ms_value, scales = ms_ssim(gt, rec, mask, data_range, sigma)
    return {
        "rmse": rmse(gt, rec, mask),
        "psnr_db": psnr(gt, rec, mask, data_range),
        "data_range": data_range,
        "ssim": ssim(gt, rec, mask, data_range, sigma),
        "ms_ssim": ms_value,
        "ms_ssim_scales": scales,
    }


def compare(rec: np.ndarray, gt: np.ndarray, probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray,
            settings: MetricSettings, pixel_size_m: float | None = None) -> Comparison:
    """Register ``rec`` on ``gt`` and score it over the illuminated region (see module doc)."""
    rec = np.asarray(rec, np.complex128)
    gt = np.asarray(gt, np.complex128)
    if rec.shape != gt.shape:
        raise ValueError(f"reconstruction shape {rec.shape} differs from the ground truth {gt.shape}")
    mask = illuminated_mask(probe, xcoords, ycoords, gt.shape, settings.illumination_threshold, settings.erode_px)
    if not mask.any():
        raise ValueError("the illuminated mask is empty (no scan position or zero probe)")
    shift = register(gt, rec, mask)
    aligned = fourier_shift_image(rec, shift)
    ramp = None
    if settings.remove_ramp:
        # A ramp biases the registration and a misregistration biases the ramp: alternate twice.
        # The ramp goes onto the (unshifted) truth for registering, so no ramp is ever wrapped
        # around the periodic Fourier shift.
        for _ in range(2):
            ramp = fit_phase_ramp(aligned, gt, mask)
            shift = register(apply_phase_ramp(gt, (-ramp[0], -ramp[1])), rec, mask)
            aligned = fourier_shift_image(rec, shift)
        ramp = fit_phase_ramp(aligned, gt, mask)
        aligned = apply_phase_ramp(aligned, ramp)
    offset = global_phase_offset(aligned, gt, mask)
    aligned = aligned * np.exp(-1j * offset)
    scale = amplitude_scale_factor(aligned, gt, mask)
    aligned = aligned * scale

    gt_phase = np.angle(gt)
    # The reconstruction's own phase, unwrapped to the 2 pi branch nearest the truth (a 2 pi jump
    # is never an error; a zero pixel has phase 0 and counts as such, not as the truth's).
    own_phase = np.angle(aligned)
    rec_phase = own_phase + 2 * np.pi * np.round((gt_phase - own_phase) / (2 * np.pi))
    box = bounding_box(mask)
    # Soft mask edge (Gaussian, FRC_MASK_SOFTEN_PX): a hard edge would correlate at every frequency.
    weight = ndimage.gaussian_filter(mask.astype(np.float64), FRC_MASK_SOFTEN_PX)[box]
    frc = fourier_ring_correlation(aligned[box], gt[box], weight)
    metrics = {
        "mask_pixels": int(np.count_nonzero(mask)),
        "bounding_box": [box[0].start, box[0].stop, box[1].start, box[1].stop],
        "registration_shift_px": [shift[0], shift[1]],
        "phase_offset_rad": offset,
        "amplitude_scale_factor": scale,
        "phase_ramp_rad_per_px": None if ramp is None else [ramp[0], ramp[1]],
        "phase": _image_scores(gt_phase, rec_phase, mask, settings.ms_ssim_sigma),
        "amplitude": _image_scores(np.abs(gt), np.abs(aligned), mask, settings.ms_ssim_sigma),
        "complex_correlation": complex_correlation(aligned, gt, mask),
        "frc": {
            "crossed": frc.crossed,
            "crossing_frequency_cycles_per_px": frc.crossing_frequency,
            "fraction_of_nyquist": frc.fraction_of_nyquist,
            "resolution_px": frc.resolution_px,
            "resolution_m": None if pixel_size_m is None else frc.resolution_px * pixel_size_m,
            "mean_frc": float(np.mean(frc.frc)) if frc.frc.size else 0.0,
        },
    }
    return Comparison(metrics=metrics, frc=frc, mask=mask, box=box, aligned=aligned)


# --------------------------------------------------------------------------- two reconstructions


FRC_FIXED_LEVEL = 0.5  # the fixed level whose crossing still ranks curves that never meet the half-bit one


@dataclass
class PairComparison:
    """Two reconstructions of one view and split from independent noise draws, compared with each other."""

    frc: FRCResult
    shift: tuple[float, float]  # applied to the second to align it with the first
    phase_offset: float  # removed from the second
    ramp: tuple[float, float] | None
    mask: np.ndarray
    box: tuple[slice, slice]


def compare_pair(first: np.ndarray, second: np.ndarray, mask: np.ndarray, remove_ramp: bool = False) -> PairComparison:
    """The two-reconstruction FRC: ``second`` registered on ``first``, never on the ground truth.

    The same rules as the truth-FRC of :func:`compare`, with ``first`` in the truth's place:
    :func:`register` over ``mask`` (the illuminated region of the input probe and positions, which
    replicates share), the global phase offset ``angle(sum(second * conj(first)))`` removed (a
    linear ramp first, with ``remove_ramp``), then :func:`fourier_ring_correlation` of the two on
    the mask's bounding box weighted by the softened mask. The half-bit threshold is the one
    defined for two independent noisy reconstructions -- exactly this case.
    """
    a = np.asarray(first, np.complex128)
    b = np.asarray(second, np.complex128)
    if a.shape != b.shape:
        raise ValueError(f"reconstruction shapes differ: {a.shape} vs {b.shape}")
    if not mask.any():
        raise ValueError("the illuminated mask is empty")
    shift = register(a, b, mask)
    aligned = fourier_shift_image(b, shift)
    ramp = None
    if remove_ramp:
        ramp = fit_phase_ramp(aligned, a, mask)
        aligned = apply_phase_ramp(aligned, ramp)
    offset = global_phase_offset(aligned, a, mask)
    aligned = aligned * np.exp(-1j * offset)
    box = bounding_box(mask)
    weight = ndimage.gaussian_filter(mask.astype(np.float64), FRC_MASK_SOFTEN_PX)[box]
    frc = fourier_ring_correlation(a[box], aligned[box], weight)
    return PairComparison(frc=frc, shift=shift, phase_offset=offset, ramp=ramp, mask=mask, box=box)


def frc_measures(frequency: np.ndarray, frc: np.ndarray, threshold: np.ndarray) -> dict:
    """Resolution-type scalars of one FRC curve.

    ``crossed`` / ``crossing_frequency_cycles_per_px`` / ``fraction_of_nyquist`` / ``resolution_px``:
    the half-bit crossing (:func:`threshold_crossing`; Nyquist when never crossed). ``integral``:
    the mean FRC over the rings up to Nyquist -- it moves with every ring, so it ranks curves that
    never cross. ``crossed_0_5`` / ``frequency_0_5_cycles_per_px`` / ``fraction_of_nyquist_0_5``:
    where the curve falls below the fixed level 0.5 (same rule).
    """
    crossed, crossing = threshold_crossing(frequency, frc, threshold)
    crossed_half, crossing_half = threshold_crossing(frequency, frc, FRC_FIXED_LEVEL)
    return {
        "crossed": crossed,
        "crossing_frequency_cycles_per_px": crossing,
        "fraction_of_nyquist": crossing / 0.5,
        "resolution_px": 1.0 / (2.0 * crossing) if crossing > 0 else None,
        "integral": float(np.mean(frc)) if len(frc) else 0.0,
        "crossed_0_5": crossed_half,
        "frequency_0_5_cycles_per_px": crossing_half,
        "fraction_of_nyquist_0_5": crossing_half / 0.5,
    }


# --------------------------------------------------------------------------- positions and probe (realistic conditions)


def position_error(positions_x: np.ndarray, positions_y: np.ndarray, true_x: np.ndarray, true_y: np.ndarray) -> dict:
    """How far positions lie from the true ones, in pixels.

    ``e_i = (x_i - x_true_i, y_i - y_true_i)``. The object absorbs a global shift of all positions
    (it moves with them), so the headline ``rms_px`` is the RMS of ``|e_i - mean(e)|``; ``raw_rms_px``
    keeps the offset (``sqrt(mean |e_i|^2)``); ``max_px`` is the largest ``|e_i - mean(e)|`` and
    ``mean_offset_px`` the removed ``mean(e)`` as (x, y).
    """
    e = np.column_stack([np.asarray(positions_x, np.float64) - np.asarray(true_x, np.float64),
                         np.asarray(positions_y, np.float64) - np.asarray(true_y, np.float64)])
    if e.shape[0] == 0:
        raise ValueError("no positions")
    offset = e.mean(axis=0)
    centred = np.hypot(*(e - offset).T)
    return {"rms_px": float(np.sqrt(np.mean(centred**2))), "raw_rms_px": float(np.sqrt(np.mean(np.sum(e**2, axis=1)))),
            "max_px": float(centred.max()), "mean_offset_px": [float(offset[0]), float(offset[1])]}


def probe_error(probe: np.ndarray, truth: np.ndarray) -> float:
    """``min_c ||c P - P_true|| / ||P_true||`` over complex ``c`` (the scale and global phase are free).

    The minimiser is ``c = <P, P_true> / ||P||^2``; the residual is computed directly (not as
    ``sqrt(1 - |corr|^2)``, which loses digits near 0). A zero probe gives 1 (``c = 0``).
    """
    p = np.asarray(probe, np.complex128).ravel()
    t = np.asarray(truth, np.complex128).ravel()
    if p.shape != t.shape:
        raise ValueError(f"probe shape {np.shape(probe)} differs from the true probe {np.shape(truth)}")
    truth_norm = np.linalg.norm(t)
    if truth_norm == 0:
        raise ValueError("the true probe is zero")
    energy = float(np.vdot(p, p).real)
    c = np.vdot(p, t) / energy if energy > 0 else 0.0
    return float(np.linalg.norm(c * p - t) / truth_norm)


def registered_probe_error(probe: np.ndarray, truth: np.ndarray) -> tuple[float, tuple[float, float]]:
    """:func:`probe_error` after the sub-pixel shift that best aligns ``probe`` with ``truth``, and that
    shift (rows, cols).

    A probe and an object shifted together by the same vector give the same data (the engine's
    positions fixed), so a reconstruction may settle on a shifted pair; the object is registered
    before it is scored, and this is the probe's counterpart. The shift is periodic (Fourier), as
    pty-chi's own sub-pixel probe shift is; never worse than the unregistered error.
    """
    p = np.asarray(probe, np.complex128)
    t = np.asarray(truth, np.complex128)
    unregistered = probe_error(p, t)
    shift = register(t, p, np.ones(t.shape, dtype=bool))
    registered = probe_error(fourier_shift_image(p, shift), t)
    if registered >= unregistered:
        return unregistered, (0.0, 0.0)
    return registered, shift


def intensity_error(intensity: np.ndarray, truth: np.ndarray) -> float:
    """``min_{a >= 0} ||a I - I_true|| / ||I_true||`` of two total probe intensities ``sum_k |P_k|^2``.

    The real factor ``a`` absorbs the object/probe scale trade (and the dose); it is the
    least-squares ``<I, I_true> / ||I||^2``, never negative for intensities.
    """
    i = np.asarray(intensity, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()
    if i.shape != t.shape:
        raise ValueError(f"intensity shape {np.shape(intensity)} differs from the truth's {np.shape(truth)}")
    truth_norm = np.linalg.norm(t)
    if truth_norm == 0:
        raise ValueError("the true probe intensity is zero")
    energy = float(np.dot(i, i))
    a = max(float(np.dot(i, t)) / energy, 0.0) if energy > 0 else 0.0
    return float(np.linalg.norm(a * i - t) / truth_norm)


def total_intensity(modes: np.ndarray) -> np.ndarray:
    """``sum_k |P_k|^2`` of (K, N, N) modes, or ``|P|^2`` of one (N, N) probe."""
    modes = np.asarray(modes, np.complex128)
    power = np.abs(modes) ** 2
    return power.sum(axis=0) if modes.ndim == 3 else power
