"""Physics of gen-synthetic: probe, object, scan, pty-chi's forward model and the Poisson counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ptydose.core import physics
from ptydose.core.design import load_design
from ptydose.core.geometry import subpixel_residuals, window_starts


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = json.loads(str(arrays.pop("_metadata")))
    return arrays


def _counts(d: dict) -> np.ndarray:
    return np.round((d["diffraction"].astype(np.float64) * d["meta"]["amplitude_scale"]) ** 2)


def _coords(d: dict) -> np.ndarray:
    return np.stack([d["ycoords"], d["xcoords"]], axis=1)


def _expected(d: dict) -> np.ndarray:
    """Expected intensities recomputed from the stored probe, object and coordinates (float64)."""
    model = physics.ForwardModel(d["probeGuess"].astype(np.complex128), d["objectGuess"])
    return model.intensities(_coords(d)).astype(np.float64)


@pytest.fixture(scope="module")
def low(smoke_data) -> dict:
    return _load(smoke_data["phase_c_root"] / "dose_1000" / "patched_train.npz")


@pytest.fixture(scope="module")
def high(smoke_data) -> dict:
    return _load(smoke_data["phase_c_root"] / "dose_100000" / "patched_train.npz")


def _ptychi_intensities(d: dict, flip_residual: bool = False) -> np.ndarray:
    """pty-chi's own forward model on the stored probe, object and positions (fft-shifted)."""
    import ptychi.api as api
    import torch
    from ptychi.api.task import PtychographyTask

    opts = api.LSQMLOptions()
    opts.data_options.fft_shift = True
    opts.object_options.pixel_size_m = 1.0
    opts.reconstructor_options.num_epochs = 1
    opts.reconstructor_options.default_device = api.Devices.CPU
    origin = np.asarray(d["meta"]["position_origin"])
    py, px = d["ycoords"] - origin[0], d["xcoords"] - origin[1]
    task = PtychographyTask(
        opts,
        diffraction_data=_counts(d).astype(np.float32),
        object_data=d["objectGuess"][None],
        probe_data=d["probeGuess"][None, None],
        probe_position_x_px=px,
        probe_position_y_px=py,
    )
    with torch.no_grad():
        y = task.reconstructor.forward_model.forward(torch.arange(len(px))).cpu().numpy()
    return np.fft.fftshift(y, axes=(-2, -1)).astype(np.float64)


def test_ptychi_forward_model_reproduces_expected_intensities(low):
    """pty-chi's forward pass on the stored probe/object/positions gives our expected counts."""
    ours = _expected(low)
    theirs = _ptychi_intensities(low)
    rel = np.linalg.norm(theirs - ours) / np.linalg.norm(ours)
    # Both are float32 FFT pipelines of the same operations: agreement to a few float32 ulps
    # (~1e-7) is expected; 1e-5 leaves room for FFT-library differences, far below any
    # convention error (a half-pixel or sign mistake gives > 1e-2, see the control below).
    assert rel < 1e-5
    assert np.max(np.abs(theirs - ours)) / ours.max() < 1e-5


def test_subpixel_convention_matters():
    """Control: the sub-pixel residual is large enough that a sign error would be caught."""
    obj, _ = physics.build_object({"shape": [64, 64], "model": "lines_and_random", "feature_size_px": 2.0,
                                   "max_phase_rad": 1.0, "min_amplitude": 0.7}, None, 3)
    probe = physics.defocused_pupil_probe(16, 0.2, 2.0)
    coords = np.array([[31.3, 30.2], [28.7, 33.6]])
    model = physics.ForwardModel(probe, obj)
    right = model.intensities(coords).astype(np.float64)
    residual = subpixel_residuals(coords, obj.shape)
    far = np.fft.fft2(model.shifted_probes(-residual) * physics.object_windows(obj, coords, 16))
    wrong = np.fft.fftshift(np.abs(far) ** 2, axes=(-2, -1))
    # A residual of 0.2-0.4 px on a feature-rich object changes the patterns by far more than 1e-2.
    assert np.linalg.norm(wrong - right) / np.linalg.norm(right) > 1e-2


def test_Y_is_the_object_window(low):
    """Y equals objectGuess[s_y:s_y+N, s_x:s_x+N] under each exposure, exactly."""
    n = low["probeGuess"].shape[-1]
    starts = window_starts(_coords(low), low["objectGuess"].shape, n)
    for k, (sy, sx) in enumerate(starts):
        np.testing.assert_array_equal(low["Y"][k], low["objectGuess"][sy:sy + n, sx:sx + n])


def test_probe_is_scaled_to_the_dose(low, high):
    """N^2 sum|P|^2 = sum|fft2 P|^2 = dose for the stored probe; both doses share its shape."""
    for d in (low, high):
        p = d["probeGuess"].astype(np.complex128)
        n = p.shape[-1]
        dose = d["meta"]["dose"]
        # complex64 storage: relative error ~1e-7 per element; 1e-5 on a sum of 1024 terms.
        assert n * n * np.sum(np.abs(p) ** 2) == pytest.approx(dose, rel=1e-5)
        assert np.sum(np.abs(np.fft.fft2(p)) ** 2) == pytest.approx(dose, rel=1e-5)
        assert d["meta"]["amplitude_scale"] == pytest.approx(np.sqrt(dose) / n, rel=1e-12)
    ratio = high["probeGuess"].astype(np.complex128) / low["probeGuess"].astype(np.complex128)
    np.testing.assert_allclose(ratio, 10.0, rtol=1e-5)  # sqrt(100000 / 1000); complex64 rounding


@pytest.mark.parametrize("design_name", ["smoke", "fly64_dose_overlap"])
def test_probe_is_centred_compact_and_of_nominal_size(repo_root, design_name):
    """Model probe: centroid at (N-1)/2, edge energy < 2e-3, measured diameter within 10% of nominal."""
    design = load_design(repo_root / "plans" / design_name / "design.json")
    probe, meta = physics.build_probe(design.raw["probe"], design.resolve)
    n = design.probe_size
    intensity = np.abs(probe) ** 2
    yy, xx = np.indices(intensity.shape)
    centroid = [(yy * intensity).sum() / intensity.sum(), (xx * intensity).sum() / intensity.sum()]
    np.testing.assert_allclose(centroid, [(n - 1) / 2] * 2, atol=1e-6)  # symmetric pupil: exact
    assert meta["edge_energy_fraction"] < 2e-3  # periodic sub-pixel shifts wrap almost nothing
    assert meta["measured_diameter_px"] == pytest.approx(meta["nominal_diameter_px"], rel=0.10)
    assert n * n * intensity.sum() == pytest.approx(1.0, rel=1e-12)


def test_probe_from_npz(tmp_path):
    """`probe: {npz}` loads probeGuess without pickle, unit-normalises it and checks the shape."""
    p = physics.defocused_pupil_probe(32, 0.2, 3.0) * 7.0
    np.savez(tmp_path / "probe.npz", probeGuess=p.astype(np.complex64))
    loaded = physics.load_probe_npz(tmp_path / "probe.npz", 32)
    np.testing.assert_allclose(loaded, p / 7.0, rtol=0, atol=1e-7)  # complex64 storage
    with pytest.raises(Exception, match=r"probe/npz: probeGuess has shape \(32, 32\), expected \(16, 16\)"):
        physics.load_probe_npz(tmp_path / "probe.npz", 16)


@pytest.mark.parametrize("model", ["lines", "random_field", "lines_and_random", "image"])
def test_object_ranges_and_broadband(tmp_path, model):
    """Object amplitude in [min_amplitude, 1], phase in [-max, max], with high-frequency content."""
    import matplotlib.image as mpimg

    spec = {"shape": [96, 80], "model": model, "feature_size_px": 2.0, "max_phase_rad": 0.8, "min_amplitude": 0.6}
    if model == "image":
        yy, xx = np.indices((50, 70))
        mpimg.imsave(tmp_path / "img.png", ((xx // 3 + yy // 5) % 2).astype(float), cmap="gray")
        spec["image"] = "img.png"
    obj, meta = physics.build_object(spec, lambda rel: tmp_path / rel, seed=7)
    assert obj.dtype == np.complex64 and obj.shape == (96, 80)
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() >= 0.6 - 1e-6 and amp.max() <= 1.0 + 1e-6  # complex64 rounding
    assert np.abs(phase).max() <= 0.8 + 1e-6
    assert amp.max() - amp.min() > 0.2 and phase.max() - phase.min() > 0.8  # uses its range
    power = np.abs(np.fft.fft2(phase - phase.mean())) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(96), np.fft.fftfreq(80), indexing="ij")
    # Broadband: measured 23-24 % of the phase energy lies above 0.1 cycles/px for these models;
    # 5 % is a floor a smooth (narrow-band) object would miss.
    assert power[np.hypot(fy, fx) > 0.1].sum() / power.sum() > 0.05
    assert meta["mean_transmission"] == pytest.approx(float(np.mean(amp ** 2)), rel=1e-6)


def test_object_is_seeded():
    """Same seed -> identical object; another seed -> another object."""
    spec = {"shape": [64, 64], "model": "lines_and_random", "feature_size_px": 2.0, "max_phase_rad": 1.0,
            "min_amplitude": 0.7}
    a, _ = physics.build_object(spec, None, 1)
    b, _ = physics.build_object(spec, None, 1)
    c, _ = physics.build_object(spec, None, 2)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("pattern", ["raster", "spiral"])
def test_scan_keeps_windows_inside(pattern):
    """Every scan window (plus margin) lies inside the object; the raster jitter is bounded."""
    spec = {"pattern": pattern, "step_px": 3.0, "jitter_px": 0.5, "margin_px": 1.5}
    coords, meta = physics.build_scan(spec, (100, 90), 32, seed=5)
    starts = window_starts(coords, (100, 90), 32)
    assert starts.min() >= 1.5
    assert (starts[:, 0] + 32).max() <= 100 - 1.5 and (starts[:, 1] + 32).max() <= 90 - 1.5
    assert meta["n_positions"] == len(coords)
    lo, hi = physics.centre_limits((100, 90), 32, 1.5)
    # Area per position ~ step^2 for both patterns: within 35 % (edges cut the spiral).
    area = np.prod(hi - lo)
    assert len(coords) == pytest.approx(area / 9.0, rel=0.35)
    if pattern == "raster":
        rows = np.unique(np.round((coords[:, 0] - coords[:, 0].min()) / 3.0))
        assert len(rows) % 2 == 0  # even rows: none sits on the split line
        nominal = np.round((coords - coords.min(axis=0)) / 3.0) * 3.0 + coords.min(axis=0)
        assert np.abs(coords - nominal).max() <= 1.0 + 1e-9  # +-0.5 jitter on each of two ends


def test_measured_counts_match_dose_times_transmission(low, high):
    """Mean counts per pattern: within 3 sigma of the expected ones and of dose x transmission."""
    for d in (low, high):
        expected = _expected(d)
        counts = _counts(d)
        n_img = len(counts)
        mean_expected = expected.sum(axis=(1, 2)).mean()
        sigma = np.sqrt(expected.sum()) / n_img  # Poisson: var(total) = expected total
        assert abs(counts.sum(axis=(1, 2)).mean() - mean_expected) < 3 * sigma
        assert d["meta"]["measured_mean_counts"] == pytest.approx(counts.sum(axis=(1, 2)).mean(), abs=1e-5)
        assert d["meta"]["expected_mean_counts"] == pytest.approx(mean_expected, rel=1e-5)
        # Parseval: sum|fft2(P_shift * O)|^2 = N^2 sum |P_shift|^2 |O|^2 = dose x (probe-weighted
        # transmission). Computed here from Y and the unshifted probe: the sub-pixel shift
        # (<= 0.5 px) changes each pattern's transmission by < 1 % on this object, so 1 %.
        n = d["probeGuess"].shape[-1]
        weights = n * n * np.abs(d["probeGuess"].astype(np.complex128)) ** 2
        transmission_counts = (weights[None] * np.abs(d["Y"]) ** 2).sum(axis=(1, 2))
        assert mean_expected == pytest.approx(transmission_counts.mean(), rel=0.01)
        sigma_t = np.sqrt(transmission_counts.sum()) / n_img
        assert abs(counts.sum(axis=(1, 2)).mean() - transmission_counts.mean()) < 3 * sigma_t + 0.01 * mean_expected


def test_counts_are_poisson(low, high):
    """Dispersion index sum((c - l)^2 / l) / n = 1 within 5 standard errors; counts integral."""
    for d in (low, high):
        raw = (d["diffraction"].astype(np.float64) * d["meta"]["amplitude_scale"]) ** 2
        # float32 storage of sqrt(counts): (d s)^2 is an integer to ~1e-7 relative.
        assert np.abs(raw - np.round(raw)).max() < 1e-3
        expected = _expected(d)
        counts = np.round(raw)
        mask = expected > 5.0  # where the Poisson variance is well defined and the pixel is lit
        lam, c = expected[mask], counts[mask]
        dispersion = np.mean((c - lam) ** 2 / lam)
        # Each term has mean 1 and variance 2 + 1/lambda (Poisson fourth moment).
        se = np.sqrt(np.mean(2.0 + 1.0 / lam) / lam.size)
        assert abs(dispersion - 1.0) < 5 * se, (dispersion, se)
        # Mean residual ~ 0 (no bias added on top of the expected counts).
        assert abs(np.mean((c - lam) / np.sqrt(lam))) < 5 / np.sqrt(lam.size)


def test_doses_share_geometry_and_have_independent_noise(low, high):
    """Doses share object, probe shape and positions; their Poisson residuals are uncorrelated."""
    assert low["objectGuess"].tobytes() == high["objectGuess"].tobytes()
    for key in ("xcoords", "ycoords", "scan_index", "Y"):
        assert low[key].tobytes() == high[key].tobytes()
    assert low["meta"]["noise_seed"] != high["meta"]["noise_seed"]
    residuals = []
    for d in (low, high):
        lam = _expected(d)
        residuals.append((_counts(d) - lam) / np.sqrt(np.maximum(lam, 1e-12)))
    mask = _expected(low) > 5.0
    r = np.corrcoef(residuals[0][mask], residuals[1][mask])[0, 1]
    # Independent draws: the sample correlation has standard error 1/sqrt(n); 5 sigma.
    assert abs(r) < 5 / np.sqrt(mask.sum())
