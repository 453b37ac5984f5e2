"""all-MiniLM-L6-v2 encoder + a classification head trained here: the labelled transformer reference.

`build()` returns `MiniLMClassifier`: the bundled all-MiniLM-L6-v2 sentence embedder (`minilm.py`:
BERT encoder, attention-masked mean pooling, L2 normalisation; the optional `text` extra, loaded
offline) followed by a small MLP head trained by `train_minilm_classifier.py` on
`calibration_data/text_cls_train.npz` (income >50K from a sentence describing an Adult record).

forward(input_ids, attention_mask) -> logits (N, 2); class 1 is income `>50K`.

The head's weights (`minilm_classifier_head.safetensors`, next to this file, never a pickle) are
checked against `HEAD_SHA256`, so that edgefair's cache, which keys a `file.py:factory` source by
this file and the local modules it imports, sees a retrained head as a different model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from minilm import EMBEDDING_DIM, MiniLMEmbedder
from minilm import build as build_embedder

HEAD_FILE = Path(__file__).resolve().parent / "minilm_classifier_head.safetensors"
HEAD_SHA256 = "39fd5b312e5e7b4aaef8fa5fb1c8925053daac60fa1bd4e603f469724cf17024"
HIDDEN = 128  # head width: a linear head on the frozen embeddings was 1-2 points less accurate
N_CLASSES = 2


def make_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(EMBEDDING_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))


class MiniLMClassifier(nn.Module):
    """Sentence embedding (N, 384) -> MLP head -> logits (N, 2)."""

    def __init__(self, embedder: MiniLMEmbedder, head: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (N, L) int64
        return self.head(self.embedder(input_ids, attention_mask))  # (N, 2)


def load_head(path: Path = HEAD_FILE, *, check: bool = True) -> nn.Sequential:
    from safetensors.torch import load_file

    if check:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != HEAD_SHA256:
            raise ValueError(f"{path}: sha256 {digest} is not the head this file was written for ({HEAD_SHA256})")
    head = make_head()
    head.load_state_dict(load_file(str(path)))
    return head


def build() -> MiniLMClassifier:
    """The classifier in eval mode: packaged MiniLM weights (offline) and the head trained here."""
    return MiniLMClassifier(build_embedder(), load_head()).eval()
