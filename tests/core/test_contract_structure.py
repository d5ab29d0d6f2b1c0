"""The NPZ data contract, header-only rules: one failing and one passing fixture per rule."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from builders import assert_error, errors_of, example_arrays, npy_bytes, replace_member, save_raw
from ptydose.core import contract
from ptydose.core.contract import check_npz, read_contract_npz, write_contract_npz
from ptydose.core.errors import ContractError

N, M, n = 8, 20, 6


@pytest.fixture()
def valid():
    """Arrays and metadata of a tiny contract-valid dataset (fresh copy per test)."""
    return example_arrays(n=n, frame=N, object_size=M, dose=1000, seed=3)


# --- the passing baseline and the layout ------------------------------------------------------


def test_valid_file_passes_full_and_header_only(tmp_path, valid):
    """A contract file written by write_contract_npz has no errors and no warnings in both modes."""
    path = write_contract_npz(tmp_path / "ok.npz", *valid)
    for full in (True, False):
        report = check_npz(path, full=full)
        assert report.errors == [] and report.warnings == [], report.lines()
        assert report.n_images == n


def test_written_layout_is_byte_identical_and_uncompressed(tmp_path, valid):
    """Two writes of the same data give the same bytes; members are stored, in contract order."""
    a = write_contract_npz(tmp_path / "a.npz", *valid)
    b = write_contract_npz(tmp_path / "b.npz", *valid)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with zipfile.ZipFile(a) as zf:
        assert [i.filename for i in zf.infolist()] == [f"{k}.npy" for k in contract.CONTRACT]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    assert np.load(a, allow_pickle=False)["_metadata"].dtype.kind == "U"


# --- the archive and its members --------------------------------------------------------------


def test_empty_file(tmp_path, valid):
    """Empty file: one (file) error; a valid file is the passing fixture."""
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert errors_of(check_npz(path)) == [("(file)", "empty file (expected an NPZ zip archive, found 0 bytes)")]


def test_not_a_zip_and_bare_npy(tmp_path):
    """Text and a bare .npy are rejected as non-archives, described without quoting their bytes."""
    text = tmp_path / "text.npz"
    text.write_text("hello")
    assert errors_of(check_npz(text)) == [("(file)", "not a zip archive (expected an NPZ, found text)")]
    bare = tmp_path / "bare.npz"
    np.save(bare.open("wb"), np.zeros(3))
    assert_error(check_npz(bare), "(file)", "a bare .npy array, not an NPZ archive")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(tmp_path, valid, keep):
    """A zip cut short has no central directory: reported as truncated, quickly, without reading data."""
    path = write_contract_npz(tmp_path / "t.npz", *valid)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_error(check_npz(path), "(file)", "truncated or damaged zip archive")


def test_unreadable_path(tmp_path):
    """A folder or missing path given to check_npz is a (file) error, not an exception."""
    assert_error(check_npz(tmp_path), "(file)", "not a regular file")
    assert_error(check_npz(tmp_path / "missing.npz"), "(file)", "cannot read")


def test_duplicate_member(tmp_path, valid):
    """Two members with the same name are ambiguous: error on that key."""
    path = write_contract_npz(tmp_path / "d.npz", *valid)
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("xcoords.npy", zf.read("xcoords.npy"))
    assert_error(check_npz(path), "xcoords", "duplicate zip member (expected one 'xcoords.npy', found 2)")


def test_member_past_end_of_file(tmp_path, valid):
    """A central directory pointing past the end of the file is a truncated member."""
    path = write_contract_npz(tmp_path / "p.npz", *valid)
    data = bytearray(path.read_bytes())
    # Patch the central-directory compressed size of the first member (offset 20 in its record).
    first = data.find(b"PK\x01\x02")
    data[first + 20:first + 24] = (10**8).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert_error(check_npz(path, full=False), "diffraction", "member data runs past the end of the file")


def test_huge_declared_shape_is_reported_without_allocation(tmp_path, valid):
    """A header declaring 4e18 bytes over 16 real bytes: reported, never allocated (no MemoryError)."""
    path = write_contract_npz(tmp_path / "h.npz", *valid)
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 10**6)}
    replace_member(path, "diffraction.npy", npy_bytes(header, b"\0" * 16, version=(2, 0)))
    for full in (True, False):
        report = check_npz(path, full=full)
        assert_error(report, "diffraction", "header does not fit the member: shape (1000000000000, 1000000) of "
                                            "float32 declares 4000000000000000000 data bytes")
    with pytest.raises(ContractError, match="diffraction: header does not fit"):
        read_contract_npz(path)


def test_declared_size_smaller_than_member(tmp_path, valid):
    """Trailing bytes after the declared data also break the header/member agreement."""
    path = write_contract_npz(tmp_path / "s.npz", *valid)
    raw = npy_bytes({"descr": "<i8", "fortran_order": False, "shape": (n,)}, np.arange(n + 1).tobytes())
    replace_member(path, "scan_index.npy", raw)
    assert_error(check_npz(path, full=False), "scan_index", f"(expected {8 * n}, found {8 * (n + 1)})")


def test_bad_npy_magic_version_and_header(tmp_path, valid):
    """Members that are not .npy, have an unknown version, or a header that is not a literal."""
    path = write_contract_npz(tmp_path / "m.npz", *valid)
    replace_member(path, "probeGuess.npy", b"GIF89a not an array")
    replace_member(path, "Y.npy", b"\x93NUMPY\x09\x00" + b"\0" * 20)
    code = b"{'descr': __import__('os').getcwd(), 'fortran_order': False, 'shape': (1,)}"
    replace_member(path, "objectGuess.npy", b"\x93NUMPY\x01\x00" + len(code).to_bytes(2, "little") + code)
    report = check_npz(path)
    assert_error(report, "probeGuess", "not an .npy array (expected magic")
    assert_error(report, "Y", "unsupported .npy format version (expected 1.0, 2.0 or 3.0, found 9.0)")
    assert_error(report, "objectGuess", "unreadable .npy header (ValueError)")


def test_compressed_npz_is_read_through_deflate(tmp_path, valid):
    """np.savez_compressed files pass: headers come from the first decompressed bytes."""
    arrays, meta = valid
    path = tmp_path / "z.npz"
    np.savez_compressed(path, **arrays, _metadata=np.array(json.dumps(meta)))
    for full in (True, False):
        report = check_npz(path, full=full)
        assert report.ok and not report.warnings, report.lines()


def test_unexpected_members_are_warnings(tmp_path, valid):
    """Extra .npy keys and non-.npy members are warnings; the file stays valid."""
    path = write_contract_npz(tmp_path / "x.npz", *valid)
    replace_member(path, "", None, extra=[("README.txt", b"hi"), ("extra.npy", npy_bytes(
        {"descr": "<f8", "fortran_order": False, "shape": (1,)}, b"\0" * 8))])
    report = check_npz(path)
    assert report.ok
    assert [(p.key, p.message) for p in report.warnings] == [
        ("README.txt", "unexpected zip member, not an .npy array (ignored by the tools)"),
        ("extra", "unexpected key (ignored by the tools)"),
    ]


# --- pickle: never executed -------------------------------------------------------------------


class _Payload:
    """Unpickling this object opens (creates) a marker file: proof that pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(tmp_path: Path, valid, key: str, marker: Path) -> Path:
    arrays, meta = valid
    payload = np.array([_Payload(marker)], dtype=object)
    if key == "_metadata":
        return save_raw(tmp_path / "evil.npz", arrays, payload)
    return save_raw(tmp_path / "evil.npz", {**arrays, key: payload}, meta)


def test_payload_is_live(tmp_path, valid):
    """Control: loading the planted file with allow_pickle=True does create the marker."""
    marker = tmp_path / "control_marker"
    path = _plant(tmp_path, valid, "_metadata", marker)
    np.load(path, allow_pickle=True)["_metadata"]
    assert marker.exists()


@pytest.mark.parametrize("key", ["_metadata", "diffraction"])
def test_pickled_payload_is_reported_never_executed(tmp_path, valid, key):
    """Object arrays are reported from the header; the payload never runs (marker stays absent)."""
    marker = tmp_path / "marker"
    path = _plant(tmp_path, valid, key, marker)
    for full in (True, False):
        assert_error(check_npz(path, full=full), key, "object array: loading it would need pickle, so it was not loaded")
    with pytest.raises(ContractError, match=f"{key}: object array"):
        read_contract_npz(path)
    assert not marker.exists()


# --- per-key rules: presence, dtype, ndim, shapes ---------------------------------------------


@pytest.mark.parametrize("key", list(contract.CONTRACT))
def test_missing_key(tmp_path, valid, key):
    """Every contract key is required."""
    arrays, meta = valid
    arrays = {k: v for k, v in arrays.items() if k != key}
    path = save_raw(tmp_path / "m.npz", arrays, None if key == "_metadata" else meta)
    report = check_npz(path)
    spec = contract.CONTRACT[key]
    assert (key, f"missing required key (expected {spec.dtype_name} {spec.shape_text})") in errors_of(report)


@pytest.mark.parametrize("key,bad_dtype,found", [
    ("diffraction", np.float64, "float64"),
    ("Y", np.complex128, "complex128"),
    ("objectGuess", np.float32, "float32"),
    ("probeGuess", np.complex128, "complex128"),
    ("scan_index", np.int32, "int32"),
    ("xcoords", np.int64, "int64"),
])
def test_wrong_dtype(tmp_path, valid, key, bad_dtype, found):
    """Dtypes must be exactly the contract's."""
    arrays, meta = valid
    arrays[key] = arrays[key].real.astype(bad_dtype) if not np.issubdtype(bad_dtype, np.complexfloating) \
        else arrays[key].astype(bad_dtype)
    report = check_npz(save_raw(tmp_path / "d.npz", arrays, meta))
    expected = contract.CONTRACT[key].dtype_name
    assert (key, f"wrong dtype (expected {expected}, found {found})") in errors_of(report)


def test_float32_coordinates_are_a_warning(tmp_path, valid):
    """float32 coordinates (the original study's files) pass with a warning, failing only strictly."""
    arrays, meta = valid
    arrays["xcoords"] = arrays["xcoords"].astype(np.float32)
    report = check_npz(save_raw(tmp_path / "c.npz", arrays, meta))
    assert report.ok and not report.passes(strict=True)
    assert [(p.key, p.message) for p in report.warnings] == [
        ("xcoords", "float32 coordinates lose precision (expected float64, found float32)")]
    data = read_contract_npz(report.path)
    assert data["xcoords"].dtype == np.float64


def test_big_endian_and_fortran_order_are_warnings(tmp_path, valid):
    """Byte order and memory order do not change values: warnings, and values are still checked."""
    arrays, meta = valid
    arrays["diffraction"] = arrays["diffraction"].astype(">f4")
    arrays["Y"] = np.asfortranarray(arrays["Y"])
    report = check_npz(save_raw(tmp_path / "e.npz", arrays, meta))
    assert report.ok, report.lines()
    assert {p.key for p in report.warnings} == {"diffraction", "Y"}
    arrays["Y"] = np.asfortranarray(arrays["Y"] * 2)
    assert_error(check_npz(save_raw(tmp_path / "f.npz", arrays, meta)), "Y", "patches differ")


@pytest.mark.parametrize("key,shape,message", [
    ("probeGuess", (1, N, N), "wrong number of dimensions (expected 2: (N, N), found 3: (1, 8, 8))"),
    ("xcoords", (n, 1), "wrong number of dimensions (expected 1: (n,), found 2: (6, 1))"),
    ("diffraction", (n, N, N - 2), "frames not square (expected (n, N, N), found (6, 8, 6))"),
    ("diffraction", (0, N, N), "no data (expected n >= 1 patterns of N >= 1, found (0, 8, 8))"),
    ("Y", (n, N, N - 1), "shape does not match diffraction (expected (6, 8, 8), found (6, 8, 7))"),
    ("Y", (n - 1, N, N), "shape does not match diffraction (expected (6, 8, 8), found (5, 8, 8))"),
    ("probeGuess", (N + 2, N + 2), "frame size does not match diffraction (expected (8, 8), found (10, 10))"),
    ("objectGuess", (N - 1, 30), "too small for an N x N window (expected at least (8, 8), found (7, 30))"),
    ("xcoords", (n + 1,), "shape does not match diffraction (expected (6,), found (7,))"),
    ("ycoords", (n - 1,), "shape does not match diffraction (expected (6,), found (5,))"),
    ("scan_index", (n + 2,), "shape does not match diffraction (expected (6,), found (8,))"),
])
def test_shape_rules(tmp_path, valid, key, shape, message):
    """ndim and shape rules name the key with expected and found shapes (header-only suffices)."""
    arrays, meta = valid
    arrays[key] = np.zeros(shape, dtype=arrays[key].dtype)
    report = check_npz(save_raw(tmp_path / "s.npz", arrays, meta), full=False)
    assert (key, message) in errors_of(report)


# --- _metadata --------------------------------------------------------------------------------


def test_metadata_must_be_a_unicode_string(tmp_path, valid):
    """A bytes string or a 1-d array is not a 0-d unicode string."""
    arrays, meta = valid
    for value, found in [(np.array(json.dumps(meta).encode()), "dtype |S"), (np.array([json.dumps(meta)]), "shape (1,)")]:
        report = check_npz(save_raw(tmp_path / "m.npz", arrays, value))
        assert_error(report, "_metadata", "not a 0-d unicode string (expected np.array(json_text)")
        assert_error(report, "_metadata", found)


def test_metadata_must_be_json(tmp_path, valid):
    """Text that is not JSON names line and column."""
    arrays, _ = valid
    report = check_npz(save_raw(tmp_path / "j.npz", arrays, np.array("{'dose': 1}")))
    assert errors_of(report) == [
        ("_metadata", "not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)")]


@pytest.mark.parametrize("change,key,fragment", [
    (lambda m: m.update(dose="1000"), "_metadata/dose", "'1000' is not of type 'integer'"),
    (lambda m: m.update(split="validation"), "_metadata/split", "'validation' is not one of ['train', 'test']"),
    (lambda m: m.update(colour="blue"), "_metadata", "Additional properties are not allowed ('colour' was unexpected)"),
    (lambda m: m["selection"].update(extra=1), "_metadata/selection", "Additional properties are not allowed"),
    (lambda m: m["seeds"].pop("grouping"), "_metadata/seeds", "'grouping' is a required property"),
    (lambda m: m["probe"].pop("measured_diameter_px"), "_metadata/probe", "'measured_diameter_px' is a required property"),
    (lambda m: m.update(schema_version="2.0"), "_metadata/schema_version", "'1.0' was expected"),
])
def test_metadata_schema(tmp_path, valid, change, key, fragment):
    """Schema violations are reported as _metadata/<json path>: message."""
    arrays, meta = valid
    change(meta)
    assert_error(check_npz(write_contract_npz(tmp_path / "s.npz", arrays, meta), full=False), key, fragment)


def test_metadata_free_form_parts_pass(tmp_path, valid):
    """probe/object/scan accept extra model keys; measured_overlap may be null."""
    arrays, meta = valid
    meta["probe"]["defocus_phase_rad"] = 3.0
    meta["object"]["feature_size_px"] = 2.0
    meta["scan"]["jitter_px"] = 0.5
    meta["selection"]["measured_overlap"] = None
    assert check_npz(write_contract_npz(tmp_path / "p.npz", arrays, meta)).ok


@pytest.mark.parametrize("change,key,message", [
    (lambda m: m.update(n_images=7), "_metadata/n_images",
     "does not match the data (expected 6 = diffraction.shape[0], found 7)"),
    (lambda m: m["selection"].update(n_accepted=5), "_metadata/selection/n_accepted",
     "does not match the data (expected 6 = diffraction.shape[0], found 5)"),
    (lambda m: m.update(dose=2000), "_metadata/amplitude_scale", "not sqrt(dose)/N (expected 5.59016994, found 3.95284708)"),
    (lambda m: m.update(position_origin=[10.0, 9.5]), "_metadata/position_origin",
     "not round(M/2) - 0.5 of objectGuess (20, 20) (expected [9.5, 9.5], found [10.0, 9.5])"),
])
def test_metadata_agrees_with_the_arrays(tmp_path, valid, change, key, message):
    """n_images, n_accepted, amplitude_scale = sqrt(dose)/N and the position origin match the data."""
    arrays, meta = valid
    change(meta)
    assert (key, message) in errors_of(check_npz(write_contract_npz(tmp_path / "a.npz", arrays, meta), full=False))
