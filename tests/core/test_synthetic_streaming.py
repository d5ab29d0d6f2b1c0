"""gen-synthetic streamed to disk: today's bytes exactly, memory bounded by a batch, doses that
survive a kill, stale temporary files removed, one run per root at a time."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ptydose import __version__
from ptydose.core import manifests, synthetic
from ptydose.core.design import load_design
from ptydose.core.fileio import exclusive_lock, streamed_npz, write_npz_atomic
from ptydose.core.synthetic import (
    BATCH_SIZE,
    INDEX_NAME,
    LOCK_NAME,
    ExpectedIntensities,
    build_geometry,
    generate_study,
    rows_in_batch,
)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_sha256.json"


def _sha256s(base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*.npz"))}


def _golden(name: str) -> dict[str, str]:
    doc = json.loads(GOLDEN.read_text())
    assert doc["generator_version"] == __version__, (
        "the fixture was made with another tool version (it is inside every file): regenerate it "
        "only if the data are meant to change")
    return doc["designs"][name]


def _generate(design: Path, base: Path, **kwargs):
    return generate_study(design, base / "phase_c", base / "phase_d", progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# The promise: the shipped designs give exactly the files they always gave
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["smoke", "fly64_dose_overlap", "smoke_grid"])
def test_shipped_designs_reproduce_the_golden_files(repo_root, tmp_path, name):
    """Every file of the shipped designs has its recorded sha256: smoke and fly64 as recorded before
    streaming was introduced, smoke_grid (replicates, a target-overlap view) as recorded when added."""
    _generate(repo_root / "plans" / name / "design.json", tmp_path)
    assert _sha256s(tmp_path) == _golden(name)
    for kind in ("phase_c", "phase_d"):  # the index records what is on disk
        index = manifests.read_json(tmp_path / kind / INDEX_NAME, "dataset_index")
        assert {f"{kind}/{e['path']}": e["sha256"] for e in index["files"]} == {
            k: v for k, v in _golden(name).items() if k.startswith(kind)}


# ----------------------------------------------------------------------------------------------
# Streamed NPZ members
# ----------------------------------------------------------------------------------------------
def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "diffraction": rng.random((11, 4, 5), dtype=np.float32),
        "Y": (rng.random((11, 4, 5)) + 1j * rng.random((11, 4, 5))).astype(np.complex64),
        "scan_index": np.arange(11, dtype=np.int64),
        "_metadata": np.array(json.dumps({"a": 1})),
    }


def test_streamed_members_give_the_bytes_of_whole_arrays(tmp_path):
    """Rows streamed in uneven chunks (one empty) give the same bytes and sha256 as whole arrays."""
    arrays = _arrays()
    digest = write_npz_atomic(tmp_path / "whole.npz", arrays)
    with streamed_npz(tmp_path / "streamed.npz") as npz:
        for key in ("diffraction", "Y"):
            member = npz.begin(key, arrays[key].dtype, arrays[key].shape)
            for rows in (slice(0, 3), slice(3, 3), slice(3, 10), slice(10, 11)):
                member.write(arrays[key][rows])
            member.close()
        npz.add("scan_index", arrays["scan_index"])
        npz.add("_metadata", arrays["_metadata"])
    assert (tmp_path / "streamed.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    assert npz.sha256 == digest == hashlib.sha256((tmp_path / "whole.npz").read_bytes()).hexdigest()


@pytest.mark.parametrize("mistake", ["dtype", "too many rows", "too few rows"])
def test_a_member_that_does_not_match_its_header_is_refused(tmp_path, mistake):
    """Rows of another dtype, or more or fewer rows than the header declares, raise; nothing is
    left under the final name nor as a temporary file."""
    with pytest.raises(ValueError), streamed_npz(tmp_path / "bad.npz") as npz:
        member = npz.begin("diffraction", np.float32, (4, 2, 2))
        if mistake == "dtype":
            member.write(np.zeros((4, 2, 2), dtype=np.float64))
        elif mistake == "too many rows":
            member.write(np.zeros((3, 2, 2), dtype=np.float32))
            member.write(np.zeros((2, 2, 2), dtype=np.float32))
        member.close()
    assert list(tmp_path.iterdir()) == []


def test_rows_in_batch():
    """A file's ascending scan indices map to rows of a batch: a slice for a run, indices otherwise."""
    indices = np.array([0, 1, 2, 5, 7, 8, 9, 12])
    assert rows_in_batch(indices, slice(0, 4)) == slice(0, 3)
    assert rows_in_batch(indices, slice(7, 11)) == slice(0, 3)
    assert rows_in_batch(indices, slice(10, 12)) == slice(0, 0)
    assert rows_in_batch(indices, slice(3, 10)).tolist() == [2, 4, 5, 6]


def test_kept_forward_model_batches_read_back_exactly(smoke_design_path, tmp_path):
    """The unit-dose batches read back from the temporary file equal the forward model's, bit for
    bit, in the same batches; without a folder to keep them in, each pass recomputes them."""
    geometry = build_geometry(load_design(smoke_design_path))
    kept = ExpectedIntensities(geometry, tmp_path)
    try:
        first = [(sl, batch.copy()) for sl, batch in kept.batches()]
        second = list(kept.batches())
    finally:
        kept.close()
    assert [sl for sl, _ in first] == [sl for sl, _ in second]
    assert len(first) == -(-len(geometry.coords) // BATCH_SIZE)
    for (_, a), (_, b) in zip(first, second, strict=True):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    assert list(tmp_path.iterdir()) == []  # the file never had a name
    recomputed = ExpectedIntensities(geometry, None)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, recomputed.batches(), strict=True))


def test_memory_stays_at_a_few_batches(smoke_design_path, tmp_path):
    """Two doses of a 14 884-position scan: the peak of traced allocations (numpy's included) stays
    under half of ONE whole-scan diffraction member (61 MB), where holding any whole-scan array
    (expected intensities, diffraction, Y) would exceed it. Measured: about 15 MB."""
    raw = json.loads(smoke_design_path.read_text())
    raw["object"]["shape"] = [400, 400]
    raw["overlap_views"] = {"sparse": 0.2}
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    geometry = build_geometry(load_design(design))
    n_pos, n = len(geometry.coords), geometry.n
    whole_member = n_pos * n * n * 4
    assert n_pos == 14884
    tracemalloc.start()
    try:
        _generate(design, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole_member / 2, (peak, whole_member)
    with np.load(tmp_path / "out" / "phase_c" / "dose_100000" / "patched_test.npz", allow_pickle=False) as data:
        assert data["diffraction"].shape == (len(geometry.splits["test"]), n, n)


# ----------------------------------------------------------------------------------------------
# Kills: finished doses are kept, leftovers are removed
# ----------------------------------------------------------------------------------------------
def test_a_failure_in_the_second_dose_keeps_the_first(smoke_design_path, tmp_path, monkeypatch):
    """The first dose is indexed as soon as its files are in place: after a failure in the second,
    a rerun finds the first up to date and writes only the second, with the golden bytes."""
    original = synthetic.write_dose

    def failing(geometry, dose, *args, **kwargs):
        if dose == 100000:
            raise RuntimeError("killed")
        return original(geometry, dose, *args, **kwargs)

    monkeypatch.setattr(synthetic, "write_dose", failing)
    with pytest.raises(RuntimeError, match="killed"):
        _generate(smoke_design_path, tmp_path)
    for kind in ("phase_c", "phase_d"):
        index = manifests.read_json(tmp_path / kind / INDEX_NAME, "dataset_index")
        assert {e["dose"] for e in index["files"]} == {1000}
    first = _sha256s(tmp_path)
    assert first == {k: v for k, v in _golden("smoke").items() if "dose_1000/" in k}

    monkeypatch.setattr(synthetic, "write_dose", original)
    result = _generate(smoke_design_path, tmp_path)
    assert (result.up_to_date_doses, result.generated_doses) == ([1000], [100000])
    assert _sha256s(tmp_path) == _golden("smoke")


KILLED_CHILD = """
import os, signal, sys
from ptydose.core import synthetic

original = synthetic.diffraction_batches

def dying(expected, counts, progress=None):
    for i, item in enumerate(original(expected, counts, progress)):
        if counts.dose == 100000 and i == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-dose: its files are half written
        yield item

synthetic.diffraction_batches = dying
synthetic.generate_study(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
"""


def test_a_real_kill_keeps_finished_doses_and_its_leftovers_are_removed(smoke_design_path, tmp_path):
    """SIGKILL in the middle of the second dose: the first dose stays indexed and intact, the
    second's temporary files remain; the rerun removes them, regenerates only the second dose and
    reproduces the golden bytes."""
    c, d = tmp_path / "phase_c", tmp_path / "phase_d"
    proc = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(smoke_design_path), str(c), str(d)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = sorted(p.name for p in tmp_path.rglob(".*.tmp"))
    assert leftovers and all(".npz." in name for name in leftovers)
    assert {p.parent.name for p in tmp_path.rglob(".*.tmp")} == {"dose_100000", "dense", "sparse"}
    index = manifests.read_json(c / INDEX_NAME, "dataset_index")
    assert {e["dose"] for e in index["files"]} == {1000}

    result = _generate(smoke_design_path, tmp_path)
    assert (result.up_to_date_doses, result.generated_doses) == ([1000], [100000])
    assert list(tmp_path.rglob(".*.tmp")) == []
    assert _sha256s(tmp_path) == _golden("smoke")


def test_only_our_own_stale_temporaries_are_removed(smoke_design_path, tmp_path):
    """Leftovers named after a file of the design (or an index) go, on a run that regenerates
    nothing too; other files, even ones that look temporary, stay."""
    _generate(smoke_design_path, tmp_path, doses=[1000])
    ours = [tmp_path / "phase_c" / "dose_1000" / ".patched_train.npz.k3j9x.tmp",
            tmp_path / "phase_d" / "dose_1000" / "sparse" / ".sparse_test.npz.a1b2.tmp",
            tmp_path / "phase_d" / "dose_100000" / "dense" / ".dense_train.npz.zz.tmp",
            tmp_path / "phase_c" / ".dataset_index.json.q1.tmp"]
    theirs = [tmp_path / "phase_c" / "dose_1000" / ".notes.txt.x.tmp",
              tmp_path / "phase_c" / "dose_1000" / "patched_train.npz.x.tmp",
              tmp_path / "phase_c" / ".patched_train.npz.x.tmp"]  # not where that file lives
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    result = _generate(smoke_design_path, tmp_path, doses=[1000])
    assert result.up_to_date_doses == [1000]
    assert [p.exists() for p in ours] == [False] * len(ours)
    assert [p.exists() for p in theirs] == [True] * len(theirs)


def test_a_second_run_on_the_same_roots_waits_for_the_first(smoke_design_path, tmp_path):
    """While another process holds a root's lock, generation waits (saying so) and writes nothing;
    it proceeds once the lock is released."""
    waiting = threading.Event()
    outcome: dict = {}

    class Signal(logging.Handler):
        def emit(self, record):
            if "another gen-synthetic is writing here" in record.getMessage():
                waiting.set()

    handler = Signal()
    logging.getLogger("ptydose.core.synthetic").addHandler(handler)
    try:
        with exclusive_lock(tmp_path / "phase_d" / LOCK_NAME):
            def run():
                try:
                    outcome["result"] = _generate(smoke_design_path, tmp_path, doses=[1000])
                except BaseException as exc:  # reported to the test thread
                    outcome["error"] = exc

            worker = threading.Thread(target=run)
            worker.start()
            assert waiting.wait(timeout=120), "the second run did not report that it waits"
            assert not (tmp_path / "phase_c" / INDEX_NAME).exists()
            assert not list(tmp_path.rglob("*.npz"))
        worker.join(timeout=300)
    finally:
        logging.getLogger("ptydose.core.synthetic").removeHandler(handler)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].generated_doses == [1000]
    assert _sha256s(tmp_path) == {k: v for k, v in _golden("smoke").items() if "dose_1000/" in k}


def test_scale_benchmark_runs_at_toy_size(repo_root, tmp_path):
    """bench_scale derives a design, generates one dose in a child process, reports wall and peak
    RSS, and deletes its files."""
    env = {**os.environ, "BENCH_SCALE_PATTERNS": "3000"}
    proc = subprocess.run([sys.executable, "benchmarks/bench_scale.py", "--dir", str(tmp_path / "bench")],
                          cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = proc.stdout.splitlines()[2].split()
    assert row[0] == "3000" and int(row[1]) >= 3000 and row[-1].endswith("MB")
    assert list((tmp_path / "bench").iterdir()) == []
