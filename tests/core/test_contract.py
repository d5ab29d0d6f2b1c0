"""The NPZ data contract: one failing and one passing fixture per rule, safe reading, layout."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptydose.core import contract
from ptydose.core.contract import check_npz, example_arrays, read_contract_npz, write_contract_npz
from ptydose.core.errors import ContractError
from ptydose.core.geometry import window_starts

N, M, n = 8, 20, 6


@pytest.fixture()
def valid():
    """Arrays and metadata of a tiny contract-valid dataset (fresh copy per test)."""
    return example_arrays(n=n, frame=N, object_size=M, dose=1000, seed=3)


def save_raw(path: Path, arrays: dict, metadata, **extra) -> Path:
    """Write members exactly as given (no dtype casting), np.savez layout, like a foreign writer."""
    members = dict(arrays)
    if metadata is not None:
        members["_metadata"] = metadata if isinstance(metadata, np.ndarray) else np.array(json.dumps(metadata))
    members.update(extra)
    np.savez(path, **members)  # np.savez pickles object arrays: used to plant payloads
    return path


def replace_member(path: Path, name: str, data: bytes | None, extra: list[tuple[str, bytes]] = ()) -> Path:
    """Rewrite an NPZ with member ``name`` replaced by raw ``data`` (None: dropped) plus extra members."""
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for member, payload in members:
            if member != name:
                zf.writestr(member, payload)
            elif data is not None:
                zf.writestr(member, data)
        for member, payload in extra:
            zf.writestr(member, payload)
    return path


def npy_bytes(header: dict, payload: bytes = b"", version=(1, 0)) -> bytes:
    """An .npy member with an arbitrary (possibly lying) header."""
    buf = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + payload


def errors_of(report) -> list[tuple[str, str]]:
    return [(p.key, p.message) for p in report.errors]


def assert_error(report, key: str, fragment: str) -> None:
    assert any(p.key == key and fragment in p.message for p in report.errors), report.lines()


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


def test_example_counts_follow_the_ptychi_forward_model(valid):
    """Example data: counts = round((d*s)^2) are integers whose mean matches measured_mean_counts."""
    arrays, meta = valid
    counts = contract.counts_from_diffraction(arrays["diffraction"], meta["amplitude_scale"])
    # Exact: the counts are integers stored through float32 amplitudes well below 2^20.
    assert counts.sum(axis=(1, 2)).mean() == pytest.approx(meta["measured_mean_counts"], rel=0, abs=1e-9)
    # Poisson mean of sums over 6 patterns of ~dose counts: within 10 % of expectation (>4 sigma).
    assert meta["measured_mean_counts"] == pytest.approx(meta["expected_mean_counts"], rel=0.1)


def test_empty_file(tmp_path, valid):
    """Empty file: one (file) error; a valid file is the passing fixture."""
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert errors_of(check_npz(path)) == [("(file)", "empty file (expected an NPZ zip archive, found 0 bytes)")]


def test_not_a_zip_and_bare_npy(tmp_path):
    """Text and a bare .npy are rejected as non-archives with the leading bytes named."""
    text = tmp_path / "text.npz"
    text.write_text("hello")
    assert errors_of(check_npz(text)) == [("(file)", "not a zip archive (expected an NPZ, found leading bytes b'hello')")]
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


def test_corrupt_data_caught_in_full_mode_only(tmp_path):
    """A flipped data byte fails the CRC in full mode; header-only mode does not read that far."""
    # Y of 80 patterns is 40 kB: a header read touches only its first block (zipfile reads 4 kB).
    path = write_contract_npz(tmp_path / "c.npz", *example_arrays(n=80, frame=8, object_size=40))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("Y.npy")
    data[info.header_offset + 30 + len("Y.npy") + info.compress_size - 10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert check_npz(path, full=False).ok
    assert_error(check_npz(path, full=True), "Y", "data unreadable (BadZipFile: Bad CRC-32")


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


# --- pickle: never executed ---------------------------------------------------------------------


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


# --- per-key rules: presence, dtype, ndim, shapes ----------------------------------------------


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


def test_windows_must_stay_inside_the_object(tmp_path, valid):
    """A window past the edge fails; windows touching both edges exactly pass."""
    arrays, meta = valid
    half = (N - 1) / 2.0
    # Probe centres with window starts 0 and M - N (the extreme legal positions).
    arrays["ycoords"][:2] = [half, M - N + half]
    arrays["xcoords"][:2] = [M - N + half, half]
    sy, sx = window_starts(np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1), (M, M), N).T
    arrays["Y"] = np.stack([arrays["objectGuess"][a:a + N, b:b + N] for a, b in zip(sy, sx)])
    assert sy[:2].tolist() == [0, M - N] and sx[:2].tolist() == [M - N, 0]
    assert check_npz(write_contract_npz(tmp_path / "edge.npz", arrays, meta)).ok
    arrays["xcoords"][1] = half - 1.0  # start -1
    report = check_npz(write_contract_npz(tmp_path / "out.npz", arrays, meta))
    assert_error(report, "xcoords", "1 windows leave objectGuess (20, 20) (expected 0 <= start and start + 8 <= size "
                                    "per axis, found start (row 12, column -1) for pattern 1 at (y 15.5, x 2.5))")


def test_y_must_equal_the_object_windows(tmp_path, valid):
    """Y is the integer window of objectGuess at each position: a changed patch is named."""
    arrays, meta = valid
    arrays["Y"][4, 2, 3] += 0.5
    report = check_npz(write_contract_npz(tmp_path / "y.npz", arrays, meta))
    assert_error(report, "Y", "1 patches differ from their objectGuess window")
    assert_error(report, "Y", "found first difference at pattern 4")


# --- value rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key,index,value", [
    ("diffraction", (1, 2, 3), np.nan),
    ("Y", (0, 0, 0), np.inf),
    ("objectGuess", (5, 5), np.nan),
    ("probeGuess", (1, 1), complex(np.inf, 0)),
    ("xcoords", (2,), np.nan),
    ("ycoords", (0,), -np.inf),
])
def test_non_finite_values(tmp_path, valid, key, index, value):
    """Any NaN or infinity is an error naming the first index; header-only mode does not look."""
    arrays, meta = valid
    arrays[key][index] = value
    path = write_contract_npz(tmp_path / "f.npz", arrays, meta)
    report = check_npz(path)
    assert_error(report, key, "1 non-finite values (expected all finite, found")
    assert_error(report, key, f"at index {contract._shape_text(index)}")
    assert check_npz(path, full=False).ok


def test_negative_diffraction(tmp_path, valid):
    """diffraction < 0 fails; exact zeros (the boundary) pass."""
    arrays, meta = valid
    arrays["diffraction"][0, 0, 0] = 0.0  # zero counts: allowed
    meta["measured_mean_counts"] = float(
        contract.counts_from_diffraction(arrays["diffraction"], meta["amplitude_scale"]).sum(axis=(1, 2)).mean())
    assert check_npz(write_contract_npz(tmp_path / "zero.npz", arrays, meta)).ok
    arrays["diffraction"][2, 1, 1] = -arrays["diffraction"][2, 1, 1] - 1
    report = check_npz(write_contract_npz(tmp_path / "neg.npz", arrays, meta))
    assert_error(report, "diffraction", "1 negative values (expected >= 0, found")
    assert_error(report, "diffraction", "at index (2, 1, 1)")


def test_counts_must_be_integer_recoverable(tmp_path, valid):
    """(d*s)^2 off an integer by 0.1 % fails; float32-computed amplitudes (~3 ulp) pass."""
    arrays, meta = valid
    s = meta["amplitude_scale"]
    counts = contract.counts_from_diffraction(arrays["diffraction"], s)
    # A generator working in float32 throughout: sqrt and division rounded in float32 (<= 3u error).
    arrays["diffraction"] = np.sqrt(counts.astype(np.float32)) / np.float32(s)
    assert arrays["diffraction"].dtype == np.float32
    assert check_npz(write_contract_npz(tmp_path / "f32.npz", arrays, meta)).ok
    arrays["diffraction"] = (arrays["diffraction"] * np.float32(1.001)).astype(np.float32)
    report = check_npz(write_contract_npz(tmp_path / "off.npz", arrays, meta))
    assert_error(report, "diffraction", "counts not recoverable as integers")


def test_counts_above_float32_resolution_warn(tmp_path):
    """Counts above 2^20 cannot be proven integer from float32 amplitudes: a warning, not an error."""
    arrays, meta = example_arrays(n=n, frame=N, object_size=M, dose=10**8)
    assert contract.counts_from_diffraction(arrays["diffraction"], meta["amplitude_scale"]).max() > 2**20
    report = check_npz(write_contract_npz(tmp_path / "big.npz", arrays, meta))
    assert report.ok, report.lines()
    assert [p.key for p in report.warnings] == ["diffraction"]
    assert "values exceed 1048576 counts, where float32 amplitudes cannot prove integer counts" in report.warnings[0].message


def test_intensity_instead_of_amplitude(tmp_path, valid):
    """Raw counts stored as diffraction: non-integer (d*s)^2 and mean(d^2) far above 1."""
    arrays, meta = valid
    counts = contract.counts_from_diffraction(arrays["diffraction"], meta["amplitude_scale"])
    arrays["diffraction"] = counts.astype(np.float32)
    report = check_npz(write_contract_npz(tmp_path / "i.npz", arrays, meta))
    assert_error(report, "diffraction", "looks like unnormalised intensity, not amplitude / amplitude_scale "
                                        "(expected mean(diffraction^2) = mean transmission <= 1, found")


def test_raw_counts_without_amplitude_scale(tmp_path, valid):
    """Without amplitude_scale, integer-valued data with max > 1 are called raw counts."""
    arrays, meta = valid
    counts = contract.counts_from_diffraction(arrays["diffraction"], meta.pop("amplitude_scale"))
    # Whole numbers of small size (mean square < 4, so only the integer heuristic can see them).
    arrays["diffraction"] = np.rint(np.sqrt(counts)).astype(np.float32)
    report = check_npz(write_contract_npz(tmp_path / "r.npz", arrays, meta))
    assert_error(report, "_metadata", "'amplitude_scale' is a required property")
    assert_error(report, "diffraction", "looks like raw counts, not normalised amplitude")


def test_scan_index_rules(tmp_path, valid):
    """scan_index must be non-negative and distinct."""
    arrays, meta = valid
    arrays["scan_index"] = np.arange(n, dtype=np.int64)
    assert check_npz(write_contract_npz(tmp_path / "ok.npz", arrays, meta)).ok
    arrays["scan_index"][1] = -3
    arrays["scan_index"][2] = 0
    report = check_npz(write_contract_npz(tmp_path / "bad.npz", arrays, meta))
    assert_error(report, "scan_index", "1 negative indices (expected >= 0, found -3)")
    assert_error(report, "scan_index", "repeated exposures (expected 6 distinct indices, found 5)")


# --- _metadata -----------------------------------------------------------------------------------


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
    assert errors_of(report) == [("_metadata", "not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)")]


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
    (lambda m: m.update(n_images=7), "_metadata/n_images", "does not match the data (expected 6 = diffraction.shape[0], found 7)"),
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


def test_measured_mean_counts_match_the_data(tmp_path, valid):
    """measured_mean_counts must equal the recovered counts per pattern (full mode)."""
    arrays, meta = valid
    true = meta["measured_mean_counts"]
    meta["measured_mean_counts"] = true * 1.01
    path = write_contract_npz(tmp_path / "c.npz", arrays, meta)
    assert check_npz(path, full=False).ok
    assert errors_of(check_npz(path)) == [(
        "_metadata/measured_mean_counts",
        f"does not match the data (expected {true:.9g} = recovered counts per pattern, found {true * 1.01:.9g})")]


# --- reading and chunking ------------------------------------------------------------------------


def test_read_contract_npz_returns_arrays_and_metadata(tmp_path, valid):
    """read_contract_npz gives every array with the contract dtype and the parsed metadata."""
    arrays, meta = valid
    data = read_contract_npz(write_contract_npz(tmp_path / "r.npz", arrays, meta))
    assert set(data.arrays) == set(contract.ARRAY_KEYS)
    for key, spec in contract.CONTRACT.items():
        if spec.dtype is not None:
            assert data[key].dtype == spec.dtype
            np.testing.assert_array_equal(data[key], arrays[key])
    assert data.metadata == json.loads(json.dumps(meta))
    assert data.n_images == n and data.warnings == []
    np.testing.assert_array_equal(data.counts(), contract.counts_from_diffraction(arrays["diffraction"], meta["amplitude_scale"]))


def test_read_contract_npz_raises_first_problem_line(tmp_path, valid):
    """A bad value raises ContractError whose text is the first problem line."""
    arrays, meta = valid
    arrays["diffraction"][0, 0, 0] = np.nan
    path = write_contract_npz(tmp_path / "r.npz", arrays, meta)
    with pytest.raises(ContractError) as info:
        read_contract_npz(path)
    assert str(info.value).startswith(f"{path}: diffraction: 1 non-finite values")
    assert read_contract_npz(path, check_values=False).n_images == n


def test_streamed_chunks_give_the_same_result(tmp_path, valid):
    """Chunks of one pattern find the same problems (with the same indices) as one big chunk."""
    arrays, meta = valid
    arrays["diffraction"][4, 1, 1] = -1.0
    arrays["Y"][5, 0, 0] = 0
    path = write_contract_npz(tmp_path / "k.npz", arrays, meta)
    one = check_npz(path, chunk_bytes=1)
    big = check_npz(path)
    assert one.lines() == big.lines() and len(big.errors) >= 2


def test_find_npz_files(tmp_path, valid):
    """Folders are searched recursively and sorted; files named directly are kept; errors name the path."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ["a/b/z.npz", "a/y.npz", "a/notes.txt"]:
        (tmp_path / rel).write_bytes(b"")
    found = contract.find_npz_files([tmp_path / "a", tmp_path / "a" / "y.npz", tmp_path / "a" / "notes.txt"])
    assert found == [tmp_path / "a/b/z.npz", tmp_path / "a/y.npz", tmp_path / "a/notes.txt"]
    with pytest.raises(ContractError, match="no such file or folder"):
        contract.find_npz_files([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContractError, match="no .npz files under this folder"):
        contract.find_npz_files([tmp_path / "empty"])


def test_unshifted_diffraction_is_a_warning(tmp_path):
    """Patterns with DC left in the corner (no fftshift) pass with a warning that fails --strict."""
    arrays, meta = example_arrays(n=6, frame=16, object_size=40)
    good = check_npz(write_contract_npz(tmp_path / "good.npz", arrays, meta))
    assert good.ok and not good.warnings
    arrays["diffraction"] = np.fft.ifftshift(arrays["diffraction"], axes=(-2, -1))
    report = check_npz(write_contract_npz(tmp_path / "corner.npz", arrays, meta))
    assert report.ok and not report.passes(strict=True)
    assert [w.key for w in report.warnings] == ["diffraction"]
    assert "DC looks unshifted" in report.warnings[0].message
