"""Worker-side pieces shared by both backends: fault injection, GPU slots, typed records and events."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ptydose.core.errors import EngineError, StudyError
from ptydose.core.run.backend import Finished, Lost, Progress, Started, event_from_message, event_message
from ptydose.core.run.dask_backend import slot_of_worker
from ptydose.core.run.engines.base import EngineResult
from ptydose.core.run.engines.control import MAX_CHECKPOINTS, RunControl, StopRule
from ptydose.core.run.engines.options import PtychiOptions, options_mapping, options_record
from ptydose.core.run.engines.registry import ENGINES
from ptydose.core.run.outputs import write_reconstruction_npz
from ptydose.core.run.records import Outcome
from ptydose.core.run.worker import FAULT_ENV, control_argument, fault_for, gpu_for_slot

OPTIONS = {"noise_model": "gaussian", "batch_size": 32, "optimize_probe": True, "probe_update_start_epoch": 1,
           "seed": 123, "chunk_epochs": 4, "wavelength_m": 1.4e-10, "object_pixel_size_m": 1.2e-7}


def test_fault_injection_parsing(monkeypatch):
    """The fault-injection variable maps job ids to modes and rejects unknown modes."""
    monkeypatch.setenv(FAULT_ENV, "dose_1/a/train=raise, dose_1/b/test=hang")
    assert fault_for("dose_1/a/train") == "raise"
    assert fault_for("dose_1/b/test") == "hang"
    assert fault_for("dose_1/c/test") is None
    monkeypatch.setenv(FAULT_ENV, "dose_1/a/train=explode")
    with pytest.raises(StudyError, match="unknown mode 'explode'"):
        fault_for("dose_1/a/train")


def test_worker_slots_map_onto_gpus():
    """Worker i owns GPU i mod count; Dask workers take i from their name (LocalCluster ints, jobqueue suffixes)."""
    assert [gpu_for_slot(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [gpu_for_slot(i, 1) for i in range(3)] == [0, 0, 0]
    with pytest.raises(EngineError, match="no CUDA device"):
        gpu_for_slot(0, 0)
    assert [slot_of_worker(name) for name in (0, 3, "SLURMCluster-1-7", "gpu-node-2", "tcp://10.0.0.5:4242",
                                              "worker")] == [0, 3, 7, 2, 4242, 0]


def test_options_record_round_trips_the_manifest_format():
    """engine_options -> frozen record -> the same JSON object, key order included; bad keys are errors."""
    record = options_record(PtychiOptions, {**OPTIONS, "wavelength_m": 1})  # JSON may give an int for a float
    assert isinstance(record.wavelength_m, float) and record.wavelength_m == 1.0
    record = options_record(PtychiOptions, OPTIONS)
    assert json.dumps(options_mapping(record)) == json.dumps(OPTIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.seed = 1
    with pytest.raises(EngineError, match=r"^engine_options/seed: missing$"):
        options_record(PtychiOptions, {k: v for k, v in OPTIONS.items() if k != "seed"})
    with pytest.raises(EngineError, match=r"^engine_options/step_size: not an option of this engine"):
        options_record(PtychiOptions, {**OPTIONS, "step_size": 0.5})
    with pytest.raises(EngineError, match=r"^engine_options/noise_model: 'laplace' is not one of gaussian, poisson$"):
        options_record(PtychiOptions, {**OPTIONS, "noise_model": "laplace"})


def test_events_survive_the_plain_json_form():
    """Every event kind comes back equal from the JSON form Dask's event log carries."""
    events = [Started("dose_1000/dense/train", "worker 0"),
              Progress("dose_1000/dense/train", 4, 8, 0.25, 1.5),
              Finished("dose_1000/dense/train", Outcome("ok", 0, None, 2.0, "cpu", 1.5, 8, 0.125)),
              Lost("dose_1000/dense/train", "failed", 1, "RuntimeError: x", note="the Dask task raised: x")]
    for event in events:
        assert event_from_message(json.loads(json.dumps(event_message(event)))) == event


def test_reconstruction_npz_holds_checkpoints_when_the_engine_keeps_them(tmp_path):
    """Checkpoints (epoch -> object) are stored sorted by epoch; without any, the file has no checkpoint keys."""
    obj = np.ones((6, 7), np.complex64)
    base = dict(object=obj, probe=np.ones((3, 3), np.complex64), positions_x_px=np.zeros(2),
                positions_y_px=np.zeros(2), loss_epochs=np.arange(4), loss_values=np.linspace(1, 0.5, 4),
                reconstruction_s=0.1)
    write_reconstruction_npz(tmp_path / "plain.npz", EngineResult(**base), {"job_id": "x"})
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as npz:
        assert "checkpoint_epochs" not in npz.files and json.loads(str(npz["_metadata"])) == {"job_id": "x"}
    result = EngineResult(**base, checkpoints={3: 3 * obj, 1: obj})
    write_reconstruction_npz(tmp_path / "checkpoints.npz", result, {"job_id": "x"})
    with np.load(tmp_path / "checkpoints.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["checkpoint_epochs"], [1, 3])
        np.testing.assert_array_equal(npz["checkpoint_objects"], np.stack([obj, 3 * obj]))


def test_reconstruction_npz_keeps_checkpoint_seconds_and_refuses_too_many_checkpoints(tmp_path):
    """checkpoint_seconds follow checkpoint_epochs (NaN where none was recorded); more than the bound is refused."""
    obj = np.ones((4, 5), np.complex64)
    base = dict(object=obj, probe=np.ones((3, 3), np.complex64), positions_x_px=np.zeros(2),
                positions_y_px=np.zeros(2), loss_epochs=np.arange(4), loss_values=np.linspace(1, 0.5, 4),
                reconstruction_s=0.1)
    result = EngineResult(**base, checkpoints={4: obj, 2: obj}, checkpoint_seconds={4: 0.25})
    write_reconstruction_npz(tmp_path / "r.npz", result, {})
    with np.load(tmp_path / "r.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["checkpoint_seconds"], [np.nan, 0.25])
        assert npz["checkpoint_seconds"].dtype == np.float64
    many = EngineResult(**base, checkpoints={e: obj for e in range(1, MAX_CHECKPOINTS + 2)})
    with pytest.raises(EngineError, match=f"kept {MAX_CHECKPOINTS + 1} checkpoints, more than {MAX_CHECKPOINTS}"):
        write_reconstruction_npz(tmp_path / "many.npz", many, {})


class _Job:
    engine = "command"

    def __init__(self, stopping):
        self.stopping = stopping


def test_worker_hands_the_stopping_rule_only_to_an_engine_that_can_apply_it():
    """Engines of the chunk loop get checkpoints and the job's rule; others run as before, or refuse a rule."""
    rule = StopRule(window_epochs=3)
    chunked, whole = ENGINES["ptychi"], ENGINES["command"]
    assert control_argument(chunked, _Job(rule)) == {"control": RunControl(stop=rule)}
    assert control_argument(chunked, _Job(None)) == {"control": RunControl()}
    assert control_argument(whole, _Job(None)) == {}
    with pytest.raises(EngineError, match=r"^engine command: cannot apply a stopping rule \(loss_plateau\)"):
        control_argument(whole, _Job(rule))


def test_the_registry_says_which_engines_take_a_run_control():
    """runs_chunk_loop is true exactly for the engines whose reconstruct() takes ``control``."""
    import inspect

    for spec in ENGINES.values():
        takes = "control" in inspect.signature(spec.importer().reconstruct).parameters
        assert takes == spec.runs_chunk_loop, spec.name
