"""The benchmark scripts still run (at toy size; their timings are printed, never asserted)."""

from __future__ import annotations

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
