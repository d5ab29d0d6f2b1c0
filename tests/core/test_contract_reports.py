"""check_npz reports stay exactly what the single-module validator gave: one file per rule family, every
line compared whole (full mode, header-only, and 1-byte bands), against contract_reports.json.

The JSON was recorded with the pre-split ``tools/core/contract.py`` (commit 60328ee) on these
same files; the paths in it read ``<path>``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from builders import example_arrays, npy_bytes, replace_member, save_raw
from ptydose.core.contract import check_npz, write_contract_npz

RECORDED = Path(__file__).with_name("contract_reports.json")
MODES = {"full": {"full": True}, "header-only": {"full": False}, "full, 1-byte bands": {"full": True, "chunk_bytes": 1}}


def _valid():
    return example_arrays(n=6, frame=8, object_size=20, dose=1000, seed=3)


def _write(path: Path, change: Callable[[dict, dict], None] | None = None) -> Path:
    arrays, meta = _valid()
    if change is not None:
        change(arrays, meta)
    return write_contract_npz(path, arrays, meta)


def _raw(path: Path, change: Callable[[dict, dict], None]) -> Path:
    arrays, meta = _valid()
    change(arrays, meta)
    return save_raw(path, arrays, meta)


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _bare_npy(path: Path) -> Path:
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(3))
    return path


def _truncated(path: Path) -> Path:
    data = _write(path).read_bytes()
    return _bytes(path, data[: len(data) // 2])


def _duplicate(path: Path) -> Path:
    _write(path)
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("xcoords.npy", zf.read("xcoords.npy"))
    return path


def _forged_headers(path: Path) -> Path:
    _write(path)
    replace_member(path, "diffraction.npy", npy_bytes({"descr": "<f4", "fortran_order": False,
                                                       "shape": (10**12, 10**6)}, b"\0" * 16, version=(2, 0)))
    replace_member(path, "probeGuess.npy", b"GIF89a not an array")
    replace_member(path, "Y.npy", b"\x93NUMPY\x09\x00" + b"\0" * 20)
    code = b"{'descr': __import__('os').getcwd(), 'fortran_order': False, 'shape': (1,)}"
    return replace_member(path, "objectGuess.npy", b"\x93NUMPY\x01\x00" + len(code).to_bytes(2, "little") + code)


def _compressed(path: Path) -> Path:
    arrays, meta = _valid()
    np.savez_compressed(path, **arrays, _metadata=np.array(json.dumps(meta)))
    return path


def _extra_members(path: Path) -> Path:
    return replace_member(_write(path), "", None, extra=[("README.txt", b"hi"), ("extra.npy", npy_bytes(
        {"descr": "<f8", "fortran_order": False, "shape": (1,)}, b"\0" * 8))])


def _pickled_metadata(path: Path) -> Path:
    arrays, _ = _valid()
    return save_raw(path, arrays, np.array([{"not": "json"}], dtype=object))


def _corrupt_y(path: Path) -> Path:
    write_contract_npz(path, *example_arrays(n=80, frame=8, object_size=40))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("Y.npy")
    data[info.header_offset + 30 + len("Y.npy") + info.compress_size - 10] ^= 0xFF
    return _bytes(path, bytes(data))


def _set(**items):
    """A change that sets array elements: ``key=(index, value)``."""
    def change(arrays, meta):
        for key, (index, value) in items.items():
            arrays[key][index] = value
    return change


def _scale_diffraction(factor):
    def change(arrays, meta):
        arrays["diffraction"] = (arrays["diffraction"] * np.float32(factor)).astype(np.float32)
    return change


def _intensity(arrays, meta):
    counts = np.rint((arrays["diffraction"].astype(np.float64) * meta["amplitude_scale"]) ** 2)
    arrays["diffraction"] = counts.astype(np.float32)


def _raw_counts(arrays, meta):
    counts = np.rint((arrays["diffraction"].astype(np.float64) * meta.pop("amplitude_scale")) ** 2)
    arrays["diffraction"] = np.rint(np.sqrt(counts)).astype(np.float32)


def _wrong_dtypes(arrays, meta):
    arrays["diffraction"] = arrays["diffraction"].astype(np.float64)
    arrays["scan_index"] = arrays["scan_index"].astype(np.int32)
    arrays["xcoords"] = arrays["xcoords"].astype(np.float32)
    arrays["probeGuess"] = np.zeros((1, 8, 8), np.complex64)
    arrays["Y"] = np.zeros((6, 8, 7), np.complex64)
    del arrays["ycoords"]


def _byte_order(arrays, meta):
    arrays["diffraction"] = arrays["diffraction"].astype(">f4")
    arrays["Y"] = np.asfortranarray(arrays["Y"] * 2)


def _window_outside(arrays, meta):
    arrays["xcoords"][1] = 2.5


def _metadata(arrays, meta):
    meta.update(dose=2000, n_images=7, position_origin=[10.0, 9.5], split="validation", colour="blue",
                measured_mean_counts=meta["measured_mean_counts"] * 1.01)
    meta["selection"].update(n_accepted=5)


def _scan_index(arrays, meta):
    arrays["scan_index"][1], arrays["scan_index"][2] = -3, arrays["scan_index"][0]


def _unshifted(path: Path) -> Path:
    arrays, meta = example_arrays(n=6, frame=16, object_size=40)
    arrays["diffraction"] = np.fft.ifftshift(arrays["diffraction"], axes=(-2, -1))
    return write_contract_npz(path, arrays, meta)


CASES: dict[str, Callable[[Path], Path]] = {
    "valid": _write,
    "empty": lambda p: _bytes(p, b""),
    "text": lambda p: _bytes(p, b"hello"),
    "bare_npy": _bare_npy,
    "truncated": _truncated,
    "duplicate_member": _duplicate,
    "forged_headers": _forged_headers,
    "compressed": _compressed,
    "extra_members": _extra_members,
    "pickled_metadata": _pickled_metadata,
    "corrupt_y": _corrupt_y,
    "wrong_dtypes_and_shapes": lambda p: _raw(p, _wrong_dtypes),
    "byte_and_memory_order": lambda p: _raw(p, _byte_order),
    "non_finite": lambda p: _write(p, _set(diffraction=((1, 2, 3), np.nan), Y=((0, 0, 0), np.inf),
                                           objectGuess=((5, 5), np.nan), probeGuess=((1, 1), np.inf),
                                           xcoords=((2,), np.nan))),
    "negative": lambda p: _write(p, _set(diffraction=((2, 1, 1), -3.0))),
    "y_differs": lambda p: _write(p, _set(Y=((4, 2, 3), 0.5))),
    "window_outside": lambda p: _write(p, _window_outside),
    "counts_not_integer": lambda p: _write(p, _scale_diffraction(1.001)),
    "intensity": lambda p: _write(p, _intensity),
    "raw_counts": lambda p: _write(p, _raw_counts),
    "counts_too_large": lambda p: write_contract_npz(p, *example_arrays(n=6, frame=8, object_size=20, dose=10**8)),
    "scan_index": lambda p: _write(p, _scan_index),
    "metadata": lambda p: _write(p, _metadata),
    "unshifted": _unshifted,
}


def report_lines(path: Path) -> dict[str, list[str]]:
    """Each mode's lines with the file's path written ``<path>``."""
    return {mode: [line.replace(str(path), "<path>") for line in check_npz(path, **kwargs).lines()]
            for mode, kwargs in MODES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_lines_are_unchanged(tmp_path, case):
    """Every line of every mode equals the recorded one."""
    recorded = json.loads(RECORDED.read_text())
    assert sorted(recorded) == sorted(CASES)
    assert report_lines(CASES[case](tmp_path / f"{case}.npz")) == recorded[case]
