"""Write the output folder: step models, report.json and the rendered reports, each file atomically."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from .io import atomic_path, sha256_file, write_json, write_text

STEP_FILE = re.compile(r"^\d{2}-.+\.onnx$")


def publish(out_dir: Path, report: dict[str, Any], model_files: dict[int, Path]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = set()
    for step in report["steps"]:
        with atomic_path(out_dir / step["model"]) as tmp:
            shutil.copyfile(model_files[step["index"]], tmp)
        names.add(step["model"])
    for stale in _previous_models(out_dir) - names:  # an earlier run's other steps would mislead
        (out_dir / stale).unlink(missing_ok=True)
    if report.get("selected"):
        with atomic_path(out_dir / "selected.onnx") as tmp:
            shutil.copyfile(out_dir / report["selected"]["model"], tmp)
    elif (out_dir / "selected.onnx").exists():  # an earlier run's choice must not survive a failing one
        (out_dir / "selected.onnx").unlink()
    if report.get("mode") != "tune":  # a tune's recommendation must not outlive it in a run's folder
        (out_dir / "tuned.toml").unlink(missing_ok=True)
    write_json(out_dir / "report.json", report)
    render_all(out_dir, report)
    write_json(out_dir / "manifest.json", manifest(out_dir, report))


def _previous_models(out_dir: Path) -> set[str]:
    """Step models an earlier edgefair run wrote here (from its manifest): never touch other files."""
    try:
        files = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name in files if isinstance(name, str) and STEP_FILE.match(name) and "/" not in name}


def render_all(out_dir: Path, report: dict[str, Any]) -> None:
    """(Re-)render the human reports from a report dict."""
    from . import render
    from .report import terminal_table

    render.render_all(out_dir, report)
    write_text(out_dir / "report.txt", terminal_table(report, full=True) + "\n")


def manifest(out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """sha256 of every model, report and input the run used, and the versions that produced them."""
    files = sorted({s["model"] for s in report["steps"]} | ({"selected.onnx"} if report.get("selected") else set()))
    files += ["report.json"]
    env = report["environment"]
    return {
        "tool": report["tool"],
        "created_at": report.get("created_at"),
        "files": {name: {"sha256": sha256_file(out_dir / name), "size_bytes": (out_dir / name).stat().st_size} for name in files},
        "inputs": {
            "recipe": {"path": report["recipe"]["path"], "sha256": report["recipe"]["sha256"]},
            "model_source": report["source"],
            **{f"data.{k}": {"path": v["path"], "sha256": v["sha256"]} for k, v in report["data"].items()},
        },
        "versions": {k: env.get(k) for k in ("python", "numpy", "torch", "onnx", "onnxruntime", "edgefair")},
        "verdict": report["verdict"],
        "selected": report.get("selected"),
    }
