"""docs/github-actions.yml and docs/gitlab-ci.yml: valid YAML that uses the README's commands,
uploads junit.xml and posts report.md; their shell parts run for real on a tiny recipe."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import BASE_RECIPE, REPO, write_recipe

yaml = pytest.importorskip("yaml")

GITHUB = REPO / "docs" / "github-actions.yml"
GITLAB = REPO / "docs" / "gitlab-ci.yml"


def readme_install() -> str:
    """The install command of the README's release-build block (the same as its set-up command)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## In a release build", 1)[1].split("```", 2)[1]
    (line,) = [ln for ln in block.splitlines() if ln.startswith("pip install")]
    assert line in readme.split("## Set-up", 1)[1].split("## Commands", 1)[0]
    return line.strip()


def _github_steps() -> list[dict]:
    doc = yaml.safe_load(GITHUB.read_text())
    assert doc.get("on", doc.get(True))  # PyYAML reads the key `on` as True
    (job,) = doc["jobs"].values()
    return job["steps"]


def test_github_workflow_uses_the_readme_and_reports():
    steps = _github_steps()
    runs = [s.get("run", "") for s in steps]
    assert readme_install() in runs
    gate = next(s for s in steps if "edgefair run" in s.get("run", ""))
    assert "--out edgefair-out" in gate["run"] and "GITHUB_STEP_SUMMARY" in gate["run"]
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert any(s["with"]["path"] == "edgefair-out/junit.xml" for s in uploads)
    assert all(s.get("if") == "always()" for s in uploads)
    comment = next(s for s in steps if s.get("uses", "").startswith("actions/github-script@"))
    assert "edgefair-out/report.md" in comment["with"]["script"] and "createComment" in comment["with"]["script"]
    assert steps[-1]["run"] == 'exit "${{ steps.gate.outputs.status }}"'
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    doc = yaml.safe_load(GITHUB.read_text())
    assert doc["env"]["EDGEFAIR_CACHE_DIR"].endswith("/" + cache["with"]["path"])  # kept between jobs


def test_gitlab_job_uses_the_readme_and_reports():
    (job,) = yaml.safe_load(GITLAB.read_text()).values()
    assert job["script"][0] == readme_install()
    assert any("edgefair run" in line and "--out edgefair-out" in line for line in job["script"])
    assert job["artifacts"]["reports"]["junit"] == "edgefair-out/junit.xml" and job["artifacts"]["when"] == "always"
    assert any("merge_requests/$CI_MERGE_REQUEST_IID/notes" in line and "body@edgefair-out/report.md" in line for line in job["script"])
    assert job["script"][-1] == 'exit "$status"'
    assert job["variables"]["EDGEFAIR_CACHE_DIR"] == "$CI_PROJECT_DIR/" + job["cache"]["paths"][0].rstrip("/")


def test_the_templates_shell_runs_and_passes_the_exit_code_on(recipe_dir, tmp_path):
    """The GitLab script (less its install line) on a recipe that passes, and the GitHub gate step
    on one that fails, run by bash: junit.xml and report.md are where the templates upload them
    from, report.md becomes the job summary, and the job ends with edgefair's exit code."""
    steps = BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n"
    passing = write_recipe(recipe_dir / "pass.toml", steps)
    failing = write_recipe(recipe_dir / "fail.toml", steps + "\n[gates]\nmax_size_mb = 0.000001\n")

    (job,) = yaml.safe_load(GITLAB.read_text()).values()
    lab = tmp_path / "gitlab"
    lab.mkdir()
    script = "\n".join(job["script"][1:])  # the runner runs every line in one shell, stopping on errors
    done = subprocess.run(["bash", "-e", "-c", script], cwd=lab, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RECIPE": str(passing), "CI_MERGE_REQUEST_IID": ""})
    assert done.returncode == 0, done.stderr
    assert (lab / "edgefair-out" / "junit.xml").is_file() and (lab / "edgefair-out" / "report.md").is_file()

    hub = tmp_path / "github"
    hub.mkdir()
    gate = next(s for s in _github_steps() if "edgefair run" in s.get("run", ""))
    out, summary = tmp_path / "gh-output", tmp_path / "gh-summary"
    done = subprocess.run(["bash", "-e", "-c", gate["run"]], cwd=hub, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RECIPE": str(failing), "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 0, done.stderr  # the gate step records the status; the last step exits with it
    assert out.read_text() == "status=1\n"
    assert summary.read_text() == (hub / "edgefair-out" / "report.md").read_text()
    assert "FAIL" in summary.read_text().splitlines()[0]
    assert (hub / "edgefair-out" / "junit.xml").is_file()
