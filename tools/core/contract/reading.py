"""Reading an NPZ without trusting it: the zip directory and each member's ``.npy`` header.

Nothing is allocated from a declared size before that size has been checked against the file:
the central directory's size is bounded before zipfile parses it, and every member's declared
sizes must agree with its zip record (stored: the data bytes on disk; deflated: a ratio deflate
can reach and real data do reach). Nothing here ever unpickles: an object array is recognised
from its header's dtype. Array data are read by :mod:`.streaming`.
"""

from __future__ import annotations

import ast
import math
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from .spec import (
    BOMB_MIN_BYTES,
    FILE_KEY,
    MAX_CENTRAL_DIRECTORY_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_DEFLATE_RATIO,
    MAX_NPY_HEADER_BYTES,
    MEMBERS,
    NPY_MAGIC,
    ZIP_LOCAL_MAGIC,
    FileReport,
    shape_text,
)

EOCD_MAGIC, ZIP64_LOCATOR_MAGIC, ZIP64_EOCD_MAGIC = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
LOCAL_HEADER_BYTES = 30


class HeaderError(Exception):
    """A member's .npy header is unreadable; the message is the problem text."""


@dataclass(frozen=True)
class MemberHeader:
    """The ``.npy`` header of one zip member, read without touching the array data."""

    key: str
    member: str
    version: tuple[int, int]
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    header_bytes: int  # bytes before the data: magic, length field, header text
    data_bytes: int  # bytes after the header in the (uncompressed) member
    compressed: bool = False
    header_offset: int = 0  # of the member's local zip header in the archive

    @property
    def declared_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def _read_exact(stream, nbytes: int) -> bytes:
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise HeaderError(f"member ends inside the .npy header (expected {nbytes} more bytes, found {len(data)})")
    return data


def read_npy_header(stream, key: str, info: zipfile.ZipInfo) -> MemberHeader:
    """Parse magic, version and header dict from the start of a member stream (format 1.0-3.0)."""
    magic = _read_exact(stream, 8)
    if magic[:6] != NPY_MAGIC:
        raise HeaderError(f"not an .npy array (expected magic {NPY_MAGIC!r}, found {magic[:6]!r})")
    version = (magic[6], magic[7])
    if version == (1, 0):
        (length,) = struct.unpack("<H", _read_exact(stream, 2))
        prefix = 10
    elif version in ((2, 0), (3, 0)):
        (length,) = struct.unpack("<I", _read_exact(stream, 4))
        prefix = 12
    else:
        raise HeaderError(f"unsupported .npy format version (expected 1.0, 2.0 or 3.0, found {version[0]}.{version[1]})")
    if length > MAX_NPY_HEADER_BYTES:
        raise HeaderError(f".npy header too long (expected <= {MAX_NPY_HEADER_BYTES} bytes, found {length})")
    text_bytes = _read_exact(stream, length)
    try:
        text = text_bytes.decode("utf8" if version == (3, 0) else "latin1")
        # literal_eval evaluates literals only: no names, calls or imports can run.
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise HeaderError(f"unreadable .npy header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        found = sorted(map(str, header)) if isinstance(header, dict) else type(header).__name__
        raise HeaderError(f"malformed .npy header (expected keys descr, fortran_order, shape, found {found})")
    shape = header["shape"]
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise HeaderError(f"malformed .npy header (expected a shape of non-negative integers, found {shape!r})")
    if not isinstance(header["fortran_order"], bool):
        raise HeaderError(f"malformed .npy header (expected fortran_order True/False, found {header['fortran_order']!r})")
    try:
        # Building a dtype (even 'O') never unpickles anything; only loading object data would.
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception:
        raise HeaderError(f"unreadable dtype in .npy header (found descr {header['descr']!r})") from None
    header_bytes = prefix + length
    return MemberHeader(key=key, member=info.filename, version=version, dtype=dtype, shape=shape,
                        fortran_order=header["fortran_order"], header_bytes=header_bytes,
                        data_bytes=info.file_size - header_bytes, compressed=info.compress_type != zipfile.ZIP_STORED,
                        header_offset=info.header_offset)


# --- the archive ----------------------------------------------------------------------------------


def central_directory_size(handle: IO[bytes], size: int) -> int | None:
    """The size the end-of-central-directory record declares (zip64 too); None when there is none."""
    handle.seek(size - min(size, 22))
    tail = handle.read(22)  # the record without a comment, as numpy writes it
    if not tail.startswith(EOCD_MAGIC):
        tail_bytes = min(size, 22 + 65535)  # the record plus the longest comment
        handle.seek(size - tail_bytes)
        tail = handle.read(tail_bytes)
    at = tail.rfind(EOCD_MAGIC)
    if at < 0 or at + 22 > len(tail):
        return None
    (cd_size,) = struct.unpack("<I", tail[at + 12:at + 16])
    if cd_size == 0xFFFFFFFF and at >= 20 and tail[at - 20:at - 16] == ZIP64_LOCATOR_MAGIC:
        (record_offset,) = struct.unpack("<Q", tail[at - 12:at - 4])
        handle.seek(record_offset)
        record = handle.read(56)
        if len(record) == 56 and record[:4] == ZIP64_EOCD_MAGIC:
            (cd_size,) = struct.unpack("<Q", record[40:48])
    return cd_size


def open_zip(path: Path, report: FileReport) -> zipfile.ZipFile | None:
    """Open the archive, reporting unreadable, empty, non-zip, truncated and forged files."""
    try:
        st = path.stat()
    except OSError as exc:
        report.error(FILE_KEY, f"cannot read ({exc.strerror or exc})")
        return None
    if not path.is_file():
        report.error(FILE_KEY, "not a regular file (expected an NPZ zip archive)")
        return None
    report.size_bytes = st.st_size
    if st.st_size == 0:
        report.error(FILE_KEY, "empty file (expected an NPZ zip archive, found 0 bytes)")
        return None
    try:
        with open(path, "rb") as handle:
            lead = handle.read(8)
            cd_size = central_directory_size(handle, st.st_size)
    except OSError as exc:
        report.error(FILE_KEY, f"cannot read ({exc.strerror or exc})")
        return None
    if cd_size is not None and cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        report.error(FILE_KEY, f"zip central directory too large for an NPZ (expected at most "
                               f"{MAX_CENTRAL_DIRECTORY_BYTES} bytes, found {cd_size} declared)")
        return None
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, struct.error) as exc:
        if lead.startswith(NPY_MAGIC):
            report.error(FILE_KEY, "a bare .npy array, not an NPZ archive (expected a zip of .npy members)")
        elif lead.startswith(ZIP_LOCAL_MAGIC):
            report.error(FILE_KEY, f"truncated or damaged zip archive (expected a zip central directory, "
                                   f"found none readable: {exc})")
        else:
            # Never echo the bytes: the file may be anything a manifest pointed at (/etc/passwd, say).
            report.error(FILE_KEY, f"not a zip archive (expected an NPZ, found {_content_kind(lead)})")
        return None


def _content_kind(lead: bytes) -> str:
    """What a file that is not a zip looks like, in words (its bytes are never quoted)."""
    try:
        text = lead.decode("utf-8")
    except UnicodeDecodeError:
        return "other binary data"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "other binary data"


def member_size_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member's zip record cannot be read safely (checked before any byte is decompressed)."""
    if info.flag_bits & 0x1:
        return "encrypted zip member (expected a plain member as np.savez writes, found the encryption flag set)"
    method = info.compress_type
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        name = zipfile.compressor_names.get(method, "unknown")
        return (f"unsupported zip compression method (expected stored or deflate as np.savez and "
                f"np.savez_compressed write, found method {method}: {name})")
    if method == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            return (f"stored member sizes disagree (expected the declared size to equal the {info.compress_size} "
                    f"bytes stored, found {info.file_size} declared)")
        return None
    if info.file_size > MAX_DEFLATE_RATIO * info.compress_size:
        return (f"declares more data than deflate can hold (expected at most {MAX_DEFLATE_RATIO} x "
                f"{info.compress_size} compressed bytes, found {info.file_size} declared)")
    if info.file_size > BOMB_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
        return (f"compression ratio {info.file_size / info.compress_size:.0f}:1 refused as a likely deflate bomb "
                f"(expected at most {MAX_COMPRESSION_RATIO}:1 for a member over {BOMB_MIN_BYTES} bytes, found "
                f"{info.file_size} bytes from {info.compress_size})")
    return None


def read_member_headers(zf: zipfile.ZipFile, size: int, report: FileReport) -> dict[str, MemberHeader]:
    """Every ``.npy`` member's header whose declared size fits its zip record; problems reported."""
    infos = zf.infolist()
    counts = Counter(info.filename for info in infos)
    headers: dict[str, MemberHeader] = {}
    for name in sorted(name for name, count in counts.items() if count > 1):
        # Readers would silently pick one of them: the file is ambiguous.
        report.error(name.removesuffix(".npy"), f"duplicate zip member (expected one {name!r}, found {counts[name]})")
    for info in infos:
        name = info.filename
        if counts[name] > 1:
            continue
        if not name.endswith(".npy"):
            report.warn(name, "unexpected zip member, not an .npy array (ignored by the tools)")
            continue
        key = name[: -len(".npy")]
        if info.header_offset + info.compress_size > size:
            report.error(key, f"member data runs past the end of the file (truncated: expected "
                              f"{info.header_offset + info.compress_size} bytes, found {size})")
            continue
        problem = member_size_problem(info)
        if problem is not None:
            report.error(key, problem)
            continue
        try:
            with zf.open(info) as stream:
                # For a deflated member this decompresses only the first block or so.
                header = read_npy_header(stream, key, info)
        except HeaderError as exc:
            report.error(key, str(exc))
            continue
        except Exception as exc:  # damaged local header, bad deflate stream, ...
            report.error(key, f"cannot read zip member ({type(exc).__name__}: {exc})")
            continue
        if header.dtype.hasobject:
            expected = MEMBERS[key].dtype_name if key in MEMBERS else "a numeric dtype"
            report.error(key, f"object array: loading it would need pickle, so it was not loaded "
                              f"(expected {expected}, found dtype object {header.dtype.str!r})")
            continue
        if header.declared_bytes != header.data_bytes:
            report.error(key, f"header does not fit the member: shape {shape_text(header.shape)} of "
                              f"{header.dtype.name} declares {header.declared_bytes} data bytes "
                              f"(expected {header.declared_bytes}, found {header.data_bytes})")
            continue
        headers[key] = header
    return headers
