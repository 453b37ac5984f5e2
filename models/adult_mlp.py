"""Reference MLP for the shipped UCI Adult data (``calibration_data/adult_*.npz``).

Input: the standardized/one-hot ``features`` matrix (float32, N x 96) built by
``scripts/build_adult_data.py``. Output: logits (N, 2); class 1 = income >50K.
Sex and race are not inputs (they are the groups the metrics are split by).
"""

from __future__ import annotations

import torch
from torch import nn

# Feature count of calibration_data/adult_*.npz (see calibration_data/adult_features.json).
N_FEATURES = 96
HIDDEN = 512


class AdultMLP(nn.Module):
    """Linear(D, 256) - ReLU - Linear(256, 256) - ReLU - Linear(256, 2)."""

    def __init__(self, in_features: int = N_FEATURES, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # The argument name becomes the ONNX / torch.export input name: keep it `features`.
        return self.net(features)


def build(in_features: int = N_FEATURES) -> AdultMLP:
    """Return an untrained AdultMLP (load weights from models/adult_mlp.safetensors)."""
    return AdultMLP(in_features)
