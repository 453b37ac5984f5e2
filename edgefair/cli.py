"""The command line: a thin layer over the library. EdgefairError -> one-line `Error:` and exit 2."""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import EdgefairError

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_BUG = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a job stopped by Ctrl-C


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
        except KeyboardInterrupt:  # Ctrl-C: not a gate failure (click would make it "Aborted!" and 1)
            click.echo("Interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except Exception:  # a bug: never let it look like a gate failure (1) or bad input (2)
            traceback.print_exc()
            click.echo("edgefair hit a bug (exit code 3); please report the traceback above", err=True)
            sys.exit(EXIT_BUG)

    return wrapper


def check_writable(out_dir: Path) -> None:
    """Fail before any work when the output folder cannot be written."""
    import os

    if out_dir.exists() and not out_dir.is_dir():
        raise EdgefairError(f"--out: {out_dir} exists and is not a folder")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise EdgefairError(f"--out: cannot write to {out_dir} ({probe} is not a writable folder)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgefair")
def main() -> None:
    """Check what compression does to every group before a model ships to an edge CPU."""
    import warnings

    # torch's own deprecation chatter while copying exported modules says nothing about the user's model
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", default="edgefair-out", show_default=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdict line.")
@click.option("--no-cache", is_flag=True, help="Recompute every step and evaluation instead of reusing cached ones.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Cache folder (default: $EDGEFAIR_CACHE_DIR or ~/.cache/edgefair).")
@click.option("--latency-from", "latency_from", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="Latency JSON from `edgefair probe` on the device; replaces local latency for models with the same sha256 (repeatable).")
@handle_errors
def run(recipe: Path | None, out_dir: Path, quiet: bool, no_cache: bool, cache_dir: Path | None, latency_from: tuple[Path, ...]) -> None:
    """Export, compress step by step, evaluate every step per group, gate, and write reports.

    Without RECIPE, runs the bundled reference recipe (UCI Adult MLP).
    """
    from .cache import Cache, default_dir
    from .pipeline import run as run_pipeline
    from .recipe import load_recipe
    from .report import summary_lines, terminal_table

    path = recipe or bundled_recipe()
    if recipe is None and not path.is_file():
        raise EdgefairError(f"bundled recipe not found at {path} (install from a clone with `pip install -e .`, or pass RECIPE)")
    parsed = load_recipe(path)
    check_writable(out_dir)
    progress = (lambda s: None) if quiet else (lambda s: click.echo(f"· {s}", err=True))
    cache = Cache(None if no_cache else (cache_dir or default_dir()))
    for f in latency_from:
        if not f.is_file():
            raise EdgefairError(f"--latency-from: file not found: {f}")
    report = run_pipeline(parsed, out_dir, cache=cache, latency_from=latency_from, progress=progress)
    if quiet:
        click.echo("\n".join(summary_lines(report)))
    else:
        click.echo(terminal_table(report))
        click.echo(f"reports written to {out_dir}/")
    sys.exit(EXIT_OK if report["verdict"] == "pass" else EXIT_GATE_FAILED)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def validate(recipe: Path) -> None:
    """Check RECIPE, its model source, data and export parity without compressing anything."""
    import tempfile

    from .cache import Cache
    from .prepare import prepare
    from .recipe import load_recipe

    parsed = load_recipe(recipe)
    with tempfile.TemporaryDirectory(prefix="edgefair-validate-") as tmp:
        inputs = prepare(parsed, Path(tmp), Cache(None))
    from .groups import group_masks

    masks = group_masks(inputs.eval.attributes, intersections=parsed.data.intersections)
    small = [f"{k} (n={int(m.sum())})" for k, m in masks.items() if m.sum() < parsed.data.min_group_size]
    groups = ", ".join(f"{k} ({len(set(v.tolist()))} values)" for k, v in inputs.eval.attributes.items())
    click.echo(f"recipe ok: {recipe}")
    click.echo(f"model: {inputs.source_kind} {parsed.model.source}; inputs {', '.join(inputs.input_names)}")
    if inputs.parity:
        click.echo(f"export parity: max |onnx - torch| {inputs.parity['max_abs_diff']:.3g} on {inputs.parity['rows']} rows, argmax agreement {inputs.parity['argmax_agreement']:.4f}")
    click.echo(f"eval data: {inputs.eval.n} rows, {'labelled' if inputs.eval.labels is not None else 'no labels (fidelity only)'}; groups: {groups}")
    click.echo(f"groups below min_group_size {parsed.data.min_group_size} (reported as insufficient data): {', '.join(small) or 'none'}")
    click.echo(f"steps: {', '.join(f'{s.name} ({s.kind})' for s in parsed.steps) or 'none'}")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def report(out_dir: Path) -> None:
    """Re-render the human reports of OUT_DIR from its report.json."""
    import json

    from .publish import render_all

    path = out_dir / "report.json"
    if not path.is_file():
        raise EdgefairError(f"{path}: not found (run `edgefair run` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise EdgefairError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict) or data.get("schema_version") != 1:
        got = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
        raise EdgefairError(f"{path}: schema_version {got!r} is not supported (expected 1)")
    missing = [k for k in ("steps", "verdict", "recipe", "environment", "data") if k not in data]
    if missing or not isinstance(data["steps"], list):
        raise EdgefairError(f"{path}: not an edgefair report (missing {', '.join(missing) or 'steps list'})")
    render_all(out_dir, data)
    click.echo(f"reports re-rendered in {out_dir}/")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", default="edgefair-tune", show_default=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--budget", default=None, metavar="DURATION", help="Time budget, e.g. 90s, 10m, 1h: no new candidate starts once it is spent (the ones built are still evaluated).")
@click.option("--no-cache", is_flag=True, help="Recompute every candidate instead of reusing cached ones.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Cache folder (default: $EDGEFAIR_CACHE_DIR or ~/.cache/edgefair).")
@handle_errors
def tune(recipe: Path, out_dir: Path, budget: str | None, no_cache: bool, cache_dir: Path | None) -> None:
    """Search compression settings for the best model that passes RECIPE's gates.

    Tries dynamic and static int8, then structured pruning at 25/50/75% (fine-tuned when the
    recipe has data.train; not for .onnx sources) with and without int8, cheapest first; RECIPE's
    own steps are ignored. A candidate that cannot run on this model or data is skipped with the
    reason. Selects by RECIPE's [select] by (default: fastest) and writes the usual reports, the
    frontier of every candidate, and tuned.toml, a recipe with the chosen pipeline. Exit 0 when a
    model to ship was found; Ctrl-C stops the search, reports what was found and exits 130.
    """
    from .cache import Cache, default_dir
    from .recipe import load_recipe
    from .report import terminal_table
    from .tune import frontier_lines, parse_budget, search, tune_recipe, write_tuned_recipe

    budget_s = parse_budget(budget) if budget is not None else None
    parsed = tune_recipe(load_recipe(recipe))
    check_writable(out_dir)
    cache = Cache(None if no_cache else (cache_dir or default_dir()))
    report = search(parsed, out_dir, cache=cache, progress=lambda s: click.echo(f"· {s}", err=True), budget_s=budget_s)
    info = report["search"]
    click.echo(terminal_table(report))
    click.echo("\n".join(frontier_lines(report)))
    click.echo(f"candidates: {info['evaluated']} evaluated, {info['skipped']} skipped, {info['not_tried']} not tried, of {info['candidates']}")
    sel = report["selected"]
    if sel:
        note = (f"Interrupted: chosen among the {info['evaluated']} of {info['candidates']} candidates built before Ctrl-C."
                if info["interrupted"] else None)
        write_tuned_recipe(out_dir / "tuned.toml", parsed, sel["name"], thresholds=report["gates_applied"]["thresholds"], note=note)
        if sel["step"] == 0 and not info["evaluated"]:
            click.echo(f"no candidate was built: keep the uncompressed model ({out_dir}/tuned.toml has no steps)")
        elif sel["step"] == 0:
            click.echo(f"no passing candidate beats the uncompressed model ({report['gates_applied']['select']}): keep it ({out_dir}/tuned.toml has no steps)")
        else:
            click.echo(f"selected pipeline ({report['gates_applied']['select']}): {sel['name']}; recipe written to {out_dir}/tuned.toml")
    else:
        (out_dir / "tuned.toml").unlink(missing_ok=True)  # an earlier tune's recommendation must not survive this one
        click.echo("no candidate passed every gate")
    if info["interrupted"]:
        click.echo(f"Interrupted: reports on the candidates evaluated so far written to {out_dir}/", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK if sel else EXIT_GATE_FAILED)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def probe(args: tuple[str, ...]) -> None:
    """Measure latency of MODELS on this device (needs only numpy and onnxruntime).

    The same command as `python -m edgefair.probe` (which runs without click): one parser, whose
    options `edgefair probe --help` lists.
    """
    from .probe import main as probe_main

    sys.exit(probe_main(list(args), prog="edgefair probe"))
