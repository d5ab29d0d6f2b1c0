"""The NPZ data contract, reading and writing: safe loading, memory limits, the test-data builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import example_arrays

from ptydose.core import contract
from ptydose.core.contract import read_contract_npz, write_contract_npz
from ptydose.core.errors import ContractError

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
