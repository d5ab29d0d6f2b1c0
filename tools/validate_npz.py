"""validate-npz: check NPZ files against the data contract (docs/data_contract.md)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from . import __version__
from ._cli import CONTEXT_SETTINGS, EXIT_BAD_INPUT, EXIT_OK, fail_on_study_error, verbose_option, version_option
from .core import contract, manifests

log = logging.getLogger("ptydose.validate_npz")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON report (schemas/validation_report.schema.json) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout (problem lines go to stderr).")
@click.option("--strict", is_flag=True, help="Warnings (e.g. float32 coordinates) make a file invalid.")
@click.option("--header-only", is_flag=True,
              help="Read only the zip directory, the .npy headers and _metadata; skip the value checks.")
@click.option("-q", "--quiet", is_flag=True, help="Print only problem lines (nothing when every file is valid).")
@verbose_option
@version_option("validate-npz")
@fail_on_study_error
def cli(paths: tuple[Path, ...], report_path: Path | None, as_json: bool, strict: bool, header_only: bool,
        quiet: bool) -> None:
    """Check NPZ files against the study's data contract (docs/data_contract.md).

    PATHS are files or folders (searched recursively for *.npz). Prints one line per problem,
    `path: key: what is wrong (expected ..., found ...)`, then a summary. Object arrays are reported,
    never unpickled. Exit status: 0 every file valid, 1 any file invalid (with --strict: or any
    warning), 2 usage (e.g. a path that does not exist).

    \b
    Example:
      validate-npz tmp/study/phase_c tmp/study/phase_d
      validate-npz --header-only --report tmp/reports/validation.json data/patched_train.npz
    """
    files = contract.find_npz_files(paths)
    full = not header_only
    interactive = sys.stderr.isatty() and not quiet and len(files) > 1

    def progress(i: int, path: Path) -> None:
        log.info("checking %s (%d/%d)", path, i + 1, len(files))
        if interactive:
            click.echo(f"\r[{i + 1}/{len(files)}] {path}"[:100].ljust(100), err=True, nl=False)

    reports = contract.validate_files(files, full=full, progress=progress)
    if interactive:
        click.echo("\r" + " " * 100 + "\r", err=True, nl=False)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    doc = contract.report_document(reports, full=full, strict=strict, tool_version=__version__, created=created)
    if report_path is not None:
        manifests.write_json(report_path, doc, "validation_report")

    for report in reports:
        for line in report.lines():
            click.echo(line, err=as_json)
        if not quiet and not as_json and report.passes(strict):
            click.echo(f"OK {report.path} (n={report.n_images})")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif not quiet:
        mode = "header-only" if header_only else "full"
        click.echo(f"{doc['n_files']} files checked ({mode}{', strict' if strict else ''}): "
                   f"{doc['n_valid']} valid, {doc['n_invalid']} invalid")
    if report_path is not None and not quiet:
        click.echo(f"report: {report_path}", err=True)
    sys.exit(EXIT_OK if doc["ok"] else EXIT_BAD_INPUT)


if __name__ == "__main__":  # pragma: no cover
    cli()
