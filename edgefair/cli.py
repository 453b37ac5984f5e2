"""The command line: a thin layer over the library. EdgefairError -> one-line `Error:` and exit 2."""

from __future__ import annotations

import functools
import json
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


def _evict(cache, max_bytes: int) -> None:
    """After a run: least recently used cache entries go until the cache fits its bound."""
    if cache.enabled:
        removed, freed = cache.remove(max_bytes=max_bytes)
        if removed:
            click.echo(f"cache: evicted {removed} least recently used entries ({_size(freed)}) to stay under {_size(max_bytes)}", err=True)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def json_summary(report: dict, out_dir: Path) -> dict:
    """What `edgefair run --json` prints: the verdict, the model to ship, each step's result and
    worst group per gate, and every check observed beyond its limit (report.json has the rest)."""
    from . import render as r

    steps = []
    for s in report.get("steps") or []:
        worst = {}
        for name in r.gated_names(report):
            g = r.worst_gate(s, name)
            if g is not None:
                worst[name] = {k: g.get(k) for k in ("group", "value", "threshold", "status", "n")}
        lat = s.get("latency") or {}
        steps.append({"index": s.get("index"), "name": s.get("name"), "kind": s.get("kind"), "model": s.get("model"),
                      "passed": s.get("passed"), "size_bytes": s.get("size_bytes"), "p50_ms": lat.get("p50_ms"),
                      "p95_ms": lat.get("p95_ms"), "worst": worst})
    exceeded = [{k: e.get(k) for k in ("step", "name", "gate", "group", "value", "threshold", "status", "n")} for e in r.exceeded(report)]
    return {"verdict": report.get("verdict"), "exit_code": EXIT_OK if report.get("verdict") == "pass" else EXIT_GATE_FAILED,
            "selected": report.get("selected"), "out_dir": str(out_dir),
            "checks": {k: len(v) for k, v in (report.get("gate_summary") or {}).items() if isinstance(v, list)},
            "exceeded": exceeded, "steps": steps}


def _executor(recipe, kind: str | None, address: str | None, latency_node: str | None = None):
    """The executor of --executor/--ray-address/--latency-node, else of the recipe's [run] table;
    connected now, so that an unreachable cluster or an unknown node is exit 2 before any work."""
    from .executor import check_address, executor_for

    if address is not None and (kind or recipe.run.executor) != "ray":
        raise EdgefairError("--ray-address: only used with --executor ray")
    if latency_node is not None and (kind or recipe.run.executor) != "ray":
        raise EdgefairError("--latency-node: only used with --executor ray")
    if latency_node is not None and not latency_node.strip():
        raise EdgefairError("--latency-node: must name a node (its id, IP address or host name)")
    return executor_for(recipe, kind, check_address(address, "--ray-address"), latency_node)


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
    """Check what compression does to every group before a model ships to an edge CPU.

    \b
    Example:
      edgefair init model.pt2 eval.npz --out recipe.toml
      edgefair run recipe.toml --out edgefair-out
    """
    import warnings

    # torch's own deprecation chatter while copying exported modules says nothing about the user's model
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", default="edgefair-out", show_default=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the verdict line.")
@click.option("--verbose", "-v", is_flag=True, help="Also print every step's per-group table and gate checks (as in report.txt).")
@click.option("--no-cache", is_flag=True, help="Recompute every step and evaluation instead of reusing cached ones.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Cache folder (default: $EDGEFAIR_CACHE_DIR or ~/.cache/edgefair).")
@click.option("--latency-from", "latency_from", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="Latency JSON from `edgefair probe` on the device; replaces local latency for models with the same sha256 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (verdict, model to ship, steps, checks beyond a limit) on stdout instead of the table.")
@click.option("--previous", "previous", default=None, type=click.Path(path_type=Path), help="Output folder of the last release: compare every model with the model it shipped, per group ([gates] max_group_regression_vs_previous can fail a regression).")
@click.option("--executor", "executor_kind", type=click.Choice(["embedded", "ray"]), default=None, help="Where candidates and eval inference run: in this process (default, or the recipe's [run] executor) or on a Ray cluster.")
@click.option("--ray-address", default=None, metavar="ADDRESS", help="With --executor ray: auto, HOST:PORT or ray://HOST:PORT (default: the recipe's [run] ray_address, else a local cluster).")
@click.option("--latency-node", default=None, metavar="NODE", help="With --executor ray: time latency on this cluster node (id, IP address or host name), by one task holding all its CPUs (default: the recipe's [run] latency_node, else on this machine).")
@handle_errors
def run(recipe: Path | None, out_dir: Path, quiet: bool, verbose: bool, no_cache: bool, cache_dir: Path | None, latency_from: tuple[Path, ...], as_json: bool,
        previous: Path | None, executor_kind: str | None, ray_address: str | None, latency_node: str | None) -> None:
    """Export, compress step by step, evaluate every step per group, gate, and write reports.

    Without RECIPE, runs the bundled reference recipe (UCI Adult MLP).

    \b
    Example:
      edgefair run recipe.toml --out edgefair-out
      edgefair run --json > summary.json    # the bundled recipe; exit code 0/1 = pass/fail
      edgefair run recipe.toml --previous releases/v1 --out releases/v2
    """
    from .cache import Cache, default_dir, max_bytes_from_env
    from .pipeline import run as run_pipeline
    from .progress import Progress
    from .recipe import load_recipe
    from .report import summary_lines, terminal_table

    path = recipe or bundled_recipe()
    if recipe is None and not path.is_file():
        raise EdgefairError(f"bundled recipe not found at {path} (install from a clone with `pip install -e .`, or pass RECIPE)")
    parsed = load_recipe(path)
    check_writable(out_dir)
    cache = Cache(None if no_cache else (cache_dir or default_dir()))
    max_bytes = max_bytes_from_env()  # a bad value is bad input before any work
    for f in latency_from:
        if not f.is_file():
            raise EdgefairError(f"--latency-from: file not found: {f}")
    executor = _executor(parsed, executor_kind, ray_address, latency_node)
    try:
        with Progress(enabled=not quiet) as progress:
            report = run_pipeline(parsed, out_dir, cache=cache, latency_from=latency_from, progress=progress, previous=previous,
                                  executor=executor)
    finally:
        executor.close()
    _evict(cache, max_bytes)
    if as_json:
        click.echo(json.dumps(json_summary(report, out_dir), indent=2))
    elif quiet:
        click.echo("\n".join(summary_lines(report)))
    else:
        click.echo(terminal_table(report, full=verbose))
        click.echo(f"reports written to {out_dir}/")
    sys.exit(EXIT_OK if report["verdict"] == "pass" else EXIT_GATE_FAILED)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def validate(recipe: Path) -> None:
    """Check RECIPE, its model source, data and export parity without compressing anything.

    \b
    Example:
      edgefair validate recipe.toml
    """
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
    """Re-render the human reports of OUT_DIR from its report.json.

    \b
    Example:
      edgefair report edgefair-out
    """

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
@click.option("--executor", "executor_kind", type=click.Choice(["embedded", "ray"]), default=None, help="Where candidates and eval inference run: in this process (default, or the recipe's [run] executor) or on a Ray cluster.")
@click.option("--ray-address", default=None, metavar="ADDRESS", help="With --executor ray: auto, HOST:PORT or ray://HOST:PORT (default: the recipe's [run] ray_address, else a local cluster).")
@click.option("--latency-node", default=None, metavar="NODE", help="With --executor ray: time latency on this cluster node (id, IP address or host name), by one task holding all its CPUs (default: the recipe's [run] latency_node, else on this machine).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (as run --json, plus the search, the frontier and tuned.toml) on stdout instead of the tables.")
@handle_errors
def tune(recipe: Path, out_dir: Path, budget: str | None, no_cache: bool, cache_dir: Path | None, executor_kind: str | None,
         ray_address: str | None, latency_node: str | None, as_json: bool) -> None:
    """Search compression settings for the best model that passes RECIPE's gates.

    Tries dynamic and static int8, then structured pruning at 25/50/75% (fine-tuned when the
    recipe has data.train; not for .onnx sources) with and without int8, cheapest first; RECIPE's
    own steps are ignored. A candidate that cannot run on this model or data is skipped with the
    reason. Selects by RECIPE's [select] by (default: fastest) and writes the usual reports, the
    frontier of every candidate, and tuned.toml, a recipe with the chosen pipeline. Exit 0 when a
    model to ship was found; Ctrl-C stops the search, reports what was found and exits 130.

    \b
    Example:
      edgefair tune recipe.toml --out edgefair-tune --budget 10m
      edgefair tune recipe.toml --json > tune-summary.json
    """
    from .cache import Cache, default_dir, max_bytes_from_env
    from .progress import Progress
    from .recipe import load_recipe
    from .report import terminal_table
    from .tune import frontier_lines, parse_budget, search, tune_recipe

    budget_s = parse_budget(budget) if budget is not None else None
    parsed = tune_recipe(load_recipe(recipe))
    check_writable(out_dir)
    cache = Cache(None if no_cache else (cache_dir or default_dir()))
    max_bytes = max_bytes_from_env()
    executor = _executor(parsed, executor_kind, ray_address, latency_node)
    try:
        with Progress() as progress:
            report = search(parsed, out_dir, cache=cache, progress=progress, budget_s=budget_s, executor=executor)
    finally:
        executor.close()
    _evict(cache, max_bytes)
    info = report["search"]
    echo = (lambda text: None) if as_json else click.echo  # with --json, stdout carries the JSON alone
    echo(terminal_table(report))
    echo("\n".join(frontier_lines(report)))
    echo(f"candidates: {info['evaluated']} evaluated, {info['skipped']} skipped, {info['not_tried']} not tried, of {info['candidates']}")
    sel = report["selected"]
    if sel:  # tuned.toml was published with the report (tune.search)
        if sel["step"] == 0 and not info["evaluated"]:
            echo(f"no candidate was built: keep the uncompressed model ({out_dir}/tuned.toml has no steps)")
        elif sel["step"] == 0:
            echo(f"no passing candidate beats the uncompressed model ({report['gates_applied']['select']}): keep it ({out_dir}/tuned.toml has no steps)")
        else:
            echo(f"selected pipeline ({report['gates_applied']['select']}): {sel['name']}; recipe written to {out_dir}/tuned.toml")
    else:  # publishing replaced the folder: an earlier tune's tuned.toml is gone
        echo("no candidate passed every gate")
    if as_json:
        summary = json_summary(report, out_dir)
        if info["interrupted"]:
            summary["exit_code"] = EXIT_INTERRUPTED
        summary.update(search=info, frontier=report.get("frontier"), tuned_recipe=str(out_dir / "tuned.toml") if sel else None)
        click.echo(json.dumps(summary, indent=2))
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

    \b
    Example:
      edgefair probe edgefair-out/*.onnx --dim seq=128 --out device.json
    """
    from .probe import main as probe_main

    sys.exit(probe_main(list(args), prog="edgefair probe"))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", default="recipe.toml", show_default=True, type=click.Path(dir_okay=False, path_type=Path), help="Recipe file to write.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@handle_errors
def init(model: Path, data: Path, out: Path, force: bool) -> None:
    """Write a starter recipe for MODEL (.pt2, .onnx or pkg.module:factory) and DATA (.npz or .csv).

    Input names come from the model; group columns are proposed from the data (columns with 2 to
    12 values, with each group's size as a comment); the default gates are written out, and every
    key has a comment. The recipe is checked as `edgefair run` will read it before it is written.

    \b
    Example:
      edgefair init models/adult_mlp.pt2 calibration_data/adult_eval.npz --out recipe.toml
      edgefair run recipe.toml
    """
    from .init import summary, write_starter

    text = write_starter(model, data, out, force=force)
    info = summary(text)
    click.echo(f"recipe written to {out}: groups {', '.join(info['groups'])}; "
               f"label {info['label'] or 'none (fidelity gates only)'}; gates {', '.join(info['gates'])}")
    click.echo(f"next: check it, then `edgefair run {out}`")


@main.group()
def cache() -> None:
    """See or clear the cache of step models and statistics.

    The cache is $EDGEFAIR_CACHE_DIR, else ~/.cache/edgefair; after every run the least recently
    used entries are evicted until it fits $EDGEFAIR_CACHE_MAX_BYTES (default 2GB).

    \b
    Example:
      edgefair cache info
      edgefair cache clear --older-than 30d
    """


@cache.command("info")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Cache folder (default: $EDGEFAIR_CACHE_DIR or ~/.cache/edgefair).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@handle_errors
def cache_info(cache_dir: Path | None, as_json: bool) -> None:
    """Show where the cache is, how many entries it holds, their total size and the size bound.

    \b
    Example:
      edgefair cache info
      EDGEFAIR_CACHE_DIR=/tmp/ef edgefair cache info --json
    """
    import time

    from .cache import Cache, default_dir, max_bytes_from_env

    c = Cache(cache_dir or default_dir())
    entries = c.entries()
    by_kind: dict[str, dict[str, int]] = {}
    for e in entries:
        k = by_kind.setdefault("partial" if e.partial else e.kind, {"entries": 0, "bytes": 0})
        k["entries"] += 1
        k["bytes"] += e.size
    info = {"location": str(c.root), "entries": len(entries), "bytes": sum(e.size for e in entries),
            "max_bytes": max_bytes_from_env(), "kinds": by_kind,
            "oldest_use": min((e.last_used for e in entries), default=None)}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"location: {info['location']}" + ("" if c.root.is_dir() else " (not created yet)"))
    click.echo(f"entries: {info['entries']}, {_size(info['bytes'])} of {_size(info['max_bytes'])} allowed (EDGEFAIR_CACHE_MAX_BYTES)")
    for kind, k in sorted(by_kind.items()):
        click.echo(f"  {kind}: {k['entries']} {'entry' if k['entries'] == 1 else 'entries'}, {_size(k['bytes'])}")
    if info["oldest_use"] is not None:
        days = (time.time() - info["oldest_use"]) / 86400
        click.echo(f"least recently used entry: {days:.1f} days ago")


@cache.command("clear")
@click.option("--older-than", default=None, metavar="AGE", help="Only entries not used for this long, e.g. 30d, 12h, 90m.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Cache folder (default: $EDGEFAIR_CACHE_DIR or ~/.cache/edgefair).")
@handle_errors
def cache_clear(older_than: str | None, cache_dir: Path | None) -> None:
    """Remove cached entries: all of them, or those not used for --older-than AGE.

    Safe while other runs use the cache: it waits for their writes, and a run whose entry is
    removed recomputes it.

    \b
    Example:
      edgefair cache clear --older-than 30d
      edgefair cache clear
    """
    from .cache import Cache, default_dir, parse_age

    age = parse_age(older_than) if older_than is not None else None
    c = Cache(cache_dir or default_dir())
    removed, freed = c.remove(older_than_s=age)
    which = f" not used for {older_than}" if older_than else ""
    click.echo(f"removed {removed} entries{which} ({_size(freed)}) from {c.root}")
