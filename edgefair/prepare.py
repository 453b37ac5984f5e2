"""Before any compression: load the data, export the baseline (or take it from the cache) and check
it against torch and against the data. The torch model is loaded only when something needs it."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from . import data as data_mod
from .cache import Cache, make_key
from .errors import DataError
from .evaluate import conform_inputs
from .export import check_parity, export_onnx
from .io import sha256_file
from .recipe import Recipe
from .runtime import make_session
from .source import ModelSource, load_source, source_identity

PARITY_ROWS = 256  # eval rows compared between torch and onnxruntime after export
EXPORT_EXAMPLE_ROWS = 8  # rows traced by the exporter (batch > 1 keeps the batch axis dynamic)

Progress = Callable[[str], None]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class StepModel:
    index: int
    name: str
    kind: str
    input: str | None
    path: Path  # in the scratch folder
    torch_model: Any = None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cache: str = "off"  # hit | miss | off


@dataclass
class Inputs:
    """Everything validated before any compression. `module()` loads the torch model on demand."""

    recipe: Recipe
    source_kind: str
    source_sha256: str | None
    eval: data_mod.Dataset
    calibration: data_mod.Dataset | None
    train: data_mod.Dataset | None
    baseline: StepModel
    parity: dict[str, Any] | None
    input_names: list[str]
    probabilities: bool = False  # the baseline's first output reads as probabilities (model.output)
    _source: ModelSource | None = None

    def source(self) -> ModelSource:
        if self._source is None:
            self._source = _load(self.recipe)
        return self._source

    def module(self) -> Any:
        return self.source().module

    def export(self, module: Any, dst: Path) -> None:
        export_model(self.recipe, module, self.eval, self.input_names, dst)


def export_model(recipe: Recipe, module: Any, data: data_mod.Dataset, input_names: list[str], dst: Path) -> None:
    """Export `module` traced on the first eval rows, with the recipe's opset and dynamic axes."""
    examples = {k: v[:EXPORT_EXAMPLE_ROWS] for k, v in data.inputs.items()}
    export_onnx(module, examples, input_names, dst, opset=recipe.model.opset, dynamic_axes=recipe.model.dynamic_axes)


def _load(recipe: Recipe) -> ModelSource:
    return load_source(
        recipe.model.source,
        base=recipe.base,
        weights=recipe.resolve(recipe.model.weights) if recipe.model.weights else None,
        trust_pickle=recipe.model.trust_pickle,
    )


def _load_data(recipe: Recipe):
    d = recipe.data
    eval_data = data_mod.load(recipe.resolve(d.eval), key="data.eval", label=d.label, groups=d.groups, features=d.features)
    calib = train = None
    if d.calibration:
        calib = data_mod.load(
            recipe.resolve(d.calibration), key="data.calibration", label=None, groups=(), features=d.features,
            ignore=(d.label or data_mod.DEFAULT_LABEL, *d.groups),
        )
    if d.train:
        train = data_mod.load(
            recipe.resolve(d.train), key="data.train", label=d.label, groups=(), features=d.features, require_labels=True, ignore=d.groups
        )
    return eval_data, calib, train


def export_key(recipe: Recipe, source_sha: str | None, eval_data: data_mod.Dataset) -> str | None:
    if source_sha is None:
        return None
    shapes = {k: [list(v.shape[1:]), str(v.dtype)] for k, v in eval_data.inputs.items()}
    m = recipe.model
    return make_key(
        "export", __version__, version("torch"), version("onnx"), version("onnxscript"), source_sha,
        m.opset, m.dynamic_axes, m.parity_atol, m.parity_rtol, shapes, sha256_file(eval_data.path),
    )


def prepare(recipe: Recipe, workdir: Path, cache: Cache, progress: Progress = lambda s: None) -> Inputs:
    """Load data and baseline; raise EdgefairError on anything that does not fit."""
    t0 = time.perf_counter()
    weights = recipe.resolve(recipe.model.weights) if recipe.model.weights else None
    kind, sha = source_identity(recipe.model.source, base=recipe.base, weights=weights)
    eval_data, calib, train = _load_data(recipe)
    baseline = StepModel(0, "baseline", "export", None, workdir / "00-baseline.onnx")
    key = export_key(recipe, sha, eval_data) if kind != "onnx" else None
    source: ModelSource | None = None
    parity = None
    if kind == "onnx":
        source = _load(recipe)
        _copy_onnx(source.path, baseline.path)
    elif key is not None and cache.get_file("export", key, baseline.path):
        parity = cache.get_json("export", key)
        baseline.cache = "hit"
    else:
        source = _load(recipe)
        eval_data, calib, train = (_name_csv(source.input_names, d) for d in (eval_data, calib, train))
        _check_torch_inputs(source, eval_data)
        progress("export: torch -> ONNX")
        export_model(recipe, source.module, eval_data, source.input_names, baseline.path)
        baseline.cache = "miss" if key is not None and cache.enabled else "off"
    session = make_session(baseline.path, threads=0)
    input_names = [i.name for i in session.get_inputs()]
    eval_data, calib, train = (_name_csv(input_names, d) for d in (eval_data, calib, train))
    eval_data = conform_inputs(session, eval_data, "data.eval")
    # one baseline run on the first eval rows serves the label check, the output kind and parity
    feed = {k: v[:PARITY_ROWS] for k, v in eval_data.inputs.items()}
    head = session.run([session.get_outputs()[0].name], feed)[0]
    _check_label_range(head, eval_data)
    calib = conform_inputs(session, calib, "data.calibration") if calib is not None else None
    train = conform_inputs(session, train, "data.train") if train is not None else None
    if source is not None and source.module is not None:
        m = recipe.model
        parity = check_parity(source.module, head, feed, source.input_names, atol=m.parity_atol, rtol=m.parity_rtol).as_dict()
        if key is not None:
            cache.put_file("export", key, baseline.path)
            cache.put_json("export", key, parity)
    baseline.seconds = time.perf_counter() - t0
    inputs = Inputs(recipe, kind, sha, eval_data, calib, train, baseline, parity, input_names, _reads_as_probabilities(recipe, head))
    inputs._source = source
    baseline.torch_model = source.module if source is not None else None
    return inputs


def _copy_onnx(src: Path, dst: Path) -> None:
    """The baseline is one self-contained file: external weights next to `src` are pulled in."""
    import onnx

    from .errors import ModelSourceError

    model = onnx.load(str(src), load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        shutil.copyfile(src, dst)
        return
    try:
        onnx.save(onnx.load(str(src)), str(dst))
    except Exception as e:
        raise ModelSourceError(f"model.source: cannot read the external data of {src}: {e}") from e


def _reads_as_probabilities(recipe: Recipe, out: np.ndarray) -> bool:
    if recipe.model.output != "auto":
        return recipe.model.output == "probabilities"
    from .metrics import output_kind

    return output_kind(out.reshape(len(out), -1)) == "probabilities"


def _check_label_range(out: np.ndarray, data: data_mod.Dataset) -> None:
    """Class ids must index the model's outputs (a binary single-logit output counts as 2 classes)."""
    if data.labels is None:
        return
    k = out.shape[1] if out.ndim == 2 and out.shape[1] > 1 else 2
    top = int(data.labels.max())
    if top >= k:
        hint = " (they look 1-based: class ids must be 0 to {})".format(k - 1) if int(data.labels.min()) >= 1 and top == k else ""
        raise DataError(f"data.eval: label array in {data.path.name} has class id {top}, but the model outputs {k} classes{hint}")


def _name_csv(input_names: list[str], data: data_mod.Dataset | None) -> data_mod.Dataset | None:
    """A csv file's features form the model's single input: give them the input's name."""
    if data is None or data_mod.CSV_INPUT not in data.inputs:
        return data
    if len(input_names) != 1:
        raise DataError(f"{data.path}: a .csv file feeds one model input, the model has {len(input_names)}")
    return data.rename_input(data_mod.CSV_INPUT, input_names[0])


def _check_torch_inputs(source: ModelSource, data: data_mod.Dataset) -> None:
    import torch

    missing = [n for n in source.input_names if n not in data.inputs]
    if missing:
        have = ", ".join(sorted(data.inputs)) or "none"
        raise DataError(f"data.eval: {data.path} has no array {missing[0]!r} for model input {missing[0]!r} (inputs there: {have})")
    args = [torch.from_numpy(np.ascontiguousarray(data.inputs[n][:2])) for n in source.input_names]
    try:
        with torch.no_grad():
            source.module(*args)
    except Exception as e:
        shapes = ", ".join(f"{n}: {tuple(data.inputs[n].shape)}" for n in source.input_names)
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise DataError(f"data.eval: arrays ({shapes}) in {data.path.name} do not fit the model: {first}") from e
