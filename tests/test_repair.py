"""Worst-group repair of static int8 (quantize_static keep_float / calibration_sampling), on a tiny
real model exported with torch and quantized and run by onnxruntime.

The model: a 3-layer MLP whose first layer reads feature 0 with 1/8 of its weight; group z's
feature 0 is 8x wider, so its hidden activations look like everyone's, but the int8 range of the
*input* (calibrated on group a's rows only: the first rows) clips it. Only the first layer's
quantization hurts z: keeping that node in float repairs z, keeping any other node does not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefair.config import build
from edgefair.errors import DataError, RecipeError
from edgefair.steps import REGISTRY, StepContext
from edgefair.steps.quantize import QuantizeStaticConfig
from edgefair.steps.repair import stratified_rows

from conftest import run_cli, write_recipe


def _rows(rng, n_a: int, n_z: int):
    x = rng.normal(size=(n_a + n_z, 6)).astype(np.float32)
    g = np.array(["a"] * n_a + ["z"] * n_z)
    x[g == "z", 0] *= 8
    return x, g


@pytest.fixture(scope="module")
def clipped(tmp_path_factory):
    """Folder with m.onnx (fp32), calib.npz (400 a then 100 z, with labels), heldout.npz (1000 + 1000)."""
    import torch
    from torch import nn

    from edgefair.export import export_onnx

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

        def forward(self, features):
            return self.net(features)

    torch.manual_seed(0)
    model = MLP().eval()
    with torch.no_grad():
        model.net[0].weight[:, 0] /= 8
    root = tmp_path_factory.mktemp("repair")
    rng = np.random.default_rng(0)
    x, g = _rows(rng, 400, 100)
    xe, ge = _rows(rng, 1000, 1000)
    export_onnx(model, {"features": x[:8]}, ["features"], root / "m.onnx")
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    y = np.where(rng.random(len(y)) < 0.1, rng.integers(0, 3, len(y)), y).astype(np.int64)
    np.savez(root / "calib.npz", features=x, label=y, g=g)
    np.savez(root / "heldout.npz", features=xe, g=ge)
    torch.export.save(
        torch.export.export(model, (torch.zeros(4, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(root / "m.pt2")
    )
    return root


def _context(root, tmp_path, *, with_attributes: bool = True, groups=("g",)) -> StepContext:
    from edgefair.data import Dataset

    with np.load(root / "calib.npz") as z:
        attrs = {"g": z["g"]} if with_attributes else {}
        calib = Dataset(root / "calib.npz", {"features": z["features"]}, z["label"], attrs)
    return StepContext(torch_model=None, calibration=calib, train=None, export=None, workdir=tmp_path, seed=0, groups=groups)


def _static(root, tmp_path, name: str, **table):
    cfg = build(QuantizeStaticConfig, {"calibration_rows": 128, **table}, "steps[0]")
    dst = tmp_path / f"{name}.onnx"
    outcome = REGISTRY["quantize_static"].apply(cfg, root / "m.onnx", dst, _context(root, tmp_path))
    return dst, outcome


def _agreement(root, path):
    """Per-group agreement with the fp32 model on the held-out rows (never used by the ranking)."""
    from edgefair.runtime import make_session

    with np.load(root / "heldout.npz") as z:
        x, g = z["features"], z["g"]
    ref = make_session(root / "m.onnx").run(None, {"features": x})[0].argmax(1)
    pred = make_session(path).run(None, {"features": x})[0].argmax(1)
    return {k: float((pred == ref)[g == k].mean()) for k in ("a", "z")}


def test_top_ranked_node_repairs_the_worst_group_more_than_any_other(clipped, tmp_path):
    _, outcome = _static(clipped, tmp_path, "ranked", keep_float="worst_group", keep_float_max=1)
    ranking = outcome.details["keep_float"]["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3] and {r["op_type"] for r in ranking} == {"Gemm"}
    assert ranking[0]["worst_group"] == "g=z" or ranking[0]["worst_agreement"] > ranking[1]["worst_agreement"]
    # re-measured independently, on held-out rows: keeping the top-ranked node in float helps group z
    # far more than keeping any other node in float
    plain = _agreement(clipped, _static(clipped, tmp_path, "plain")[0])
    gains = {}
    for r in ranking:
        path, _ = _static(clipped, tmp_path, f"x-{r['rank']}", exclude_nodes=[r["node"]])
        gains[r["node"]] = _agreement(clipped, path)["z"] - plain["z"]
    top, others = ranking[0]["node"], [r["node"] for r in ranking[1:]]
    assert plain["z"] < 0.95 < plain["a"]  # the harm is real, and to z only
    assert all(gains[top] > gains[o] + 0.03 for o in others), gains


def test_repair_keeps_the_harmful_node_in_float_and_raises_the_worst_group(clipped, tmp_path):
    plain_path, plain = _static(clipped, tmp_path, "plain")
    path, repaired = _static(clipped, tmp_path, "repaired", keep_float="worst_group", keep_float_max=2, keep_float_target=0.99)
    kf = repaired.details["keep_float"]
    assert kf["kept_float"] and kf["kept_float"][0] == kf["ranking"][0]["node"]
    assert kf["after"]["worst_agreement"] >= kf["before"]["worst_agreement"]
    assert kf["after"]["worst_agreement"] > kf["before"]["worst_agreement"] + 0.03  # a real repair here
    assert kf["before"]["worst_group"] == "g=z" and kf["labels"] is True and "worst_accuracy" in kf["after"]
    assert kf["stopped"] in {"target", "max_nodes", "no_node_helps"}
    assert set(kf["after"]["groups"]) == {"g=a", "g=z"} and kf["after"]["groups"]["g=z"]["n"] == 100
    # the plain step's own worst group on the calibration rows is the "before" figure
    from edgefair.runtime import make_session

    with np.load(clipped / "calib.npz") as z:
        x, g = z["features"], z["g"]
    ref = make_session(clipped / "m.onnx").run(None, {"features": x})[0].argmax(1)
    got = make_session(plain_path).run(None, {"features": x})[0].argmax(1)
    assert float((got == ref)[g == "z"].mean()) == pytest.approx(kf["before"]["worst_agreement"], abs=1e-6)
    # the shipped model keeps exactly those nodes in float, and is still int8 elsewhere
    import onnx

    nodes = onnx.load(str(path)).graph.node
    dq = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    fed_by_dq = {n.name for n in nodes if any(i in dq for i in n.input)}
    assert not set(kf["kept_float"]) & fed_by_dq
    assert repaired.details["quantized_nodes"] > 0 and len(kf["kept_float"]) <= 2
    json.dumps(repaired.details)  # lands in report.json
    # keeping nodes in float also repairs the held-out rows
    assert _agreement(clipped, path)["z"] > _agreement(clipped, plain_path)["z"] + 0.03


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"calibration_sampling": "stratified"}, "steps[0].calibration_rows: required with calibration_sampling = 'stratified'"),
        ({"calibration_sampling": "random"}, "steps[0].calibration_sampling: must be one of"),
        ({"keep_float": "average"}, "steps[0].keep_float: must be one of"),
        ({"keep_float": "worst_group", "keep_float_max": 0}, "steps[0].keep_float_max: must be >= 1"),
        ({"keep_float": "worst_group", "keep_float_target": 1.5}, "steps[0].keep_float_target: must be in (0, 1]"),
        ({"keep_float": "worst_group", "keep_float_target": 0}, "steps[0].keep_float_target: must be in (0, 1]"),
        ({"keep_float": "worst_group", "keep_float_min_group_rows": 0}, "steps[0].keep_float_min_group_rows: must be >= 1"),
        ({"keep_float_max": 2}, "steps[0].keep_float_max: only applies with keep_float = 'worst_group'"),
        ({"keep_float_target": 0.9}, "steps[0].keep_float_target: only applies with keep_float = 'worst_group'"),
        ({"calibration_groups": ["g"]}, "steps[0].calibration_groups: only applies with"),
        ({"keep_float": "worst_group", "calibration_groups": ["g", "g"]}, "steps[0].calibration_groups: names must be unique"),
        ({"keep_float": "worst_group", "keep_float_max": "3"}, "steps[0].keep_float_max: must be an integer"),
        ({"keep_float": "worst_group", "keep_float_max_slowdown": 0.9}, "steps[0].keep_float_max_slowdown: must be >= 1"),
        ({"keep_float": "worst_group", "keep_float_max_slowdown": "fast"}, "steps[0].keep_float_max_slowdown: must be a number"),
        ({"keep_float_max_slowdown": 1.3}, "steps[0].keep_float_max_slowdown: only applies with keep_float = 'worst_group'"),
    ],
)
def test_config_errors_name_the_key(table, message):
    with pytest.raises(RecipeError) as e:
        build(QuantizeStaticConfig, table, "steps[0]")
    assert str(e.value).startswith(message), str(e.value)


def test_missing_group_column_is_an_error_naming_the_key(clipped, tmp_path):
    cfg = build(QuantizeStaticConfig, {"keep_float": "worst_group", "calibration_groups": ["sex"]}, "s")
    with pytest.raises(DataError, match=r"quantize_static.calibration_groups: group column 'sex' not in data.calibration"):
        REGISTRY["quantize_static"].apply(cfg, clipped / "m.onnx", tmp_path / "q.onnx", _context(clipped, tmp_path))
    # without attributes in the Dataset the step reads them from the calibration file itself
    ctx = _context(clipped, tmp_path, with_attributes=False)
    cfg = build(QuantizeStaticConfig, {"keep_float": "worst_group"}, "s")
    out = REGISTRY["quantize_static"].apply(cfg, clipped / "m.onnx", tmp_path / "q.onnx", ctx)
    assert out.details["keep_float"]["groups"] == ["g"]


def test_stratified_sampling_draws_equal_rows_per_group():
    rng = np.random.default_rng(1)
    attrs = {"sex": rng.choice(["F", "M"], 1000, p=[0.2, 0.8]), "race": rng.choice(["p", "q", "r"], 1000, p=[0.6, 0.25, 0.15])}
    picked, per_cell = stratified_rows(attrs, 120, seed=0)
    assert len(picked) == 120 == len(set(picked.tolist())) and list(picked) == sorted(picked)
    assert len(per_cell) == 6 and set(per_cell.values()) == {20}
    for sex in ("F", "M"):  # balanced cells balance every attribute too
        assert (attrs["sex"][picked] == sex).sum() == 60
    again, _ = stratified_rows(attrs, 120, seed=0)
    other, _ = stratified_rows(attrs, 120, seed=1)
    assert np.array_equal(picked, again) and not np.array_equal(picked, other)
    # a cell smaller than its share gives all its rows; the others share what it leaves
    small = {"g": np.array(["a"] * 500 + ["z"] * 10)}
    picked, per_cell = stratified_rows(small, 100, seed=0)
    assert per_cell == {"g=a": 90, "g=z": 10} and len(picked) == 100


def test_stratified_calibration_puts_the_small_group_in_the_ranges(clipped, tmp_path):
    plain_path, _ = _static(clipped, tmp_path, "plain")
    path, outcome = _static(clipped, tmp_path, "strat", calibration_sampling="stratified")
    assert outcome.details["calibration_rows_per_group"] == {"g=a": 64, "g=z": 64}
    assert outcome.details["calibration_rows"] == 128 and outcome.details["calibration_sampling"] == "stratified"
    assert _agreement(clipped, path)["z"] > _agreement(clipped, plain_path)["z"]


def _keep_float_recipe(root, name: str, extra: str = ""):
    """A recipe over the clipped model with one keep-float quantize_static step (+ `extra` keys)."""
    np.savez(root / "eval.npz", **dict(np.load(root / "heldout.npz")))
    return write_recipe(root / name, f"""
        [model]
        source = "m.pt2"
        [data]
        eval = "eval.npz"
        calibration = "calib.npz"
        groups = ["g"]
        [evaluate]
        bootstrap = 100
        [latency]
        enabled = false
        [[steps]]
        kind = "quantize_static"
        calibration_rows = 128
        keep_float = "worst_group"
        keep_float_max = 1
        {extra}
        [gates]
        min_group_agreement = 0.5
        """)


def test_keep_float_in_the_pipeline_lands_in_report_json(clipped, tmp_path):
    recipe = _keep_float_recipe(clipped, "r.toml")
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    step = report["steps"][1]
    kf = step["details"]["keep_float"]
    assert kf["groups"] == ["g"] and len(kf["kept_float"]) == 1 and kf["ranking"][0]["node"] == kf["kept_float"][0]
    # report.json's repairs say what changed, on which rows, and what it cost
    (entry,) = report["repairs"]
    assert entry["repair"] == "keep_float" and entry["nodes"] == kf["kept_float"] and "calibration rows" in entry["judged_on"]
    assert entry["worst_after"]["value"] >= entry["worst_before"]["value"]
    assert entry["cost"]["size_bytes"] == step["size_bytes"]
    # and the ranking and the repair are in the reports people read
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "<h2>Repairs</h2>" in html and kf["ranking"][0]["node"] in html
    assert "### Repairs" in md and f"`{kf['kept_float'][0]}`" in md


def test_an_unbounded_slowdown_is_written_to_report_json_as_inf(clipped, tmp_path):
    """keep_float_max_slowdown = inf (README: no bound, no timing) is a float JSON cannot hold."""
    recipe = _keep_float_recipe(clipped, "inf.toml", "keep_float_max_slowdown = inf")
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["recipe"]["resolved"]["steps"][0]["keep_float_max_slowdown"] == "inf"
    assert report["steps"][1]["details"]["keep_float"]["latency"] is None  # no timing at all


# ---- latency-aware repair (keep_float_max_slowdown) ------------------------------------------------


def test_greedy_ranks_by_gain_per_cost_and_skips_what_breaks_the_bound():
    """Pure policy, no onnxruntime: A gains most but costs 50%; B gains less for 2%; C gains nothing."""
    from edgefair.steps.repair import repair

    gain = {"A": 0.20, "B": 0.05, "C": 0.0}
    cost = {"A": 0.50, "B": 0.02, "C": 0.01}

    def measure(kept):
        w = 0.5 + sum(gain[n] for n in kept)
        return {"worst_agreement": w, "agreement": w, "agreement_gap": 0.0, "worst_group": "g=z", "slowdown": 1.0 + sum(cost[n] for n in kept)}

    cands = [("A", "Gemm"), ("B", "Gemm"), ("C", "Gemm")]
    tight = repair(cands, measure, max_nodes=3, target=0.99, max_slowdown=1.2)
    assert [r["node"] for r in tight["ranking"]] == ["B", "A", "C"]  # 0.05 / 0.02 > 0.20 / 0.50
    assert tight["ranking"][0]["gain_per_cost"] == pytest.approx(2.5) and tight["ranking"][1]["cost"] == pytest.approx(0.5)
    assert tight["kept_float"] == ["B"] and tight["stopped"] == "max_slowdown" and tight["slowdown"] == pytest.approx(1.02)
    (skipped,) = [t for t in tight["trials"] if t["node"] == "A"]
    assert skipped["kept"] is False and "keep_float_max_slowdown 1.2" in skipped["why"] and skipped["predicted_slowdown"] == pytest.approx(1.52)
    loose = repair(cands, measure, max_nodes=3, target=0.99, max_slowdown=2.0)
    assert loose["kept_float"] == ["B", "A"] and loose["slowdown"] == pytest.approx(1.52) and loose["stopped"] == "no_node_helps"
    # without a bound: ranked by the worst group alone, no timing needed
    plain = repair(cands, lambda k: {k2: v for k2, v in measure(k).items() if k2 != "slowdown"}, max_nodes=1, target=0.99)
    assert plain["kept_float"] == ["A"] and plain["slowdown"] is None and "cost" not in plain["ranking"][0]


def _fake_costs(monkeypatch, root, costs_by_position):
    """Time nothing: a quantized model's slowdown is 1 + the cost of each of its Gemms (by graph
    position) that is kept in float (not fed by DequantizeLinear)."""
    import onnx

    from edgefair.steps import quantize as q

    gemms = [n.name for n in onnx.load(str(root / "m.onnx")).graph.node if n.op_type == "Gemm"]

    def slowdown(self, path, rounds=q.KEEP_FLOAT_TIMING_ROUNDS):
        nodes = onnx.load(str(path)).graph.node
        dq = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
        fed = {n.name for n in nodes if any(i in dq for i in n.input)}
        s = 1.0 + sum(c for name, c in zip(gemms, costs_by_position) if name not in fed)
        return {"slowdown": s, "p50_ms": 0.01 * s, "int8_p50_ms": 0.01, "fp32_p50_ms": 0.02}

    monkeypatch.setattr(q._Timer, "slowdown", slowdown)
    return gemms


def test_slowdown_bound_that_excludes_the_best_node_keeps_none_and_says_why(clipped, tmp_path, monkeypatch):
    gemms = _fake_costs(monkeypatch, clipped, [0.5, 0.01, 0.01])  # the harmful first layer is the expensive one
    _, outcome = _static(clipped, tmp_path, "tight", keep_float="worst_group", keep_float_max=2, keep_float_max_slowdown=1.2)
    kf = outcome.details["keep_float"]
    best = max(kf["ranking"], key=lambda r: r["improvement"])
    assert best["node"] == gemms[0] and best["slowdown"] == pytest.approx(1.5) and best["improvement"] > 0.03
    assert gemms[0] not in kf["kept_float"] and set(kf["kept_float"]) <= set(gemms[1:])  # none, or a cheaper one
    (why,) = [t for t in kf["trials"] if t["node"] == gemms[0]]
    assert why["kept"] is False and "keep_float_max_slowdown 1.2" in why["why"]
    assert kf["latency"]["max_slowdown"] == 1.2 and kf["latency"]["final_slowdown"] <= 1.2
    if not kf["kept_float"]:
        assert kf["stopped"] == "max_slowdown" and "predicted slowdown 1.500" in why["why"]
    assert any("keep_float" in w and "target" in w for w in outcome.warnings)
    json.dumps(outcome.details)


def test_loose_slowdown_bound_keeps_the_best_node_and_reports_measured_costs(clipped, tmp_path):
    # real timings (onnxruntime, 1 thread, batch 1): the bound is loose enough for any noise on this tiny MLP
    _, outcome = _static(clipped, tmp_path, "loose", keep_float="worst_group", keep_float_max=1, keep_float_max_slowdown=10.0)
    kf = outcome.details["keep_float"]
    assert kf["kept_float"] == [kf["ranking"][0]["node"]] and kf["ranking"][0]["improvement"] > 0.03
    for r in kf["ranking"]:  # every candidate's measured cost is reported
        assert r["slowdown"] > 0 and r["p50_ms"] > 0 and r["cost"] == pytest.approx(r["slowdown"] - 1, abs=1e-5)
    lat = kf["latency"]
    assert lat["max_slowdown"] == 10.0 and 0 < lat["final_slowdown"] < 10 and lat["int8_p50_ms"] > 0 and lat["timing_noise"] > 0
    assert lat["fp32_p50_ms"] > 0 and lat["final_vs_fp32"] > 0  # the fp32 model runs in the timed rounds too
    assert "1 thread, batch 1" in lat["how"]
    # inf: no bound, nothing timed
    _, untimed = _static(clipped, tmp_path, "untimed", keep_float="worst_group", keep_float_max=1, keep_float_max_slowdown=float("inf"))
    assert untimed.details["keep_float"]["latency"] is None and "slowdown" not in untimed.details["keep_float"]["ranking"][0]
    assert untimed.details["keep_float"]["kept_float"] == kf["kept_float"]


def test_sqnr_prefilter_keeps_the_node_the_full_ranking_puts_first(clipped, tmp_path):
    """With fewer candidates than quantized nodes, the prefilter (onnxruntime's qdq_loss_debug on the
    worst group's calibration rows) keeps the node whose inputs are noisiest; here that is the node
    the full (expensive) ranking puts first, whatever order the nodes come in. Its score is the SQNR
    of its clipped input, recomputed here from the QDQ model's own scale and zero point."""
    import onnx
    from onnx import numpy_helper

    from edgefair.steps.repair import quantizable_nodes, sqnr_prefilter

    _, full = _static(clipped, tmp_path, "full", keep_float="worst_group", keep_float_max=1)
    top = full.details["keep_float"]["ranking"][0]["node"]
    plain, _ = _static(clipped, tmp_path, "plain")
    nodes = quantizable_nodes(clipped / "m.onnx", plain, ["Gemm"], "qdq")
    with np.load(clipped / "calib.npz") as z:
        x = z["features"][z["g"] == "z"][:16]
    feeds = [{"features": x[i : i + 1]} for i in range(len(x))]
    for order in (nodes, nodes[::-1]):
        chosen, scores = sqnr_prefilter(clipped / "m.onnx", plain, order, feeds, 1, tmp_path)
        assert [n for n, _ in chosen] == [top], scores
    # the score of the top node: 20 log10(|x| / |x - dq(q(x))|) of its input, with the model's scale/zero point
    q = onnx.load(str(plain))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    ql = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "features")
    scale, zp = float(inits[ql.input[1]]), int(inits[ql.input[2]])
    dq = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale
    expected = 20 * np.log10(np.linalg.norm(x) / np.linalg.norm(x - dq))
    assert scores[top] == pytest.approx(expected, abs=0.01)
    assert scores[top] < min(v for k, v in scores.items() if k != top)


def test_keep_float_with_few_candidates_prefilters_by_sqnr_and_says_so(clipped, tmp_path):
    _, out = _static(clipped, tmp_path, "few", keep_float="worst_group", keep_float_max=1, keep_float_candidates=1,
                     keep_float_prefilter="sqnr")
    kf = out.details["keep_float"]
    assert kf["prefilter"]["ranked"] == 1 and kf["prefilter"]["of"] == 3 and kf["prefilter"]["group"] == "g=z"
    assert kf["candidates"] == 1 and kf["kept_float"] == [kf["ranking"][0]["node"]]
    assert any("by SQNR" in w for w in out.warnings)
    _, graph = _static(clipped, tmp_path, "few-graph", keep_float="worst_group", keep_float_max=1, keep_float_candidates=1)
    assert graph.details["keep_float"]["prefilter"] is None
