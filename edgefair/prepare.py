"""Before any compression: load the data, export the baseline (or take it from the cache) and check
it against torch and against the data. The torch model is loaded only when something needs it."""

from __future__ import annotations

import hashlib
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
from .evaluate import BASELINE_FILE, DEFAULT_EVAL_BATCH, conform_inputs
from .export import check_parity, export_onnx
from .mapped import row_chunks
from .recipe import Recipe
from .runtime import fixed_batch, make_session
from .source import ModelSource, load_source, source_dependencies, source_identity
from .stats import check_bootstrap_memory

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
    # how every step's first output is read, decided once on the baseline (see decide_output_kind)
    output_kind: str = "logits"  # "logits" | "probabilities" | "embedding"
    _source: ModelSource | None = None
    _digests: dict[str, str] = field(default_factory=dict)

    @property
    def probabilities(self) -> bool:
        """The first output is class probabilities (how fine-tuning reads it)."""
        return self.output_kind == "probabilities"

    def data_digest(self, name: str) -> str | None:
        """Content hash of data set `name` ("eval", "calibration", "train") as the model gets it,
        for cache keys: it changes with the file and with how it is read (data.features, label, groups)."""
        if name not in self._digests:
            data = getattr(self, name)
            self._digests[name] = None if data is None else dataset_digest(data)
        return self._digests[name]

    def source(self) -> ModelSource:
        if self._source is None:
            self._source = _load(self.recipe)
        return self._source

    def module(self) -> Any:
        return self.source().module

    def export(self, module: Any, dst: Path) -> None:
        export_model(self.recipe, module, self.eval, self.input_names, dst)


def export_model(recipe: Recipe, module: Any, data: data_mod.Dataset, input_names: list[str], dst: Path,
                 dtypes: dict[str, np.dtype] | None = None) -> None:
    """Export `module` traced on the first eval rows, with the recipe's opset and dynamic axes;
    `dtypes`: float dtypes to trace real-valued inputs in (``_check_torch_inputs``)."""
    examples = _cast_floats({k: v[:EXPORT_EXAMPLE_ROWS] for k, v in data.inputs.items()}, dtypes or {})
    export_onnx(module, examples, input_names, dst, opset=recipe.model.opset, dynamic_axes=recipe.model.dynamic_axes)


def _load(recipe: Recipe) -> ModelSource:
    return load_source(
        recipe.model.source,
        base=recipe.base,
        weights=recipe.resolve(recipe.model.weights) if recipe.model.weights else None,
        trust_pickle=recipe.model.trust_pickle,
    )


def read_options(recipe: Recipe) -> data_mod.ReadOptions:
    """The recipe's loader and image settings, as data.load takes them."""
    d = recipe.data
    return data_mod.ReadOptions(
        base=recipe.base, loader=d.loader, image_column=d.image_column, subfolders=d.subfolders,
        image_size=tuple(d.image_size) if d.image_size else None, mean=d.mean, std=d.std, channels=d.channels, layout=d.layout,
    )


def load_set(recipe: Recipe, name: str) -> data_mod.Dataset | None:
    """Data set `name` ("eval", "calibration", "train") of the recipe as a run reads it (None when
    the recipe has none): the eval rows mapped from an uncompressed .npz (mapped.py); calibration
    and train rows keep the group attributes they have (group-aware steps use them). Driver and
    executor tasks read it here."""
    d = recipe.data
    rel = getattr(d, name)
    if rel is None:
        return None
    path, options = recipe.resolve(rel), read_options(recipe)
    if name == "eval":
        return data_mod.load(path, key="data.eval", label=d.label, groups=d.groups, features=d.features, options=options, stream=True)
    if name == "calibration":
        return data_mod.load(path, key="data.calibration", label=None, groups=(), features=d.features,
                             ignore=(d.label or data_mod.DEFAULT_LABEL,), optional_groups=d.groups, options=options)
    return data_mod.load(path, key="data.train", label=d.label, groups=(), features=d.features, require_labels=True,
                         optional_groups=d.groups, options=options)


def _load_data(recipe: Recipe):
    return tuple(load_set(recipe, name) for name in ("eval", "calibration", "train"))


def dataset_digest(data: data_mod.Dataset) -> str:
    """sha256 of a data set's arrays (inputs, labels, attributes) with their names, dtypes and shapes:
    what a computation read, whichever file and columns it came from."""
    digest = hashlib.sha256()
    arrays = [("input", k, v) for k, v in sorted(data.inputs.items())]
    arrays += [("attribute", k, v) for k, v in sorted(data.attributes.items())]
    if data.labels is not None:
        arrays.append(("labels", "", data.labels))
    for role, name, arr in arrays:
        digest.update(f"{role}:{name}:{arr.dtype.str}:{arr.shape}\n".encode())
        for chunk in row_chunks({name: arr}) if arr.size else ():  # mapped rows are read as the hash goes
            digest.update(np.ascontiguousarray(chunk[name]).view(np.uint8).reshape(-1))
    return digest.hexdigest()


def export_key(recipe: Recipe, source_sha: str | None, eval_data: data_mod.Dataset) -> str | None:
    """Key of the exported baseline and its parity: the source with the local modules a factory file
    imports, the export settings and the eval rows (traced and compared) as read."""
    if source_sha is None:
        return None
    shapes = {k: [list(v.shape[1:]), str(v.dtype)] for k, v in eval_data.inputs.items()}
    m = recipe.model
    return make_key(
        "export", __version__, version("torch"), version("onnx"), version("onnxscript"), source_sha,
        source_dependencies(m.source, base=recipe.base), m.opset, m.dynamic_axes, m.parity_atol, m.parity_rtol, shapes,
        dataset_digest(eval_data),
    )


def _check_bootstrap_memory(recipe: Recipe, eval_data) -> None:
    """Before any work: will the bootstrap over these groups fit in memory? (cells and groups are
    only known once the data is read)."""
    from .groups import group_masks
    from .pipeline import stats_config

    masks = group_masks(eval_data.attributes, intersections=recipe.data.intersections)
    check_bootstrap_memory(masks, eval_data.n, stats_config(recipe), labelled=eval_data.labels is not None)


def prepare(recipe: Recipe, workdir: Path, cache: Cache, progress: Progress = lambda s: None) -> Inputs:
    """Load data and baseline; raise EdgefairError on anything that does not fit."""
    t0 = time.perf_counter()
    weights = recipe.resolve(recipe.model.weights) if recipe.model.weights else None
    kind, sha = source_identity(recipe.model.source, base=recipe.base, weights=weights)
    eval_data, calib, train = _load_data(recipe)
    _check_bootstrap_memory(recipe, eval_data)
    baseline = StepModel(0, "baseline", "export", None, workdir / BASELINE_FILE)
    key = export_key(recipe, sha, eval_data) if kind != "onnx" else None
    source: ModelSource | None = None
    parity = None
    seen = len(cache.problems)
    if kind == "onnx":
        source = _load(recipe)
        _copy_onnx(source.path, baseline.path)
    elif key is not None and (parity := cache.get_json("export", key)) is not None and cache.get_file("export", key, baseline.path):
        baseline.cache = "hit"
    else:
        parity = None
        source = _load(recipe)
        eval_data, calib, train = (_name_csv(source.input_names, d) for d in (eval_data, calib, train))
        dtypes = _check_torch_inputs(source, eval_data)
        progress("export: torch -> ONNX")
        export_model(recipe, source.module, eval_data, source.input_names, baseline.path, dtypes)
        baseline.cache = "miss" if key is not None and cache.enabled else "off"
    session = make_session(baseline.path, threads=0)
    input_names = [i.name for i in session.get_inputs()]
    eval_data, calib, train = (_name_csv(input_names, d) for d in (eval_data, calib, train))
    eval_data = conform_inputs(session, eval_data, "data.eval")
    # one baseline run on the first eval rows serves the label check, the output kind and parity
    feed = {k: v[:PARITY_ROWS] for k, v in eval_data.inputs.items()}
    head = session.run([session.get_outputs()[0].name], feed)[0]
    output_kind = decide_output_kind(recipe.model.output, head, session, eval_data)
    if output_kind != "embedding":  # an embedding's width is not a number of classes
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
    baseline.warnings = [*baseline.warnings, *cache.problems[seen:]]  # corrupt cache entries, recomputed
    inputs = Inputs(recipe, kind, sha, eval_data, calib, train, baseline, parity, input_names, output_kind)
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


def decide_output_kind(configured: str, head: np.ndarray, session: Any, data: data_mod.Dataset) -> str:
    """How the first output of the baseline and of every step is read, decided once, here:
    evaluation and fine-tuning both read outputs this way.

    A configured `model.output` is taken as it is ("logits", "probabilities", "embedding"). "auto"
    is probabilities when every output row of the baseline on data.eval is in [0, 1] and sums to 1,
    else logits (`metrics.output_kind`). `head` (the baseline on the first eval rows) settles
    logits; probabilities are confirmed on the remaining rows, since one row outside [0, 1] makes
    it logits (a single-logit model can stay inside [0, 1] for a few hundred rows).
    """
    if configured != "auto":
        return configured
    from .metrics import output_kind

    if output_kind(head.reshape(len(head), -1)) == "logits":
        return "logits"
    rest = data_mod.Dataset(data.path, {k: v[len(head):] for k, v in data.inputs.items()}, None, {})
    if rest.n == 0:
        return "probabilities"
    name = session.get_outputs()[0].name
    for feed in rest.batches(fixed_batch(session) or DEFAULT_EVAL_BATCH):
        try:
            out = session.run([name], feed)[0]
        except Exception as e:  # the user's model on the user's rows, as evaluate.predict words it
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise DataError(f"data.eval: {data.path.name} does not fit model {BASELINE_FILE}: {first}") from e
        if output_kind(out.reshape(len(out), -1)) == "logits":
            return "logits"
    return "probabilities"


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
        raise DataError(f"{data.path}: a table's features or an image set feed one model input, the model has {len(input_names)}")
    return data.rename_input(data_mod.CSV_INPUT, input_names[0])


def _numpy_dtype(torch_dtype: Any) -> np.dtype | None:
    import torch

    try:
        return torch.empty((), dtype=torch_dtype).numpy().dtype
    except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy has not
        return None


def _model_float_dtype(module: Any) -> np.dtype | None:
    """The numpy dtype of a torch module's first real-valued parameter or buffer (None: none, or
    one numpy has not)."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            return _numpy_dtype(t.dtype)
    return None


def _traced_dtypes(module: Any) -> dict[str, np.dtype]:
    """Input dtypes a torch.export program was traced with, by input name; empty for a plain module."""
    dtypes = {name: _numpy_dtype(val.dtype) for name, val in _traced_inputs(module) if getattr(val, "dtype", None) is not None}
    return {name: d for name, d in dtypes.items() if d is not None}


def _cast_floats(arrays: dict[str, np.ndarray], dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """Real-valued arrays in the given float dtypes, by name; every other array as it is."""
    return {k: v.astype(dtypes[k]) if k in dtypes and v.dtype.kind == "f" and dtypes[k].kind == "f" and v.dtype != dtypes[k] else v
            for k, v in arrays.items()}


def _check_torch_inputs(source: ModelSource, data: data_mod.Dataset) -> dict[str, np.dtype]:
    """Check the first eval rows against the torch model; returns the float dtypes its real-valued
    inputs are traced in where they differ from the data's: a `.pt2` program's own input dtypes,
    else, only when the rows as they are fail, the model's float dtype (a float64 file, numpy's
    default, for a float32 model)."""
    import torch

    missing = [n for n in source.input_names if n not in data.inputs]
    if missing:
        have = ", ".join(sorted(data.inputs)) or "none"
        raise DataError(f"data.eval: {data.path} has no array {missing[0]!r} for model input {missing[0]!r} (inputs there: {have})")
    expected = _traced_shapes(source.module)
    for name in source.input_names:  # before running: torch's own message would be a guard ("Guard failed: ...")
        want, arr = expected.get(name), data.inputs[name]
        if want is not None and (arr.ndim != len(want) or any(w is not None and w != a for w, a in zip(want[1:], arr.shape[1:]))):
            shown = tuple("batch" if i == 0 else w if w is not None else "any" for i, w in enumerate(want))
            table = f" ({arr.shape[1]} feature columns)" if data.path.suffix.lower() in (".csv", ".parquet") and arr.ndim == 2 else ""
            raise DataError(f"data.eval: array {name!r} in {data.path.name} has shape {arr.shape}{table}, model input expects {shown}")
    head = {n: data.inputs[n][:2] for n in source.input_names}

    def run(dtypes: dict[str, np.dtype]) -> None:
        rows = _cast_floats(head, dtypes)
        with torch.no_grad():
            source.module(*(torch.from_numpy(np.array(rows[n], order="C")) for n in source.input_names))

    dtypes = {n: d for n, d in _traced_dtypes(source.module).items() if n in head and head[n].dtype.kind == "f" and head[n].dtype != d}
    try:
        run(dtypes)
        return dtypes
    except Exception as e:  # noqa: BLE001 - reported below, unless the model's own float dtype fits
        error = e
    model = _model_float_dtype(source.module)
    retry = {n: model for n in source.input_names if model is not None and model.kind == "f" and head[n].dtype.kind == "f"
             and head[n].dtype != model and n not in dtypes}
    if retry:
        try:
            run({**dtypes, **retry})
            return {**dtypes, **retry}
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
    shapes = ", ".join(f"{n}: {tuple(data.inputs[n].shape)}" for n in source.input_names)
    first = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
    raise DataError(f"data.eval: arrays ({shapes}) in {data.path.name} do not fit the model: {first}") from error


def _traced_inputs(module: Any) -> list[tuple[str, Any]]:
    """(input name, traced example value) of a torch.export program's inputs; empty for a plain
    module, whose inputs are only known by running it."""
    import torch

    if not isinstance(module, torch.fx.GraphModule):
        return []
    return [(str(n.target), n.meta["val"]) for n in module.graph.nodes if n.op == "placeholder" and n.meta.get("val") is not None]


def _traced_shapes(module: Any) -> dict[str, tuple[int | None, ...]]:
    """Input shapes a torch.export program was traced with (None for a dynamic axis), by input name;
    empty for a factory's plain module, whose shapes are only known by running it."""
    return {name: tuple(d if isinstance(d, int) else None for d in val.shape)
            for name, val in _traced_inputs(module) if getattr(val, "shape", None) is not None}


