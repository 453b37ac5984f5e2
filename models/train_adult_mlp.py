#!/usr/bin/env python3
"""Train the reference AdultMLP deterministically and export it.

Reads calibration_data/adult_train.npz, trains with Adam (lr 1e-3, batch 256,
10 epochs, seed 0, deterministic algorithms, 1 thread), prints eval accuracy
overall and per sex / race / age group, and writes

* models/adult_mlp.safetensors  (state dict, safetensors.torch.save_file)
* models/adult_mlp.pt2          (torch.export program, dynamic batch dimension)

Usage (from the repo root): python models/train_adult_mlp.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from adult_mlp import build  # noqa: E402

SEED = 0
EPOCHS = 10
BATCH = 256
LR = 1e-3


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@torch.no_grad()
def logits_of(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    return model(torch.from_numpy(x))


def report(pred: np.ndarray, data: dict[str, np.ndarray]) -> None:
    y = data["label"]
    print(f"eval accuracy overall: {np.mean(pred == y):.4f} (n={len(y)})")
    for g in ("sex", "race", "age_group"):
        for v in sorted(set(data[g].tolist())):
            m = data[g] == v
            print(f"  {g:9s} {v:20s} n={int(m.sum()):5d} acc={np.mean(pred[m] == y[m]):.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the reference Adult MLP.")
    ap.add_argument("--data", type=Path, default=REPO_ROOT / "calibration_data")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args(argv)

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    train = load(args.data / "adult_train.npz")
    evald = load(args.data / "adult_eval.npz")
    x = torch.from_numpy(train["features"])
    y = torch.from_numpy(train["label"])

    model = build(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        acc = (logits_of(model, evald["features"]).argmax(1).numpy() == evald["label"]).mean()
        print(f"epoch {epoch + 1:2d}: train loss {total / len(x):.4f}  eval acc {acc:.4f}")

    model.eval()
    pred = logits_of(model, evald["features"]).argmax(1).numpy()
    report(pred, evald)

    args.out.mkdir(parents=True, exist_ok=True)
    st_path = args.out / "adult_mlp.safetensors"
    pt2_path = args.out / "adult_mlp.pt2"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(st_path), metadata={"in_features": str(x.shape[1]), "arch": "AdultMLP"})

    example = torch.from_numpy(evald["features"][:8])
    ep = torch.export.export(model.eval(), (example,),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(pt2_path))

    # Check the saved program round-trips and matches the eager model.
    loaded = torch.export.load(str(pt2_path)).module()
    xe = torch.from_numpy(evald["features"][:1000])
    with torch.no_grad():
        diff = (loaded(xe) - model(xe)).abs().max().item()
    print(f"wrote {st_path.name} ({st_path.stat().st_size} B), {pt2_path.name} "
          f"({pt2_path.stat().st_size} B); pt2 vs eager max |diff| = {diff:.2e}")
    if diff > 1e-5:
        raise SystemExit("exported program does not match the eager model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
