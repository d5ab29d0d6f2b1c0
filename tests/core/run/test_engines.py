"""The pty-chi adapter: counts, options, a real tiny LSQML run that gets closer to the truth."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from ptychi_checks import illuminated, phase_rmse

from ptydose.core import engine
from ptydose.core.errors import ContractError
from ptydose.core.geometry import position_origin

OPTIONS = {"noise_model": "gaussian", "batch_size": 32, "optimize_probe": True, "probe_update_start_epoch": 1,
           "seed": 123, "chunk_epochs": 4, "wavelength_m": 1.4e-10, "object_pixel_size_m": 1.2e-7}


def test_load_inputs_recovers_exact_counts(smoke_data):
    """Counts are round((diffraction * amplitude_scale)^2), exactly; the object contributes only its shape."""
    path = smoke_data["phase_c_root"] / "dose_1000" / "patched_train.npz"
    inputs = engine.load_inputs(path)
    with np.load(path, allow_pickle=False) as npz:
        scale = json.loads(str(npz["_metadata"]))["amplitude_scale"]
        expected = np.round((npz["diffraction"].astype(np.float64) * scale) ** 2)
        assert inputs.object_shape == npz["objectGuess"].shape
    assert inputs.counts.dtype == np.float32
    np.testing.assert_array_equal(inputs.counts, expected)
    # The ground-truth object never reaches the engine: the inputs carry no object values at all.
    assert "object" not in {f.name for f in dataclasses.fields(engine.ReconstructionInputs)}


def test_load_inputs_rejects_a_contract_violation(smoke_data, tmp_path):
    """A file that breaks the contract (negative amplitudes) fails before any compute, naming the key."""
    source = smoke_data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_test.npz"
    with np.load(source, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["diffraction"] = -arrays["diffraction"] - 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ContractError, match=r"bad.npz: diffraction: "):
        engine.load_inputs(bad)


@pytest.mark.parametrize("algorithm", sorted(engine.OPTIONS_CLASS))
def test_build_options(algorithm):
    """Options carry the DC-centred flag, geometry, seed, batch size, device and (LSQML) the noise model."""
    options = engine.build_options(algorithm, 7, {**OPTIONS, "noise_model": "poisson"}, "cpu")
    assert type(options).__name__ == engine.OPTIONS_CLASS[algorithm]
    assert options.data_options.fft_shift is True
    assert options.data_options.wavelength_m == OPTIONS["wavelength_m"]
    assert options.object_options.pixel_size_m == OPTIONS["object_pixel_size_m"]
    assert options.probe_options.optimization_plan.start == 1
    rec = options.reconstructor_options
    assert (rec.num_epochs, rec.batch_size, rec.random_seed) == (7, 32, 123)
    assert str(rec.default_device) == "cpu"
    if algorithm == "LSQML":
        assert str(rec.noise_model) == "poisson"


@pytest.mark.slow
def test_lsqml_gets_closer_to_the_truth_than_its_flat_start(smoke_data):
    """8 LSQML epochs on the smoke baseline (dose 1e5) cut the phase error well below the flat start's."""
    path = smoke_data["phase_c_root"] / "dose_100000" / "patched_train.npz"
    inputs = engine.load_inputs(path)
    with np.load(path, allow_pickle=False) as npz:
        truth = npz["objectGuess"]
    chunks = []
    result = engine.reconstruct(inputs, "LSQML", 8, OPTIONS, device="cpu",
                                progress=lambda done, total, loss, s: chunks.append((done, total)))
    assert chunks == [(4, 8), (8, 8)]  # one report per chunk of 4 epochs
    assert result.object.shape == truth.shape and result.object.dtype == np.complex64
    assert result.probe.shape == inputs.probe.shape
    np.testing.assert_array_equal(result.loss_epochs, np.arange(8))
    assert result.loss_values[-1] < result.loss_values[0]
    # Positions are not refined, so they come back in the xcoords/ycoords frame unchanged.
    np.testing.assert_allclose(result.positions_x_px, inputs.xcoords, atol=1e-4)
    np.testing.assert_allclose(result.positions_y_px, inputs.ycoords, atol=1e-4)
    mask = illuminated(inputs.probe, inputs.xcoords, inputs.ycoords, inputs.object_shape)
    flat_error = phase_rmse(np.ones_like(truth), truth, mask)
    error = phase_rmse(result.object, truth, mask)
    # Tolerance: the flat start's error is the object's own phase spread (~0.5 rad here); 8 epochs
    # at 1e5 photons reach ~0.15 rad. Demanding < half the flat error fails for a wrong frame,
    # wrong positions or an object that did not move, yet leaves room for seeds and platforms.
    assert error < 0.5 * flat_error, (error, flat_error)
    assert result.reconstruction_s > 0


@pytest.mark.parametrize("shape", [(96, 97), (95, 64), (40, 41)])
def test_position_origin_matches_ptychi_support_convention(shape):
    """Our position origin equals the pos_origin_coords pty-chi itself builds for an object of that shape."""
    from ptychi.api.task import PtychographyTask

    options = engine.build_options("LSQML", 1, OPTIONS, "cpu")
    n = 8
    task = PtychographyTask(options, diffraction_data=np.ones((1, n, n), np.float32),
                            object_data=np.ones((1, *shape), np.complex64),
                            probe_data=np.ones((1, 1, n, n), np.complex64),
                            probe_position_x_px=np.zeros(1), probe_position_y_px=np.zeros(1))
    np.testing.assert_array_equal(task.object.pos_origin_coords.cpu().numpy(), position_origin(shape))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
def test_lsqml_on_cuda_matches_the_cpu_run(smoke_data):
    """The same 4-epoch LSQML job on CUDA and on the CPU: same loss curve and object, within float32 noise."""
    path = smoke_data["phase_c_root"] / "dose_100000" / "patched_train.npz"
    inputs = engine.load_inputs(path)
    cpu = engine.reconstruct(inputs, "LSQML", 4, OPTIONS, device="cpu")
    gpu = engine.reconstruct(inputs, "LSQML", 4, OPTIONS, device="cuda")
    assert gpu.device.startswith("cuda:")
    # Same seed and batches; float32 FFTs and reductions differ in order between devices, which
    # moves the loss by ~1e-6 relative. 1e-3 catches a different frame, batch order or model.
    np.testing.assert_allclose(gpu.loss_values, cpu.loss_values, rtol=1e-3)
    mask = illuminated(inputs.probe, inputs.xcoords, inputs.ycoords, inputs.object_shape)
    assert phase_rmse(gpu.object, cpu.object, mask) < 1e-2
