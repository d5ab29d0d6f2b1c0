"""Family 1: confinement — nothing is written, truncated or deleted outside the folders the user named.

Links inside a root are the attack: a job folder, summary folder, figures folder or output file that
is a symbolic link to somewhere else must be refused, and the place it points at left byte-identical.
"""

from __future__ import annotations

import os

from conftest import assert_one_line_error, copy_sweep, run_tool, snapshot

TRAIN, TEST = "dose_1000/sparse/train", "dose_1000/sparse/test"


def test_summary_folder_linked_outside(real_sweep, tmp_path, outside):
    """<root>/summary -> outside: summarize refuses; outside unchanged."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    before = snapshot(outside)
    os.symlink(outside, root / "summary")
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, str(root / "summary"), "is a symbolic link inside")
    assert snapshot(outside) == before


def test_figures_folder_linked_outside(real_sweep, tmp_path, outside):
    """--out folder whose figures/ links outside: refused before any figure is drawn."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    out = tmp_path / "my_summary"
    out.mkdir()
    os.symlink(outside, out / "figures")
    before = snapshot(outside)
    result = run_tool("summarize", "--artifact-root", root, "--out", out)
    assert_one_line_error(result, str(out / "figures"), "is a symbolic link inside")
    assert snapshot(outside) == before
    assert not (out / "summary.json").exists()


def test_summary_json_link_is_replaced_not_followed(real_sweep, tmp_path, outside):
    """summary.json that is a link to a precious file: the link is replaced, the file keeps its bytes."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    (root / "summary").mkdir(exist_ok=True)
    link = root / "summary" / "summary.json"
    if link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(outside / "precious.txt", link)
    before = snapshot(outside)
    result = run_tool("summarize", "--artifact-root", root)
    assert result.returncode == 0, result.stderr
    assert snapshot(outside) == before
    assert not link.is_symlink() and link.is_file()


def test_job_folder_linked_to_another_job(real_sweep, tmp_path):
    """A job folder that is a link (to another job's folder) is refused by summarize, naming it."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    import shutil

    shutil.rmtree(root / TEST)
    os.symlink(root / TRAIN, root / TEST)
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, str(root / TEST), "is a symbolic link inside")
