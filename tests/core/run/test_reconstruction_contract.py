"""The reconstruction contract: what an external method's output NPZ must be, each violation one exact line."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptydose.core.errors import ContractError
from ptydose.core.run.engines.command import PLACEHOLDERS
from ptydose.core.run.engines.reconstruction_contract import (
    METADATA_FIELDS,
    OUTPUT_KEYS,
    ReconstructionFrame,
    check_reconstruction_npz,
    read_reconstruction_npz,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
FRAME = ReconstructionFrame(object_shape=(12, 14), probe_size=4, n_positions=5, num_epochs=3)


def valid_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "object": (rng.normal(size=(12, 14)) + 1j * rng.normal(size=(12, 14))).astype(np.complex64),
        "probe": np.ones((4, 4), np.complex128),
        "positions_x_px": np.arange(5, dtype=np.float64),
        "positions_y_px": np.arange(5, dtype=np.float32),
        "loss_epochs": np.array([0, 1, 2, 3], np.int32),
        "loss_values": np.array([4.0, 3.0, 2.0, 1.0]),
        "_metadata": np.array(json.dumps({"method": "m", "method_version": "1", "reconstruction_s": 0.5,
                                          "parameters": {"a": 1}, "notes": ""})),
    }


def write(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def test_a_valid_reconstruction_loads_with_contract_dtypes(tmp_path):
    """Every key, dtypes within the accepted ones: loaded as complex64 / float64 / int64, metadata parsed."""
    rec = read_reconstruction_npz(write(tmp_path / "r.npz", valid_arrays()), FRAME)
    assert rec.object.dtype == np.complex64 and rec.object.shape == (12, 14)
    assert rec.probe.dtype == np.complex64
    assert rec.positions_y_px.dtype == np.float64 and rec.loss_epochs.dtype == np.int64
    np.testing.assert_array_equal(rec.object, valid_arrays()["object"])
    assert rec.metadata["parameters"] == {"a": 1} and rec.warnings == []


def test_only_the_object_is_required(tmp_path):
    """An NPZ with the object alone passes; the optional parts come back as None."""
    rec = read_reconstruction_npz(write(tmp_path / "r.npz", {"object": np.ones((12, 14), np.complex64)}), FRAME)
    assert (rec.probe, rec.positions_x_px, rec.loss_epochs, rec.metadata) == (None, None, None, {})


def _pickled(arrays: dict) -> dict:
    arrays["probe"] = np.array([{"x": 1}], dtype=object)
    return arrays


CASES = [
    ("missing object", lambda a: {k: v for k, v in a.items() if k != "object"},
     ["object: missing required key (expected complex64 or complex128 (M, M'))"]),
    ("real object", lambda a: {**a, "object": np.ones((12, 14), np.float32)},
     ["object: wrong dtype (expected complex64 or complex128, found float32)"]),
    ("object of another frame", lambda a: {**a, "object": np.ones((14, 12), np.complex64)},
     ["object: wrong shape (expected (M, M') = (12, 14), found (14, 12))"]),
    ("object with modes", lambda a: {**a, "object": np.ones((1, 12, 14), np.complex64)},
     ["object: wrong number of dimensions (expected 2: (M, M'), found 3: (1, 12, 14))"]),
    ("NaN in the object", lambda a: {**a, "object": np.where(np.arange(168).reshape(12, 14) == 20, np.nan, 1)
                                     .astype(np.complex64)},
     ["object: not finite (expected finite values, found 1 NaN or inf, first at (1, 6))"]),
    ("probe of another size", lambda a: {**a, "probe": np.ones((8, 8), np.complex64)},
     ["probe: wrong shape (expected (N, N) = (4, 4), found (8, 8))"]),
    ("pickled probe", _pickled,
     [("probe: object array: loading it would need pickle, so it was not loaded (expected a numeric dtype, "
       "found dtype object '|O')")]),
    ("positions for other scans", lambda a: {**a, "positions_x_px": np.zeros(6), "positions_y_px": np.zeros(6)},
     ["positions_x_px: wrong shape (expected (n,) = (5,), found (6,))",
      "positions_y_px: wrong shape (expected (n,) = (5,), found (6,))"]),
    ("one coordinate only", lambda a: {k: v for k, v in a.items() if k != "positions_y_px"},
     ["positions_y_px: missing (expected together with positions_x_px, or neither)"]),
    ("infinite position", lambda a: {**a, "positions_x_px": np.array([0, 1, np.inf, 3, 4.0])},
     ["positions_x_px: not finite (expected finite values, found 1 NaN or inf, first at (2,))"]),
    ("integer positions", lambda a: {**a, "positions_x_px": np.arange(5)},
     ["positions_x_px: wrong dtype (expected float32 or float64, found int64)"]),
    ("losses without epochs", lambda a: {k: v for k, v in a.items() if k != "loss_epochs"},
     ["loss_epochs: missing (expected together with loss_values, or neither)"]),
    ("float epochs", lambda a: {**a, "loss_epochs": np.arange(4.0)},
     ["loss_epochs: wrong dtype (expected an integer dtype, found float64)"]),
    ("more losses than epochs", lambda a: {**a, "loss_epochs": np.arange(5), "loss_values": np.ones(5)},
     ["loss_epochs: more entries than epochs (expected at most 4 for epochs 0..3, found 5)",
      "loss_values: more entries than epochs (expected at most 4 for epochs 0..3, found 5)"]),
    ("lengths differ", lambda a: {**a, "loss_values": np.ones(3)},
     ["loss_values: length differs from loss_epochs (expected 4, found 3)"]),
    ("epochs out of order", lambda a: {**a, "loss_epochs": np.array([0, 2, 2, 3])},
     ["loss_epochs: not strictly increasing (expected each epoch once, in order, found 2 then 2 at index 2)"]),
    ("epoch past the job", lambda a: {**a, "loss_epochs": np.array([1, 2, 3, 9])},
     ["loss_epochs: outside the job's epochs (expected 0 <= epoch <= 3, found 1..9)"]),
    ("NaN loss", lambda a: {**a, "loss_values": np.array([1, np.nan, 1, 1])},
     ["loss_values: not finite (expected finite values, found 1 NaN or inf, first at (1,))"]),
    ("metadata not a string", lambda a: {**a, "_metadata": np.array([1, 2])},
     ["_metadata: not a 0-d unicode string (expected np.array(json_text), found dtype <i8 shape (2,))"]),
    ("metadata not JSON", lambda a: {**a, "_metadata": np.array("{method: 1}")},
     ["_metadata: not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)"]),
    ("metadata NaN", lambda a: {**a, "_metadata": np.array('{"reconstruction_s": NaN}')},
     ["_metadata: not valid JSON here (NaN is not a JSON number (expected finite numbers only))"]),
    ("metadata a list", lambda a: {**a, "_metadata": np.array("[1]")},
     ["_metadata: not a JSON object (expected {...}, found list)"]),
    ("metadata fields", lambda a: {**a, "_metadata": np.array(json.dumps(
        {"method": "", "reconstruction_s": -1, "parameters": [1], "notes": 3, "seed": 1}))},
     ["_metadata/method: expected a non-empty string: the method's name, found ''",
      ("_metadata/reconstruction_s: expected a finite number >= 0: seconds spent reconstructing (without start-up "
       "and I/O), found -1"),
      "_metadata/parameters: expected a JSON object: the method's settings, recorded as given, found list",
      "_metadata/notes: expected a string, found 3",
      "_metadata/seed: unknown field (expected one of method, method_version, reconstruction_s, parameters, notes)"]),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_violation_is_one_line_naming_the_key(tmp_path, change, expected):
    """A broken output gives exactly its problem lines, ``path: key: what (expected ..., found ...)``."""
    path = write(tmp_path / "r.npz", change(valid_arrays()))
    report, rec = check_reconstruction_npz(path, FRAME)
    assert rec is None
    assert report.lines() == [f"{path}: {line}" for line in expected]
    with pytest.raises(ContractError) as caught:
        read_reconstruction_npz(path, FRAME)
    assert str(caught.value).splitlines() == report.lines()


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "(file): empty file (expected an NPZ zip archive, found 0 bytes)"),
    (b"not an npz at all", "(file): not a zip archive (expected an NPZ, found text)"),
])
def test_files_that_are_not_npz(tmp_path, content, expected):
    """Empty and non-zip outputs are one (file) line each."""
    path = tmp_path / "r.npz"
    path.write_bytes(content)
    assert check_reconstruction_npz(path, FRAME)[0].lines() == [f"{path}: {expected}"]


def test_truncated_and_forged_members_are_refused_before_loading(tmp_path):
    """A truncated archive and a header declaring more data than its member holds are refused unread."""
    good = write(tmp_path / "good.npz", valid_arrays())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-200])
    lines = check_reconstruction_npz(cut, FRAME)[0].lines()
    assert lines and lines[0].startswith(f"{cut}: (file): truncated or damaged zip archive")
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w") as zf:
        header = b"{'descr': '<c8', 'fortran_order': False, 'shape': (12, 14), }"
        header += b" " * (117 - len(header)) + b"\n"
        zf.writestr("object.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16)
    assert check_reconstruction_npz(forged, FRAME)[0].lines() == [
        (f"{forged}: object: header does not fit the member: shape (12, 14) of complex64 declares 1344 data bytes "
         f"(expected 1344, found 16)")]


def test_unexpected_keys_and_foreign_members_are_warnings(tmp_path):
    """Extra arrays and non-.npy members do not fail the output; they are reported as warnings."""
    path = write(tmp_path / "r.npz", {**valid_arrays(), "checkpoint": np.zeros(2)})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("README.txt", "hello")
    rec = read_reconstruction_npz(path, FRAME)
    assert rec.warnings == [f"{path}: README.txt: warning: unexpected zip member, not an .npy array (ignored by the tools)",
                            f"{path}: checkpoint: warning: unexpected key (ignored)"]


def test_the_normative_page_names_every_key_field_and_placeholder():
    """docs/reconstruction_contract.md documents every output key, metadata field and argv placeholder."""
    text = (REPO_ROOT / "docs" / "reconstruction_contract.md").read_text()
    for name in [*OUTPUT_KEYS, *METADATA_FIELDS]:
        assert f"`{name}`" in text, name
    for name in [*PLACEHOLDERS, "design_dir"]:
        assert re.search(rf"`\{{{name}\}}`", text), name
