"""JSON manifests: schema lookup, validation and atomic writes.

Every JSON file the tools hand to each other goes through :func:`write_json` (validated, then
written to a temporary file in the same folder, fsync'ed and renamed) and :func:`read_json`
(parsed, then validated). A kill at any moment leaves either the old or the new file.
Validation errors read ``file: json/path: message``.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from .errors import ManifestError
from .fileio import atomic_output
from .safepath import PathError, read_regular_bytes

SCHEMA_PACKAGE = "ptydose.schemas"  # schemas/ in the source tree, package data when installed


@cache
def load_schema(name: str) -> dict:
    """Return the schema ``schemas/<name>.schema.json`` (checked to be a valid 2020-12 schema)."""
    path = resources.files(SCHEMA_PACKAGE) / f"{name}.schema.json"
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: schema not found") from exc
    Draft202012Validator.check_schema(schema)
    return schema


def schema_version(name: str) -> str:
    """The ``schema_version`` a document written against schema ``name`` must carry."""
    return load_schema(name)["properties"]["schema_version"]["const"]


def _json_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return "/".join(parts) if parts else "(root)"


def validation_errors(doc: Any, schema_name: str) -> list[tuple[str, str]]:
    """All schema violations of ``doc`` as ``(json_path, message)`` pairs, sorted by path."""
    validator = Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [(_json_path(e), e.message) for e in errors]


def validate(doc: Any, schema_name: str, source: str | os.PathLike) -> None:
    """Raise :class:`ManifestError` ``source: json/path: message`` on the first violation."""
    errors = validation_errors(doc, schema_name)
    if errors:
        path, message = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"{source}: {path}: {message}{more}")


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths to plain JSON types."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    with atomic_output(path, "w") as handle:
        handle.write(text)
    return Path(path)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (expected finite numbers only)")


def parse_json(text: str, source: str | os.PathLike) -> Any:
    """Strict JSON: no NaN/Infinity; deep nesting and huge integers are errors; errors name ``source``.

    Raises :class:`ManifestError` ``source: not valid JSON (...)``.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ManifestError(f"{source}: not valid JSON here (nested too deeply)") from None
    except ValueError as exc:  # NaN/Infinity, integers past Python's digit limit
        raise ManifestError(f"{source}: not valid JSON here ({str(exc).splitlines()[0]})") from None


def dumps_strict(doc: Any, source: str | os.PathLike, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and Infinity (they are not JSON), naming the offending field."""
    try:
        return json.dumps(doc, allow_nan=False, **kwargs)
    except ValueError:
        where = _first_non_finite(doc) or "(root)"
        raise ManifestError(f"{source}: {where}: not a finite number (NaN or Infinity cannot be written as JSON)") from None


def _first_non_finite(value: Any, path: str = "") -> str | None:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return path or "(root)"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{path}/{key}" if path else str(key))
        if found:
            return found
    return None


def write_json(path: str | os.PathLike, doc: Any, schema_name: str) -> Path:
    """Validate ``doc`` against ``schema_name`` and write it atomically to ``path`` (finite numbers only)."""
    doc = to_jsonable(doc)
    text = dumps_strict(doc, path, indent=2, sort_keys=False) + "\n"
    validate(doc, schema_name, path)
    return write_text_atomic(path, text)


def read_text(path: str | os.PathLike, what: str = "JSON file") -> str:
    """A small text file's content: regular files only (never blocks on a FIFO), size-capped, UTF-8."""
    try:
        data = read_regular_bytes(path, what)
    except PathError as exc:
        raise ManifestError(str(exc)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start}): expected a {what}") from None


def read_json(path: str | os.PathLike, schema_name: str) -> Any:
    """Parse ``path`` and validate it against ``schema_name``; one-line errors name the file."""
    path = Path(path)
    doc = parse_json(read_text(path), path)
    validate(doc, schema_name, path)
    return doc
