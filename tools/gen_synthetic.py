"""gen-synthetic: calibrated Poisson ptychography data of a study design, in pty-chi's conventions
(or, for a design with a measured parent, a dose ladder thinned from its counts)."""

from __future__ import annotations

import json

import click

from ._cli import CONTEXT_SETTINGS, fail_on_study_error, verbose_option, version_option
from .core.scan_join import JoinResult, join_scan
from .core.synthetic import GenerationResult
from .core.thinning import generate_data


def summary_lines(result: GenerationResult) -> list[str]:
    """A short table: one line per file with its size and nominal vs measured counts."""
    lines = []
    for dose in result.up_to_date_doses:
        lines.append(f"dose_{dose}: up to date, nothing regenerated (use --force to regenerate)")
    probe = result.probe
    lines.append(
        f"positions: scan {result.n_positions['scan']}, train {result.n_positions['train']}, "
        f"test {result.n_positions['test']}; probe diameter nominal {probe['nominal_diameter_px']:g} px, "
        f"measured {probe['measured_diameter_px']:g} px"
    )
    # The replicate column appears only when the design has several, so a one-draw design prints
    # the table it always did.
    several = result.design.replicates > 1
    header = f"{'dose':>7} {'rep':>3} " if several else f"{'dose':>7} "
    header += f"{'view':<9} {'split':<5} {'n':>5} {'selection':<9} {'overlap':>7} " \
              f"{'nominal':>9} {'expected':>10} {'measured':>10}  file"
    lines.append(header)
    for f in result.files:
        sel = f["selection"]
        overlap = "-" if sel["measured_overlap"] is None else f"{sel['measured_overlap']:.3f}"
        lead = f"{f['dose']:>7} {f.get('replicate', 0):>3} " if several else f"{f['dose']:>7} "
        lines.append(
            f"{lead}{f['view']:<9} {f['split']:<5} {f['n_images']:>5} {sel['selection_strategy']:<9} "
            f"{overlap:>7} {f['dose']:>9} {f['expected_mean_counts']:>10.1f} "
            f"{f['measured_mean_counts']:>10.1f}  {f['root']}/{f['path']}"
        )
    return lines


def join_lines(result: JoinResult) -> list[str]:
    """What a join wrote: the file, then one line per part."""
    lines = [f"joined {result.n_images} patterns of {len(result.parts)} files into {result.path} "
             f"(sha256 {result.sha256[:12]})"]
    for part in result.parts:
        lines.append(f"  {part['n_images']:>6} {part['view']:<9} {part['split']:<5} {part['path']}")
    return lines


def _usage_checks(ctx: click.Context, join_out, parts, generation_options: dict) -> None:
    """--join-scan takes part files and nothing else; generating takes its three options and no files."""
    if join_out is not None:
        given = [flag for flag, value in generation_options.items() if value]
        if given:
            raise click.UsageError(f"--join-scan takes only the part files (not {', '.join(given)}, which "
                                   f"generating from a design takes)", ctx)
        if len(parts) < 2:
            raise click.UsageError("--join-scan needs at least two part files to join (e.g. a dose's "
                                   "patched_train.npz and patched_test.npz)", ctx)
        return
    if parts:
        raise click.UsageError(f"unexpected file argument {parts[0]!r} (files to join follow --join-scan OUT.npz)",
                               ctx)
    for flag in ("--design", "--phase-c-root", "--phase-d-root"):
        if not generation_options[flag]:
            raise click.UsageError(f"Missing option '{flag}'.", ctx)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--design", "design", type=click.Path(dir_okay=False),
              help="Study design JSON (plans/<study>/design.json). Required unless --join-scan.")
@click.option("--phase-c-root", type=click.Path(file_okay=False),
              help="Folder for the baseline files: dose_<d>/patched_{train,test}.npz. Required unless --join-scan.")
@click.option("--phase-d-root", type=click.Path(file_okay=False),
              help="Folder for the overlap views: dose_<d>/<view>/<view>_{train,test}.npz. Required unless "
                   "--join-scan.")
@click.option("--dose", "doses", multiple=True, type=float,
              help="Generate only this dose of the design (repeatable). Default: every dose.")
@click.option("--force", is_flag=True, help="Regenerate even when the files are up to date.")
@click.option("--join-scan", "join_out", type=click.Path(dir_okay=False), metavar="OUT.npz",
              help="Instead of generating: join the PART files (contract NPZs of one scan at one dose, e.g. a "
                   "dose's patched_train.npz and patched_test.npz) into one whole-scan NPZ in scan order, the "
                   "parent of a dose ladder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr (default: only when stderr is a terminal).")
@click.argument("parts", nargs=-1, type=click.Path(dir_okay=False), metavar="[PART.npz]...")
@verbose_option
@version_option("gen-synthetic")
@click.pass_context
@fail_on_study_error
def cli(ctx, design, phase_c_root, phase_d_root, doses, force, join_out, as_json, progress, parts):
    """Generate calibrated Poisson ptychography data (baseline, dense and sparse views) of a design.

    One object, probe and scan per study; per dose an independent seeded Poisson draw of
    pty-chi's own forward model, streamed to disk in batches (no whole-scan array is held in
    memory). A design with "replicates": K draws K independent replicates per dose: replicate 0
    in dose_<d>/ as without replicates, replicate r in dose_<d>/rep<r>/. A view given as
    {"target_overlap": x} gets the spacing whose selection measures closest to x (refused when
    not within 0.02). Writes dataset_index.json in each root, updated as each dose (replicate) is
    finished. An unchanged design with its files present (sha256 checked) regenerates nothing,
    so a rerun after an interruption resumes at the first unfinished dose.

    A design with "measured": {"npz": "parent.npz"} makes a dose ladder from measured data
    instead: each dose is a seeded binomial thinning of the parent's integer counts (every dose
    at most the parent's dose / replicates; nested: a lower dose never has more counts in a
    pixel), written with the same layout, views and indexes (docs/dose_ladders.md).

    --join-scan OUT.npz PART.npz... makes such a parent from simulated data: it joins the parts of
    one scan (same object, probe, dose, draw and optional members; distinct exposures) into one
    whole-scan NPZ in scan_index order, streamed, checked against the contract before it is
    renamed into place, the parts recorded under _metadata/scan/joined_from.

    \b
    Example:
      gen-synthetic --design plans/fly64_dose_overlap/design.json \\
        --phase-c-root tmp/study/phase_c --phase-d-root tmp/study/phase_d --dose 1000
      gen-synthetic --design plans/my_scan_ladder/design.json \\
        --phase-c-root tmp/ladder/phase_c --phase-d-root tmp/ladder/phase_d   # thinned from measured/npz
      gen-synthetic --join-scan tmp/ladder/parent/whole.npz \\
        tmp/study/phase_c/dose_100000/patched_train.npz tmp/study/phase_c/dose_100000/patched_test.npz
    """
    _usage_checks(ctx, join_out, parts, {"--design": design, "--phase-c-root": phase_c_root,
                                         "--phase-d-root": phase_d_root, "--dose": doses, "--force": force})
    if join_out is not None:
        joined = join_scan(join_out, parts)
        if as_json:
            click.echo(json.dumps(joined.to_json(), indent=2))
        else:
            for line in join_lines(joined):
                click.echo(line)
        return
    result = generate_data(design, phase_c_root, phase_d_root, doses=list(doses), force=force, progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        for line in summary_lines(result):
            click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    cli()
