"""plan-jobs: plan the study's reconstruction jobs into reconstruction_manifest.json."""

from __future__ import annotations

import json

import click

from ._cli import CONTEXT_SETTINGS, fail_on_study_error, verbose_option, version_option
from .core.jobs import MAX_EPOCHS, plan_jobs, write_plan
from .core.run.engines.registry import all_algorithms


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--design", "design_path", required=True, type=click.Path(dir_okay=False),
              help="Study design JSON (plans/<study>/design.json).")
@click.option("--phase-c-root", required=True, type=click.Path(file_okay=False),
              help="Root of the baseline NPZs: <root>/dose_<d>/patched_<split>.npz.")
@click.option("--phase-d-root", required=True, type=click.Path(file_okay=False),
              help="Root of the overlap-view NPZs: <root>/dose_<d>/<view>/<view>_<split>.npz.")
@click.option("--artifact-root", required=True, type=click.Path(file_okay=False),
              help="Where the manifest, the skip summary and the job folders go.")
@click.option("--dose", "doses", multiple=True, type=int, help="Only this dose (repeatable).")
@click.option("--view", "views", multiple=True, help="Only this view: baseline, dense, sparse ... (repeatable).")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "test"]),
              help="Only this split (repeatable).")
@click.option("--replicate", "replicates", multiple=True, type=click.IntRange(min=0),
              help="Only this replicate of a design with several (0 is the first; repeatable).")
@click.option("--allow-missing-phase-d", is_flag=True,
              help="Skip jobs whose view NPZ is missing instead of failing.")
@click.option("--algorithm", type=click.Choice(all_algorithms()), default=None,
              help="Replace the algorithm of a one-reconstructor design (its recipe's settings come with it).")
@click.option("--reconstructor", "reconstructors", multiple=True,
              help="Only this reconstructor of the design's reconstructors list (repeatable).")
@click.option("--num-epochs", type=click.IntRange(min=1, max=MAX_EPOCHS), default=None,
              help=f"Epochs per job, 1 to {MAX_EPOCHS} (default: the design's).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and skip summary paths and counts as JSON.")
@verbose_option
@version_option("plan-jobs")
@fail_on_study_error
def cli(design_path, phase_c_root, phase_d_root, artifact_root, doses, views, splits, replicates,
        allow_missing_phase_d, algorithm, reconstructors, num_epochs, as_json):
    """Plan every dose x view x split x replicate (x reconstructor) reconstruction job of a study design.

    Baseline jobs read Phase C (<phase-c-root>/dose_<d>/patched_<split>.npz), overlap views read
    Phase D (<phase-d-root>/dose_<d>/<view>/<view>_<split>.npz); replicate r >= 1 of a design with
    "replicates" reads dose_<d>/rep<r>/... and runs in <artifact-root>/dose_<d>/<view>/<split>/rep<r>/.
    Writes
    <artifact-root>/reconstruction_manifest.json (the jobs, each with its input sha256, output
    folder, options and the exact run-ptychi command) and <artifact-root>/skip_summary.json (jobs
    filtered out or missing, with reasons). Replanning keeps the execution results of jobs that
    are still planned. A design with a reconstructors list of several entries plans each cell once
    per reconstructor, in <artifact-root>/dose_<d>/<view>/<split>/<reconstructor>/.
    Exit 0 planned, 1 bad input (missing data, bad design), 2 usage.

    \b
    Example:
      plan-jobs --design plans/fly64_dose_overlap/design.json \\
        --phase-c-root tmp/study/phase_c --phase-d-root tmp/study/phase_d \\
        --artifact-root tmp/study/phase_f --dose 1000 --view dense
      plan-jobs ... --algorithm EPIE --num-epochs 30   # pty-chi ePIE with its recipe
    """
    plan = write_plan(plan_jobs(
        design_path, phase_c_root, phase_d_root, artifact_root,
        doses=doses or None, views=views or None, splits=splits or None, replicates=replicates or None,
        allow_missing_phase_d=allow_missing_phase_d, algorithm=algorithm, num_epochs=num_epochs,
        reconstructors=reconstructors or None,
    ))
    manifest, skips = plan.manifest, plan.skip_summary
    if as_json:
        click.echo(json.dumps({
            "manifest": str(plan.manifest_path), "skip_summary": str(plan.skip_summary_path),
            "total_jobs": manifest["total_jobs"], "planned_jobs": manifest["filtered_jobs"],
            "skipped_count": skips["skipped_count"], "missing_phase_d_count": skips["missing_phase_d_count"],
            "jobs": [job["id"] for job in manifest["jobs"]],
        }, indent=2))
        return
    for job in manifest["jobs"]:
        click.echo(f"{job['id']}\t{job['selection']['n_accepted']} positions\t{job['input_npz']}")
    for skip in skips["skipped_jobs"]:
        rep = f"/rep{skip['replicate']}" if skip.get("replicate") else ""
        rec = f"/{skip['reconstructor']}" if skip.get("reconstructor") else ""
        click.echo(f"skipped dose_{skip['dose']}/{skip['view']}/{skip['split']}{rep}{rec}: {skip['reason']}", err=True)
    click.echo(f"{manifest['filtered_jobs']} of {manifest['total_jobs']} jobs planned, {skips['skipped_count']} "
               f"skipped ({skips['missing_phase_d_count']} missing Phase D) -> {plan.manifest_path}", err=True)
