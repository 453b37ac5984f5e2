"""Build calibration_data/digits_{train,eval,calib}.npz from scikit-learn's handwritten digits.

`sklearn.datasets.load_digits` ships with scikit-learn (no download): 1,797 8x8 grey images,
levels 0..16, classes 0-9. Deterministic: a stratified split with numpy.random.default_rng(0),
arrays written with fixed zip timestamps (byte-reproducible, like build_adult_data.py).

Every archive holds `pixels` float32 (N, 1, 8, 8) in [0, 1] (named like the forward argument of
models/digits_cnn.py), `label` int64 (N,) and `digit` <U1 (N,): the true class as a group, for
per-class accuracy (Hooker et al. 2019, "What do compressed deep neural networks forget?").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_adult_data import save_npz_reproducible  # noqa: E402  (one writer for every npz)

EVAL_FRACTION = 0.6  # ~108 eval rows per digit, so one error moves a digit's accuracy by < 1 point
CALIB_ROWS = 256  # drawn from train, for static quantization
SEED = 0


def split(label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, round(EVAL_FRACTION * n) random rows go to eval. Returns sorted (train, eval) indices."""
    eval_idx = []
    for cls in range(10):
        idx = np.flatnonzero(label == cls)
        eval_idx.append(rng.permutation(idx)[: int(round(EVAL_FRACTION * len(idx)))])
    eval_idx = np.sort(np.concatenate(eval_idx))
    mask = np.ones(len(label), dtype=bool)
    mask[eval_idx] = False
    return np.flatnonzero(mask), eval_idx


def arrays(images: np.ndarray, label: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "pixels": (images[idx] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8),
        "label": label[idx].astype(np.int64),
        "digit": label[idx].astype(str).astype("<U1"),
    }


def build(out_dir: Path) -> dict[str, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, label = digits.images, digits.target
    rng = np.random.default_rng(SEED)
    train_idx, eval_idx = split(label, rng)
    calib_idx = np.sort(rng.choice(train_idx, size=CALIB_ROWS, replace=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, idx in (("train", train_idx), ("eval", eval_idx), ("calib", calib_idx)):
        save_npz_reproducible(out_dir / f"digits_{name}.npz", arrays(images, label, idx))
        counts[name] = len(idx)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "calibration_data")
    args = p.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
