"""gen-synthetic CLI: files and index, up-to-date skipping, determinism, atomic writes, contract."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ptydose.core import manifests
from ptydose.core.fileio import ZIP_DATE_TIME, write_npz_atomic
from ptydose.core.synthetic import INDEX_NAME, NPZ_KEYS
from ptydose.gen_synthetic import cli

SMOKE_FILES = {
    "phase_c": [f"dose_{d}/patched_{s}.npz" for d in (1000, 100000) for s in ("train", "test")],
    "phase_d": [f"dose_{d}/{v}/{v}_{s}.npz" for d in (1000, 100000) for v in ("dense", "sparse")
                for s in ("train", "test")],
}


def _run(args: list[str]):
    return CliRunner().invoke(cli, args, prog_name="gen-synthetic")


def _args(design: Path, root: Path, *extra: str) -> list[str]:
    return ["--design", str(design), "--phase-c-root", str(root / "phase_c"),
            "--phase-d-root", str(root / "phase_d"), "--no-progress", *extra]


def _npz_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.npz"))}


def test_writes_every_file_and_a_valid_index(smoke_data):
    """Every split x view file of every dose exists, and each root's index lists it with its sha256."""
    for kind, expected in SMOKE_FILES.items():
        root = smoke_data[f"{kind}_root"]
        index = manifests.read_json(root / INDEX_NAME, "dataset_index")
        assert sorted(e["path"] for e in index["files"]) == sorted(expected)
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*.npz")) == sorted(expected)
        for entry in index["files"]:
            path = root / entry["path"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["_metadata"]))
                assert entry["n_images"] == meta["n_images"] == len(data["diffraction"])
            assert (entry["dose"], entry["view"], entry["split"]) == (meta["dose"], meta["view"], meta["split"])
            assert entry["selection"] == meta["selection"]
            assert entry["measured_mean_counts"] == meta["measured_mean_counts"]


def test_metadata_is_a_unicode_string_with_every_field(smoke_data):
    """_metadata is a 0-d unicode array whose JSON passes the npz_metadata schema."""
    for kind, files in SMOKE_FILES.items():
        for rel in files:
            with np.load(smoke_data[f"{kind}_root"] / rel, allow_pickle=False) as data:
                raw = data["_metadata"]
                assert raw.dtype.kind == "U" and raw.shape == ()
                meta = json.loads(str(raw))
            assert manifests.validation_errors(meta, "npz_metadata") == []
            assert meta["generator"] == "gen-synthetic" and meta["position_origin"] == [47.5, 47.5]
            if meta["view"] == "baseline":
                assert meta["selection"]["selection_strategy"] == "direct"
                assert meta["selection"]["spacing_threshold"] == 0.0


def test_npz_layout_is_fixed(smoke_data):
    """NPZ members in a fixed order, stored uncompressed with the fixed timestamp."""
    path = smoke_data["phase_c_root"] / "dose_1000" / "patched_train.npz"
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == [f"{k}.npy" for k in NPZ_KEYS]
    assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == ZIP_DATE_TIME for i in infos)


def test_outputs_pass_the_data_contract(smoke_data):
    """Every generated NPZ passes validate-npz's full contract check with no errors."""
    from ptydose.core.contract import check_npz  # the validator (tools/core/contract.py)

    for kind, files in SMOKE_FILES.items():
        for rel in files:
            report = check_npz(smoke_data[f"{kind}_root"] / rel)
            assert report.ok, report.lines()


def test_second_generation_is_byte_identical(smoke_data, tmp_path):
    """Generating the same design again elsewhere gives byte-identical NPZ files."""
    result = _run(_args(smoke_data["design"], tmp_path))
    assert result.exit_code == 0, result.output
    for kind in ("phase_c", "phase_d"):
        assert _npz_files(tmp_path / kind) == _npz_files(smoke_data[f"{kind}_root"])


def test_rerun_regenerates_nothing_and_force_regenerates(smoke_design_path, tmp_path):
    """Unchanged design + intact files: nothing rewritten; --force rewrites the same bytes."""
    assert _run(_args(smoke_design_path, tmp_path, "--dose", "1000")).exit_code == 0
    path = tmp_path / "phase_c" / "dose_1000" / "patched_train.npz"
    before = path.stat()
    data = path.read_bytes()
    again = _run(_args(smoke_design_path, tmp_path, "--dose", "1000"))
    assert again.exit_code == 0
    assert again.stdout.splitlines()[0] == "dose_1000: up to date, nothing regenerated (use --force to regenerate)"
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns
    forced = _run(_args(smoke_design_path, tmp_path, "--dose", "1000", "--force"))
    assert forced.exit_code == 0 and "up to date" not in forced.stdout
    assert path.stat().st_ino != before.st_ino  # a new file was renamed into place ...
    assert path.read_bytes() == data  # ... with the same bytes


def test_tampered_file_is_regenerated(smoke_design_path, tmp_path):
    """A file whose sha256 no longer matches the index makes its dose regenerate."""
    assert _run(_args(smoke_design_path, tmp_path, "--dose", "1000")).exit_code == 0
    path = tmp_path / "phase_d" / "dose_1000" / "sparse" / "sparse_test.npz"
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    result = _run(_args(smoke_design_path, tmp_path, "--dose", "1000"))
    assert result.exit_code == 0 and "up to date" not in result.stdout
    assert path.read_bytes() == good


def test_dose_subset_merges_the_index(smoke_design_path, tmp_path):
    """Generating one dose, then another, leaves both in each root's index."""
    assert _run(_args(smoke_design_path, tmp_path, "--dose", "1000")).exit_code == 0
    first = manifests.read_json(tmp_path / "phase_d" / INDEX_NAME, "dataset_index")
    assert {e["dose"] for e in first["files"]} == {1000}
    assert _run(_args(smoke_design_path, tmp_path, "--dose", "1e5")).exit_code == 0
    for kind in ("phase_c", "phase_d"):
        index = manifests.read_json(tmp_path / kind / INDEX_NAME, "dataset_index")
        assert sorted(e["path"] for e in index["files"]) == sorted(SMOKE_FILES[kind])


def test_changed_design_regenerates(smoke_design_path, tmp_path):
    """A design with another simulation seed regenerates its files and records the new hash."""
    assert _run(_args(smoke_design_path, tmp_path, "--dose", "1000")).exit_code == 0
    path = tmp_path / "phase_c" / "dose_1000" / "patched_train.npz"
    old = path.read_bytes()
    raw = json.loads(smoke_design_path.read_text())
    raw["seeds"]["simulation"] = 7
    changed = tmp_path / "design.json"
    changed.write_text(json.dumps(raw))
    result = _run(_args(changed, tmp_path, "--dose", "1000"))
    assert result.exit_code == 0 and "up to date" not in result.stdout
    assert path.read_bytes() != old
    index = manifests.read_json(tmp_path / "phase_c" / INDEX_NAME, "dataset_index")
    from ptydose.core.design import load_design

    assert index["design_hash"] == load_design(changed).design_hash


def test_generator_code_change_regenerates(smoke_design_path, tmp_path, monkeypatch):
    """Freshness follows the generator's code, not a version constant: another code hash regenerates."""
    from ptydose.core import synthetic

    assert _run(_args(smoke_design_path, tmp_path, "--dose", "1000")).exit_code == 0
    index = manifests.read_json(tmp_path / "phase_c" / INDEX_NAME, "dataset_index")
    assert index["generator_code_hash"] == synthetic.generator_code_hash()
    path = tmp_path / "phase_c" / "dose_1000" / "patched_train.npz"
    inode = path.stat().st_ino
    assert "up to date" in _run(_args(smoke_design_path, tmp_path, "--dose", "1000")).stdout
    monkeypatch.setattr(synthetic, "generator_code_hash", lambda: "f" * 64)  # as if physics.py had changed
    result = _run(_args(smoke_design_path, tmp_path, "--dose", "1000"))
    assert result.exit_code == 0 and "up to date" not in result.stdout
    assert path.stat().st_ino != inode
    assert manifests.read_json(tmp_path / "phase_c" / INDEX_NAME, "dataset_index")["generator_code_hash"] == "f" * 64


def test_generator_code_hash_changes_when_generator_source_changes(repo_root, tmp_path):
    """Two copies of the package differing by one line of physics.py give two code hashes; a file
    outside the generator (summary.py) does not count."""
    import shutil
    import subprocess
    import sys

    def code_hash(edit: str | None) -> str:
        site = tmp_path / (edit or "same")
        shutil.copytree(repo_root / "tools", site / "ptydose", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(repo_root / "schemas", site / "ptydose" / "schemas")
        if edit:
            with open(site / "ptydose" / "core" / f"{edit}.py", "a") as handle:
                handle.write("\n# an edit\n")
        probe = "from ptydose.core.synthetic import generator_code_hash; print(generator_code_hash())"
        result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                                env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    same = code_hash(None)
    assert same == code_hash("summary")
    assert same != code_hash("physics")


def test_unknown_dose_is_a_one_line_error(smoke_design_path, tmp_path):
    """--dose not in the design: exit 1, one line naming the design and its doses, nothing written."""
    result = _run(_args(smoke_design_path, tmp_path, "--dose", "5"))
    assert result.exit_code == 1
    assert result.output == f"Error: {smoke_design_path}: doses: 5 is not a dose of the design (doses: 1000, 100000)\n"
    assert not (tmp_path / "phase_c").exists()


def test_missing_design_is_a_one_line_error(tmp_path):
    """A missing design file: exit 1, one line naming it."""
    result = _run(_args(tmp_path / "nope.json", tmp_path))
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'nope.json'}: design file not found\n"


def test_missing_required_option_is_a_usage_error(smoke_design_path):
    """Without --phase-d-root: usage error, exit 2."""
    result = _run(["--design", str(smoke_design_path), "--phase-c-root", "/tmp/x"])
    assert result.exit_code == 2 and "--phase-d-root" in result.output


def test_json_output(smoke_design_path, tmp_path):
    """--json prints the result: generated doses, positions and one entry per file."""
    result = _run(_args(smoke_design_path, tmp_path, "--dose", "1000", "--json"))
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["generated_doses"] == [1000] and doc["up_to_date_doses"] == []
    assert doc["n_positions"]["train"] + doc["n_positions"]["test"] == doc["n_positions"]["scan"]
    assert len(doc["files"]) == 6
    assert doc["probe"]["measured_diameter_px"] > 0


def test_write_is_atomic_when_it_fails(tmp_path):
    """An exception mid-write leaves the old file (or none) under the final name and no temp file."""
    good = {"a": np.arange(3)}
    bad = {"a": np.arange(3), "b": np.array([object()], dtype=object)}  # refused: needs pickle
    target = tmp_path / "out.npz"
    with pytest.raises(ValueError):
        write_npz_atomic(target, bad)
    assert list(tmp_path.iterdir()) == []
    write_npz_atomic(target, good)
    before = target.read_bytes()
    with pytest.raises(ValueError):
        write_npz_atomic(target, bad)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.npz"]
    with np.load(target, allow_pickle=False) as data:
        assert data["a"].tolist() == [0, 1, 2]


def test_console_script_runs(smoke_design_path, tmp_path, repo_root):
    """The installed console script runs as a real process: table on stdout, exit 0."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("gen-synthetic")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    proc = subprocess.run([str(exe), *_args(smoke_design_path, tmp_path, "--dose", "1000")],
                          capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "phase_c/dose_1000/patched_train.npz" in proc.stdout


def test_one_folder_for_both_roots_is_refused(smoke_design_path, tmp_path):
    """The two roots each hold a dataset_index.json: the same folder for both is a one-line error."""
    same = tmp_path / "data"
    result = CliRunner().invoke(cli, ["--design", str(smoke_design_path), "--phase-c-root", str(same),
                                      "--phase-d-root", str(same)])
    assert result.exit_code == 1
    assert "--phase-c-root and --phase-d-root must be different folders" in result.output
    assert not same.exists()


def test_replicates_add_a_column_and_a_folder_level(smoke_design_path, tmp_path):
    """A K = 2 design: the table gains a rep column, and replicate 1's files sit in dose_<d>/rep1/."""
    raw = json.loads(smoke_design_path.read_text())
    raw["replicates"] = 2
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    result = _run(_args(design, tmp_path, "--dose", "1000"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["dose", "rep", "view", "split", "n", "selection", "overlap", "nominal", "expected",
                                "measured", "file"]
    rows = [line.split() for line in lines[2:]]
    assert [(r[1], r[-1]) for r in rows if r[2] == "baseline"] == [
        ("0", "phase_c/dose_1000/patched_train.npz"), ("0", "phase_c/dose_1000/patched_test.npz"),
        ("1", "phase_c/dose_1000/rep1/patched_train.npz"), ("1", "phase_c/dose_1000/rep1/patched_test.npz")]
    assert len(rows) == 12
    assert sorted(str(p.relative_to(tmp_path / "phase_d")) for p in (tmp_path / "phase_d").rglob("rep1/*/*.npz")) == [
        f"dose_1000/rep1/{v}/{v}_{s}.npz" for v in ("dense", "sparse") for s in ("test", "train")]
