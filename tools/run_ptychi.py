"""run-ptychi: run a manifest's pty-chi reconstructions in isolated, resumable worker processes (or on Dask)."""

from __future__ import annotations

import json
import math
import re
import shlex
import sys

import click

from ._cli import CONTEXT_SETTINGS, EXIT_JOBS_FAILED, fail_on_study_error, verbose_option, version_option
from .core.run.runner import run_manifest
from .core.run.worker import DEVICES

SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}$")


class Seconds(click.ParamType):
    """A finite number of seconds > 0: ``nan``, ``inf`` and ``-1`` are usage errors (exit 2)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r}: expected a finite number of seconds > 0 (omit --timeout for no limit)", param, ctx)
        return seconds


def _scheduler_address(ctx, param, value):
    if value is not None and not SCHEDULER_ADDRESS.match(value):
        raise click.BadParameter(f"{value!r}: expected tcp://HOST:PORT (or tls://HOST:PORT)")
    return value


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--manifest", "manifest_path", required=True, type=click.Path(dir_okay=False),
              help="reconstruction_manifest.json written by plan-jobs.")
@click.option("--dry-run", is_flag=True, help="Print `[DRY RUN] <command>` per job; run and record nothing.")
@click.option("--only", "only", multiple=True, metavar="JOB_ID",
              help="Run only this job, e.g. dose_1000/dense/train (repeatable).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto: CUDA when torch sees a GPU (each worker owns one), else CPU.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (each imports torch and ptychi once).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT", callback=_scheduler_address,
              help="Run the jobs on this Dask distributed scheduler's workers instead (artifact and input "
                   "roots on a filesystem they share; excludes --workers > 1).")
@click.option("--timeout", type=Seconds(), default=None, metavar="SECONDS",
              help="Kill and fail a job that runs longer than this (with --scheduler: cancel it, restart its worker). "
                   "A finite number > 0; nan and inf are usage errors; omit it for no limit.")
@click.option("--force", is_flag=True, help="Redo jobs that already succeeded (same input, options and versions).")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON on stdout.")
@verbose_option
@version_option("run-ptychi")
@fail_on_study_error
def cli(manifest_path, dry_run, only, device, workers, scheduler, timeout, force, as_json):
    """Run the pty-chi reconstructions of a manifest, one isolated worker process per job slot.

    Each job's folder (<artifact-root>/dose_<d>/<view>/<split>/) gets ptychi.log (everything the
    job printed), reconstruction.npz, losses.csv, product.h5 (Ptychodus) and result.json; the
    outcome is written back into the manifest's execution_results after every job. A rerun skips
    jobs whose result.json is ok for the same job, input sha256, options, tool version and engine
    version (an upgrade reruns; --force redoes them). A job about to run loses its manifest entry
    and result.json first, so a killed run never leaves "ok" beside half-written outputs. A job's
    exception, crash, timeout or refused folder (a symbolic link below the artifact root, a log
    that is a link, FIFO or folder) fails that job only. Exit 0 all ok, 1 bad input, 2 usage,
    3 some job failed. Progress goes to stderr, one result line per job to stdout.

    With --scheduler tcp://HOST:PORT the jobs run on a Dask distributed cluster (e.g. one started
    by dask-jobqueue on Slurm/PBS); this process still writes every result.json and the manifest.
    The workers must see the artifact and input roots at the same paths (a shared filesystem) and
    run one thread each (dask worker --nthreads 1). An unreachable scheduler is exit 1.

    \b
    Example:
      run-ptychi --manifest tmp/study/phase_f/reconstruction_manifest.json --dry-run
      run-ptychi --manifest tmp/study/phase_f/reconstruction_manifest.json --workers 2
      run-ptychi --manifest tmp/study/phase_f/reconstruction_manifest.json --only dose_1000/dense/train
      run-ptychi --manifest tmp/study/phase_f/reconstruction_manifest.json --scheduler tcp://head:8786
    """
    if scheduler and workers > 1:
        raise click.UsageError("--scheduler and --workers > 1 exclude each other (the Dask workers run the jobs)")
    report = run_manifest(manifest_path, only=only or None, device=device, workers=workers, timeout=timeout,
                          force=force, dry_run=dry_run, scheduler=scheduler)
    summary = report.to_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif dry_run:
        for argv in report.dry_run_commands:
            click.echo(f"[DRY RUN] {shlex.join(argv)}")
    else:
        for outcome in report.outcomes:
            state = "skipped (resumed)" if outcome.resumed else outcome.status
            ran = not outcome.resumed and outcome.reconstruction_s is not None
            timing = f"\t{outcome.reconstruction_s:.2f} s" if ran else ""
            click.echo(f"{outcome.job_id}\t{state}{timing}" + (f"\t{outcome.error}" if outcome.error else ""))
    if not dry_run:
        counts = summary["counts"]
        ratio = summary["overhead_ratio"]
        click.echo(
            f"run-ptychi: {counts['ok']} ok, {counts['failed']} failed, {counts['timeout']} timed out, "
            f"{counts['crashed']} crashed, {counts['resumed']} already done; wall {summary['wall_s']:.2f} s, "
            f"task.run {summary['reconstruction_s']:.2f} s"
            + (f", overhead ratio {ratio:.3f}" if ratio else ""), err=True)
    if report.failed:
        sys.exit(EXIT_JOBS_FAILED)
