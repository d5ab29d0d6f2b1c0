"""The NPZ data contract, value rules (full mode), streamed in bands of patterns and object rows."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile

import numpy as np
import pytest

from builders import assert_error, errors_of, example_arrays
from ptydose.core import contract
from ptydose.core.contract import check_npz, streaming, write_contract_npz
from ptydose.core.contract.streaming import RowAccess
from ptydose.core.contract.structure import inspect
from ptydose.core.geometry import window_starts

N, M, n = 8, 20, 6


@pytest.fixture()
def valid():
    """Arrays and metadata of a tiny contract-valid dataset (fresh copy per test)."""
    return example_arrays(n=n, frame=N, object_size=M, dose=1000, seed=3)


# --- data integrity ---------------------------------------------------------------------------


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


# --- positions and windows --------------------------------------------------------------------


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


# --- values -----------------------------------------------------------------------------------


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
    assert_error(report, key, f"at index {contract.shape_text(index)}")
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


# --- streaming --------------------------------------------------------------------------------


def test_streamed_chunks_give_the_same_result(tmp_path, valid):
    """Chunks of one pattern find the same problems (with the same indices) as one big chunk."""
    arrays, meta = valid
    arrays["diffraction"][4, 1, 1] = -1.0
    arrays["Y"][5, 0, 0] = 0
    path = write_contract_npz(tmp_path / "k.npz", arrays, meta)
    one = check_npz(path, chunk_bytes=1)
    big = check_npz(path)
    assert one.lines() == big.lines() and len(big.errors) >= 2


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


def _write(path, arrays, meta, deflated: bool):
    """The contract layout (stored) or np.savez_compressed members (deflated)."""
    if not deflated:
        return write_contract_npz(path, arrays, meta)
    np.savez_compressed(path, **arrays, _metadata=np.array(json.dumps(meta)))
    return path


@pytest.fixture()
def shuffled():
    """60 patterns in random order over a 40 x 40 object: a band of patterns spans the whole object."""
    arrays, meta = example_arrays(n=60, frame=N, object_size=40, dose=1000, seed=5)
    order = np.random.default_rng(1).permutation(60)
    for key in ("diffraction", "Y", "xcoords", "ycoords", "scan_index"):
        arrays[key] = np.ascontiguousarray(arrays[key][order])
    return arrays, meta


@pytest.mark.parametrize("deflated", [False, True], ids=["stored", "deflated"])
@pytest.mark.parametrize("chunk_bytes", [1, 3000, contract.DEFAULT_CHUNK_BYTES])
def test_streamed_window_check_finds_the_one_changed_pattern(tmp_path, shuffled, deflated, chunk_bytes):
    """Y differing from its object window in one pattern is found, at its index, whatever the band size.

    With 1-byte bands every window is its own block (per-row reads); 3000 bytes groups a few
    windows per block; the default reads the whole object in one block. Deflated files are
    compared through the decompressed copy of objectGuess.
    """
    arrays, meta = shuffled
    assert check_npz(_write(tmp_path / "ok.npz", arrays, meta, deflated), chunk_bytes=chunk_bytes).lines() == []
    arrays["Y"][37, 3, 4] += np.complex64(1e-3)
    sy, sx = window_starts(np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1), (40, 40), N).T
    report = check_npz(_write(tmp_path / "y.npz", arrays, meta, deflated), chunk_bytes=chunk_bytes)
    assert errors_of(report) == [("Y", f"1 patches differ from their objectGuess window (expected Y[j] == "
                                       f"objectGuess[s_y:s_y+N, s_x:s_x+N] at the xcoords/ycoords window, found first "
                                       f"difference at pattern 37, window start (row {sy[37]}, column {sx[37]}))")]


@pytest.mark.parametrize("deflated", [False, True], ids=["stored", "deflated"])
def test_object_blocks_read_in_place_equal_the_array(tmp_path, deflated):
    """RowAccess blocks (whole-row reads within budget, per-row reads beyond) equal slices of objectGuess."""
    arrays, meta = example_arrays(n=6, frame=N, object_size=37, seed=2)
    path = _write(tmp_path / "o.npz", arrays, meta, deflated)
    obj = arrays["objectGuess"]
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path) as zf:
        report = contract.FileReport(path=path, size_bytes=path.stat().st_size)
        header = inspect(zf, report).headers["objectGuess"]
        assert header.compressed is deflated
        access = RowAccess(zf, path, header)
        bands = list(access.scan(5))
        np.testing.assert_array_equal(np.concatenate([band for _, band in bands]), obj)
        try:
            for budget in (1, 37 * 8 * 3, 1 << 20):
                for _ in range(20):
                    r0, c0 = rng.integers(0, 36, size=2)
                    r1, c1 = rng.integers(r0 + 1, 38), rng.integers(c0 + 1, 38)
                    np.testing.assert_array_equal(access.block(r0, r1, c0, c1, budget), obj[r0:r1, c0:c1])
        finally:
            access.close()


@pytest.mark.parametrize("deflated", [False, True], ids=["stored", "deflated"])
@pytest.mark.parametrize("chunk_bytes", [1, 500, contract.DEFAULT_CHUNK_BYTES])
def test_non_finite_object_found_in_row_bands(tmp_path, deflated, chunk_bytes):
    """objectGuess is checked band by band: the count and first index do not depend on the band size."""
    arrays, meta = example_arrays(n=6, frame=N, object_size=30, seed=4)
    arrays["objectGuess"][17, 3] = np.nan
    arrays["objectGuess"][29, 29] = np.inf
    report = check_npz(_write(tmp_path / "o.npz", arrays, meta, deflated), chunk_bytes=chunk_bytes)
    assert errors_of(report) == [("objectGuess", "2 non-finite values (expected all finite, found (nan+0j) at index "
                                                 "(17, 3))")]


def test_no_room_to_decompress_the_object(tmp_path, valid, monkeypatch):
    """A deflated objectGuess larger than the free temporary disk: one objectGuess error, the rest still checked."""
    arrays, meta = valid
    path = _write(tmp_path / "z.npz", arrays, meta, deflated=True)
    monkeypatch.setattr(streaming.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    arrays["diffraction"][0, 0, 0] = np.nan
    bad = _write(tmp_path / "zbad.npz", arrays, meta, deflated=True)
    for file, first in ((path, []), (bad, [("diffraction", "1 non-finite values")])):
        errors = [(key, message.split(" (expected")[0]) for key, message in errors_of(check_npz(file))]
        assert errors == first + [("objectGuess", f"too large to compare with Y: decompressing it needs "
                                                  f"{M * M * 8} bytes of temporary disk, 0 free in "
                                                  f"{tempfile.gettempdir()}")]
