#!/usr/bin/env python3
"""Train the classification head of `minilm_classifier.py` on the frozen all-MiniLM-L6-v2 encoder.

The encoder is not trained: the sentences of `calibration_data/text_cls_train.npz` (3,000 rows)
are embedded once (mean-pooled, L2-normalised, as `minilm.MiniLMEmbedder` computes them), and the
MLP head `Linear(384, 128) - ReLU - Linear(128, 2)` is trained on those embeddings with
cross-entropy (no class weighting, no fairness constraint): AdamW lr 3e-3, weight decay 1e-4,
full batch, 300 steps, seed 0, deterministic algorithms, 1 thread. Then it writes
`models/minilm_classifier_head.safetensors` and prints its sha256 (to put in
`minilm_classifier.HEAD_SHA256`) and the accuracy per group on `text_cls_eval.npz`.

Usage (from the repo root, with the `text` extra installed; about two minutes on one core)::

    python models/train_minilm_classifier.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "models"))

import minilm_classifier as mc  # noqa: E402
from minilm import build as build_embedder  # noqa: E402

DATA = REPO_ROOT / "calibration_data"
SEED = 0
STEPS = 300
LR = 3e-3
WEIGHT_DECAY = 1e-4


def embed(embedder: torch.nn.Module, path: Path) -> tuple[torch.Tensor, np.ndarray, dict[str, np.ndarray]]:
    """Embeddings (N, 384), labels and group columns of one data file."""
    with np.load(path, allow_pickle=False) as d:
        ids, mask = torch.from_numpy(d["input_ids"]), torch.from_numpy(d["attention_mask"])
        labels = d["label"]
        groups = {g: d[g] for g in ("sex", "race", "age_group")}
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), 64):
            m = mask[i : i + 64]
            width = int(m.sum(1).max())  # trailing padding changes nothing but time
            out.append(embedder(ids[i : i + 64, :width], m[:, :width]))
    return torch.cat(out), labels, groups


def main() -> int:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    embedder = build_embedder()
    x_train, y_train, _ = embed(embedder, DATA / "text_cls_train.npz")
    x_eval, y_eval, groups = embed(embedder, DATA / "text_cls_eval.npz")
    head = mc.make_head()
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    y = torch.from_numpy(y_train)
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(head(x_train), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(mc.HEAD_FILE))
    print(f"wrote {mc.HEAD_FILE.name}: sha256 {hashlib.sha256(mc.HEAD_FILE.read_bytes()).hexdigest()}")
    with torch.no_grad():
        train_acc = float((head(x_train).argmax(1).numpy() == y_train).mean())
        pred = head(x_eval).argmax(1).numpy()
    print(f"final train loss {loss.item():.4f}, train accuracy {train_acc:.4f}")
    print(f"eval accuracy {np.mean(pred == y_eval):.4f} ({len(y_eval)} rows; always-0 would score {np.mean(y_eval == 0):.4f})")
    for g in ("sex", "race"):
        for v in sorted(set(groups[g])):
            m = groups[g] == v
            pos = m & (y_eval == 1)
            print(f"  {g}={v}: n={m.sum()} accuracy {np.mean(pred[m] == y_eval[m]):.4f} TPR {np.mean(pred[pos] == 1):.4f} ({pos.sum()} positives)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
