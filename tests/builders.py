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


def design_variant(source: Path, tmp_path: Path, **changes) -> Path:
    """The design at ``source`` with top-level keys replaced (None removes one), written beside the test."""
    raw = json.loads(Path(source).read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = tmp_path / "design.json"
    path.write_text(json.dumps(raw))
    return path


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
        "design_name": "example", "design_hash": "0" * 64, "data_hash": "0" * 64, "dose": int(dose), "split": "train",
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
    """One zip member as it will be written: ``payload`` goes to disk as is (already compressed),
    followed by ``zeros`` zero bytes left as a hole (a sparse file: no disk, no memory)."""

    name: str
    payload: bytes
    method: int = zipfile.ZIP_STORED
    file_size: int | None = None  # declared uncompressed size (default: the bytes on disk)
    crc: int | None = None  # default: CRC-32 of the bytes on disk
    flags: int = 0
    zeros: int = 0


def deflate(data: bytes) -> bytes:
    """Raw deflate (no zlib header), as zip stores it."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def crc_with_zeros(prefix: bytes, zero_bytes: int, block: int = 1 << 20) -> int:
    crc, zeros = zlib.crc32(prefix), bytes(block)
    for _ in range(zero_bytes // block):
        crc = zlib.crc32(zeros, crc)
    return zlib.crc32(bytes(zero_bytes % block), crc)


def deflated_zeros(prefix: bytes, zero_bytes: int, block: int = 1 << 20) -> tuple[bytes, int]:
    """Raw deflate of ``prefix`` + ``zero_bytes`` zeros and its CRC-32, made without deflating them all.

    After a full flush deflate starts afresh, so each 1 MiB block of zeros compresses to the same
    bytes: one block is deflated and repeated (a deflate bomb in a fraction of a second).
    """
    assert zero_bytes % block == 0
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    assert piece == c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + piece * (zero_bytes // block) + c.flush(zlib.Z_FINISH), crc_with_zeros(prefix, zero_bytes, block)


def _zip64_fields(**values: int) -> tuple[dict[str, int], bytes]:
    """32-bit header fields (0xFFFFFFFF where a value overflows) and the zip64 extra holding those values."""
    fields, wide = {}, []
    for name, value in values.items():  # order: file size, compressed size, header offset (zip spec)
        fields[name] = min(0xFFFFFFFF, value)
        if value >= 0xFFFFFFFF:
            wide.append(value)
    extra = struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
    return fields, extra


def write_raw_zip(path: Path, members: list[RawMember]) -> Path:
    """A zip archive with exactly these records (zip64 fields and end records where sizes need them)."""
    central = bytearray()
    with open(path, "wb") as out:
        for m in members:
            name = m.name.encode()
            csize = len(m.payload) + m.zeros
            size = csize if m.file_size is None else m.file_size
            crc = (crc_with_zeros(m.payload, m.zeros) if m.zeros else zlib.crc32(m.payload)) if m.crc is None else m.crc
            offset = out.tell()
            local, local_extra = _zip64_fields(size=size, csize=csize)
            out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, m.flags, m.method, 0, 0x21, crc,
                                  local["csize"], local["size"], len(name), len(local_extra)) + name + local_extra)
            out.write(m.payload)
            out.seek(m.zeros, io.SEEK_CUR)
            cd, cd_extra = _zip64_fields(size=size, csize=csize, offset=offset)
            central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, m.flags, m.method, 0, 0x21, crc,
                                   cd["csize"], cd["size"], len(name), len(cd_extra), 0, 0, 0, 0o644 << 16,
                                   cd["offset"]) + name + cd_extra
        cd_offset = out.tell()
        out.write(central)
        if cd_offset >= 0xFFFFFFFF:
            record_offset = out.tell()
            out.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(members), len(members),
                                  len(central), cd_offset))
            out.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, record_offset, 1))
        out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                              min(cd_offset, 0xFFFFFFFF), 0))
    return path


def contract_members(arrays: dict[str, np.ndarray], metadata: dict, **replace: RawMember) -> list[RawMember]:
    """The stored members of a contract file in contract order, some replaced (by key)."""
    keys = ["diffraction", "Y", "objectGuess", "probeGuess", "xcoords", "ycoords", "scan_index"]
    members = {key: RawMember(f"{key}.npy", member_bytes(np.asarray(arrays[key]))) for key in keys}
    members["_metadata"] = RawMember("_metadata.npy", member_bytes(np.array(json.dumps(metadata))))
    members.update(replace)
    return list(members.values())


def sparse_files_supported(folder: Path) -> bool:
    """True when a file with a 64 MiB hole takes (almost) no disk here, so huge sparse members are safe."""
    probe = folder / ".sparse_probe"
    with open(probe, "wb") as handle:
        handle.seek(64 << 20)
        handle.write(b"\0")
    blocks = probe.stat().st_blocks
    probe.unlink()
    return blocks * 512 < (1 << 20)


# --- asserting on reports ---------------------------------------------------------------------------


def errors_of(report) -> list[tuple[str, str]]:
    return [(p.key, p.message) for p in report.errors]


def assert_error(report, key: str, fragment: str) -> None:
    assert any(p.key == key and fragment in p.message for p in report.errors), report.lines()
