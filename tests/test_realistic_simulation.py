"""Realistic conditions in gen-synthetic (docs/physics.md, "Realistic conditions"): probe modes,
position errors, the detector (binning, beamstop, ceiling, readout noise, dead pixels) and its mask.

Statistical checks use the smoke design's own data and state their tolerance: a z-test at 6
standard errors (a false alarm about once in 5e8 runs) unless said otherwise.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ptydose.core import physics
from ptydose.core.contract import check_npz
from ptydose.core.design import load_design
from ptydose.core.errors import DesignError
from ptydose.core.synthetic import NPZ_KEYS, OPTIONAL_NPZ_KEYS, build_geometry, generate_study

DOSE = 100000
Z = 6.0  # standard errors allowed in a statistical check


def _design(smoke_design_path: Path, folder: Path, **blocks) -> Path:
    """The smoke design at one dose with the given blocks (``probe_modes`` goes inside ``probe``)."""
    raw = json.loads(smoke_design_path.read_text())
    raw["doses"] = blocks.pop("doses", [DOSE])
    modes = blocks.pop("probe_modes", None)
    if modes is not None:
        raw["probe"]["modes"] = modes
    for key, value in blocks.pop("scan", {}).items():
        raw["scan"][key] = value
    raw.update(blocks)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "design.json"
    path.write_text(json.dumps(raw))
    return path


def _generate(smoke_design_path: Path, folder: Path, **blocks) -> Path:
    design = _design(smoke_design_path, folder, **blocks)
    generate_study(design, folder / "phase_c", folder / "phase_d", progress=False)
    return folder


def _load(folder: Path, split: str = "train", dose: int = DOSE, view: str | None = None) -> dict:
    rel = f"dose_{dose}/patched_{split}.npz" if view is None else f"dose_{dose}/{view}/{view}_{split}.npz"
    root = folder / ("phase_c" if view is None else "phase_d")
    with np.load(root / rel, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
        arrays["_members"] = list(data.files)
    arrays["meta"] = json.loads(str(arrays.pop("_metadata")))
    return arrays


def _counts(d: dict) -> np.ndarray:
    """Counts as a reader recovers them: (diffraction * amplitude_scale)^2 (unrounded)."""
    return np.square(d["diffraction"].astype(np.float64) * d["meta"]["amplitude_scale"])


def _full_scan(folder: Path, dose: int = DOSE) -> dict:
    """Both baseline files (train + test = the whole scan) merged in scan order."""
    parts = [_load(folder, split, dose) for split in ("train", "test")]
    order = np.argsort(np.concatenate([p["scan_index"] for p in parts]))
    merged = {key: np.concatenate([p[key] for p in parts])[order]
              for key in ("diffraction", "xcoords", "ycoords", "scan_index")
              + tuple(k for k in ("nominal_xcoords", "nominal_ycoords") if k in parts[0])}
    merged["meta"] = parts[0]["meta"]
    merged["parts"] = parts
    return merged


def _expected(folder: Path, dose: int = DOSE) -> np.ndarray:
    """Expected photons of the whole scan from the design's geometry (float64, DC-centred)."""
    geometry = build_geometry(load_design(folder / "design.json"))
    binning = 1 if geometry.detector is None else geometry.detector.binning
    probe = geometry.probe_unit if geometry.probe_modes_unit is None else geometry.probe_modes_unit
    model = physics.ForwardModel(probe, geometry.obj, binning=binning)
    return model.intensities(geometry.coords).astype(np.float64) * dose


@pytest.fixture(scope="module")
def ideal(smoke_design_path, tmp_path_factory) -> Path:
    return _generate(smoke_design_path, tmp_path_factory.mktemp("ideal"))


# ----------------------------------------------------------------------------------------------
# Defaults: no block, no change
# ----------------------------------------------------------------------------------------------
def test_ideal_files_keep_todays_members(ideal):
    """Without realistic blocks the files hold exactly the eight members and no new metadata key (the
    golden sha256 tests, tests/core/test_synthetic_streaming.py, pin their bytes)."""
    for split in ("train", "test"):
        d = _load(ideal, split)
        assert tuple(d["_members"]) == NPZ_KEYS
        assert not {"detector", "position_errors", "probe_modes"} & set(d["meta"])


def test_an_effectless_detector_leaves_the_data_as_they_were(smoke_design_path, tmp_path, ideal):
    """binning 1, no noise, no ceiling, no beamstop: the same patterns and Poisson draws (only the
    metadata records the detector), so a b = 1 detector is today's forward model and stream."""
    folder = _generate(smoke_design_path, tmp_path, detector={"binning": 1, "adu_per_photon": 7.0})
    for split in ("train", "test"):
        got, want = _load(folder, split), _load(ideal, split)
        assert tuple(got["_members"]) == NPZ_KEYS  # nothing masked: no valid_pixels
        for key in ("diffraction", "Y", "probeGuess", "xcoords", "ycoords"):
            assert np.array_equal(got[key], want[key]), key
        assert got["meta"]["detector"]["counts"] == "integer"
        assert got["meta"]["measured_mean_counts"] == want["meta"]["measured_mean_counts"]


def test_readout_noise_has_its_own_stream(smoke_design_path, tmp_path, ideal):
    """With readout noise of 1e-3 photon (1 ADU at 1000 ADU per photon) the rounded counts are the
    ideal design's Poisson counts exactly: the Poisson stream is untouched by the readout draw."""
    folder = _generate(smoke_design_path, tmp_path, detector={"readout_noise_adu": 1.0, "adu_per_photon": 1000.0})
    got, want = _full_scan(folder), _full_scan(ideal)  # 420 patterns: two batches of the stream
    assert got["meta"]["detector"]["counts"] == "continuous"
    counts = _counts(got)
    assert not np.array_equal(counts, np.round(counts))  # really continuous
    # |noise| < 0.5 photon needs 500 sigma here: never exceeded.
    assert np.array_equal(np.round(counts), np.round(_counts(want)))


# ----------------------------------------------------------------------------------------------
# Detector: readout noise, ceiling, beamstop, dead pixels, mask
# ----------------------------------------------------------------------------------------------
SIGMA_ADU, GAIN = 30.0, 3.0  # readout noise of 10 photons


@pytest.fixture(scope="module")
def noisy(smoke_design_path, tmp_path_factory) -> Path:
    return _generate(smoke_design_path, tmp_path_factory.mktemp("noisy"),
                     detector={"readout_noise_adu": SIGMA_ADU, "adu_per_photon": GAIN, "beamstop_radius_px": 2.5})


def test_readout_noise_where_no_photons_arrive(noisy):
    """In the beamstop (no photons) counts = max(N(0, s^2), 0) with s = readout_noise_adu / adu_per_photon:
    half are exactly 0, the mean is s / sqrt(2 pi), the positive ones are half-normal (mean s sqrt(2/pi))."""
    d = _full_scan(noisy)
    s = SIGMA_ADU / GAIN
    beamstop = physics.beamstop_mask(32, 2.5)
    values = np.concatenate([_counts(p)[:, beamstop].ravel() for p in d["parts"]])
    m = values.size
    assert m > 5000
    zeros = np.mean(values == 0)
    assert abs(zeros - 0.5) <= Z * math.sqrt(0.25 / m)
    # Clipped normal: E = s/sqrt(2 pi), Var = s^2 (1/2 - 1/(2 pi)).
    assert abs(values.mean() - s / math.sqrt(2 * math.pi)) <= Z * s * math.sqrt((0.5 - 0.5 / math.pi) / m)
    positive = values[values > 0]
    # Half-normal: mean s sqrt(2/pi), variance s^2 (1 - 2/pi).
    assert abs(positive.mean() - s * math.sqrt(2 / math.pi)) <= Z * s * math.sqrt((1 - 2 / math.pi) / positive.size)


def test_readout_noise_adds_its_variance_to_the_poisson_variance(noisy):
    """Where many photons arrive (expected >= 100, so the clip at 0 never acts: 10 sigma), the
    residual c - lambda has mean 0 and variance lambda + s^2: the standardised residual
    (c - lambda) / sqrt(lambda + s^2) has mean 0 and variance 1 (sample variance's standard error
    sqrt(2/m), the draws being independent). Without the readout term the variance would be ~1.3."""
    d = _full_scan(noisy)
    lam = _expected(noisy)
    lam[:, physics.beamstop_mask(32, 2.5)] = 0.0
    counts = _counts(d)
    s2 = (SIGMA_ADU / GAIN) ** 2
    bright = lam >= 100
    z = (counts[bright] - lam[bright]) / np.sqrt(lam[bright] + s2)
    m = z.size
    assert m > 20000
    assert abs(z.mean()) <= Z / math.sqrt(m)
    assert abs(z.var() - 1.0) <= Z * math.sqrt(2.0 / m)
    poisson_only = (counts[bright] - lam[bright]) / np.sqrt(lam[bright])
    assert poisson_only.var() > 1.0 + 10 * math.sqrt(2.0 / m)  # the test tells the two apart


def test_beamstop_pixels_get_no_photons_and_are_masked(smoke_design_path, tmp_path):
    """No readout noise: every beamstop pixel reads exactly 0, the mask is the complement of the
    beamstop, and the mean counts are over the valid pixels (the contract's reading)."""
    folder = _generate(smoke_design_path, tmp_path, detector={"beamstop_radius_px": 3.0})
    d = _load(folder)
    beamstop = physics.beamstop_mask(32, 3.0)
    assert beamstop.sum() == 29  # pixels within 3 of (16, 16)
    assert beamstop[16, 16] and not beamstop[16, 20]
    assert np.all(_counts(d)[:, beamstop] == 0)
    assert np.array_equal(d["valid_pixels"], ~beamstop)
    assert d["meta"]["detector"]["n_masked_pixels"] == 29
    # Integer counts: the mean of the recovered (rounded) totals, to the metadata's 6 decimals.
    assert d["meta"]["measured_mean_counts"] == pytest.approx(np.round(_counts(d)).sum(axis=(1, 2)).mean(), abs=1e-6)


def test_ceiling_is_respected_and_masked_over_the_whole_scan(smoke_design_path, tmp_path):
    """No count exceeds saturation_photons; a pixel is masked exactly where some pattern of the whole
    scan (train or test) reached the ceiling, and every file of the dose carries the same mask."""
    ceiling = 500
    folder = _generate(smoke_design_path, tmp_path, detector={"saturation_photons": ceiling})
    d = _full_scan(folder)
    counts = np.round(_counts(d))
    assert counts.max() == ceiling
    reached = np.any(counts == ceiling, axis=0)
    assert 0 < reached.sum() < 1024
    train, test = d["parts"]
    assert np.array_equal(train["valid_pixels"], ~reached)
    assert np.array_equal(test["valid_pixels"], ~reached)
    dense = _load(folder, "train", view="dense")
    assert np.array_equal(dense["valid_pixels"], ~reached)
    assert train["meta"]["detector"]["n_saturated_values"] == int(np.sum(np.round(_counts(train)) == ceiling))
    assert train["meta"]["detector"]["n_masked_pixels"] == int(reached.sum())


def test_ceiling_without_mask(smoke_design_path, tmp_path):
    """mask_saturated false: the counts are clipped all the same, and nothing is masked."""
    folder = _generate(smoke_design_path, tmp_path, detector={"saturation_photons": 500, "mask_saturated": False})
    d = _load(folder)
    assert "valid_pixels" not in d["_members"]
    assert np.round(_counts(d)).max() == 500


def test_dead_pixels_are_fixed_zero_and_masked(smoke_design_path, tmp_path):
    """bad_pixels dead pixels: outside the beamstop, 0 in every pattern, masked, the same at every dose."""
    folder = _generate(smoke_design_path, tmp_path, doses=[1000, DOSE],
                       detector={"bad_pixels": 20, "beamstop_radius_px": 1.5})
    beamstop = physics.beamstop_mask(32, 1.5)
    masks = []
    for dose in (1000, DOSE):
        d = _load(folder, dose=dose)
        dead = ~d["valid_pixels"] & ~beamstop
        assert dead.sum() == 20 and not np.any(dead & beamstop)
        assert np.all(_counts(d)[:, dead] == 0)
        masks.append(d["valid_pixels"])
    assert np.array_equal(*masks)


def test_too_many_dead_pixels_are_refused(smoke_design_path, tmp_path):
    design = _design(smoke_design_path, tmp_path, detector={"bad_pixels": 1020, "beamstop_radius_px": 2.0})
    with pytest.raises(DesignError, match="detector/bad_pixels"):
        build_geometry(load_design(design))


def test_detect_order_of_operations():
    """physics.detect on known inputs: beamstop before Poisson, ceiling before readout, dead pixels last."""
    expected = np.full((2, 4, 4), 50.0)
    beamstop = np.zeros((4, 4), dtype=bool)
    beamstop[2, 2] = True
    bad = np.zeros((4, 4), dtype=bool)
    bad[0, 0] = True
    detector = physics.Detector(readout_noise_adu=0.0, saturation_photons=10, beamstop_radius_px=1.0, bad_pixels=1)
    after, counts, saturated = physics.detect(expected, detector, beamstop, bad, np.random.default_rng(0), None)
    assert after[:, 2, 2].tolist() == [0.0, 0.0] and counts[:, 2, 2].tolist() == [0, 0]
    assert counts.dtype == np.int64 and counts.max() == 10  # Poisson(50) >= 10 here: all clipped
    assert saturated[:, 1, 1].all() and not saturated[:, 2, 2].any()
    assert counts[:, 0, 0].tolist() == [0, 0]
    noisy = physics.Detector(readout_noise_adu=2.0, adu_per_photon=4.0, saturation_photons=10)
    _, counts, _ = physics.detect(expected, noisy, beamstop, bad, np.random.default_rng(0), np.random.default_rng(1))
    assert counts.dtype == np.float64 and counts.min() >= 0
    assert np.all(np.abs(counts[:, 1, 1] - 10) < 0.5 * 8)  # the ceiling, plus noise of 0.5 photon (8 sigma)
    assert counts[:, 2, 2].max() < 0.5 * 8 and counts[:, 0, 0].tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------------------------
# Binning
# ----------------------------------------------------------------------------------------------
def _small_model(binning: int, probe: np.ndarray | None = None, n: int = 8):
    rng = np.random.default_rng(5)
    obj = (np.exp(1j * rng.uniform(-1, 1, (24, 24))) * rng.uniform(0.5, 1, (24, 24))).astype(np.complex64)
    if probe is None:
        probe = physics.defocused_pupil_probe(n, 0.25, 2.0)
    coords = np.array([[11.3, 12.7], [12.1, 10.45], [11.5, 11.5]])
    return physics.ForwardModel(probe, obj, binning=binning), coords


@pytest.mark.parametrize("binning", [2, 3, 4])
def test_binning_averages_the_fine_far_field_about_each_stored_pixel(binning):
    """Binned pixel m = mean of |F(f)|^2 over the b x b fine frequencies m/N + (j - (b-1)/2)/(N b),
    F the exit wave's continuous Fourier transform, evaluated here by a direct sum (independent of
    the FFT, padding and phase ramp). Tolerance 1e-5 of the peak: float32 exit waves and FFT."""
    model, coords = _small_model(binning)
    n = model.n
    exit_waves = model.exit_waves(coords).astype(np.complex128)
    r = np.arange(n)
    offsets = (np.arange(binning) - (binning - 1) / 2.0) / (n * binning)
    freqs = (np.arange(n)[:, None] / n + offsets[None, :]).ravel()  # (N b) fine frequencies, grouped per m
    kernel = np.exp(-2j * np.pi * freqs[:, None] * r[None, :])  # (N b, N)
    fine = np.einsum("ay,kyx,bx->kab", kernel, exit_waves, kernel)
    direct = (np.abs(fine) ** 2).reshape(len(coords), n, binning, n, binning).mean(axis=(2, 4))
    model_far = model.far_intensities(model.exit_waves(coords))
    assert np.max(np.abs(model_far - direct)) <= 1e-5 * direct.max()


@pytest.mark.parametrize("binning", [2, 3])
def test_binning_conserves_the_dose(binning):
    """Sum over a binned pattern = sum over the unbinned one (Parseval: the finer detector sees the
    same photons), to float32 rounding (1e-5 relative)."""
    model, coords = _small_model(binning)
    plain, _ = _small_model(1)
    assert np.allclose(model.intensities(coords).sum(axis=(1, 2)), plain.intensities(coords).sum(axis=(1, 2)),
                       rtol=1e-5, atol=0)
    free = physics.ForwardModel(model.probe, np.ones((24, 24), dtype=np.complex64), binning=binning)
    assert np.allclose(free.intensities(coords).sum(axis=(1, 2)), 1.0, rtol=1e-5)  # unit probe: dose 1


def test_binned_design_keeps_the_dose(smoke_design_path, tmp_path, ideal):
    """A binning-2 design's expected counts per pattern equal the ideal design's (1e-6 relative: the
    same photons on finer pixels), while the patterns themselves differ."""
    folder = _generate(smoke_design_path, tmp_path, detector={"binning": 2})
    got, want = _load(folder), _load(ideal)
    assert got["meta"]["expected_mean_counts"] == pytest.approx(want["meta"]["expected_mean_counts"], rel=1e-6)
    assert not np.array_equal(got["diffraction"], want["diffraction"])


# ----------------------------------------------------------------------------------------------
# Probe modes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count, ratio", [(2, 0.5), (4, 0.3), (8, 0.9)])
def test_modes_are_orthogonal_with_the_stated_powers(count, ratio):
    """Gram matrix diagonal = power_ratio**k / sum (1e-12), off-diagonal < 1e-12 of the total power,
    N^2 sum of all powers = 1, mode 0 the design's probe itself."""
    probe = physics.defocused_pupil_probe(32, 0.2, 3.2)
    modes = physics.probe_modes(probe, count, ratio)
    gram = np.einsum("aij,bij->ab", modes.conj(), modes) * 32 * 32
    fractions = np.array(physics.mode_power_fractions(count, ratio))
    assert np.allclose(np.diag(gram).real, fractions, rtol=0, atol=1e-12)
    assert np.max(np.abs(gram - np.diag(np.diag(gram)))) < 1e-12
    assert fractions[1:] / fractions[:-1] == pytest.approx(np.full(count - 1, ratio))
    assert np.max(np.abs(modes[0] - probe * math.sqrt(fractions[0]))) <= 1e-12 * np.abs(probe).max()
    # Derivative modes stay inside the frame (pty-chi's shift is periodic): measured up to 2.6 % of a
    # third-order mode's power in the outer N/8, 0.6 % of the total illumination with 8 modes at 0.9.
    for mode in modes[1:]:
        assert physics.edge_energy_fraction(mode) < 0.03
    assert physics.edge_energy_fraction(np.sqrt(np.sum(np.abs(modes) ** 2, axis=0))) < 0.01


def test_mode_intensities_add():
    """The multi-mode pattern is the sum of the single-mode patterns (1e-5 relative: float32), also binned."""
    probe = physics.defocused_pupil_probe(8, 0.25, 2.0)
    modes = physics.probe_modes(probe, 3, 0.5)
    for binning in (1, 2):
        model, coords = _small_model(binning, modes)
        parts = sum(_small_model(binning, mode)[0].intensities(coords).astype(np.float64) for mode in modes)
        assert np.allclose(model.intensities(coords), parts, rtol=1e-5, atol=1e-7 * parts.max())


def test_modes_in_the_files(smoke_design_path, tmp_path, ideal):
    """probe_modes[0] is probeGuess (the same bytes), N^2 sum |probe_modes|^2 = dose (1e-6: complex64),
    and the expected counts equal the single-mode ideal's to within the modes' different coupling
    to the object (same dose through free space; both are transmitted fractions of it)."""
    folder = _generate(smoke_design_path, tmp_path, probe_modes={"count": 3, "power_ratio": 0.5})
    d = _load(folder)
    assert d["probe_modes"].shape == (3, 32, 32) and d["probe_modes"].dtype == np.complex64
    assert np.array_equal(d["probe_modes"][0], d["probeGuess"])
    total = 32 * 32 * np.sum(np.abs(d["probe_modes"].astype(np.complex128)) ** 2)
    assert total == pytest.approx(DOSE, rel=1e-6)
    meta = d["meta"]["probe_modes"]
    assert meta["count"] == 3 and meta["power_fractions"] == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=1e-9)
    ratio = d["meta"]["expected_mean_counts"] / _load(ideal)["meta"]["expected_mean_counts"]
    assert 0.9 < ratio < 1.1  # both ~ mean transmission x dose


# ----------------------------------------------------------------------------------------------
# Position errors
# ----------------------------------------------------------------------------------------------
ERRORS = {"random_px": 0.3, "scale": 0.02, "rotation_deg": 1.0, "drift_px": [1.0, -0.5]}


@pytest.fixture(scope="module")
def shifted(smoke_design_path, tmp_path_factory) -> Path:
    # A spiral: along a raster's scan order y grows with t, which makes the y scale and the y drift
    # nearly degenerate in the fit below; a spiral's order is not aligned with either axis.
    return _generate(smoke_design_path, tmp_path_factory.mktemp("shifted"), position_errors=ERRORS,
                     scan={"margin_px": 3.0, "pattern": "spiral"})


def test_nominal_positions_follow_the_error_model(shifted):
    """The model true = c + A (nominal - c) + drift t + random, A = (1 + scale) R(rotation), is fitted
    over the whole scan as nominal = c' + B true + d t + e with B = A^-1, d = -A^-1 drift and
    e = -A^-1 random: the nominal positions are made from the true ones, so the noise is independent
    of the true positions and only this direction of the least squares is unbiased (regressing true
    on nominal would put noise in the regressors and shrink the slopes, badly so along a raster's
    rows, where y is nearly collinear with t). B and d must lie within 6 standard errors of the fit
    (sigma^2 (X'X)^-1) of their values, and the residual std, random_px / (1 + scale), within
    6 sqrt(1 / (2 dof)) relative."""
    d = _full_scan(shifted)
    n_scan = len(d["scan_index"])
    assert np.array_equal(d["scan_index"], np.arange(n_scan))
    true = np.stack([d["ycoords"], d["xcoords"]], axis=1)
    nominal = np.stack([d["nominal_ycoords"], d["nominal_xcoords"]], axis=1)
    t = d["scan_index"] / (n_scan - 1)
    regressors = np.column_stack([true, np.ones(n_scan), t])
    coef, *_ = np.linalg.lstsq(regressors, nominal, rcond=None)  # (4, 2): columns y, x
    dof = n_scan - 4
    sigma = (nominal - regressors @ coef).std(axis=0, ddof=4)
    standard_errors = np.sqrt(np.diag(np.linalg.inv(regressors.T @ regressors)))[:, None] * sigma[None, :]
    a = (1 + ERRORS["scale"]) * physics.rotation_yx(ERRORS["rotation_deg"])
    b = np.linalg.inv(a)
    want = np.vstack([b.T, np.zeros((1, 2)), -(b @ np.asarray(ERRORS["drift_px"]))[None, :]])
    free = [0, 1, 3]  # the intercept absorbs the centre: not a parameter of the model
    assert np.all(np.abs(coef[free] - want[free]) <= Z * standard_errors[free])
    fitted = np.linalg.inv(coef[:2].T)  # A recovered
    assert math.sqrt(np.linalg.det(fitted)) - 1 == pytest.approx(ERRORS["scale"], abs=1e-3)
    assert math.degrees(math.atan2(fitted[0, 1], fitted[0, 0])) == pytest.approx(ERRORS["rotation_deg"], abs=0.05)
    assert fitted @ -coef[3] == pytest.approx(ERRORS["drift_px"], abs=0.1)
    want_sigma = ERRORS["random_px"] / (1 + ERRORS["scale"])
    assert np.all(np.abs(sigma / want_sigma - 1) <= Z * math.sqrt(1 / (2 * dof)))


def test_position_error_metadata(shifted):
    """The metadata's RMS and largest |nominal - true| are those of the file's own positions."""
    d = _load(shifted)
    distance = np.hypot(d["nominal_ycoords"] - d["ycoords"], d["nominal_xcoords"] - d["xcoords"])
    meta = d["meta"]["position_errors"]
    assert meta["rms_error_px"] == pytest.approx(math.sqrt(np.mean(distance ** 2)), abs=1e-6)
    assert meta["max_error_px"] == pytest.approx(distance.max(), abs=1e-6)
    assert {k: meta[k] for k in ERRORS} == ERRORS
    assert d["nominal_xcoords"].dtype == np.float64 and d["nominal_xcoords"].shape == d["xcoords"].shape


def test_position_errors_leaving_the_object_are_refused(smoke_design_path, tmp_path):
    """The last row's nominal positions lie 5 px further down than the true ones (margin 1 px): refused."""
    design = _design(smoke_design_path, tmp_path, position_errors={"drift_px": [-5.0, 0.0]})
    with pytest.raises(DesignError, match="position_errors"):
        build_geometry(load_design(design))


# ----------------------------------------------------------------------------------------------
# Everything at once: member order, metadata, the data contract
# ----------------------------------------------------------------------------------------------
def test_every_block_member_order_and_contract(smoke_design_path, tmp_path):
    """All blocks: the eight members, then probe_modes, nominal_xcoords, nominal_ycoords, valid_pixels;
    the detector metadata as the contract reads it; every file validates."""
    detector = {"readout_noise_adu": 3.0, "adu_per_photon": 10.0, "saturation_photons": 500,
                "beamstop_radius_px": 1.5, "bad_pixels": 5, "binning": 2}
    folder = _generate(smoke_design_path, tmp_path, doses=[1000, DOSE], probe_modes={"count": 2, "power_ratio": 0.3},
                       position_errors=copy.deepcopy(ERRORS), scan={"margin_px": 3.0}, detector=detector)
    d = _load(folder)
    assert tuple(d["_members"]) == NPZ_KEYS + OPTIONAL_NPZ_KEYS
    meta = d["meta"]["detector"]
    assert meta["counts"] == "continuous" and {k: meta[k] for k in detector} == detector
    assert meta["n_masked_pixels"] == int((~d["valid_pixels"]).sum())
    assert isinstance(meta["readout_seed"], int)
    files = sorted(folder.rglob("*.npz"))
    assert len(files) == 12
    for path in files:
        report = check_npz(path)
        assert report.ok, report.lines()
