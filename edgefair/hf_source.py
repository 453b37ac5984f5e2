"""`hf:PATH` model sources: a local Hugging Face checkpoint folder (what `save_pretrained` writes),
loaded with transformers, offline.

Loading never downloads and never runs code from the folder: `local_files_only=True`,
`trust_remote_code=False` (a config with `auto_map`, which names such code, is refused) and
`use_safetensors=True` (a folder with only `pytorch_model.bin`, a pickle, is refused).

The task follows the checkpoint's `architectures`: `*ForSequenceClassification` gives the class
logits (N, num_labels); any other checkpoint is loaded as its base encoder (`AutoModel`) and gives
the attention-masked mean of its last hidden states, L2-normalised (N, hidden), as
sentence-transformers computes sentence embeddings; such a recipe sets `model.output = "embedding"`.
The exported model's inputs are `input_ids` and `attention_mask`, int64 (N, L).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelSourceError
from .io import sha256_file

PREFIX = "hf:"
INPUT_NAMES = ["input_ids", "attention_mask"]
CLASSIFICATION = "sequence-classification"
EMBEDDING = "embedding"


def is_hf(spec: str) -> bool:
    return spec.startswith(PREFIX)


def folder_of(spec: str, base: Path) -> Path:
    return (base / spec[len(PREFIX):]).resolve()


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(".safetensors"))


def read_config(spec: str, base: Path) -> dict[str, Any]:
    """The checkpoint's config.json, after checking that the folder is one edgefair loads."""
    folder = folder_of(spec, base)
    where = f"model.source: {spec}"
    if not spec[len(PREFIX):]:
        raise ModelSourceError(f"{where}: name a folder after 'hf:' (a Hugging Face checkpoint saved with save_pretrained)")
    if not folder.is_dir():
        raise ModelSourceError(f"{where}: folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{where}: {folder} has no config.json (not a Hugging Face checkpoint folder)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelSourceError(f"{where}: {config_file} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ModelSourceError(f"{where}: {config_file} does not hold a JSON object")
    if config.get("auto_map"):
        raise ModelSourceError(f"{where}: config.json names custom code (auto_map); edgefair never runs code from a "
                               "checkpoint folder (trust_remote_code = False)")
    if not weight_files(folder):
        bins = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" ({bins[0]} is a pickle, which edgefair never loads)" if bins else ""
        raise ModelSourceError(f"{where}: {folder} has no .safetensors weights{hint}; save with "
                               "save_pretrained(..., safe_serialization=True)")
    return config


def task_of(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    return CLASSIFICATION if any(str(a).endswith("ForSequenceClassification") for a in archs) else EMBEDDING


def check_output(spec: str, base: Path, output: str) -> None:
    """The recipe's `model.output` must be what the checkpoint's task gives (checked when the recipe is read)."""
    config = read_config(spec, base)
    task = task_of(config)
    archs = ", ".join(map(str, config.get("architectures") or [])) or "none listed"
    if task == EMBEDDING and output != "embedding":
        raise ModelSourceError(f"model.output: {spec} has no sequence classification head (architectures: {archs}): "
                               "it is loaded as an encoder giving sentence embeddings; set model.output = \"embedding\"")
    if task == CLASSIFICATION and output == "embedding":
        raise ModelSourceError(f"model.output: {spec} is a sequence classifier ({archs}): its output is class logits, "
                               "not an embedding; set model.output = \"logits\" or \"auto\"")


def identity(spec: str, base: Path) -> str | None:
    """Content hash of the checkpoint (config, safetensors files) and the transformers version that
    defines its architecture; None when the folder is not loadable (loading then says why)."""
    try:
        read_config(spec, base)
    except ModelSourceError:
        return None
    from importlib import metadata

    folder = folder_of(spec, base)
    digest = hashlib.sha256(f"transformers={metadata.version('transformers')}\n".encode())
    for path in [folder / "config.json", *weight_files(folder)] + sorted(folder.glob("*.safetensors.index.json")):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def load(spec: str, base: Path) -> tuple[Any, list[str]]:
    """(torch module in eval mode, input names) for an `hf:PATH` source."""
    config = read_config(spec, base)
    folder = folder_of(spec, base)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once, when huggingface_hub is first imported
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise ModelSourceError(f"model.source: {spec} needs the `transformers` package (pip install transformers)") from e
    hf_logging.disable_progress_bar()
    task = task_of(config)
    cls = transformers.AutoModelForSequenceClassification if task == CLASSIFICATION else transformers.AutoModel
    try:
        # eager attention: plain MatMul/Softmax in the ONNX graph, which the steps (4-bit MatMul) expect
        model = cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, use_safetensors=True,
                                    attn_implementation="eager")
    except Exception as e:  # transformers raises OSError, ValueError, KeyError and its own errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ModelSourceError(f"model.source: cannot load {spec} with transformers: {first}") from e
    wrapper = _classifier(model) if task == CLASSIFICATION else _embedder(model)
    return wrapper.eval(), list(INPUT_NAMES)


def _classifier(model: Any) -> Any:
    import torch

    class HFSequenceClassifier(torch.nn.Module):
        """forward(input_ids, attention_mask) -> logits (N, num_labels)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return HFSequenceClassifier(model)


def _embedder(model: Any) -> Any:
    import torch

    class HFEmbedder(torch.nn.Module):
        """forward(input_ids, attention_mask) -> mean-pooled, L2-normalised last hidden states (N, hidden)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, H)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (N, H)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return HFEmbedder(model)
