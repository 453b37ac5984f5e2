"""Write the output folder: step models, report.json and the rendered reports, each file atomically."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from .io import atomic_path, write_json, write_text

STEP_FILE = re.compile(r"^\d{2}-.+\.onnx$")


def publish(out_dir: Path, report: dict[str, Any], model_files: dict[int, Path]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = set()
    for step in report["steps"]:
        with atomic_path(out_dir / step["model"]) as tmp:
            shutil.copyfile(model_files[step["index"]], tmp)
        names.add(step["model"])
    for stale in out_dir.iterdir():  # models of an earlier run with other steps would mislead
        if STEP_FILE.match(stale.name) and stale.name not in names:
            stale.unlink()
    if report.get("selected"):
        with atomic_path(out_dir / "selected.onnx") as tmp:
            shutil.copyfile(out_dir / report["selected"]["model"], tmp)
    write_json(out_dir / "report.json", report)
    render_all(out_dir, report)


def render_all(out_dir: Path, report: dict[str, Any]) -> None:
    """(Re-)render the human reports from a report dict."""
    from .report import terminal_table

    write_text(out_dir / "report.txt", terminal_table(report) + "\n")
