"""The resume key: what makes a job's result.json count as done (pure checks, no reconstruction)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from ptydose import __version__
from ptydose.core.run.engines.options import PtychiOptions
from ptydose.core.run.records import JobSpec
from ptydose.core.run.runner import resume_mismatch

OPTIONS = PtychiOptions(noise_model="gaussian", batch_size=8, optimize_probe=True, probe_update_start_epoch=1,
                        seed=1, chunk_epochs=1, wavelength_m=1e-10, object_pixel_size_m=1e-7)
JOB = JobSpec(id="dose_1000/sparse/test", dose=1000, view="sparse", split="test", input_npz="/d/x.npz",
              input_sha256="a" * 64, n_images=3, output_dir=Path("/art/dose_1000/sparse/test"), engine="ptychi",
              algorithm="LSQML", num_epochs=2, options=OPTIONS, options_hash="b" * 64, selection={})


def _result(**changes) -> dict:
    result = {"job_id": JOB.id, "status": "ok", "input_sha256": JOB.input_sha256, "options_hash": JOB.options_hash,
              "engine": "ptychi", "engine_version": version("ptychi"),
              "versions": {"python": "3", "numpy": "2", "torch": None, "ptychi": version("ptychi"),
                           "tools": __version__}}
    for key, value in changes.items():
        if key.startswith("versions_"):
            result["versions"][key.removeprefix("versions_")] = value
        elif value is None and key in ("engine", "engine_version"):
            del result[key]
        else:
            result[key] = value
    return result


def test_a_matching_result_is_done():
    """This job, ok, same input, options, engine, tool and engine versions: done."""
    assert resume_mismatch(JOB, _result()) is None
    # Results written before engines were named (no "engine") or before engine_version (versions/ptychi) still resume.
    assert resume_mismatch(JOB, _result(engine=None, engine_version=None)) is None


@pytest.mark.parametrize("changes, why", [
    ({"job_id": "dose_1000/sparse/train"}, "result.json is job dose_1000/sparse/train's"),
    ({"status": "failed"}, "last run ended failed"),
    ({"input_sha256": "c" * 64}, "another input"),
    ({"options_hash": "c" * 64}, "other options"),
    ({"versions_tools": "0.0.1"}, f"made by tools 0.0.1, this is {__version__}"),
    ({"engine_version": "1.0.0"}, f"made with ptychi 1.0.0, installed is {version('ptychi')}"),
    ({"engine_version": None, "versions_ptychi": "1.0.0"}, f"made with ptychi 1.0.0, installed is {version('ptychi')}"),
])
def test_each_part_of_the_key_makes_a_result_not_done(changes, why):
    """Another job's id, a failure, another input or options, another tool or engine version: rerun (not an error)."""
    assert resume_mismatch(JOB, _result(**changes)) == why
