"""Conventions every tool shares: --help with an example, --version, usage errors exit 2."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

from ptydose import __version__

TOOLS = {
    "gen-synthetic": "ptydose.gen_synthetic",
    "validate-npz": "ptydose.validate_npz",
    "plan-jobs": "ptydose.plan_jobs",
    "run-ptychi": "ptydose.run_ptychi",
    "summarize": "ptydose.summarize",
}


def _cli(module: str):
    return importlib.import_module(module).cli


@pytest.mark.parametrize("name, module", sorted(TOOLS.items()))
def test_help_has_summary_and_example(name, module):
    """`--help` exits 0 with a one-line summary and an Example block naming the tool."""
    result = CliRunner().invoke(_cli(module), ["--help"], prog_name=name)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Usage: {name}")
    summary = next(line for line in lines[1:] if line.strip())
    assert len(summary.strip()) > 10
    assert "Example" in result.output
    example_lines = result.output.split("Example", 1)[1]
    assert name in example_lines


@pytest.mark.parametrize("name, module", sorted(TOOLS.items()))
def test_version(name, module):
    """`--version` prints the tool name and the package version."""
    result = CliRunner().invoke(_cli(module), ["--version"], prog_name=name)
    assert result.exit_code == 0
    assert result.output.strip() == f"{name} {__version__}"


@pytest.mark.parametrize("name, module", sorted(TOOLS.items()))
def test_unknown_option_is_a_usage_error(name, module):
    """An unknown flag is a usage error: exit 2, no traceback."""
    result = CliRunner().invoke(_cli(module), ["--no-such-flag"], prog_name=name)
    assert result.exit_code == 2
    assert "No such option" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name, module, args", [
    ("validate-npz", "ptydose.validate_npz", ["--report", "{blocker}/report.json", "{design}"]),
    ("gen-synthetic", "ptydose.gen_synthetic", ["--design", "{design}", "--phase-c-root", "{blocker}/c",
                                              "--phase-d-root", "{tmp}/d"]),
])
def test_an_unwritable_output_is_a_one_line_error(name, module, args, tmp_path, smoke_design_path):
    """An output path under a regular file: exit 1 and one line naming the path, no traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = [a.format(blocker=blocker, design=smoke_design_path, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(_cli(module), argv, prog_name=name)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("\n") <= 3
    assert str(blocker) in result.output.splitlines()[-1]
