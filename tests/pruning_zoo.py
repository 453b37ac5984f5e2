"""The architecture zoo for structured pruning: eight small edge architectures with random weights.

Each is the idiom a real model of its family uses, at small widths so export, int8 and pruning run
in a second or two: residual adds with projection shortcuts (ResNet), inverted residuals with
depthwise convs (MobileNetV2), squeeze-excitation and hardswish (MobileNetV3), explicit `F.pad`
"same" padding before strided convs (EfficientNet, as TF-ported weights do), concatenation
(DenseNet), channel split, grouped 1x1 convs and channel shuffle (ShuffleNet), multi-head
self-attention and FFN (a BERT-style encoder classifier on token ids) and a 1-D conv keyword
spotter on raw audio. Used by tests/test_pruning_zoo.py and benchmarks/pruning_zoo.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.short(x) + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class ResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1), BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(pixels))  # (N, 64, 8, 8)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand, 3x3 depthwise, 1x1 linear project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type = nn.ReLU6, se: bool = False) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _cbr(cin, mid, 1, act=act)
        self.dw = _cbr(mid, mid, 3, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(self.se(self.dw(self.expand(x))))
        return x + h if self.residual else h


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2, act=nn.ReLU6)
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4),
                                    InvertedResidual(24, 24, 1, 4), InvertedResidual(24, 32, 2, 4))
        self.head = _cbr(32, 128, 1, act=nn.ReLU6)
        self.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(pixels)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hard sigmoid -> channel-wise scale."""

    def __init__(self, c: int, reduce: int = 4) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // reduce, 1), nn.Conv2d(c // reduce, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class MobileNetV3(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2, act=nn.Hardswish)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 3, act=nn.ReLU, se=True), InvertedResidual(16, 24, 2, 4, act=nn.Hardswish),
            InvertedResidual(24, 24, 1, 3, act=nn.Hardswish, se=True), InvertedResidual(24, 40, 2, 4, act=nn.Hardswish, se=True),
        )
        self.head = _cbr(40, 160, 1, act=nn.Hardswish)
        self.fc = nn.Sequential(nn.Linear(160, 256), nn.Hardswish(), nn.Linear(256, classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(pixels)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class SameConv(nn.Conv2d):
    """TF "same" padding done explicitly with F.pad (asymmetric for even kernels/strides), as
    EfficientNet ports carry it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(SameConv(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.dw = nn.Sequential(SameConv(mid, mid, k, stride, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.se = SqueezeExcite(mid)
        self.project = nn.Sequential(SameConv(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(self.se(self.dw(self.expand(x))))
        return x + h if self.residual else h


class EfficientNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(SameConv(3, 16, 3, 2, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(16, 16, 3, 1, 2), MBConv(16, 24, 3, 2, 4), MBConv(24, 24, 5, 1, 4), MBConv(24, 40, 5, 2, 4))
        self.head = nn.Sequential(SameConv(40, 160, 1, bias=False), nn.BatchNorm2d(160), nn.SiLU())
        self.fc = nn.Linear(160, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(pixels)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.b1, self.c1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.b2, self.c2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.c2(F.relu(self.b2(self.c1(F.relu(self.b1(x))))))
        return torch.cat([x, new], dim=1)  # (N, C + growth, H, W)


class DenseNet(nn.Module):
    def __init__(self, classes: int = 10, growth: int = 12) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1, bias=False)
        self.block1 = nn.Sequential(*(DenseLayer(24 + i * growth, growth) for i in range(3)))  # 24 -> 60
        self.trans = nn.Sequential(nn.BatchNorm2d(60), nn.ReLU(), nn.Conv2d(60, 32, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(*(DenseLayer(32 + i * growth, growth) for i in range(3)))  # 32 -> 68
        self.norm = nn.BatchNorm2d(68)
        self.fc = nn.Linear(68, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.trans(self.block1(self.stem(pixels))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(h)), 1).flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (split, branch, concat, shuffle) whose 1x1 convs are grouped as in
    ShuffleNetV1; stride 2 units process both halves and double the width."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        self.branch = nn.Sequential(
            _cbr(branch_in, half, 1, groups=2), _cbr(half, half, 3, stride, groups=half, act=nn.Identity), _cbr(half, half, 1, groups=2),
        )
        self.down = (nn.Sequential(_cbr(cin, cin, 3, stride, groups=cin, act=nn.Identity), _cbr(cin, half, 1))
                     if stride == 2 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is None:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch(work)], dim=1)
        else:
            out = torch.cat([self.down(x), self.branch(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 24, stride=2)
        self.units = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1))
        self.head = _cbr(96, 192, 1)
        self.fc = nn.Linear(192, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.head(self.units(self.stem(pixels)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class SelfAttention(nn.Module):
    """BERT's self-attention: query/key/value projections split into heads, scaled dot product,
    output projection. The head width is read from the tensors, so pruning head dimensions works."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = (p(x).view(n, t, self.num_heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value))  # (N, H, T, D)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (N, H, T, T)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, -1))  # (N, T, H * D)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn: int) -> None:
        super().__init__()
        self.attention, self.norm1 = SelfAttention(dim, num_heads), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))  # post-norm, as BERT
        return self.norm2(x + self.ffn(x))


class BertClassifier(nn.Module):
    def __init__(self, classes: int = 3, vocab: int = 100, length: int = 16, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(length, dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, 4 * dim) for _ in range(layers)))
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.layers(self.norm(self.tokens(input_ids) + self.positions(pos)))  # (N, T, dim)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))  # [CLS] pooling


class AudioCNN(nn.Module):
    """Keyword spotting on raw 8 kHz audio: strided 1-D conv front end, residual 1-D conv blocks."""

    def __init__(self, classes: int = 12) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(1, 32, 80, stride=4, padding=38, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(4))
        self.c1 = nn.Sequential(nn.Conv1d(32, 32, 3, padding=1, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                                nn.Conv1d(32, 32, 3, padding=1, bias=False), nn.BatchNorm1d(32))
        self.c2 = nn.Sequential(nn.Conv1d(32, 64, 3, padding=1, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.MaxPool1d(4),
                                nn.Conv1d(64, 64, 3, padding=1, bias=False), nn.BatchNorm1d(64), nn.ReLU())
        self.fc = nn.Linear(64, classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.front(audio)  # (N, 32, T / 16)
        h = self.c2(F.relu(h + self.c1(h)))
        return self.fc(h.mean(dim=-1))


@dataclass(frozen=True)
class Member:
    name: str
    build: Callable[[], nn.Module]
    input_name: str
    make_inputs: Callable[[np.random.Generator, int], np.ndarray]  # rng, rows -> inputs
    classes: int


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, 3, 32, 32)).astype(np.float32)


ZOO = [
    Member("resnet", ResNet, "pixels", _images, 10),
    Member("mobilenet_v2", MobileNetV2, "pixels", _images, 10),
    Member("mobilenet_v3", MobileNetV3, "pixels", _images, 10),
    Member("efficientnet_pad", EfficientNet, "pixels", _images, 10),
    Member("densenet", DenseNet, "pixels", _images, 10),
    Member("shufflenet", ShuffleNet, "pixels", _images, 10),
    Member("bert_classifier", BertClassifier, "input_ids", lambda rng, n: rng.integers(0, 100, size=(n, 16)).astype(np.int64), 3),
    Member("audio_cnn", AudioCNN, "audio", lambda rng, n: rng.normal(size=(n, 1, 2000)).astype(np.float32), 12),
]


def build(member: Member, seed: int = 0) -> nn.Module:
    """The member with seeded random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = member.build()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()
