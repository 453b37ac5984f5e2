"""Comparing against the last release (`edgefair run --previous DIR`).

DIR is the output folder of the run that produced what is in the field: its `report.json` says
which model it shipped, and `selected.onnx` is that model. Every model of this run (the baseline
and each step) is compared with it on the same eval rows, per group, as a *paired* change: the
rows the previous model got right and this one gets wrong (`lost`) and the reverse (`gained`).
With labels, "right" is the label; without labels it is the baseline's prediction (agreement
with this run's fp32 model). The gate `max_group_regression_vs_previous` judges the net loss
(lost - gained) / n with the same rule as every other gate (`gates.py`: Tango's interval and test).

Pure functions of predictions and masks, apart from `load_previous`, which reads DIR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import intervals as iv
from .errors import DataError
from .io import sha256_file


@dataclass(frozen=True)
class PreviousRelease:
    folder: Path
    model: Path  # the model it shipped (selected.onnx)
    report: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """What report.json and the manifest record of the release compared with."""
        sel = self.report.get("selected") or {}
        tool = self.report.get("tool") or {}
        return {
            "folder": self.folder.name,
            "model": "selected.onnx",
            "model_sha256": sha256_file(self.model),
            "report_sha256": sha256_file(self.folder / "report.json"),
            "selected_step": sel.get("name"),
            "created_at": self.report.get("created_at"),
            "edgefair": tool.get("version") if isinstance(tool, dict) else None,
            "verdict": self.report.get("verdict"),
        }


def load_previous(folder: str | Path) -> PreviousRelease:
    """The previous release's output folder; DataError naming the file when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--previous {folder}: not a folder (give the output folder of the last release's run)")
    report_path = folder / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"--previous {report_path}: missing (not an edgefair output folder)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"--previous {report_path}: cannot be read as JSON ({e})") from None
    if not isinstance(report, dict) or "steps" not in report:
        raise DataError(f"--previous {report_path}: not an edgefair report (no 'steps')")
    model = folder / "selected.onnx"
    if not model.is_file():
        why = "its verdict was 'fail' and nothing was shipped" if report.get("verdict") == "fail" else "missing"
        raise DataError(f"--previous {model}: {why}; compare against the folder of a release that shipped a model")
    return PreviousRelease(folder, model, report)


def paired_changes(
    masks: Mapping[str, np.ndarray],
    reference: np.ndarray,
    previous_pred: np.ndarray,
    pred: np.ndarray,
    *,
    min_group_size: int,
    confidence: float,
) -> dict[str, dict[str, Any]]:
    """Per group: n, lost, gained, the change of the rate of agreeing with `reference` (labels, or
    the baseline's predictions) from the previous model to this one, and its Tango interval."""
    prev_ok = np.asarray(previous_pred) == np.asarray(reference)
    ok = np.asarray(pred) == np.asarray(reference)
    lost_rows, gained_rows = prev_ok & ~ok, ~prev_ok & ok
    keys = ["overall", *masks]
    sel = [np.ones(len(ok), dtype=bool), *(np.asarray(m, dtype=bool) for m in masks.values())]
    n = np.array([m.sum() for m in sel], dtype=np.float64)
    lost = np.array([(lost_rows & m).sum() for m in sel], dtype=np.float64)
    gained = np.array([(gained_rows & m).sum() for m in sel], dtype=np.float64)
    safe = np.maximum(n, 1)
    lo, hi = iv.paired_score_interval(lost, gained, safe, confidence)  # interval of the net loss
    out: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        entry: dict[str, Any] = {"n": int(n[i]), "lost": int(lost[i]), "gained": int(gained[i])}
        if n[i] < min_group_size or n[i] == 0:
            entry.update(status="insufficient_data", reason=f"fewer than min_group_size ({min_group_size}) rows")
        else:
            entry.update(status="ok", previous_rate=float(prev_ok[sel[i]].mean()), rate=float(ok[sel[i]].mean()),
                         change=float((gained[i] - lost[i]) / n[i]), change_ci=[-float(hi[i]), -float(lo[i])])
        out[key] = entry
    return out
