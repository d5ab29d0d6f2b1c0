"""Family 3: finite, bounded numbers — NaN/Infinity and absurd sizes are one-line errors, never written."""

from __future__ import annotations

import json
import math

import pytest

from conftest import assert_one_line_error, copy_sweep, run_tool, snapshot
from ptydose.core.errors import ManifestError
from ptydose.core.manifests import parse_json, write_json


def _design_with(study_design_path, tmp_path, mutate, text_patch=None):
    raw = json.loads(study_design_path.read_text())
    mutate(raw)
    text = json.dumps(raw)
    if text_patch:
        text = text_patch(text)
    path = tmp_path / "design.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_design_with_a_non_finite_literal_is_refused(study_design_path, tmp_path, literal):
    """`"step_px": NaN` is not JSON: gen-synthetic exits 1 naming the file, writes nothing."""
    design = _design_with(study_design_path, tmp_path, lambda raw: raw["scan"].update(step_px=123.5),
                          lambda text: text.replace("123.5", literal))
    result = run_tool("gen-synthetic", "--design", design, "--phase-c-root", tmp_path / "c", "--phase-d-root",
                      tmp_path / "d")
    assert_one_line_error(result, str(design), f"{literal} is not a JSON number")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("field, value, message", [
    (("doses",), [1e-10], "doses/0: 1e-10 is less than the minimum of 1"),
    (("doses",), [1e300], "doses/0: 1e+300 is greater than the maximum"),
    (("object", "shape"), [120000, 120000], "object/shape/0: 120000 is greater than the maximum"),
    (("scan", "step_px"), 1e-6, "scan/step_px: 1e-06 px over a"),
    (("reconstruction", "num_epochs"), 10**30, "reconstruction/num_epochs"),
    (("seeds", "simulation"), 2**70, "seeds/simulation"),
])
def test_design_numbers_out_of_bounds_are_refused_up_front(study_design_path, tmp_path, field, value, message):
    """Tiny doses (folder dose_0), huge objects (215 GiB) and absurd counts fail before any allocation."""
    def mutate(raw):
        target = raw
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value

    design = _design_with(study_design_path, tmp_path, mutate)
    result = run_tool("gen-synthetic", "--design", design, "--phase-c-root", tmp_path / "c", "--phase-d-root",
                      tmp_path / "d")
    assert_one_line_error(result, str(design), message)
    assert not (tmp_path / "c").exists()


def test_object_larger_than_memory_is_refused(study_design_path, tmp_path, monkeypatch):
    """An object within the schema's bounds but beyond the memory available is refused, naming the need."""
    from ptydose.core import design as design_module
    from ptydose.core.errors import DesignError

    monkeypatch.setattr(design_module, "available_memory_bytes", lambda: 1 << 30)
    path = _design_with(study_design_path, tmp_path, lambda raw: raw["object"].update(shape=[8192, 8192]))
    with pytest.raises(DesignError, match=r"object/shape: 8192x8192 needs about 4\.0 GiB to generate, more than "
                                          r"the 1\.0 GiB of memory available"):
        design_module.load_design(path)


def test_huge_integers_and_deep_nesting_are_one_line_errors(tmp_path):
    """A 5000-digit integer or 100000 nested arrays: ManifestError naming the file, no traceback."""
    with pytest.raises(ManifestError, match=r"^x\.json: not valid JSON here \(Exceeds the limit"):
        parse_json('{"a": ' + "9" * 5000 + "}", "x.json")
    with pytest.raises(ManifestError, match=r"^x\.json: not valid JSON here \(nested too deeply\)"):
        parse_json("[" * 100000 + "]" * 100000, "x.json")


def test_json_writes_refuse_non_finite_numbers_and_leave_nothing(tmp_path):
    """write_json never emits NaN/Infinity literals: the error names the file and the field."""
    target = tmp_path / "skip_summary.json"
    doc = {"schema_version": "1.0", "timestamp": "2026-01-01T00:00:00+00:00", "skipped_count": 0,
           "skipped_jobs": [], "missing_phase_d_count": math.nan}
    with pytest.raises(ManifestError, match=r"skip_summary\.json: missing_phase_d_count: not a finite number"):
        write_json(target, doc, "skip_summary")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_design_with_nan_in_an_overlap_view_names_the_field(study_design_path, tmp_path):
    """A NaN overlap written by a careless script (json.dumps allows it) is refused, not planned."""
    raw = json.loads(study_design_path.read_text())
    raw["overlap_views"]["dense"] = float("nan")
    path = tmp_path / "design.json"
    path.write_text(json.dumps(raw))  # Python writes the NaN literal
    result = run_tool("plan-jobs", "--design", path, "--phase-c-root", tmp_path / "c", "--phase-d-root",
                      tmp_path / "d", "--artifact-root", tmp_path / "f")
    assert_one_line_error(result, str(path), "NaN is not a JSON number")
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- run-ptychi and plan-jobs

@pytest.mark.parametrize("value, message", [
    ("nan", "'nan': expected a finite number of seconds > 0 (omit --timeout for no limit)"),
    ("inf", "'inf': expected a finite number of seconds > 0"),
    ("-inf", "'-inf': expected a finite number of seconds > 0"),
    ("0", "'0': expected a finite number of seconds > 0"),
    ("-1", "'-1': expected a finite number of seconds > 0"),
    ("soon", "'soon' is not a number of seconds"),
])
def test_timeout_that_is_not_a_finite_positive_number_is_a_usage_error(real_sweep, tmp_path, value, message):
    """--timeout nan busy-waited and inf raised: both (and the other non-numbers) are exit 2, nothing written."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    before = snapshot(root)
    result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--force",
                      "--timeout", value)
    assert_one_line_error(result, "Invalid value for '--timeout'", message, code=2)
    assert snapshot(root) == before


def test_a_huge_finite_timeout_is_no_limit_in_practice(real_sweep, tmp_path):
    """--timeout 1e300 is finite and valid: the job runs (no operating-system wait is handed 1e300 s)."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--force", "--only",
                      "dose_1000/sparse/test", "--device", "cpu", "--timeout", "1e300")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("dose_1000/sparse/test\tok\t")


def test_run_manifest_refuses_non_finite_timeouts(real_sweep, tmp_path):
    """The core function checks what the CLI checks (it is also called directly), before any lock or write."""
    from ptydose.core.errors import StudyError
    from ptydose.core.run.runner import run_manifest

    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    before = snapshot(root)
    for value in (math.nan, math.inf, -math.inf, 0.0, -5.0):
        with pytest.raises(StudyError, match=r"^--timeout .*: expected a finite number of seconds > 0"):
            run_manifest(root / "reconstruction_manifest.json", force=True, timeout=value, echo=lambda line: None)
    assert snapshot(root) == before


def test_plan_num_epochs_is_bounded(smoke_data, tmp_path):
    """--num-epochs 10**30 (a job that never ends) is a usage error, as the design schema's bound."""
    result = run_tool("plan-jobs", "--design", smoke_data["design"], "--phase-c-root", smoke_data["phase_c_root"],
                      "--phase-d-root", smoke_data["phase_d_root"], "--artifact-root", tmp_path / "f",
                      "--num-epochs", str(10**30))
    assert_one_line_error(result, "Invalid value for '--num-epochs'", "1<=x<=1000000", code=2)
    assert not (tmp_path / "f").exists()


def test_a_non_finite_final_loss_is_a_failure_not_an_ok(tmp_path):
    """A diverged reconstruction (NaN loss) is recorded as failed with no loss; JSON never carries NaN."""
    from ptydose.core.run.recording import finite_loss
    from ptydose.core.run.records import Outcome

    diverged = finite_loss(Outcome("ok", 0, None, 1.0, "cpu", 0.5, 8, math.nan))
    assert (diverged.status, diverged.returncode, diverged.final_loss) == ("failed", 1, None)
    assert diverged.error == "EngineError: the loss is nan after epoch 8 (the reconstruction diverged)"
    timed_out = finite_loss(Outcome("timeout", -9, "killed", 1.0, "cpu", None, 3, math.inf))
    assert (timed_out.status, timed_out.error, timed_out.final_loss) == ("timeout", "killed", None)
    fine = Outcome("ok", 0, None, 1.0, "cpu", 0.5, 8, 0.25)
    assert finite_loss(fine) is fine
