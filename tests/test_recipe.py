"""Recipe errors that must be caught before any work (by `validate` as well as `run`): one line,
exit 2, naming the key."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import BASE_RECIPE, run_cli, write_recipe


@pytest.mark.parametrize("patch, expected", [
    (('groups = ["g", "h"]', 'groups = ["g", "h=x"]'), "data.groups[1]: 'h=x' contains '=' or '&'"),
    (("bootstrap = 200", "bootstrap = 1000000000"), "evaluate.bootstrap: must be in [100, 100000] (memory grows linearly"),
    (("[latency]", "[gates]\non_insufficient = 'fail'\n[latency]"), "gates.on_insufficient: renamed to gates.on_undecided"),
    (("[latency]", "[gates]\nmax_ci_width_ratio = 2.0\n[latency]"), "gates.max_ci_width_ratio: removed in edgefair 0.2"),
    (("[latency]", "[gates]\non_undecided = 'maybe'\n[latency]"), "gates.on_undecided: must be one of 'warn', 'fail', 'fail_if_observed', 'fail_if_significant'"),
    (("[latency]", "[select]\nby = 'cheapest'\n[latency]"), "select.by: must be one of 'fastest', 'smallest', 'last'"),
    (("[latency]", "[gates]\nmax_latency_p95_ms = 1.0\n[latency]\nenabled = false"), "gates.max_latency_p95_ms: needs latency measurements"),
    (('source = "tiny.pt2"', 'source = "tiny.pt2"\noutput = "embedding"\n[gates]\nmin_group_agreement = 0.9'),
     "gates: flip-rate and agreement gates compare argmax predictions"),
    (("[latency]", "[gates]\nmin_group_cosine = 1.5\n[latency]"), "gates.min_group_cosine: must be in [-1, 1]"),
    (("[data]", "[data]\npositive_label = -1"), "data.positive_label: must be >= 0"),
    (("runs = 20", "runs = 20\nsessions = 7"), "latency.sessions: must be at most runs / 3 (6)"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_recipe_errors_are_caught_before_any_work(recipe_dir, patch, expected, command):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE.replace(*patch))
    assert patch[1] in recipe.read_text()
    out = recipe_dir / "out"
    args = [command, str(recipe)] + (["--out", str(out)] if command == "run" else [])
    result = run_cli(args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert not out.exists()


def test_a_bootstrap_too_big_for_this_machine_is_refused_before_any_work(recipe_dir):
    """Memory depends on the cells and groups in the data: checked once the data is read, with the
    memory it would need in the message (0.1 crashed with exit 3 asking for 671 GiB)."""
    with np.load(recipe_dir / "eval.npz") as z:
        arrays = dict(z)
    arrays["site"] = np.array([f"s{i % 300}" for i in range(len(arrays["label"]))])  # 300 x 3 x 2 cells
    np.savez(recipe_dir / "many.npz", **arrays)
    text = BASE_RECIPE.replace('eval = "eval.npz"', 'eval = "many.npz"').replace('groups = ["g", "h"]', 'groups = ["g", "h", "site"]')
    text = text.replace("bootstrap = 200", "bootstrap = 100000")
    for command in ("validate", "run"):
        result = run_cli([command, str(write_recipe(recipe_dir / "big.toml", text))] + (["--out", str(recipe_dir / "o")] if command == "run" else []))
        assert result.exit_code == 2, result.output
        line = result.output.strip().splitlines()[-1]
        assert re.fullmatch(r"Error: evaluate\.bootstrap: 100000 replicates over \d+ cells and \d+ groups of 800 rows need about "
                            r"\d+\.\d GB, more than half of this machine's \d+\.\d GB; lower it", line), line
        assert not (recipe_dir / "o").exists()
