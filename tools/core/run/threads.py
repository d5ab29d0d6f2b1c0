"""Worker threads under contention (stub: the policy is being measured; see benchmarks/bench_contention.py)."""

from __future__ import annotations


def adapt_threads() -> int | None:
    """Set torch's thread count for the next chunk of epochs from the cores free now; returns it (None: unchanged)."""
    return None
