"""The chunk loop shared by engines: checkpoint choice and bound, the loss-plateau stopping rule."""

from __future__ import annotations

import numpy as np
import pytest

from ptydose.core.errors import EngineError
from ptydose.core.run.engines.control import MAX_CHECKPOINTS, ChunkLoop, RunControl, StopRule, checkpoint_epochs, plateau_reason


def _run(num_epochs: int, chunk: int, losses: np.ndarray, control: RunControl | None, reports: list | None = None):
    """Drive a ChunkLoop as an engine does; the 'object' after e epochs is e * ones."""
    loop = ChunkLoop(num_epochs, chunk, control, None if reports is None else lambda *a: reports.append(a))
    seconds_per_chunk = 0.5
    for n in loop:
        done = loop.done + n
        loop.chunk_done(seconds_per_chunk, losses[:done], lambda done=done: np.full((2, 3), done, np.complex128))
    return loop


@pytest.mark.parametrize(("num_epochs", "chunk", "bound"), [(100, 10, 32), (100, 1, 32), (7, 3, 2), (5, 5, 1),
                                                             (1000, 1, 32), (33, 1, 32), (64, 2, 32), (10, 1, 3)])
def test_checkpoints_are_chunk_ends_within_the_bound_with_the_last_epoch(num_epochs, chunk, bound):
    """At most the bound, evenly spread over chunk ends, the final epoch always; all chunk ends when they fit."""
    chosen = sorted(checkpoint_epochs(num_epochs, chunk, bound))
    ends = sorted({*range(chunk, num_epochs, chunk), num_epochs})
    assert set(chosen) <= set(ends) and chosen[-1] == num_epochs
    assert len(chosen) == min(len(ends), bound)
    if len(ends) > bound:  # evenly spread: gaps between kept chunk indices differ by at most one
        gaps = np.diff([ends.index(e) for e in chosen])
        assert gaps.max() - gaps.min() <= 1


def test_loop_keeps_copies_and_seconds_at_chosen_epochs_and_reports_every_chunk():
    """Objects are complex64 copies taken at the chosen chunk ends; seconds are engine seconds so far."""
    losses = np.linspace(1.0, 0.1, 100)
    reports: list = []
    loop = _run(100, 1, losses, RunControl(max_checkpoints=8), reports)
    assert [r[0] for r in reports] == list(range(1, 101)) and reports[-1][2] == pytest.approx(0.1)
    assert sorted(loop.checkpoints) == sorted(checkpoint_epochs(100, 1, 8))
    assert len(loop.checkpoints) == 8 and 100 in loop.checkpoints
    for epoch, obj in loop.checkpoints.items():
        assert obj.dtype == np.complex64 and np.all(obj == epoch)
        assert loop.checkpoint_seconds[epoch] == pytest.approx(0.5 * epoch)
    assert loop.seconds == pytest.approx(50.0) and loop.done == 100 and loop.stop_reason is None


def test_no_control_keeps_no_checkpoint_and_runs_every_epoch():
    loop = _run(12, 5, np.ones(12), None)
    assert loop.done == 12 and loop.checkpoints == {} and loop.stop_reason is None


def test_checkpoint_count_never_exceeds_the_bound_even_when_a_run_stops_early():
    """An early stop adds its own last epoch; the chosen epochs after it never come, so the bound holds."""
    losses = np.r_[np.linspace(1.0, 0.5, 37), np.full(63, 0.5)]
    for bound in (1, 2, 3, 5, MAX_CHECKPOINTS):
        loop = _run(100, 1, losses, RunControl(max_checkpoints=bound, stop=StopRule(window_epochs=5)))
        assert loop.stop_reason is not None and loop.done < 100
        assert len(loop.checkpoints) <= bound and max(loop.checkpoints) == loop.done


@pytest.mark.parametrize("min_epochs", [0, 30, 60])
def test_plateau_stops_a_flat_run_but_never_before_min_epochs(min_epochs):
    """A loss that stops improving at epoch 20 stops the run at the first chunk end the rule allows."""
    losses = np.r_[np.geomspace(1.0, 0.1, 20), np.full(80, 0.1)]
    rule = StopRule(window_epochs=10, min_relative_improvement=1e-3, min_epochs=min_epochs)
    loop = _run(100, 5, losses, RunControl(stop=rule))
    # Epoch e stops when min(losses[:e-10]) is already the plateau value, i.e. e - 10 >= 20.
    assert loop.done == max(30, min_epochs)
    assert loop.stop_reason.startswith("loss_plateau: the best loss improved by 0 (relative)")


def test_plateau_rule_on_synthetic_histories():
    """Best-loss improvement over the window against the threshold; noise and NaN do not decide it."""
    rule = StopRule(window_epochs=4, min_relative_improvement=0.01)
    steady = 1.0 / np.arange(1, 21)  # still improving by > 1% over any 4 epochs
    assert plateau_reason(rule, steady) is None
    assert plateau_reason(rule, [1.0, 0.9, 0.8, 0.7]) is None  # fewer than window + 1 epochs
    # Improves 0.5% over the last 4 epochs: below 1%, stop; above 0.4%, go on.
    slow = np.r_[1.0, np.full(3, 1.0), 0.995]
    assert plateau_reason(rule, slow) is not None
    assert plateau_reason(StopRule(window_epochs=4, min_relative_improvement=0.004), slow) is None
    # A noisy loss whose best does not improve stops even though its last value fell.
    noisy = [1.0, 0.5, 0.9, 0.8, 0.7, 0.6]
    assert plateau_reason(rule, noisy) is not None
    assert plateau_reason(rule, [1.0, 0.9, 0.8, np.nan, 0.8, 0.8]) is None
    assert plateau_reason(StopRule(window_epochs=4, min_epochs=8), slow) is None  # min_epochs first


def test_loop_misuse_and_bad_rules_are_engine_errors():
    loop = ChunkLoop(4, 2)
    with pytest.raises(EngineError, match="outside a chunk"):
        loop.chunk_done(0.1, [1.0])
    with pytest.raises(EngineError, match="without chunk_done"):
        for _ in loop:
            pass
    with pytest.raises(EngineError, match=r"^stopping/window_epochs: must be >= 1, got 0$"):
        StopRule(window_epochs=0)
    with pytest.raises(EngineError, match=r"^stopping/patience: not a setting"):
        StopRule.from_mapping({"rule": "loss_plateau", "patience": 3})
    assert StopRule.from_mapping(StopRule(window_epochs=7).mapping()) == StopRule(window_epochs=7)
