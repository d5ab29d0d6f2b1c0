"""Ptychodus product files (``product.h5``) in the layout ``ptychodus.api.io.load_product`` reads.

Layout (Ptychodus 1.7): root attributes ``name``, ``comments``, ``detector_object_distance_m``,
``photon_energy_eV``, ``probe_photon_count``, ``exposure_time_s``; datasets ``probe``
(attributes ``pixel_width_m``, ``pixel_height_m``), ``object`` (attributes ``center_x_m``,
``center_y_m``, ``pixel_width_m``, ``pixel_height_m``), ``object_layer_spacing_m``,
``probe_position_indexes``, ``probe_position_x_m``, ``probe_position_y_m``, ``loss_epochs``,
``loss_values``. Positions are in metres relative to the object centre: Ptychodus places world
``(center_x_m, center_y_m)`` at pixel index ``(W - 1) / 2, (H - 1) / 2``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .fileio import atomic_path

#: Earlier Ptychodus releases read the photon energy under this name; writing both costs nothing.
LEGACY_PHOTON_ENERGY = "probe_energy_eV"


@dataclass
class ProductMetadata:
    name: str
    comments: str
    detector_object_distance_m: float
    photon_energy_eV: float
    probe_photon_count: float
    exposure_time_s: float
    pixel_size_m: float  # object and probe (square pixels)


def write_product(
    path: str | os.PathLike,
    meta: ProductMetadata,
    obj: np.ndarray,
    probe: np.ndarray,
    positions_x_px: np.ndarray,
    positions_y_px: np.ndarray,
    position_indexes: np.ndarray,
    loss_epochs: np.ndarray,
    loss_values: np.ndarray,
) -> Path:
    """Write ``product.h5`` atomically (temporary file in the same folder, then rename).

    ``obj`` is (M, M') or (layers, M, M'); ``probe`` (N, N) or with leading mode axes; positions
    are object pixel-index coordinates (the NPZ's ``xcoords``/``ycoords`` frame).
    """
    path = Path(path)
    obj3 = obj[None] if obj.ndim == 2 else obj
    height, width = obj3.shape[-2:]
    px = float(meta.pixel_size_m)
    x_m = (np.asarray(positions_x_px, dtype=np.float64) - (width - 1) / 2.0) * px
    y_m = (np.asarray(positions_y_px, dtype=np.float64) - (height - 1) / 2.0) * px
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["name"] = meta.name
            h5.attrs["comments"] = meta.comments
            h5.attrs["detector_object_distance_m"] = float(meta.detector_object_distance_m)
            h5.attrs["photon_energy_eV"] = float(meta.photon_energy_eV)
            h5.attrs[LEGACY_PHOTON_ENERGY] = float(meta.photon_energy_eV)
            h5.attrs["probe_photon_count"] = float(meta.probe_photon_count)
            h5.attrs["exposure_time_s"] = float(meta.exposure_time_s)
            h5.create_dataset("probe_position_indexes", data=np.asarray(position_indexes, dtype=np.int64))
            h5.create_dataset("probe_position_x_m", data=x_m)
            h5.create_dataset("probe_position_y_m", data=y_m)
            h5_probe = h5.create_dataset("probe", data=np.asarray(probe, dtype=np.complex64))
            h5_probe.attrs["pixel_width_m"] = px
            h5_probe.attrs["pixel_height_m"] = px
            h5_object = h5.create_dataset("object", data=np.asarray(obj3, dtype=np.complex64))
            h5_object.attrs["center_x_m"] = 0.0
            h5_object.attrs["center_y_m"] = 0.0
            h5_object.attrs["pixel_width_m"] = px
            h5_object.attrs["pixel_height_m"] = px
            # One layer: no spacings (Ptychodus checks len(spacings) + 1 == layers).
            h5.create_dataset("object_layer_spacing_m", data=np.zeros(obj3.shape[0] - 1, dtype=np.float64))
            h5.create_dataset("loss_epochs", data=np.asarray(loss_epochs, dtype=np.int64))
            h5.create_dataset("loss_values", data=np.asarray(loss_values, dtype=np.float64))
    return path
