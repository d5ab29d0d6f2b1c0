"""Family 3: finite, bounded numbers — NaN/Infinity and absurd sizes are one-line errors, never written."""

from __future__ import annotations

import json
import math

import pytest

from ptydose.core.errors import ManifestError
from ptydose.core.manifests import parse_json, write_json

from conftest import assert_one_line_error, run_tool


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
