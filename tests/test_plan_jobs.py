"""plan-jobs CLI: exit codes, messages, the files it writes and --json."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from ptydose.core.manifests import read_json
from ptydose.plan_jobs import cli


def _args(data: dict, art) -> list[str]:
    return ["--design", str(data["design"]), "--phase-c-root", str(data["phase_c_root"]),
            "--phase-d-root", str(data["phase_d_root"]), "--artifact-root", str(art)]


def test_plan_writes_manifest_and_skip_summary(smoke_data, tmp_path):
    """--dose 1000 --view dense --json: 2 jobs planned, 10 skipped on the smoke design, both files valid."""
    art = tmp_path / "art"
    result = CliRunner().invoke(cli, [*_args(smoke_data, art), "--dose", "1000", "--view", "dense", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["jobs"] == ["dose_1000/dense/train", "dose_1000/dense/test"]
    assert (report["total_jobs"], report["planned_jobs"], report["skipped_count"]) == (12, 2, 10)
    manifest = read_json(art / "reconstruction_manifest.json", "reconstruction_manifest")
    assert manifest["provenance"]["filters"] == {"doses": [1000], "views": ["dense"], "splits": None, "reconstructors": None}
    skips = read_json(art / "skip_summary.json", "skip_summary")
    assert skips["skipped_count"] == 10 and skips["missing_phase_d_count"] == 0


def test_plan_text_output(smoke_data, tmp_path):
    """Without --json: one line per job on stdout, skips and a count line on stderr."""
    result = CliRunner().invoke(cli, [*_args(smoke_data, tmp_path / "art"), "--split", "test", "--num-epochs", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and lines[0].startswith("dose_1000/baseline/test\t")
    assert "skipped dose_1000/baseline/train: filtered out by --split test" in result.stderr
    assert "6 of 12 jobs planned, 6 skipped (0 missing Phase D)" in result.stderr


def test_missing_view_files_exit_1_with_one_line(smoke_data, tmp_path):
    """A missing Phase D file is exit 1 with one line naming it; --allow-missing-phase-d plans the rest."""
    data = {"design": smoke_data["design"], "phase_c_root": smoke_data["phase_c_root"],
            "phase_d_root": tmp_path / "d"}
    shutil.copytree(smoke_data["phase_d_root"], data["phase_d_root"])
    (data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_train.npz").unlink()
    result = CliRunner().invoke(cli, _args(data, tmp_path / "art"))
    assert result.exit_code == 1
    missing = (data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_train.npz").resolve()
    assert result.output.strip() == (
        f"Error: Phase D NPZ not found (1): {missing} "
        "(generate them, or pass --allow-missing-phase-d to skip these jobs)")
    result = CliRunner().invoke(cli, [*_args(data, tmp_path / "art"), "--allow-missing-phase-d", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["planned_jobs"], report["missing_phase_d_count"]) == (11, 1)


def test_bad_design_and_filters(smoke_data, tmp_path):
    """A missing design file and an unknown dose are exit 1; a bad --split choice is usage (exit 2)."""
    args = _args(smoke_data, tmp_path / "art")
    bad_design = list(args)
    bad_design[1] = str(tmp_path / "nope.json")
    result = CliRunner().invoke(cli, bad_design)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'nope.json'}: design file not found"
    result = CliRunner().invoke(cli, [*args, "--dose", "7"])
    assert result.exit_code == 1
    assert "--dose 7: not a dose of the design (choose from 1000, 100000)" in result.output
    result = CliRunner().invoke(cli, [*args, "--split", "validation"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_replicate_text_output(smoke_design_path, tmp_path):
    """A K = 2 design: replicate-1 jobs print with /rep1 ids and rep1 inputs; skips name their
    replicate the same way; --replicate filters."""
    from ptydose.core.synthetic import generate_study

    raw = json.loads(smoke_design_path.read_text())
    raw["replicates"] = 2
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    data = {"design": design, "phase_c_root": tmp_path / "c", "phase_d_root": tmp_path / "d"}
    generate_study(design, data["phase_c_root"], data["phase_d_root"], doses=[1000], progress=False)
    result = CliRunner().invoke(cli, [*_args(data, tmp_path / "art"), "--dose", "1000", "--view", "sparse",
                                      "--replicate", "1"])
    assert result.exit_code == 0, result.output
    c, d = data["phase_c_root"].resolve(), data["phase_d_root"].resolve()
    assert result.stdout.splitlines() == [
        f"dose_1000/sparse/{s}/rep1\t{n} positions\t{d}/dose_1000/rep1/sparse/sparse_{s}.npz"
        for s, n in (("train", 16), ("test", 15))]
    assert "skipped dose_1000/sparse/test: filtered out by --replicate 1" in result.stderr
    assert "skipped dose_1000/dense/train/rep1: filtered out by --view sparse" in result.stderr
    assert "2 of 24 jobs planned, 22 skipped (0 missing Phase D)" in result.stderr
    assert str(c) not in result.stdout
