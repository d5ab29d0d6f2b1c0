"""The NPZ data contract, reading and writing: safe loading, memory limits, the test-data builder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from builders import RawMember, contract_members, example_arrays, npy_header, sparse_files_supported, write_raw_zip
from ptydose.core import contract
from ptydose.core.contract import check_npz, read_contract_npz, write_contract_npz
from ptydose.core.errors import ContractError
from ptydose.core.geometry import position_origin
from ptydose.core.physics import ForwardModel, object_windows
from ptydose.core.safepath import available_memory_bytes

N, M, n = 8, 20, 6


@pytest.fixture()
def valid():
    """Arrays and metadata of a tiny contract-valid dataset (fresh copy per test)."""
    return example_arrays(n=n, frame=N, object_size=M, dose=1000, seed=3)


# --- the test-data builder --------------------------------------------------------------------


def test_example_counts_follow_the_ptychi_forward_model(valid):
    """Example data: counts = round((d*s)^2) are integers whose mean matches measured_mean_counts."""
    arrays, meta = valid
    counts = contract.counts_from_diffraction(arrays["diffraction"], meta["amplitude_scale"])
    # Exact: the counts are integers stored through float32 amplitudes well below 2^20.
    assert counts.sum(axis=(1, 2)).mean() == pytest.approx(meta["measured_mean_counts"], rel=0, abs=1e-9)
    # Poisson mean of sums over 6 patterns of ~dose counts: within 10 % of expectation (>4 sigma).
    assert meta["measured_mean_counts"] == pytest.approx(meta["expected_mean_counts"], rel=0.1)


# --- read_contract_npz ------------------------------------------------------------------------


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


def test_example_data_come_from_the_forward_model(valid):
    """The builder's probe carries the dose, its Y are object_windows, its expected counts ForwardModel's."""
    arrays, meta = valid
    probe = arrays["probeGuess"].astype(np.complex128)
    # sum |fft2(P)|^2 = N^2 sum |P|^2 = dose; the probe is stored as complex64 (relative error ~1e-7).
    assert (N * N * np.sum(np.abs(probe) ** 2)) == pytest.approx(meta["dose"], rel=1e-6)
    coords = np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1)
    np.testing.assert_array_equal(arrays["Y"], object_windows(arrays["objectGuess"], coords, N))
    expected = ForwardModel(probe, arrays["objectGuess"]).intensities(coords).astype(np.float64)
    # Same model on the complex64-stored probe: float32 intensities summed over 64 pixels, rel 1e-5.
    assert expected.sum(axis=(1, 2)).mean() == pytest.approx(meta["expected_mean_counts"], rel=1e-5)


# --- memory limits -------------------------------------------------------------------------------


def test_read_refuses_arrays_beyond_the_memory_limit(tmp_path, valid):
    """Declared sizes are compared with the memory limit before loading: one line naming the largest array."""
    arrays, meta = valid
    path = write_contract_npz(tmp_path / "m.npz", arrays, meta)
    total = sum(arrays[key].nbytes for key in contract.ARRAY_KEYS)
    with pytest.raises(ContractError) as info:
        read_contract_npz(path, check_values=False, memory_limit=total - 1)
    assert str(info.value) == (f"{path}: objectGuess: too large to load (expected the 7 arrays to fit in the "
                               f"{total - 1} bytes of memory available, found {total} bytes needed, "
                               f"{M * M * 8} bytes of it objectGuess)")
    assert read_contract_npz(path, check_values=False, memory_limit=total).n_images == n  # the boundary fits
    # Value checks need working memory on top of the arrays; a subset needs only its own bytes.
    with pytest.raises(ContractError, match="objectGuess: too large to load"):
        read_contract_npz(path, memory_limit=total)
    probe = read_contract_npz(path, check_values=False, keys=("probeGuess",), memory_limit=N * N * 8)
    np.testing.assert_array_equal(probe["probeGuess"], arrays["probeGuess"])


def test_read_refuses_a_stored_object_larger_than_memory(tmp_path, valid):
    """A structurally valid file whose stored objectGuess is twice the available memory (a sparse hole):
    header checks pass, metadata can be read, and loading it is refused before any allocation."""
    if not sparse_files_supported(tmp_path):
        pytest.skip("this filesystem has no sparse files: the test would write the whole object")
    arrays, meta = valid
    cols = 1 << 16
    rows = (2 * available_memory_bytes() + (1 << 30)) // (cols * 8) + 1
    meta["position_origin"] = position_origin((rows, cols)).tolist()
    # CRC 0: the data are never read; only the headers are.
    member = RawMember("objectGuess.npy", npy_header("<c8", (rows, cols)), zeros=rows * cols * 8, crc=0)
    path = write_raw_zip(tmp_path / "huge.npz", contract_members(arrays, meta, objectGuess=member))
    assert path.stat().st_size > 2 * available_memory_bytes() and path.stat().st_blocks * 512 < 1 << 20
    assert check_npz(path, full=False).lines() == []
    assert read_contract_npz(path, check_values=False, keys=()).metadata["n_images"] == n
    for kwargs in ({}, {"check_values": False, "keys": ("objectGuess",)}):
        with pytest.raises(ContractError) as info:
            read_contract_npz(path, **kwargs)
        message = str(info.value)
        assert message.startswith(f"{path}: objectGuess: too large to load (expected the ")
        assert f"{rows * cols * 8 / 2**30:.1f} GiB of it objectGuess)" in message
