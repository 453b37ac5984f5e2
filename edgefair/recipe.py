"""The recipe: a TOML file parsed once, at the edge, into frozen dataclasses.

Paths are resolved relative to the recipe's folder. Unknown keys and bad values are errors naming
the key path. Downstream code never sees the raw TOML.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import as_dict, build, check, in_range, positive
from .errors import RecipeError
from .formats import LOADER_RE
from .io import sha256_bytes
from .latency import DEFAULT_MIN_TIME_S
from . import hf_source
from .source import is_factory
from .steps import REGISTRY

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_BOOTSTRAP = 100_000
RENAMED = {"gates.on_insufficient": "gates.on_undecided", "gates.max_ci_width_ratio": None}


@dataclass(frozen=True)
class ModelConfig:
    source: str  # .pt2, .onnx, or pkg.module:factory
    weights: str | None = None  # with a factory: .safetensors, or a state dict read weights_only
    # how to read the first model output: class scores (auto tells logits from probabilities) or an
    # embedding, judged by cosine and relative error only (an argmax over its dimensions means nothing)
    output: Literal["auto", "logits", "probabilities", "embedding"] = "auto"
    opset: int | None = check(lambda v: 7 <= v <= 30, "must be in [7, 30]", default=None)
    parity_atol: float = check(positive, "must be > 0", default=1e-4)  # export parity tolerance
    parity_rtol: float = check(lambda v: v >= 0, "must be >= 0", default=1e-4)
    trust_pickle: bool = False  # allow .pt2 archives whose payloads are unpickled
    # axes beyond the batch axis to export as dynamic, per input (e.g. {input_ids = [1]} for sequence length)
    dynamic_axes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    eval: str
    calibration: str | None = None
    train: str | None = None
    label: str | None = None  # None: "label" if the file has it, else label-free evaluation
    groups: tuple[str, ...] = ()
    intersections: bool = True
    min_group_size: int = check(lambda v: v >= 1, "must be >= 1", default=50)
    features: tuple[str, ...] | None = None  # csv only; default: every non-label, non-group column
    positive_label: int = check(lambda v: v >= 0, "must be >= 0", default=1)  # the favourable class: TPR, FPR, selection rate
    # other formats (README, "Data formats"): a loader runs the user's code on each data path
    loader: str | None = None  # "pkg.module:function" or "file.py:function", returning named arrays
    image_column: str | None = None  # a .csv/.parquet index whose column holds image paths (relative to the index)
    subfolders: tuple[str, ...] = ("label",)  # an image folder: what each directory level names (label or group)
    image_size: tuple[int, ...] | None = check(positive, "must be > 0", default=None)  # [height, width]
    mean: tuple[float, ...] = (0.0,)  # per channel (or one for all), after scaling pixels to [0, 1]
    std: tuple[float, ...] = check(positive, "must be > 0", default=(1.0,))
    channels: Literal["rgb", "bgr", "gray"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"

    def __post_init__(self) -> None:  # ValueError "<field>: <problem>" becomes a RecipeError naming data.<field>
        if self.loader is not None and not LOADER_RE.match(self.loader):
            raise ValueError(f"loader: must be \"pkg.module:function\" or \"path/file.py:function\" (got {self.loader!r})")
        if self.loader is not None and self.image_column is not None:
            raise ValueError("image_column: a loader returns arrays; image_column applies to .csv/.parquet indexes")
        if self.image_size is not None and len(self.image_size) != 2:
            raise ValueError(f"image_size: must be [height, width] (got {list(self.image_size)})")
        channels = 1 if self.channels == "gray" else 3
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, channels):
                raise ValueError(f"{name}: needs 1 or {channels} values for channels = {self.channels!r} (got {len(getattr(self, name))})")
        if not self.subfolders or len(set(self.subfolders)) != len(self.subfolders):
            raise ValueError("subfolders: must name each folder level once (e.g. [\"label\"] or [\"region\", \"label\"])")


@dataclass(frozen=True)
class EvaluateConfig:
    # replicates: 1000 makes the 2.5%/97.5% percentiles stable to ~0.1 point. Memory grows with
    # replicates x (finest cells x ~20 + groups x ~15) x 8 bytes: 10**5 is ~1 GB for the Adult recipe
    bootstrap: int = check(lambda v: 100 <= v <= MAX_BOOTSTRAP, f"must be in [100, {MAX_BOOTSTRAP}] (memory grows "
                           "linearly with it: about 8 bytes x (finest cells x 20 + groups x 15) per replicate)", default=1000)
    confidence: float = check(*in_range(0.5, 1.0, hi_open=True), default=0.95)
    seed: int = check(lambda v: v >= 0, "must be >= 0", default=0)
    # rows per inference call. None: 1024, except for models whose outputs depend on the batch
    # (dynamic quantization computes activation ranges per call): those run at latency.batch_size,
    # the batch they will see when deployed
    batch_size: int | None = check(positive, "must be > 0", default=None)
    ece_bins: int = check(lambda v: v >= 2, "must be >= 2", default=15)


@dataclass(frozen=True)
class LatencyConfig:
    threads: int = check(lambda v: v >= 0, "must be >= 0 (0: onnxruntime's choice)", default=1)
    batch_size: int = check(positive, "must be > 0", default=1)
    warmup: int = check(lambda v: v >= 0, "must be >= 0", default=20)
    runs: int = check(lambda v: v >= 10, "must be >= 10", default=200)
    enabled: bool = True
    inter_op_threads: int = check(lambda v: v >= 0, "must be >= 0", default=1)
    optimization: Literal["disable", "basic", "extended", "all"] = "all"  # onnxruntime graph optimization level
    budget_s: float | None = check(positive, "must be > 0", default=None)  # time per model instead of a run count
    min_time_s: float = check(lambda v: v >= 0, "must be >= 0", default=DEFAULT_MIN_TIME_S)  # and at least this long
    # fresh onnxruntime sessions per model (runs, min_time_s and budget_s are split between them):
    # where a session lands in memory moves p50 by a few percent, so intervals must see several
    sessions: int = check(lambda v: v >= 1, "must be >= 1", default=3)
    batch_sizes: tuple[int, ...] = check(positive, "must be > 0", default=())  # more batch sizes for throughput
    from_files: tuple[str, ...] = ()  # device measurements (`edgefair probe --out`) used instead of local ones


def _fraction(default=None):
    return check(*in_range(0.0, 1.0), default=default)


@dataclass(frozen=True)
class GatesConfig:
    # per group, each a limit on a harm vs the baseline (fractions: 0.01 = 1 point)
    max_group_accuracy_drop: float | None = _fraction()
    max_group_tpr_drop: float | None = _fraction()  # recall of the positive class (multiclass: of every class)
    max_group_fpr_increase: float | None = _fraction()  # false positive rate (multiclass: of every class)
    max_group_selection_rate_change: float | None = _fraction()  # |change| of the share predicted positive
    max_group_ece_increase: float | None = _fraction()
    max_group_flip_rate: float | None = _fraction()
    min_group_agreement: float | None = _fraction()  # share of predictions equal to the baseline's
    min_group_cosine: float | None = check(*in_range(-1.0, 1.0), default=None)  # mean cosine of outputs to the baseline's
    # per attribute: growth of the best-to-worst gap vs the baseline's
    max_accuracy_gap_growth: float | None = _fraction()
    max_equalized_odds_growth: float | None = _fraction()
    max_demographic_parity_growth: float | None = _fraction()
    # vs the last release (edgefair run --previous DIR): net drop of a group's accuracy (without labels:
    # agreement with the baseline) from the previously shipped model to this one; not applied without --previous
    max_group_regression_vs_previous: float | None = _fraction()
    max_latency_p95_ms: float | None = check(positive, "must be > 0", default=None)
    max_size_mb: float | None = check(positive, "must be > 0", default=None)
    defaults: bool = True  # gates the recipe does not set get the documented defaults (README, "How the gates decide")
    decision: Literal["ci", "point"] = "ci"  # ci: fail on evidence beyond the limit, pass on an upper bound within it
    # a group whose data can tell neither (too small, or too close to the limit)
    on_undecided: Literal["warn", "fail", "fail_if_observed", "fail_if_significant"] = "fail_if_significant"


@dataclass(frozen=True)
class SelectConfig:
    by: Literal["fastest", "smallest", "last"] = "fastest"  # which passing step becomes selected.onnx
    # selected: exit 0 when the selected model passed every gate; all: only when every step did
    require: Literal["selected", "all"] = "selected"


@dataclass(frozen=True)
class RunConfig:
    # where tune candidates and eval inference run (README, "Scaling out on Ray"); gates, selection
    # and latency always stay in the edgefair process
    executor: Literal["embedded", "ray"] = "embedded"
    ray_address: str | None = None  # "auto", "local" (default: a cluster on this machine), "HOST:PORT" or "ray://HOST:PORT"
    # a cluster node named for latency (node id, IP or host name): timed there by one task holding
    # all its CPUs; unset: latency is timed on the driver, never on shared workers
    latency_node: str | None = None

    def __post_init__(self) -> None:
        from .executor import check_address

        if self.ray_address is not None and self.executor != "ray":
            raise ValueError("ray_address: only used with executor = \"ray\"")
        if self.latency_node is not None and self.executor != "ray":
            raise ValueError("latency_node: only used with executor = \"ray\"")
        if self.latency_node is not None and not self.latency_node.strip():
            raise ValueError("latency_node: must name a node (its id, IP address or host name)")
        try:
            check_address(self.ray_address, "ray_address")
        except RecipeError as e:
            raise ValueError(str(e)) from None


@dataclass(frozen=True)
class StepSpec:
    index: int  # 1-based; the baseline is step 0
    name: str
    kind: str
    input: str  # name of the step whose model this step reads
    config: Any  # the kind's frozen config dataclass


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str
    model: ModelConfig
    data: DataConfig
    evaluate: EvaluateConfig
    latency: LatencyConfig
    steps: tuple[StepSpec, ...]
    gates: GatesConfig
    select: SelectConfig = SelectConfig()
    run: RunConfig = RunConfig()

    @property
    def base(self) -> Path:
        return self.path.parent

    def resolve(self, rel: str) -> Path:
        return (self.base / rel).resolve()

    def resolved(self) -> dict[str, Any]:
        """The recipe as edgefair understood it (defaults filled in), for report.json: JSON has no
        infinity, so `inf` (e.g. keep_float_max_slowdown) is written as the string "inf", as in TOML."""
        return _json_safe({
            "model": as_dict(self.model),
            "data": as_dict(self.data),
            "evaluate": as_dict(self.evaluate),
            "latency": as_dict(self.latency),
            "steps": [{"name": s.name, "kind": s.kind, "input": s.input, **as_dict(s.config)} for s in self.steps],
            "gates": as_dict(self.gates),
            "select": as_dict(self.select),
        })


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


TOP_LEVEL = {"model", "data", "evaluate", "latency", "steps", "gates", "select", "run"}


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path).resolve()
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    raw_bytes = path.read_bytes()
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from e
    return parse_recipe(raw, path=path, sha256=sha256_bytes(raw_bytes))


def parse_recipe(raw: dict[str, Any], *, path: Path, sha256: str = "") -> Recipe:
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise RecipeError(f"{unknown[0]}: unknown table (allowed: {', '.join(sorted(TOP_LEVEL))})")
    if "model" not in raw:
        raise RecipeError("model: required table is missing")
    if "data" not in raw:
        raise RecipeError("data: required table is missing")
    model = build(ModelConfig, raw["model"], "model")
    data = build(DataConfig, raw["data"], "data")
    base = path.parent
    if hf_source.is_hf(model.source):  # a checkpoint folder: its config decides what it outputs
        hf_source.check_output(model.source, base, model.output)
    _check_file(base, model.source, "model.source", skip=is_factory(model.source) or hf_source.is_hf(model.source))
    if model.weights is not None:
        if not is_factory(model.source):
            raise RecipeError("model.weights: only used with a `pkg.module:factory` source")
        _check_file(base, model.weights, "model.weights")
    for key in ("eval", "calibration", "train"):
        if getattr(data, key) is not None:
            _check_file(base, getattr(data, key), f"data.{key}", skip=(base / getattr(data, key)).resolve().is_dir())  # image folder
    if not data.groups:
        raise RecipeError("data.groups: name at least one sensitive attribute (e.g. groups = [\"sex\"])")
    if len(set(data.groups)) != len(data.groups):
        raise RecipeError("data.groups: attributes must be unique")
    if data.label is not None and data.label in data.groups:
        raise RecipeError(f"data.groups: {data.label!r} is the label column")
    for i, name in enumerate(data.groups):
        if "=" in name or "&" in name:  # group keys are attribute=value joined by &
            raise RecipeError(f"data.groups[{i}]: {name!r} contains '=' or '&', which group keys reserve; rename the column")
    for old, new in RENAMED.items():
        table, key = old.split(".")
        if isinstance(raw.get(table), dict) and key in raw[table]:
            hint = f"renamed to {new} in edgefair 0.2" if new else "removed in edgefair 0.2 (the gates test the limit itself; see README)"
            raise RecipeError(f"{old}: {hint}")
    steps = _parse_steps(raw.get("steps", []), data, torch_source=not model.source.endswith(".onnx"))
    latency = build(LatencyConfig, raw.get("latency", {}), "latency")
    for i, rel in enumerate(latency.from_files):
        _check_file(base, rel, f"latency.from_files[{i}]")
    if latency.budget_s is None and latency.runs < 3 * latency.sessions:
        raise RecipeError(f"latency.sessions: must be at most runs / 3 ({latency.runs // 3}): each session needs 3 timed rounds")
    gates = build(GatesConfig, raw.get("gates", {}), "gates")
    if gates.max_latency_p95_ms is not None and not latency.enabled and not latency.from_files:
        raise RecipeError("gates.max_latency_p95_ms: needs latency measurements, but latency.enabled = false "
                          "and latency.from_files is empty")
    if model.output == "embedding" and any(getattr(gates, n) is not None for n in ("max_group_flip_rate", "min_group_agreement")):
        raise RecipeError("gates: flip-rate and agreement gates compare argmax predictions, which an embedding "
                          "(model.output = \"embedding\") does not have; use min_group_cosine")
    return Recipe(
        path=path,
        sha256=sha256,
        model=model,
        data=data,
        evaluate=build(EvaluateConfig, raw.get("evaluate", {}), "evaluate"),
        latency=latency,
        steps=steps,
        gates=gates,
        select=build(SelectConfig, raw.get("select", {}), "select"),
        run=build(RunConfig, raw.get("run", {}), "run"),
    )


def _check_file(base: Path, rel: str, key: str, *, skip: bool = False) -> None:
    if not skip and not (base / rel).resolve().is_file():
        raise RecipeError(f"{key}: file not found: {(base / rel).resolve()}")


def _parse_steps(raw_steps: Any, data: DataConfig, *, torch_source: bool) -> tuple[StepSpec, ...]:
    if not isinstance(raw_steps, list):
        raise RecipeError("steps: must be an array of tables ([[steps]])")
    names = ["baseline"]
    torch_chain = {"baseline"} if torch_source else set()  # steps whose output still has a torch model
    out = []
    for i, table in enumerate(raw_steps):
        key = f"steps[{i}]"
        if not isinstance(table, dict):
            raise RecipeError(f"{key}: must be a table")
        table = dict(table)
        kind = table.pop("kind", None)
        if kind is None:
            raise RecipeError(f"{key}.kind: required key is missing")
        if not isinstance(kind, str):
            raise RecipeError(f"{key}.kind: must be a string (got {kind!r})")
        if kind not in REGISTRY:
            raise RecipeError(f"{key}.kind: unknown step kind {kind!r} (known: {', '.join(sorted(REGISTRY))})")
        name = table.pop("name", kind)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise RecipeError(f"{key}.name: must be letters, digits, '_', '-' or '.' (got {name!r})")
        if name in names:
            raise RecipeError(f"{key}.name: step name {name!r} is used twice; give each step a unique name")
        source = table.pop("input", names[-1])
        if source not in names:
            raise RecipeError(f"{key}.input: {source!r} is not an earlier step (earlier: {', '.join(names)})")
        step_kind = REGISTRY[kind]
        config = build(step_kind.config_cls, table, key)
        if step_kind.needs_torch and source not in torch_chain:
            raise RecipeError(
                f"{key}: {kind} works on the torch model, but its input {source!r} has none "
                "(an ONNX source or an ONNX-level step); use a .pt2 or factory source and put it before quantization steps"
            )
        if step_kind.needs_calibration and data.calibration is None:
            raise RecipeError(f"{key}: {kind} needs data.calibration")
        if step_kind.needs_torch:
            torch_chain.add(name)
        names.append(name)
        out.append(StepSpec(index=i + 1, name=name, kind=kind, input=source, config=config))
    return tuple(out)
