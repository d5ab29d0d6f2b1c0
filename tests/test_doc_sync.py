"""doc_sync: generated docs are written deterministically and `check` fails when one is stale.

Each test works on a small stand-in repository under tmp_path (a Makefile, setup.cfg markers, a
hand-written TESTING_GUIDE.md and a two-file test suite), passed with --root, so collection takes
about a second and the real docs are never touched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptydose import doc_sync
from ptydose.core.manifests import write_json

GUIDE = f"""# Guide

Hand-written text stays.

{doc_sync.BEGIN}
old generated text
{doc_sync.END}

Trailing hand-written text.
"""

TESTS_A = '''
import pytest


@pytest.mark.parametrize("n", [1, 2])
def test_counts(n):
    """Counts up to two | with a pipe."""
    assert n


@pytest.mark.slow
def test_slow_thing():
    """A slow one."""
'''

TESTS_B = '''
def test_plain():
    """Plain test, first line.

    More detail that the index leaves out.
    """
'''


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "tests" / "core").mkdir(parents=True)
    (root / "tests" / "test_a.py").write_text(TESTS_A)
    (root / "tests" / "core" / "test_b.py").write_text(TESTS_B)
    (root / "setup.cfg").write_text("[tool:pytest]\nmarkers =\n    slow: slow tests\n    gpu: needs a GPU\n")
    (root / "Makefile").write_text("test: ## Run the tests\n\tpytest\n\nhelp: ## List targets\n\t@true\n")
    (root / "docs").mkdir()
    (root / "docs" / "TESTING_GUIDE.md").write_text(GUIDE)
    return root


def _run(*args: str):
    return CliRunner().invoke(doc_sync.cli, list(args))


def test_write_generates_index_guide_and_cli_then_check_passes(repo):
    """write creates the index, splices the guide's block, the CLI and schema references; check then exits 0."""
    result = _run("write", "--root", str(repo))
    assert result.exit_code == 0, result.output
    assert "4 of 4 generated docs updated" in result.stdout
    index = (repo / doc_sync.INDEX_PATH).read_text()
    assert "4 tests in 2 files (1 marked `slow`, 0 marked `gpu`)" in index
    assert "| `test_counts[1]` |  | Counts up to two \\| with a pipe. |" in index
    assert "| `test_slow_thing` | slow | A slow one. |" in index
    assert "| `test_plain` |  | Plain test, first line. |" in index
    assert index.index("## `tests/core/test_b.py`") < index.index("## `tests/test_a.py`")  # files sorted
    guide = (repo / doc_sync.GUIDE_PATH).read_text()
    assert guide.startswith("# Guide\n\nHand-written text stays.\n") and guide.endswith("\nTrailing hand-written text.\n")
    assert "old generated text" not in guide
    assert "| `make test` | Run the tests |" in guide and "The suite has 4 tests: 1 marked `slow`" in guide
    assert "- `slow`: slow tests" in guide
    result = _run("check", "--root", str(repo))
    assert result.exit_code == 0, result.output
    assert result.stdout == "4 generated docs up to date\n"
    assert _run("write", "--root", str(repo)).stdout.startswith("0 of 4 generated docs updated")


def test_generated_docs_hold_no_machine_specific_text(repo, monkeypatch):
    """No absolute path of the repository, and the CLI reference does not depend on the terminal width."""
    assert _run("write", "--root", str(repo)).exit_code == 0
    for rel in (doc_sync.INDEX_PATH, doc_sync.GUIDE_PATH, doc_sync.CLI_PATH):
        assert str(repo) not in (repo / rel).read_text(), rel
    cli_doc = (repo / doc_sync.CLI_PATH).read_text()
    for name, _ in doc_sync.console_scripts():
        assert f"## `{name}`\n\n```text\nUsage: {name} [OPTIONS]" in cli_doc
    assert cli_doc.count("Example:") == len(doc_sync.console_scripts())
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal must not rewrap the reference
    assert doc_sync.render_cli() == cli_doc


def test_check_fails_on_a_stale_doc_and_names_it(repo):
    """An edited CLI reference and a changed docstring: exit 1 listing both files and `make doc-sync`."""
    assert _run("write", "--root", str(repo)).exit_code == 0
    cli_path = repo / doc_sync.CLI_PATH
    cli_path.write_text(cli_path.read_text() + "hand edit\n")
    (repo / "tests" / "core" / "test_b.py").write_text(TESTS_B.replace("Plain test, first line.", "Renamed."))
    result = _run("check", "--root", str(repo))
    assert result.exit_code == 1
    assert result.output == (f"Error: stale generated docs: {doc_sync.INDEX_PATH}, {doc_sync.CLI_PATH} "
                             "(run `make doc-sync` and commit them)\n")
    (repo / doc_sync.INDEX_PATH).unlink()  # a missing generated doc is stale too
    assert doc_sync.INDEX_PATH in _run("check", "--root", str(repo)).output


def test_a_new_test_makes_index_and_guide_stale(repo):
    """Adding a test changes the index and the guide's test count."""
    assert _run("write", "--root", str(repo)).exit_code == 0
    (repo / "tests" / "test_c.py").write_text('def test_new():\n    """New."""\n')
    result = _run("check", "--root", str(repo))
    assert result.exit_code == 1
    assert f"{doc_sync.INDEX_PATH}, {doc_sync.GUIDE_PATH}" in result.output


def test_guide_without_markers_and_broken_collection_are_errors(repo):
    """A guide without the markers, or a test file that does not import: exit 1, one line."""
    (repo / "docs" / "TESTING_GUIDE.md").write_text("# Guide\n")
    result = _run("check", "--root", str(repo))
    assert result.exit_code == 1 and "TESTING_GUIDE.md: generated-section markers missing" in result.output
    (repo / "docs" / "TESTING_GUIDE.md").write_text(GUIDE)
    (repo / "tests" / "test_broken.py").write_text("def test_x(:\n")
    result = _run("write", "--root", str(repo))
    assert result.exit_code == 1 and "pytest collection failed (exit 2)" in result.output


def _summary(root: Path, artifact: Path) -> dict:
    """A minimal schema-valid summary of an empty sweep whose texts hold paths under ``root``."""
    return {
        "schema_version": "1.0", "design_name": "smoke",
        "settings": {"ms_ssim_sigma": 1.0, "illumination_threshold": 0.1, "erode_px": 0, "remove_ramp": False,
                     "ssim_window": "g", "ssim_constants": {"K1": 0.01, "K2": 0.03}, "ms_ssim_weights": [1.0],
                     "psnr_data_range": "p", "registration": "r", "frc_window": "w", "frc_threshold": "t",
                     "emphasis": "phase", "report_amplitude": True, "metric_names": []},
        "counts": {"design_jobs": 1, "planned": 0, "scored": 0, "failed": 0, "not_run": 0, "skipped": 1},
        "jobs": [], "aggregates": {"by_dose_view_split": [], "by_dose_view": []}, "failures": [], "not_run": [],
        "skips": [{"dose": 1000, "view": "sparse", "split": "train", "source": "skip_summary",
                   "reason": f"Phase D NPZ not found: {root}/tmp/study/phase_d/dose_1000/sparse/sparse_train.npz"}],
        "figures": [], "notes": [],
        "reproduce": [f"summarize --artifact-root {artifact}"],
        "provenance": {"created": "2026-01-01T00:00:00+00:00", "tool": "summarize", "tool_version": "0",
                       "artifact_root": str(artifact), "manifest_sha256": "a" * 64, "design": f"{root}/design.json",
                       "design_hash": "b" * 64, "versions": {"python": "3"}},
    }


def test_results_follow_the_published_summary_never_a_local_sweep(repo):
    """No sweep: results.md stays as published; write publishes a sweep's summary; check ignores local sweeps."""
    results = repo / doc_sync.RESULTS_PATH
    results.write_text("hand-kept results\n")
    result = _run("write", "--root", str(repo))
    assert result.exit_code == 0 and results.read_text() == "hand-kept results\n"
    assert "docs/results.md stay as published" in result.stderr
    assert _run("check", "--root", str(repo)).exit_code == 0

    artifact = repo / "tmp" / "study" / "phase_f"
    write_json(artifact / "summary" / "summary.json", _summary(repo, artifact), "summary")
    # A local sweep alone changes nothing that check looks at: the suite passes after any user run.
    assert _run("check", "--root", str(repo)).exit_code == 0
    result = _run("write", "--root", str(repo))
    assert result.exit_code == 0 and doc_sync.RESULTS_PATH in result.stdout
    published = repo / doc_sync.PUBLISHED_SUMMARY_PATH
    assert str(repo) not in published.read_text()  # renders the same in a clone anywhere else
    source = json.loads((artifact / "summary" / "summary.json").read_text())
    assert json.loads(published.read_text())["counts"] == source["counts"]
    assert json.loads(published.read_text())["provenance"]["design"] == "design.json"
    text = results.read_text()
    assert str(repo) not in text
    assert "`dose_1000/sparse/train`: Phase D NPZ not found: tmp/study/phase_d/dose_1000/sparse/sparse_train.npz" in text
    assert "summarize --artifact-root tmp/study/phase_f" in text
    assert f"Source: `{doc_sync.PUBLISHED_SUMMARY_PATH}`" in text
    assert "2026-01-01" not in text  # no timestamps in a tracked doc
    assert _run("check", "--root", str(repo)).exit_code == 0

    doc = json.loads((artifact / "summary" / "summary.json").read_text())
    doc["counts"]["design_jobs"] = 2  # a newer local sweep: still not what check compares
    write_json(artifact / "summary" / "summary.json", doc, "summary")
    assert _run("check", "--root", str(repo)).exit_code == 0
    write_json(published, doc, "summary")  # the published summary changed but results.md was not regenerated
    result = _run("check", "--root", str(repo))
    assert result.exit_code == 1 and doc_sync.RESULTS_PATH in result.output
    shutil.rmtree(artifact)
    assert _run("write", "--root", str(repo)).exit_code == 0  # regenerated from the published summary alone
    assert _run("check", "--root", str(repo)).exit_code == 0


def test_write_publishes_the_sweep_figures_next_to_results(repo):
    """With a summary, write copies the published figures to docs/figures/ and results.md links them."""
    artifact = repo / "tmp" / "study" / "phase_f"
    doc = _summary(repo, artifact)
    doc["figures"] = [f"figures/{name}" for name in ("metrics_vs_dose.png", "loss_curves.png")]
    write_json(artifact / "summary" / "summary.json", doc, "summary")
    (artifact / "summary" / "figures").mkdir(parents=True)
    for name in ("metrics_vs_dose.png", "loss_curves.png"):
        (artifact / "summary" / "figures" / name).write_bytes(b"\x89PNG " + name.encode())
    assert _run("write", "--root", str(repo)).exit_code == 0
    published = repo / doc_sync.FIGURES_DIR
    assert (published / "metrics_vs_dose.png").read_bytes() == b"\x89PNG metrics_vs_dose.png"
    assert not (published / "loss_curves.png").exists()  # not in PUBLISHED_FIGURES
    text = (repo / doc_sync.RESULTS_PATH).read_text()
    assert "](figures/metrics_vs_dose.png)" in text and "loss_curves" not in text
    assert _run("check", "--root", str(repo)).exit_code == 0


def test_schema_reference_follows_the_schemas(repo):
    """docs/schemas.md lists each schema's fields with type and description; editing a schema makes it stale."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://x.invalid/schemas/thing.schema.json",
        "description": "A thing.", "type": "object", "additionalProperties": False, "required": ["size"],
        "properties": {
            "size": {"type": "integer", "description": "How big."},
            "mode": {"enum": ["a", "b"], "description": "Which one."},
            "inner": {"type": "object", "properties": {"depth": {"type": "number", "description": "How deep."}}},
        },
    }
    (repo / "schemas").mkdir()
    (repo / "schemas" / "thing.schema.json").write_text(json.dumps(schema))
    assert _run("write", "--root", str(repo)).exit_code == 0
    text = (repo / doc_sync.SCHEMAS_PATH).read_text()
    assert "## `thing.schema.json`" in text and "A thing." in text
    assert "| `size` | integer | yes | How big. |" in text
    assert '| `mode` | "a" \\| "b" |  | Which one. |' in text
    assert "**inner**" in text and "| `depth` | number |  | How deep. |" in text
    schema["properties"]["size"]["description"] = "How large."
    (repo / "schemas" / "thing.schema.json").write_text(json.dumps(schema))
    result = _run("check", "--root", str(repo))
    assert result.exit_code == 1 and doc_sync.SCHEMAS_PATH in result.output
