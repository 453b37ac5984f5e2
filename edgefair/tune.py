"""`edgefair tune`: try a grid of compression pipelines on the recipe's model, gate every one, and
pick the fastest that passes. The result is an ordinary report plus `tuned.toml`, a recipe whose
steps are the chosen pipeline, ready for `edgefair run` in the release build."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .config import as_dict
from .io import write_text
from .recipe import Recipe, StepSpec
from .source import is_factory
from .steps import REGISTRY
from .steps.prune import PruneConfig
from .steps.quantize import QuantizeDynamicConfig, QuantizeStaticConfig

SPARSITIES = (0.25, 0.5, 0.75)  # structured: share of neurons/channels removed per layer


def candidates(recipe: Recipe) -> tuple[StepSpec, ...]:
    """The search space: int8 variants of the baseline, and structured pruning at several ratios
    (with distilled recovery fine-tuning when data.train is given), each also with int8 on top."""
    steps: list[StepSpec] = []

    def add(name: str, kind: str, source: str, config: Any) -> None:
        steps.append(StepSpec(index=len(steps) + 1, name=name, kind=kind, input=source, config=config))

    static = recipe.data.calibration is not None
    add("dynamic-int8", "quantize_dynamic", "baseline", QuantizeDynamicConfig())
    if static:
        add("static-int8", "quantize_static", "baseline", QuantizeStaticConfig())
        add("static-int8-per-channel", "quantize_static", "baseline", QuantizeStaticConfig(per_channel=True))
    if not recipe.model.source.endswith(".onnx"):
        recover = {"finetune_epochs": 2, "distill": True} if recipe.data.train else {}
        for s in SPARSITIES:
            name = f"structured-{round(s * 100)}"
            add(name, "prune", "baseline", PruneConfig(sparsity=s, structured=True, **recover))
            if static:
                add(f"{name}-int8", "quantize_static", name, QuantizeStaticConfig())
    return tuple(steps)


def tune_recipe(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, steps=candidates(recipe))


def chain(recipe: Recipe, name: str) -> list[StepSpec]:
    """The steps that produce step `name`, from the baseline on."""
    by_name = {s.name: s for s in recipe.steps}
    out = []
    while name != "baseline":
        out.append(by_name[name])
        name = by_name[name].input
    return out[::-1]


def write_tuned_recipe(path: Path, recipe: Recipe, selected: str) -> None:
    """A recipe whose steps are the chain that produced the selected step; its paths are relative
    to where it is written, like any recipe's."""
    resolved = recipe.resolved()
    model = dict(resolved["model"])
    source = model["source"]
    if is_factory(source):
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
    lines = [f"# Chosen by `edgefair tune {recipe.path}`: the fastest pipeline that passed every gate.", ""]
    for table, values in (("model", model), ("data", data), ("evaluate", resolved["evaluate"]), ("latency", latency)):
        lines += _table(f"[{table}]", values)
    for step in chain(recipe, selected):
        defaults = as_dict(REGISTRY[step.kind].config_cls(**_required(step.config)))
        changed = {k: v for k, v in as_dict(step.config).items() if v != defaults.get(k)}
        lines += _table("[[steps]]", {"name": step.name, "kind": step.kind, "input": step.input, **changed, **_required(step.config)})
    lines += _table("[gates]", resolved["gates"])
    write_text(path, "\n".join(lines))


def _rel(target: Path, recipe_file: Path) -> str:
    return os.path.relpath(target, recipe_file.resolve().parent)


def _required(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _table(header: str, values: dict[str, Any]) -> list[str]:
    lines = [header]
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml(value)}")
    return lines + [""]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
