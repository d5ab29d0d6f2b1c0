"""Crash-safe file output and hashing, shared by every tool.

A kill at any moment leaves the old file or the new one under the final name, never half of one:
everything is written to a temporary file in the same folder, fsync'ed, then renamed over the
target, and the folder is fsync'ed so the rename itself survives a power cut.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import IO

import numpy as np

from .safepath import open_lock_file

#: Zip member timestamp of every NPZ we write: the bytes then depend on the arrays alone.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def _current_umask() -> int:
    """The process umask (reading it means setting it; the tools write from one thread)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a write on an open file (a full disk, say) names no path: name the target
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> str:
    """Write ``arrays`` as an uncompressed NPZ (np.savez layout) atomically; return its sha256.

    Fixed member order, timestamps and permissions: the bytes depend only on the arrays. Never
    pickles (an object array raises ``ValueError``).
    """
    with streamed_npz(path) as npz:
        for key, value in arrays.items():
            npz.add(key, value)
    return npz.sha256


# ----------------------------------------------------------------------------------------------
# NPZ files written member by member
# ----------------------------------------------------------------------------------------------
def _member_info(key: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


class NpzMember:
    """One ``.npy`` member being streamed: its header is written first (it depends only on dtype
    and shape), then the rows in order. ``close`` refuses a member with missing rows."""

    def __init__(self, stream: IO[bytes], key: str, dtype: np.dtype, shape: tuple[int, ...]):
        self.key, self.dtype, self.shape = key, np.dtype(dtype), tuple(int(s) for s in shape)
        self._stream = stream
        self._row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
        self._expected = self._row_bytes * self.shape[0]
        self._written = 0
        # What np.lib.format.write_array writes for a C-ordered array (format 1.0 fits any shape here).
        np.lib.format.write_array_header_1_0(stream, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        """Append rows (shape ``(k, *shape[1:])``, the member's dtype exactly: no silent cast)."""
        if rows.dtype != self.dtype or rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.key}: rows of {rows.dtype} {rows.shape[1:]} do not fit a "
                             f"{self.dtype} {self.shape} member")
        if self._written + rows.nbytes > self._expected:
            raise ValueError(f"{self.key}: more rows than the {self.shape[0]} its header declares")
        if rows.size:
            self._stream.write(memoryview(np.ascontiguousarray(rows)).cast("B"))
        self._written += rows.nbytes

    def close(self) -> None:
        if self._written != self._expected:
            raise ValueError(f"{self.key}: {self._written // max(self._row_bytes, 1)} rows written, "
                             f"its header declares {self.shape[0]}")
        self._stream.close()


class NpzWriter:
    """The members of one NPZ, written one after another into an open binary file.

    Byte for byte the layout ``write_npz_atomic`` has always written: stored (uncompressed) zip64
    members with the fixed timestamp and permissions, each a ``.npy``. A zip member must be
    contiguous, so one member is open at a time; several files can be written side by side.
    """

    def __init__(self, handle: IO[bytes]):
        self._handle = handle
        self._zip = zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._stream: IO[bytes] | None = None
        self.sha256: str | None = None

    def _open(self, key: str) -> IO[bytes]:
        # zipfile itself refuses a second open member of the same file.
        self._stream = self._zip.open(_member_info(key), mode="w", force_zip64=True)
        return self._stream

    def discard(self) -> None:
        """Close the zip of a file being thrown away (else its finaliser writes to a closed file)."""
        try:
            if self._stream is not None:
                self._stream.close()
            self._zip.close()
        except (OSError, ValueError):
            pass

    def add(self, key: str, value) -> None:
        """A whole member at once (small arrays, or any array already in memory)."""
        with self._open(key) as stream:
            np.lib.format.write_array(stream, np.asanyarray(value), allow_pickle=False)

    def begin(self, key: str, dtype, shape: tuple[int, ...]) -> NpzMember:
        """Start a member whose rows come later (``write``, then ``close``)."""
        return NpzMember(self._open(key), key, dtype, shape)

    def finish(self) -> str:
        """Write the zip directory and return the file's sha256.

        The sha256 needs the file from its first byte, and that first member's local header holds
        the CRC-32 of all its rows, known only once they are written: the file is hashed here, read
        back (from the page cache) in one sequential pass.
        """
        self._zip.close()
        self._handle.flush()
        self._handle.seek(0)
        self.sha256 = hashlib.file_digest(self._handle, "sha256").hexdigest()
        return self.sha256


@contextmanager
def streamed_npz(path: str | os.PathLike) -> Iterator[NpzWriter]:
    """An NPZ written member by member under a temporary name, renamed to ``path`` when the block
    ends without an exception (``writer.sha256`` then holds its sha256); an exception or kill
    leaves the old file (or none) under the final name."""
    with atomic_output(path, "w+b") as handle:
        writer = NpzWriter(handle)
        try:
            yield writer
        except BaseException:
            writer.discard()
            raise
        writer.finish()


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed atomic write of ``path`` left beside it
    (``.<name>.<random>.tmp``); return what was removed. Only call it while no other process
    can be writing ``path``."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            if stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


@contextmanager
def exclusive_lock(path: str | os.PathLike, on_wait=None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; waits while
    another process holds it (``on_wait()`` is called once before waiting). The kernel releases
    it when the process dies, so a kill never leaves it taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never through a link, never blocking on a FIFO, never truncating: a lock file holds nothing.
    with open_lock_file(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
