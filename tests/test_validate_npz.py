"""validate-npz: exit codes, output lines, reports, folders, and safety on hostile files."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builders import RawMember, contract_members, deflated_zeros, example_arrays, member_bytes, npy_header, write_raw_zip
from ptydose import __version__
from ptydose.core import contract, manifests
from ptydose.validate_npz import cli


def run(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def good(tmp_path) -> Path:
    """A contract-valid file."""
    return contract.write_contract_npz(tmp_path / "data" / "good.npz", *example_arrays())


@pytest.fixture()
def mixed(tmp_path) -> Path:
    """A folder tree with two valid files, one with a warning, four bad ones and a non-NPZ file."""
    root = tmp_path / "mixed"
    arrays, meta = example_arrays()
    contract.write_contract_npz(root / "dose_1000" / "patched_train.npz", arrays, meta)
    contract.write_contract_npz(root / "dose_1000" / "dense" / "dense_train.npz", arrays, meta)
    f32 = dict(arrays, ycoords=arrays["ycoords"].astype(np.float32))
    np.savez(root / "float32_coords.npz", **f32, _metadata=np.array(json.dumps(meta)))
    (root / "empty.npz").write_bytes(b"")
    (root / "text.npz").write_text("not a zip")
    bad = dict(arrays, diffraction=arrays["diffraction"].copy())
    bad["diffraction"][1, 2, 3] = np.nan
    contract.write_contract_npz(root / "nonfinite.npz", bad, meta)
    np.savez(root / "no_meta.npz", **arrays)
    (root / "ignored.txt").write_text("not an npz")
    return root


def test_help_has_summary_and_example():
    """--help shows the one-line summary and an Example block with a real command line."""
    result = run("--help")
    assert result.exit_code == 0
    assert "Check NPZ files against the study's data contract (docs/data_contract.md).\n" in result.output
    assert "Example:\n    validate-npz tmp/study/phase_c tmp/study/phase_d\n" in result.output


def test_version():
    """--version prints the tool name and package version."""
    result = run("--version")
    assert result.exit_code == 0 and result.output == f"validate-npz {__version__}\n"


def test_valid_file_exit_0(good):
    """A valid file: OK line, summary, exit 0."""
    result = run(good)
    assert result.exit_code == 0
    assert result.output == f"OK {good} (n=6)\n1 files checked (full): 1 valid, 0 invalid\n"


def test_quiet_prints_nothing_when_valid(good):
    """-q prints only problems: nothing for a valid file."""
    result = run("-q", good)
    assert result.exit_code == 0 and result.output == ""


def test_usage_errors_exit_2(tmp_path):
    """No path, or a path that does not exist, is a usage error (exit 2)."""
    assert run().exit_code == 2
    result = run(tmp_path / "missing.npz")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_folder_without_npz_exit_1(tmp_path):
    """A folder holding no .npz is bad input: one line naming it, exit 1."""
    result = run(tmp_path)
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path}: no .npz files under this folder\n"


def test_mixed_folder(mixed):
    """Folders are searched recursively; each bad file gets its own lines; exit 1."""
    result = run("-q", mixed)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines == [
        f"{mixed}/empty.npz: (file): empty file (expected an NPZ zip archive, found 0 bytes)",
        f"{mixed}/float32_coords.npz: ycoords: warning: float32 coordinates lose precision (expected float64, found float32)",
        f"{mixed}/no_meta.npz: _metadata: missing required key (expected unicode string ())",
        f"{mixed}/nonfinite.npz: diffraction: 1 non-finite values (expected all finite, found nan at index (1, 2, 3))",
        f"{mixed}/text.npz: (file): not a zip archive (expected an NPZ, found text)",
    ]


def test_summary_and_strict(mixed):
    """Summary counts files; --strict turns the float32-coordinates warning into a failure."""
    normal = run(mixed)
    assert normal.output.splitlines()[-1] == "7 files checked (full): 3 valid, 4 invalid"
    strict = run("--strict", mixed)
    assert strict.output.splitlines()[-1] == "7 files checked (full, strict): 2 valid, 5 invalid"
    f32 = mixed / "float32_coords.npz"
    assert run(f32).exit_code == 0
    assert run("--strict", f32).exit_code == 1


def test_report_file_matches_schema(mixed, tmp_path):
    """--report writes a schema-valid JSON report with one entry per file and key/message problems."""
    report_path = tmp_path / "reports" / "validation.json"
    result = run("-q", "--report", report_path, mixed)
    assert result.exit_code == 1
    doc = manifests.read_json(report_path, "validation_report")
    assert manifests.validation_errors(doc, "validation_report") == []
    assert (doc["n_files"], doc["n_valid"], doc["n_invalid"], doc["ok"], doc["mode"]) == (7, 3, 4, False, "full")
    by_name = {Path(f["path"]).name: f for f in doc["files"]}
    assert by_name["empty.npz"] == {"path": str(mixed / "empty.npz"), "ok": False, "size_bytes": 0, "n_images": None,
                                    "errors": [{"key": "(file)",
                                                "message": "empty file (expected an NPZ zip archive, found 0 bytes)"}],
                                    "warnings": []}
    assert by_name["patched_train.npz"]["ok"] and by_name["patched_train.npz"]["n_images"] == 6
    assert by_name["float32_coords.npz"]["ok"] and by_name["float32_coords.npz"]["warnings"][0]["key"] == "ycoords"


def test_json_to_stdout_and_header_only(mixed):
    """--json prints only the report on stdout; --header-only misses value errors (a NaN)."""
    result = run("--json", "--header-only", mixed)
    doc = json.loads(result.stdout)
    assert manifests.validation_errors(doc, "validation_report") == []
    assert doc["mode"] == "header-only"
    by_name = {Path(f["path"]).name: f for f in doc["files"]}
    assert by_name["nonfinite.npz"]["ok"] is True  # values are not read in header-only mode
    assert result.exit_code == 1  # the structural failures remain


def _rewrite(path: Path, replace: dict[str, bytes]) -> Path:
    """Rewrite an NPZ with some members' raw bytes replaced."""
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, replace.get(name, data))
    return path


def test_hostile_files_subprocess_no_traceback_no_payload(tmp_path):
    """Real process on pickled, truncated, forged-shape files: exit 1, one line each, no traceback, no payload run."""
    marker = tmp_path / "PAYLOAD_RAN"
    arrays, meta = example_arrays()
    folder = tmp_path / "hostile"
    # The payload .npy is made in a child process so this test process never holds the object.
    subprocess.run(
        [sys.executable, "-c",
         "import numpy as np, sys\n"
         "class P:\n"
         "    def __reduce__(self): return (open, (sys.argv[1], 'w'))\n"
         "np.save(sys.argv[2], np.array([P()], dtype=object), allow_pickle=True)\n",
         str(marker), str(tmp_path / "payload.npy")], check=True)
    pickled = contract.write_contract_npz(folder / "pickled_metadata.npz", arrays, meta)
    _rewrite(pickled, {"_metadata.npy": (tmp_path / "payload.npy").read_bytes()})
    full = contract.write_contract_npz(folder / "truncated.npz", arrays, meta).read_bytes()
    (folder / "truncated.npz").write_bytes(full[: len(full) // 2])
    forged = contract.write_contract_npz(folder / "forged.npz", arrays, meta)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 64, 64), }".ljust(117) + "\n"
    _rewrite(forged, {"diffraction.npy": b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(8)})
    assert not marker.exists()

    exe = Path(sys.executable).with_name("validate-npz")
    result = subprocess.run([str(exe), "-q", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not marker.exists()
    lines = result.stdout.splitlines()
    assert f"{folder}/pickled_metadata.npz: _metadata: object array: loading it would need pickle, so it was not loaded " \
           f"(expected unicode string, found dtype object '|O')" in lines
    assert any(line.startswith(f"{folder}/truncated.npz: (file): truncated or damaged zip archive") for line in lines)
    assert any(line.startswith(f"{folder}/forged.npz: diffraction: header does not fit the member") for line in lines)


def test_crafted_members_subprocess_one_line_each(tmp_path):
    """Real process on a deflate bomb, an encrypted member, an lzma member and a bare .npy: exit 1, exactly one
    line per file, no traceback."""
    arrays, meta = example_arrays()
    folder = tmp_path / "crafted"
    folder.mkdir()
    header = npy_header("<c8", (16384, 8192))
    payload, crc = deflated_zeros(header, 16384 * 8192 * 8)
    declared = len(header) + 16384 * 8192 * 8
    bomb = RawMember("objectGuess.npy", payload, zipfile.ZIP_DEFLATED, file_size=declared, crc=crc)
    write_raw_zip(folder / "bomb.npz", contract_members(arrays, meta, objectGuess=bomb))
    probe = member_bytes(arrays["probeGuess"])
    encrypted = RawMember("probeGuess.npy", bytes(12) + probe, file_size=len(probe), flags=0x1)
    write_raw_zip(folder / "encrypted.npz", contract_members(arrays, meta, probeGuess=encrypted))
    lzma = RawMember("Y.npy", member_bytes(arrays["Y"]), method=zipfile.ZIP_LZMA)
    write_raw_zip(folder / "lzma.npz", contract_members(arrays, meta, Y=lzma))
    with open(folder / "bare.npz", "wb") as handle:
        np.save(handle, np.zeros(3))

    exe = Path(sys.executable).with_name("validate-npz")
    result = subprocess.run([str(exe), "-q", str(folder)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{folder}/bare.npz: (file): a bare .npy array, not an NPZ archive (expected a zip of .npy members)",
        f"{folder}/bomb.npz: objectGuess: compression ratio {declared / len(payload):.0f}:1 refused as a likely "
        f"deflate bomb (expected at most 800:1 for a member over 67108864 bytes, found {declared} bytes from "
        f"{len(payload)})",
        f"{folder}/encrypted.npz: probeGuess: encrypted zip member (expected a plain member as np.savez writes, "
        f"found the encryption flag set)",
        f"{folder}/lzma.npz: Y: unsupported zip compression method (expected stored or deflate as np.savez and "
        f"np.savez_compressed write, found method 14: lzma)",
    ]
