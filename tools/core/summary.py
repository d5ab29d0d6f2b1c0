"""Summarise a sweep: score every reconstruction against its ground truth, aggregate, draw, report.

Reads only files: ``<artifact_root>/reconstruction_manifest.json`` (schema-checked),
``skip_summary.json`` if present, each job's ``result.json`` and ``reconstruction.npz``
(``<artifact_root>/<job id>/``), the job's input NPZ (ground truth) and the design named in the
manifest (metric settings). Writes ``summary.json`` (schema ``summary``), ``summary.md`` and
``figures/*.png`` into the summary folder.

Realistic conditions (docs/manifests.md, "Realistic conditions in the summary"): an input
without ground truth is scored against the highest-dose reconstruction of its (view, split,
replicate, reconstructor); nominal positions, start probes and probe modes give per-job position
and probe errors; ``beside`` puts another study's cell means beside this one's. None of it
changes the summary of an ideal sweep.

A partial sweep is reported, never fatal: a job that failed, has no outcome yet, or ran but
cannot be compared (reconstruction or input missing, input changed since planning) becomes a
row with its reason. A file that is there but is not what it should be (malformed JSON, schema
violation, an NPZ that needs pickle or lacks keys, wrong shapes) is a :class:`StudyError` naming
the file: the caller prints one line and exits 1.
"""

from __future__ import annotations

import itertools
import logging
import math
import platform
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from . import figures, metrics, statistics
from .contract import read_contract_npz, read_npz_arrays
from .design import BASELINE_VIEW, SPLITS, StudyDesign, load_design
from .errors import ContractError, DesignError, ManifestError, StudyError
from .fileio import sha256_file
from .jobs import MANIFEST_NAME, SKIP_SUMMARY_NAME, check_manifest_paths, job_id, options_hash
from .manifests import parse_json, read_json, write_json, write_text_atomic
from .run.engines.control import MAX_CHECKPOINTS
from .safepath import check_confined, make_confined_dirs

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = "summary"
FAILED_STATUSES = ("failed", "timeout", "crashed")

# Headline metrics: flat name -> (path in the metrics dict, table label, higher is better).
METRICS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "phase_rmse": (("phase", "rmse"), "phase RMSE (rad)", False),
    "phase_psnr_db": (("phase", "psnr_db"), "phase PSNR (dB)", True),
    "phase_ssim": (("phase", "ssim"), "phase SSIM", True),
    "phase_ms_ssim": (("phase", "ms_ssim"), "phase MS-SSIM", True),
    "amplitude_rmse": (("amplitude", "rmse"), "amp. RMSE", False),
    "amplitude_psnr_db": (("amplitude", "psnr_db"), "amp. PSNR (dB)", True),
    "amplitude_ssim": (("amplitude", "ssim"), "amp. SSIM", True),
    "amplitude_ms_ssim": (("amplitude", "ms_ssim"), "amp. MS-SSIM", True),
    "complex_correlation": (("complex_correlation",), "complex corr.", True),
    "frc_fraction_of_nyquist": (("frc", "fraction_of_nyquist"), "FRC half-bit / Nyquist", True),
    "frc_resolution_px": (("frc", "resolution_px"), "FRC resolution (px)", False),
    "mean_frc": (("frc", "mean_frc"), "mean FRC", True),
}
# Realistic conditions (docs/manifests.md, "Realistic conditions"): per-job measures of the positions and
# the probe, by flat name -> (path in the job row, table label, higher is better). Present only when
# the data or the run have them, so an ideal sweep's summary is unchanged.
REALISTIC_METRICS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "position_rms_before_px": (("positions", "before", "rms_px"), "position RMS before (px)", False),
    "position_rms_after_px": (("positions", "after", "rms_px"), "position RMS after (px)", False),
    "position_raw_rms_before_px": (("positions", "before", "raw_rms_px"), "raw position RMS before (px)", False),
    "position_raw_rms_after_px": (("positions", "after", "raw_rms_px"), "raw position RMS after (px)", False),
    "position_max_before_px": (("positions", "before", "max_px"), "max position error before (px)", False),
    "position_max_after_px": (("positions", "after", "max_px"), "max position error after (px)", False),
    "probe_error_start": (("probe", "start_error"), "probe error, start", False),
    "probe_error_final": (("probe", "final_error"), "probe error, final", False),
    "probe_error_final_registered": (("probe", "final_error_registered"), "probe error, final, shift removed", False),
    "probe_intensity_error_start": (("probe", "start_intensity_error"), "probe intensity error, start", False),
    "probe_intensity_error_final": (("probe", "final_intensity_error"), "probe intensity error, final", False),
}
#: Status of the reference job of a sweep without ground truth: the others are scored against it.
REFERENCE_STATUS = "reference"
_AWAITING_REFERENCE = "awaiting reference"  # internal: a job without ground truth before its reference is known
NO_TRUTH_LINE = ("Scored against the highest-dose reconstruction of the same view, split, replicate and reconstructor "
                 "(no ground truth); that reconstruction itself is not scored.")
FIGURE_METRICS = ("phase_rmse", "phase_ssim", "phase_ms_ssim", "complex_correlation",
                  "frc_fraction_of_nyquist", "amplitude_ssim")

# Convergence (docs/manifests.md, "Checkpoints and convergence"). Each checkpoint is scored with
# the same metrics.compare as the final object; the headline metric is phase SSIM (amplitude SSIM
# with emphasis "amplitude"). A job is under-converged when the headline improved by more than
# CONVERGENCE_TOLERANCE between the last checkpoint at or before (1 - LAST_FRACTION) of its epochs
# and its final epoch; it is fitting noise when its final headline is worse than its best by more
# than CONVERGENCE_TOLERANCE. 0.005 SSIM is about the checkpoint-to-checkpoint jitter of a
# converged LSQML run of the shipped study at dose 1e3 (measured, 10-epoch checkpoints).
LAST_FRACTION = 0.2
CONVERGENCE_TOLERANCE = 0.005


# --------------------------------------------------------------------------- reading


def _metadata(path: Path, raw: np.ndarray) -> dict:
    if raw.shape != () or raw.dtype.kind != "U":
        raise ContractError(f"{path}: _metadata: expected a 0-d unicode string, got {raw.dtype} {raw.shape}")
    try:
        meta = parse_json(str(raw), f"{path}: _metadata")
    except ManifestError as exc:
        raise ContractError(str(exc)) from None
    if not isinstance(meta, dict):
        raise ContractError(f"{path}: _metadata: expected a JSON object")
    return meta


def load_ground_truth(path: Path) -> dict[str, np.ndarray]:
    """objectGuess, probeGuess, xcoords, ycoords of a contract NPZ (headers and metadata checked)."""
    data = read_contract_npz(path, check_values=False, keys=("objectGuess", "probeGuess", "xcoords", "ycoords"))
    return {**data.arrays, "_metadata": data.metadata}


#: Optional members of a contract NPZ that realistic conditions add (docs/data_contract.md).
REALISTIC_INPUT_KEYS = {"nominal_xcoords": "f", "nominal_ycoords": "f", "probe_modes": "c", "valid_pixels": "b"}
#: Optional members of reconstruction.npz that summarize reads: final positions and, when the run used
#: them, the start probe, the probe modes and the start (nominal) positions (docs/reconstruction_contract.md).
RECONSTRUCTION_OPTIONAL_KEYS = {"checkpoint_epochs": "iu", "checkpoint_objects": "c", "checkpoint_seconds": "f",
                                "positions_x_px": "f", "positions_y_px": "f", "initial_probe": "c", "probe_modes": "c",
                                "initial_positions_x_px": "f", "initial_positions_y_px": "f"}


def has_ground_truth(truth: dict) -> bool:
    """False when the input's metadata says ``ground_truth: false`` (objectGuess is no truth: measured data)."""
    return truth["_metadata"].get("ground_truth", True) is not False


def load_realistic_inputs(path: Path, truth: dict) -> dict[str, np.ndarray]:
    """The optional realistic members of a contract NPZ that are present, shapes checked against the truth's."""
    arrays = read_npz_arrays(path, {}, REALISTIC_INPUT_KEYS)
    n = truth["xcoords"].shape
    probe_shape = truth["probeGuess"].shape
    for key in ("nominal_xcoords", "nominal_ycoords"):
        if key in arrays and arrays[key].shape != n:
            raise ContractError(f"{path}: {key}: shape {arrays[key].shape}, expected {n} (one per position)")
    for present, absent in (("nominal_xcoords", "nominal_ycoords"), ("nominal_ycoords", "nominal_xcoords")):
        if present in arrays and absent not in arrays:
            raise ContractError(f"{path}: {absent}: key missing (the file has {present})")
    modes = arrays.get("probe_modes")
    if modes is not None and (modes.ndim != 3 or modes.shape[1:] != probe_shape):
        raise ContractError(f"{path}: probe_modes: shape {modes.shape}, expected (K, {probe_shape[0]}, {probe_shape[1]})")
    return arrays


def load_reconstruction(path: Path, object_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The object and loss history of a run-ptychi ``reconstruction.npz``, checked."""
    arrays = read_npz_arrays(path, {"object": "c", "probe": "c", "loss_epochs": "iu", "loss_values": "f",
                                    "_metadata": "U"}, RECONSTRUCTION_OPTIONAL_KEYS)
    arrays["metadata"] = _metadata(path, arrays["_metadata"])
    _check_checkpoints(path, arrays, tuple(object_shape))
    if arrays["object"].shape != tuple(object_shape):
        raise ContractError(f"{path}: object: shape {arrays['object'].shape} differs from the ground truth {tuple(object_shape)}")
    if arrays["loss_epochs"].shape != arrays["loss_values"].shape:
        raise ContractError(f"{path}: loss_epochs/loss_values: shapes differ")
    if not np.all(np.isfinite(arrays["object"])):
        raise ContractError(f"{path}: object: holds NaN or inf")
    return arrays


def _check_checkpoints(path: Path, arrays: dict, object_shape: tuple[int, int]) -> None:
    """Checkpoint arrays, when present: k increasing epochs >= 1, k objects of the object's shape, k seconds."""
    present = [k for k in ("checkpoint_epochs", "checkpoint_objects", "checkpoint_seconds") if k in arrays]
    if not present:
        return
    for key in ("checkpoint_epochs", "checkpoint_objects"):
        if key not in arrays:
            raise ContractError(f"{path}: {key}: key missing (the file has {present[0]})")
    epochs, objects = arrays["checkpoint_epochs"], arrays["checkpoint_objects"]
    if epochs.ndim != 1 or not 1 <= epochs.size <= MAX_CHECKPOINTS:
        raise ContractError(f"{path}: checkpoint_epochs: expected 1 to {MAX_CHECKPOINTS} epochs (run-ptychi keeps at "
                            f"most {MAX_CHECKPOINTS}), got shape {epochs.shape}")
    if np.any(epochs < 1) or np.any(np.diff(epochs) <= 0):
        raise ContractError(f"{path}: checkpoint_epochs: expected increasing epochs >= 1, got {epochs.tolist()}")
    if objects.shape != (epochs.size, *object_shape):
        raise ContractError(f"{path}: checkpoint_objects: shape {objects.shape}, expected {(epochs.size, *object_shape)}")
    seconds = arrays.get("checkpoint_seconds")
    if seconds is not None and seconds.shape != epochs.shape:
        raise ContractError(f"{path}: checkpoint_seconds: shape {seconds.shape} differs from checkpoint_epochs {epochs.shape}")


def check_reconstruction_identity(path: Path, meta: dict, job: dict, opts_hash: str) -> None:
    """The reconstruction was made by this job, from its planned input, with its planned options.

    run-ptychi records ``job_id``, ``input_sha256`` and ``options_hash`` in every
    ``reconstruction.npz``; a file copied from another job or left by another plan is refused.
    """
    expected = {"job_id": job["id"], "input_sha256": job["input_sha256"], "options_hash": opts_hash}
    for key, value in expected.items():
        found = meta.get(key)
        if found != value:
            shown = found if key == "job_id" else (found[:12] + "..." if isinstance(found, str) else found)
            want = value if key == "job_id" else value[:12] + "..."
            raise ContractError(f"{path}: _metadata/{key}: {shown!r} is not this job's ({want}); the reconstruction "
                                f"belongs to another job or run — rerun run-ptychi for {job['id']}")


def _load_settings(manifest: dict, design_path: Path | None, remove_ramp: bool, erode_px: int,
                   notes: list[str]) -> tuple[metrics.MetricSettings, StudyDesign]:
    prov = manifest["provenance"]
    path = design_path if design_path is not None else Path(prov["design"])
    try:
        design = load_design(path)
    except DesignError as exc:
        hint = "" if design_path is not None else " (the manifest's provenance/design; pass --design)"
        raise DesignError(f"{str(exc).splitlines()[0]}{hint}") from exc
    if design.design_hash != prov["design_hash"]:
        notes.append(f"the design {path.name} changed since planning (hash {design.design_hash[:12]} vs "
                     f"{prov['design_hash'][:12]}); metric settings come from the current file")
    m = design.metrics
    settings = metrics.MetricSettings(
        ms_ssim_sigma=float(m["ms_ssim_sigma"]),
        illumination_threshold=float(m.get("illumination_threshold", 0.1)),
        erode_px=erode_px,
        remove_ramp=remove_ramp,
    )
    return settings, design


# --------------------------------------------------------------------------- scoring


@dataclass
class JobOutcome:
    """One planned job: its status, result fields and (when scored) metrics and figure data."""

    job: dict
    status: str
    error: str | None = None
    returncode: int | None = None
    result: dict | None = None
    comparison: metrics.Comparison | None = None
    gt: np.ndarray | None = None
    loss_epochs: np.ndarray | None = None
    loss_values: np.ndarray | None = None
    convergence: list[dict] | None = None  # one scored entry per checkpoint (None: the file kept none)
    stop_reason: str | None = None
    obj: np.ndarray | None = None  # the reconstructed object as written (for the two-reconstruction FRC)
    mask: np.ndarray | None = None  # the illuminated mask of the input (scored and reference jobs)
    reference: dict | None = None  # without ground truth: {job_id, dose} of the reconstruction it is scored against
    positions: dict | None = None  # position errors (the input has nominal positions)
    probe: dict | None = None  # probe errors (the run started from or refined another probe, or used modes)

    @property
    def key(self) -> tuple[int, str, str]:
        return self.job["dose"], self.job["view"], self.job["split"]

    @property
    def replicate(self) -> int:
        """The job's replicate (a manifest job without one is replicate 0)."""
        return int(self.job.get("replicate", 0))

    @property
    def reconstructor(self) -> str | None:
        return self.job.get("reconstructor")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def flat_metrics(metric_doc: dict) -> dict[str, float | None]:
    """The headline metrics of one job by flat name."""
    flat = {}
    for name, (path, _, _) in METRICS.items():
        value: Any = metric_doc
        for part in path:
            value = value[part]
        flat[name] = None if value is None or not math.isfinite(value) else float(value)
    return flat


@dataclass(frozen=True)
class Reference:
    """The reconstruction jobs without ground truth are scored against (the highest dose of their group)."""

    job_id: str
    dose: int
    obj: np.ndarray


def score_job(job: dict, root: Path, execution: dict | None, settings: metrics.MetricSettings,
              pixel_size_m: float | None, reference: Reference | None = None) -> JobOutcome:
    """Read one job's files and, when it ran ok, compare it with its ground truth.

    An input without ground truth (metadata ``ground_truth: false``) is compared with ``reference``
    instead; without one the outcome waits for it (status internal to :func:`summarize`, which picks
    the references and scores such jobs again).
    """
    check_confined(root, job["id"], "job folder")  # a linked job folder is refused before anything in it is read
    result_path = check_confined(root, f"{job['id']}/result.json", "result.json")
    if not result_path.exists():
        if execution is not None and execution["status"] != "ok":
            return JobOutcome(job, execution["status"], execution.get("error") or "no error recorded",
                              execution.get("returncode"))
        if execution is not None:
            return JobOutcome(job, "unscored", f"result.json missing in {job['id']} (manifest says ok)")
        return JobOutcome(job, "not_run", "no result.json yet")
    result = read_json(result_path, "job_result")
    if result["job_id"] != job["id"]:
        raise ManifestError(f"{result_path}: job_id: {result['job_id']} is not the folder's job {job['id']}")
    if result["status"] != "ok":
        return JobOutcome(job, result["status"], result["error"] or "no error recorded", result["returncode"], result)
    if result["input_sha256"] != job["input_sha256"]:
        return JobOutcome(job, "unscored", "result.json is for another input (input_sha256 differs from the manifest's); rerun",
                          result["returncode"], result)
    if result["options_hash"] != options_hash(job):
        return JobOutcome(job, "unscored", "result.json is for other options (algorithm, epochs or engine options "
                          "changed since it ran); rerun run-ptychi", result["returncode"], result)
    recon_path = check_confined(root, f"{job['id']}/reconstruction.npz", "reconstruction.npz")
    if not recon_path.is_file():
        return JobOutcome(job, "unscored", f"reconstruction.npz missing in {job['id']}", result["returncode"], result)
    input_path = Path(job["input_npz"])
    if not input_path.is_file():
        return JobOutcome(job, "unscored", f"input NPZ not found: {input_path}", result["returncode"], result)
    if sha256_file(input_path) != job["input_sha256"]:
        return JobOutcome(job, "unscored", f"input NPZ changed since planning: {input_path}", result["returncode"], result)
    truth = load_ground_truth(input_path)
    recon = load_reconstruction(recon_path, truth["objectGuess"].shape)
    check_reconstruction_identity(recon_path, recon["metadata"], job, options_hash(job))
    extras = load_realistic_inputs(input_path, truth)
    realistic = {"positions": position_errors(truth, extras, recon, recon_path, job),
                 "probe": probe_errors(truth, extras, recon, recon_path, job)}
    common = {"loss_epochs": recon["loss_epochs"], "loss_values": recon["loss_values"],
              "stop_reason": recon["metadata"].get("stop_reason"), "obj": recon["object"], **realistic}
    target = truth
    ref_doc = None
    if not has_ground_truth(truth):
        if reference is None:
            mask = metrics.illuminated_mask(truth["probeGuess"], truth["xcoords"], truth["ycoords"],
                                            truth["objectGuess"].shape, settings.illumination_threshold, settings.erode_px)
            return JobOutcome(job, _AWAITING_REFERENCE, None, result["returncode"], result, mask=mask, **common)
        target = {**truth, "objectGuess": reference.obj}
        ref_doc = {"job_id": reference.job_id, "dose": reference.dose}
    try:
        comparison = metrics.compare(recon["object"], target["objectGuess"], target["probeGuess"],
                                     target["xcoords"], target["ycoords"], settings, pixel_size_m)
    except ValueError as exc:
        return JobOutcome(job, "unscored", f"cannot compare: {exc}", result["returncode"], result,
                          reference=ref_doc, **realistic)
    convergence = score_checkpoints(recon, target, comparison, settings, pixel_size_m)
    return JobOutcome(job, "scored", None, result["returncode"], result, comparison,
                      gt=np.asarray(target["objectGuess"]), convergence=convergence, mask=comparison.mask,
                      reference=ref_doc, **common)


def _positions_of(recon: dict, recon_path: Path, prefix: str, n: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    keys = (f"{prefix}positions_x_px", f"{prefix}positions_y_px")
    if not any(k in recon for k in keys):
        return None
    for key in keys:
        if key not in recon:
            raise ContractError(f"{recon_path}: {key}: key missing (the file has {keys[0] if key == keys[1] else keys[1]})")
        if recon[key].shape != n:
            raise ContractError(f"{recon_path}: {key}: shape {recon[key].shape}, expected {n} (one per input position)")
    return np.asarray(recon[keys[0]], np.float64), np.asarray(recon[keys[1]], np.float64)


def position_errors(truth: dict, extras: dict, recon: dict, recon_path: Path, job: dict) -> dict | None:
    """``{before, after, ...}`` (:func:`metrics.position_error`) when the input has nominal positions, else None.

    Before: the nominal positions (what the engine was given) against the true ``xcoords/ycoords``;
    after: the final positions of ``reconstruction.npz``. When the file also has the start positions
    (``initial_positions_*``), their mean offset from the nominal ones is taken as the engine's frame
    offset and removed from the final ones (``frame_offset_px``), so both are in the input's frame.
    """
    if "nominal_xcoords" not in extras:
        return None
    n = truth["xcoords"].shape
    final = _positions_of(recon, recon_path, "", n)
    if final is None:
        raise ContractError(f"{recon_path}: positions_x_px: key missing (the input has nominal positions: summarize "
                            f"scores the final ones)")
    nominal_x, nominal_y = extras["nominal_xcoords"].astype(np.float64), extras["nominal_ycoords"].astype(np.float64)
    initial = _positions_of(recon, recon_path, "initial_", n)
    offset = None
    if initial is not None:
        offset = [float(np.mean(initial[0] - nominal_x)), float(np.mean(initial[1] - nominal_y))]
        final = (final[0] - offset[0], final[1] - offset[1])
    options = job.get("engine_options") or {}
    return {"n_positions": int(n[0]), "corrected": bool(options.get("position_correction", False)),
            "frame_offset_px": offset,
            "before": metrics.position_error(nominal_x, nominal_y, truth["xcoords"], truth["ycoords"]),
            "after": metrics.position_error(final[0], final[1], truth["xcoords"], truth["ycoords"])}


def _probe_frame(array: np.ndarray, path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if array.shape != shape:
        raise ContractError(f"{path}: {key}: shape {array.shape}, expected {shape} (probeGuess's)")
    return array


def probe_errors(truth: dict, extras: dict, recon: dict, recon_path: Path, job: dict) -> dict | None:
    """Probe error of the start and the final probe (:func:`metrics.probe_error`, first mode vs probeGuess).

    Reported when the input has a ground truth and the run did something to the probe beyond today's
    true start: ``reconstruction.npz`` has ``initial_probe`` (another start) or ``probe_modes``, the
    input has ``probe_modes`` (partial coherence), or the input carries realistic members and the
    run refined the probe. The start probe is ``initial_probe``, else ``probeGuess`` (what an engine
    starts from without one: error 0). With modes (reconstructed or true), also the relative error
    of the total intensity ``sum_k |P_k|^2`` against the truth's (:func:`metrics.intensity_error`).
    """
    if not has_ground_truth(truth):
        return None
    initial, rec_modes, true_modes = recon.get("initial_probe"), recon.get("probe_modes"), extras.get("probe_modes")
    options = job.get("engine_options") or {}
    refined = bool(options.get("optimize_probe", False))
    realistic_input = bool(extras) or any(k in truth["_metadata"] for k in ("detector", "position_errors", "probe_modes"))
    if initial is None and rec_modes is None and true_modes is None and not (realistic_input and refined):
        return None
    true_probe = truth["probeGuess"]
    shape = true_probe.shape
    start = true_probe if initial is None else _probe_frame(initial, recon_path, "initial_probe", shape)
    if rec_modes is not None:
        if rec_modes.ndim != 3 or rec_modes.shape[1:] != shape:
            raise ContractError(f"{recon_path}: probe_modes: shape {rec_modes.shape}, expected (K, {shape[0]}, {shape[1]})")
        final = rec_modes[0]
    else:
        probe = recon["probe"]
        final = _probe_frame(probe[0] if probe.ndim == 3 else probe, recon_path, "probe", shape)
    doc = {"start": "probeGuess" if initial is None else "initial_probe", "refined": refined,
           "modes": 1 if rec_modes is None else int(rec_modes.shape[0]),
           "true_modes": 1 if true_modes is None else int(true_modes.shape[0]),
           "start_error": metrics.probe_error(start, true_probe), "final_error": metrics.probe_error(final, true_probe),
           "start_intensity_error": None, "final_intensity_error": None}
    doc["final_error_registered"], shift = metrics.registered_probe_error(final, true_probe)
    doc["final_shift_px"] = [float(shift[0]), float(shift[1])]
    if rec_modes is not None or true_modes is not None:
        truth_intensity = metrics.total_intensity(true_probe if true_modes is None else true_modes)
        doc["start_intensity_error"] = metrics.intensity_error(metrics.total_intensity(start), truth_intensity)
        doc["final_intensity_error"] = metrics.intensity_error(
            metrics.total_intensity(final if rec_modes is None else rec_modes), truth_intensity)
    return doc


def score_against_references(outcomes: list[JobOutcome], root: Path, executions: dict, settings: metrics.MetricSettings,
                             pixel_size_m: float | None, planned: list[dict], notes: list[str]) -> dict | None:
    """Jobs without ground truth: the highest-dose reconstruction of each (view, split, replicate,
    reconstructor) becomes the reference (status ``reference``, not scored) and the others of that
    group are scored against it with the same comparison. Replaces the waiting outcomes in place;
    returns summary.json ``scoring`` (None when every job has a ground truth).
    """
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(outcomes):
        if o.status == _AWAITING_REFERENCE:
            groups.setdefault(_reference_group(o.job), []).append(i)
    if not groups:
        return None
    references = []
    for key, members in groups.items():
        top = max(members, key=lambda i: outcomes[i].job["dose"])
        ref = outcomes[top]
        ref.status, ref.reference = REFERENCE_STATUS, {"job_id": ref.job["id"], "dose": ref.job["dose"]}
        ref.gt = normalised_reference(ref.obj, ref.mask)
        highest = max(j["dose"] for j in planned if _reference_group(j) == key)
        if highest > ref.job["dose"]:
            notes.append(f"no ground truth: {ref.job['id']} is the reference of its group (view {key[0]}, split {key[1]}, "
                         f"replicate {key[2]}) although dose {highest} was planned: that job has no usable reconstruction")
        reference = Reference(ref.job["id"], ref.job["dose"], ref.gt)
        for i in members:
            if i != top:
                job = outcomes[i].job
                log.info("scoring %s against %s", job["id"], ref.job["id"])
                outcomes[i] = score_job(job, root, executions.get(job["id"]), settings, pixel_size_m, reference)
        references.append({"view": key[0], "split": key[1], "replicate": key[2], "reconstructor": key[3],
                           "job_id": ref.job["id"], "dose": ref.job["dose"]})
    return {"ground_truth": False, "reference": "highest_dose_reconstruction", "line": NO_TRUTH_LINE,
            "normalisation": REFERENCE_NORMALISATION, "references": references}


REFERENCE_NORMALISATION = ("the reference's global phase (angle of its sum over the illuminated mask) removed and its "
                           "amplitude divided by its mean over the mask")


def normalised_reference(obj: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A reconstruction made fit to stand in for the truth (:data:`REFERENCE_NORMALISATION`).

    A reconstruction's global phase and scale are arbitrary; a truth's are not: a global phase
    near pi would wrap the reference's phase map (its peak-to-peak, the PSNR/SSIM data range,
    would jump to 2 pi), and the scale would set the units of the amplitude errors. With the
    phase removed and the mean amplitude 1, the scores of every group are on one footing.
    """
    obj = np.asarray(obj, np.complex128)
    values = obj[mask]
    if values.size == 0:
        return obj
    mean_amplitude = float(np.mean(np.abs(values)))
    phase = np.exp(-1j * np.angle(np.sum(values)))
    return obj * phase / mean_amplitude if mean_amplitude > 0 else obj * phase


def _reference_group(job: dict) -> tuple:
    return job["view"], job["split"], int(job.get("replicate", 0)), job.get("reconstructor")


def score_checkpoints(recon: dict, truth: dict, final: metrics.Comparison, settings: metrics.MetricSettings,
                      pixel_size_m: float | None) -> list[dict] | None:
    """``[{epoch, seconds, <flat metrics>}]``, one per checkpoint, scored exactly as the final object.

    A checkpoint identical to the final object reuses its comparison (same input, same result); a
    checkpoint that cannot be compared (non-finite values) has null metrics.
    """
    if "checkpoint_epochs" not in recon:
        return None
    seconds = recon.get("checkpoint_seconds")
    entries = []
    for i, epoch in enumerate(recon["checkpoint_epochs"]):
        obj = recon["checkpoint_objects"][i]
        if np.array_equal(obj, recon["object"]):
            flat = flat_metrics(final.metrics)
        elif not np.all(np.isfinite(obj)):
            flat = dict.fromkeys(METRICS)
        else:
            try:
                flat = flat_metrics(metrics.compare(obj, truth["objectGuess"], truth["probeGuess"], truth["xcoords"],
                                                    truth["ycoords"], settings, pixel_size_m).metrics)
            except ValueError:
                flat = dict.fromkeys(METRICS)
        second = None if seconds is None or not math.isfinite(float(seconds[i])) else float(seconds[i])
        entries.append({"epoch": int(epoch), "seconds": second, **flat})
    return entries


def headline_metric(emphasis: str) -> str:
    """The metric convergence is judged by: phase SSIM, or amplitude SSIM with emphasis 'amplitude'."""
    return "amplitude_ssim" if emphasis == "amplitude" else "phase_ssim"


def convergence_flags(trace: list[dict] | None, headline: str, last_fraction: float = LAST_FRACTION,
                      tolerance: float = CONVERGENCE_TOLERANCE) -> dict:
    """``best_epoch``, ``under_converged`` and ``fitting_noise`` of one job's scored checkpoints.

    ``E`` = the last checkpoint's epoch (the epochs run); the reference is the last checkpoint at
    or before ``(1 - last_fraction) * E``. Higher is better for ``headline`` (an SSIM) when
    METRICS says so, else lower. A flag is None when it cannot be judged (no trace, no reference
    checkpoint, a missing value).
    """
    flags = {"best_epoch": None, "under_converged": None, "fitting_noise": None}
    points = [(e["epoch"], e[headline]) for e in trace or [] if e.get(headline) is not None]
    if not trace or not points or points[-1][0] != trace[-1]["epoch"]:
        if points:
            flags["best_epoch"] = _best(points, headline)[0]
        return flags
    sign = 1.0 if METRICS[headline][2] else -1.0
    best_epoch, best_value = _best(points, headline)
    final_epoch, final_value = points[-1]
    flags["best_epoch"] = best_epoch
    flags["fitting_noise"] = bool(sign * (best_value - final_value) > tolerance)
    earlier = [p for p in points if p[0] <= (1.0 - last_fraction) * final_epoch]
    if earlier:
        flags["under_converged"] = bool(sign * (final_value - earlier[-1][1]) > tolerance)
    return flags


def _best(points: list[tuple[int, float]], headline: str) -> tuple[int, float]:
    """The earliest checkpoint with the best value."""
    sign = 1.0 if METRICS[headline][2] else -1.0
    return max(points, key=lambda p: (sign * p[1], -p[0]))


# --------------------------------------------------------------------------- aggregating


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def several_reconstructors(rows: list[dict]) -> bool:
    """Whether the sweep's jobs name more than one reconstructor (then keys and tables carry it)."""
    return len({row.get("reconstructor") for row in rows}) > 1


def aggregate(rows: list[dict]) -> dict:
    """Per (dose, view, split) means and per (dose, view) mean/min/max over the scored jobs.

    With several reconstructors the groups are per reconstructor too, and each carries its name.
    """
    several = several_reconstructors(rows)
    by_split: dict[tuple, list[dict]] = {}
    by_view: dict[tuple, list[dict]] = {}
    order: list[tuple] = []
    for row in rows:
        recon = row.get("reconstructor") if several else None
        key = (row["dose"], row["view"], row["split"], recon)
        by_split.setdefault(key, [])
        if (row["dose"], row["view"], recon) not in by_view:
            by_view[(row["dose"], row["view"], recon)] = []
            order.append((row["dose"], row["view"], recon))
        if row["flat"] is not None:
            by_split[key].append(row)
            by_view[(row["dose"], row["view"], recon)].append(row)
    named = (lambda doc, recon: {**doc, "reconstructor": recon}) if several else (lambda doc, recon: doc)
    split_docs = []
    for (dose, view, split, recon), members in by_split.items():
        means = {}
        for name in METRICS:
            values = [m["flat"][name] for m in members if m["flat"][name] is not None]
            means[name] = float(np.mean(values)) if values else None
        split_docs.append(named({"dose": dose, "view": view, "split": split, "n_scored": len(members),
                                 "metrics": means}, recon))
    view_docs = []
    for dose, view, recon in order:
        members = by_view[(dose, view, recon)]
        stats = {name: _stats([m["flat"][name] for m in members if m["flat"][name] is not None]) for name in METRICS}
        splits = [s for s in SPLITS if any(m["split"] == s for m in members)]
        view_docs.append(named({"dose": dose, "view": view, "n_scored": len(members), "splits": splits,
                                "metrics": stats}, recon))
    return {"by_dose_view_split": split_docs, "by_dose_view": view_docs}


# --------------------------------------------------------------------------- two-reconstruction FRC

# Flat measures of the two-reconstruction FRC: name -> (key in frc_measures, table label, higher is better).
PAIR_METRICS: dict[str, tuple[str, str, bool]] = {
    "pair_frc_fraction_of_nyquist": ("fraction_of_nyquist", "2-recon FRC half-bit / Nyquist", True),
    "pair_frc_resolution_px": ("resolution_px", "2-recon FRC resolution (px)", False),
    "pair_frc_integral": ("integral", "2-recon FRC integral", True),
    "pair_frc_0_5_fraction_of_nyquist": ("fraction_of_nyquist_0_5", "2-recon FRC 0.5 / Nyquist", True),
}
#: The headline resolution measure (docs/decisions.md, "Statistics"): the field's half-bit crossing of the
#: FRC between two independent reconstructions; where it reaches Nyquist the integral still ranks.
HEADLINE_RESOLUTION = "pair_frc_fraction_of_nyquist"


def metric_label(name: str) -> str:
    return METRICS[name][1] if name in METRICS else PAIR_METRICS[name][1] if name in PAIR_METRICS else \
        REALISTIC_METRICS[name][1]


def higher_is_better(name: str) -> bool:
    return METRICS[name][2] if name in METRICS else PAIR_METRICS[name][2] if name in PAIR_METRICS else \
        REALISTIC_METRICS[name][2]


def realistic_flat(row: dict) -> dict[str, float | None]:
    """The realistic-condition measures of one job row by flat name (only those its row has)."""
    flat = {}
    for name, (path, _, _) in REALISTIC_METRICS.items():
        value: Any = row
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            flat[name] = float(value) if math.isfinite(value) else None
    return flat


def pair_frc_entries(outcomes: list[JobOutcome], remove_ramp: bool) -> list[dict]:
    """The two-reconstruction FRC of every (dose, view, split, reconstructor) with >= 2 scored replicates.

    Every pair of replicates (i < j) is compared (:func:`metrics.compare_pair`: j registered on i)
    over the intersection of their illuminated masks (replicates share probe and positions, so the
    masks are equal); the curves are averaged ring by ring and the measures
    (:func:`metrics.frc_measures`) taken on the average, with the half-bit threshold of the rings.
    """
    groups: dict[tuple, dict[int, JobOutcome]] = {}
    for o in outcomes:  # scored jobs, and the reference jobs of a sweep without ground truth
        if o.mask is not None and o.obj is not None:
            groups.setdefault((o.job["dose"], o.job["view"], o.job["split"], o.reconstructor), {})[o.replicate] = o
    entries = []
    for (dose, view, split, recon), members in groups.items():
        if len(members) < 2:
            continue
        replicates = sorted(members)
        mask = np.logical_and.reduce([members[r].mask for r in replicates])
        if not mask.any():
            continue
        pairs, curves, frc = [], [], None
        for i, first in enumerate(replicates):
            for second in replicates[i + 1:]:
                pair = metrics.compare_pair(members[first].obj, members[second].obj, mask, remove_ramp)
                frc = pair.frc
                curves.append(frc.frc)
                pairs.append({"replicates": [first, second], "registration_shift_px": [pair.shift[0], pair.shift[1]],
                              "phase_offset_rad": pair.phase_offset, "frc": frc.frc.tolist(),
                              **_finite(metrics.frc_measures(frc.frequency, frc.frc, frc.threshold))})
        mean_curve = np.mean(curves, axis=0)
        measures = _finite(metrics.frc_measures(frc.frequency, mean_curve, frc.threshold))
        box = metrics.bounding_box(mask)
        truth = [members[r].comparison.metrics["frc"] for r in replicates if members[r].comparison is not None]
        entries.append({
            "dose": dose, "view": view, "split": split, "reconstructor": recon, "replicates": replicates,
            "mask_pixels": int(np.count_nonzero(mask)),
            "bounding_box": [box[0].start, box[0].stop, box[1].start, box[1].stop],
            **measures,
            "rings": {"frequency": frc.frequency.tolist(), "frc": mean_curve.tolist(), "threshold": frc.threshold.tolist(),
                      "n_pixels": frc.n_pixels.tolist()},
            "pairs": pairs,
            # Reference jobs (no ground truth) have no comparison of their own: null.
            "truth_frc": {"fraction_of_nyquist": float(np.mean([f["fraction_of_nyquist"] for f in truth])),
                          "integral": float(np.mean([f["mean_frc"] for f in truth]))} if truth else None,
            "flat": {name: measures[key] for name, (key, _, _) in PAIR_METRICS.items()},
        })
    return entries


# --------------------------------------------------------------------------- uncertainty


def view_order(jobs: list[dict]) -> list[str]:
    """Views, most overlap first: by measured overlap when every view has one, else in order of appearance."""
    overlaps = view_overlaps(jobs)
    views = list(overlaps)
    if views and all(overlaps[v] is not None for v in views):
        return sorted(views, key=lambda v: -overlaps[v])
    return views


def view_overlaps(jobs: list[dict]) -> dict[str, float | None]:
    """Per view (in order of appearance): the mean ``selection.measured_overlap`` of its jobs (None when none has one)."""
    values: dict[str, list[float]] = {}
    for job in jobs:
        measured = (job.get("selection") or {}).get("measured_overlap")
        values.setdefault(job["view"], [])
        if isinstance(measured, (int, float)) and math.isfinite(measured):
            values[job["view"]].append(float(measured))
    return {v: (math.fsum(x) / len(x) if x else None) for v, x in values.items()}


def _cell_of(row: dict, several: bool) -> statistics.Cell:
    return row["dose"], row["view"], row.get("reconstructor") if several else None


def _cell_doc(cell: statistics.Cell) -> dict:
    return {"dose": cell[0], "view": cell[1], "reconstructor": cell[2]}


def statistics_doc(jobs: list[dict], pair_entries: list[dict]) -> dict:
    """summary.json ``statistics``: per-cell intervals and paired comparisons (module statistics).

    ``jobs``: summary job rows (a row without ``replicate`` is replicate 0); ``pair_entries``:
    :func:`pair_frc_entries`. Unscored jobs count for no metric; the pair measures count once per split.
    """
    several = several_reconstructors(jobs)
    realistic = {id(j): realistic_flat(j) for j in jobs}
    names = (list(METRICS) + (list(PAIR_METRICS) if pair_entries else [])
             + [n for n in REALISTIC_METRICS if any(r.get(n) is not None for r in realistic.values())])
    entries = [(_cell_of(j, several), statistics.job_unit(j.get("replicate", 0), j["split"]), j["flat"])
               for j in jobs if j["flat"] is not None]
    entries += [(_cell_of(j, several), statistics.job_unit(j.get("replicate", 0), j["split"]), realistic[id(j)])
                for j in jobs if realistic[id(j)]]
    entries += [(_cell_of(p, several), statistics.pair_unit(p["split"]), p["flat"]) for p in pair_entries]
    units = statistics.collect_units(entries)
    cells = list(dict.fromkeys(_cell_of(j, several) for j in jobs))
    per_cell = statistics.cell_statistics(units, names)
    overlaps = view_overlaps(jobs)
    cell_docs = []
    for cell in cells:
        members = [j for j in jobs if _cell_of(j, several) == cell and j["flat"] is not None]
        cell_docs.append({**_cell_doc(cell), "overlap": overlaps.get(cell[1]), "n_jobs": len(members),
                          "replicates": sorted({j.get("replicate", 0) for j in members}),
                          "splits": [s for s in SPLITS if any(j["split"] == s for j in members)],
                          "metrics": per_cell.get(cell) or statistics.cell_statistics({cell: {}}, names)[cell]})
    order = view_order(jobs)
    directions = {name: higher_is_better(name) for name in names}
    comparisons = [{"kind": kind, "first": _cell_doc(first), "second": _cell_doc(second),
                    "metrics": statistics.compare_cells(units, first, second, directions)}
                   for kind, first, second in statistics.plan_comparisons(cells, order, several)]
    return {"method": statistics.METHOD, "confidence": statistics.CONFIDENCE, "metric_names": names,
            "view_order": order, "cells": cell_docs, "comparisons": comparisons}


def map_metric_names(emphasis: str, target: dict | None, has_pairs: bool) -> list[str]:
    """Metrics drawn on the dose x overlap map: the quality target's, then the headline ones."""
    quantity = "amplitude" if emphasis == "amplitude" else "phase"
    names = ([target["metric"]] if target else []) + [f"{quantity}_ssim", f"{quantity}_rmse"]
    names += [HEADLINE_RESOLUTION, "pair_frc_integral"] if has_pairs else ["mean_frc"]
    return list(dict.fromkeys(names))


def dose_overlap_map(stats: dict, target: dict | None, emphasis: str) -> dict | None:
    """summary.json ``dose_overlap_map``; None unless >= 2 doses and >= 2 views with a measured overlap.

    The axes are the cells' doses and their views' measured overlaps; the values are the cells'
    statistics (``statistics.cells``). With a quality target, the minimum dose per view and
    reconstructor (:func:`statistics.minimum_dose`).
    """
    cells = [c for c in stats["cells"] if c["overlap"] is not None]
    doses = sorted({c["dose"] for c in cells})
    views = {c["view"]: c["overlap"] for c in cells}
    if len(doses) < 2 or len(views) < 2:
        return None
    has_pairs = "pair_frc_integral" in stats["metric_names"]
    names = [n for n in map_metric_names(emphasis, target, has_pairs) if n in stats["metric_names"]]
    by_cell = {(c["dose"], c["view"], c["reconstructor"]): c for c in cells}
    recons = list(dict.fromkeys(c["reconstructor"] for c in cells))
    minimum = []
    higher = None
    if target is not None and target["metric"] in stats["metric_names"]:
        higher = higher_is_better(target["metric"])
        for recon in recons:
            for view, overlap in sorted(views.items(), key=lambda kv: kv[1]):
                column = [by_cell.get((d, view, recon)) for d in doses]
                if not any(column):
                    continue
                found = statistics.minimum_dose(doses, [c["metrics"][target["metric"]] if c else None for c in column],
                                                float(target["value"]), higher)
                minimum.append({"view": view, "reconstructor": recon, "overlap": overlap, **found})
    return {"quality_target": target, "higher_is_better": higher, "metrics": names, "doses": doses,
            "views": [{"view": v, "overlap": o} for v, o in sorted(views.items(), key=lambda kv: kv[1])],
            "min_dose": minimum,
            "method": "cell means interpolated linearly in log10(dose) between the two doses that bracket Q; "
                      "range: the same crossing on the CI bound curves (optimistic: dose_low, pessimistic: dose_high)"}


# --------------------------------------------------------------------------- reporting


def table_metric_names(settings: dict) -> list[str]:
    """Metrics shown in tables: phase first (or amplitude first with emphasis 'amplitude')."""
    phase = ["phase_rmse", "phase_psnr_db", "phase_ssim", "phase_ms_ssim"]
    amplitude = ["amplitude_rmse", "amplitude_ssim", "amplitude_ms_ssim"] if settings["report_amplitude"] else []
    first, second = (amplitude, phase) if settings["emphasis"] == "amplitude" and amplitude else (phase, amplitude)
    return first + second + ["complex_correlation", "frc_fraction_of_nyquist", "frc_resolution_px"]


def fmt(value: Any) -> str:
    """Four significant digits; '-' for missing; 'inf' kept readable."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else "nan"
        return f"{value:.4g}"
    return str(value)


def metric_table(summary: dict, markdown: bool) -> str:
    """The per-job metric table (text for stdout, or markdown)."""
    names = table_metric_names(summary["settings"])
    several = several_reconstructors(summary["jobs"])
    header = ["job"] + (["reconstructor"] if several else []) + ["status"] + [METRICS[n][1] for n in names]
    body = []
    for job in summary["jobs"]:
        flat = job["flat"] or {}
        body.append([job["job_id"]] + ([fmt(job.get("reconstructor"))] if several else []) + [job["status"]]
                    + [fmt(flat.get(n)) for n in names])
    return _render(header, body, markdown)


def _render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)


def convergence_table(summary: dict) -> str | None:
    """Markdown: per scored job with checkpoints, epochs run/planned, best epoch, headline at best and final, flags."""
    rows = [j for j in summary["jobs"] if j.get("convergence")]
    if not rows:
        return None
    conv = summary["settings"].get("convergence") or {}
    headline = conv.get("headline_metric", "phase_ssim")
    label = METRICS[headline][1]
    several = several_reconstructors(summary["jobs"])
    header = (["job"] + (["reconstructor"] if several else [])
              + ["epochs run / planned", "checkpoints", "best epoch", f"{label} at best", f"{label} final", "flags"])
    body = []
    for job in rows:
        trace = job["convergence"]
        best = next((e for e in trace if e["epoch"] == job.get("best_epoch")), None)
        flags = [label for name, label in (("under_converged", "under-converged"), ("fitting_noise", "fitting noise"))
                 if job.get(name)]
        if job.get("stopped_early"):
            flags.append("stopped early")
        planned = job.get("epochs_planned")
        body.append([job["job_id"]] + ([fmt(job.get("reconstructor"))] if several else [])
                    + [f"{fmt(job.get('epochs'))} / {fmt(planned)}", str(len(trace)), fmt(job.get("best_epoch")),
                       fmt(best[headline] if best else None), fmt(trace[-1].get(headline)), ", ".join(flags) or "-"])
    return _render(header, body, markdown=True)


def comparison_lines(summary: dict) -> list[str]:
    """Per dose (and reconstructor, when several): dense against sparse and baseline against dense.

    Point estimates only (a tally of means, no uncertainty): summary.md reports the paired verdicts
    of :func:`comparison_sections` instead.

    Means over splits, as counts. Each line reports wins, ties and losses over the metrics that
    could actually be compared (both means present) and uses the verb that is true of them:
    "beats ... on all N" only when every compared metric favours the first view, "is worse than
    ... on all N" when none does, otherwise the split counts. A pair with no comparable metric says
    so instead of claiming anything.
    """
    aggregates = summary["aggregates"]["by_dose_view"]
    groups = {(g["dose"], g["view"], g.get("reconstructor")): g for g in aggregates}
    doses = sorted({g["dose"] for g in aggregates})
    recons = list(dict.fromkeys(g.get("reconstructor") for g in aggregates))
    lines = []
    for (first, second), dose, recon in itertools.product((("dense", "sparse"), (BASELINE_VIEW, "dense")), doses, recons):
        a, b = groups.get((dose, first, recon)), groups.get((dose, second, recon))
        if not a or not b or not a["n_scored"] or not b["n_scored"]:
            continue
        wins, ties, losses = [], [], []
        for name in table_metric_names(summary["settings"]):
            va, vb = a["metrics"][name]["mean"], b["metrics"][name]["mean"]
            if va is None or vb is None:
                continue
            label = METRICS[name][1]
            if va == vb:
                ties.append(label)
            elif (va > vb) == METRICS[name][2]:
                wins.append(label)
            else:
                losses.append(label)
        where = f"dose {dose}" + (f", {recon}" if recon is not None else "")
        lines.append(f"- {where}: {_comparison_text(first, second, wins, ties, losses)}")
    return lines


def _comparison_text(first: str, second: str, wins: list[str], ties: list[str], losses: list[str]) -> str:
    n = len(wins) + len(ties) + len(losses)
    if n == 0:
        return f"{first} vs {second}: no metric could be compared"
    metric_word = "metric" if n == 1 else "metrics"
    tied = f" (tied: {', '.join(ties)})" if ties else ""
    if len(ties) == n:
        return f"{first} ties {second} on all {n} compared {metric_word}"
    if not losses:
        count = f"all {n}" if len(wins) == n else f"{len(wins)} of {n}"
        return f"{first} beats {second} on {count} compared {metric_word}{tied}"
    if not wins:
        count = f"all {n}" if len(losses) == n else f"{len(losses)} of {n}"
        return f"{first} is worse than {second} on {count} compared {metric_word}{tied}"
    detail = "; ".join([f"worse: {', '.join(losses)}"] + ([f"tied: {', '.join(ties)}"] if ties else []))
    return (f"{first} vs {second}: better on {len(wins)}, tied on {len(ties)}, worse on {len(losses)} of {n} "
            f"compared {metric_word} ({detail})")


def fmt_interval(stat: dict | None) -> str:
    """``mean ± half-width`` (four significant digits; the mean alone when n < 2; '-' when none)."""
    if not stat or stat.get("mean") is None:
        return "-"
    if stat.get("half_width") is None:
        return fmt(stat["mean"])
    return f"{fmt(stat['mean'])} ± {fmt(stat['half_width'])}"


def _shown_metrics(summary: dict, stats: dict) -> list[str]:
    names = table_metric_names(summary["settings"])
    return names + [n for n in PAIR_METRICS if n in stats["metric_names"]]


def cell_table(summary: dict, stats: dict) -> str:
    """Markdown: per cell, its overlap, n and mean ± CI half-width of each shown metric."""
    names = _shown_metrics(summary, stats)
    several = any(c["reconstructor"] is not None for c in stats["cells"])
    header = (["dose", "view"] + (["reconstructor"] if several else []) + ["overlap", "n"]
              + [metric_label(n) for n in names])
    body = []
    for c in stats["cells"]:
        n = max((c["metrics"][name]["n"] for name in METRICS if name in c["metrics"]), default=0)
        body.append([str(c["dose"]), c["view"]] + ([fmt(c["reconstructor"])] if several else [])
                    + [fmt(c["overlap"]), str(n)] + [fmt_interval(c["metrics"].get(name)) for name in names])
    return _render(header, body, markdown=True)


def _where(first: dict, second: dict, kind: str) -> str:
    if kind == "view":
        return f"dose {first['dose']}" + (f", {first['reconstructor']}" if first["reconstructor"] else "")
    if kind == "dose":
        return first["view"] + (f", {first['reconstructor']}" if first["reconstructor"] else "")
    return f"dose {first['dose']}, {first['view']}"


def _side(cell: dict, kind: str) -> str:
    return {"view": cell["view"], "dose": f"dose {cell['dose']}", "reconstructor": cell["reconstructor"]}[kind]


VERDICT_SHORT = {statistics.BETTER: "better", statistics.WORSE: "worse", statistics.NOT_RESOLVED: "n.r."}


def comparison_sections(summary: dict, stats: dict) -> list[str]:
    """Markdown lines: per kind of comparison, a verdict line per comparison and a table of differences."""
    names = [n for n in _shown_metrics(summary, stats)]
    out = []
    titles = {"view": "Views at each dose (denser first)", "dose": "Doses per view (higher first)",
              "reconstructor": "Reconstructors per cell"}
    for kind, title in titles.items():
        chosen = [c for c in stats["comparisons"] if c["kind"] == kind]
        if not chosen:
            continue
        out += [f"### {title}", ""]
        rows = []
        for comp in chosen:
            first, second = comp["first"], comp["second"]
            label = f"{_side(first, kind)} vs {_side(second, kind)}"
            by_verdict: dict[str, list[str]] = {v: [] for v in VERDICT_SHORT}
            for name in names:
                by_verdict[comp["metrics"][name]["verdict"]].append(metric_label(name))
            n_pairs = max((comp["metrics"][name]["n"] for name in names), default=0)
            text = (f"better on {len(by_verdict['better'])}, worse on {len(by_verdict['worse'])}, not resolved on "
                    f"{len(by_verdict['not resolved'])} of {len(names)} metrics")
            if 0 < len(by_verdict["not resolved"]) < len(names):
                text += f" (not resolved: {', '.join(by_verdict['not resolved'])})"
            out.append(f"- {_where(first, second, kind)}: {label} ({n_pairs} {'pair' if n_pairs == 1 else 'pairs'}): {text}")
            rows.append([_where(first, second, kind), label, str(n_pairs)]
                        + [f"{fmt_interval(comp['metrics'][n])} {VERDICT_SHORT[comp['metrics'][n]['verdict']]}"
                           for n in names])
        out += [""] + scoring_lines(summary)
        out += [_render(["where", "first vs second", "pairs"] + [metric_label(n) for n in names], rows, True), ""]
    return out


def pair_frc_table(summary: dict) -> str | None:
    """Markdown: the two-reconstruction FRC per (dose, view, split, reconstructor), truth-FRC beside it."""
    entries = summary.get("pair_frc") or []
    if not entries:
        return None
    several = any(e["reconstructor"] is not None for e in entries)
    header = (["dose", "view", "split"] + (["reconstructor"] if several else [])
              + ["replicates", "half-bit / Nyquist", "resolution (px)", "integral", "0.5 / Nyquist",
                 "truth-FRC half-bit / Nyquist", "truth-FRC integral"])
    body = []
    for e in entries:
        crossing = fmt(e["fraction_of_nyquist"]) + ("" if e["crossed"] else " (not crossed)")
        body.append([str(e["dose"]), e["view"], e["split"]] + ([fmt(e["reconstructor"])] if several else [])
                    + [", ".join(map(str, e["replicates"])), crossing, fmt(e["resolution_px"]), fmt(e["integral"]),
                       fmt(e["fraction_of_nyquist_0_5"]), fmt((e["truth_frc"] or {}).get("fraction_of_nyquist")),
                       fmt((e["truth_frc"] or {}).get("integral"))])
    return _render(header, body, markdown=True)


def _dose_text(dose: float | None, status: str, doses: list[int]) -> str:
    if status == "interpolated":
        return f"{dose:.3g}"
    if status == "at_or_below_lowest":
        return f"≤ {doses[0]:g}"
    if status == "not_reached":
        return f"not reached (> {doses[-1]:g})"
    return "-" if status == "no_data" else "no interval (n < 2)"


def map_section(summary: dict) -> list[str]:
    """Markdown lines of the dose x overlap map: what is drawn and the minimum dose per overlap."""
    doc = summary.get("dose_overlap_map")
    if not doc:
        return []
    out = ["## Dose × overlap map", "",
           f"Heatmaps over (dose, measured overlap) of {', '.join(metric_label(n) for n in doc['metrics'])} "
           f"(`figures/map_<metric>.png`, cell means, contour lines).", ""]
    target = doc["quality_target"]
    if not target:
        return out + ["No quality target in the design (`metrics.quality_target`): no minimum-dose curve.", ""]
    sense = "≥" if doc["higher_is_better"] else "≤"
    out += [f"Minimum dose reaching {metric_label(target['metric'])} {sense} {target['value']:g}: the cell means "
            "interpolated linearly in log dose between the two doses that bracket the target; the range is the "
            "same crossing on the 95 % CI bounds (optimistic bound → low end, pessimistic → high end). "
            "\"not reached\": no studied dose reaches it (the minimum lies above the highest dose).", ""]
    several = any(m["reconstructor"] is not None for m in doc["min_dose"])
    header = ["view"] + (["reconstructor"] if several else []) + ["overlap", "minimum dose", "range (95 % CI)"]
    body = []
    for m in doc["min_dose"]:
        low = _dose_text(m["dose_low"], m["dose_low_status"], doc["doses"])
        high = _dose_text(m["dose_high"], m["dose_high_status"], doc["doses"])
        span = low if m["dose_low_status"] == "no_interval" or low == high else f"{low} … {high}"
        body.append([m["view"]] + ([fmt(m["reconstructor"])] if several else [])
                    + [fmt(m["overlap"]), _dose_text(m["min_dose"], m["status"], doc["doses"]), span])
    return out + scoring_lines(summary) + [_render(header, body, markdown=True), ""]


def scoring_lines(summary: dict) -> list[str]:
    """The line every table of a sweep without ground truth carries (what the scores are against), or nothing."""
    scoring = summary.get("scoring")
    return [f"*{scoring['line']}*", ""] if scoring else []


def conditions_text(summary: dict) -> str:
    """What every reconstruction started from: today's sentence, or the realistic conditions of ``conditions``."""
    cond = summary.get("conditions")
    if not cond:
        return ("Every reconstruction starts from a flat object and the true probe (`probeGuess`, refined when the "
                "design says so) at the exact scan positions (not refined): the baseline measures the algorithm "
                "against dose and overlap, not its robustness to a wrong probe or positions.")
    names = {"true": "the true probe (`probeGuess`)",
             "model": "the design's probe model with the stated defocus and diameter errors (`probe_knowledge`)",
             "estimated": "a probe estimated from the data (mean diffraction pattern, flat phase)"}
    starts = " or ".join(names.get(s, s) for s in cond["probe_start"])
    modes = f"; {cond['probe_modes']} probe modes" if cond["probe_modes"] > 1 else ""
    where = ("the nominal ones an experiment reports (not the true ones: see Positions)" if cond["nominal_positions"]
             else "the exact scan positions")
    refined = "refined by position correction" if cond["position_correction"] else "not refined"
    return (f"Realistic conditions: every reconstruction starts from a flat object; start probe: {starts}, refined "
            f"when the design says so{modes}; positions: {where}, {refined}.")


def _cell_key_cols(summary: dict, several: bool, cell: dict) -> list[str]:
    return [str(cell["dose"]), cell["view"]] + ([fmt(cell["reconstructor"])] if several else [])


def realistic_table(summary: dict, names: list[str]) -> str | None:
    """Markdown: per cell with any of ``names``, n and mean ± CI half-width of each (statistics.cells)."""
    stats = summary.get("statistics") or {}
    names = [n for n in names if n in stats.get("metric_names", [])]
    if not names:
        return None
    cells = [c for c in stats["cells"] if any((c["metrics"].get(n) or {}).get("n") for n in names)]
    several = any(c["reconstructor"] is not None for c in cells)
    header = ["dose", "view"] + (["reconstructor"] if several else []) + ["n"] + [metric_label(n) for n in names]
    body = [_cell_key_cols(summary, several, c) + [str(max(c["metrics"][n]["n"] for n in names))]
            + [fmt_interval(c["metrics"].get(n)) for n in names] for c in cells]
    return _render(header, body, markdown=True)


POSITION_NAMES = ("position_rms_before_px", "position_rms_after_px", "position_raw_rms_before_px",
                  "position_raw_rms_after_px", "position_max_before_px", "position_max_after_px")
PROBE_NAMES = ("probe_error_start", "probe_error_final", "probe_error_final_registered", "probe_intensity_error_start",
               "probe_intensity_error_final")


def positions_section(summary: dict) -> list[str]:
    table = realistic_table(summary, list(POSITION_NAMES))
    if table is None:
        return []
    corrected = sorted({bool(j["positions"]["corrected"]) for j in summary["jobs"] if j.get("positions")})
    how = {(True,): "refined by the engine: position correction", (False,): "position correction off"}.get(
        tuple(corrected), "position correction in some jobs only")
    return ["## Positions", "",
            "Position error in pixels against the true positions (`xcoords/ycoords`): *before* = the nominal positions "
            f"the engine was given, *after* = its final positions ({how}). RMS of |error − mean error| (the object "
            "absorbs a global shift of all positions), raw RMS (mean offset kept) and the largest |error − mean "
            "error|; cell mean ± 95 % CI half-width over replicates × splits (per job: summary.json "
            "`jobs[].positions`). Figure: `figures/position_error_vs_dose.png`.", ""] + scoring_lines(summary) + [table, ""]


def probe_section(summary: dict) -> list[str]:
    table = realistic_table(summary, list(PROBE_NAMES))
    if table is None:
        return []
    return ["## Probe", "",
            "Probe error = min over complex c of ‖c·P − P_true‖ / ‖P_true‖ (scale and global phase free; a shift of "
            "the probe counts as error), first mode against `probeGuess`, for the start probe (`initial_probe`, or "
            "`probeGuess` itself when the run started from it: 0) and the final one; *shift removed*: the final "
            "probe's error after the sub-pixel shift that best aligns it with the truth (a probe and object shifted "
            "together give the same data; the object is registered before it is scored too). With probe modes (reconstructed "
            "or true), the intensity error = min over a ≥ 0 of ‖a·Σₖ|Pₖ|² − I_true‖ / ‖I_true‖, I_true = Σₖ|P_true,k|² "
            "(`probe_modes` of the input, else |probeGuess|²). Cell mean ± 95 % CI half-width (per job: "
            "`jobs[].probe`). Figure: `figures/probe_error_vs_dose.png`.", ""] + scoring_lines(summary) + [table, ""]


def _side_text(side: dict) -> str:
    return fmt_interval({"mean": side["mean"], "half_width": side["half_width"]})


def beside_sections(summary: dict) -> list[str]:
    """Markdown: per other study, its cell means beside this one's (summary.json ``beside``)."""
    out = []
    for doc in summary.get("beside") or []:
        several = any(r["reconstructor"] is not None for r in doc["rows"])
        this, other = doc["this_label"], doc["label"]
        header = (["dose", "view"] + (["reconstructor"] if several else [])
                  + ["metric", this, other, f"{this} − {other} (95 % Welch)", "ratio", "verdict"])
        body = []
        for row in doc["rows"]:
            for name in doc["metrics"]:
                m = row["metrics"][name]
                d = m["difference"]
                diff = fmt_interval({"mean": d["mean"], "half_width": d["half_width"]})
                verdict = VERDICT_SHORT[d["verdict"]] if d["mean"] is not None else "-"
                body.append([str(row["dose"]), row["view"]] + ([fmt(row["reconstructor"])] if several else [])
                            + [metric_label(name), _side_text(m["this"]), _side_text(m["other"]), diff,
                               fmt(d["ratio"]), verdict])
        out += [f"## Beside {other}", "",
                f"This study (`{this}`) beside `{doc['design_name']}` ({doc['summary']}): cell means ± 95 % CI "
                f"half-width over replicates × splits, matched on (dose, view, reconstructor); the difference "
                f"{this} − {other} with a Welch 95 % interval (independent data, so no pairing), the ratio "
                f"{this} / {other} and the verdict for {this} (better / worse when the interval excludes 0, n.r. "
                "otherwise).", ""] + scoring_lines(summary) + [_render(header, body, markdown=True), ""]
    return out


def _skip_id(skip: dict) -> str:
    base = job_id(skip["dose"], skip["view"], skip["split"])
    return f"{base}/rep{skip['replicate']}" if skip.get("replicate") else base


def render_markdown(summary: dict, title: str = "Sweep summary", figure_prefix: str = "figures/",
                    include_provenance: bool = True) -> str:
    """summary.md (and, with other options, docs/results.md) from a summary document."""
    c = summary["counts"]
    s = summary["settings"]
    out = [f"# {title}", ""]
    out.append(f"Design `{summary['design_name']}`: {c['design_jobs']} jobs in the design, {c['planned']} planned, "
               f"{c['scored']} scored, {c['failed']} failed, {c['not_run']} not run, {c['skipped']} skipped.")
    out.append("")
    out.append(f"Metrics over the illuminated region (summed probe intensity > {s['illumination_threshold']:g} x max"
               + (f", eroded {s['erode_px']} px" if s["erode_px"] else "")
               + "), after sub-pixel registration and removal of the global phase offset"
               + (" and a linear phase ramp" if s["remove_ramp"] else "")
               + "; amplitude after the least-squares global scale (the object/probe scale ambiguity)"
               + f". SSIM / MS-SSIM: Gaussian window, sigma = {s['ms_ssim_sigma']:g} px. PSNR range: peak-to-peak of the "
               "ground truth. FRC: complex object against the (noise-free) ground truth, half-bit threshold; "
               "resolution = half-period at the first crossing from above.")
    out.append("")
    if summary.get("scoring"):
        out += [f"**{summary['scoring']['line']}** There \"ground truth\" and \"truth-FRC\" mean that reference "
                f"reconstruction, with {summary['scoring']['normalisation']}; the two-reconstruction FRC needs no "
                "truth.", ""]
    out.append(conditions_text(summary))
    stats = summary.get("statistics") or statistics_doc(summary["jobs"], summary.get("pair_frc") or [])
    out += ["", "## Per (dose, view): mean ± 95 % CI over replicates × splits", "",
            "Each cell: mean ± half-width of the 95 % Student t interval over its n scored units (replicate × split; "
            "the two-reconstruction FRC counts once per split); a value without ± has n = 1. Formula: "
            "docs/manifests.md, \"Uncertainty and comparisons\".", ""] + scoring_lines(summary) + [cell_table(summary, stats), ""]
    out += beside_sections(summary)
    comparisons = comparison_sections(summary, stats)
    if comparisons:
        out += ["## Paired comparisons", "",
                "Differences first − second over the units both cells scored (same replicate and split), mean ± "
                "95 % t half-width. Verdict per metric: better / worse when the interval excludes 0 (oriented by "
                "the metric's direction), not resolved (n.r.) when it contains 0 or fewer than 2 pairs exist.", ""]
        out += comparisons
    pair_table = pair_frc_table(summary)
    if pair_table is not None:
        out += ["## Resolution: two-reconstruction FRC", "",
                "FRC between the reconstructions of two replicates (independent Poisson draws) of the same view and "
                "split, the second registered on the first, global phase removed, half-bit threshold; every pair of "
                "replicates averaged ring by ring. Headline resolution: its half-bit crossing (fraction of Nyquist; "
                "1 = not crossed, resolution at least the pixel); the integral (mean FRC up to Nyquist) and the 0.5 "
                "crossing still rank where it does not cross. The truth-FRC (against the noise-free object) stays "
                "beside it, averaged over the replicates.", ""] + scoring_lines(summary) + [pair_table, ""]
    map_lines = map_section(summary)
    if map_lines:
        out += map_lines
    out += positions_section(summary) + probe_section(summary)
    out += ["## Per job", ""] + scoring_lines(summary) + [metric_table(summary, markdown=True), ""]
    table = convergence_table(summary)
    if table is not None:
        conv = s.get("convergence") or {}
        headline = METRICS[conv.get("headline_metric", "phase_ssim")][1]
        out += ["## Convergence", "",
                f"Every checkpoint the job kept is scored like the final object. Best epoch: the checkpoint with the "
                f"best {headline}. Under-converged: {headline} still improved by more than "
                f"{conv.get('tolerance', CONVERGENCE_TOLERANCE):g} over the last "
                f"{conv.get('last_fraction', LAST_FRACTION):.0%} of the epochs run; fitting noise: the final value is "
                f"worse than the best by more than that.", ""] + scoring_lines(summary) + [table, ""]
    out += ["## Failures", ""]
    if summary["failures"]:
        out += [f"- `{f['job_id']}` {f['status']}"
                + (f" (return code {f['returncode']})" if f["returncode"] not in (None, 0) else "")
                + f": {f['error']} — log `{f['log_path']}`" for f in summary["failures"]]
    else:
        out.append("None.")
    if summary["not_run"]:
        out += ["", "Not run yet: " + ", ".join(f"`{j}`" for j in summary["not_run"]) + "."]
    out += ["", "## Skipped", ""]
    if summary["skips"]:
        out += [f"- `{_skip_id(k)}`: {k['reason']}" for k in summary["skips"]]
    else:
        out.append("None.")
    if summary["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    if summary["figures"]:
        out += ["", "## Figures", ""]
        out += [f"![{Path(f).stem}]({figure_prefix}{Path(f).name})" for f in summary["figures"]]
    out += ["", "## Reproduce", "", "```"] + summary["reproduce"] + ["```"]
    if include_provenance:
        p = summary["provenance"]
        out += ["", f"Written by summarize {p['tool_version']} at {p['created']} from `{p['artifact_root']}` "
                f"(manifest sha256 {p['manifest_sha256'][:12]}, design hash {p['design_hash'][:12]})."]
    return "\n".join(out) + "\n"


def reproduce_commands(manifest: dict, artifact_root: str, remove_ramp: bool, beside: Sequence[str] = ()) -> list[str]:
    """The commands that rebuild this sweep (data, plan, run, summary)."""
    prov = manifest["provenance"]
    filters = prov["filters"]
    dose_flags: list[str] = []
    for dose in filters["doses"] or []:
        dose_flags += ["--dose", str(dose)]
    plan_flags = list(dose_flags)
    for flag, values in (("--view", filters["views"]), ("--split", filters["splits"])):
        for value in values or []:
            plan_flags += [flag, value]
    if prov["allow_missing_phase_d"]:
        plan_flags.append("--allow-missing-phase-d")
    if manifest["jobs"]:  # plan-jobs gives every job the same algorithm and epochs (design or override)
        plan_flags += ["--algorithm", manifest["jobs"][0]["algorithm"],
                       "--num-epochs", str(manifest["jobs"][0]["num_epochs"])]
    roots = ["--phase-c-root", prov["phase_c_root"], "--phase-d-root", prov["phase_d_root"]]
    manifest_path = str(Path(prov["artifact_root"]) / MANIFEST_NAME)
    commands = [
        ["gen-synthetic", "--design", prov["design"], *roots, *dose_flags],
        ["plan-jobs", "--design", prov["design"], *roots, "--artifact-root", prov["artifact_root"], *plan_flags],
        ["run-ptychi", "--manifest", manifest_path],
        ["summarize", "--artifact-root", artifact_root] + (["--remove-ramp"] if remove_ramp else [])
        + [arg for spec in beside for arg in ("--beside", spec)],
    ]
    return [shlex.join(c) for c in commands]


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scipy", "scikit-image", "matplotlib"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


# --------------------------------------------------------------------------- realistic conditions, other studies


def conditions_doc(outcomes: list[JobOutcome]) -> dict | None:
    """summary.json ``conditions``: what the runs started from, when anything differs from the ideal baseline.

    From the manifest jobs' engine options (``probe_start``, ``probe_modes``, ``position_correction``;
    absent = the true probe, one mode, no correction) and the inputs (nominal positions). None for a
    sweep where every job starts from the true probe at the true positions with one mode.
    """
    starts, modes, corrected = set(), 1, False
    for o in outcomes:
        options = o.job.get("engine_options") or {}
        start = options.get("probe_start")
        starts.add(start.get("source", "true") if isinstance(start, dict) else "true")
        modes = max(modes, int(options.get("probe_modes", 1) or 1))
        corrected = corrected or bool(options.get("position_correction", False))
    nominal = any(o.positions is not None for o in outcomes)
    if starts <= {"true"} and modes == 1 and not corrected and not nominal:
        return None
    return {"probe_start": sorted(starts), "probe_modes": modes, "position_correction": corrected,
            "nominal_positions": nominal}


def parse_beside(text: str) -> tuple[Path, str | None]:
    """``ROOT[:LABEL]`` -> (ROOT, LABEL or None). A path that exists as given is taken whole (it may hold a colon)."""
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    root, label = text.rsplit(":", 1)
    return Path(root), (label or None)


@dataclass
class OtherStudy:
    """Another study's summary, read for ``--beside``."""

    spec: str
    label: str
    path: Path
    summary: dict
    sha256: str


def beside_summary_path(root: Path) -> Path:
    """The other study's summary.json: ROOT itself (a file), ROOT/summary.json, or ROOT/summary/summary.json."""
    if root.is_file():
        return root
    if (root / "summary.json").is_file():
        return root / "summary.json"
    return root / "summary" / "summary.json"


def load_beside(spec: str) -> OtherStudy:
    """Read (schema-checked) the summary.json of another study; a missing or invalid one is a one-line error naming it."""
    root, label = parse_beside(spec)
    path = beside_summary_path(root)
    if not path.is_file():
        raise StudyError(f"{path}: summary.json not found (--beside {spec}: summarize that study first, or name its "
                         f"summary folder or file)")
    doc = read_json(path, SUMMARY_SCHEMA)
    return OtherStudy(spec, label or doc["design_name"], path, doc, sha256_file(path))


def beside_metric_names(emphasis: str) -> list[str]:
    """Headline metrics put beside another study's: SSIM, MS-SSIM and RMSE of the emphasised quantity, the
    complex correlation, the truth-FRC crossing, and the two-reconstruction FRC crossing and integral."""
    quantity = "amplitude" if emphasis == "amplitude" else "phase"
    return [f"{quantity}_ssim", f"{quantity}_ms_ssim", f"{quantity}_rmse", "complex_correlation",
            "frc_fraction_of_nyquist", HEADLINE_RESOLUTION, "pair_frc_integral"]


def _brief(stat: dict | None) -> dict:
    stat = stat or {}
    return {"n": stat.get("n", 0), "mean": stat.get("mean"), "half_width": stat.get("half_width")}


def beside_doc(summary: dict, other: OtherStudy) -> dict:
    """summary.json ``beside`` entry: this study's and the other's cell means side by side.

    Cells are matched on (dose, view, reconstructor); a cell only one study has is listed with the
    other side empty. Per metric (:func:`beside_metric_names`, those both studies report): each
    side's n, mean and CI half-width, and the difference this - other with a Welch interval and
    the ratio this / other (:func:`statistics.unpaired_difference`).
    """
    stats = summary["statistics"]
    theirs = other.summary.get("statistics") or statistics_doc(other.summary["jobs"], other.summary.get("pair_frc") or [])
    names = [n for n in beside_metric_names(summary["settings"]["emphasis"])
             if n in stats["metric_names"] and n in theirs["metric_names"]]
    mine = {(c["dose"], c["view"], c["reconstructor"]): c for c in stats["cells"]}
    other_cells = {(c["dose"], c["view"], c["reconstructor"]): c for c in theirs["cells"]}
    order = {v: i for i, v in enumerate(list(dict.fromkeys(stats["view_order"] + theirs["view_order"])))}
    keys = sorted(set(mine) | set(other_cells),
                  key=lambda k: (k[0], order.get(k[1], len(order)), k[1], "" if k[2] is None else k[2]))
    rows = []
    for key in keys:
        a, b = mine.get(key), other_cells.get(key)
        row_metrics = {}
        for name in names:
            sa = a["metrics"].get(name) if a else None
            sb = b["metrics"].get(name) if b else None
            row_metrics[name] = {"this": _brief(sa), "other": _brief(sb),
                                 "difference": statistics.unpaired_difference(sa or {}, sb or {}, higher_is_better(name))}
        rows.append({"dose": key[0], "view": key[1], "reconstructor": key[2], "metrics": row_metrics})
    return {"label": other.label, "this_label": summary["design_name"], "design_name": other.summary["design_name"],
            "summary": str(other.path), "summary_sha256": other.sha256, "metrics": names,
            "method": "cells matched on (dose, view, reconstructor); difference = this - other with a Welch t interval "
                      "(each study's own variance; independent data, so no pairing); ratio = this / other",
            "rows": _finite(rows)}


# --------------------------------------------------------------------------- the whole summary


@dataclass
class SummaryOutcome:
    summary: dict
    out_dir: Path
    summary_path: Path
    markdown_path: Path
    figure_paths: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _series(o: JobOutcome, several: bool) -> str:
    """What a figure's line or column is: the view, or with several reconstructors the view and the reconstructor."""
    return f"{o.job['view']} {o.reconstructor}" if several and o.reconstructor is not None else o.job["view"]


def _figure_panels(outcomes: list[JobOutcome], split: str, several: bool) -> dict[tuple[int, str], figures.ObjectPanel]:
    panels = {}
    for o in outcomes:
        if o.job["split"] != split:
            continue
        if o.comparison is not None:
            box, mask = o.comparison.box, o.comparison.mask[o.comparison.box]
            gt, rec = o.gt[box], o.comparison.aligned[box]
        elif o.status == REFERENCE_STATUS and o.gt is not None:  # no ground truth: the reference stands for it
            box = metrics.bounding_box(o.mask)
            mask, gt = o.mask[box], o.gt[box]
            rec = gt
        else:
            continue
        rec_phase = np.angle(gt) + np.angle(rec * np.conj(gt))
        panels[(o.job["dose"], _series(o, several))] = figures.ObjectPanel(
            gt_phase=np.angle(gt), gt_amplitude=np.abs(gt),
            rec_phase=np.where(mask, rec_phase, np.nan), rec_amplitude=np.where(mask, np.abs(rec), np.nan))
    return panels


def draw_figures(outcomes: list[JobOutcome], summary: dict, fig_dir: Path) -> list[Path]:
    """Every figure of the summary; single-job figures (objects, curves, convergence) show replicate 0."""
    several = several_reconstructors(summary["jobs"])
    doses = sorted({o.job["dose"] for o in outcomes})
    views = list(dict.fromkeys(_series(o, several) for o in outcomes))  # a view, or a view and a reconstructor
    first = [o for o in outcomes if o.replicate == 0]
    paths = []
    for split in SPLITS:
        if not any(o.job["split"] == split for o in first):
            continue
        panels = _figure_panels(first, split, several)
        missing = {(o.job["dose"], _series(o, several)): f"{o.status}" for o in first
                   if o.job["split"] == split and o.comparison is None}
        truth_title = "reference (highest dose)" if summary.get("scoring") else "ground truth"
        for quantity in ("phase", "amplitude"):
            paths.append(figures.object_grid(panels, doses, views, quantity, split,
                                             fig_dir / f"object_{quantity}_{split}.png", missing, truth_title))
    points = [{"dose": o.job["dose"], "view": _series(o, several), "split": o.job["split"], "metrics": row["flat"]}
              for o, row in zip(outcomes, summary["jobs"]) if row["flat"] is not None]
    stats = summary["statistics"]
    cells = [{"dose": c["dose"], "view": _cell_series(c, several), "metrics": c["metrics"]} for c in stats["cells"]]
    labels = {name: METRICS[name][1] for name in FIGURE_METRICS}
    paths.append(figures.metrics_vs_dose(cells, views, labels, fig_dir / "metrics_vs_dose.png", points))
    curves = []
    for o in first:
        curve = figures.CurveJob(o.job["dose"], _series(o, several), o.job["split"])
        if o.comparison is not None:
            curve.frc_frequency = o.comparison.frc.frequency
            curve.frc = o.comparison.frc.frc
            curve.frc_threshold = o.comparison.frc.threshold
        if o.loss_values is not None:  # scored jobs, and the reference jobs of a sweep without ground truth
            curve.loss_epochs, curve.loss_values = o.loss_epochs, o.loss_values
        curves.append(curve)
    paths.append(figures.frc_curves(curves, doses, views, fig_dir / "frc_curves.png"))
    paths.append(figures.loss_curves(curves, doses, views, fig_dir / "loss_curves.png"))
    if summary["pair_frc"]:
        pair_curves = [figures.PairCurve(e["dose"], _cell_series(e, several), e["split"], np.asarray(e["rings"]["frequency"]),
                                         np.asarray(e["rings"]["frc"]), np.asarray(e["rings"]["threshold"]))
                       for e in summary["pair_frc"]]
        paths.append(figures.pair_frc_curves(pair_curves, doses, views, fig_dir / "pair_frc_curves.png"))
    headline = summary["settings"]["convergence"]["headline_metric"]
    traces = [figures.ConvergenceTrace(o.job["dose"], _series(o, several), o.job["split"],
                                       [e["epoch"] for e in row["convergence"]], [e["seconds"] for e in row["convergence"]],
                                       [e[headline] for e in row["convergence"]])
              for o, row in zip(outcomes, summary["jobs"]) if row.get("convergence") and o.replicate == 0]
    if traces:
        for dose in doses:
            paths.append(figures.convergence_curves([t for t in traces if t.dose == dose], dose, views,
                                                    METRICS[headline][1], fig_dir / f"convergence_dose_{dose}.png"))
    if summary["dose_overlap_map"]:
        paths += draw_map(summary["dose_overlap_map"], stats, fig_dir)
    paths += draw_realistic(summary, cells, views, fig_dir)
    return paths


def draw_realistic(summary: dict, cells: list[dict], views: list[str], fig_dir: Path) -> list[Path]:
    """position_error_vs_dose.png, probe_error_vs_dose.png and beside_<i>.png, when the summary has them."""
    names = set(summary["statistics"]["metric_names"])
    paths = []
    position_panels = [(title, "position error (px)", before, after) for title, before, after in (
        ("RMS, mean offset removed", "position_rms_before_px", "position_rms_after_px"),
        ("raw RMS", "position_raw_rms_before_px", "position_raw_rms_after_px"),
        ("max, mean offset removed", "position_max_before_px", "position_max_after_px")) if before in names]
    if position_panels:
        paths.append(figures.before_after_vs_dose(cells, views, position_panels, fig_dir / "position_error_vs_dose.png",
                                                  "position error against the true positions: before = nominal "
                                                  "(given to the engine), after = final; cell mean with 95 % CI"))
    probe_panels = [(title, ylabel, before, after) for title, ylabel, before, after in (
        ("probe (first mode vs probeGuess)", "min_c ||cP - P_true|| / ||P_true||", "probe_error_start", "probe_error_final"),
        ("probe, final shift removed", "min_c ||cP - P_true|| / ||P_true||", "probe_error_start",
         "probe_error_final_registered"),
        ("total intensity sum_k |P_k|^2", "relative intensity error", "probe_intensity_error_start",
         "probe_intensity_error_final")) if after in names]
    if probe_panels:
        paths.append(figures.before_after_vs_dose(cells, views, probe_panels, fig_dir / "probe_error_vs_dose.png",
                                                  "probe error: before = start probe, after = final probe; cell mean "
                                                  "with 95 % CI"))
    for i, doc in enumerate(summary.get("beside") or []):
        if doc["metrics"]:
            labels = {name: metric_label(name) for name in doc["metrics"]}
            paths.append(figures.beside_vs_dose(doc["rows"], doc["metrics"], labels, doc["this_label"], doc["label"],
                                                fig_dir / f"beside_{i + 1}.png"))
    return paths


def _cell_series(cell: dict, several: bool) -> str:
    return f"{cell['view']} {cell['reconstructor']}" if several and cell.get("reconstructor") is not None else cell["view"]


def draw_map(doc: dict, stats: dict, fig_dir: Path) -> list[Path]:
    """map_<metric>.png per drawn metric (and reconstructor) and min_dose_vs_overlap.png with a quality target."""
    paths = []
    doses = doc["doses"]
    views = doc["views"]  # ascending overlap
    by_cell = {(c["dose"], c["view"], c["reconstructor"]): c for c in stats["cells"]}
    recons = list(dict.fromkeys(c["reconstructor"] for c in stats["cells"] if c["overlap"] is not None))
    target = doc["quality_target"]
    for recon in recons:
        suffix = f"_{recon}" if len(recons) > 1 and recon is not None else ""
        for name in doc["metrics"]:
            values = np.full((len(views), len(doses)), np.nan)
            for i, v in enumerate(views):
                for j, d in enumerate(doses):
                    cell = by_cell.get((d, v["view"], recon))
                    mean = cell["metrics"][name]["mean"] if cell else None
                    if mean is not None:
                        values[i, j] = mean
            level = float(target["value"]) if target and target["metric"] == name else None
            title = metric_label(name) + (f", {recon}" if suffix else "") + " (cell means)"
            paths.append(figures.dose_overlap_heatmap(doses, [v["overlap"] for v in views], values, metric_label(name),
                                                      fig_dir / f"map_{name}{suffix}.png", level, title))
    if target and doc["min_dose"]:
        sense = "≥" if doc["higher_is_better"] else "≤"
        points = [figures.MinDosePoint(m["view"] if m["reconstructor"] is None else m["reconstructor"], m["overlap"],
                                       m["min_dose"], m["status"], m["dose_low"], m["dose_low_status"], m["dose_high"],
                                       m["dose_high_status"]) for m in doc["min_dose"]]
        for p in points:  # one line per reconstructor; a single one is named by the target
            if len(recons) == 1:
                p.series = f"{metric_label(target['metric'])} {sense} {target['value']:g}"
        paths.append(figures.min_dose_curve(points, doses, f"{metric_label(target['metric'])} {sense} {target['value']:g}",
                                            fig_dir / "min_dose_vs_overlap.png"))
    return paths


def _job_row(o: JobOutcome, headline: str) -> dict:
    r = o.result or {}
    metric_doc = None
    flat = None
    if o.comparison is not None:
        frc = o.comparison.frc
        metric_doc = _finite(dict(o.comparison.metrics))
        metric_doc["frc"] = dict(metric_doc["frc"])
        metric_doc["frc"]["rings"] = {"frequency": frc.frequency.tolist(), "frc": frc.frc.tolist(),
                                      "threshold": frc.threshold.tolist(), "n_pixels": frc.n_pixels.tolist()}
        flat = flat_metrics(o.comparison.metrics)
    return {
        "job_id": o.job["id"], "dose": o.job["dose"], "view": o.job["view"], "split": o.job["split"],
        "replicate": o.replicate, "status": o.status, "error": o.error, "n_images": o.job["n_images"],
        "selection": o.job["selection"],
        "wall_s": r.get("wall_s"), "reconstruction_s": r.get("reconstruction_s"), "epochs": r.get("epochs"),
        "final_loss": _finite(r.get("final_loss")), "device": r.get("device"), "metrics": metric_doc, "flat": flat,
        "reconstructor": o.reconstructor, "epochs_planned": o.job["num_epochs"],
        "stopped_early": (o.stop_reason is not None) if o.status == "scored" else None,
        "stop_reason": o.stop_reason, "convergence": _finite(o.convergence),
        **convergence_flags(o.convergence, headline),
        # Realistic conditions only: an ideal sweep's rows keep today's keys.
        **{key: _finite(value) for key, value in (("reference", o.reference), ("positions", o.positions),
                                                   ("probe", o.probe)) if value is not None},
    }


def summarize(artifact_root: str | Path, out_dir: str | Path | None = None, remove_ramp: bool = False,
              design_path: str | Path | None = None, erode_px: int = 0, make_figures: bool = True,
              beside: Sequence[str] = ()) -> SummaryOutcome:
    """Score every job of the sweep under ``artifact_root`` and write the summary folder.

    ``beside``: other studies (``ROOT[:LABEL]``, :func:`parse_beside`) whose summary.json cell means
    are put beside this one's (summary.json ``beside``, a table each).
    """
    start = time.perf_counter()
    others = [load_beside(spec) for spec in beside]  # a missing or invalid other summary fails before any scoring
    root = Path(artifact_root)
    if not root.is_dir():
        raise StudyError(f"{root}: artifact root not found (a folder holding {MANIFEST_NAME})")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.exists():
        raise StudyError(f"{root}: no {MANIFEST_NAME}: not an artifact root (run plan-jobs first)")
    manifest = read_json(manifest_path, "reconstruction_manifest")
    check_manifest_paths(manifest, manifest_path.resolve(), at_its_artifact_root=False)
    skip_doc = None
    if (root / SKIP_SUMMARY_NAME).exists():
        skip_doc = read_json(root / SKIP_SUMMARY_NAME, "skip_summary")
    notes: list[str] = []
    if Path(manifest["provenance"]["artifact_root"]).resolve() != root.resolve():
        notes.append(f"the manifest was planned for {manifest['provenance']['artifact_root']}; job folders are read "
                     f"from {root} and inputs from the manifest's paths")
    settings, design = _load_settings(manifest, Path(design_path) if design_path else None, remove_ramp,
                                      erode_px, notes)
    view_order = {v: i for i, v in enumerate(design.views)}
    jobs = sorted(manifest["jobs"], key=lambda j: (j["dose"], view_order.get(j["view"], len(view_order)), j["view"],
                                                    SPLITS.index(j["split"]), j.get("replicate", 0)))
    executions = {e["job_id"]: e for e in manifest["execution_results"]}
    pixel_size = manifest["instrument"]["object_pixel_size_m"]
    outcomes = []
    for job in jobs:
        log.info("scoring %s", job["id"])
        outcomes.append(score_job(job, root, executions.get(job["id"]), settings, pixel_size))
    scoring = score_against_references(outcomes, root, executions, settings, pixel_size, manifest["jobs"], notes)

    known = {(j["dose"], j["view"], j["split"], j.get("replicate", 0)) for j in manifest["jobs"]}
    on_disk = sorted(p.parent.relative_to(root).as_posix()
                     for pattern in ("dose_*/*/*/result.json", "dose_*/*/*/*/result.json",
                                                     "dose_*/*/*/*/*/result.json") for p in root.glob(pattern))
    foreign = [jid for jid in on_disk if jid not in {j["id"] for j in manifest["jobs"]}]
    if foreign:
        notes.append(f"job folders not in the manifest, ignored: {', '.join(foreign)}")
    skips, seen = [], set()
    for source, entries in (("skip_summary", skip_doc["skipped_jobs"] if skip_doc else []),
                            ("missing_jobs", manifest["missing_jobs"])):
        for e in entries:
            replicate = e.get("replicate", 0)
            key = (e["dose"], e["view"], e["split"], replicate, e["reason"])
            if key in seen or key[:4] in known:
                continue
            seen.add(key)
            skips.append({"dose": e["dose"], "view": e["view"], "split": e["split"], "replicate": replicate,
                          "reason": e["reason"], "source": source})

    headline = headline_metric(design.metrics.get("emphasis", "phase"))
    rows = [_job_row(o, headline) for o in outcomes]
    pairs = pair_frc_entries(outcomes, remove_ramp)
    stats = statistics_doc(rows, pairs)
    target = design.metrics.get("quality_target")
    if target is not None and target.get("metric") not in stats["metric_names"]:
        notes.append(f"quality target metric {target.get('metric')!r} is not among this sweep's metrics "
                     f"({', '.join(stats['metric_names'])}); no minimum-dose curve")
    overlap_map = dose_overlap_map(stats, target, design.metrics.get("emphasis", "phase"))
    failures = [{"job_id": o.job["id"], "status": o.status, "returncode": o.returncode, "error": o.error,
                 "log_path": f"{o.job['id']}/ptychi.log"} for o in outcomes if o.status in (*FAILED_STATUSES, "unscored")]
    settings_doc = settings.to_dict()
    settings_doc.update({"emphasis": design.metrics.get("emphasis", "phase"),
                         "report_amplitude": bool(design.metrics.get("report_amplitude", True)),
                         "metric_names": list(METRICS),
                         "convergence": {"headline_metric": headline, "last_fraction": LAST_FRACTION,
                                         "tolerance": CONVERGENCE_TOLERANCE}})
    # Written folders: the one the user named, or <artifact-root>/summary; never through a link inside them.
    out = Path(out_dir) if out_dir is not None else make_confined_dirs(root, "summary", "summary folder")
    counts = {"design_jobs": manifest["total_jobs"], "planned": len(jobs),
              "scored": sum(o.status == "scored" for o in outcomes), "failed": len(failures),
              "not_run": sum(o.status == "not_run" for o in outcomes), "skipped": len(skips)}
    if scoring is not None:
        counts["references"] = sum(o.status == REFERENCE_STATUS for o in outcomes)
    summary = {
        "schema_version": "1.0",
        "design_name": manifest["provenance"]["design_name"],
        "settings": settings_doc,
        "counts": counts,
        "jobs": rows,
        "aggregates": aggregate(rows),
        "statistics": stats,
        "pair_frc": pairs,
        "dose_overlap_map": overlap_map,
        "failures": failures,
        "not_run": [o.job["id"] for o in outcomes if o.status == "not_run"],
        "skips": skips,
        "figures": [],
        "reproduce": reproduce_commands(manifest, str(artifact_root), remove_ramp, beside),
        "notes": notes,
        "provenance": {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool": "summarize", "tool_version": __version__, "artifact_root": str(artifact_root),
            "manifest_sha256": sha256_file(manifest_path), "design": str(design.path),
            "design_hash": manifest["provenance"]["design_hash"], "versions": _versions(),
        },
    }
    # Realistic conditions and comparisons with other studies: keys written only when there is something to say.
    if scoring is not None:
        summary["scoring"] = scoring
    conditions = conditions_doc(outcomes)
    if conditions is not None:
        summary["conditions"] = conditions
    if others:
        summary["beside"] = [beside_doc(summary, other) for other in others]
    figure_paths: list[Path] = []
    if make_figures:
        figure_paths = draw_figures(outcomes, summary, make_confined_dirs(out, "figures", "figures folder"))
        summary["figures"] = [p.relative_to(out).as_posix() for p in figure_paths]
    summary_path = write_json(out / "summary.json", summary, SUMMARY_SCHEMA)
    markdown_path = write_text_atomic(out / "summary.md", render_markdown(summary))
    return SummaryOutcome(summary, out, summary_path, markdown_path, figure_paths, time.perf_counter() - start)
