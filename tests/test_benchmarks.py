"""The benchmark scripts still run (at toy size; their timings are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(repo_root, *args):
    return subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_bench_validate_runs_at_toy_size(repo_root, tmp_path):
    """bench_validate builds a small contract-valid file and reports header-only and full times."""
    result = _run(repo_root, "benchmarks/bench_validate.py", "--n", "40", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "header-only:" in result.stdout and "ratio full / header-only:" in result.stdout
    assert not list(tmp_path.iterdir())  # the file is removed unless --keep


def test_bench_generate_runs_on_the_smoke_design(repo_root, smoke_design_path):
    """bench_generate times generation against the FFT + Poisson floor and prints the ratio."""
    result = _run(repo_root, "benchmarks/bench_generate.py", "--design", str(smoke_design_path), "--repeats", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratio      :" in result.stdout and "positions per split and view:" in result.stdout


def test_bench_contention_runs_today_and_the_run_ptychi_policy_side_by_side(repo_root, smoke_design_path, tmp_path):
    """bench_contention runs the job alone and beside a spinning competitor under today's fixed policy
    and run-ptychi's adaptive one, and prints and writes both ratios (timings are not asserted)."""
    out = tmp_path / "contention.json"
    result = _run(repo_root, "benchmarks/bench_contention.py", "--design", str(smoke_design_path), "--dose", "1000",
                  "--epochs", "2", "--repeats", "1", "--policies", "today,run-ptychi",
                  "--scenarios", "alone,contended", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contended/alone" in result.stdout and "run-ptychi: contended/alone" in result.stdout
    numbers = json.loads(out.read_text())
    assert set(numbers["policies"]) == {"today", "run-ptychi"}
    for policy in numbers["policies"].values():
        assert set(policy) == {"alone", "contended", "alone_vs_today"}
        assert policy["alone"]["ratio_to_alone"] == 1.0
        assert policy["contended"]["best_seconds"] > 0
        assert all(t >= 1 for t in policy["contended"]["threads_per_chunk"])
    # The fixed policy never changes its thread count; it is the cores shared out (the usable cores).
    today = numbers["policies"]["today"]
    assert len(set(today["alone"]["threads_per_chunk"] + today["contended"]["threads_per_chunk"])) == 1


def test_bench_peer_tiny_runs_every_method_and_recommends(repo_root, tmp_path):
    """bench_peer --tiny: every method on every smoke dose at the LSQML budgets, ratios to the best in
    (0, 1], a recommendation line, and the JSON of the numbers."""
    out = tmp_path / "peer.json"
    result = _run(repo_root, "benchmarks/bench_peer.py", "--tiny", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("recommendation:")
    numbers = json.loads(out.read_text())
    assert numbers["budget_epochs"] == [2, 4] and numbers["threads"] == 1
    assert set(numbers["jobs"]) == {"dose_1000/dense/train", "dose_100000/dense/train"}
    for job in numbers["jobs"].values():
        assert set(job["methods"]) == {"pty-chi LSQML", "pty-chi EPIE", "pty-chi RPIE", "CDTools ADAM"}
        budgets = job["budgets_cpu_s"]
        assert budgets["2"] < budgets["4"]
        ratios = [m["at_budget"][b]["ratio_to_best"] for m in job["methods"].values() for b in budgets]
        known = [r for r in ratios if r is not None]
        assert known and all(0 < r <= 1 + 1e-12 for r in known)
        assert max(known) == 1.0  # the best method at a budget is the best
        # The baseline's own points at the budget epochs are the budgets themselves.
        lsqml = {p["epochs"]: p["cpu_s"] for p in job["methods"]["pty-chi LSQML"]["points"]}
        assert lsqml[2] == budgets["2"] and lsqml[4] == budgets["4"]
    assert numbers["recommendation"] == result.stdout.strip().splitlines()[-1]
