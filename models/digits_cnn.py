"""Reference CNN for scikit-learn's handwritten digits (``calibration_data/digits_*.npz``).

Input: ``pixels`` float32 (N, 1, 8, 8), grey levels scaled to [0, 1]. Output: logits (N, 10).
Wider than the task needs on purpose: at batch 1 the convolutions, not onnxruntime's per-node
overhead, dominate latency, so structured pruning and int8 show their real speedups.
"""

from __future__ import annotations

import torch
from torch import nn

N_CLASSES = 10


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    # bias=False: BatchNorm's shift makes a conv bias redundant
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """Conv(1,32)-BN-ReLU - Conv(32,64)-BN-ReLU - Conv(64,128)-BN-ReLU - MaxPool2 - Linear(2048,256)-ReLU - Linear(256,10)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(1, width),  # (N, 32, 8, 8)
            _conv_bn(width, 2 * width),  # (N, 64, 8, 8)
            _conv_bn(2 * width, 4 * width),  # (N, 128, 8, 8)
            nn.MaxPool2d(2),  # (N, 128, 4, 4)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, 2048), channel-major
            nn.Linear(4 * width * 16, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, N_CLASSES),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # The argument name becomes the ONNX input name and the npz array name: keep it `pixels`.
        return self.classifier(self.features(pixels))


def build() -> DigitsCNN:
    """Return an untrained DigitsCNN (load weights from models/digits_cnn.safetensors)."""
    return DigitsCNN()
