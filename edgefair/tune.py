"""`edgefair tune`: try a grid of compression pipelines on the recipe's model, gate every one, and
pick the one `[select] by` prefers among those that pass (default: the fastest). The result is an
ordinary report (plus `frontier`, `skipped` and `not_tried`) and `tuned.toml`, a recipe whose steps
are the chosen pipeline, ready for `edgefair run` in the release build.

The search is forgiving where `edgefair run` is strict: a candidate that cannot run on this
source or data is skipped with its reason, a time budget stops new candidates from starting, and
Ctrl-C stops the search but still evaluates, gates and reports the candidates already built.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import as_dict
from .errors import EdgefairError
from .io import write_text
from .recipe import Recipe, StepSpec
from .source import is_factory
from .steps import REGISTRY
from .steps.prune import PruneConfig
from .steps.quantize import QuantizeDynamicConfig, QuantizeStaticConfig

SPARSITIES = (0.25, 0.5, 0.75)  # structured: share of neurons/channels removed per layer


def candidates(recipe: Recipe) -> tuple[StepSpec, ...]:
    """The search space, cheapest first (a time budget then cuts the expensive end): int8 variants
    of the baseline (plain, per-channel, and with worst-group keep-float repair), then structured
    pruning at rising ratios (distilled recovery on data.train, else label-free on the calibration
    inputs), each followed by int8 on top. An ONNX source gets int8 only."""
    steps: list[StepSpec] = []

    def add(name: str, kind: str, source: str, config: Any) -> None:
        steps.append(StepSpec(index=len(steps) + 1, name=name, kind=kind, input=source, config=config))

    static = recipe.data.calibration is not None
    add("dynamic-int8", "quantize_dynamic", "baseline", QuantizeDynamicConfig())
    if static:
        add("static-int8", "quantize_static", "baseline", QuantizeStaticConfig())
        add("static-int8-per-channel", "quantize_static", "baseline", QuantizeStaticConfig(per_channel=True))
        # worst-group repair: the nodes whose int8 hurts the worst group most stay in float, judged on
        # the calibration rows (skipped with its reason when they carry no group columns)
        add("static-int8-keep-float", "quantize_static", "baseline", QuantizeStaticConfig(keep_float="worst_group"))
        add("static-int8-per-channel-keep-float", "quantize_static", "baseline",
            QuantizeStaticConfig(per_channel=True, keep_float="worst_group"))
    if not recipe.model.source.endswith(".onnx"):
        # recovery: distilled fine-tuning on data.train, else label-free on the calibration inputs
        # with data.train: distillation on its inputs with the fp32 model's outputs as the only target
        # (distill_alpha = 1): fitting the labels too (0.5) moved the pruned Adult MLP away from the
        # fp32 model where the gates look, 4.5-8.4 points of women's TPR; pure distillation passed at 25-75%
        recover = ({"finetune_epochs": recovery_epochs(recipe), "distill": True, "distill_alpha": 1.0} if recipe.data.train else
                   {"finetune_epochs": 20, "distill": True, "recovery_data": "calibration"} if static else {})
        for s in SPARSITIES:
            name = f"structured-{round(s * 100)}"
            add(name, "prune", "baseline", PruneConfig(sparsity=s, structured=True, **recover))
            if static:
                add(f"{name}-int8", "quantize_static", name, QuantizeStaticConfig())
    return tuple(steps)


# labelled recovery of the structured candidates: about this many optimizer steps (batch 64), in
# 2 to 20 epochs: 2 epochs of Adult's 36,177 rows, 20 of the digits' 719 (2 epochs would be 24 steps)
RECOVERY_STEPS, RECOVERY_BATCH = 1000, 64


def recovery_epochs(recipe: Recipe) -> int:
    """Epochs of labelled recovery for data.train's size (2 when its rows cannot be counted cheaply:
    only an .npz's first array is read for that)."""
    import math

    path = recipe.resolve(recipe.data.train)
    try:
        with np.load(path, allow_pickle=False) as z:
            rows = int(z[z.files[0]].shape[0])
    except Exception:  # noqa: BLE001 - another format, or a file prepare() will refuse with a proper message
        return 2
    per_epoch = max(1, math.ceil(rows / RECOVERY_BATCH))
    return int(min(20, max(2, math.ceil(RECOVERY_STEPS / per_epoch))))


def tune_recipe(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, steps=candidates(recipe))


BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|h)?\s*$")
BUDGET_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_budget(text: str) -> float:
    """`90s`, `10m`, `1.5h` or a bare number of seconds -> seconds (> 0)."""
    m = BUDGET_RE.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise EdgefairError(f"--budget: expected a positive duration like 90s, 10m or 1h (got {text!r})")
    return float(m.group(1)) * BUDGET_UNITS[m.group(2) or "s"]


def search(
    recipe: Recipe,
    out_dir: Path,
    *,
    cache: Any = None,
    progress: Any = lambda s: None,
    budget_s: float | None = None,
    executor: Any = None,
) -> dict[str, Any]:
    """Build every candidate of `recipe` (a `tune_recipe`), evaluate and gate those that were built,
    select by `[select] by`, and publish to `out_dir`. Raises EdgefairError on bad input before
    anything is written. `report["search"]["interrupted"]` is true when Ctrl-C stopped it early
    (the report then covers the candidates built until then); a second Ctrl-C aborts.
    `executor` (executor.py): where candidates are built and eval inference runs (default: the
    recipe's [run] executor, else in this process); gates and selection stay here."""
    from .cache import Cache
    from .pipeline import Compressor, environment, evaluate
    from .prepare import prepare
    from .publish import check_target, publish
    from .report import build_report

    check_target(out_dir)  # an unwritable output folder fails now, not after the whole search
    started = time.perf_counter()
    if executor is None:
        from .executor import executor_for

        executor = executor_for(recipe)  # an unreachable cluster: exit 2 before any work
    cache = cache or Cache(None)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgefair-tune-") as tmp:
        workdir = Path(tmp)
        inputs = prepare(recipe, workdir, cache, progress)  # Ctrl-C here: nothing found yet, nothing written
        timings["prepare"] = time.perf_counter() - started
        t0 = time.perf_counter()
        compressor = Compressor(inputs, workdir, cache, progress, search=True, budget_s=budget_s, started=started, executor=executor)
        models = compressor.run()
        timings["compress"] = time.perf_counter() - t0
        interrupted = compressor.interrupted
        if interrupted:
            progress(f"interrupted: evaluating the {len(models) - 1} candidate(s) built so far (Ctrl-C again to abort)")
        t0 = time.perf_counter()
        try:
            results = evaluate(inputs, models, cache, progress, executor=executor)
        except KeyboardInterrupt:  # keep what was found: statistics without latency (cached ones are reused)
            if interrupted:  # the second Ctrl-C: abort
                raise
            interrupted = True
            progress("interrupted: finishing without latency measurements (Ctrl-C again to abort)")
            quick = dataclasses.replace(inputs, recipe=dataclasses.replace(
                inputs.recipe, latency=dataclasses.replace(inputs.recipe.latency, enabled=False)))
            results = evaluate(quick, models, cache, progress, executor=executor)
        timings["evaluate"] = time.perf_counter() - t0
        report = build_report(recipe=recipe, inputs=inputs, models=models, results=results, environment=environment(), timings=timings)
        report["mode"] = "tune"
        report["executor"] = executor.describe()
        select(report, recipe)
        report["skipped"] = compressor.skipped
        report["not_tried"] = compressor.not_tried
        report["search"] = {
            "candidates": len(recipe.steps), "evaluated": len(models) - 1, "skipped": len(compressor.skipped),
            "not_tried": len(compressor.not_tried), "budget_s": budget_s, "interrupted": interrupted,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        report["frontier"] = frontier(report)
        extra = {}
        sel = report["selected"]
        if sel:  # published with the rest, so the folder never holds a report without its tuned.toml
            info = report["search"]
            note = (f"Interrupted: chosen among the {info['evaluated']} of {info['candidates']} candidates built before Ctrl-C."
                    if info["interrupted"] else None)
            extra["tuned.toml"] = tuned_recipe_text(Path(out_dir) / "tuned.toml", recipe, sel["name"],
                                                    thresholds=report["gates_applied"]["thresholds"], note=note)
        publish(out_dir, report, {m.index: m.path for m in models}, extra_files=extra)
    return report


def select(report: dict[str, Any], recipe: Recipe) -> None:
    """Gate every candidate and choose by the recipe's `[select] by` among those that pass; keep the
    baseline when no passing candidate beats it on that criterion. Candidates are alternatives, so
    `require = "all"` (every step must pass) does not apply to them."""
    from .gates import apply_gates

    apply_gates(report, recipe.gates, confidence=recipe.evaluate.confidence, min_group_size=recipe.data.min_group_size,
                positive_label=recipe.data.positive_label, output=recipe.model.output, select=recipe.select, tune=True)


def frontier(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every evaluated candidate (the baseline first, as the reference): p50 latency over the
    baseline's, size, the worst group's observed value per gate, whether it passed, and for a
    rejected one every gate and group that rejected it."""
    from .render import latency_ratio, worst_gate

    base = report["steps"][0]
    sel = (report.get("selected") or {}).get("step")
    out = []
    for s in report["steps"]:
        gates = list(dict.fromkeys(g["gate"] for g in s.get("gates") or []))
        worst = {}
        for name in gates:
            g = worst_gate(s, name)
            if g is not None:
                worst[name] = {"value": g["value"], "group": g.get("group"), "threshold": g.get("threshold"), "status": g.get("status")}
        ratio = latency_ratio(s, base)
        out.append({
            "step": s["index"], "name": s["name"], "kind": s["kind"], "input": s.get("input"),
            "p50_ratio_vs_baseline": None if ratio is None else round(ratio, 4),
            "p50_ms": (s.get("latency") or {}).get("p50_ms"), "size_bytes": s["size_bytes"],
            "passed": s["passed"], "selected": s["index"] == sel, "worst": worst,
            "rejected_by": [{"gate": g["gate"], "group": g.get("group"), "value": g.get("value"), "threshold": g.get("threshold")}
                            for g in s.get("gates") or [] if g.get("status") == "fail"],
        })
    return out


def frontier_lines(report: dict[str, Any]) -> list[str]:
    """The frontier in a few columns: one line per candidate, fastest first."""
    rows = sorted(report.get("frontier") or [], key=lambda r: (r["p50_ratio_vs_baseline"] is None, r["p50_ratio_vs_baseline"] or 0, r["step"]))
    if not rows:
        return []
    w = min(max(len(r["name"]) for r in rows), 28)
    out = ["frontier: p50 vs baseline, size, outcome (rejected: gate@group observed > limit; passed: nearest a limit)"]
    for r in rows:
        ratio = "-" if r["p50_ratio_vs_baseline"] is None else f"x{r['p50_ratio_vs_baseline']:.2f}"
        mark = "> " if r["selected"] else "  "
        head = f"{mark}{r['name']:<{w}} {ratio:>6} {r['size_bytes'] / 1e6:7.3f} MB"
        if r["step"] == 0:
            out.append(f"{head}  baseline")
        elif not r["passed"]:
            fails = r["rejected_by"]
            first = fails[0]
            more = f" (+{len(fails) - 1} more)" if len(fails) > 1 else ""
            rel = "<" if first["gate"].startswith("min_") else ">"  # a floor (agreement, cosine) is missed from below
            out.append(f"{head}  FAIL {_short(first['gate'])}@{first['group'] or '-'} {_num(first['value'])} {rel} {_num(first['threshold'])}{more}")
        else:
            near = [(v["value"] / v["threshold"], n, v) for n, v in r["worst"].items()
                    if isinstance(v.get("value"), (int, float)) and v.get("threshold") and v.get("value") is not None and not n.startswith("min_")]
            if near:
                _, name, v = max(near, key=lambda t: t[0])
                beyond = v["value"] > v["threshold"]  # observed beyond, but not shown to be (undecided, warned)
                rel = "> " if beyond else "<= "
                note = ", undecided" if beyond else ""
                out.append(f"{head}  pass (worst {_short(name)}@{v['group'] or '-'} {_num(v['value'])} {rel}{_num(v['threshold'])}{note})")
            else:
                out.append(f"{head}  pass")
    skipped, not_tried = report.get("skipped") or [], report.get("not_tried") or []
    for s in skipped:
        out.append(f"  skipped {s['name']} ({s['kind']}): {s['reason']}")
    if not_tried:
        out.append(f"  not tried ({not_tried[0]['reason']}): {', '.join(s['name'] for s in not_tried)}")
    return out


def _short(gate: str) -> str:
    return gate.removeprefix("max_group_").removeprefix("min_group_").removeprefix("max_")


def _num(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{v:.3g}"


def chain(recipe: Recipe, name: str) -> list[StepSpec]:
    """The steps that produce step `name`, from the baseline on."""
    by_name = {s.name: s for s in recipe.steps}
    out = []
    while name != "baseline":
        out.append(by_name[name])
        name = by_name[name].input
    return out[::-1]


def write_tuned_recipe(path: Path, recipe: Recipe, selected: str, *, thresholds: dict[str, float] | None = None,
                       note: str | None = None) -> None:
    write_text(path, tuned_recipe_text(path, recipe, selected, thresholds=thresholds, note=note))


def tuned_recipe_text(path: Path, recipe: Recipe, selected: str, *, thresholds: dict[str, float] | None = None,
                      note: str | None = None) -> str:
    """A recipe (TOML text, to be written at `path`) whose steps are the chain that produced the selected step; its paths are relative
    to where it is written, like any recipe's. `thresholds`: the gate thresholds in force during
    the tune (defaults included), written out so that the release build gates by the same limits.
    Written by a TOML writer, so any name or path (quotes, `input.1`) reads back as it was."""
    import tomli_w

    resolved = recipe.resolved()
    model = dict(resolved["model"])
    source = model["source"]
    if source.startswith("hf:"):  # a local Hugging Face checkpoint folder
        model["source"] = "hf:" + _rel(recipe.resolve(source[3:]), path)
    elif is_factory(source):
        module, func = source.rsplit(":", 1)
        model["source"] = f"{_rel(recipe.resolve(module), path)}:{func}" if module.endswith(".py") else source
    else:
        model["source"] = _rel(recipe.resolve(source), path)
    if model.get("weights"):
        model["weights"] = _rel(recipe.resolve(model["weights"]), path)
    data = dict(resolved["data"])
    for key in ("eval", "calibration", "train"):
        if data.get(key):
            data[key] = _rel(recipe.resolve(data[key]), path)
    latency = dict(resolved["latency"])
    latency["from_files"] = [_rel(recipe.resolve(f), path) for f in latency.get("from_files", [])]
    steps = []
    for step in chain(recipe, selected):
        defaults = as_dict(REGISTRY[step.kind].config_cls(**_required(step.config)))
        changed = {k: v for k, v in as_dict(step.config).items() if v != defaults.get(k)}
        steps.append({"name": step.name, "kind": step.kind, "input": step.input, **changed, **_required(step.config)})
    gates = {**resolved["gates"], **(thresholds or {})}
    doc = {"model": model, "data": data, "evaluate": resolved["evaluate"], "latency": latency}
    if steps:
        doc["steps"] = steps
    # the chosen pipeline's last step ships; it was chosen among all candidates by the tune's `by`
    doc["gates"] = gates
    doc["select"] = {"by": "last", "require": recipe.select.require}
    where = str(recipe.path).replace("\n", " ")
    header = f"# Chosen by `edgefair tune {where}` ([select] by = {recipe.select.by!r} among the candidates that passed every gate).\n"
    if note:
        header += f"# {note}\n"
    return header + "\n" + tomli_w.dumps(_plain(doc))


def _plain(value: Any) -> Any:
    """TOML has no null: drop None values; tuples become arrays."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _rel(target: Path, recipe_file: Path) -> str:
    import os

    return os.path.relpath(target, recipe_file.resolve().parent)


def _required(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
