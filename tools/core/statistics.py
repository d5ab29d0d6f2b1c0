"""Uncertainty of a sweep: per-cell t-intervals, paired comparisons with verdicts, the minimum dose for quality Q.

Pure functions over plain values (no files, no figures). Vocabulary:

- a **cell** is (dose, view, reconstructor) -- the reconstructor is None in a sweep of one;
- a **unit** is one scored member of a cell, named by a string key: ``rep<r>/<split>`` for a job's
  metrics (replicate r, split), ``pairs/<split>`` for a two-reconstruction FRC measure (one value
  per split: the FRC averaged over the replicate pairs);
- a cell's statistics over its n units (docs/manifests.md, "Uncertainty and comparisons")::

      mean = sum(x) / n
      sd   = sqrt(sum((x - mean)^2) / (n - 1))                 (n >= 2; else null)
      h    = t_{0.975, n-1} * sd / sqrt(n)                     (Student t quantile)
      95 % CI = [mean - h, mean + h]

- a **paired comparison** of cells A and B takes the units present in both (same key: the same
  replicate and split, i.e. the same object half and, between reconstructors, the same data),
  the differences d = A - B, and applies the same formula to d. Its verdict for a metric: the CI
  excludes 0 -> "better" or "worse" for A (oriented by whether higher is better for the metric);
  the CI contains 0 (a zero-width interval at exactly 0 included) or n < 2 -> "not resolved".

Why t and not a bootstrap: n is the number of replicates x splits, 2 to 6 here. A percentile
bootstrap from n values can only resample what it saw: at n = 2 it has three distinct resample
means and its interval is the range of the data, far narrower than the truth; its coverage only
approaches 95 % for n in the tens. The t-interval assumes roughly normal values and is exact
under that assumption at any n >= 2; with 1 degree of freedom it is wide (t = 12.71), which is
the honest answer for two numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from scipy import stats as scipy_stats

CONFIDENCE = 0.95
BETTER, WORSE, NOT_RESOLVED = "better", "worse", "not resolved"
METHOD = (f"Student t interval over replicates x splits: mean +/- t_(1-(1-{CONFIDENCE:g})/2, n-1) * sd / sqrt(n), "
          "sd with n - 1 in the denominator; paired comparisons apply it to the differences of units with the same "
          "replicate and split")

Cell = tuple[int, str, "str | None"]


@lru_cache(maxsize=128)
def t_quantile(df: int) -> float:
    """Two-sided ``CONFIDENCE`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2.0, df))


def interval(values: Sequence[float]) -> dict:
    """``{n, mean, sd, ci_low, ci_high, half_width}`` of ``values`` (module formula; nulls where undefined)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None, "half_width": None}
    mean = math.fsum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None, "half_width": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "half_width": half}


def verdict(diff: Mapping, higher_is_better: bool) -> str:
    """better / worse / not resolved for the first cell of a paired difference (see module doc)."""
    if diff["n"] < 2 or diff["ci_low"] is None:
        return NOT_RESOLVED
    if diff["ci_low"] > 0:
        return BETTER if higher_is_better else WORSE
    if diff["ci_high"] < 0:
        return WORSE if higher_is_better else BETTER
    return NOT_RESOLVED


def job_unit(replicate: int, split: str) -> str:
    return f"rep{replicate}/{split}"


def pair_unit(split: str) -> str:
    return f"pairs/{split}"


# --------------------------------------------------------------------------- cells


def collect_units(entries: Iterable[tuple[Cell, str, Mapping[str, float | None]]]) -> dict[Cell, dict[str, dict[str, float]]]:
    """``{cell: {metric: {unit: value}}}`` from ``(cell, unit, {metric: value or None})`` entries.

    Null values are left out (that unit does not count for that metric). A unit seen twice in a
    cell for a metric is a caller's error.
    """
    units: dict[Cell, dict[str, dict[str, float]]] = {}
    for cell, unit, values in entries:
        per_metric = units.setdefault(cell, {})
        for name, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            slot = per_metric.setdefault(name, {})
            if unit in slot:
                raise ValueError(f"cell {cell}: unit {unit} appears twice for {name}")
            slot[unit] = float(value)
    return units


def cell_statistics(units: Mapping[Cell, Mapping[str, Mapping[str, float]]], metric_names: Sequence[str]) -> dict[Cell, dict]:
    """Per cell and metric: :func:`interval` over its units (sorted by unit key, so sums are reproducible)."""
    return {cell: {name: interval([per_metric.get(name, {})[u] for u in sorted(per_metric.get(name, {}))])
                   for name in metric_names}
            for cell, per_metric in units.items()}


def paired_difference(first: Mapping[str, float], second: Mapping[str, float]) -> tuple[list[str], dict]:
    """Units present in both, and :func:`interval` of ``first - second`` over them."""
    common = sorted(set(first) & set(second))
    return common, interval([first[u] - second[u] for u in common])


# --------------------------------------------------------------------------- comparisons


def plan_comparisons(cells: Iterable[Cell], view_order: Sequence[str], several: bool) -> list[tuple[str, Cell, Cell]]:
    """Which cells are compared: ``(kind, first, second)``.

    - ``view``: at each dose (and reconstructor), each view against the next one in ``view_order``
      (most overlap first), so the first is the denser;
    - ``dose``: per view (and reconstructor), each dose against the next lower one (first = higher);
    - ``reconstructor`` (several only): per (dose, view), every pair in order of appearance.
    """
    cells = list(dict.fromkeys(cells))
    present = set(cells)
    doses = sorted({c[0] for c in cells})
    recons = list(dict.fromkeys(c[2] for c in cells))
    order = {v: i for i, v in enumerate(view_order)}
    views = sorted({c[1] for c in cells}, key=lambda v: (order.get(v, len(order)), v))
    planned: list[tuple[str, Cell, Cell]] = []
    for dose in doses:
        for recon in recons:
            row = [v for v in views if (dose, v, recon) in present]
            planned += [("view", (dose, a, recon), (dose, b, recon)) for a, b in zip(row, row[1:])]
    for view in views:
        for recon in recons:
            column = [d for d in doses if (d, view, recon) in present]
            planned += [("dose", (high, view, recon), (low, view, recon)) for low, high in zip(column, column[1:])]
    if several:
        for dose in doses:
            for view in views:
                here = [r for r in recons if (dose, view, r) in present]
                planned += [("reconstructor", (dose, view, a), (dose, view, b))
                            for i, a in enumerate(here) for b in here[i + 1:]]
    return planned


def compare_cells(units: Mapping[Cell, Mapping[str, Mapping[str, float]]], first: Cell, second: Cell,
                  directions: Mapping[str, bool]) -> dict:
    """``{metric: {n, mean, sd, ci_low, ci_high, half_width, units, verdict}}`` of ``first - second``.

    ``directions``: metric -> higher is better. ``mean`` etc. are the paired difference's.
    """
    out = {}
    for name, higher in directions.items():
        common, diff = paired_difference(units.get(first, {}).get(name, {}), units.get(second, {}).get(name, {}))
        out[name] = {**diff, "units": common, "verdict": verdict(diff, higher)}
    return out


def unpaired_difference(first: Mapping, second: Mapping, higher_is_better: bool) -> dict:
    """``first - second`` of two cells from independent samples (two studies), with a Welch t interval.

    ``first``/``second``: :func:`interval` documents (n, mean, sd). No unit pairs exist between
    two studies (different data), so the paired rule does not apply; Welch's interval uses each
    cell's own variance::

        d = mean_1 - mean_2;  se = sqrt(sd_1^2/n_1 + sd_2^2/n_2)
        df = se^4 / ((sd_1^2/n_1)^2/(n_1 - 1) + (sd_2^2/n_2)^2/(n_2 - 1))   (n_1 + n_2 - 2 when se = 0)
        half_width = t_(0.975, df) * se

    Returns ``{mean, ci_low, ci_high, half_width, df, ratio, verdict}``; the interval is null (and
    the verdict not resolved) unless both cells have n >= 2; ``ratio`` is ``mean_1 / mean_2``
    (null when either mean is missing or the second is 0).
    """
    doc = {"mean": None, "ci_low": None, "ci_high": None, "half_width": None, "df": None, "ratio": None,
           "verdict": NOT_RESOLVED}
    m1, m2 = first.get("mean"), second.get("mean")
    if m1 is None or m2 is None:
        return doc
    doc["mean"] = m1 - m2
    doc["ratio"] = m1 / m2 if m2 != 0 else None
    n1, n2, s1, s2 = first.get("n", 0), second.get("n", 0), first.get("sd"), second.get("sd")
    if n1 < 2 or n2 < 2 or s1 is None or s2 is None:
        return doc
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    se = math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1)) if se > 0 else float(n1 + n2 - 2)
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2.0, df)) * se
    doc.update(ci_low=doc["mean"] - half, ci_high=doc["mean"] + half, half_width=half, df=df)
    doc["verdict"] = verdict({"n": min(n1, n2), "ci_low": doc["ci_low"], "ci_high": doc["ci_high"]}, higher_is_better)
    return doc


# --------------------------------------------------------------------------- minimum dose for quality Q


def reaches(value: float, target: float, higher_is_better: bool) -> bool:
    return value >= target if higher_is_better else value <= target


def first_crossing(doses: Sequence[float], values: Sequence[float | None], target: float,
                   higher_is_better: bool) -> tuple[float | None, str]:
    """The lowest dose at which a curve reaches ``target``, interpolated linearly in log10(dose).

    Doses ascending; doses whose value is None are left out. Returns ``(dose, status)``:

    - ``interpolated``: the first dose whose value reaches Q, d_i, has a predecessor d_{i-1} that
      does not; ``log10 d* = log10 d_{i-1} + (Q - v_{i-1}) / (v_i - v_{i-1}) * (log10 d_i - log10 d_{i-1})``;
    - ``at_or_below_lowest``: the lowest dose with a value already reaches Q (the true minimum
      is that dose or lower: returned as the lowest dose, an upper bound);
    - ``not_reached``: no dose reaches Q (the minimum lies above the highest dose studied: None);
    - ``no_data``: no value at all.
    """
    points = [(float(d), float(v)) for d, v in zip(doses, values) if v is not None and math.isfinite(v)]
    if not points:
        return None, "no_data"
    for i, (dose, value) in enumerate(points):
        if not reaches(value, target, higher_is_better):
            continue
        if i == 0:
            return dose, "at_or_below_lowest"
        d0, v0 = points[i - 1]
        t = (target - v0) / (value - v0)  # v0 does not reach Q and value does, so they differ
        return 10.0 ** (math.log10(d0) + t * (math.log10(dose) - math.log10(d0))), "interpolated"
    return None, "not_reached"


def minimum_dose(doses: Sequence[float], cells: Sequence[Mapping | None], target: float, higher_is_better: bool) -> dict:
    """Minimum dose reaching Q on one view's cell means, with its range from the CI bounds.

    ``cells[i]``: the :func:`interval` of the metric at ``doses[i]`` (or None). The range: the
    same crossing on the optimistic bound curve (ci_high when higher is better, else ci_low) gives
    ``dose_low``; on the pessimistic one ``dose_high``. When a cell with a mean has no interval
    (n < 2) the range is unknown (status ``no_interval``).
    """
    means = [c["mean"] if c else None for c in cells]
    best, status = first_crossing(doses, means, target, higher_is_better)
    doc = {"min_dose": best, "status": status, "dose_low": None, "dose_low_status": "no_interval",
           "dose_high": None, "dose_high_status": "no_interval"}
    if any(c and c["mean"] is not None and c["ci_low"] is None for c in cells) or status == "no_data":
        return doc
    upper = [c["ci_high"] if c else None for c in cells]
    lower = [c["ci_low"] if c else None for c in cells]
    optimistic, pessimistic = (upper, lower) if higher_is_better else (lower, upper)
    doc["dose_low"], doc["dose_low_status"] = first_crossing(doses, optimistic, target, higher_is_better)
    doc["dose_high"], doc["dose_high_status"] = first_crossing(doses, pessimistic, target, higher_is_better)
    return doc
