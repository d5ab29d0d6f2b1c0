"""Splits and overlap views: geometry only (probe centres in object pixels, ``(y, x)``).

* Splits cut the scan along y at the object's centre row ``(M - 1) / 2``: ``train`` holds the
  centres below it, ``test`` the rest. Disjoint, and together the whole scan.
* A view keeps, from one split, positions visited in a seeded random order, accepting each one
  that is at least ``S = (1 - f) D`` from every position accepted before it (greedy minimum
  spacing). ``direct`` when the split already satisfies the spacing.
* Measured overlap: the mean, over accepted positions, of the area overlap of two discs of
  diameter ``D`` (normalised by the disc area) with each of the K nearest accepted neighbours.
* A view given by a target overlap keeps one seeded visiting order and bisects the spacing ``S``
  in ``[0, D]`` (the measured overlap falls from the full split's at ``S = 0`` to exactly 0 at
  ``S = D``); of every spacing tried, the one whose selection measures closest to the target wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree

SPLIT_STREAM = {"train": 0, "test": 1}


def split_indices(coords_yx: np.ndarray, object_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Scan indices of each split (ascending): ``train`` y < (M-1)/2, ``test`` y >= (M-1)/2."""
    cut = (object_shape[0] - 1) / 2.0
    low = coords_yx[:, 0] < cut
    return {"train": np.flatnonzero(low), "test": np.flatnonzero(~low)}


def disc_overlap_fraction(distance: np.ndarray | float, diameter: float) -> np.ndarray:
    """Area shared by two discs of ``diameter`` at centre ``distance``, over one disc's area."""
    d = np.asarray(distance, dtype=np.float64)
    r = diameter / 2.0
    x = np.clip(d / diameter, 0.0, 1.0)  # d / (2r)
    lens = 2.0 * r * r * np.arccos(x) - 0.5 * d * np.sqrt(np.clip(4.0 * r * r - d * d, 0.0, None))
    return np.where(d >= diameter, 0.0, lens / (math.pi * r * r))


def measured_overlap(coords_yx: np.ndarray, diameter: float, neighbours: int) -> float | None:
    """Mean disc-overlap fraction of each position with its K nearest neighbours (None if alone)."""
    n = len(coords_yx)
    if n < 2:
        return None
    k = min(neighbours, n - 1)
    distances, _ = cKDTree(coords_yx).query(coords_yx, k=k + 1)  # first column is the point itself
    return float(np.mean(disc_overlap_fraction(distances[:, 1:], diameter)))


def min_spacing(coords_yx: np.ndarray) -> float:
    """Smallest distance between two positions (inf for fewer than two)."""
    if len(coords_yx) < 2:
        return math.inf
    distances, _ = cKDTree(coords_yx).query(coords_yx, k=2)
    return float(distances[:, 1].min())


@dataclass(frozen=True)
class Selection:
    """A view of one split: accepted scan indices (ascending) and the figures recorded for it."""

    indices: np.ndarray
    selection_strategy: str
    spacing_threshold: float
    n_accepted: int
    n_rejected: int
    acceptance_rate: float
    measured_overlap: float | None
    neighbours: int
    target_overlap: float | None = None  # set for a view selected by its target overlap

    def figures(self) -> dict:
        doc = asdict(self)
        doc.pop("indices")
        if doc["target_overlap"] is None:  # views given by a fraction record what they always did
            doc.pop("target_overlap")
        return doc


def greedy_min_spacing(coords_yx: np.ndarray, threshold: float, order: np.ndarray) -> np.ndarray:
    """Positions (indices into ``coords_yx``) accepted when visited in ``order``: each one at
    least ``threshold`` from all accepted before it. Returned ascending."""
    accepted: list[int] = []
    accepted_xy = np.empty((len(coords_yx), 2))
    threshold_sq = threshold * threshold
    for i in order:
        if accepted:
            delta = accepted_xy[: len(accepted)] - coords_yx[i]
            if np.min(np.einsum("ij,ij->i", delta, delta)) < threshold_sq:
                continue
        accepted_xy[len(accepted)] = coords_yx[i]
        accepted.append(int(i))
    return np.sort(np.asarray(accepted, dtype=np.int64))


def select_view(
    coords_yx: np.ndarray,
    split_scan_indices: np.ndarray,
    threshold: float,
    diameter: float,
    neighbours: int,
    rng: np.random.Generator | None,
) -> Selection:
    """Select a view from a split. ``threshold <= 0`` (or a split that already satisfies it)
    keeps every position (``direct``); otherwise greedy in the order ``rng.permutation``."""
    split_xy = coords_yx[split_scan_indices]
    n = len(split_scan_indices)
    if threshold <= 0 or min_spacing(split_xy) >= threshold:
        return _selection(split_scan_indices, split_xy, np.arange(n), "direct", threshold, diameter, neighbours)
    if rng is None:
        raise ValueError("a greedy selection needs a seeded generator")
    local = greedy_min_spacing(split_xy, threshold, rng.permutation(n))
    return _selection(split_scan_indices, split_xy, local, "greedy", threshold, diameter, neighbours)


def _selection(split_scan_indices: np.ndarray, split_xy: np.ndarray, local: np.ndarray, strategy: str,
               threshold: float, diameter: float, neighbours: int, target: float | None = None) -> Selection:
    n = len(split_scan_indices)
    n_accepted = int(len(local))
    overlap_value = measured_overlap(split_xy[local], diameter, neighbours)
    return Selection(
        indices=split_scan_indices[local],
        selection_strategy=strategy,
        spacing_threshold=float(threshold),
        n_accepted=n_accepted,
        n_rejected=int(n - n_accepted),
        acceptance_rate=float(n_accepted / n) if n else 0.0,
        measured_overlap=None if overlap_value is None else round(overlap_value, 6),
        neighbours=int(neighbours),
        target_overlap=None if target is None else float(target),
    )


#: Bisection steps of the target-overlap search: the spacing is then known to D / 2**40, far below
#: the jitter that separates two scan distances, so more steps cannot change the selection.
TARGET_SEARCH_STEPS = 40


def select_view_for_overlap(
    coords_yx: np.ndarray,
    split_scan_indices: np.ndarray,
    target: float,
    diameter: float,
    neighbours: int,
    rng: np.random.Generator,
) -> Selection:
    """The selection of a split whose measured overlap is closest to ``target``.

    One visiting order (``rng.permutation``) serves every spacing tried, so the measured overlap is
    a function of the spacing alone: ``S = 0`` keeps the whole split (its overlap is the most a
    view can reach), ``S = D`` leaves no two discs overlapping (0). Bisection narrows the spacing
    where the overlap crosses the target; every spacing tried is a candidate and the closest wins
    (ties: the smaller spacing, i.e. more positions). The caller decides whether it is close enough.
    """
    split_xy = coords_yx[split_scan_indices]
    n = len(split_scan_indices)
    order = rng.permutation(n)
    closest_first = min_spacing(split_xy)
    tried: dict[float, tuple[np.ndarray, str, float]] = {}

    def measure(spacing: float) -> float:
        if spacing <= 0 or closest_first >= spacing:
            local, strategy = np.arange(n), "direct"
        else:
            local, strategy = greedy_min_spacing(split_xy, spacing, order), "greedy"
        value = measured_overlap(split_xy[local], diameter, neighbours)
        value = 0.0 if value is None else round(value, 6)  # one position: no neighbour to overlap
        tried[spacing] = (local, strategy, value)
        return value

    low, high = 0.0, float(diameter)
    if measure(low) > target and measure(high) <= target:
        for _ in range(TARGET_SEARCH_STEPS):
            middle = 0.5 * (low + high)
            if measure(middle) > target:
                low = middle
            else:
                high = middle
    best = min(tried, key=lambda spacing: (abs(tried[spacing][2] - target), spacing))
    local, strategy, _ = tried[best]
    return _selection(split_scan_indices, split_xy, local, strategy, best, diameter, neighbours, target)


def subsampling_rng(subsampling_seed: int, split: str, view_index: int) -> np.random.Generator:
    """The seeded visiting order of one (split, view): ``default_rng([seed, split_no, view_no])``."""
    return np.random.default_rng([int(subsampling_seed), SPLIT_STREAM[split], int(view_index)])
