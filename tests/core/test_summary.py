"""Summary core: flat metrics, aggregates, overlap verdicts, tables and reproduce commands."""

from __future__ import annotations

import math
import shlex

import pytest

from ptydose.core import summary as s


def _metric_doc(rmse: float, ssim: float, psnr: float = 20.0) -> dict:
    scores = {"rmse": rmse, "psnr_db": psnr, "data_range": 1.0, "ssim": ssim, "ms_ssim": ssim, "ms_ssim_scales": 4}
    return {"phase": dict(scores), "amplitude": dict(scores), "complex_correlation": ssim,
            "frc": {"fraction_of_nyquist": ssim, "resolution_px": 1 / ssim, "mean_frc": ssim}}


def _row(dose: int, view: str, split: str, rmse: float | None, ssim: float = 0.5) -> dict:
    flat = None if rmse is None else s.flat_metrics(_metric_doc(rmse, ssim))
    return {"dose": dose, "view": view, "split": split, "flat": flat}


SETTINGS = {"report_amplitude": True, "emphasis": "phase"}


def test_flat_metrics_pick_every_headline_value_and_drop_infinities():
    """Each METRICS entry is read from its path; an infinite PSNR (identical images) becomes None."""
    flat = s.flat_metrics(_metric_doc(0.1, 0.9, psnr=math.inf))
    assert set(flat) == set(s.METRICS)
    assert flat["phase_rmse"] == 0.1 and flat["amplitude_ssim"] == 0.9 and flat["frc_fraction_of_nyquist"] == 0.9
    assert flat["phase_psnr_db"] is None


def test_aggregates_mean_min_max_and_unscored_groups():
    """(dose, view, split) means and (dose, view) mean/min/max over scored jobs; unscored groups hold None."""
    rows = [_row(1000, "dense", "train", 0.2), _row(1000, "dense", "test", 0.4), _row(1000, "sparse", "train", None)]
    agg = s.aggregate(rows)
    per_split = {(g["dose"], g["view"], g["split"]): g for g in agg["by_dose_view_split"]}
    assert per_split[(1000, "dense", "train")]["metrics"]["phase_rmse"] == 0.2
    assert per_split[(1000, "sparse", "train")]["n_scored"] == 0
    assert per_split[(1000, "sparse", "train")]["metrics"]["phase_rmse"] is None
    dense, sparse = agg["by_dose_view"]
    assert (dense["view"], dense["n_scored"], dense["splits"]) == ("dense", 2, ["train", "test"])
    assert dense["metrics"]["phase_rmse"] == {"mean": pytest.approx(0.3), "min": 0.2, "max": 0.4}
    assert sparse["metrics"]["phase_rmse"] == {"mean": None, "min": None, "max": None}


def test_overlap_verdicts_count_wins_by_metric_direction():
    """Lower RMSE and higher SSIM both count as wins; a mixed result gives wins, ties and losses by name."""
    better = s.aggregate([_row(1000, "dense", "train", 0.1, ssim=0.9), _row(1000, "sparse", "train", 0.3, ssim=0.5)])
    doc = {"settings": SETTINGS, "aggregates": better}
    # _row fills 10 table metrics with phase PSNR 20 dB for both views: 9 wins and 1 tie.
    assert s.comparison_lines(doc) == ["- dose 1000: dense beats sparse on 9 of 10 compared metrics "
                                       "(tied: phase PSNR (dB))"]
    mixed = s.aggregate([_row(1000, "dense", "train", 0.5, ssim=0.9), _row(1000, "sparse", "train", 0.3, ssim=0.5)])
    line = s.comparison_lines({"settings": SETTINGS, "aggregates": mixed})[0]
    assert line.startswith("- dose 1000: dense vs sparse: better on 7, tied on 1, worse on 2 of 10 compared metrics "
                           "(worse: ")
    assert line.endswith("; tied: phase PSNR (dB))")
    assert "phase RMSE (rad)" in line and "amp. RMSE" in line
    worse = s.aggregate([_row(1000, "dense", "train", 0.3, ssim=0.5), _row(1000, "sparse", "train", 0.1, ssim=0.9)])
    assert s.comparison_lines({"settings": SETTINGS, "aggregates": worse}) == [
        "- dose 1000: dense is worse than sparse on 9 of 10 compared metrics (tied: phase PSNR (dB))"]
    same = s.aggregate([_row(1000, "dense", "train", 0.3, ssim=0.5), _row(1000, "sparse", "train", 0.3, ssim=0.5)])
    assert s.comparison_lines({"settings": SETTINGS, "aggregates": same}) == [
        "- dose 1000: dense ties sparse on all 10 compared metrics"]


def test_overlap_verdict_claims_nothing_when_no_metric_was_compared():
    """Both views scored but every metric missing (None): the line says nothing could be compared."""
    empty = s.aggregate([_row(1000, "dense", "train", None), _row(1000, "sparse", "train", None)])
    for group in empty["by_dose_view"]:
        group["n_scored"] = 1  # scored jobs whose metrics were all undefined
    lines = s.comparison_lines({"settings": SETTINGS, "aggregates": empty})
    assert lines == ["- dose 1000: dense vs sparse: no metric could be compared"]
    assert not any("beats" in line or "worse" in line for line in lines)


def test_table_columns_follow_emphasis_and_report_amplitude():
    """Phase first by default; amplitude first with emphasis 'amplitude'; none without report_amplitude."""
    names = s.table_metric_names(SETTINGS)
    assert names[0] == "phase_rmse" and "amplitude_ssim" in names
    assert s.table_metric_names({"report_amplitude": True, "emphasis": "amplitude"})[0] == "amplitude_rmse"
    assert not any(n.startswith("amplitude") for n in s.table_metric_names({"report_amplitude": False, "emphasis": "phase"}))


def test_metric_table_text_and_markdown():
    """Text table: aligned columns, one row per job, '-' for unscored; markdown: a separator row."""
    doc = {"settings": SETTINGS, "jobs": [
        {"job_id": "dose_1000/dense/train", "status": "scored", "flat": s.flat_metrics(_metric_doc(0.123456, 0.5))},
        {"job_id": "dose_1000/dense/test", "status": "failed", "flat": None}]}
    text = s.metric_table(doc, markdown=False).splitlines()
    assert len(text) == 3
    assert text[1].split()[:3] == ["dose_1000/dense/train", "scored", "0.1235"]
    assert text[2].split()[2] == "-"
    assert text[0].index("status") == text[1].index("scored")  # aligned
    markdown = s.metric_table(doc, markdown=True).splitlines()
    assert markdown[1].startswith("|---|---|") and markdown[2].startswith("| dose_1000/dense/train | scored | 0.1235 |")


def test_fmt_uses_four_significant_digits():
    """fmt: 4 significant digits, '-' for None, 'inf' for infinity, ints as they are."""
    assert s.fmt(0.000123456) == "0.0001235"
    assert s.fmt(12345.6) == "1.235e+04"
    assert s.fmt(None) == "-" and s.fmt(math.inf) == "inf" and s.fmt(3) == "3"


def test_reproduce_commands_carry_filters_and_quote_paths():
    """gen-synthetic / plan-jobs / run-ptychi / summarize with the plan's filters and epochs, shell-quoted."""
    manifest = {"provenance": {"design": "/d/my design.json", "phase_c_root": "/o/c", "phase_d_root": "/o/d",
                               "artifact_root": "/o/f", "allow_missing_phase_d": True,
                               "filters": {"doses": [1000], "views": ["dense"], "splits": None}},
                "jobs": [{"algorithm": "LSQML", "num_epochs": 20}]}
    commands = s.reproduce_commands(manifest, "tmp/f", remove_ramp=True)
    assert shlex.split(commands[0]) == ["gen-synthetic", "--design", "/d/my design.json", "--phase-c-root", "/o/c",
                                        "--phase-d-root", "/o/d", "--dose", "1000"]
    assert shlex.split(commands[1])[-9:] == ["--dose", "1000", "--view", "dense", "--allow-missing-phase-d",
                                             "--algorithm", "LSQML", "--num-epochs", "20"]  # the planned epochs
    assert commands[2] == "run-ptychi --manifest /o/f/reconstruction_manifest.json"
    assert commands[3] == "summarize --artifact-root tmp/f --remove-ramp"
