"""Engines under realistic conditions: start probes, probe modes, position correction, detector masks.

Real pty-chi and CDTools runs on the smoke study (32 x 32 frames, a few seconds each). Numerical
tolerances are stated where they are asserted, with the measurement they come from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import builders
from ptydose.core.contract import read_contract_npz, write_contract_npz
from ptydose.core.design import load_design
from ptydose.core.errors import DesignError, EngineError
from ptydose.core.jobs import options_hash, plan_jobs, write_plan
from ptydose.core.manifests import read_json
from ptydose.core.physics import ForwardModel, defocused_pupil_probe
from ptydose.core.reconstructors import design_reconstructors
from ptydose.core.run.engines import cdtools as cdtools_engine
from ptydose.core.run.engines import ptychi as ptychi_engine
from ptydose.core.run.engines.base import load_inputs
from ptydose.core.run.engines.command import write_engine_input
from ptydose.core.run.engines.options import CdtoolsOptions, ProbeStart, PtychiOptions, options_mapping, options_record
from ptydose.core.run.engines.probes import (
    EXTRA_MODE_POWER,
    estimated_probe,
    orthogonalise_modes,
    probe_error,
    start_modes,
    start_probe,
)
from ptydose.run_ptychi import cli as run_cli

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "external_engine" / "simple_epie.py"
SMOKE = REPO / "plans" / "smoke" / "design.json"
STUDY = REPO / "plans" / "fly64_dose_overlap" / "design.json"

PTYCHI = PtychiOptions(noise_model="gaussian", batch_size=32, optimize_probe=True, probe_update_start_epoch=1,
                       seed=123, chunk_epochs=4, wavelength_m=1.4e-10, object_pixel_size_m=1.2e-7)
CDTOOLS = CdtoolsOptions(noise_model="gaussian", learning_rate=0.05, learning_rate_final=0.01, batch_size=16,
                         optimize_probe=True, probe_update_start_epoch=1, seed=123, chunk_epochs=4,
                         wavelength_m=1.4e-10, object_pixel_size_m=1.2e-7)
#: The smoke design's probe model, and a model start with a 1 rad defocus and 10 % diameter error.
SMOKE_RADIUS, SMOKE_DEFOCUS = 0.2, 3.2
MODEL_START = ProbeStart(source="model", model="defocused_pupil", pupil_radius_fraction=SMOKE_RADIUS / 1.1,
                         defocus_phase_rad=SMOKE_DEFOCUS + 1.0, defocus_error_rad=1.0, diameter_error=0.1)


def _design(tmp_path: Path, **changes) -> Path:
    """The smoke design with top-level keys replaced (None removes one), written beside the test."""
    return builders.design_variant(SMOKE, tmp_path, **changes)


def _options(path: Path) -> dict:
    (rec,) = design_reconstructors(load_design(path))
    return dict(rec.engine_options)


def _baseline(smoke_data, dose: int = 100000) -> Path:
    return smoke_data["phase_c_root"] / f"dose_{dose}" / "patched_train.npz"


def _dense(smoke_data, dose: int = 100000) -> Path:
    return smoke_data["phase_d_root"] / f"dose_{dose}" / "dense" / "dense_train.npz"


def _rms_error(x, y, true_x, true_y) -> float:
    """RMS position error after removing the mean offset (which the object's frame absorbs)."""
    dx, dy = np.asarray(x) - true_x, np.asarray(y) - true_y
    return float(np.sqrt(np.mean((dx - dx.mean()) ** 2 + (dy - dy.mean()) ** 2)))


# --- planning ------------------------------------------------------------------------------------


def test_designs_without_realistic_keys_keep_their_options_and_hashes(tmp_path):
    """Defaults spelt out (start true, one mode, no correction) change neither options nor hashes;
    the smoke design's LSQML options hash is pinned (the one every existing manifest holds)."""
    # The hashes the shipped smoke (pty-chi LSQML) and fly64 (CDTools Adam) designs' jobs had before
    # realistic conditions existed (computed with the code of that time).
    for design, engine, pinned in (
            (SMOKE, "ptychi", "deaea9699addeaa647abbde5cc3d9e7a1a627763f722269027f6f294b074237e"),
            (STUDY, "cdtools", "080ade1f4660fd8d213a42cecf4c5d99fbcebc81dedb4e73975e54fb0e505af9")):
        (rec,) = design_reconstructors(load_design(design))
        assert not {"probe_start", "probe_modes", "position_correction"} & set(rec.engine_options)
        job = {"algorithm": rec.algorithm, "num_epochs": rec.num_epochs, "engine": engine,
               "engine_options": dict(rec.engine_options)}
        assert (rec.engine, options_hash(job)) == (engine, pinned)
    plain = _options(SMOKE)
    raw = json.loads(SMOKE.read_text())
    spelt = _design(tmp_path, probe_knowledge={"start": "true"},
                    reconstruction={**raw["reconstruction"], "probe_modes": 1, "position_correction": False})
    assert _options(spelt) == plain
    # CDTools too: the record round-trips without the optional fields.
    adam = _design(tmp_path, reconstruction={"algorithm": "ADAM", "num_epochs": 2, "probe_modes": 1})
    options = _options(adam)
    assert options_mapping(options_record(CdtoolsOptions, options)) == options
    assert not {"probe_start", "probe_modes", "position_correction"} & set(options)


def test_probe_knowledge_resolves_to_a_start_probe_with_the_stated_errors(tmp_path):
    """model: the design's pupil radius / (1 + diameter_error) and defocus + defocus_error_rad; estimated: the source only."""
    raw = json.loads(SMOKE.read_text())
    model = _design(tmp_path, probe_knowledge={"start": "model", "defocus_error_rad": 1.0, "diameter_error": 0.1},
                    reconstruction={**raw["reconstruction"], "probe_modes": 2, "position_correction": True})
    options = _options(model)
    assert options["probe_start"] == {"source": "model", "model": "defocused_pupil",
                                      "pupil_radius_fraction": pytest.approx(SMOKE_RADIUS / 1.1, rel=1e-15),
                                      "defocus_phase_rad": SMOKE_DEFOCUS + 1.0, "defocus_error_rad": 1.0,
                                      "diameter_error": 0.1}
    assert (options["probe_modes"], options["position_correction"]) == (2, True)
    assert list(options)[-3:] == ["probe_start", "probe_modes", "position_correction"]
    estimated = _design(tmp_path, probe_knowledge={"start": "estimated"})
    assert _options(estimated)["probe_start"] == {"source": "estimated"}
    # Each changes what runs, so each changes the hash.
    assert len({options_hash({"algorithm": "LSQML", "num_epochs": 8, "engine_options": o})
                for o in (_options(SMOKE), options, _options(estimated))}) == 3


def test_a_model_start_needs_a_probe_model(tmp_path):
    """A design whose probe is an NPZ has no model to rebuild: refused in one line naming probe_knowledge/start."""
    probe_npz = tmp_path / "probe.npz"
    np.savez(probe_npz, probeGuess=defocused_pupil_probe(32, 0.2, 3.2).astype(np.complex64))
    raw = json.loads(SMOKE.read_text())
    probe = {k: v for k, v in raw["probe"].items() if k not in ("model", "pupil_radius_fraction", "defocus_phase_rad")}
    design = _design(tmp_path, probe={**probe, "npz": str(probe_npz)}, probe_knowledge={"start": "model"})
    with pytest.raises(DesignError, match=r"probe_knowledge/start: 'model' needs a probe model in the design") as caught:
        _options(design)
    assert "\n" not in str(caught.value)
    assert _options(_design(tmp_path, probe={**probe, "npz": str(probe_npz)},
                            probe_knowledge={"start": "estimated"}))["probe_start"] == {"source": "estimated"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"probe_knowledge": {"start": "model"}}, r"probe_knowledge/start: the command engine hands its program probeGuess"),
    ({"probe_knowledge": {"start": "estimated"}}, r"probe_knowledge/start: the command engine hands its program"),
    ({"probe_modes": 2}, r"reconstruction/probe_modes: the command engine reconstructs what its program returns"),
    ({"position_correction": True}, r"reconstruction/position_correction: the command engine does not refine"),
])
def test_the_command_engine_refuses_realistic_options(tmp_path, changes, message):
    """An external program gets probeGuess and fixed positions only: each request is one line naming its key."""
    block = {"engine": "command", "algorithm": "EXTERNAL", "num_epochs": 2, "command": ["prog", "{input_npz}"]}
    settings = {k: v for k, v in changes.items() if k != "probe_knowledge"}
    design = _design(tmp_path, reconstruction={**block, **settings}, probe_knowledge=changes.get("probe_knowledge"))
    with pytest.raises(DesignError, match=message) as caught:
        _options(design)
    assert str(caught.value).startswith(str(design.resolve())) and "\n" not in str(caught.value)
    # One mode and fixed positions are what it does anyway: accepted.
    assert _options(_design(tmp_path, reconstruction={**block, "probe_modes": 1, "position_correction": False}))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("probe_modes", 1, r"engine_options/probe_modes: must be an integer from 2 to 8 \(omit it for one mode\)"),
    ("probe_modes", 9, r"engine_options/probe_modes: must be an integer from 2 to 8"),
    ("position_correction", False, r"engine_options/position_correction: must be true"),
    ("probe_start", {"source": "guess"}, r"engine_options/probe_start/source: 'guess' is not one of model, estimated"),
    ("probe_start", {"source": "estimated", "diameter_error": 0.1},
     r"engine_options/probe_start/diameter_error: an estimated start probe takes no model parameter"),
    ("probe_start", {"source": "model", "model": "defocused_pupil", "pupil_radius_fraction": 0.7, "defocus_phase_rad": 0},
     r"engine_options/probe_start/pupil_radius_fraction: must be in \(0, 0.5\]"),
])
def test_manifest_options_that_no_plan_writes_are_refused(field, value, message):
    """A hand-edited manifest cannot say 'one mode' or 'no correction' in a second way (two hashes for one run)."""
    mapping = {**options_mapping(PTYCHI), field: value}
    with pytest.raises(EngineError, match=message):
        options_record(PtychiOptions, mapping)


# --- start probes and modes (no engine) ----------------------------------------------------------


def _free_space_counts(probe: np.ndarray, n_patterns: int = 3) -> np.ndarray:
    """Noise-free counts of ``probe`` through a fully transmitting object (DC-centred)."""
    far = np.abs(np.fft.fftshift(np.fft.fft2(probe))) ** 2
    return np.repeat(far[None], n_patterns, axis=0).astype(np.float64)


def _beamstop(n: int, radius: float = 2.0, bad: tuple = ((3, 5), (20, 9))) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    valid = np.hypot(yy - n // 2, xx - n // 2) > radius
    for pixel in bad:
        valid[pixel] = False
    return valid


@pytest.mark.parametrize("masked", [False, True])
def test_start_probes_are_scaled_to_the_measured_counts(masked):
    """N^2 sum |P|^2 of a model start equals the patterns' total counts (1e-6: complex64 rounding), a
    beamstop included (the valid counts over the probe's own share on the valid pixels); the model
    start is the design's probe model itself when the errors are zero."""
    n, dose = 32, 5000.0
    truth = defocused_pupil_probe(n, SMOKE_RADIUS, SMOKE_DEFOCUS) * math.sqrt(dose)
    counts = _free_space_counts(truth)
    valid = _beamstop(n) if masked else None
    if masked:
        counts[:, ~valid] = 0
    exact = ProbeStart(source="model", model="defocused_pupil", pupil_radius_fraction=SMOKE_RADIUS,
                       defocus_phase_rad=SMOKE_DEFOCUS)
    start = start_probe(truth.astype(np.complex64), counts, valid, exact)
    assert start.dtype == np.complex64
    assert n * n * np.sum(np.abs(start.astype(np.complex128)) ** 2) == pytest.approx(dose, rel=1e-6)
    assert probe_error(start, truth) < 1e-6  # complex64 rounding of the same probe
    # A start with errors is another probe whose far field on the valid pixels holds the measured
    # counts there (1e-5: complex64); its share behind a beamstop is its own, not the truth's.
    wrong = start_probe(truth.astype(np.complex64), counts, valid, MODEL_START).astype(np.complex128)
    far = np.abs(np.fft.fftshift(np.fft.fft2(wrong))) ** 2
    on = np.ones((n, n), bool) if valid is None else valid
    assert far[on].sum() == pytest.approx(counts[0][on].sum(), rel=1e-5)
    assert probe_error(wrong, truth) > 0.3
    # None: probeGuess itself, untouched.
    np.testing.assert_array_equal(start_probe(truth.astype(np.complex64), counts, valid, None),
                                  truth.astype(np.complex64))


def test_an_estimated_probe_has_the_measured_far_field_amplitude():
    """From free-space patterns the estimate's |FFT| is the measured amplitude (1e-9 relative), centred
    like the model probes; with a beamstop the masked pixels are filled from their rim, not left dark."""
    n = 32
    truth = defocused_pupil_probe(n, SMOKE_RADIUS, SMOKE_DEFOCUS) * 100.0
    counts = _free_space_counts(truth)
    probe = estimated_probe(counts, None) * 100.0
    far = np.abs(np.fft.fftshift(np.fft.fft2(probe)))
    np.testing.assert_allclose(far, np.sqrt(counts[0]), rtol=0, atol=1e-9 * far.max())
    intensity = np.abs(probe) ** 2
    yy, xx = np.mgrid[:n, :n]
    centre = ((yy * intensity).sum() / intensity.sum(), (xx * intensity).sum() / intensity.sum())
    assert centre == pytest.approx(((n - 1) / 2, (n - 1) / 2), abs=0.01)
    valid = _beamstop(n)
    masked = counts.copy()
    masked[:, ~valid] = 0
    filled = np.abs(np.fft.fftshift(np.fft.fft2(estimated_probe(masked, valid))))
    # The beamstop's centre (DC) gets an amplitude close to the truth's there (it is smooth).
    assert filled[n // 2, n // 2] / filled.max() > 0.5


def test_start_modes_are_orthogonal_with_the_start_power():
    """K start modes: mode 0 proportional to the start probe, orthogonal (1e-6 relative), the extras at
    EXTRA_MODE_POWER of mode 0, the total power the start probe's; orthogonalising keeps the
    incoherent sum pixel by pixel and sorts by power."""
    n = 32
    probe = (defocused_pupil_probe(n, SMOKE_RADIUS, SMOKE_DEFOCUS) * 30).astype(np.complex64)
    modes = start_modes(probe, 3).astype(np.complex128)
    assert modes.shape == (3, n, n)
    powers = np.sum(np.abs(modes) ** 2, axis=(1, 2))
    assert powers.sum() == pytest.approx(np.sum(np.abs(probe.astype(np.complex128)) ** 2), rel=1e-6)
    assert powers[1:] / powers[0] == pytest.approx([EXTRA_MODE_POWER] * 2, rel=1e-5)
    assert probe_error(modes[0], probe) < 1e-6
    gram = np.abs(np.einsum("kij,lij->kl", modes.conj(), modes))
    assert np.all(gram[~np.eye(3, dtype=bool)] < 1e-6 * powers[0])
    mixed = np.stack([modes[0] + modes[1], modes[1] - modes[2], modes[2]])
    ordered = orthogonalise_modes(mixed).astype(np.complex128)
    np.testing.assert_allclose(np.sum(np.abs(ordered) ** 2, 0), np.sum(np.abs(mixed) ** 2, 0), rtol=1e-4,
                               atol=1e-6 * np.abs(mixed).max() ** 2)
    assert np.all(np.diff(np.sum(np.abs(ordered) ** 2, axis=(1, 2))) <= 0)
    np.testing.assert_array_equal(start_modes(probe, 1)[0], probe)


# --- masked pixels -------------------------------------------------------------------------------


def _masked_copy(source: Path, target: Path, valid: np.ndarray, masked_counts: float | None) -> Path:
    """``source`` with a detector mask; the counts at masked pixels set to ``masked_counts`` (None: kept).

    The metadata's measured mean counts are over the valid pixels, as the contract counts them."""
    data = read_contract_npz(source)
    scale = data.amplitude_scale
    counts = data.counts().astype(np.float64)
    if masked_counts is not None:
        counts[:, ~valid] = masked_counts
    arrays = {key: data[key] for key in data.arrays}
    arrays["diffraction"] = (np.sqrt(counts) / scale).astype(np.float32)
    arrays["valid_pixels"] = valid
    meta = dict(data.metadata, measured_mean_counts=float(counts[:, valid].sum(axis=1).mean()))
    return write_contract_npz(target, arrays, meta)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ptychi", "cdtools"])
def test_masked_pixels_never_reach_a_reconstruction(smoke_data, tmp_path, engine):
    """Whatever a file holds at masked pixels (here 0, or 5000 counts) the reconstruction is the same
    bit for bit: load_inputs zeroes them before any engine sees them."""
    valid = _beamstop(32)
    files = [_masked_copy(_dense(smoke_data), tmp_path / f"{v}.npz", valid, v) for v in (0.0, 5000.0)]
    inputs = [load_inputs(f) for f in files]
    assert inputs[0].valid_pixels is not None and np.array_equal(inputs[0].valid_pixels, valid)
    np.testing.assert_array_equal(inputs[0].counts, inputs[1].counts)
    assert not np.any(inputs[1].counts[:, ~valid])
    if engine == "ptychi":
        results = [ptychi_engine.PtychiEngine().reconstruct(i, "LSQML", 4, PTYCHI, device="cpu") for i in inputs]
    else:
        results = [cdtools_engine.CdtoolsEngine().reconstruct(i, "ADAM", 4, CDTOOLS, device="cpu") for i in inputs]
    np.testing.assert_array_equal(results[0].object, results[1].object)
    np.testing.assert_array_equal(results[0].probe, results[1].probe)


@pytest.mark.slow
def test_cdtools_leaves_masked_pixels_out_of_its_loss(smoke_data):
    """Engine level, without load_inputs' zeroing: CDTools' mask alone keeps masked values out (bit for bit)."""
    valid = _beamstop(32)
    inputs = load_inputs(_dense(smoke_data))
    inputs = dataclasses.replace(inputs, valid_pixels=valid)
    noisy = inputs.counts.copy()
    noisy[:, ~valid] = 5000.0
    results = [cdtools_engine.CdtoolsEngine().reconstruct(i, "ADAM", 4, CDTOOLS, device="cpu")
               for i in (inputs, dataclasses.replace(inputs, counts=noisy))]
    np.testing.assert_array_equal(results[0].object, results[1].object)


@pytest.mark.slow
def test_ptychi_excludes_masked_pixels_from_its_fit(smoke_data):
    """With a beamstop zeroed in the data, pty-chi told of the mask leaves it out; told nothing, it fits
    the zeros as measured and lands farther from the unmasked run. Measured (8 LSQML epochs, dense
    view, dose 1e5, a 3 px beamstop): relative object difference to the unmasked run 0.062 with the
    mask, 0.110 without; asserted: below 0.7 times."""
    full = load_inputs(_dense(smoke_data))
    valid = _beamstop(32, radius=3.0)
    zeroed = full.counts.copy()
    zeroed[:, ~valid] = 0
    runs = {name: ptychi_engine.PtychiEngine().reconstruct(inp, "LSQML", 8, PTYCHI, device="cpu").object
            for name, inp in (("full", full),
                              ("masked", dataclasses.replace(full, counts=zeroed, valid_pixels=valid)),
                              ("zeros", dataclasses.replace(full, counts=zeroed)))}

    def distance(name):
        return float(np.linalg.norm(runs[name] - runs["full"]) / np.linalg.norm(runs["full"]))

    assert distance("masked") < 0.7 * distance("zeros"), (distance("masked"), distance("zeros"))


def test_the_command_engine_passes_the_mask_and_the_example_honours_it(smoke_data, tmp_path):
    """input.npz carries valid_pixels (zeroed counts beside it); simple_epie's reconstruction does not
    depend on the values at masked pixels (bit for bit), and does without a mask."""
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import simple_epie
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    valid = _beamstop(32)
    inputs = load_inputs(_masked_copy(_dense(smoke_data), tmp_path / "m.npz", valid, 7.0))
    write_engine_input(tmp_path / "input.npz", inputs)
    with np.load(tmp_path / "input.npz", allow_pickle=False) as npz:
        assert npz.files[-1] == "valid_pixels" and npz["valid_pixels"].dtype == bool
        np.testing.assert_array_equal(npz["valid_pixels"], valid)
        assert not np.any(npz["counts"][:, ~valid])
        counts, probe, x, y = npz["counts"].astype(np.float64), npz["probeGuess"], npz["xcoords"], npz["ycoords"]
    noisy = counts.copy()
    noisy[:, ~valid] = 9999.0
    runs = [simple_epie.epie(c, probe, y, x, inputs.object_shape, 2, 1, 1.0, 0.5, log=lambda _: None,
                             valid_pixels=valid) for c in (counts, noisy)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    unmasked = simple_epie.epie(noisy, probe, y, x, inputs.object_shape, 2, 1, 1.0, 0.5, log=lambda _: None)
    assert not np.array_equal(unmasked[0], runs[0][0])


# --- real runs: start probes, modes, position correction -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ptychi", "cdtools"])
@pytest.mark.parametrize("start", [MODEL_START, ProbeStart(source="estimated")], ids=["model", "estimated"])
def test_a_model_or_estimated_start_probe_is_refined_towards_the_truth(smoke_data, engine, start):
    """From a wrong start (model: 1 rad defocus and 10 % diameter error, probe error 0.49; estimated:
    0.79) at dose 1e5 the probe error min_c ||cP - P_true|| / ||P_true|| falls below 0.2 in 20 LSQML
    or 12 Adam epochs. Measured: LSQML 0.03 (model) and 0.13 (estimated), Adam 0.023 and 0.032; at
    40 epochs LSQML reaches 0.014 and 0.016."""
    inputs = load_inputs(_baseline(smoke_data))
    epochs = 20 if engine == "ptychi" else 12
    options = dataclasses.replace(PTYCHI if engine == "ptychi" else CDTOOLS, probe_start=start, chunk_epochs=epochs)
    run = (ptychi_engine.PtychiEngine().reconstruct(inputs, "LSQML", epochs, options, device="cpu")
           if engine == "ptychi" else cdtools_engine.CdtoolsEngine().reconstruct(inputs, "ADAM", epochs, options,
                                                                                  device="cpu"))
    assert run.initial_probe is not None and run.initial_probe.shape == inputs.probe.shape
    before, after = probe_error(run.initial_probe, inputs.probe), probe_error(run.probe, inputs.probe)
    assert before > 0.4
    assert after < 0.2, (before, after)
    assert run.probe_modes is None and run.initial_positions_x_px is None


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ptychi", "cdtools"])
def test_probe_modes_run_and_come_back_orthogonal_and_sorted(smoke_data, engine):
    """Two modes: the result holds both, orthogonal (1e-3 of the power: complex64), strongest first;
    ``probe`` is mode 0."""
    inputs = load_inputs(_dense(smoke_data))
    options = dataclasses.replace(PTYCHI if engine == "ptychi" else CDTOOLS, probe_modes=2)
    run = (ptychi_engine.PtychiEngine().reconstruct(inputs, "LSQML", 4, options, device="cpu") if engine == "ptychi"
           else cdtools_engine.CdtoolsEngine().reconstruct(inputs, "ADAM", 4, options, device="cpu"))
    modes = run.probe_modes.astype(np.complex128)
    assert modes.shape == (2, 32, 32) and run.probe_modes.dtype == np.complex64
    powers = np.sum(np.abs(modes) ** 2, axis=(1, 2))
    assert powers[0] > powers[1] > 0
    assert abs(np.vdot(modes[0], modes[1])) < 1e-3 * powers[0]
    np.testing.assert_array_equal(run.probe, run.probe_modes[0])
    assert run.initial_probe is None  # probeGuess started it


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ptychi", "cdtools"])
def test_position_correction_reduces_the_position_error(smoke_data, engine):
    """Random errors of 0.7 px per axis (RMS 0.99 px, mean offset removed), 20 epochs at dose 1e5:
    the refined positions' RMS error falls below 0.6 of the nominal ones'. Measured: 0.47 (LSQML),
    0.28 (Adam); at 40 epochs 0.33 and 0.12 (docs/engines.md)."""
    inputs = load_inputs(_baseline(smoke_data))
    rng = np.random.default_rng(0)
    nominal_x = inputs.xcoords + rng.normal(0.0, 0.7, inputs.xcoords.shape)
    nominal_y = inputs.ycoords + rng.normal(0.0, 0.7, inputs.ycoords.shape)
    given = dataclasses.replace(inputs, xcoords=nominal_x, ycoords=nominal_y, positions_source="nominal")
    options = dataclasses.replace(PTYCHI if engine == "ptychi" else CDTOOLS, position_correction=True, chunk_epochs=20)
    run = (ptychi_engine.PtychiEngine().reconstruct(given, "LSQML", 20, options, device="cpu") if engine == "ptychi"
           else cdtools_engine.CdtoolsEngine().reconstruct(given, "ADAM", 20, options, device="cpu"))
    before = _rms_error(nominal_x, nominal_y, inputs.xcoords, inputs.ycoords)
    after = _rms_error(run.positions_x_px, run.positions_y_px, inputs.xcoords, inputs.ycoords)
    assert before == pytest.approx(0.99, abs=0.01)
    assert after < 0.6 * before, (before, after)
    np.testing.assert_array_equal(run.initial_positions_x_px, nominal_x)
    np.testing.assert_array_equal(run.initial_positions_y_px, nominal_y)
    # Without correction the positions come back as given.
    options = dataclasses.replace(options, position_correction=None, chunk_epochs=1)
    fixed = (ptychi_engine.PtychiEngine().reconstruct(given, "LSQML", 1, options, device="cpu") if engine == "ptychi"
             else cdtools_engine.CdtoolsEngine().reconstruct(given, "ADAM", 1, options, device="cpu"))
    np.testing.assert_allclose(fixed.positions_x_px, nominal_x, rtol=0, atol=1e-5)
    assert fixed.initial_positions_x_px is None


# --- the whole pipeline on realistic data --------------------------------------------------------


@pytest.mark.slow
def test_realistic_smoke_study_runs_end_to_end(tmp_path):
    """gen-synthetic's realistic data (probe modes, position errors, a detector mask), planned with a
    model start, two modes and position correction for pty-chi and CDTools: both jobs ok, and
    reconstruction.npz / product.h5 carry the modes, the start probe and the given positions."""
    from ptydose.core.synthetic import generate_study

    raw = json.loads(SMOKE.read_text())
    design = _design(
        tmp_path, doses=[100000],
        probe={**raw["probe"], "modes": {"count": 2, "power_ratio": 0.1}},
        position_errors={"random_px": 0.5, "drift_px": [0.5, -0.5]},
        detector={"beamstop_radius_px": 2.0, "bad_pixels": 4, "saturation_photons": 3000},
        probe_knowledge={"start": "model", "defocus_error_rad": 1.0, "diameter_error": 0.1},
        reconstructors=[
            {"name": "lsqml", "algorithm": "LSQML", "num_epochs": 2, "options": {"probe_modes": 2,
                                                                                 "position_correction": True}},
            {"name": "adam", "engine": "cdtools", "algorithm": "ADAM", "num_epochs": 2,
             "options": {"probe_modes": 2, "position_correction": True}},
        ])
    phase_c, phase_d = tmp_path / "c", tmp_path / "d"
    generate_study(design, phase_c, phase_d, progress=False)
    plan = write_plan(plan_jobs(design, phase_c, phase_d, tmp_path / "art", views=["dense"], splits=["train"]))
    for job in plan.manifest["jobs"]:
        assert job["engine_options"]["probe_start"]["source"] == "model"
    result = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    manifest = read_json(plan.manifest_path, "reconstruction_manifest")
    assert {r["job_id"]: r["status"] for r in manifest["execution_results"]} == {
        "dose_100000/dense/train/lsqml": "ok", "dose_100000/dense/train/adam": "ok"}
    source = read_contract_npz(phase_d / "dose_100000" / "dense" / "dense_train.npz")
    nominal_x, _ = source.engine_positions()
    assert not np.array_equal(nominal_x, source["xcoords"])
    for name in ("lsqml", "adam"):
        folder = tmp_path / "art" / "dose_100000" / "dense" / "train" / name
        with np.load(folder / "reconstruction.npz", allow_pickle=False) as npz:
            assert {"probe_modes", "initial_probe", "initial_positions_x_px", "initial_positions_y_px"} <= set(npz.files)
            assert npz["probe_modes"].shape == (2, 32, 32)
            np.testing.assert_array_equal(npz["initial_positions_x_px"], nominal_x)
            np.testing.assert_array_equal(npz["probe"], npz["probe_modes"][0])
        with h5py.File(folder / "product.h5", "r") as h5:
            assert h5["probe"].shape == (2, 32, 32)


@pytest.mark.slow
def test_an_ideal_run_writes_the_same_members_as_before(smoke_data, tmp_path):
    """Without realistic conditions reconstruction.npz keeps exactly its former members and product.h5 one probe."""
    plan = write_plan(plan_jobs(SMOKE, smoke_data["phase_c_root"], smoke_data["phase_d_root"], tmp_path / "art",
                                doses=[1000], views=["dense"], splits=["train"], num_epochs=4))
    result = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "art" / "dose_1000" / "dense" / "train"
    with np.load(folder / "reconstruction.npz", allow_pickle=False) as npz:
        assert npz.files == ["object", "probe", "positions_x_px", "positions_y_px", "loss_epochs", "loss_values",
                             "_metadata", "checkpoint_epochs", "checkpoint_objects", "checkpoint_seconds"]
    with h5py.File(folder / "product.h5", "r") as h5:
        assert h5["probe"].shape == (32, 32)


def test_forward_model_counts_match_the_free_space_scale():
    """The scale rule's premise: a transmitting object's counts sum to N^2 sum |P|^2 (1e-9 relative)."""
    n = 16
    probe = defocused_pupil_probe(n, 0.25, 1.0) * math.sqrt(1234.0)
    obj = np.ones((40, 40), np.complex64)
    counts = ForwardModel(probe, obj).intensities(np.array([[20.0, 20.0]]))
    assert float(counts.sum()) == pytest.approx(n * n * float(np.sum(np.abs(probe) ** 2)), rel=1e-6)
