"""The engine interface: one contract NPZ's measured data + options in, a reconstruction out.

An engine never sees the ground truth. :func:`load_inputs` checks the whole file against the data
contract (which needs ``objectGuess`` and ``Y``) and keeps only what a measurement would give:
counts, the probe guess, positions, ``scan_index``, the object's *shape* (the frame the
reconstruction is laid out in, so it compares with ``objectGuess`` pixel for pixel), the detector
mask and the metadata. :class:`EngineInputs` has no field that could carry ``objectGuess``, ``Y``,
the true positions of a file with nominal ones, or its ``probe_modes``.

Realistic data: the positions are the *nominal* ones when the file has them (what an experiment
reports; ``xcoords``/``ycoords`` are then the truth, kept from the engine), and counts at masked
pixels (``valid_pixels`` False) are zeroed here, before any engine sees them, so that whatever the
file holds there cannot reach a reconstruction; each engine also leaves them out of its loss.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ...contract import ContractData, read_contract_npz
from .control import ProgressCallback, RunControl

__all__ = ["Engine", "EngineInputs", "EngineResult", "ProgressCallback", "RunControl", "load_inputs"]


@dataclass(frozen=True)
class EngineInputs:
    """What an engine gets from one contract NPZ: measured data and geometry, never ground truth."""

    counts: np.ndarray  # float32 (n, N, N), DC-centred photon counts
    probe: np.ndarray  # complex64 (N, N): probeGuess
    xcoords: np.ndarray  # float64 (n,), object pixel-index frame
    ycoords: np.ndarray
    scan_index: np.ndarray  # int64 (n,)
    object_shape: tuple[int, int]  # the objectGuess frame (its values are not passed)
    metadata: dict
    valid_pixels: np.ndarray | None = None  # bool (N, N), DC-centred; None: every pixel measured
    positions_source: str = "true"  # "nominal": xcoords/ycoords hold the file's nominal_* positions


@dataclass
class EngineResult:
    """A reconstruction, laid out in the objectGuess frame."""

    object: np.ndarray  # complex64 (M, M')
    probe: np.ndarray  # complex64 (N, N), first mode
    positions_x_px: np.ndarray  # float64, xcoords frame
    positions_y_px: np.ndarray
    loss_epochs: np.ndarray  # int64
    loss_values: np.ndarray  # float64
    reconstruction_s: float  # seconds inside the engine's own iterations
    # Epochs completed -> the object after them (complex64, objectGuess frame), if the engine keeps
    # any; the last epoch run is always among them when there are any (see control.ChunkLoop).
    checkpoints: Mapping[int, np.ndarray] = field(default_factory=dict)
    checkpoint_seconds: Mapping[int, float] = field(default_factory=dict)  # epochs completed -> engine seconds so far
    stop_reason: str | None = None  # why the run ended before its planned epochs (a stopping rule), else None
    # Realistic conditions, each None unless used: every mode (complex64 (K, N, N), K >= 2, orthogonal,
    # strongest first; ``probe`` is mode 0), the start probe when it was not probeGuess, and the
    # positions the engine was given when it refined them (``positions_*`` are then the refined ones).
    probe_modes: np.ndarray | None = None
    initial_probe: np.ndarray | None = None
    initial_positions_x_px: np.ndarray | None = None
    initial_positions_y_px: np.ndarray | None = None


class Engine(Protocol):
    """A reconstruction method. Heavy imports happen in :meth:`load`, once per worker process."""

    def load(self) -> None:
        """Import what the engine needs (torch, the method's package); raises if it cannot."""

    def reconstruct(self, inputs: EngineInputs, algorithm: str, num_epochs: int, options: Any, *,
                    device: str, progress: ProgressCallback | None = None,
                    control: RunControl | None = None) -> EngineResult:
        """Reconstruct ``inputs`` with ``algorithm`` for ``num_epochs``; ``options`` is the engine's record.

        ``control`` (:class:`.control.RunControl`): the checkpoints to keep and the stopping rule;
        None keeps no checkpoint and runs every epoch. An engine that runs epochs in chunks does so
        through :class:`.control.ChunkLoop`. An engine without a ``control`` parameter cannot
        honour a stopping rule: the worker refuses such a job rather than ignore the rule.
        """


def _engine_positions(data: ContractData) -> tuple[np.ndarray, np.ndarray, str]:
    """The positions an engine gets, x then y, and which they are: the nominal ones when the file has them."""
    x, y = data.engine_positions()
    nominal = all(key in data.arrays for key in ("nominal_xcoords", "nominal_ycoords"))
    return x, y, "nominal" if nominal else "true"


def mask_counts(counts: np.ndarray, valid_pixels: np.ndarray | None) -> np.ndarray:
    """``counts`` with every masked pixel set to 0 (in place; returned)."""
    if valid_pixels is not None:
        counts[:, ~valid_pixels] = 0
    return counts


def load_inputs(path: str | os.PathLike) -> EngineInputs:
    """Read a contract NPZ after checking it against the data contract (never with pickle).

    A violation raises :class:`ContractError` with the first problem line, before any compute.
    """
    data = read_contract_npz(path, check_values=True)
    valid = data.valid_pixels()
    valid = None if valid is None else np.asarray(valid, dtype=bool)
    x, y, source = _engine_positions(data)
    # counts = round((diffraction * amplitude_scale)^2), exactly as gen-synthetic stored them
    # (unrounded for a detector with readout noise); zero where the detector did not measure.
    return EngineInputs(
        counts=mask_counts(data.counts().astype(np.float32), valid),
        probe=data["probeGuess"].astype(np.complex64),
        xcoords=np.asarray(x, dtype=np.float64),
        ycoords=np.asarray(y, dtype=np.float64),
        scan_index=data["scan_index"].astype(np.int64),
        object_shape=tuple(int(s) for s in data["objectGuess"].shape),
        metadata=dict(data.metadata),
        valid_pixels=valid,
        positions_source=source,
    )
