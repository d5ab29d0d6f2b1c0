"""Uncertainty: t-intervals per cell, paired comparisons and their verdicts.

Intervals in a written summary.json are recomputed here from its per-job values with numpy and
scipy.stats.t (independently of ptydose.core.statistics); verdicts are checked on constructed
rows and on crafted sweeps whose views are identical, or clearly different, by construction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from test_summarize import build_crafted_sweep

from ptydose.core import statistics
from ptydose.core.manifests import read_json
from ptydose.core.summary import METRICS, statistics_doc, summarize

# Recomputed intervals agree to 1e-12: both sides sum at most 6 numbers of order 1-50 in double
# precision (differences of summation order stay below 1e-13) and use the same t quantile to ~1e-15.
TOL = 1e-12


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOL * max(1.0, abs(b))


def _reference_interval(values: list[float]) -> dict:
    """The documented formula, written independently: numpy mean / sample sd, scipy's t quantile."""
    x = np.asarray(values, np.float64)
    n = x.size
    if n < 2:
        return {"n": n, "mean": float(x.mean()) if n else None, "half_width": None}
    sd = float(np.std(x, ddof=1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": float(x.mean()), "sd": sd, "half_width": half,
            "ci_low": float(x.mean()) - half, "ci_high": float(x.mean()) + half}


def _row(dose: int, view: str, split: str, replicate: int, **values: float | None) -> dict:
    flat = dict.fromkeys(METRICS)
    flat.update(values)
    return {"dose": dose, "view": view, "split": split, "replicate": replicate, "flat": flat,
            "selection": {"measured_overlap": None}}


def test_t_quantiles_match_closed_forms():
    """t_{0.975, 1} = tan(0.475 pi) and t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025) (closed forms); others = scipy."""
    assert statistics.t_quantile(1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)
    assert statistics.t_quantile(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-12)
    for df in range(3, 8):
        assert statistics.t_quantile(df) == pytest.approx(float(scipy_stats.t.ppf(0.975, df)), rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_interval_matches_the_formula_at_small_n(n):
    """mean, sample sd and t half-width at n = 2..6 equal an independent numpy/scipy computation to 1e-12."""
    values = list(np.random.default_rng(n).normal(0.6, 0.05, n))
    got, want = statistics.interval(values), _reference_interval(values)
    for key in ("mean", "sd", "half_width", "ci_low", "ci_high"):
        assert _close(got[key], want[key]), key
    assert got["n"] == n


def test_interval_with_one_or_no_value_has_no_width():
    """n = 1: the mean, no sd, no interval; n = 0: nothing."""
    assert statistics.interval([0.3]) == {"n": 1, "mean": 0.3, "sd": None, "ci_low": None, "ci_high": None,
                                          "half_width": None}
    assert statistics.interval([])["mean"] is None


def test_verdicts_follow_the_interval_and_the_metric_direction():
    """CI above 0: better when higher is better, worse when lower is; CI across 0, zero width at 0, or n < 2: not resolved."""
    above = statistics.interval([0.10, 0.11, 0.12])
    below = statistics.interval([-0.10, -0.11, -0.12])
    across = statistics.interval([-0.1, 0.1, 0.05])
    assert statistics.verdict(above, True) == "better" and statistics.verdict(above, False) == "worse"
    assert statistics.verdict(below, True) == "worse" and statistics.verdict(below, False) == "better"
    assert statistics.verdict(across, True) == "not resolved"
    zero = statistics.interval([0.0, 0.0, 0.0, 0.0])
    assert (zero["ci_low"], zero["ci_high"]) == (0.0, 0.0) and statistics.verdict(zero, True) == "not resolved"
    assert statistics.verdict(statistics.interval([0.5]), True) == "not resolved"
    # A constant non-zero difference is a zero-width interval away from 0: resolved.
    assert statistics.verdict(statistics.interval([0.2, 0.2]), True) == "better"


def test_constructed_rows_pair_by_replicate_and_split():
    """Differences pair units with the same replicate and split; an unpaired unit is left out."""
    rows = [_row(1000, "dense", s, r, phase_rmse=0.2 + 0.01 * r + (0.05 if s == "test" else 0)) for r in range(3)
            for s in ("train", "test")]
    rows += [_row(1000, "sparse", s, r, phase_rmse=0.5 + 0.02 * r + (0.05 if s == "test" else 0)) for r in range(2)
             for s in ("train", "test")]
    doc = statistics_doc(rows, [])
    (comp,) = [c for c in doc["comparisons"] if c["kind"] == "view"]
    diff = comp["metrics"]["phase_rmse"]
    assert diff["units"] == ["rep0/test", "rep0/train", "rep1/test", "rep1/train"]
    # dense - sparse per pair: -0.3 - 0.01 r for r = 0, 1 (the split offset cancels).
    want = _reference_interval([-0.3, -0.3, -0.31, -0.31])
    assert _close(diff["mean"], want["mean"]) and _close(diff["half_width"], want["half_width"])
    assert diff["verdict"] == "better"  # lower RMSE for the first (dense)
    assert comp["metrics"]["phase_ssim"]["verdict"] == "not resolved" and comp["metrics"]["phase_ssim"]["n"] == 0
    cells = {(c["dose"], c["view"]): c for c in doc["cells"]}
    assert cells[(1000, "dense")]["metrics"]["phase_rmse"]["n"] == 6
    assert cells[(1000, "dense")]["replicates"] == [0, 1, 2]


def test_comparisons_planned_by_overlap_dose_and_reconstructor():
    """Views: each against the next lower overlap; doses: each against the next lower dose; reconstructors: every pair."""
    cells = [(d, v, r) for d in (10, 100, 1000) for v in ("a", "b", "c") for r in ("x", "y")]
    planned = statistics.plan_comparisons(cells, ["c", "a", "b"], several=True)
    views = [(f[1], s[1]) for k, f, s in planned if k == "view" and f[0] == 10 and f[2] == "x"]
    doses = [(f[0], s[0]) for k, f, s in planned if k == "dose" and f[1] == "a" and f[2] == "x"]
    recons = [(f[2], s[2]) for k, f, s in planned if k == "reconstructor" and f[:2] == (10, "a")]
    assert views == [("c", "a"), ("a", "b")]
    assert doses == [(100, 10), (1000, 100)]
    assert recons == [("x", "y")]
    assert not [p for p in statistics.plan_comparisons(cells[:3], ["a"], several=False) if p[0] == "reconstructor"]


@pytest.fixture(scope="module")
def k3_summary(tmp_path_factory, smoke_design_path) -> dict:
    """A crafted K = 3 sweep (2 doses x 2 views x 2 splits x 3 replicates), summarized; summary.json read back."""
    root = build_crafted_sweep(tmp_path_factory.mktemp("k3"), smoke_design_path, (1000, 100000),
                               {"baseline": (0.05, 0.8), "dense": (0.3, 0.5)}, replicates=3)
    outcome = summarize(root, make_figures=False)
    return read_json(outcome.summary_path, "summary")


def test_intervals_in_summary_json_are_recomputed_from_its_jobs(k3_summary):
    """Every cell interval equals the formula applied to the jobs' flat values of summary.json (within 1e-12)."""
    s = k3_summary
    assert {j["replicate"] for j in s["jobs"]} == {0, 1, 2}
    checked = 0
    for cell in s["statistics"]["cells"]:
        members = [j for j in s["jobs"] if (j["dose"], j["view"]) == (cell["dose"], cell["view"]) and j["flat"]]
        assert len(members) == 6
        for name in METRICS:
            values = [j["flat"][name] for j in members if j["flat"][name] is not None]
            got, want = cell["metrics"][name], _reference_interval(values)
            assert got["n"] == want["n"]
            for key in ("mean", "sd", "half_width", "ci_low", "ci_high"):
                assert _close(got[key], want.get(key)), (cell["dose"], cell["view"], name, key)
            checked += 1
    assert checked == 4 * len(METRICS)


def test_paired_differences_in_summary_json_are_recomputed_from_its_jobs(k3_summary):
    """Each comparison's mean difference and half-width follow from the jobs paired by (replicate, split)."""
    s = k3_summary
    by_unit = {(j["dose"], j["view"], j["replicate"], j["split"]): j["flat"] for j in s["jobs"]}
    for comp in s["statistics"]["comparisons"]:
        first, second = comp["first"], comp["second"]
        for name in METRICS:
            diffs = []
            for r in range(3):
                for split in ("train", "test"):
                    a = by_unit[(first["dose"], first["view"], r, split)][name]
                    b = by_unit[(second["dose"], second["view"], r, split)][name]
                    if a is not None and b is not None:
                        diffs.append(a - b)
            got, want = comp["metrics"][name], _reference_interval(diffs)
            assert got["n"] == want["n"] and _close(got["mean"], want["mean"])
            assert _close(got["half_width"], want.get("half_width"))


def test_clearly_different_views_are_resolved(k3_summary):
    """Baseline (noise 0.05) against dense (noise 0.3): better on the phase and complex metrics at both doses."""
    views = [c for c in k3_summary["statistics"]["comparisons"] if c["kind"] == "view"]
    assert [(c["first"]["view"], c["second"]["view"], c["first"]["dose"]) for c in views] == [
        ("baseline", "dense", 1000), ("baseline", "dense", 100000)]
    for comp in views:
        for name in ("phase_rmse", "phase_psnr_db", "phase_ssim", "amplitude_rmse", "complex_correlation"):
            assert comp["metrics"][name]["verdict"] == "better", (comp["first"]["dose"], name)
            assert comp["metrics"][name]["n"] == 6
    doses = [c for c in k3_summary["statistics"]["comparisons"] if c["kind"] == "dose"]
    assert all(c["metrics"]["phase_rmse"]["verdict"] == "better" for c in doses)


def test_identical_views_are_not_resolved_on_every_metric(tmp_path, smoke_design_path):
    """A view whose inputs and reconstructions copy another's: every paired difference is 0 +/- 0, not resolved."""
    root = build_crafted_sweep(tmp_path, smoke_design_path, (1000, 100000),
                               {"baseline": (0.05, 0.8), "dense": (0.3, 0.5), "twin": (0.3, 0.5)},
                               replicates=2, twins={"twin": "dense"})
    summary = summarize(root, make_figures=False).summary
    pairs = [c for c in summary["statistics"]["comparisons"] if {c["first"]["view"], c["second"]["view"]} == {"dense", "twin"}]
    assert len(pairs) == 2  # one per dose
    names = summary["statistics"]["metric_names"]
    assert "pair_frc_integral" in names  # K = 2: the two-reconstruction FRC measures are compared too
    for comp in pairs:
        for name in names:
            diff = comp["metrics"][name]
            assert diff["verdict"] == "not resolved", name
            if diff["n"]:
                assert (diff["mean"], diff["ci_low"], diff["ci_high"]) == (0.0, 0.0, 0.0), name
        assert comp["metrics"]["phase_rmse"]["n"] == 4
    resolved = [c for c in summary["statistics"]["comparisons"]
                if (c["first"]["view"], c["second"]["view"]) == ("baseline", "dense")]
    assert all(c["metrics"]["phase_ssim"]["verdict"] == "better" for c in resolved)
    text = (root / "summary" / "summary.md").read_text()
    assert "dense vs twin (4 pairs): better on 0, worse on 0, not resolved on 14 of 14 metrics" in text
