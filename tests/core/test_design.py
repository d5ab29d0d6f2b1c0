"""Study design loading, validation and derived values."""

from __future__ import annotations

import copy
import json

import pytest

from ptydose.core.design import load_design, parse_design, spacing_threshold
from ptydose.core.errors import DesignError


def test_shipped_study_design_matches_the_study(study_design_path):
    """The shipped fly64 design holds the study of DESIGN §1: 3 doses, 64 probe, 3 views, seeds."""
    design = load_design(study_design_path)
    assert design.doses == [1000, 10000, 100000]
    assert design.probe_size == 64
    assert design.views == ["baseline", "dense", "sparse"]
    assert design.overlap_views == {"dense": 0.7, "sparse": 0.2}
    assert design.seeds == {"simulation": 42, "grouping": 123, "subsampling": 456}
    # The default reconstructor chosen by make bench (docs/decisions.md): CDTools Adam, 40 epochs.
    assert (design.reconstruction["engine"], design.reconstruction["algorithm"]) == ("cdtools", "ADAM")
    assert design.reconstruction["num_epochs"] == 40
    assert design.metrics["ms_ssim_sigma"] == 1.0


def test_spacing_threshold_is_one_minus_f_times_d(study_design_path):
    """S = (1 - f) * D for every view, computed once and carried by the design."""
    design = load_design(study_design_path)
    d = design.probe_diameter_px
    for view, f in design.overlap_views.items():
        assert design.spacing_thresholds[view] == pytest.approx((1 - f) * d, rel=1e-12)
    assert spacing_threshold(0.0, 10.0) == 10.0
    with pytest.raises(DesignError):
        spacing_threshold(1.0, 10.0)


def test_smoke_design_has_the_same_structure(smoke_design_path, study_design_path):
    """plans/smoke mirrors the study's keys so it exercises the same code."""
    smoke = json.loads(smoke_design_path.read_text())
    study = json.loads(study_design_path.read_text())
    assert set(smoke) == set(study)
    load_design(smoke_design_path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["overlap_views"].__setitem__("dense", 1.5), "overlap_views/dense: 1.5 is not in [0, 1)"),
        (lambda d: d["overlap_views"].__setitem__("sparse", -0.1), "overlap_views/sparse: -0.1 is not in [0, 1)"),
        (lambda d: d.__setitem__("doses", []), "doses:"),
        (lambda d: d.__setitem__("doses", [1000, -5]), "doses/1:"),
        (lambda d: d.__setitem__("doses", [1000.5]), "doses/0: 1000.5 is not a whole number"),
        (lambda d: d["probe"].__setitem__("size", "64"), "probe/size:"),
        (lambda d: d["object"].__setitem__("shape", [40, 40]), "object/shape:"),
        (lambda d: d.pop("seeds"), "'seeds' is a required property"),
        (lambda d: d.__setitem__("surprise", 1), "Additional properties"),
    ],
)
def test_invalid_designs_name_the_field(study_design_path, mutate, message):
    """Each invalid design fails with a message naming the file and the field."""
    raw = json.loads(study_design_path.read_text())
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(DesignError) as info:
        parse_design(bad, "design.json")
    assert str(info.value).startswith("design.json: ")
    assert message in str(info.value)


def test_design_hash_ignores_formatting(study_design_path, tmp_path):
    """The hash depends on content, not on whitespace or key order."""
    raw = json.loads(study_design_path.read_text())
    other = tmp_path / "design.json"
    other.write_text(json.dumps(dict(reversed(list(raw.items()))), indent=7))
    assert load_design(other).design_hash == load_design(study_design_path).design_hash
    raw["doses"] = [1000]
    other.write_text(json.dumps(raw))
    assert load_design(other).design_hash != load_design(study_design_path).design_hash


def test_missing_and_malformed_design_files(tmp_path):
    """Unreadable design files give one-line errors naming the file."""
    with pytest.raises(DesignError, match="design file not found"):
        load_design(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DesignError, match=r"bad.json: not valid JSON \(line 1"):
        load_design(bad)


def test_design_hash_follows_the_files_it_names(study_design_path, tmp_path):
    """A design naming a probe NPZ: changing that file changes the hash (data must be regenerated)."""
    import numpy as np

    raw = json.loads(study_design_path.read_text())
    raw["probe"] = {"size": 64, "npz": "probe.npz", "nominal_diameter_px": 26.0}
    path = tmp_path / "design.json"
    path.write_text(json.dumps(raw))
    np.savez(tmp_path / "probe.npz", probeGuess=np.ones((64, 64), np.complex64))
    before = load_design(path).design_hash
    assert load_design(path).design_hash == before
    np.savez(tmp_path / "probe.npz", probeGuess=np.full((64, 64), 1j, np.complex64))
    assert load_design(path).design_hash != before


def test_data_hash_ignores_reconstruction_and_metric_settings(study_design_path):
    """data_hash changes with the physics (object, probe, scan, doses) but not with epochs or metrics."""
    raw = json.loads(study_design_path.read_text())
    base = parse_design(raw).data_hash
    tweaked = copy.deepcopy(raw)
    tweaked["reconstruction"]["num_epochs"] = 7
    tweaked["metrics"]["ms_ssim_sigma"] = 2.0
    tweaked["description"] = "other words"
    assert parse_design(tweaked).data_hash == base
    assert parse_design(tweaked).design_hash != parse_design(raw).design_hash
    tweaked["scan"]["step_px"] = 5.0
    assert parse_design(tweaked).data_hash != base
