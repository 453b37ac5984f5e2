"""Train models/digits_cnn.py on calibration_data/digits_train.npz, deterministically.

Writes models/digits_cnn.safetensors and prints eval accuracy overall and per digit.
From the repo root: `python models/train_digits_cnn.py` (seed 0, 1 thread, deterministic kernels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
from digits_cnn import build  # noqa: E402

SEED = 0
EPOCHS = 30
BATCH = 32
LR = 1e-3
WEIGHT_DECAY = 1e-4


def load(name: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    with np.load(ROOT / "calibration_data" / f"digits_{name}.npz", allow_pickle=False) as d:
        return torch.from_numpy(d["pixels"]), torch.from_numpy(d["label"]), d["digit"]


def train() -> torch.nn.Module:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    x, y, _ = load("train")
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), BATCH):
            idx = order[start : start + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        print(f"epoch {epoch + 1:2d}  loss {total / len(y):.4f}")
    return model.eval()


def report(model: torch.nn.Module) -> None:
    x, y, digit = load("eval")
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    ok = pred == y.numpy()
    print(f"eval accuracy {ok.mean():.4f} (n={len(ok)})")
    for d in sorted(set(digit)):
        m = digit == d
        print(f"  digit={d}  n={m.sum():3d}  accuracy {ok[m].mean():.4f}")


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "models" / "digits_cnn.safetensors")
    args = p.parse_args(argv)
    model = train()
    report(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
