"""Engines: what they are handed (no ground truth), the pty-chi adapter's options, a real tiny LSQML run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from ptychi_checks import illuminated, phase_rmse

from ptydose.core.errors import ContractError
from ptydose.core.geometry import position_origin, window_starts
from ptydose.core.run.engines import ptychi as ptychi_engine
from ptydose.core.run.engines.base import EngineInputs, load_inputs
from ptydose.core.run.engines.control import RunControl, StopRule
from ptydose.core.run.engines.options import PtychiOptions
from ptydose.core.run.engines.registry import ENGINES
from ptydose.core.run.records import Instrument, JobSpec, WorkItem
from ptydose.core.run.worker import WorkerSession, device_label

OPTIONS = PtychiOptions(noise_model="gaussian", batch_size=32, optimize_probe=True, probe_update_start_epoch=1,
                        seed=123, chunk_epochs=4, wavelength_m=1.4e-10, object_pixel_size_m=1.2e-7)


def test_load_inputs_recovers_exact_counts(smoke_data):
    """Counts are round((diffraction * amplitude_scale)^2), exactly; the object contributes only its shape."""
    path = smoke_data["phase_c_root"] / "dose_1000" / "patched_train.npz"
    inputs = load_inputs(path)
    with np.load(path, allow_pickle=False) as npz:
        scale = json.loads(str(npz["_metadata"]))["amplitude_scale"]
        expected = np.round((npz["diffraction"].astype(np.float64) * scale) ** 2)
        assert inputs.object_shape == npz["objectGuess"].shape
    assert inputs.counts.dtype == np.float32
    np.testing.assert_array_equal(inputs.counts, expected)
    # What an engine gets, and nothing more: the behavioural check is test_ground_truth_never_reaches_the_engine.
    assert [f.name for f in dataclasses.fields(EngineInputs)] == [
        "counts", "probe", "xcoords", "ycoords", "scan_index", "object_shape", "metadata", "valid_pixels",
        "positions_source"]


def test_load_inputs_rejects_a_contract_violation(smoke_data, tmp_path):
    """A file that breaks the contract (negative amplitudes) fails before any compute, naming the key."""
    source = smoke_data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_test.npz"
    with np.load(source, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["diffraction"] = -arrays["diffraction"] - 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ContractError, match=r"bad.npz: diffraction: "):
        load_inputs(bad)


@pytest.mark.parametrize("algorithm", ENGINES["ptychi"].algorithms)
def test_build_options(algorithm):
    """Options carry the DC-centred flag, geometry, seed, batch size, device and (LSQML) the noise model."""
    options = ptychi_engine.build_options(algorithm, 7, dataclasses.replace(OPTIONS, noise_model="poisson"), "cpu")
    assert type(options).__name__ == f"{algorithm}Options"
    assert options.data_options.fft_shift is True
    assert options.data_options.wavelength_m == OPTIONS.wavelength_m
    assert options.object_options.pixel_size_m == OPTIONS.object_pixel_size_m
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
    inputs = load_inputs(path)
    with np.load(path, allow_pickle=False) as npz:
        truth = npz["objectGuess"]
    chunks = []
    result = ptychi_engine.PtychiEngine().reconstruct(
        inputs, "LSQML", 8, OPTIONS, device="cpu", progress=lambda done, total, loss, s: chunks.append((done, total)))
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


def _with_other_truth(source, target) -> np.ndarray:
    """A contract-valid copy of ``source`` with another objectGuess and Y recomputed from it; same counts."""
    with np.load(source, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    rng = np.random.default_rng(7)
    shape = arrays["objectGuess"].shape
    other = (rng.uniform(0.2, 1.0, shape) * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))).astype(np.complex64)
    n = arrays["probeGuess"].shape[0]
    starts = window_starts(np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1), shape, n)
    arrays["objectGuess"] = other
    arrays["Y"] = np.stack([other[sy:sy + n, sx:sx + n] for sy, sx in starts]).astype(np.complex64)
    np.savez(target, **arrays)
    return other


def _job(input_npz, output_dir, input_sha256) -> JobSpec:
    return JobSpec(id="dose_1000/sparse/test", dose=1000, view="sparse", split="test", input_npz=str(input_npz),
                   input_sha256=input_sha256, n_images=1, output_dir=output_dir, engine="ptychi", algorithm="LSQML",
                   num_epochs=2, options=OPTIONS, options_hash="0" * 64,
                   selection={"selection_strategy": "direct", "spacing_threshold": 0.0, "n_accepted": 1,
                              "n_rejected": 0, "acceptance_rate": 1.0})


@pytest.mark.slow
def test_ground_truth_never_reaches_the_engine(smoke_data, tmp_path):
    """The same job on two inputs that differ only in objectGuess and Y gives bit-identical reconstructions."""
    from ptydose.core.fileio import sha256_file

    source = smoke_data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_test.npz"
    twin = tmp_path / "twin.npz"
    other = _with_other_truth(source, twin)
    load_inputs(twin)  # contract-valid: Y matches its objectGuess windows
    with np.load(source, allow_pickle=False) as a, np.load(twin, allow_pickle=False) as b:
        assert np.abs(a["objectGuess"] - other).mean() > 0.3  # a very different truth ...
        np.testing.assert_array_equal(a["diffraction"], b["diffraction"])  # ... behind the same measurement
    instrument = Instrument(photon_energy_eV=8800.0, detector_distance_m=2.0, detector_pixel_size_m=75e-6,
                            exposure_time_s=0.1, wavelength_m=OPTIONS.wavelength_m,
                            object_pixel_size_m=OPTIONS.object_pixel_size_m)
    session = WorkerSession("cpu", 0)  # the worker path both backends use, in this process
    outputs = []
    for name, path in (("original", source), ("twin", twin)):
        item = WorkItem(_job(path, tmp_path / name, sha256_file(path)), instrument, "isolation")
        outcome = session.run(item)
        assert outcome.status == "ok", (outcome, (tmp_path / name / "ptychi.log").read_text())
        with np.load(tmp_path / name / "reconstruction.npz", allow_pickle=False) as npz:
            outputs.append({k: npz[k] for k in ("object", "probe", "positions_x_px", "positions_y_px", "loss_values",
                                                "checkpoint_epochs", "checkpoint_objects")})
    for key in outputs[0]:
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key], err_msg=key)  # bit for bit


@pytest.mark.slow
def test_stopping_rule_ends_a_real_lsqml_run_at_min_epochs_with_bounded_checkpoints(smoke_data):
    """A rule no run can satisfy stops pty-chi at the first chunk end min_epochs allows, not before.

    12 epochs planned in chunks of 2; threshold 1.0 (the best loss would have to fall by 100 %
    over 2 epochs) with min_epochs 6: the run ends after epoch 6 with 6 losses. Two checkpoints
    at most: the chosen epoch 2 and the run's last, which is the returned object.
    """
    path = smoke_data["phase_c_root"] / "dose_100000" / "patched_train.npz"
    inputs = load_inputs(path)
    rule = StopRule(window_epochs=2, min_relative_improvement=1.0, min_epochs=6)
    reports = []
    result = ptychi_engine.PtychiEngine().reconstruct(
        inputs, "LSQML", 12, dataclasses.replace(OPTIONS, chunk_epochs=2), device="cpu",
        progress=lambda done, total, loss, s: reports.append(done), control=RunControl(max_checkpoints=2, stop=rule))
    assert reports == [2, 4, 6]
    assert len(result.loss_values) == 6 and result.stop_reason.startswith("loss_plateau: the best loss improved by")
    assert sorted(result.checkpoints) == [2, 6] == sorted(result.checkpoint_seconds)
    np.testing.assert_array_equal(result.checkpoints[6], result.object)
    assert 0 < result.checkpoint_seconds[2] < result.checkpoint_seconds[6] == result.reconstruction_s
    assert all(obj.dtype == np.complex64 and obj.shape == inputs.object_shape for obj in result.checkpoints.values())


@pytest.mark.parametrize("shape", [(96, 97), (95, 64), (40, 41)])
def test_position_origin_matches_ptychi_support_convention(shape):
    """Our position origin equals the pos_origin_coords pty-chi itself builds for an object of that shape."""
    from ptychi.api.task import PtychographyTask

    options = ptychi_engine.build_options("LSQML", 1, OPTIONS, "cpu")
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
    inputs = load_inputs(path)
    engine = ptychi_engine.PtychiEngine()
    cpu = engine.reconstruct(inputs, "LSQML", 4, OPTIONS, device="cpu")
    gpu = engine.reconstruct(inputs, "LSQML", 4, OPTIONS, device="cuda")
    assert device_label("cuda").startswith("cuda:")
    # Same seed and batches; float32 FFTs and reductions differ in order between devices, which
    # moves the loss by ~1e-6 relative. 1e-3 catches a different frame, batch order or model.
    np.testing.assert_allclose(gpu.loss_values, cpu.loss_values, rtol=1e-3)
    mask = illuminated(inputs.probe, inputs.xcoords, inputs.ycoords, inputs.object_shape)
    assert phase_rmse(gpu.object, cpu.object, mask) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
def test_each_worker_slot_owns_its_gpu():
    """A worker session in slot i makes GPU i mod count its current device, and says so in its label."""
    import torch

    count = torch.cuda.device_count()
    for slot in range(count + 1):
        label = WorkerSession("cuda", slot).prepare()
        assert torch.cuda.current_device() == slot % count
        assert label.startswith(f"cuda:{slot % count} (")
