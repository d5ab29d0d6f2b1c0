"""Metrics core: illuminated mask, registration, phase corrections, (MS-)SSIM, FRC and half-bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ptydose.core import metrics as m

M, N = 96, 32  # object and probe size: small enough for milliseconds per comparison


def band_limited_object(seed: int = 0, cutoff: float = 0.8) -> np.ndarray:
    """A complex object with no Fourier content above ``cutoff`` x Nyquist.

    Band-limited so that a Fourier shift by any amount is exact and invertible: the perfect-score
    test then measures the metrics, not interpolation error.
    """
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(M)[:, None]
    fx = np.fft.fftfreq(M)[None, :]
    keep = np.hypot(fy, fx) <= 0.5 * cutoff

    def field() -> np.ndarray:
        spectrum = np.fft.fft2(rng.standard_normal((M, M)))
        spectrum[~keep] = 0
        out = np.fft.ifft2(spectrum).real
        return out / np.abs(out).max()

    obj = (0.85 + 0.12 * field()) * np.exp(1j * 0.9 * field())
    spectrum = np.fft.fft2(obj)
    spectrum[~keep] = 0
    return np.fft.ifft2(spectrum)


def exact_shift(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Independent Fourier shift (numpy only) of a band-limited image by (rows, cols)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1])))


def disc_probe(radius: float = 9.0) -> np.ndarray:
    rows, cols = np.indices((N, N)) - (N - 1) / 2
    return (np.hypot(rows, cols) < radius).astype(np.complex128)


def raster(step: float = 4.0, lo: float = 24.0, hi: float = 72.0, jitter: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.arange(lo, hi, step), np.arange(lo, hi, step), indexing="ij")
    rng = np.random.default_rng(7)
    return xs.ravel() + rng.uniform(-jitter, jitter, xs.size), ys.ravel() + rng.uniform(-jitter, jitter, ys.size)


def complex_noise(shape, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


SETTINGS = m.MetricSettings(ms_ssim_sigma=1.0, illumination_threshold=0.1)


def test_illumination_map_and_mask_of_one_position():
    """One position: the map is |probe|^2 in the window, and the mask is the probe's support there."""
    probe = disc_probe(radius=6.0) * 2.0
    illumination = m.illumination_map(probe, np.array([47.5]), np.array([47.5]), (M, M))
    expected = np.zeros((M, M))
    expected[32:64, 32:64] = np.abs(probe) ** 2
    np.testing.assert_array_equal(illumination, expected)
    mask = m.illuminated_mask(probe, np.array([47.5]), np.array([47.5]), (M, M), threshold=0.1)
    np.testing.assert_array_equal(mask, expected > 0)


def test_mask_threshold_overlap_clipping_and_erosion():
    """Overlapping positions add up; the threshold is relative to the maximum; windows clip at edges."""
    probe = disc_probe(radius=6.0)
    # Two positions 4 px apart overlap; a third hangs over the object's corner (clipped, no error).
    xs, ys = np.array([40.0, 44.0, 2.0]), np.array([40.0, 40.0, 2.0])
    illumination = m.illumination_map(probe, xs, ys, (M, M))
    assert illumination.max() == pytest.approx(2.0)  # overlap of two unit discs
    assert illumination[0, 0] == 1.0  # the corner window was clipped, not dropped
    loose = m.illuminated_mask(probe, xs, ys, (M, M), threshold=0.4)
    strict = m.illuminated_mask(probe, xs, ys, (M, M), threshold=0.6)
    np.testing.assert_array_equal(strict, illumination > 1.2)  # only the doubly lit lens survives 0.6 x 2
    assert strict.sum() < loose.sum()
    eroded = m.illuminated_mask(probe, xs, ys, (M, M), threshold=0.4, erode_px=2)
    assert eroded.sum() < loose.sum() and not (eroded & ~loose).any()


def test_shifted_phase_offset_copy_scores_perfect():
    """Truth shifted by a sub-pixel amount times e^{i phi} scores perfect after registration."""
    gt = band_limited_object()
    shift, phi = (0.37, -1.23), 0.7
    rec = exact_shift(gt, shift) * np.exp(1j * phi)
    xs, ys = raster()
    c = m.compare(rec, gt, disc_probe(), xs, ys, SETTINGS)
    # Registration is refined to ~1e-6 px on noise-free data; 1e-4 leaves room for platforms.
    np.testing.assert_allclose(c.metrics["registration_shift_px"], [-shift[0], -shift[1]], atol=1e-4)
    assert c.metrics["phase_offset_rad"] == pytest.approx(phi, abs=1e-6)
    assert c.metrics["phase"]["rmse"] < 1e-3  # the bar; ~1e-7 rad is typical
    for quantity in ("phase", "amplitude"):
        assert c.metrics[quantity]["ssim"] > 0.999
        assert c.metrics[quantity]["ms_ssim"] > 0.999
    assert c.metrics["complex_correlation"] > 0.99999
    assert np.all(c.frc.frc >= 0.99)
    assert not c.frc.crossed and c.metrics["frc"]["fraction_of_nyquist"] == 1.0


def test_object_probe_scale_ambiguity_does_not_count_against_amplitude():
    """A reconstruction scaled by 0.6 (probe scaled by 1/0.6 gives the same data) scores perfect."""
    gt = band_limited_object(seed=6)
    rec = exact_shift(gt, (0.2, -0.4)) * 0.6 * np.exp(0.3j)
    xs, ys = raster()
    c = m.compare(rec, gt, disc_probe(), xs, ys, SETTINGS)
    # Noise-free: the least-squares factor is 1/0.6 to float precision; 1e-6 leaves room.
    assert c.metrics["amplitude_scale_factor"] == pytest.approx(1 / 0.6, rel=1e-6)
    assert c.metrics["amplitude"]["rmse"] < 1e-4
    assert c.metrics["amplitude"]["ssim"] > 0.999


def test_zero_reconstruction_scores_badly():
    """An all-zero object (a failed run) has no phase: it must not score the truth's phase."""
    gt = band_limited_object(seed=12)
    xs, ys = raster()
    c = m.compare(np.zeros_like(gt), gt, disc_probe(), xs, ys, SETTINGS)
    mask = m.illuminated_mask(disc_probe(), xs, ys, gt.shape, 0.1)
    # Phase 0 everywhere against the truth's phase: the RMSE is the truth's own RMS phase.
    assert c.metrics["phase"]["rmse"] == pytest.approx(np.sqrt(np.mean(np.angle(gt[mask]) ** 2)), rel=1e-6)
    assert c.metrics["phase"]["ssim"] < 0.1
    assert c.metrics["complex_correlation"] == 0.0
    assert c.metrics["registration_shift_px"] == [0.0, 0.0]  # nothing to register against


def test_added_noise_lowers_every_score_monotonically():
    """More noise: RMSE up, PSNR/SSIM/MS-SSIM/correlation/mean FRC down, FRC resolution no better."""
    gt = band_limited_object(seed=1)
    rec = exact_shift(gt, (-0.6, 0.45)) * np.exp(-0.4j)
    xs, ys = raster()
    rows = []
    for sigma in (0.005, 0.03, 0.1, 0.3):  # a factor >= 3 between levels keeps the order far from ties
        c = m.compare(rec + complex_noise(gt.shape, sigma, seed=3), gt, disc_probe(), xs, ys, SETTINGS)
        rows.append(c.metrics)
    for a, b in zip(rows, rows[1:]):
        for quantity in ("phase", "amplitude"):
            assert b[quantity]["rmse"] > a[quantity]["rmse"]
            assert b[quantity]["psnr_db"] < a[quantity]["psnr_db"]
            assert b[quantity]["ssim"] < a[quantity]["ssim"]
            assert b[quantity]["ms_ssim"] < a[quantity]["ms_ssim"]
        assert b["complex_correlation"] < a["complex_correlation"]
        assert b["frc"]["mean_frc"] < a["frc"]["mean_frc"]
        assert b["frc"]["fraction_of_nyquist"] <= a["frc"]["fraction_of_nyquist"]
    assert rows[-1]["frc"]["fraction_of_nyquist"] < rows[0]["frc"]["fraction_of_nyquist"]


def test_phase_ramp_is_removed_only_when_asked():
    """A linear phase ramp ruins the phase RMSE unless --remove-ramp; then it is found and removed."""
    gt = band_limited_object(seed=2)
    # Whole cycles across the object (2 and -3 x 2 pi over 96 px), so the ramped object stays
    # periodic and its Fourier shift exact; the phase wraps several times, which the fit must handle.
    ramp = (2 * np.pi * 2 / M, -2 * np.pi * 3 / M)
    rows, cols = np.indices(gt.shape)
    rec = exact_shift(gt, (0.25, 0.8)) * np.exp(1j * (0.3 + ramp[0] * rows + ramp[1] * cols))
    xs, ys = raster()
    kept = m.compare(rec, gt, disc_probe(), xs, ys, SETTINGS)
    removed = m.compare(rec, gt, disc_probe(), xs, ys, m.MetricSettings(remove_ramp=True))
    assert kept.metrics["phase_ramp_rad_per_px"] is None
    assert kept.metrics["phase"]["rmse"] > 0.3
    np.testing.assert_allclose(removed.metrics["phase_ramp_rad_per_px"], ramp, atol=1e-5)
    assert removed.metrics["phase"]["rmse"] < 1e-3
    assert removed.metrics["phase"]["ssim"] > 0.999


def test_metrics_match_an_independent_computation_on_a_known_distortion():
    """Known shift, offset, ramp and noise: compare() agrees with metrics computed knowing them."""
    gt = band_limited_object(seed=4)
    shift, phi, ramp = (1.3, -0.55), 2.5, (2 * np.pi / M, -2 * np.pi / M)  # whole cycles: periodic
    rows, cols = np.indices(gt.shape)
    clean = exact_shift(gt, shift)
    noise = complex_noise(gt.shape, 0.02, seed=5)
    rec = (clean + noise) * np.exp(1j * (phi + ramp[0] * rows + ramp[1] * cols))
    xs, ys = raster()
    c = m.compare(rec, gt, disc_probe(), xs, ys, m.MetricSettings(remove_ramp=True))
    # Independent: undo the known distortions exactly, then score with numpy / scikit-image.
    undone = exact_shift(rec * np.exp(-1j * (phi + ramp[0] * rows + ramp[1] * cols)), (-shift[0], -shift[1]))
    mask = m.illuminated_mask(disc_probe(), xs, ys, gt.shape, 0.1)
    gt_phase = np.angle(gt)
    rec_phase = gt_phase + np.angle(undone * np.conj(gt))
    rmse = np.sqrt(np.mean((rec_phase - gt_phase)[mask] ** 2))
    box = m.bounding_box(mask)
    data_range = np.ptp(gt_phase[mask])
    _, ssim_map = structural_similarity(gt_phase[box], rec_phase[box], data_range=data_range, gaussian_weights=True,
                                        sigma=1.0, use_sample_covariance=False, full=True)
    inner = m._eroded(mask, m.window_radius(1.0))[box]
    corr = abs(np.vdot(gt[mask], undone[mask])) / (np.linalg.norm(gt[mask]) * np.linalg.norm(undone[mask]))
    # The registration estimated from noisy data differs from the truth by ~1e-3 px, which moves
    # the scores by well under 1 %; 2 % tolerates platform noise, while a wrong shift (0.05 px),
    # offset or ramp moves them by far more.
    assert c.metrics["phase"]["rmse"] == pytest.approx(rmse, rel=0.02)
    assert c.metrics["phase"]["ssim"] == pytest.approx(np.mean(ssim_map[inner]), rel=0.02)
    assert c.metrics["complex_correlation"] == pytest.approx(corr, rel=1e-3)
    np.testing.assert_allclose(c.metrics["registration_shift_px"], [-shift[0], -shift[1]], atol=0.01)
    np.testing.assert_allclose(c.metrics["phase_ramp_rad_per_px"], ramp, atol=1e-3)


def test_gaussian_ssim_map_equals_scikit_image():
    """ssim_maps(l * cs) equals skimage's Gaussian SSIM map with population covariance."""
    rng = np.random.default_rng(1)
    a = rng.random((40, 48))
    b = a + 0.2 * rng.random((40, 48))
    _, expected = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
    luminance, cs = m.ssim_maps(a, b, 1.0, 1.5)
    np.testing.assert_allclose(luminance * cs, expected, atol=1e-12)  # same arithmetic, float64


def test_psnr_and_rmse_match_scikit_image_on_a_full_mask():
    """PSNR over an all-True mask equals skimage's peak_signal_noise_ratio with the same range."""
    rng = np.random.default_rng(2)
    a = rng.random((32, 32))
    b = a + 0.05 * rng.standard_normal((32, 32))
    full = np.ones_like(a, dtype=bool)
    assert m.psnr(a, b, full, 1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-12)
    assert m.rmse(a, b, full) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)), rel=1e-12)
    assert m.psnr(a, a, full, 1.0) == math.inf


def test_ms_ssim_identity_range_and_scale_reduction():
    """MS-SSIM of an image with itself is 1, lies in (0, 1) with noise, and uses fewer scales when small."""
    rng = np.random.default_rng(3)
    a = np.real(band_limited_object(seed=5))
    mask = np.ones_like(a, dtype=bool)
    value, scales = m.ms_ssim(a, a, mask, 1.0, 1.0)
    # 96 -> 48 -> 24 -> 12 px keep >= 16 pixels after the 4 px erosion (12 - 8 = 4, 4 x 4); 6 px does not.
    assert value == pytest.approx(1.0, abs=1e-12) and scales == 4
    noisy = a + 0.1 * rng.standard_normal(a.shape)
    value, _ = m.ms_ssim(a, noisy, mask, 1.0, 1.0)
    assert 0.0 < value < 1.0
    small = np.zeros_like(mask)
    small[10:24, 10:24] = True  # 14 px: one scale keeps 6 x 6 = 36 pixels after a 4 px erosion, the next none
    _, scales = m.ms_ssim(a, noisy, small, 1.0, 1.0)
    assert scales == 1


def test_frc_of_an_image_with_itself_is_one():
    """FRC(image, image) = 1 at every ring; no crossing; resolution = 1 px (Nyquist)."""
    image = band_limited_object(seed=6, cutoff=1.0)
    result = m.fourier_ring_correlation(image, image)
    np.testing.assert_allclose(result.frc, 1.0, atol=1e-12)
    assert not result.crossed
    assert result.resolution_px == 1.0 and result.fraction_of_nyquist == 1.0
    assert len(result.frc) == M // 2 - 1  # rings 1 .. L/2 - 1 (DC ring left out)


def test_half_bit_threshold_at_known_ring_sizes():
    """T(n) = (0.2071 + 1.9102/sqrt(n)) / (1.2071 + 0.9102/sqrt(n)) at n = 1, 100, 10000."""
    # Worked by hand: sqrt(1) = 1, sqrt(100) = 10, sqrt(10000) = 100.
    assert m.half_bit_threshold(1) == pytest.approx((0.2071 + 1.9102) / (1.2071 + 0.9102), rel=1e-12)
    assert m.half_bit_threshold(1) == pytest.approx(1.0, abs=1e-12)  # 2.1173 / 2.1173
    assert m.half_bit_threshold(100) == pytest.approx((0.2071 + 0.19102) / (1.2071 + 0.09102), rel=1e-12)
    assert m.half_bit_threshold(10000) == pytest.approx((0.2071 + 0.019102) / (1.2071 + 0.009102), rel=1e-12)
    values = m.half_bit_threshold(np.array([4.0, 16.0, 64.0]))
    assert np.all(np.diff(values) < 0)  # more pixels per ring -> lower threshold
    assert m.half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, rel=1e-5)  # the large-n limit


def test_frc_crossing_where_shared_content_ends():
    """Shared content up to half Nyquist plus independent noise: the half-bit crossing is near half Nyquist."""
    rng = np.random.default_rng(8)
    size = 128
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    spectrum = np.fft.fft2(rng.standard_normal((size, size)))
    spectrum[np.hypot(fy, fx) > 0.25] = 0  # 0.25 cycles/px = half of Nyquist
    signal = np.real(np.fft.ifft2(spectrum))
    signal /= signal.std()

    def noisy(seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).standard_normal((size, size))
        return signal + 0.3 * noise  # white noise: far below the signal inside the band, alone outside

    result = m.fourier_ring_correlation(noisy(1), noisy(2))
    assert result.crossed
    # Rings are 1/128 cycles/px wide; the apodising window smears the band edge by a few rings.
    assert 0.42 < result.fraction_of_nyquist < 0.6
    assert result.resolution_px == pytest.approx(1 / (2 * result.crossing_frequency))
    assert np.all(result.frc[result.frequency < 0.2] > 0.9)


def test_frc_low_frequency_dip_is_not_a_resolution():
    """A dip below half-bit only in the lowest rings (island phase offsets) is skipped, not the crossing."""
    rng = np.random.default_rng(9)
    size = 128
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.hypot(fy, fx)
    shared = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * (radius <= 0.25)))
    # Independent content only in the two lowest rings: there the images disagree.
    low = (radius > 0) & (radius < 2.5 / size)

    def image(seed: int) -> np.ndarray:
        own = np.random.default_rng(seed).standard_normal((size, size))
        # Independent white noise everywhere (as in the band-edge test) and strong independent
        # content in the lowest rings.
        return shared / shared.std() + 0.3 * own + 40 * np.real(np.fft.ifft2(np.fft.fft2(own) * low))

    result = m.fourier_ring_correlation(image(1), image(2))
    assert result.frc[0] < result.threshold[0]  # the dip is there ...
    assert 0.42 < result.fraction_of_nyquist < 0.6  # ... and the crossing is still the band edge
    never = m.fourier_ring_correlation(image(1), -image(1))  # FRC = -1 at every ring
    assert never.crossed and never.crossing_frequency == never.frequency[0]  # never above: the first ring


def test_frc_ignores_pixels_outside_the_weight():
    """With the mask as weight, content outside the illuminated region does not lower the FRC."""
    gt = band_limited_object(seed=10)
    rec = gt.copy()
    mask = np.zeros(gt.shape, bool)
    mask[20:76, 20:76] = True
    rec[~mask] = 1.0  # never reconstructed: flat, unlike the truth
    unweighted = m.fourier_ring_correlation(rec, gt)
    weighted = m.fourier_ring_correlation(rec, gt, mask.astype(float))
    assert np.all(weighted.frc > 0.999)  # identical inside the weight
    assert np.mean(unweighted.frc) < np.mean(weighted.frc) - 0.05


def test_compare_refuses_mismatched_shapes_and_empty_masks():
    """Different shapes or no illuminated pixel are ValueErrors (summarize reports them per job)."""
    gt = band_limited_object()
    xs, ys = raster()
    with pytest.raises(ValueError, match="differs from the ground truth"):
        m.compare(gt[:-1], gt, disc_probe(), xs, ys, SETTINGS)
    with pytest.raises(ValueError, match="mask is empty"):
        m.compare(gt, gt, np.zeros((N, N), complex), xs, ys, SETTINGS)
