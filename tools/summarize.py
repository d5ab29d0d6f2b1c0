"""summarize: score a sweep's reconstructions against ground truth; write summary.json/.md and figures."""

from __future__ import annotations

import json

import click

from ._cli import CONTEXT_SETTINGS, fail_on_study_error, verbose_option, version_option
from .core.summary import metric_table, summarize


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--artifact-root", required=True, type=click.Path(),
              help="Artifact root of the sweep: holds reconstruction_manifest.json and dose_<d>/<view>/<split>/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Summary folder (default: <artifact-root>/summary).")
@click.option("--remove-ramp", is_flag=True, help="Also remove a linear phase ramp before scoring.")
@click.option("--design", "design_path", type=click.Path(dir_okay=False), default=None,
              help="Design whose metrics settings to use (default: the one the manifest was planned from).")
@click.option("--erode", "erode_px", type=click.IntRange(min=0), default=0, show_default=True,
              help="Erode the illuminated mask by this many pixels.")
@click.option("--beside", "beside", multiple=True, metavar="ROOT[:LABEL]",
              help="Put another study's cell means beside this one's (repeatable): ROOT is its artifact root (reads "
                   "ROOT/summary/summary.json), summary folder or summary.json; LABEL names it (default: its design).")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout instead of the table.")
@verbose_option
@version_option("summarize")
@fail_on_study_error
def cli(artifact_root, out_dir, remove_ramp, design_path, erode_px, beside, as_json):
    """Score every reconstruction of a sweep against its ground truth and report.

    For each planned job with a reconstruction: build the well-illuminated mask from the input's
    probe and positions, register the object on objectGuess (sub-pixel), remove the global phase
    offset (and a linear ramp with --remove-ramp), then compute phase and amplitude RMSE, PSNR,
    SSIM and MS-SSIM (sigma from the design), the complex correlation and the FRC with its
    half-bit resolution. Every object checkpoint a job kept is scored the same way: a convergence
    trace per job with its best epoch and flags (under-converged, fitting noise), and a
    convergence figure per dose. Per cell (dose, view, reconstructor): mean, sd and a 95 % Student
    t interval over replicates x splits; paired comparisons (views at each dose, doses per view,
    reconstructors per cell) with a verdict per metric: better, worse or not resolved. With two or
    more replicates, the FRC between their reconstructions (half-bit crossing, integral, 0.5
    crossing); with two or more doses and overlaps, the dose x overlap map and the minimum dose
    reaching the design's quality target. Writes <out>/summary.json (per-job metrics and traces,
    aggregates, statistics, pair FRC, map, failures, skips, provenance), <out>/summary.md and
    <out>/figures/*.png, and prints the metric table. Failed, missing and skipped jobs are
    reported, not fatal.

    Realistic conditions: an input without ground truth (metadata ground_truth false) is scored
    against the highest-dose reconstruction of the same view, split, replicate and reconstructor
    (that one is the reference, not scored); inputs with nominal positions get the position
    error before and after (RMS with the mean offset removed, raw RMS, max); runs from another
    start probe or with probe modes get the probe error of the start and final probe. --beside
    puts another study's cell means beside this one's (difference with a Welch interval, ratio).
    Exit 0 summary written, 1 bad input (not an artifact root, malformed file), 2 usage.

    \b
    Example:
      summarize --artifact-root tmp/study/phase_f
      summarize --artifact-root tmp/study/phase_f --out tmp/summary_ramp --remove-ramp --json
      summarize --artifact-root tmp/realistic/phase_f --beside tmp/study/phase_f:ideal
    """
    outcome = summarize(artifact_root, out_dir=out_dir, remove_ramp=remove_ramp, design_path=design_path,
                        erode_px=erode_px, beside=beside)
    summary = outcome.summary
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(metric_table(summary, markdown=False))
    for failure in summary["failures"]:
        click.echo(f"{failure['job_id']}: {failure['status']}: {failure['error']}", err=True)
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
    c = summary["counts"]
    references = f", {c['references']} references (no ground truth)" if "references" in c else ""
    click.echo(f"{c['scored']} scored{references}, {c['failed']} failed, {c['not_run']} not run, {c['skipped']} skipped "
               f"-> {outcome.summary_path} ({outcome.seconds:.1f} s)", err=True)
