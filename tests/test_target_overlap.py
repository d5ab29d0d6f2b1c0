"""Views given by their target measured overlap, and the shipped dose x overlap grid designs.

A view ``{"target_overlap": x}`` gets, per split, the spacing whose greedy selection measures
closest to x; it must land within TARGET_OVERLAP_TOLERANCE (0.02 absolute) or the design is
refused with one line naming ``overlap_views/<view>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ptydose.core import manifests, overlap
from ptydose.core.design import TARGET_OVERLAP_TOLERANCE, load_design, parse_design
from ptydose.core.errors import DesignError
from ptydose.core.jobs import plan_jobs
from ptydose.core.synthetic import INDEX_NAME, build_geometry, generate_study
from ptydose.gen_synthetic import cli as gen_cli

TARGETS = (0.0, 0.02, 0.1, 0.2, 0.35, 0.5, 0.65)


def _targets_design(smoke_design_path: Path, targets: dict) -> dict:
    raw = json.loads(smoke_design_path.read_text())
    raw["overlap_views"] = {name: {"target_overlap": t} for name, t in targets.items()}
    return raw


@pytest.fixture(scope="module")
def target_geometry(smoke_design_path):
    raw = _targets_design(smoke_design_path, {f"t{i}": t for i, t in enumerate(TARGETS)})
    return build_geometry(parse_design(raw, smoke_design_path))


def test_targets_are_reached_within_the_tolerance(target_geometry):
    """Targets from none to nearly the full scan's 0.675, on both splits of the smoke scan: each
    selection measures within 0.02 of its target (measured: within 0.004), records the target and
    the spacing it found, and a higher target keeps more positions."""
    assert TARGET_OVERLAP_TOLERANCE == 0.02
    for split in ("train", "test"):
        kept = []
        for i, target in enumerate(TARGETS):
            sel = target_geometry.selections[(f"t{i}", split)]
            figures = sel.figures()
            assert figures["target_overlap"] == target
            assert abs(figures["measured_overlap"] - target) <= TARGET_OVERLAP_TOLERANCE, (split, target, figures)
            assert 0 < figures["spacing_threshold"] <= 12.0
            assert figures["measured_overlap"] == pytest.approx(
                overlap.measured_overlap(target_geometry.coords[sel.indices], 12.0, 4), abs=1e-6)
            assert np.all(np.diff(sel.indices) > 0) and set(sel.indices) <= set(target_geometry.splits[split])
            assert overlap.min_spacing(target_geometry.coords[sel.indices]) >= figures["spacing_threshold"]
            kept.append(sel.n_accepted)
        assert kept == sorted(kept) and kept[0] < kept[-1] / 5


def test_the_search_is_seeded(smoke_design_path, target_geometry):
    """Same design, same selections (indices and figures)."""
    raw = _targets_design(smoke_design_path, {f"t{i}": t for i, t in enumerate(TARGETS)})
    again = build_geometry(parse_design(raw, smoke_design_path))
    for key, sel in target_geometry.selections.items():
        assert np.array_equal(sel.indices, again.selections[key].indices)
        assert sel.figures() == again.selections[key].figures()


def test_a_target_at_the_full_scan_keeps_every_position(smoke_design_path):
    """A target equal to the split's own overlap (the most a view can have) selects it all, directly."""
    full = build_geometry(load_design(smoke_design_path)).selections[("baseline", "train")].measured_overlap
    raw = _targets_design(smoke_design_path, {"full": full})
    sel = build_geometry(parse_design(raw, smoke_design_path)).selections[("full", "train")]
    assert (sel.selection_strategy, sel.n_rejected, sel.measured_overlap) == ("direct", 0, full)


def test_fraction_views_record_no_target(smoke_data):
    """Views given by a fraction keep their figures as before: no target_overlap key anywhere."""
    index = manifests.read_json(smoke_data["phase_d_root"] / INDEX_NAME, "dataset_index")
    assert all("target_overlap" not in e["selection"] for e in index["files"])
    assert "target_overlaps" not in index


def test_an_unreachable_target_is_a_one_line_error(smoke_design_path, tmp_path):
    """0.9 is above what the whole smoke split measures (0.675): gen-synthetic exits 1 with one line
    naming overlap_views/<view> and writes nothing."""
    raw = _targets_design(smoke_design_path, {"o20": 0.2, "toomuch": 0.9})
    raw["overlap_views"]["o20"] = 0.2
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    result = CliRunner().invoke(gen_cli, ["--design", str(design), "--phase-c-root", str(tmp_path / "c"),
                                          "--phase-d-root", str(tmp_path / "d"), "--no-progress"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {design}: overlap_views/toomuch: target overlap 0.9 cannot be reached in the train split "
        "within 0.02 (the whole split measures only 0.675, the most a view of it can have; change the target, "
        "or the scan step or probe diameter)\n")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_a_target_between_two_reachable_overlaps_is_refused(tmp_path, smoke_design_path):
    """A scan so coarse that the overlap jumps from 0 to the full split's value (a perfect raster at a
    step of 0.75 D, no jitter: the diagonal neighbours, at 1.06 D, never overlap, so any spacing above
    the step leaves none): a target half way cannot be met within the tolerance and is refused."""
    raw = _targets_design(smoke_design_path, {"half": 0.05})
    raw["scan"] = {"pattern": "raster", "step_px": 9.0, "jitter_px": 0.0, "margin_px": 1.0}
    design = parse_design(raw, smoke_design_path)
    full = build_geometry(parse_design({**raw, "overlap_views": {"x": 0.5}}, smoke_design_path)).selections[
        ("baseline", "train")].measured_overlap
    # The target lies in the gap: more than the tolerance from both 0 and the full split's overlap.
    assert full - 0.05 > TARGET_OVERLAP_TOLERANCE and 0.05 - 0.0 > TARGET_OVERLAP_TOLERANCE
    with pytest.raises(DesignError, match=r"overlap_views/half: target overlap 0.05 cannot be reached in the train "
                                          r"split within 0.02 \(the closest selection measures "):
        build_geometry(design)


@pytest.mark.parametrize("spec, message", [
    ({"target_overlap": 1.5}, "overlap_views/odd/target_overlap: 1.5 is not in [0, 1]"),
    ({"target_overlap": -0.1}, "overlap_views/odd/target_overlap: -0.1 is not in [0, 1]"),
    ({"target": 0.3}, "overlap_views/odd: "),
    ({"target_overlap": 0.3, "f": 0.2}, "overlap_views/odd: "),
])
def test_malformed_targets_name_the_field(smoke_design_path, spec, message):
    raw = json.loads(smoke_design_path.read_text())
    raw["overlap_views"]["odd"] = spec
    with pytest.raises(DesignError) as info:
        parse_design(raw, smoke_design_path)
    assert message in str(info.value)


def test_target_views_reach_files_index_and_manifest(smoke_design_path, tmp_path):
    """Generated and planned: each file's _metadata, the index and the manifest job carry the target
    and the measured overlap it reached; the design's fraction-free spacing table stays empty."""
    raw = _targets_design(smoke_design_path, {"o30": 0.3})
    raw["doses"] = [1000]
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    generate_study(design, tmp_path / "c", tmp_path / "d", progress=False)
    index = manifests.read_json(tmp_path / "d" / INDEX_NAME, "dataset_index")
    assert index["target_overlaps"] == {"o30": 0.3} and index["spacing_thresholds"] == {}
    for entry in index["files"]:
        with np.load(tmp_path / "d" / entry["path"], allow_pickle=False) as data:
            meta = json.loads(str(data["_metadata"]))
        assert meta["selection"] == entry["selection"] and meta["selection"]["target_overlap"] == 0.3
        assert manifests.validation_errors(meta, "npz_metadata") == []
    plan = plan_jobs(design, tmp_path / "c", tmp_path / "d", tmp_path / "art")
    views = {j["id"]: j["selection"] for j in plan.manifest["jobs"] if j["view"] == "o30"}
    assert set(views) == {"dose_1000/o30/train", "dose_1000/o30/test"}
    for selection in views.values():
        assert selection["target_overlap"] == 0.3 and abs(selection["measured_overlap"] - 0.3) <= 0.02
    assert plan.manifest["provenance"]["target_overlaps"] == {"o30": 0.3}
    assert manifests.validation_errors(plan.manifest, "reconstruction_manifest") == []


# ----------------------------------------------------------------------------------------------
# The shipped grid designs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n_doses, n_overlaps, k", [("dose_overlap_grid", 6, 6, 3), ("smoke_grid", 2, 2, 2)])
def test_grid_designs(repo_root, name, n_doses, n_overlaps, k):
    """The map design: at least 6 doses evenly spaced in log dose and at least 6 overlaps reaching
    their targets from nearly none to the full scan, 3 replicates, a quality target and CDTools Adam;
    the CI grid: the same structure at 2 x 2 x K = 2."""
    design = load_design(repo_root / "plans" / name / "design.json")
    assert len(design.doses) == n_doses and design.replicates == k
    steps = np.diff(np.log10(design.doses))
    assert np.allclose(steps, steps[0], atol=0.01)
    assert len(design.views) == n_overlaps and set(design.target_overlaps) == set(design.views) - {"baseline"}
    assert design.quality_target == {"metric": "phase_rmse", "value": 0.3}
    assert (design.reconstruction["engine"], design.reconstruction["algorithm"]) == ("cdtools", "ADAM")
    geometry = build_geometry(design)
    measured = sorted(geometry.selections[(v, "train")].measured_overlap for v in design.views)
    assert len(set(measured)) == n_overlaps
    if name == "dose_overlap_grid":
        assert measured[0] <= 0.05 and measured[-1] == geometry.selections[("baseline", "train")].measured_overlap
        assert measured[-1] > 0.6 and min(np.diff(measured)) > 0.05  # spread over the whole axis
    plan_count = len(design.doses) * len(design.views) * 2 * k
    assert plan_count == (216 if name == "dose_overlap_grid" else 16)
    assert math.isclose(design.probe_diameter_px, geometry.probe_meta["measured_diameter_px"], rel_tol=0.05)
