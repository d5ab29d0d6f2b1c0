#!/usr/bin/env python3
"""A plain numpy ePIE behind the command engine: an example of an external reconstruction method.

It reads the engine's input NPZ (measured counts, probe guess, positions, object shape: no ground
truth), runs a few epochs of ePIE (Maiden & Rodenburg 2009) in the forward model of the data --
the probe Fourier-shifted by each position's sub-pixel residual times an integer object window,
far field by the unnormalised FFT, counts DC-centred -- and writes an NPZ that obeys the
reconstruction contract (docs/reconstruction_contract.md). numpy only.

With a detector mask (the input's optional ``valid_pixels``: True = measured), the modulus
constraint is applied on the measured pixels only; elsewhere the model's own far field is kept,
so unmeasured pixels never pull the reconstruction (nor enter the reported error).

    python simple_epie.py --input input.npz --output output.npz --epochs 8 --seed 123
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

VERSION = "1.0"


def position_origin(object_shape):
    """The object origin O = round(M / 2) - 0.5 per axis that the positions are measured from."""
    return np.round(np.asarray(object_shape, dtype=np.float64) / 2.0) - 0.5


def windows(ycoords, xcoords, object_shape, n):
    """Integer window starts (k, 2) and sub-pixel residuals (k, 2) of each probe centre."""
    p = np.stack([ycoords, xcoords], axis=1) - position_origin(object_shape)
    nearest = np.round(p)
    starts = np.round(nearest + position_origin(object_shape) - (n - 1) / 2.0).astype(np.int64)
    return starts, p - nearest


def shift_ramp(residual, n):
    """exp(-2 pi i f r): multiplying a probe's FFT by it shifts the probe by r = (r_y, r_x)."""
    f = np.fft.fftfreq(n)
    return np.exp(-2j * np.pi * (residual[0] * f[:, None] + residual[1] * f[None, :]))


def epie(counts, probe, ycoords, xcoords, object_shape, epochs, seed, object_step, probe_step, log=print,
         valid_pixels=None):
    """ePIE from a flat object; returns object, probe and the mean squared amplitude error per epoch.

    ``valid_pixels`` (bool, DC-centred like ``counts``; None: all measured): pixels where it is
    False keep the model's amplitude in the modulus constraint and are left out of the error.
    """
    n = probe.shape[-1]
    starts, residuals = windows(ycoords, xcoords, object_shape, n)
    if starts.min() < 0 or np.any(starts + n > np.asarray(object_shape)):
        raise SystemExit("a probe window lies outside the object (positions do not fit object_shape)")
    # Measured amplitudes with DC moved back to pixel (0, 0), where np.fft puts it.
    measured = np.fft.ifftshift(np.sqrt(np.maximum(counts, 0.0)), axes=(-2, -1))
    valid = None if valid_pixels is None else np.fft.ifftshift(np.asarray(valid_pixels, dtype=bool))
    obj = np.ones(object_shape, dtype=np.complex128)
    probe = probe.astype(np.complex128)
    rng = np.random.default_rng(seed)
    losses = []
    for epoch in range(epochs):
        probe_ft = np.fft.fft2(probe)
        error = 0.0
        for j in rng.permutation(len(counts)):
            ramp = shift_ramp(residuals[j], n)
            shifted = np.fft.ifft2(probe_ft * ramp)
            sy, sx = starts[j]
            window = obj[sy:sy + n, sx:sx + n]
            exit_wave = shifted * window
            far = np.fft.fft2(exit_wave)
            amplitude = np.abs(far)
            revised_far = measured[j] * np.exp(1j * np.angle(far))
            if valid is None:
                error += np.mean((amplitude - measured[j]) ** 2)
            else:
                error += np.mean((amplitude - measured[j])[valid] ** 2)
                revised_far = np.where(valid, revised_far, far)
            revised = np.fft.ifft2(revised_far)
            diff = revised - exit_wave
            obj[sy:sy + n, sx:sx + n] = window + object_step * np.conj(shifted) / np.max(np.abs(shifted) ** 2) * diff
            if probe_step > 0:
                update = probe_step * np.conj(window) / np.max(np.abs(window) ** 2) * diff
                probe_ft = probe_ft + np.fft.fft2(update) / ramp  # shifted back to the probe's own frame
        probe = np.fft.ifft2(probe_ft)
        losses.append(error / len(counts))
        log(f"simple_epie: epoch {epoch + 1}/{epochs} loss {losses[-1]:.6g}")
    return obj, probe, np.asarray(losses)


def load_input(path):
    with np.load(path, allow_pickle=False) as npz:
        data = {key: npz[key] for key in ("counts", "probeGuess", "xcoords", "ycoords", "object_shape")}
        data["valid_pixels"] = npz["valid_pixels"] if "valid_pixels" in npz.files else None
        data["metadata"] = json.loads(str(npz["_metadata"]))
    return data


def write_output(path, obj, probe, losses, seconds, parameters):
    """The reconstruction NPZ, written beside its final name and renamed: never half a file."""
    arrays = {
        "object": obj.astype(np.complex64),
        "probe": probe.astype(np.complex64),
        "loss_epochs": np.arange(len(losses), dtype=np.int64),
        "loss_values": losses.astype(np.float64),
        "_metadata": np.array(json.dumps({"method": "simple_epie", "method_version": VERSION,
                                          "reconstruction_s": seconds, "parameters": parameters})),
    }
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="the engine's input NPZ ({input_npz})")
    parser.add_argument("--output", required=True, help="where to write the reconstruction ({output_npz})")
    parser.add_argument("--epochs", type=int, required=True, help="passes over all positions ({num_epochs})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the position order ({seed})")
    parser.add_argument("--object-step", type=float, default=1.0, help="ePIE object step alpha (default 1)")
    parser.add_argument("--probe-step", type=float, default=0.0,
                        help="ePIE probe step beta (default 0: the probe guess is kept)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    data = load_input(args.input)
    shape = tuple(int(s) for s in data["object_shape"])
    print(f"simple_epie {VERSION}: {len(data['counts'])} patterns, object {shape}, {args.epochs} epochs", flush=True)
    start = time.perf_counter()
    obj, probe, losses = epie(data["counts"].astype(np.float64), data["probeGuess"], data["ycoords"],
                              data["xcoords"], shape, args.epochs, args.seed, args.object_step, args.probe_step,
                              log=lambda line: print(line, flush=True), valid_pixels=data["valid_pixels"])
    seconds = time.perf_counter() - start
    parameters = {"object_step": args.object_step, "probe_step": args.probe_step, "seed": args.seed}
    write_output(args.output, obj, probe, losses, seconds, parameters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
