"""The command line: a thin layer over the library. EdgefairError -> one-line `Error:` and exit 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import __version__
from .errors import EdgefairError

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def bundled_recipe() -> Path:
    """The reference recipe shipped in the repository (Adult MLP)."""
    return Path(__file__).resolve().parent.parent / "calibration_data" / "adult_mlp.toml"


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgefairError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgefair")
def main() -> None:
    """Check what compression does to every group before a model ships to an edge CPU."""


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", default="edgefair-out", show_default=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdict line.")
@handle_errors
def run(recipe: Path | None, out_dir: Path, quiet: bool) -> None:
    """Export, compress step by step, evaluate every step per group, gate, and write reports.

    Without RECIPE, runs the bundled reference recipe (UCI Adult MLP).
    """
    from .pipeline import run as run_pipeline
    from .recipe import load_recipe
    from .report import terminal_table

    path = recipe or bundled_recipe()
    if recipe is None and not path.is_file():
        raise EdgefairError(f"bundled recipe not found at {path} (install from a clone with `pip install -e .`, or pass RECIPE)")
    parsed = load_recipe(path)
    progress = (lambda s: None) if quiet else (lambda s: click.echo(f"· {s}", err=True))
    report = run_pipeline(parsed, out_dir, progress)
    if quiet:
        click.echo(terminal_table(report).splitlines()[-1])
    else:
        click.echo(terminal_table(report))
        click.echo(f"reports written to {out_dir}/")
    sys.exit(EXIT_OK if report["verdict"] == "pass" else EXIT_GATE_FAILED)
