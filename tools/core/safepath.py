"""Reading and writing only where the user said: regular files, no links out of a root, no hangs.

Two families of hazards meet every tool that reads or writes a path it did not make itself:

* **Hangs and surprises on read.** A FIFO, a device or a folder where a file is expected blocks
  ``open()`` forever or fails deep inside a parser. :func:`read_regular_bytes` opens with
  ``O_NONBLOCK`` (a FIFO opens at once), checks with ``fstat`` that it holds a regular file, caps
  the size, and only then reads.
* **Escaping a root on write.** ``Path.resolve()`` on both sides of a containment check follows a
  symbolic link inside the root and calls the target "inside" when the link points anywhere. The
  rule here is simpler and strict: below the root the user named, no path component may be a
  symbolic link, and every existing intermediate component must be a real folder
  (:func:`check_confined`). The root itself may be a link: the user named it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import StudyError

#: JSON documents the tools exchange are kilobytes to a few megabytes; anything far larger is not one.
MAX_JSON_BYTES = 256 << 20


class PathError(StudyError):
    """A path is not what a tool may read or write (not a regular file, a link out of its root, ...)."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def file_kind_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` (links followed) is not a readable regular file, or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read ({exc.strerror or type(exc).__name__})"
    return None if stat.S_ISREG(mode) else f"is {_kind(mode)}, expected a regular file"


def read_regular_bytes(path: str | os.PathLike, what: str = "file", limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file, refusing FIFOs, devices, folders and files over ``limit`` bytes.

    Never blocks on a FIFO: the file is opened non-blocking and checked with ``fstat`` before any read.
    Raises :class:`PathError` ``path: what is wrong``.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PathError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise PathError(f"{path}: is a folder, expected a {what}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO with no writer, opened for reading: never on Linux, but be safe
            raise PathError(f"{path}: is a FIFO (named pipe), expected a {what}") from None
        raise PathError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathError(f"{path}: is {_kind(st.st_mode)}, expected a {what}")
        if st.st_size > limit:
            raise PathError(f"{path}: {st.st_size} bytes, more than the {limit} a {what} may have")
        os.set_blocking(fd, True)
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            block = os.read(fd, min(remaining, 1 << 20))
            if not block:
                break
            chunks.append(block)
            remaining -= len(block)
        data = b"".join(chunks)
        if len(data) > limit:
            raise PathError(f"{path}: more than the {limit} bytes a {what} may have")
        return data
    except OSError as exc:
        raise PathError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)


def check_confined(root: str | os.PathLike, target: str | os.PathLike, what: str = "path") -> Path:
    """``target`` as an absolute path below ``root`` with no symbolic link or non-folder on the way.

    ``target`` may be relative (to ``root``) or absolute; it is judged lexically (``..`` refused)
    and then component by component with ``lstat``: every existing component between ``root`` and
    ``target`` must be a real folder, and ``target`` itself, when it exists, must not be a link.
    Missing components are fine (they will be created as real folders). Raises :class:`PathError`.
    """
    root = Path(os.path.abspath(root))
    target = Path(target)
    full = target if target.is_absolute() else root / target
    if ".." in full.parts:
        raise PathError(f"{full}: {what} contains '..'")
    full = Path(os.path.abspath(full))
    try:
        rel = full.relative_to(root)
    except ValueError:
        raise PathError(f"{full}: {what} is outside {root}") from None
    current = root
    parts = rel.parts
    for i, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return full  # the rest does not exist yet
        except OSError as exc:
            raise PathError(f"{current}: cannot inspect ({exc.strerror or type(exc).__name__})") from None
        if stat.S_ISLNK(mode):
            raise PathError(f"{current}: is a symbolic link inside {root}; refusing to follow it "
                            f"(a {what} must stay inside its root)")
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(mode):
            raise PathError(f"{current}: is {_kind(mode)}, expected a folder")
    return full


def make_confined_dirs(root: str | os.PathLike, target: str | os.PathLike, what: str = "folder") -> Path:
    """Create ``target`` (and its parents) below ``root`` as real folders, refusing links on the way."""
    full = check_confined(root, target, what)
    root = Path(os.path.abspath(root))
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in full.relative_to(root).parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            mode = os.lstat(current).st_mode
            if stat.S_ISLNK(mode):
                raise PathError(f"{current}: is a symbolic link inside {root}; refusing to follow it") from None
            if not stat.S_ISDIR(mode):
                raise PathError(f"{current}: is {_kind(mode)}, expected a folder") from None
    return full


def open_append_nofollow(path: str | os.PathLike):
    """Open ``path`` for appending text without following a final symbolic link (a link is an error)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathError(f"{path}: is a symbolic link; refusing to write through it") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PathError(f"{path}: is {_kind(st.st_mode)}, expected a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8")


def _open_regular_nofollow(path: str | os.PathLike, flags: int, what: str) -> int:
    """A descriptor of ``path`` opened without following a final link and without blocking on a FIFO.

    Refuses (:class:`PathError`) a symbolic link, a folder, a FIFO, a device or a socket, checked with
    ``fstat`` on the opened descriptor (no window between the check and the use). Nothing is
    truncated here: a caller that needs an empty file truncates the descriptor it was handed.
    """
    flags |= getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathError(f"{path}: is a symbolic link; refusing to follow it (a {what} must be a regular "
                            "file)") from None
        if exc.errno == errno.EISDIR:
            raise PathError(f"{path}: is a folder, expected a {what}") from None
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise PathError(f"{path}: is a FIFO (named pipe), expected a {what}") from None
        raise PathError(f"{path}: cannot open the {what} ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise PathError(f"{path}: cannot inspect the {what} ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PathError(f"{path}: is {_kind(st.st_mode)}, expected a {what}")
    os.set_blocking(fd, True)
    return fd


def open_lock_file(path: str | os.PathLike, what: str = "lock file"):
    """Open (creating it) a lock file for ``flock``: read-only, never truncated, never through a link."""
    return os.fdopen(_open_regular_nofollow(path, os.O_RDONLY | os.O_CREAT, what), "rb")


def open_truncated_nofollow(path: str | os.PathLike, what: str = "file") -> int:
    """A write descriptor of ``path`` emptied for a fresh start; a link, FIFO, device or folder is refused.

    The file is truncated only after ``fstat`` showed a regular file (``O_TRUNC`` would act first).
    """
    fd = _open_regular_nofollow(path, os.O_WRONLY | os.O_CREAT, what)
    try:
        os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise PathError(f"{path}: cannot empty the {what} ({exc.strerror or type(exc).__name__})") from None
    return fd


def entry_problem(path: str | os.PathLike, what: str = "file") -> str | None:
    """Why an existing ``path`` (not followed) is not a regular file; None when it is one or is absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: cannot inspect the {what} ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"{path}: is a symbolic link; refusing to follow it (a {what} must be a regular file)"
    return f"{path}: is {_kind(mode)}, expected a {what}"


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` itself (a link is not followed) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def available_memory_bytes() -> int:
    """Memory a new allocation can count on now (Linux MemAvailable; else physical pages free)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse
