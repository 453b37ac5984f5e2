"""Latency measurement: bootstrap intervals against a plain loop, paired ratios under drift,
intervals over fresh sessions (A/A), time budgets, multiple batch sizes, memory, speed warnings on
real tiny ONNX models built with onnx.helper."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefair.latency import (
    PERCENTILES,
    LatencySettings,
    bootstrap_latency,
    measure_interleaved,
    model_facts,
    session_budgets,
    session_t_interval,
    speed_warnings,
    t_quantile,
)


def save(model: onnx.ModelProto, path) -> str:
    model.opset_import[0].version = 17
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def mlp(path, d: int = 8, h: int = 16, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((d, h)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", h])],
        [w, b],
    )
    return save(helper.make_model(graph), path)


def conv_integer(path) -> str:
    """What dynamic int8 quantization makes of a Conv: DynamicQuantizeLinear -> ConvInteger -> Cast."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.integers(0, 255, (4, 1, 3, 3)).astype(np.uint8), "w")
    wzp = numpy_helper.from_array(np.array(128, dtype=np.uint8), "wzp")
    graph = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"]),
            helper.make_node("ConvInteger", ["xq", "w", "xzp", "wzp"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT),
        ],
        "convint",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [w, wzp],
    )
    return save(helper.make_model(graph), path)


def naive_bootstrap(times: np.ndarray, n_boot: int, confidence: float, seed: int):
    """Reference: one resample at a time, same generator stream."""
    rng = np.random.default_rng(seed)
    m, r = times.shape
    reps = np.empty((n_boot, m, len(PERCENTILES)))
    for b in range(n_boot):
        idx = rng.integers(0, r, size=(1, r))[0]
        for i in range(m):
            reps[b, i] = np.percentile(times[i, idx], PERCENTILES)
    a = (1 - confidence) / 2
    pct = np.quantile(reps, [a, 1 - a], axis=0)  # (2, M, P)
    ratio = reps[:, :, None, 0] / reps[:, None, :, 0]  # (B, M, M)
    return pct.transpose(1, 2, 0), np.quantile(ratio, [a, 1 - a], axis=0).transpose(1, 2, 0)


def test_bootstrap_matches_plain_loop():
    times = np.random.default_rng(3).lognormal(0.0, 0.3, size=(3, 150))
    pct, ratio = bootstrap_latency(times, n_boot=300, confidence=0.9, seed=7)
    ref_pct, ref_ratio = naive_bootstrap(times, 300, 0.9, 7)
    np.testing.assert_allclose(pct, ref_pct)
    np.testing.assert_allclose(ratio, ref_ratio)


def test_bootstrap_chunking_does_not_change_results(monkeypatch):
    import edgefair.latency as lat

    times = np.random.default_rng(4).exponential(1.0, size=(2, 200))
    whole = bootstrap_latency(times, n_boot=250, confidence=0.95, seed=0)
    monkeypatch.setattr(lat, "BOOT_CHUNK_ELEMENTS", 1000)  # 5 resamples per chunk
    chunked = bootstrap_latency(times, n_boot=250, confidence=0.95, seed=0)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)


def test_percentile_interval_covers_true_median():
    # exponential(1): median ln 2; 2000 rounds give a narrow interval around it
    times = np.random.default_rng(5).exponential(1.0, size=(1, 2000))
    pct, _ = bootstrap_latency(times, n_boot=1000, confidence=0.95, seed=0)
    lo, hi = pct[0, 0]
    assert lo < np.log(2) < hi
    assert hi - lo < 0.15
    assert pct[0, 3, 0] > pct[0, 0, 1]  # p99 interval lies above the p50 interval


def test_ratio_is_paired_by_round():
    # both models share a drift that swings 5x; B is exactly 1.5x A up to 1% noise
    rng = np.random.default_rng(6)
    drift = np.exp(rng.uniform(0, np.log(5), 400))
    a = drift * rng.uniform(0.99, 1.01, 400)
    b = 1.5 * drift * rng.uniform(0.99, 1.01, 400)
    _, ratio = bootstrap_latency(np.stack([a, b]), n_boot=500, confidence=0.95, seed=0)
    lo, hi = ratio[1, 0]
    assert 1.35 < lo <= hi < 1.65
    assert ratio[0, 0, 0] == ratio[0, 0, 1] == 1.0


def test_measure_interleaved_fields_and_batch_sizes(tmp_path):
    a, b = mlp(tmp_path / "a.onnx"), mlp(tmp_path / "b.onnx", h=64)
    inputs = {"x": np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)}
    res = measure_interleaved([a, b], inputs, LatencySettings(runs=30, warmup=2, batch_sizes=(4,), n_boot=200))
    assert len(res) == 2
    first, second = res
    assert first["spinning"] is False  # several sessions share the cores
    assert first["batch_size"] == 1 and first["runs"] == 30
    assert set(first["by_batch_size"]) == {"1", "4"}
    assert first["by_batch_size"]["4"]["batch_size"] == 4
    for r in res:
        for p in PERCENTILES:
            lo, hi = r[f"p{p}_ci"]
            assert lo <= r[f"p{p}_ms"] <= hi
        assert r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["session_create_ms"] > 0 and r["first_inference_ms"] > 0
        assert r["throughput_per_s"] > 0
    assert first["ratio_p50_vs_first"] == 1.0 and first["ratio_p50_ci"] == [1.0, 1.0]
    lo, hi = second["ratio_p50_ci"]
    assert lo <= second["ratio_p50_vs_first"] <= hi
    assert second["ratio_p50_vs_earlier"]["0"]["ci"] == second["ratio_p50_ci"]
    assert first["parameters"] == 8 * 16 + 16 and second["parameters"] == 8 * 64 + 64
    assert first["size_bytes"] == (tmp_path / "a.onnx").stat().st_size
    assert first["conv_integer_nodes"] == 0
    assert first["sessions"] == 3 and len(first["p50_ms_by_session"]) == 3 and sum(first["runs_by_session"]) == 30
    assert first["ci_method"] == "session_t+round_bootstrap"


def test_memory_peak_covers_the_weights(tmp_path):
    # 4 MB of weights must be resident at some point while a session is built, for the first model
    # too (its memory used to be hidden by heap pages an earlier session had freed: 0 kB measured)
    a, b = mlp(tmp_path / "a.onnx", d=1024, h=1024), mlp(tmp_path / "b.onnx", d=1024, h=1024, seed=1)
    inputs = {"x": np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)}
    res = measure_interleaved([a, b], inputs, LatencySettings(runs=10, warmup=0, n_boot=0, sessions=1))
    if res[0]["memory_method"] is None:
        pytest.skip("no /proc/self/status: memory is not measured here")
    for r in res:
        assert r["memory_peak_kb"] >= r["size_bytes"] / 1024, r


def test_single_model_spins_and_one_batch_size_has_no_breakdown(tmp_path):
    a = mlp(tmp_path / "a.onnx")
    inputs = {"x": np.ones((10, 8), np.float32)}
    (r,) = measure_interleaved([a], inputs, LatencySettings(runs=10, warmup=0, n_boot=0))
    assert r["spinning"] is True and "by_batch_size" not in r and r["p50_ci"] is None


def test_time_budget(tmp_path):
    a = mlp(tmp_path / "a.onnx")
    inputs = {"x": np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)}
    t0 = time.perf_counter()
    (r,) = measure_interleaved([a], inputs, LatencySettings(budget_s=0.3, warmup=5, n_boot=100))
    elapsed = time.perf_counter() - t0
    assert r["budget_s"] == 0.3
    assert r["runs"] > 200  # far more than 10 rounds of a 16-wide MatMul fit in 0.3 s
    assert r["mean_ms"] * r["runs"] / 1e3 <= 0.3 + 0.05  # time inside run() stays within the budget
    assert 0.3 <= elapsed < 10


def test_min_time_keeps_timing_past_the_run_count(tmp_path):
    a = mlp(tmp_path / "a.onnx")
    inputs = {"x": np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)}
    t0 = time.perf_counter()
    (r,) = measure_interleaved([a], inputs, LatencySettings(runs=10, warmup=0, min_time_s=0.25, n_boot=0))
    assert time.perf_counter() - t0 >= 0.25
    assert r["min_time_s"] == 0.25 and r["runs"] > 100  # 10 runs of this model take well under a millisecond
    (r,) = measure_interleaved([a], inputs, LatencySettings(runs=10, warmup=0, n_boot=0))
    assert r["runs"] == 10 and r["min_time_s"] == 0.0
    (r,) = measure_interleaved([a], inputs, LatencySettings(budget_s=0.05, min_time_s=5.0, n_boot=0))
    assert r["min_time_s"] is None and r["mean_ms"] * r["runs"] / 1e3 <= 0.05 + 0.05  # the budget decides


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 30):
        for c in (0.8, 0.95, 0.99):
            assert t_quantile(c, df) == pytest.approx(stats.t.ppf((1 + c) / 2, df), rel=1e-9)


def test_session_t_interval_on_logs():
    values = np.exp(np.array([[0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]]))  # 3 sessions, 2 statistics
    ci = session_t_interval(values, 0.95)
    half = 4.302652729749464 * 0.1 / math.sqrt(3)
    np.testing.assert_allclose(ci[0], [math.exp(-half), math.exp(half)])
    np.testing.assert_allclose(ci[1], [math.e, math.e])  # no spread between sessions: a point
    assert session_t_interval(values[:1], 0.95) is None  # one session: no spread to measure


def test_stratified_bootstrap_keeps_each_session_share():
    # session 1 rounds all take 1 ms, session 2 rounds 2 ms: resampling within sessions always
    # draws 100 of each, so the pooled median never moves; resampling across sessions does
    times = np.concatenate([np.ones(100), 2 * np.ones(101)])[None, :]
    pct, _ = bootstrap_latency(times, n_boot=200, confidence=0.95, seed=0, strata=[100, 101])
    assert pct[0, 0].tolist() == [2.0, 2.0]
    pct, _ = bootstrap_latency(times, n_boot=200, confidence=0.95, seed=0)
    assert pct[0, 0].tolist() == [1.0, 2.0]
    one = bootstrap_latency(times, n_boot=50, confidence=0.9, seed=3, strata=[201])
    for x, y in zip(one, bootstrap_latency(times, n_boot=50, confidence=0.9, seed=3)):
        np.testing.assert_array_equal(x, y)


def test_budget_is_split_between_sessions():
    budgets = session_budgets(LatencySettings(runs=20, warmup=5, min_time_s=0.6, sessions=3))
    assert [b.runs for b in budgets] == [7, 7, 6] and {b.warmup for b in budgets} == {5}
    assert all(b.min_time_s == pytest.approx(0.2) for b in budgets)
    (b,) = session_budgets(LatencySettings(budget_s=1.0, sessions=1))
    assert b.budget_s == 1.0 and b.min_runs == 10


def test_a_a_ratio_interval_holds_across_sessions(tmp_path):
    """The same model as two files: its p50 ratio interval must contain 1 and be at least as wide
    as the spread of the per-session ratios says (one session's rounds gave +-0.1% and missed 1)."""
    a = mlp(tmp_path / "a.onnx", d=64, h=256)
    b = shutil.copy(a, tmp_path / "b.onnx")
    inputs = {"x": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)}
    settings = LatencySettings(runs=300, warmup=20, min_time_s=0.15, n_boot=200, memory=False, confidence=0.99)
    for attempt in range(2):  # a 99% interval misses 1 in 100 A/A runs; two misses in a row: 1 in 10,000
        first, second = measure_interleaved([a, b], inputs, replace(settings, seed=attempt))
        assert second["sessions"] == 3 and sum(second["runs_by_session"]) == second["runs"] >= 300
        per_session = np.array(second["ratio_p50_by_session"])
        assert len(per_session) == 3 and len(second["p50_ms_by_session"]) == 3
        lo, hi = second["ratio_p50_ci"]
        t_lo, t_hi = session_t_interval(per_session, 0.99)
        assert lo <= t_lo and hi >= t_hi  # the session spread is in the reported interval
        assert lo <= second["ratio_p50_vs_first"] <= hi
        if lo <= 1.0 <= hi:
            break
    else:
        pytest.fail(f"A/A ratio interval [{lo:.4f}, {hi:.4f}] excludes 1 twice; per session {per_session}")


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"latency.runs: must be >= 10"):
        LatencySettings(runs=3)
    with pytest.raises(ValueError, match=r"latency.optimization: must be one of disable, basic, extended, all"):
        LatencySettings(optimization="max")
    with pytest.raises(ValueError, match=r"latency.budget_s: must be > 0"):
        LatencySettings(budget_s=0)
    with pytest.raises(ValueError, match=r"latency.min_time_s: must be >= 0"):
        LatencySettings(min_time_s=-1)
    with pytest.raises(ValueError, match=r"latency.sessions: must be >= 1"):
        LatencySettings(sessions=0)
    with pytest.raises(ValueError, match=r"latency.sessions: must be at most runs / 3 \(3\): each session needs 3 timed rounds"):
        LatencySettings(runs=10, sessions=4)
    assert LatencySettings(budget_s=1.0, runs=10, sessions=8).sessions == 8  # runs do not count with a budget


def test_conv_integer_is_found_and_warned(tmp_path):
    path = conv_integer(tmp_path / "ci.onnx")
    assert model_facts(path)["conv_integer_nodes"] == 1
    inputs = {"x": np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)}
    base = mlp(tmp_path / "a.onnx")  # a different input: each model gets the arrays it declares
    res = measure_interleaved([path], inputs, LatencySettings(runs=10, warmup=1, n_boot=50))
    assert res[0]["conv_integer_nodes"] == 1
    (warnings,) = speed_warnings(res, ["quantize_dynamic"], [None])
    assert len(warnings) == 1 and "1 ConvInteger node(s)" in warnings[0]
    assert model_facts(base)["conv_integer_nodes"] == 0


def _result(ratios: dict[str, tuple[float, float, float]]) -> dict:
    return {
        "batch_size": 1, "threads": 1, "conv_integer_nodes": 0,
        "ratio_p50_vs_earlier": {k: {"ratio": r, "ci": [lo, hi]} for k, (r, lo, hi) in ratios.items()},
    }


def test_speed_warnings_compare_each_step_with_its_input():
    results = [
        _result({}),
        _result({"0": (1.20, 1.10, 1.30)}),  # slower than the baseline, surely
        _result({"0": (1.05, 0.98, 1.12), "1": (0.9, 0.85, 0.95)}),  # CI straddles 1 vs baseline
        _result({"0": (1.3, 1.2, 1.4), "1": (1.1, 1.06, 1.15), "2": (0.8, 0.7, 0.9)}),
        _result({"0": (1.03, 1.02, 1.04)}),  # surely slower, but within session-to-session noise
    ]
    kinds = ["export", "quantize_dynamic", "prune", "quantize_static", "prune"]
    # default: each step reads the one before it
    w = speed_warnings(results, kinds)
    assert [len(x) for x in w] == [0, 1, 0, 0, 0]
    assert w[1][0] == (
        "quantize_dynamic made the model slower than its input (step 0, export): p50 x1.20 [1.10, 1.30] "
        "at batch size 1, 1 thread(s)"
    )
    # step 2 reads the baseline (no warning: CI holds 1), step 3 reads step 1 (slower)
    w = speed_warnings(results, kinds, [None, 0, 0, 1, 0])
    assert [len(x) for x in w] == [0, 1, 0, 1, 0]
    assert "(step 1, quantize_dynamic): p50 x1.10 [1.06, 1.15]" in w[3][0]
    assert speed_warnings([None, None], ["export", "prune"]) == [[], []]
    with pytest.raises(ValueError, match="2 results but 1 kinds"):
        speed_warnings([None, None], ["export"])
