"""Where each exposure sits on the object: pty-chi 2.2's position conventions, in one place.

Coordinates ``c = (y, x)`` are probe centres in object pixel-index coordinates (pixel ``i`` has
its centre at ``i``). pty-chi's position is ``p = c - O`` with the object origin
``O = round(M / 2) - 0.5`` per axis. It extracts the N x N object window at the *integer* start
``s = round(p) + O - (N - 1) / 2`` and Fourier-shifts the probe by the residual
``r = p - round(p)``. numpy's round is half-to-even, like torch's.
"""

from __future__ import annotations

import numpy as np


def position_origin(object_shape: tuple[int, int]) -> np.ndarray:
    """pty-chi's object origin ``O = round(M / 2) - 0.5`` per axis, as ``[O_y, O_x]``."""
    return np.round(np.asarray(object_shape, dtype=np.float64) / 2.0) - 0.5


def window_starts(coords_yx: np.ndarray, object_shape: tuple[int, int], n: int) -> np.ndarray:
    """Integer start ``(s_y, s_x)`` of the N x N object window of each probe centre, shape (k, 2)."""
    origin = position_origin(object_shape)
    p = np.asarray(coords_yx, dtype=np.float64).reshape(-1, 2) - origin
    return np.round(np.round(p) + origin - (n - 1) / 2.0).astype(np.int64)


def subpixel_residuals(coords_yx: np.ndarray, object_shape: tuple[int, int]) -> np.ndarray:
    """Residual ``r = p - round(p)`` by which pty-chi Fourier-shifts the probe, shape (k, 2)."""
    p = np.asarray(coords_yx, dtype=np.float64).reshape(-1, 2) - position_origin(object_shape)
    return p - np.round(p)
