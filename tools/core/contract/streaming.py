"""Reading member data in bounded memory: bands of rows, and blocks of ``objectGuess`` in place.

:func:`member_chunks` streams an array in bands of rows through zipfile (which checks the CRC at
the end); :class:`RowAccess` reads any rectangle of a 2-D member at its file offset, so the
``Y == objectGuess window`` check never holds the object whole. Declared sizes have already been
checked against the file by :mod:`.reading`.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from .reading import LOCAL_HEADER_BYTES, MemberHeader
from .spec import MAX_WHOLE_READ_BYTES, ZIP_LOCAL_MAGIC

SPILL_RESERVE_BYTES = 256 << 20  # disk left free after decompressing objectGuess to a temporary file


class MemberReadError(Exception):
    """A member's data cannot be read within the stated bounds; the message is the problem text."""


class Rows(Protocol):
    """Row access to a 2-D member: streamed bands, then any rectangle (:class:`RowAccess`)."""

    unavailable: str | None
    row_bytes: int

    def scan(self, rows: int) -> Iterator[tuple[int, np.ndarray]]: ...

    def block(self, r0: int, r1: int, c0: int, c1: int, budget: int) -> np.ndarray: ...

    def close(self) -> None: ...


class Source(Protocol):
    """Where the value checks read arrays from: the archive, or arrays already in memory."""

    def array(self, key: str) -> np.ndarray: ...

    def chunks(self, key: str, rows: int) -> Iterator[tuple[int, np.ndarray]]: ...

    def rows(self, key: str) -> Rows: ...


def unreadable(exc: Exception) -> str:
    """The problem text of an exception raised while reading a member's data."""
    return str(exc) if isinstance(exc, MemberReadError) else f"data unreadable ({type(exc).__name__}: {exc})"


def chunk_rows(frame: int, itemsize: int, chunk_bytes: int) -> int:
    """Frames of ``frame x frame`` items per band of about ``chunk_bytes`` (at least one)."""
    return max(1, chunk_bytes // (frame * frame * itemsize))


def read_member_bytes(zf: zipfile.ZipFile, header: MemberHeader, limit: int = MAX_WHOLE_READ_BYTES) -> np.ndarray:
    """A whole member as an array (CRC checked), refused above ``limit`` bytes."""
    if header.data_bytes > limit:
        what = "Fortran-ordered and too large" if header.fortran_order else "too large"
        raise MemberReadError(f"{what} to check in bounded memory (expected at most {limit} bytes held whole"
                              f"{', or C order as np.save writes it' if header.fortran_order else ''}, "
                              f"found {header.data_bytes})")
    with zf.open(header.member) as stream:
        stream.read(header.header_bytes)
        data = stream.read(header.data_bytes)
        stream.read(1)  # reach EOF so zipfile verifies the CRC of the whole member
    if len(data) != header.data_bytes:
        raise ValueError(f"member data truncated (expected {header.data_bytes} bytes, found {len(data)})")
    order = "F" if header.fortran_order else "C"
    return np.frombuffer(data, dtype=header.dtype).reshape(header.shape, order=order)


def member_chunks(zf: zipfile.ZipFile, header: MemberHeader, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows of the array)`` in order, ``rows`` at a time (CRC checked at the end).

    A Fortran-ordered array cannot be cut by its first axis: it comes whole, within the
    :func:`read_member_bytes` limit.
    """
    if header.fortran_order or not header.shape:
        yield 0, read_member_bytes(zf, header)
        return
    row_bytes = header.row_bytes
    with zf.open(header.member) as stream:
        stream.read(header.header_bytes)
        for start in range(0, header.shape[0], rows):
            count = min(rows, header.shape[0] - start)
            data = stream.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"member data truncated at row {start} "
                                 f"(expected {count * row_bytes} bytes, found {len(data)})")
            yield start, np.frombuffer(data, dtype=header.dtype).reshape((count, *header.shape[1:]))
        stream.read(1)  # reach EOF so zipfile verifies the CRC of the whole member


class RowAccess:
    """Blocks of a 2-D member (``objectGuess``) read where they lie, never the whole array.

    :meth:`scan` streams the rows in bands (CRC checked); afterwards :meth:`block` reads any
    rectangle: a stored member in place (``pread`` on the archive), a deflated one from the
    anonymous temporary file :meth:`scan` decompressed it into.
    """

    def __init__(self, zf: zipfile.ZipFile, path: Path, header: MemberHeader):
        self.zf, self.path, self.header = zf, path, header
        self._file: IO[bytes] | None = None
        self._base = 0  # offset of element (0, 0) in self._file
        self._whole: np.ndarray | None = None  # a Fortran-ordered member, held whole (bounded)
        self.unavailable: str | None = None  # why block() cannot work (no room to decompress into)
        self.row_bytes = header.row_bytes

    def scan(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        h = self.header
        if h.fortran_order:
            self._whole = read_member_bytes(self.zf, h)
            yield 0, self._whole
            return
        spill = None
        if h.compressed:
            folder = tempfile.gettempdir()
            free = shutil.disk_usage(folder).free
            if h.data_bytes > free - SPILL_RESERVE_BYTES:
                self.unavailable = (f"too large to compare with Y: decompressing it needs {h.data_bytes} bytes of "
                                    f"temporary disk, {free} free in {folder} (expected it to fit: set TMPDIR to a "
                                    f"larger folder, or store the member uncompressed)")
            else:
                spill = tempfile.TemporaryFile()  # noqa: SIM115 - read by block() until close()
        try:
            for start, band in member_chunks(self.zf, h, rows):
                if spill is not None:
                    spill.write(band)
                yield start, band
            if spill is not None:
                spill.flush()
                self._file, self._base = spill, 0
            elif not h.compressed:
                self._file = open(self.path, "rb")  # noqa: SIM115 - read by block() until close()
                self._base = self._stored_data_offset(self._file)
        except BaseException:
            if spill is not None:
                spill.close()
            raise

    def _stored_data_offset(self, handle: IO[bytes]) -> int:
        local = os.pread(handle.fileno(), LOCAL_HEADER_BYTES, self.header.header_offset)
        if len(local) != LOCAL_HEADER_BYTES or local[:4] != ZIP_LOCAL_MAGIC:
            raise MemberReadError("damaged local zip header (expected a member record at its offset)")
        name_bytes, extra_bytes = struct.unpack("<HH", local[26:30])
        return self.header.header_offset + LOCAL_HEADER_BYTES + name_bytes + extra_bytes + self.header.header_bytes

    def _pread(self, nbytes: int, offset: int) -> bytes:
        data = os.pread(self._file.fileno(), nbytes, self._base + offset)
        if len(data) != nbytes:
            raise ValueError(f"member data truncated (expected {nbytes} bytes at {offset}, found {len(data)})")
        return data

    def block(self, r0: int, r1: int, c0: int, c1: int, budget: int) -> np.ndarray:
        """Rows ``r0:r1`` and columns ``c0:c1``: whole rows in one read when they fit ``budget``."""
        if self._whole is not None:
            return self._whole[r0:r1, c0:c1]
        if self._file is None:
            raise MemberReadError(self.unavailable or "not scanned (expected a complete scan before block reads)")
        dtype, cols = self.header.dtype, self.header.shape[1]
        row_bytes = self.header.row_bytes
        if c1 - c0 == cols or (r1 - r0) * row_bytes <= budget:
            data = self._pread((r1 - r0) * row_bytes, r0 * row_bytes)
            return np.frombuffer(data, dtype=dtype).reshape(r1 - r0, cols)[:, c0:c1]
        out = np.empty((r1 - r0, c1 - c0), dtype=dtype)
        for i, row in enumerate(range(r0, r1)):
            out[i] = np.frombuffer(self._pread((c1 - c0) * dtype.itemsize, row * row_bytes + c0 * dtype.itemsize), dtype)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
