#!/usr/bin/env python3
"""Rebuild the shipped UCI Adult reference data in ``calibration_data/``.

Reads the raw UCI files ``adult.data`` and ``adult.test`` (see
``calibration_data/README.md``), drops rows with missing values, makes a
deterministic stratified train/eval split, derives the feature matrix and
writes:

* ``adult_train.npz``, ``adult_eval.npz``, ``adult_calib.npz``: keys
  ``features`` (float32, N x D), ``label`` (int64, 1 = income >50K), and the
  group columns ``sex``, ``race``, ``age_group`` (1-D numpy unicode arrays).
* ``adult_features.json``: feature names, category vocabularies, the train
  means/stds used for standardization, row counts and sha256 of the raw files.

The output is byte-reproducible: the npz archives are written with fixed zip
timestamps and a fixed member order (given the same zlib build).

Usage (from the repo root)::

    python scripts/build_adult_data.py [--raw ../shared/datasets/adult] [--out calibration_data/]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
    "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
    "hours_per_week", "native_country", "income",
]
NUMERIC = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
LOG1P = {"capital_gain", "capital_loss"}
CATEGORICAL = ["workclass", "education", "marital_status", "occupation", "relationship",
               "native_country"]
# Sensitive attributes: kept as group columns, never used as model features.
GROUP_COLUMNS = ["sex", "race", "age_group"]
AGE_GROUPS = ["<25", "25-44", "45-64", "65+"]

SEED = 0
EVAL_FRACTION = 0.2
N_CALIB = 512
RAW_FILES = ["adult.data", "adult.test"]
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_raw(path: Path) -> tuple[list[list[str]], int, int]:
    """Parse one raw UCI file. Returns (complete rows, n_rows_read, n_rows_with_missing)."""
    rows: list[list[str]] = []
    n_read = n_missing = 0
    with open(path, encoding="ascii") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("|"):  # blank lines; adult.test's comment line
                continue
            values = [v.strip() for v in line.split(",")]
            if len(values) != len(COLUMNS):
                raise ValueError(f"{path}: expected {len(COLUMNS)} fields, got {len(values)}: {line!r}")
            n_read += 1
            if "?" in values:
                n_missing += 1
                continue
            values[-1] = values[-1].rstrip(".")  # adult.test labels end with a period
            if values[-1] not in ("<=50K", ">50K"):
                raise ValueError(f"{path}: unexpected label {values[-1]!r}")
            rows.append(values)
    return rows, n_read, n_missing


def age_group(age: np.ndarray) -> np.ndarray:
    out = np.empty(age.shape, dtype="<U5")
    out[age < 25] = "<25"
    out[(age >= 25) & (age < 45)] = "25-44"
    out[(age >= 45) & (age < 65)] = "45-64"
    out[age >= 65] = "65+"
    return out


def stratified_split(label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per label class, put round(EVAL_FRACTION * n) random rows in eval. Returns sorted indices."""
    eval_idx = []
    for cls in (0, 1):
        idx = np.flatnonzero(label == cls)
        perm = rng.permutation(idx)
        eval_idx.append(perm[: int(round(EVAL_FRACTION * len(idx)))])
    eval_idx = np.sort(np.concatenate(eval_idx))
    mask = np.ones(len(label), dtype=bool)
    mask[eval_idx] = False
    return np.flatnonzero(mask), eval_idx


def save_npz_reproducible(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps/attributes (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            if arr.dtype.hasobject:
                raise TypeError(f"{name}: object arrays are not allowed")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def build(raw_dir: Path, out_dir: Path) -> dict:
    raw_dir = Path(raw_dir)
    out_dir = Path(out_dir)
    rows: list[list[str]] = []
    raw_info = {}
    for name in RAW_FILES:
        p = raw_dir / name
        if not p.is_file():
            raise FileNotFoundError(f"raw file not found: {p}")
        r, n_read, n_missing = read_raw(p)
        rows.extend(r)
        raw_info[name] = {"sha256": sha256_file(p), "rows_read": n_read,
                          "rows_dropped_missing": n_missing, "rows_kept": len(r)}

    table = {c: np.array([row[i] for row in rows]) for i, c in enumerate(COLUMNS)}
    label = (table["income"] == ">50K").astype(np.int64)
    age = table["age"].astype(np.int64)

    rng = np.random.default_rng(SEED)
    train_idx, eval_idx = stratified_split(label, rng)
    calib_idx = np.sort(rng.choice(train_idx, size=N_CALIB, replace=False))

    # Numeric features: log1p for capital columns, standardized with TRAIN mean/std.
    numeric_cols, means, stds = [], {}, {}
    feature_names: list[str] = []
    for c in NUMERIC:
        x = table[c].astype(np.float64)
        fname = c
        if c in LOG1P:
            x = np.log1p(x)
            fname = f"log1p_{c}"
        mu = float(x[train_idx].mean())
        sd = float(x[train_idx].std())
        means[fname], stds[fname] = mu, sd
        numeric_cols.append((x - mu) / sd)
        feature_names.append(fname)

    # One-hot categorical features; vocabulary = sorted values seen in TRAIN
    # (a value only present in eval would one-hot to all zeros).
    categories = {}
    onehot_cols = []
    for c in CATEGORICAL:
        vocab = sorted(set(table[c][train_idx].tolist()))
        categories[c] = vocab
        for v in vocab:
            onehot_cols.append((table[c] == v).astype(np.float64))
            feature_names.append(f"{c}={v}")

    features = np.stack(numeric_cols + onehot_cols, axis=1).astype(np.float32)
    groups = {
        "sex": table["sex"].astype("<U6"),
        "race": table["race"].astype("<U18"),
        "age_group": age_group(age),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": train_idx, "eval": eval_idx, "calib": calib_idx}
    counts = {}
    for split, idx in splits.items():
        arrays = {"features": features[idx], "label": label[idx]}
        arrays.update({g: groups[g][idx] for g in GROUP_COLUMNS})
        save_npz_reproducible(out_dir / f"adult_{split}.npz", arrays)
        counts[split] = {"rows": int(len(idx)), "positives": int(label[idx].sum())}

    meta = {
        "dataset": "UCI Adult (Census Income), Becker & Kohavi 1996, CC BY 4.0",
        "built_by": "scripts/build_adult_data.py",
        "raw_files": raw_info,
        "rows_total_after_dropping_missing": int(len(label)),
        "label": {"name": "label", "positive": ">50K", "encoding": {"<=50K": 0, ">50K": 1}},
        "split": {
            "seed": SEED, "rng": "numpy.random.default_rng",
            "eval_fraction": EVAL_FRACTION, "stratified_by": "label",
            "calib": f"{N_CALIB} rows drawn without replacement from train",
        },
        "row_counts": counts,
        "n_features": int(features.shape[1]),
        "feature_names": feature_names,
        "numeric_features": [("log1p_" + c) if c in LOG1P else c for c in NUMERIC],
        "log1p_columns": sorted(LOG1P),
        "train_mean": means,
        "train_std": stds,
        "std_ddof": 0,
        "categorical_features": CATEGORICAL,
        "categories": categories,
        "excluded_columns": {
            "sex": "sensitive attribute (group column only)",
            "race": "sensitive attribute (group column only)",
            "fnlwgt": "census sampling weight, not a person attribute",
        },
        "group_columns": {
            "sex": sorted(set(groups["sex"].tolist())),
            "race": sorted(set(groups["race"].tolist())),
            "age_group": AGE_GROUPS,
        },
        "npz_keys": {"features": "float32 (N, D)", "label": "int64 (N,)",
                     "sex": "<U (N,)", "race": "<U (N,)", "age_group": "<U (N,)"},
    }
    with open(out_dir / "adult_features.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, default=REPO_ROOT / ".." / "shared" / "datasets" / "adult",
                    help="directory with adult.data and adult.test (default: ../shared/datasets/adult "
                         "relative to the repo root)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "calibration_data",
                    help="output directory (default: calibration_data/ in the repo)")
    args = ap.parse_args(argv)
    meta = build(args.raw, args.out)
    for split, c in meta["row_counts"].items():
        print(f"{split:5s}: {c['rows']:6d} rows, {c['positives']} positive")
    print(f"D = {meta['n_features']} features -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
