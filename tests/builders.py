"""Test data: a tiny contract dataset made with the project's own forward model, and crafted zips.

Importable as ``builders`` because pytest puts the folder of ``tests/conftest.py`` on sys.path
(benchmarks add that folder themselves).
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptydose.core.geometry import position_origin
from ptydose.core.physics import ForwardModel, normalise_probe, object_windows


def example_arrays(n: int = 6, frame: int = 8, object_size: int = 20, dose: int = 1000,
                   seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """A tiny, physically consistent contract dataset: ``(arrays, metadata)``.

    A random-phase object, a Gaussian probe scaled to ``dose`` (``N^2 sum |P|^2 = dose``: the
    expected photons through free space), positions on a raster whose pty-chi positions are whole
    pixels, and counts Poisson-drawn from :class:`ForwardModel`'s expected intensities (pty-chi's
    forward model, already fft-shifted), stored as the contract says.
    """
    rng = np.random.default_rng(seed)
    shape = (object_size, object_size)
    obj = (np.exp(1j * rng.uniform(-0.5, 0.5, shape)) * rng.uniform(0.8, 1.0, shape)).astype(np.complex64)
    yy, xx = np.mgrid[:frame, :frame] - (frame - 1) / 2.0
    probe = normalise_probe(np.exp(-(xx**2 + yy**2) / (2 * (frame / 6.0) ** 2))) * math.sqrt(dose)
    origin = position_origin(shape)
    # Whole-pixel pty-chi positions p keep every window inside: window start = p + O - (N-1)/2.
    lo, hi = -origin[0] + (frame - 1) / 2.0, object_size - frame - origin[0] + (frame - 1) / 2.0
    steps = np.arange(math.ceil(lo), math.floor(hi) + 1)
    grid = [(y, x) for y in steps for x in steps]
    picks = rng.choice(len(grid), size=n, replace=len(grid) < n)
    coords = np.array([grid[i] for i in picks], dtype=np.float64) + origin
    expected = ForwardModel(probe, obj).intensities(coords).astype(np.float64)
    counts = rng.poisson(expected)
    scale = math.sqrt(dose) / frame
    arrays = {
        "diffraction": (np.sqrt(counts) / scale).astype(np.float32),
        "Y": object_windows(obj, coords, frame).copy(),
        "objectGuess": obj,
        "probeGuess": probe.astype(np.complex64),
        "xcoords": coords[:, 1].copy(),
        "ycoords": coords[:, 0].copy(),
        "scan_index": picks.astype(np.int64),
    }
    metadata = {
        "schema_version": "1.0", "generator": "example", "generator_version": "0",
        "design_name": "example", "design_hash": "0" * 64, "dose": int(dose), "split": "train",
        "view": "baseline", "n_images": n, "amplitude_scale": scale,
        "expected_mean_counts": float(expected.sum(axis=(1, 2)).mean()),
        "measured_mean_counts": float(counts.sum(axis=(1, 2)).mean()),
        "seeds": {"simulation": seed, "grouping": seed, "subsampling": seed}, "noise_seed": seed,
        "probe": {"model": "gaussian", "nominal_diameter_px": frame / 2.0, "measured_diameter_px": frame / 2.0},
        "object": {"model": "random_phase"}, "scan": {"pattern": "raster"},
        "selection": {"selection_strategy": "direct", "spacing_threshold": 0.0, "n_accepted": n,
                      "n_rejected": 0, "acceptance_rate": 1.0, "measured_overlap": None, "neighbours": 4},
        "object_pixel_size_m": 1e-8, "wavelength_m": 1.4e-10, "probe_diameter_px": frame / 2.0,
        "position_origin": origin.tolist(),
    }
    return arrays, metadata


# --- writing members as a foreign writer would ----------------------------------------------------


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


def npy_header(dtype: str, shape: tuple[int, ...], version=(1, 0)) -> bytes:
    """An .npy header (magic, version, length, dict) declaring any shape, true or not."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def npy_bytes(header: dict, payload: bytes = b"", version=(1, 0)) -> bytes:
    """An .npy member with an arbitrary (possibly lying) header."""
    buf = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + payload


def member_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


# --- zips written byte by byte: any sizes, methods and flags, true or forged ----------------------


@dataclass
class RawMember:
    """One zip member as it will be written: ``payload`` goes to disk as is (already compressed)."""

    name: str
    payload: bytes
    method: int = zipfile.ZIP_STORED
    file_size: int | None = None  # declared uncompressed size (default: len(payload))
    crc: int | None = None  # default: CRC-32 of the payload
    flags: int = 0


def deflate(data: bytes) -> bytes:
    """Raw deflate (no zlib header), as zip stores it."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def deflated_zeros(prefix: bytes, zero_bytes: int, block: int = 1 << 20) -> tuple[bytes, int]:
    """Raw deflate of ``prefix`` + ``zero_bytes`` zeros and its CRC-32, made without deflating them all.

    After a full flush deflate starts afresh, so each 1 MiB block of zeros compresses to the same
    bytes: one block is deflated and repeated (a deflate bomb in milliseconds).
    """
    assert zero_bytes % block == 0
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    assert piece == again
    tail = c.flush(zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    zero_block_crc = bytes(block)
    for _ in range(zero_bytes // block):
        crc = zlib.crc32(zero_block_crc, crc)
    return head + piece * (zero_bytes // block) + tail, crc


def write_raw_zip(path: Path, members: list[RawMember]) -> Path:
    """A zip archive with exactly these records (zip64 extra fields where sizes need them)."""
    out = bytearray()
    central = bytearray()
    for m in members:
        name = m.name.encode()
        size = len(m.payload) if m.file_size is None else m.file_size
        crc = zlib.crc32(m.payload) if m.crc is None else m.crc
        csize = len(m.payload)
        big = size >= 0xFFFFFFFF or csize >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, csize) if big else b""
        size32, csize32 = (0xFFFFFFFF, 0xFFFFFFFF) if big else (size, csize)
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45 if big else 20, m.flags, m.method, 0, 0x21,
                           crc, csize32, size32, len(name), len(extra)) + name + extra + m.payload
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45 if big else 20, 45 if big else 20, m.flags,
                               m.method, 0, 0x21, crc, csize32, size32, len(name), len(extra), 0, 0, 0, 0o644 << 16,
                               offset) + name + extra
    cd_offset = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), cd_offset, 0)
    path.write_bytes(bytes(out))
    return path


# --- asserting on reports ---------------------------------------------------------------------------


def errors_of(report) -> list[tuple[str, str]]:
    return [(p.key, p.message) for p in report.errors]


def assert_error(report, key: str, fragment: str) -> None:
    assert any(p.key == key and fragment in p.message for p in report.errors), report.lines()
