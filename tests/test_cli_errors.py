"""Every bad input is a one-line `Error:` naming the culprit, exit code 2, and nothing written."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import BASE_RECIPE, run_cli, write_recipe


def eval_arrays(recipe_dir) -> dict:
    """The tiny eval set's arrays, to be altered and saved under another name by a test."""
    with np.load(recipe_dir / "eval.npz") as z:
        return dict(z)


def eval_csv_rows(recipe_dir) -> list[list[str]]:
    """The tiny eval set as csv rows (header first) with features f0..f5, label and group g."""
    a = eval_arrays(recipe_dir)
    x, y, g = a["features"], a["label"], a["g"]
    return [[f"f{i}" for i in range(6)] + ["label", "g"]] + [[*map(str, x[i]), str(y[i]), g[i]] for i in range(len(y))]


def with_eval(name: str) -> str:
    """BASE_RECIPE reading `name` as its eval data."""
    return BASE_RECIPE.replace('eval = "eval.npz"', f'eval = "{name}"')


def run_bad(recipe_dir, recipe_text: str, expected: str):
    recipe = write_recipe(recipe_dir / "r.toml", recipe_text)
    out = recipe_dir / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), "a failed run must not leave outputs behind"
    return lines[0]


def test_missing_recipe(tmp_path):
    result = run_cli(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: recipe not found: {tmp_path / 'nope.toml'}"


def test_not_toml(recipe_dir):
    run_bad(recipe_dir, "[model\nsource=", "not valid TOML")


@pytest.mark.parametrize(
    "patch, expected",
    [
        (("[data]", "[data]\nevall = 'x.npz'"), "data.evall: unknown key"),
        (("[latency]", "[latency]\nthreds = 2"), "latency.threds: unknown key"),
        (("min_time_s = 0", "min_time_s = -0.5"), "latency.min_time_s: must be >= 0"),
        (("[evaluate]", "[evaluate]\nconfidence = 1.5"), "evaluate.confidence: must be in [0.5, 1)"),
        (("[evaluate]", "[evaluate]\nseed = 'zero'"), "evaluate.seed: must be an integer"),
        (("[model]", "[gates]\nmax_group_acuracy_drop = 0.01\n[model]"), "gates.max_group_acuracy_drop: unknown key"),
        (("eval = \"eval.npz\"", "eval = \"missing.npz\""), "data.eval: file not found"),
        (("source = \"tiny.pt2\"", "source = \"missing.pt2\""), "model.source: file not found"),
    ],
)
def test_recipe_errors(recipe_dir, patch, expected):
    run_bad(recipe_dir, BASE_RECIPE.replace(*patch, 1), expected)


def test_bad_step_value(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE + "\n[[steps]]\nkind = 'prune'\nsparsity = 1.5\n", "steps[0].sparsity: must be in [0, 1)")


def test_unknown_step_kind(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE + "\n[[steps]]\nkind = 'distill'\n", "steps[0].kind: unknown step kind 'distill'")


def test_unknown_step_key(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_static'\nmethd = 'minmax'\n", "steps[0].methd: unknown key")


def test_duplicate_step_name(recipe_dir):
    text = BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n[[steps]]\nkind = 'quantize_dynamic'\n"
    run_bad(recipe_dir, text, "steps[1].name: step name 'quantize_dynamic' is used twice")


def test_slow_dynamic_conv_refused(recipe_dir):
    text = BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\nop_types = ['Conv', 'MatMul']\n"
    run_bad(recipe_dir, text, "steps[0].op_types: dynamic int8 Conv (ConvInteger) runs 7-11x slower")


def test_prune_after_quantization_refused(recipe_dir):
    text = BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n[[steps]]\nkind = 'prune'\nsparsity = 0.5\n"
    run_bad(recipe_dir, text, "steps[1]: prune works on the torch model")


def test_missing_label_column(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE.replace("[data]", "[data]\nlabel = 'target'"), "data.eval: label column 'target' not in")


def test_missing_group_column(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE.replace('groups = ["g", "h"]', 'groups = ["g", "sex"]'), "data.eval: group column 'sex' not in")


def test_data_shape_does_not_fit_model(recipe_dir):
    arrays = eval_arrays(recipe_dir)
    arrays["features"] = arrays["features"][:, :5]
    np.savez(recipe_dir / "narrow.npz", **arrays)
    # checked against the traced input shape before torch runs (not torch's "Guard failed: ...")
    run_bad(recipe_dir, with_eval("narrow.npz"), "data.eval: array 'features' in narrow.npz has shape (800, 5), model input expects ('batch', 6)")


def test_data_shape_does_not_fit_onnx_model(recipe_dir, tmp_path):
    # first a real run to get an ONNX file, then feed it data of the wrong width
    result = run_cli(["run", str(write_recipe(recipe_dir / "ok.toml", BASE_RECIPE)), "--out", str(tmp_path / "first")])
    assert result.exit_code == 0, result.output
    (recipe_dir / "m.onnx").symlink_to(tmp_path / "first" / "00-baseline.onnx")
    arrays = eval_arrays(recipe_dir)
    arrays["features"] = arrays["features"][:, :5]
    np.savez(recipe_dir / "narrow.npz", **arrays)
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "m.onnx"').replace('eval = "eval.npz"', 'eval = "narrow.npz"')
    run_bad(recipe_dir, text, "data.eval: array 'features' in narrow.npz has shape (800, 5), model input expects ('batch', 6)")


def test_missing_input_array(recipe_dir):
    arrays = eval_arrays(recipe_dir)
    arrays["x"] = arrays.pop("features")
    np.savez(recipe_dir / "renamed.npz", **arrays)
    run_bad(recipe_dir, with_eval("renamed.npz"), "has no array 'features' for model input 'features'")


def test_pickled_data_refused(recipe_dir):
    arrays = eval_arrays(recipe_dir)
    arrays["g"] = arrays["g"].astype(object)
    np.savez(recipe_dir / "pickled.npz", **arrays)
    run_bad(recipe_dir, with_eval("pickled.npz"), "holds pickled (object) arrays")


def test_model_that_fails_to_export(recipe_dir):
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "tiny_model:branchy"')
    run_bad(recipe_dir, text, "model.source: export to ONNX failed")


@pytest.mark.parametrize(
    "source, expected",
    [
        ("tiny_model:broken", "model.source: factory tiny_model:broken failed: factory exploded"),
        ("tiny_model:not_a_module", "returned int, not a torch.nn.Module"),
        ("no_such_module:build", "model.source: cannot import no_such_module:build"),
    ],
)
def test_factory_errors(recipe_dir, source, expected):
    run_bad(recipe_dir, BASE_RECIPE.replace('source = "tiny.pt2"', f'source = "{source}"'), expected)


def test_weights_that_do_not_fit(recipe_dir):
    import torch

    torch.save({"fc1.weight": torch.zeros(3, 3)}, recipe_dir / "wrong.pt")
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "tiny_model:build"\nweights = "wrong.pt"')
    run_bad(recipe_dir, text, "model.weights:")


def test_weights_with_pickled_objects_refused(recipe_dir):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (recipe_dir / "evil.pt").write_bytes(pickle.dumps({"fc1.weight": Evil()}))
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "tiny_model:build"\nweights = "evil.pt"')
    run_bad(recipe_dir, text, "cannot read")


def test_not_an_onnx_file(recipe_dir):
    (recipe_dir / "junk.onnx").write_bytes(b"not a model")
    run_bad(recipe_dir, BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "junk.onnx"'), "model.source:")


def test_old_layout_pt2_with_pickle_is_refused_without_running_it(recipe_dir, tmp_path):
    """torch.export.load retries old-layout archives with weights_only=False: refuse them first."""
    import pathlib
    import pickle
    import zipfile

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (pathlib.Path(marker),))

    with zipfile.ZipFile(recipe_dir / "evil.pt2", "w") as z:
        z.writestr("evil/version", "1")
        z.writestr("evil/serialized_exported_program.json", "{}")
        z.writestr("evil/serialized_state_dict.pt", pickle.dumps(Evil()))
    run_bad(recipe_dir, BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "evil.pt2"'), "needs unpickling")
    assert not marker.exists()


def test_step_kind_must_be_a_string(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE + "\n[[steps]]\nkind = ['prune']\n", "steps[0].kind: must be a string")


def test_groups_are_required(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE.replace('groups = ["g", "h"]', "groups = []"), "data.groups: name at least one")


def test_negative_seed(recipe_dir):
    run_bad(recipe_dir, BASE_RECIPE.replace("[evaluate]", "[evaluate]\nseed = -1"), "evaluate.seed: must be >= 0")


def test_empty_onnx_source(recipe_dir):
    (recipe_dir / "empty.onnx").write_bytes(b"")
    run_bad(recipe_dir, BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "empty.onnx"'), "model.source")


def test_labels_beyond_model_classes(recipe_dir):
    arrays = eval_arrays(recipe_dir)
    arrays["label"] = arrays["label"] + 5
    np.savez(recipe_dir / "biglabel.npz", **arrays)
    run_bad(recipe_dir, with_eval("biglabel.npz"), "has class id 7, but the model outputs 3 classes")


def test_out_is_a_file(recipe_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "afile" / "sub")])
    assert result.exit_code == 2 and "--out: cannot write" in result.output


def test_report_of_something_else(tmp_path):
    (tmp_path / "report.json").write_text('{"schema_version": 1}')
    result = run_cli(["report", str(tmp_path)])
    assert result.exit_code == 2 and "not an edgefair report" in result.output
    (tmp_path / "report.json").write_text("[1, 2]")
    assert run_cli(["report", str(tmp_path)]).exit_code == 2


def test_a_bug_is_exit_3_not_a_gate_failure(recipe_dir, monkeypatch):
    import edgefair.pipeline

    def boom(*a, **k):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(edgefair.pipeline, "evaluate", boom)
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    from click.testing import CliRunner

    from edgefair.cli import main

    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(recipe_dir / "o")])
    assert result.exit_code == 3 and "ZeroDivisionError" in result.output


def _csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_csv_data_end_to_end_keeps_group_spelling(recipe_dir, tmp_path):
    import json

    rows = eval_csv_rows(recipe_dir)
    rows[0][-1] = "site"
    for row in rows[1:]:  # different groups that a number parser would merge
        row[-1] = "01" if row[-1] == "a" else "1"
    _csv(recipe_dir / "eval.csv", rows)
    text = with_eval("eval.csv").replace('groups = ["g", "h"]', 'groups = ["site"]')
    out = tmp_path / "o"
    result = run_cli(["run", str(write_recipe(recipe_dir / "c.toml", text)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    groups = json.loads((out / "report.json").read_text())["steps"][0]["groups"]
    assert set(groups) == {"site=01", "site=1"}


def test_csv_missing_value_in_a_feature(recipe_dir):
    rows = eval_csv_rows(recipe_dir)
    rows[5][2] = ""
    _csv(recipe_dir / "gap.csv", rows)
    text = with_eval("gap.csv").replace('groups = ["g", "h"]', 'groups = ["g"]')
    line = run_bad(recipe_dir, text, "feature column 'f2' in")
    assert "missing value at data row 5" in line


def test_npz_that_is_not_a_zip(recipe_dir):
    (recipe_dir / "junk.npz").write_text("not numpy")
    run_bad(recipe_dir, with_eval("junk.npz"), "cannot read")


@pytest.mark.parametrize(
    "step, expected",
    [
        ("kind = 'prune'\nsparsity = 0.5\nexclude = ['fc9.weight']", "prune.exclude: 'fc9.weight' is not in the model's parameters"),
        ("kind = 'quantize_dynamic'\nexclude_nodes = ['no_such_node']", "quantize_dynamic.exclude_nodes: 'no_such_node' is not in the nodes"),
        ("kind = 'quantize_static'\nexclude_nodes = ['no_such_node']", "quantize_static.exclude_nodes: 'no_such_node' is not in the nodes"),
    ],
)
def test_exclude_names_must_exist(recipe_dir, step, expected):
    run_bad(recipe_dir, BASE_RECIPE + "\n[[steps]]\n" + step + "\n", expected)


def test_nan_in_inputs(recipe_dir):
    arrays = eval_arrays(recipe_dir)
    arrays["features"][7, 2] = np.nan
    np.savez(recipe_dir / "nan.npz", **arrays)
    run_bad(recipe_dir, with_eval("nan.npz"), "array 'features' in nan.npz has NaN or infinite values in 1 rows (first: row 7)")


def test_nan_in_inputs_is_caught_by_validate(recipe_dir):
    arrays = eval_arrays(recipe_dir)
    arrays["features"][0, 0] = np.nan
    np.savez(recipe_dir / "nan0.npz", **arrays)
    recipe = write_recipe(recipe_dir / "v.toml", with_eval("nan0.npz"))
    result = run_cli(["validate", str(recipe)])
    assert result.exit_code == 2 and "NaN or infinite" in result.output


def test_empty_group_value_in_csv(recipe_dir):
    rows = eval_csv_rows(recipe_dir)
    rows[4][7] = ""
    _csv(recipe_dir / "blank.csv", rows)
    text = with_eval("blank.csv").replace('groups = ["g", "h"]', 'groups = ["g"]')
    run_bad(recipe_dir, text, "group column 'g' in")


def test_one_based_labels_get_a_hint(recipe_dir):
    arrays = eval_arrays(recipe_dir)
    arrays["label"] = arrays["label"] + 1
    np.savez(recipe_dir / "onebased.npz", **arrays)
    run_bad(recipe_dir, with_eval("onebased.npz"), "they look 1-based: class ids must be 0 to 2")


# -- exit codes: edgefair's own failures are 3 (a traceback), Ctrl-C is 130 -----------------------


def _break_step(monkeypatch, edit):
    """quantize_dynamic writes its input model altered by `edit(model)`: a generated model that
    edgefair itself got wrong, on the data the baseline runs on."""
    import dataclasses

    import onnx

    from edgefair.steps import REGISTRY, StepOutcome

    def apply(config, src, dst, ctx):
        model = onnx.load(str(src))
        edit(model)
        onnx.save(model, str(dst))
        return StepOutcome()

    monkeypatch.setitem(REGISTRY, "quantize_dynamic", dataclasses.replace(REGISTRY["quantize_dynamic"], apply=apply))


def _reshape_output(model, shape):
    """Route the first output through a Reshape to a fixed `shape`: runs only on batches of that size."""
    import onnx
    from onnx import helper, numpy_helper

    out = model.graph.output[0]
    producer = next(n for n in model.graph.node if out.name in n.output)
    producer.output[list(producer.output).index(out.name)] = "pre_reshape"
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), "fixed_shape"))
    model.graph.node.append(helper.make_node("Reshape", ["pre_reshape", "fixed_shape"], [out.name]))
    out.type.tensor_type.shape.Clear()
    for d in shape:
        out.type.tensor_type.shape.dim.add().dim_value = d
    onnx.checker.check_model(model)


def _undefined_input(model):
    model.graph.node[0].input[0] = "no_such_tensor"  # onnx.load reads it; onnxruntime refuses the graph


def _run_generated(recipe_dir):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    out = recipe_dir / "out"
    from click.testing import CliRunner

    from edgefair.cli import main

    # --no-cache: the broken model must neither come from nor go into the shared cache
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--no-cache"])
    assert not out.exists() or not any(out.iterdir())
    return result


@pytest.mark.parametrize("edit", [lambda m: _reshape_output(m, (7, 3)), _undefined_input], ids=["fails-to-run", "fails-to-load"])
def test_generated_model_that_fails_in_onnxruntime_is_a_bug_not_bad_data(recipe_dir, monkeypatch, edit):
    _break_step(monkeypatch, edit)
    result = _run_generated(recipe_dir)
    assert result.exit_code == 3, result.output
    assert "Traceback" in result.output and "GeneratedModelError" in result.output
    assert "01-quantize_dynamic.onnx, a model edgefair generated" in result.output
    assert "Error: data.eval" not in result.output


def test_user_baseline_that_fails_on_the_eval_rows_stays_bad_input(recipe_dir, tmp_path):
    """The user's own ONNX model runs on the 256 rows prepare checks, then fails on the full eval
    batch: that is the user's model and data, exit 2 with one line."""
    import onnx

    first = tmp_path / "first"
    r = run_cli(["run", str(write_recipe(recipe_dir / "ok.toml", BASE_RECIPE)), "--out", str(first)])
    assert r.exit_code in (0, 1), r.output  # the verdict does not matter here, only the exported model
    model = onnx.load(str(first / "00-baseline.onnx"))
    _reshape_output(model, (256, 3))
    onnx.save(model, str(recipe_dir / "fixed256.onnx"))
    line = run_bad(recipe_dir, BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "fixed256.onnx"'), "data.eval: eval.npz does not fit model 00-baseline.onnx")
    assert "reshape" in line.lower()


def test_keyboard_interrupt_is_exit_130_with_one_line(recipe_dir, monkeypatch):
    import edgefair.pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgefair.pipeline, "evaluate", interrupted)
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    result = run_cli(["run", str(recipe), "--out", str(recipe_dir / "o"), "--no-cache", "-q"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == "Interrupted"
    assert "Traceback" not in result.output and "Aborted" not in result.output


def test_ctrl_c_on_a_real_run_exits_130(recipe_dir, tmp_path):
    """SIGINT to a real `edgefair run` process while it measures latency (a long min_time_s keeps it
    there): exit code 130, the one line `Interrupted`, no traceback and no outputs."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    text = BASE_RECIPE.replace("min_time_s = 0", "min_time_s = 120")
    recipe = write_recipe(recipe_dir / "slow.toml", text)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from edgefair.cli import main; main()", "run", str(recipe), "--out", str(out), "--no-cache"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    killer = threading.Timer(60, proc.kill)  # never hang the suite
    killer.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("· latency"):
                break
        assert seen and seen[-1].startswith("· latency"), "".join(seen)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert stderr.strip().splitlines()[-1] == "Interrupted"
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert not out.exists() or not any(out.iterdir())
