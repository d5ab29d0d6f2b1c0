"""How an engine's chunked epochs are run: checkpoints kept, a stopping rule without ground truth.

Every job runs its epochs in chunks (``chunk_epochs``). After each chunk the engine reports
progress, may keep a checkpoint of the object (for convergence traces; the engine still never sees
the ground truth) and asks the job's stopping rule whether to go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import EngineError
from ..threads import adapt_threads

#: ``progress(epochs_done, num_epochs, last_loss, seconds_in_the_engine)`` after each chunk of epochs.
ProgressCallback = Callable[[int, int, "float | None", float], None]

STOP_RULES = ("loss_plateau",)


@dataclass(frozen=True)
class StopRule:
    """Stop when the loss has stopped improving: over the last ``window_epochs`` epochs it fell by
    less than ``min_relative_improvement`` of its value (checked after each chunk, never before
    ``min_epochs``)."""

    rule: str = "loss_plateau"
    window_epochs: int = 10
    min_relative_improvement: float = 1e-3
    min_epochs: int = 0

    def __post_init__(self) -> None:
        if self.rule not in STOP_RULES:
            raise EngineError(f"stopping/rule: {self.rule!r} is not one of {', '.join(STOP_RULES)}")
        if self.window_epochs < 1:
            raise EngineError(f"stopping/window_epochs: must be >= 1, got {self.window_epochs}")
        if self.min_epochs < 0:
            raise EngineError(f"stopping/min_epochs: must be >= 0, got {self.min_epochs}")
        if not (math.isfinite(self.min_relative_improvement) and self.min_relative_improvement >= 0):
            raise EngineError(f"stopping/min_relative_improvement: must be a finite number >= 0, "
                              f"got {self.min_relative_improvement}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> StopRule | None:
        """The rule of a job's ``stopping`` object (None: run every planned epoch)."""
        if mapping is None:
            return None
        known = ("rule", "window_epochs", "min_relative_improvement", "min_epochs")
        unknown = sorted(set(mapping) - set(known))
        if unknown:
            raise EngineError(f"stopping/{unknown[0]}: not a setting of the stopping rule ({', '.join(known)})")
        return cls(**dict(mapping))

    def mapping(self) -> dict:
        return {"rule": self.rule, "window_epochs": self.window_epochs,
                "min_relative_improvement": self.min_relative_improvement, "min_epochs": self.min_epochs}


#: Most object checkpoints one job keeps (bounds reconstruction.npz: 32 objects of the job's size).
MAX_CHECKPOINTS = 32


@dataclass(frozen=True)
class RunControl:
    """What the worker asks of an engine's chunk loop besides the epochs: checkpoints and stopping."""

    checkpoints: bool = True  # keep the object after chunks (at most max_checkpoints, the last always)
    max_checkpoints: int = MAX_CHECKPOINTS
    stop: StopRule | None = None  # None: run every planned epoch

    def __post_init__(self) -> None:
        if self.max_checkpoints < 1:
            raise EngineError(f"max_checkpoints: must be >= 1, got {self.max_checkpoints}")


def plateau_reason(rule: StopRule, losses: Sequence[float]) -> str | None:
    """Why ``losses`` (one value per epoch run so far, first epoch first) say stop, else None.

    The measure is the *best* loss, so that a noisy minibatch loss (Adam) neither triggers nor
    blocks the rule by one epoch's jitter: with ``e`` epochs run and ``w = window_epochs``,
    ``before = min(losses[:e - w])`` and ``now = min(losses[:e])``; the rule stops when
    ``e >= max(min_epochs, w + 1)`` and ``(before - now) / |before| < min_relative_improvement``
    (``before == 0``: nothing can improve, stop). A non-finite loss never stops a run (the engine
    reports divergence itself).
    """
    e = len(losses)
    w = rule.window_epochs
    if e < max(rule.min_epochs, w + 1):
        return None
    values = np.asarray(losses, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        return None
    before, now = float(values[:e - w].min()), float(values.min())
    improvement = (before - now) / abs(before) if before != 0 else 0.0
    if improvement >= rule.min_relative_improvement:
        return None
    return (f"{rule.rule}: the best loss improved by {improvement:.3g} (relative) over epochs {e - w + 1}-{e}, "
            f"below {rule.min_relative_improvement:g}")


def checkpoint_epochs(num_epochs: int, chunk_epochs: int, max_checkpoints: int) -> frozenset[int]:
    """The chunk ends (epochs completed) whose object a full run keeps: all of them, or at most
    ``max_checkpoints`` evenly spread by chunk index, the last (``num_epochs``) always included."""
    ends = list(range(chunk_epochs, num_epochs, chunk_epochs)) + [num_epochs] if num_epochs > 0 else []
    if len(ends) <= max_checkpoints:
        return frozenset(ends)
    if max_checkpoints == 1:
        return frozenset(ends[-1:])
    picks = np.unique(np.round(np.linspace(0, len(ends) - 1, max_checkpoints)).astype(int))
    return frozenset(ends[i] for i in picks)


class ChunkLoop:
    """The chunk loop every engine runs: chunk sizes out, losses and object snapshots in.

    ::

        loop = ChunkLoop(num_epochs, options.chunk_epochs, control, progress)
        for n in loop:                      # adapt_threads() has run; n epochs to run now
            start = time.perf_counter()
            ...run n epochs...
            loop.chunk_done(time.perf_counter() - start, losses_so_far, snapshot)

    After each chunk the loop reports progress, keeps a checkpoint when this chunk end is one of
    :func:`checkpoint_epochs` or is the run's last (``snapshot()`` is called only then: it must
    return a copy of the object), and asks the stopping rule whether to go on. ``seconds`` counts
    engine time only; the snapshot copy is not in it.
    """

    def __init__(self, num_epochs: int, chunk_epochs: int, control: RunControl | None = None,
                 progress: ProgressCallback | None = None):
        if chunk_epochs < 1:
            raise EngineError(f"chunk_epochs: must be >= 1, got {chunk_epochs}")
        self.num_epochs = int(num_epochs)
        self.chunk_epochs = int(chunk_epochs)
        self.control = control if control is not None else RunControl(checkpoints=False)
        self.progress = progress
        self.done = 0
        self.seconds = 0.0
        self.stop_reason: str | None = None
        self.checkpoints: dict[int, np.ndarray] = {}
        self.checkpoint_seconds: dict[int, float] = {}
        self._due = (checkpoint_epochs(self.num_epochs, self.chunk_epochs, self.control.max_checkpoints)
                     if self.control.checkpoints else frozenset())
        self._pending: int | None = None

    def __iter__(self) -> Iterator[int]:
        while self.done < self.num_epochs and self.stop_reason is None:
            adapt_threads()
            n = min(self.chunk_epochs, self.num_epochs - self.done)
            self._pending = n
            yield n
            if self._pending is not None:
                raise EngineError("engine chunk loop: a chunk ended without chunk_done()")

    def chunk_done(self, seconds: float, losses: Sequence[float],
                   snapshot: Callable[[], np.ndarray] | None = None) -> None:
        """Record the chunk just run: its engine ``seconds`` and the loss of every epoch run so far."""
        if self._pending is None:
            raise EngineError("engine chunk loop: chunk_done() outside a chunk")
        self.done += self._pending
        self._pending = None
        self.seconds += float(seconds)
        last_loss = float(losses[-1]) if len(losses) else None
        if self.progress is not None:
            self.progress(self.done, self.num_epochs, last_loss, self.seconds)
        if self.control.stop is not None and self.done < self.num_epochs:
            self.stop_reason = plateau_reason(self.control.stop, losses)
        last = self.done >= self.num_epochs or self.stop_reason is not None
        if snapshot is not None and self.control.checkpoints and (self.done in self._due or last):
            self.checkpoints[self.done] = np.ascontiguousarray(snapshot(), dtype=np.complex64)
            self.checkpoint_seconds[self.done] = self.seconds
