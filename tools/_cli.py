"""Shared CLI plumbing: version flag, verbosity, logging to stderr, one-line errors.

The CLI layer parses, calls one core function and prints. Core code raises
:class:`ptydose.core.errors.StudyError`; :func:`fail_on_study_error` turns it into a
``click.ClickException`` (exit 1, one line, no traceback). Click itself exits 2 on usage errors.
"""

from __future__ import annotations

import functools
import logging
import sys

import click

from . import __version__
from .core.errors import StudyError

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_JOBS_FAILED = 3

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def version_option(prog_name: str):
    return click.version_option(__version__, "--version", prog_name=prog_name, message="%(prog)s %(version)s")


def verbose_option(func):
    """``-v`` (info) / ``-vv`` (debug) logging on stderr; warnings only by default."""

    def callback(ctx, param, value):
        level = logging.WARNING if value == 0 else logging.INFO if value == 1 else logging.DEBUG
        configure_logging(level)
        return value

    return click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True,
                        callback=callback, help="More log output on stderr (-v info, -vv debug).")(func)


def configure_logging(level: int = logging.WARNING) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_study_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._study_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("tools").setLevel(level)


class StudyClickException(click.ClickException):
    exit_code = EXIT_BAD_INPUT


def os_error_line(exc: OSError) -> str:
    """``path: reason`` for a file-system error (a folder that cannot be made, a full disk, ...)."""
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename is not None:
        return f"{exc.filename}: cannot create a folder there ({reason.lower()}; is a parent a file?)"
    if exc.filename is not None:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {reason}"
    return f"{reason}: {exc}"


def fail_on_study_error(func):
    """Turn a core :class:`StudyError` or a file-system error into a one-line click error (exit 1)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StudyError as exc:
            raise StudyClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except OSError as exc:  # e.g. an output folder under a file, or no permission to write it
            raise StudyClickException(os_error_line(exc)) from None

    return wrapper
