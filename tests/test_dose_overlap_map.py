"""The dose x overlap map and the minimum dose that reaches quality Q, on constructed grids and a crafted sweep."""

from __future__ import annotations

import json
import math

import pytest
from test_summarize import build_crafted_sweep

from ptydose.core import statistics
from ptydose.core.manifests import read_json
from ptydose.core.summary import METRICS, dose_overlap_map, draw_map, summarize

DOSES = [100, 1000, 10000, 100000]


def _cell(view: str, dose: int, overlap: float, mean: float, half: float = 0.05) -> dict:
    stat = {"n": 3, "mean": mean, "sd": half, "ci_low": mean - half, "ci_high": mean + half, "half_width": half}
    metrics = {name: dict.fromkeys(stat) | {"n": 0} for name in METRICS}
    metrics["phase_ssim"] = stat
    return {"dose": dose, "view": view, "reconstructor": None, "overlap": overlap, "n_jobs": 6, "replicates": [0, 1, 2],
            "splits": ["train", "test"], "metrics": metrics}


# Constructed phase SSIM means per view (overlap) at DOSES; Q = 0.6 and every CI half-width 0.05.
GRID = {
    "full": (0.95, [0.70, 0.80, 0.90, 0.95]),  # reaches Q at the lowest dose already
    "high": (0.80, [0.30, 0.70, 0.85, 0.90]),  # crosses between 1e2 and 1e3
    "mid": (0.40, [0.10, 0.30, 0.50, 0.80]),  # crosses between 1e4 and 1e5
    "low": (0.10, [0.05, 0.10, 0.20, 0.30]),  # never reaches Q
}


def _stats() -> dict:
    cells = [_cell(view, dose, overlap, mean) for view, (overlap, means) in GRID.items()
             for dose, mean in zip(DOSES, means)]
    return {"metric_names": list(METRICS), "cells": cells, "comparisons": [], "view_order": list(GRID)}


def test_first_crossing_interpolates_in_log_dose():
    """0.3 at 1e2 and 0.7 at 1e3, Q = 0.6: log10 d = 2 + 0.75, i.e. 10^2.75; lower-is-better mirrors it."""
    dose, status = statistics.first_crossing(DOSES, [0.3, 0.7, 0.85, 0.9], 0.6, True)
    assert status == "interpolated" and dose == pytest.approx(10 ** 2.75, rel=1e-12)
    dose, status = statistics.first_crossing(DOSES, [0.9, 0.5, 0.2, 0.1], 0.3, False)  # an RMSE falling with dose
    assert status == "interpolated" and dose == pytest.approx(10 ** (3 + 2 / 3), rel=1e-12)
    assert statistics.first_crossing(DOSES, [0.7, 0.8, 0.9, 0.95], 0.6, True) == (100.0, "at_or_below_lowest")
    assert statistics.first_crossing(DOSES, [0.1, 0.2, 0.3, 0.4], 0.6, True) == (None, "not_reached")
    assert statistics.first_crossing(DOSES, [None] * 4, 0.6, True) == (None, "no_data")
    # A missing cell is skipped: the bracket becomes 1e2 .. 1e4.
    dose, status = statistics.first_crossing(DOSES, [0.2, None, 1.0, 1.0], 0.6, True)
    assert status == "interpolated" and dose == pytest.approx(10 ** 3, rel=1e-12)
    # Exactly Q at a studied dose is reached there.
    assert statistics.first_crossing(DOSES, [0.2, 0.6, 0.9, 0.9], 0.6, True) == pytest.approx((1000.0, "interpolated"))


def test_map_on_a_constructed_grid_gives_the_known_minimum_doses(tmp_path):
    """Known crossings per overlap, with the CI range from the bound curves; not reached and at-lowest stated as such."""
    doc = dose_overlap_map(_stats(), {"metric": "phase_ssim", "value": 0.6}, "phase")
    assert doc["doses"] == DOSES and [v["view"] for v in doc["views"]] == ["low", "mid", "high", "full"]
    found = {m["view"]: m for m in doc["min_dose"]}
    assert found["high"]["status"] == "interpolated"
    assert found["high"]["min_dose"] == pytest.approx(10 ** 2.75, rel=1e-12)
    # Optimistic bound 0.35 -> 0.75: t = 0.25 / 0.4; pessimistic 0.25 -> 0.65: t = 0.35 / 0.4.
    assert found["high"]["dose_low"] == pytest.approx(10 ** (2 + 0.625), rel=1e-12)
    assert found["high"]["dose_high"] == pytest.approx(10 ** (2 + 0.875), rel=1e-12)
    assert found["mid"]["min_dose"] == pytest.approx(10 ** (4 + 1 / 3), rel=1e-12)
    assert found["mid"]["dose_low"] == pytest.approx(10 ** (4 + 0.05 / 0.3), rel=1e-12)
    assert found["mid"]["dose_high"] == pytest.approx(10 ** (4 + 0.15 / 0.3), rel=1e-12)
    assert (found["low"]["min_dose"], found["low"]["status"]) == (None, "not_reached")
    assert (found["low"]["dose_low_status"], found["low"]["dose_high_status"]) == ("not_reached", "not_reached")
    assert (found["full"]["min_dose"], found["full"]["status"]) == (100.0, "at_or_below_lowest")
    paths = draw_map(doc, _stats(), tmp_path)
    names = {p.name for p in paths}
    assert "min_dose_vs_overlap.png" in names and "map_phase_ssim.png" in names
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_a_cell_without_an_interval_leaves_the_range_unknown():
    """n = 1 somewhere on the curve: the minimum dose is given, its range is 'no_interval'."""
    stats = _stats()
    lone = next(c for c in stats["cells"] if c["view"] == "mid" and c["dose"] == 1000)
    lone["metrics"]["phase_ssim"] = statistics.interval([0.3])
    found = {m["view"]: m for m in dose_overlap_map(stats, {"metric": "phase_ssim", "value": 0.6}, "phase")["min_dose"]}
    assert found["mid"]["status"] == "interpolated"
    assert (found["mid"]["dose_low"], found["mid"]["dose_low_status"]) == (None, "no_interval")


def test_no_map_with_one_dose_or_one_overlap():
    """Fewer than 2 doses or 2 views with a measured overlap: no map (None)."""
    stats = _stats()
    stats["cells"] = [c for c in stats["cells"] if c["dose"] == 100]
    assert dose_overlap_map(stats, None, "phase") is None
    stats = _stats()
    stats["cells"] = [c for c in stats["cells"] if c["view"] == "mid"]
    assert dose_overlap_map(stats, None, "phase") is None


@pytest.fixture(scope="module")
def grid_summary(tmp_path_factory, smoke_design_path):
    """A crafted 3 dose x 3 view x K = 2 sweep whose design sets quality_target phase SSIM >= 0.8."""
    base = tmp_path_factory.mktemp("grid")
    design = json.loads(smoke_design_path.read_text())
    design["metrics"]["quality_target"] = {"metric": "phase_ssim", "value": 0.8}
    design_path = base / "design.json"
    design_path.write_text(json.dumps(design))
    root = build_crafted_sweep(base, design_path, (1000, 10000, 100000),
                               {"baseline": (0.05, 0.8), "dense": (0.2, 0.5), "sparse": (0.8, 0.1)}, replicates=2)
    outcome = summarize(root)
    return root, read_json(outcome.summary_path, "summary")


def test_sweep_map_follows_its_cells_end_to_end(grid_summary):
    """summary.json's minimum doses equal an independent log-dose interpolation of its cell means; figures drawn."""
    root, s = grid_summary
    doc = s["dose_overlap_map"]
    assert doc["quality_target"] == {"metric": "phase_ssim", "value": 0.8} and doc["higher_is_better"] is True
    assert [(v["view"], round(v["overlap"], 12)) for v in doc["views"]] == [("sparse", 0.1), ("dense", 0.5), ("baseline", 0.8)]
    cells = {(c["view"], c["dose"]): c["metrics"]["phase_ssim"] for c in s["statistics"]["cells"]}
    statuses = set()
    for m in doc["min_dose"]:
        means = [cells[(m["view"], d)]["mean"] for d in doc["doses"]]
        reached = [i for i, v in enumerate(means) if v >= 0.8]
        if not reached:
            assert (m["min_dose"], m["status"]) == (None, "not_reached")
        elif reached[0] == 0:
            assert (m["min_dose"], m["status"]) == (doc["doses"][0], "at_or_below_lowest")
        else:
            i = reached[0]
            d0, d1, v0, v1 = doc["doses"][i - 1], doc["doses"][i], means[i - 1], means[i]
            want = 10 ** (math.log10(d0) + (0.8 - v0) / (v1 - v0) * (math.log10(d1) - math.log10(d0)))
            assert m["status"] == "interpolated" and m["min_dose"] == pytest.approx(want, rel=1e-12)
            assert m["dose_low"] <= m["min_dose"] <= m["dose_high"]
        statuses.add(m["status"])
    # The fixture's noise levels put the three views in the three cases.
    assert statuses == {"at_or_below_lowest", "interpolated", "not_reached"}
    figures = {f.rsplit("/", 1)[-1] for f in s["figures"]}
    assert {"map_phase_ssim.png", "map_phase_rmse.png", "map_pair_frc_integral.png", "min_dose_vs_overlap.png"} <= figures
    text = (root / "summary" / "summary.md").read_text()
    assert "## Dose × overlap map" in text and "not reached (> 100000)" in text


@pytest.mark.slow
def test_real_k2_sweep_end_to_end(tmp_path, smoke_design_path):
    """gen-synthetic (K = 2), plan-jobs, run-ptychi (LSQML) and summarize on a tiny grid: every part of the statistics filled."""
    from click.testing import CliRunner

    from ptydose.core.jobs import plan_jobs, write_plan
    from ptydose.core.synthetic import generate_study
    from ptydose.run_ptychi import cli as run_cli

    raw = json.loads(smoke_design_path.read_text())
    raw["replicates"] = 2
    raw["metrics"]["quality_target"] = {"metric": "phase_ssim", "value": 0.5}
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    generate_study(design, tmp_path / "c", tmp_path / "d", progress=False)
    plan = write_plan(plan_jobs(design, tmp_path / "c", tmp_path / "d", tmp_path / "art", views=["dense", "sparse"],
                                splits=["train"]))
    result = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    s = read_json(summarize(tmp_path / "art").summary_path, "summary")
    assert s["counts"]["scored"] == 8  # 2 doses x 2 views x 1 split x 2 replicates
    assert sorted((e["dose"], e["view"], e["replicates"]) for e in s["pair_frc"]) == [
        (1000, "dense", [0, 1]), (1000, "sparse", [0, 1]), (100000, "dense", [0, 1]), (100000, "sparse", [0, 1])]
    for e in s["pair_frc"]:
        assert len(e["rings"]["frc"]) == len(e["rings"]["threshold"]) == len(e["pairs"][0]["frc"]) > 10
        assert 0 < e["integral"] <= 1
    for cell in s["statistics"]["cells"]:
        assert cell["replicates"] == [0, 1] and cell["metrics"]["phase_ssim"]["n"] == 2
        assert cell["metrics"]["phase_ssim"]["half_width"] is not None
        assert cell["metrics"]["pair_frc_integral"]["n"] == 1  # one split: one pair-FRC value, no interval
    kinds = sorted({c["kind"] for c in s["statistics"]["comparisons"]})
    assert kinds == ["dose", "view"]
    doc = s["dose_overlap_map"]
    assert [v["view"] for v in doc["views"]] == ["sparse", "dense"]
    assert [m["view"] for m in doc["min_dose"]] == ["sparse", "dense"]
    assert all(m["status"] in ("interpolated", "at_or_below_lowest", "not_reached") for m in doc["min_dose"])
    figures = {f.rsplit("/", 1)[-1] for f in s["figures"]}
    assert {"pair_frc_curves.png", "map_phase_ssim.png", "min_dose_vs_overlap.png"} <= figures


def test_the_quality_target_names_a_metric_summarize_reports(repo_root):
    """The design schema's quality-target metrics are exactly summarize's flat and two-reconstruction metrics,
    so a misspelt target is refused when the design is read, not discovered after the sweep."""
    from ptydose.core import summary

    schema = json.loads((repo_root / "schemas" / "study_design.schema.json").read_text())
    enum = schema["properties"]["metrics"]["properties"]["quality_target"]["properties"]["metric"]["enum"]
    assert enum == [*summary.METRICS, *summary.PAIR_METRICS]
