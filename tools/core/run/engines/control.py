"""How an engine's chunked epochs are run: checkpoints kept, a stopping rule without ground truth.

Every job runs its epochs in chunks (``chunk_epochs``). After each chunk the engine reports
progress, may keep a checkpoint of the object (for convergence traces; the engine still never sees
the ground truth) and asks the job's stopping rule whether to go on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import EngineError

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
