"""The CLI surface: commands, help, validate, report, probe and --latency-from."""

from __future__ import annotations

import json

from click.testing import CliRunner

from conftest import BASE_RECIPE, REPO, run_cli, write_recipe
from edgefair.cli import main


def test_every_command_has_help_and_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name, cmd in main.commands.items():
        assert cmd.help, name
        assert f"edgefair {name}" in readme, name
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0


def test_version():
    from edgefair import __version__

    result = run_cli(["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_validate_does_not_write(recipe_dir):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    before = set(recipe_dir.iterdir())
    result = run_cli(["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "export parity" in result.output and "800 rows" in result.output
    assert set(recipe_dir.iterdir()) == before


def test_validate_bad_recipe(recipe_dir):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE.replace("[data]", "[data]\nlabel = 'nope'"))
    result = run_cli(["validate", str(recipe)])
    assert result.exit_code == 2 and result.output.startswith("Error: data.eval: label column 'nope'")


def test_report_rerenders_and_probe_replaces_latency(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    out = tmp_path / "out"
    assert run_cli(["run", str(recipe), "--out", str(out), "-q"]).exit_code == 0
    (out / "report.md").unlink()
    assert run_cli(["report", str(out)]).exit_code == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    device = tmp_path / "device.json"
    result = run_cli(["probe", str(out / "01-quantize_dynamic.onnx"), "--runs", "20", "--warmup", "2", "--out", str(device)])
    assert result.exit_code == 0, result.output
    measured = json.loads(device.read_text())["models"][0]
    out2 = tmp_path / "out2"
    assert run_cli(["run", str(recipe), "--out", str(out2), "-q", "--latency-from", str(device)]).exit_code == 0
    steps = json.loads((out2 / "report.json").read_text())["steps"]
    assert steps[0]["latency"]["source"] == "local"
    assert steps[1]["latency"]["source"] == "device"
    assert steps[1]["latency"]["p95_ms"] == measured["latency"]["p95_ms"]
    assert steps[1]["sha256"] == measured["sha256"]


def test_latency_from_bad_file(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something-else"}')
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--latency-from", str(bad)])
    assert result.exit_code == 2 and "schema" in result.output and not (tmp_path / "o").exists()


def test_report_on_missing_folder(tmp_path):
    result = run_cli(["report", str(tmp_path)])
    assert result.exit_code == 2 and "report.json: not found" in result.output



def _commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


def test_every_command_has_an_example_in_its_help():
    helps = {" ".join(path): CliRunner().invoke(main, [*path, "--help"]) for path, _ in _commands(main)}
    helps["(main)"] = CliRunner().invoke(main, ["--help"])
    assert {"init", "cache info", "cache clear", "probe"} <= set(helps)
    for name, result in helps.items():
        assert result.exit_code == 0, name
        assert "Example" in result.output, name
    assert "--dim seq=128" in helps["probe"].output  # probe's help is its one parser's (argparse)


def test_run_json_prints_the_summary_on_stdout(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out), "--json"])
    summary = json.loads(result.stdout)  # stdout is the JSON alone; progress goes to stderr
    report = json.loads((out / "report.json").read_text())
    assert result.exit_code == summary["exit_code"] == (0 if report["verdict"] == "pass" else 1)
    assert summary["verdict"] == report["verdict"] and summary["selected"] == report["selected"]
    assert [s["name"] for s in summary["steps"]] == [s["name"] for s in report["steps"]]
    assert summary["checks"] == {k: len(v) for k, v in report["gate_summary"].items() if isinstance(v, list)}
    worst = summary["steps"][1]["worst"]["max_group_accuracy_drop"]
    values = [g["value"] for g in report["steps"][1]["gates"] if g["gate"] == "max_group_accuracy_drop" and g["value"] is not None]
    assert worst["value"] == max(values)
    assert "· latency" in result.stderr and "\x1b" not in result.stderr  # not a terminal: plain lines


def test_progress_on_a_terminal_shows_stage_timings_and_honours_no_color(monkeypatch):
    import io
    import re

    from edgefair.progress import Progress

    color = re.compile(r"\x1b\[(3[0-9]|9[0-7])m")  # foreground colour codes

    def draw() -> tuple[str, list]:
        buf = io.StringIO()
        with Progress(stream=buf, force_terminal=True) as p:
            p("export: torch -> ONNX")
            p("step 1: quantize_dynamic")
        return buf.getvalue(), p.timings

    monkeypatch.delenv("NO_COLOR", raising=False)
    text, timings = draw()
    assert [name for name, _ in timings] == ["export: torch -> ONNX", "step 1: quantize_dynamic"]
    assert re.search(r"✓.* export: torch -> ONNX .*\d+\.\d+ s", text) and color.search(text)
    monkeypatch.setenv("NO_COLOR", "1")
    text, _ = draw()
    assert "✓ export: torch -> ONNX" in text and not color.search(text)
    buf = io.StringIO()  # not a terminal: one plain line per stage
    with Progress(stream=buf) as p:
        p("export: torch -> ONNX")
        p("evaluate")
    assert buf.getvalue() == "· export: torch -> ONNX\n· evaluate\n"
    buf = io.StringIO()  # a stage's own closing line (tune's "candidate ... 1.2 s") ends it
    with Progress(stream=buf, force_terminal=True) as p:
        p("candidate 1/2: int8 (quantize_dynamic)")
        p("candidate 1/2: int8 (quantize_dynamic) ... 0.21 s")
    assert [name for name, _ in p.timings] == ["candidate 1/2: int8 (quantize_dynamic)"]
    assert re.search(r"✓\S* candidate 1/2: int8 \(quantize_dynamic\) \.\.\. 0\.21 s", buf.getvalue())


def test_verbose_adds_the_per_group_tables(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    short = run_cli(["run", str(recipe), "--out", str(tmp_path / "a")])
    full = run_cli(["run", str(recipe), "--out", str(tmp_path / "b"), "--verbose"])
    assert "per step, per group" not in short.stdout and "per step, per group" in full.stdout
    assert full.stdout.count("\n") > short.stdout.count("\n")


def test_run_on_a_terminal_draws_progress_with_stage_timings(recipe_dir, tmp_path):
    """A real pseudo-terminal: `edgefair run` shows each finished stage with its duration."""
    import os
    import pty
    import re
    import subprocess
    import sys
    import threading

    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen([sys.executable, "-c", "from edgefair.cli import main; main()", "run", str(recipe), "--out", str(tmp_path / "o")],
                            stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm", "COLUMNS": "120"})
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    assert proc.wait(timeout=300) in (0, 1)
    reader.join(10)
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    for stage in ("step 1: quantize_dynamic (quantize_dynamic)", "latency: interleaved over all models"):
        assert re.search(rf"✓ {re.escape(stage)} \d+\.\d+ s", text), stage
    assert "· latency" not in text  # the plain lines are for logs, not terminals
