"""The CDTools engine: its options, its forward model against ours on the true object, a real tiny Adam run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ptydose.core.contract import read_contract_npz
from ptydose.core.design import load_design
from ptydose.core.errors import EngineError
from ptydose.core.geometry import position_origin
from ptydose.core.metrics import MetricSettings, compare
from ptydose.core.physics import ForwardModel
from ptydose.core.run.engines import cdtools as cdtools_engine
from ptydose.core.run.engines.base import load_inputs
from ptydose.core.run.engines.options import CdtoolsOptions, options_mapping, options_record
from ptydose.core.run.engines.registry import ENGINES

OPTIONS = CdtoolsOptions(
    noise_model="gaussian", learning_rate=0.05, learning_rate_final=0.005, batch_size=16, optimize_probe=True,
    probe_update_start_epoch=1, seed=123, chunk_epochs=4, wavelength_m=1.4e-10, object_pixel_size_m=1.2e-7)
SETTINGS = MetricSettings(ms_ssim_sigma=1.0, illumination_threshold=0.1)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("noise_model", "laplace", r"^engine_options/noise_model: 'laplace' is not one of gaussian, poisson$"),
    ("batch_size", 0, r"^engine_options/batch_size: must be >= 1, got 0$"),
    ("chunk_epochs", 0, r"^engine_options/chunk_epochs: must be >= 1, got 0$"),
    ("probe_update_start_epoch", -1, r"^engine_options/probe_update_start_epoch: must be >= 0, got -1$"),
    ("learning_rate", 0.0, r"^engine_options/learning_rate: must be a finite number > 0, got 0.0$"),
    ("learning_rate", math.nan, r"^engine_options/learning_rate: must be a finite number > 0, got nan$"),
    ("learning_rate_final", math.inf, r"^engine_options/learning_rate_final: must be a finite number > 0, got inf$"),
    ("object_pixel_size_m", -1e-7, r"^engine_options/object_pixel_size_m: must be a finite number > 0"),
])
def test_options_reject_bad_values(field, value, message):
    """Each bad option is a one-line EngineError naming the option."""
    with pytest.raises(EngineError, match=message):
        dataclasses.replace(OPTIONS, **{field: value})


def test_design_options_build_a_record(smoke_design_path):
    """A design's CDTools options: shared settings from the design, Adam's own from the defaults; JSON round trip."""
    design = load_design(smoke_design_path)
    spec = ENGINES["cdtools"]
    shared = {k: design.reconstruction[k] for k in ("noise_model", "chunk_epochs")}
    mapping = spec.design_options(design, "ADAM", shared)
    record = options_record(CdtoolsOptions, mapping)
    assert record.seed == design.seeds["grouping"]
    assert record.chunk_epochs == design.reconstruction["chunk_epochs"]
    assert record.noise_model == design.reconstruction["noise_model"]
    assert (record.wavelength_m, record.object_pixel_size_m) == (design.wavelength_m, design.object_pixel_size_m)
    # Adam's own settings come from its recipe, not from the design's (LSQML) batch size.
    recipe = spec.recipe("ADAM")
    assert record.batch_size == recipe["batch_size"] != design.reconstruction["batch_size"]
    assert record.learning_rate == recipe["learning_rate"]
    assert record.learning_rate_final == recipe["learning_rate_final"]
    assert options_mapping(record) == mapping
    # Every required field in record order; the optional realistic-condition ones are left out when unset.
    assert list(mapping) == [f.name for f in dataclasses.fields(CdtoolsOptions) if f.default is dataclasses.MISSING]
    with pytest.raises(EngineError, match=r"^reconstruction/object_alpha: not a setting of the CDTools engine"):
        spec.design_options(design, "ADAM", {"object_alpha": 1.0})


def test_learning_rate_decays_geometrically_from_first_to_last_epoch():
    """learning_rate in epoch 0, learning_rate_final in the last, a constant ratio per epoch between."""
    rates = np.array([cdtools_engine.learning_rate(OPTIONS, e, 5) for e in range(5)])
    np.testing.assert_allclose(rates[[0, -1]], [0.05, 0.005], rtol=1e-12)
    np.testing.assert_allclose(rates[1:] / rates[:-1], 0.1 ** 0.25, rtol=1e-12)
    constant = dataclasses.replace(OPTIONS, learning_rate_final=OPTIONS.learning_rate)
    assert {cdtools_engine.learning_rate(constant, e, 7) for e in range(7)} == {0.05}
    assert cdtools_engine.learning_rate(OPTIONS, 0, 1) == 0.05  # a one-epoch run takes the first rate


def _windows_agree(xcoords, ycoords, object_shape) -> np.ndarray:
    """Positions where CDTools' floor window is pty-chi's rounded one (fraction of p = c - O below 1/2)."""
    p = np.stack([ycoords, xcoords], axis=1) - position_origin(object_shape)
    return np.all(p - np.floor(p) < 0.5, axis=1)


def _cdtools_intensities(inputs, obj) -> np.ndarray:
    import torch

    model, dataset = cdtools_engine.build_model(inputs, OPTIONS, obj)
    (index, translations), _ = dataset[:]
    with torch.no_grad():
        return model.forward(index, translations).numpy()


@pytest.mark.parametrize("relative", ["phase_c/dose_100000/patched_train.npz",
                                      "phase_d/dose_1000/dense/dense_test.npz"])
def test_forward_model_reproduces_our_intensities(smoke_data, relative):
    """CDTools' model on the TRUE object and probe gives pty-chi's expected intensities |fft2(P O)|^2.

    Tolerances: where both window rules pick the same window the two models differ only by float32
    rounding (measured ~1e-6 of the pattern's peak; 1e-5 allowed). Where CDTools' floor picks the
    window one pixel before pty-chi's round, its probe frame wraps by that pixel, moving ~1e-3 of
    the intensity; 5e-3 overall. A one-pixel position error moves ~30 % (checked below).
    """
    root = smoke_data["phase_c_root"].parent
    path = root / relative
    data = read_contract_npz(path)
    truth, probe = data["objectGuess"], data["probeGuess"]
    inputs = load_inputs(path)
    coords = np.stack([inputs.ycoords, inputs.xcoords], axis=1)
    expected = ForwardModel(probe, truth).intensities(coords)
    simulated = _cdtools_intensities(inputs, truth)
    assert simulated.shape == expected.shape
    agree = _windows_agree(inputs.xcoords, inputs.ycoords, inputs.object_shape)
    assert agree.any() and (~agree).any()  # both cases are exercised
    peak = expected.max(axis=(1, 2))
    same_window_error = (np.abs(simulated - expected).max(axis=(1, 2)) / peak)[agree]
    assert same_window_error.max() < 1e-5, same_window_error.max()
    overall = np.abs(simulated - expected).sum() / expected.sum()
    assert overall < 5e-3, overall
    # The photon scale is the data's: total counts agree to the same precision.
    np.testing.assert_allclose(simulated.sum(axis=(1, 2)), expected.sum(axis=(1, 2)), rtol=5e-3)
    # The comparison can fail: the same model one pixel off in x misses by far more than the tolerance.
    shifted = dataclasses.replace(inputs, xcoords=inputs.xcoords + 1.0)
    off = np.abs(_cdtools_intensities(shifted, truth) - expected).sum() / expected.sum()
    assert off > 0.1, off


def test_positions_outside_the_object_are_an_error(smoke_data):
    """A window that leaves the object (beyond the one-pixel pad) fails before any compute, naming the position."""
    inputs = load_inputs(smoke_data["phase_c_root"] / "dose_1000" / "patched_train.npz")
    xcoords = inputs.xcoords.copy()
    xcoords[3] = 2.0
    bad = dataclasses.replace(inputs, xcoords=xcoords)
    with pytest.raises(EngineError, match=r"^xcoords\[3\] = 2.0: the 32 x 32 window leaves the object"):
        cdtools_engine.build_model(bad, OPTIONS, np.ones(inputs.object_shape, np.complex64))


@pytest.mark.parametrize(("noise_model", "loss_name"), [("gaussian", "amplitude_mse"), ("poisson", "poisson_nll")])
def test_noise_model_picks_cdtools_loss(smoke_data, noise_model, loss_name):
    """gaussian is CDTools' amplitude MSE, poisson its Poisson NLL; only object and probe are free."""
    inputs = load_inputs(smoke_data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_train.npz")
    model, _ = cdtools_engine.build_model(inputs, dataclasses.replace(OPTIONS, noise_model=noise_model),
                                          np.ones(inputs.object_shape, np.complex64))
    assert getattr(model.loss, "func", model.loss).__name__ == loss_name
    free = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert free == ["obj", "probe"]


def test_only_adam_is_offered(smoke_data):
    inputs = load_inputs(smoke_data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_train.npz")
    with pytest.raises(EngineError, match=r"^algorithm LSQML: the CDTools engine offers ADAM$"):
        cdtools_engine.CdtoolsEngine().reconstruct(inputs, "LSQML", 1, OPTIONS, device="cpu")


@pytest.mark.slow
def test_adam_gets_closer_to_the_truth_than_its_flat_start(smoke_data, tmp_path, monkeypatch):
    """8 Adam epochs on the smoke baseline (dose 1e5) cut the phase error well below the flat start's,
    writing no file and making no figure."""
    import matplotlib.pyplot as plt

    path = smoke_data["phase_c_root"] / "dose_100000" / "patched_train.npz"
    inputs = load_inputs(path)
    truth = read_contract_npz(path)["objectGuess"]
    monkeypatch.chdir(tmp_path)
    figures_before = plt.get_fignums()
    chunks = []
    engine = cdtools_engine.CdtoolsEngine()
    engine.load()
    result = engine.reconstruct(inputs, "ADAM", 8, OPTIONS, device="cpu",
                                progress=lambda done, total, loss, s: chunks.append((done, total)))
    assert list(tmp_path.iterdir()) == []
    assert plt.get_fignums() == figures_before
    assert chunks == [(4, 8), (8, 8)]  # one report per chunk of 4 epochs
    assert result.object.shape == truth.shape and result.object.dtype == np.complex64
    assert result.probe.shape == inputs.probe.shape and result.probe.dtype == np.complex64
    np.testing.assert_array_equal(result.loss_epochs, np.arange(8))
    assert result.loss_values[-1] < 0.5 * result.loss_values[0]
    # Positions are not refined: back in the xcoords/ycoords frame (float32 metres: ~1e-5 px).
    np.testing.assert_allclose(result.positions_x_px, inputs.xcoords, atol=1e-3)
    np.testing.assert_allclose(result.positions_y_px, inputs.ycoords, atol=1e-3)
    flat = compare(np.ones_like(truth), truth, inputs.probe, inputs.xcoords, inputs.ycoords, SETTINGS).metrics
    scored = compare(result.object, truth, inputs.probe, inputs.xcoords, inputs.ycoords, SETTINGS).metrics
    # Tolerance as for LSQML (test_engines.py): the flat start's error is the object's own phase
    # spread (~0.48 rad here); 8 Adam epochs reach ~0.12 rad. Demanding < half the flat error fails
    # for a wrong frame, wrong positions or an object that did not move, with room for platforms.
    assert scored["phase"]["rmse"] < 0.5 * flat["phase"]["rmse"], (scored["phase"]["rmse"], flat["phase"]["rmse"])
    # A registration shift of more than a pixel would mean the object is not in the objectGuess frame.
    assert np.hypot(*scored["registration_shift_px"]) < 1.0, scored["registration_shift_px"]
    assert result.reconstruction_s > 0


@pytest.mark.slow
def test_chunks_seed_and_probe_schedule(smoke_data):
    """The result does not depend on the chunking, does on the seed and the step decay; the probe stays put
    until its start epoch."""
    inputs = load_inputs(smoke_data["phase_d_root"] / "dose_100000" / "dense" / "dense_train.npz")
    engine = cdtools_engine.CdtoolsEngine()

    def run(**changes):
        return engine.reconstruct(inputs, "ADAM", 3, dataclasses.replace(OPTIONS, **changes), device="cpu")

    base = run(chunk_epochs=1)
    np.testing.assert_array_equal(run(chunk_epochs=3).object, base.object)  # bit for bit
    assert not np.array_equal(run(chunk_epochs=1, seed=124).object, base.object)
    assert not np.array_equal(run(chunk_epochs=1, learning_rate_final=OPTIONS.learning_rate).object, base.object)
    assert not np.allclose(base.probe, inputs.probe, rtol=1e-3)  # refined from epoch 1
    # The probe is rescaled into CDTools' units and back: float32 rounding only.
    for frozen in (run(probe_update_start_epoch=3), run(optimize_probe=False)):
        np.testing.assert_allclose(frozen.probe, inputs.probe, rtol=1e-6, atol=1e-6 * np.abs(inputs.probe).max())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
def test_adam_on_cuda_matches_the_cpu_run(smoke_data):
    """The same 4-epoch Adam job on CUDA and on the CPU: same loss curve and object, within float32 noise."""
    inputs = load_inputs(smoke_data["phase_c_root"] / "dose_100000" / "patched_train.npz")
    engine = cdtools_engine.CdtoolsEngine()
    cpu = engine.reconstruct(inputs, "ADAM", 4, OPTIONS, device="cpu")
    gpu = engine.reconstruct(inputs, "ADAM", 4, OPTIONS, device="cuda")
    # Same seed, same batches; float32 FFTs and sums differ in order between devices (~1e-6
    # relative per step, amplified by Adam's normalised steps). 1e-2 catches a different model or order.
    np.testing.assert_allclose(gpu.loss_values, cpu.loss_values, rtol=1e-2)
    mask = compare(cpu.object, gpu.object, inputs.probe, inputs.xcoords, inputs.ycoords, SETTINGS).metrics
    assert mask["phase"]["rmse"] < 2e-2
