"""Manifest core: schema validation on write and read, atomic writes."""

from __future__ import annotations

import json
import os
from importlib import resources

import pytest

from ptydose.core.errors import ManifestError
from ptydose.core.manifests import SCHEMA_PACKAGE, load_schema, read_json, write_json, write_text_atomic


def test_every_schema_is_valid_2020_12_with_id_and_version():
    """Each schemas/*.schema.json is a valid 2020-12 schema with $id and a schema_version const."""
    names = sorted(p.name.removesuffix(".schema.json") for p in resources.files(SCHEMA_PACKAGE).iterdir()
                   if p.name.endswith(".schema.json"))
    assert "study_design" in names
    for name in names:
        schema = load_schema(name)
        assert schema["$schema"].endswith("2020-12/schema"), name
        assert schema["$id"] == f"https://dose-overlap-study.invalid/schemas/{name}.schema.json", name
        assert "const" in schema["properties"]["schema_version"], name
        assert schema.get("additionalProperties") is False, name


def test_write_then_read_round_trip(tmp_path, study_design_path):
    """A valid document written atomically reads back identical."""
    doc = json.loads(study_design_path.read_text())
    out = write_json(tmp_path / "sub" / "design.json", doc, "study_design")
    assert read_json(out, "study_design") == doc
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_invalid_document_is_refused_on_write_and_old_file_kept(tmp_path, study_design_path):
    """Writing an invalid document raises `file: json/path: message` and leaves the old file."""
    doc = json.loads(study_design_path.read_text())
    target = tmp_path / "design.json"
    write_json(target, doc, "study_design")
    before = target.read_bytes()
    doc["seeds"]["simulation"] = -1
    with pytest.raises(ManifestError) as info:
        write_json(target, doc, "study_design")
    assert str(info.value).startswith(f"{target}: seeds/simulation: ")
    assert target.read_bytes() == before


def test_invalid_document_is_refused_on_read(tmp_path):
    """Reading validates: a wrong document and broken JSON both name the file."""
    target = tmp_path / "m.json"
    target.write_text('{"schema_version": "1.0"}')
    with pytest.raises(ManifestError, match=r"m.json: \(root\): 'name' is a required property"):
        read_json(target, "study_design")
    target.write_text("{")
    with pytest.raises(ManifestError, match="m.json: not valid JSON"):
        read_json(target, "study_design")
    with pytest.raises(ManifestError, match="file not found"):
        read_json(tmp_path / "absent.json", "study_design")


def test_atomic_write_leaves_old_content_when_interrupted(tmp_path, monkeypatch):
    """If the process dies before the rename, the previous file is intact and no temp is left."""
    target = tmp_path / "x.json"
    write_text_atomic(target, "old\n")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    """Files written atomically are readable by others as umask allows, not 0600 like mkstemp's."""
    old = os.umask(0o022)
    try:
        target = write_text_atomic(tmp_path / "x.json", "{}")
        assert (target.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
