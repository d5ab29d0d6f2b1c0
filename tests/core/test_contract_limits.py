"""Bounded memory: forged sizes, deflate bombs, encrypted and foreign members are one problem line each,
found before anything is allocated (measured in a child process)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from builders import (
    RawMember,
    contract_members,
    deflate,
    deflated_zeros,
    errors_of,
    example_arrays,
    member_bytes,
    npy_header,
    write_raw_zip,
)
from ptydose.core import contract
from ptydose.core.contract import check_npz, read_contract_npz
from ptydose.core.contract.streaming import MemberReadError, read_member_bytes
from ptydose.core.contract.structure import inspect
from ptydose.core.errors import ContractError

N, M, n = 8, 20, 6
HUGE = (120000, 120000)  # complex64: 115.2 GB declared
HUGE_BYTES = HUGE[0] * HUGE[1] * 8
BOMB = (16384, 8192)  # complex64 zeros: 1 GiB that deflate to ~1 MB
BOMB_BYTES = BOMB[0] * BOMB[1] * 8


@pytest.fixture()
def valid():
    """Arrays and metadata of a tiny contract-valid dataset (fresh copy per test)."""
    return example_arrays(n=n, frame=N, object_size=M, dose=1000, seed=3)


def _huge_stored_short() -> tuple[RawMember, str]:
    header = npy_header("<c8", HUGE)
    return (RawMember("objectGuess.npy", header + bytes(16)),
            f"header does not fit the member: shape (120000, 120000) of complex64 declares {HUGE_BYTES} data bytes "
            f"(expected {HUGE_BYTES}, found 16)")


def _huge_stored_forged_size() -> tuple[RawMember, str]:
    payload = npy_header("<c8", HUGE) + bytes(16)
    declared = len(payload) - 16 + HUGE_BYTES
    return (RawMember("objectGuess.npy", payload, file_size=declared),
            f"stored member sizes disagree (expected the declared size to equal the {len(payload)} bytes stored, "
            f"found {declared} declared)")


def _huge_deflated_forged_size() -> tuple[RawMember, str]:
    header = npy_header("<c8", HUGE)
    payload = deflate(header + bytes(16))
    declared = len(header) + HUGE_BYTES
    return (RawMember("objectGuess.npy", payload, zipfile.ZIP_DEFLATED, file_size=declared),
            f"declares more data than deflate can hold (expected at most 1032 x {len(payload)} compressed bytes, "
            f"found {declared} declared)")


def _deflate_bomb() -> tuple[RawMember, str]:
    header = npy_header("<c8", BOMB)
    payload, crc = deflated_zeros(header, BOMB_BYTES)
    declared = len(header) + BOMB_BYTES
    ratio = declared / len(payload)
    assert contract.MAX_COMPRESSION_RATIO < ratio <= contract.MAX_DEFLATE_RATIO  # a real, decodable bomb
    return (RawMember("objectGuess.npy", payload, zipfile.ZIP_DEFLATED, file_size=declared, crc=crc),
            f"compression ratio {ratio:.0f}:1 refused as a likely deflate bomb (expected at most 800:1 for a member "
            f"over 67108864 bytes, found {declared} bytes from {len(payload)})")


CRAFTED = {"huge_stored_short": _huge_stored_short, "huge_stored_forged_size": _huge_stored_forged_size,
           "huge_deflated_forged_size": _huge_deflated_forged_size, "deflate_bomb": _deflate_bomb}


def test_raw_zip_writer_makes_valid_files(tmp_path, valid):
    """Control: the byte-level zip writer's stored and deflated archives pass and load like np.savez files."""
    arrays, meta = valid
    stored = write_raw_zip(tmp_path / "stored.npz", contract_members(arrays, meta))
    deflated = write_raw_zip(tmp_path / "deflated.npz", [
        RawMember(m.name, deflate(m.payload), zipfile.ZIP_DEFLATED, file_size=len(m.payload), crc=zlib.crc32(m.payload))
        for m in contract_members(arrays, meta)])
    for path in (stored, deflated):
        report = check_npz(path)
        assert report.errors == [] and report.warnings == [], report.lines()
        data = read_contract_npz(path)
        for key in contract.ARRAY_KEYS:
            np.testing.assert_array_equal(data[key], arrays[key])


def test_deflate_bomb_builder_decodes_to_zeros():
    """Control: the repeated-block bomb is a genuine deflate stream of the prefix and zeros, CRC included."""
    payload, crc = deflated_zeros(b"head", 4 << 20)
    data = zlib.decompress(payload, -15)
    assert data[:4] == b"head" and len(data) == 4 + (4 << 20) and not any(data[4:])
    assert zlib.crc32(data) == crc


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_huge_object_is_one_problem(tmp_path, valid, case):
    """A small zip declaring a huge objectGuess: one objectGuess error in both modes; read_contract_npz refuses it."""
    member, message = CRAFTED[case]()
    path = write_raw_zip(tmp_path / f"{case}.npz", contract_members(*valid, objectGuess=member))
    assert path.stat().st_size < 2 << 20
    for full in (True, False):
        report = check_npz(path, full=full)
        assert errors_of(report) == [("objectGuess", message)] and report.warnings == []
    with pytest.raises(ContractError) as info:
        read_contract_npz(path)
    assert str(info.value) == f"{path}: objectGuess: {message}"


CHILD = """
import json, sys
from ptydose.core.contract import check_npz, read_contract_npz
from ptydose.core.errors import ContractError
out = []
for path in sys.argv[1:]:
    out.append(check_npz(path, full=True).lines())
    try:
        read_contract_npz(path)
    except ContractError as exc:
        out.append([str(exc)])
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"lines": out, "peak_rss_mb": peak_kb / 1024}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc (Linux)")
def test_crafted_files_never_allocate(tmp_path, valid):
    """A child process checks and loads every crafted file: each is refused, and its peak RSS stays below 500 MB.

    The child's baseline (python, numpy, jsonschema) is ~40-60 MB; the smallest allocation any of
    these files could trigger is the 1 GiB bomb (the others declare 115 GB), so 500 MB separates
    "never allocated" from any attempt with a wide margin on both sides. Peak RSS is the child's
    VmHWM: ru_maxrss would start from the forking parent's own high-water mark.
    """
    paths = []
    for case, make in sorted(CRAFTED.items()):
        member, _ = make()
        paths.append(write_raw_zip(tmp_path / f"{case}.npz", contract_members(*valid, objectGuess=member)))
    result = subprocess.run([sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    for path, (check_lines, load_lines) in zip(paths, zip(doc["lines"][::2], doc["lines"][1::2])):
        assert len(check_lines) == 1 and check_lines[0].startswith(f"{path}: objectGuess: ")
        assert load_lines == check_lines
    assert doc["peak_rss_mb"] < 500


def test_bare_npy_is_one_clean_line(tmp_path):
    """A bare .npy named .npz: exactly one (file) problem."""
    path = tmp_path / "bare.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((4, 4)))
    assert check_npz(path).lines() == [f"{path}: (file): a bare .npy array, not an NPZ archive "
                                       f"(expected a zip of .npy members)"]


def test_encrypted_member_is_one_problem(tmp_path, valid):
    """A member flagged encrypted is reported from the zip record, never opened (no password prompt, no traceback)."""
    arrays, meta = valid
    probe = member_bytes(arrays["probeGuess"])
    encrypted = RawMember("probeGuess.npy", bytes(12) + probe, file_size=len(probe), flags=0x1)
    path = write_raw_zip(tmp_path / "enc.npz", contract_members(arrays, meta, probeGuess=encrypted))
    for full in (True, False):
        assert errors_of(check_npz(path, full=full)) == [("probeGuess", "encrypted zip member (expected a plain member "
                                                          "as np.savez writes, found the encryption flag set)")]


@pytest.mark.parametrize("method,name", [(zipfile.ZIP_LZMA, "lzma"), (zipfile.ZIP_BZIP2, "bzip2"), (99, "unknown")])
def test_foreign_compression_method_is_one_problem(tmp_path, valid, method, name):
    """Only stored and deflate members (what numpy writes) are read; others are one line naming the method."""
    arrays, meta = valid
    member = RawMember("Y.npy", member_bytes(arrays["Y"]), method=method)
    path = write_raw_zip(tmp_path / "m.npz", contract_members(arrays, meta, Y=member))
    for full in (True, False):
        assert errors_of(check_npz(path, full=full)) == [(
            "Y", f"unsupported zip compression method (expected stored or deflate as np.savez and "
                 f"np.savez_compressed write, found method {method}: {name})")]


def test_forged_central_directory_size(tmp_path, valid):
    """An end record declaring a 2 MiB central directory is refused before zipfile parses it."""
    path = write_raw_zip(tmp_path / "cd.npz", contract_members(*valid))
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 12:end + 16] = (2 << 20).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert errors_of(check_npz(path)) == [("(file)", "zip central directory too large for an NPZ (expected at most "
                                                     "1048576 bytes, found 2097152 declared)")]


def test_whole_reads_are_bounded(tmp_path, valid):
    """Arrays read whole (coordinates, Fortran-ordered data) are refused above the limit, before reading."""
    arrays, meta = valid
    arrays["Y"] = np.asfortranarray(arrays["Y"])
    path = write_raw_zip(tmp_path / "f.npz", contract_members(arrays, meta))
    report = check_npz(path, full=False)
    with zipfile.ZipFile(path) as zf:
        header = inspect(zf, report).headers["Y"]
        assert header.fortran_order
        np.testing.assert_array_equal(read_member_bytes(zf, header, limit=header.data_bytes), arrays["Y"])
        with pytest.raises(MemberReadError) as info:
            read_member_bytes(zf, header, limit=header.data_bytes - 1)
    assert str(info.value) == (f"Fortran-ordered and too large to check in bounded memory (expected at most "
                               f"{header.data_bytes - 1} bytes held whole, or C order as np.save writes it, "
                               f"found {header.data_bytes})")


def _bytes_read() -> int:
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("rchar:"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="bytes read counted by /proc (Linux)")
@pytest.mark.parametrize("deflated", [False, True], ids=["stored", "deflated"])
def test_header_only_reads_no_array_data(tmp_path, deflated):
    """Header-only mode reads the zip directory, the .npy headers and _metadata: a few kB of a 25 MB file.

    Bytes read are the kernel's count for this process (rchar); zipfile reads at least 4 kB per
    member it opens, so 8 members cost ~40 kB plus the directory. Full mode reads every byte.
    """
    arrays, meta = example_arrays(n=2000, frame=32, object_size=200, seed=1)
    path = tmp_path / "h.npz"
    if deflated:
        np.savez_compressed(path, **arrays, _metadata=np.array(json.dumps(meta)))
    else:
        write_raw_zip(path, contract_members(arrays, meta))
    size = path.stat().st_size
    before = _bytes_read()
    assert check_npz(path, full=False).lines() == []
    header_only = _bytes_read() - before
    before = _bytes_read()
    assert check_npz(path, full=True).lines() == []
    full = _bytes_read() - before
    assert header_only < 128 << 10
    assert full >= size * (0.9 if not deflated else 0.99)
