"""Small PyTorch networks of the modern families, their ONNX exports, and zennit's relevance.

Used by ``tests/test_zennit.py`` to show that the analyzer's relevance equals zennit's on
the same weights and rules (BN merged by zennit's canonizer, residual sums through zennit's
``Sum`` with its ``Norm`` rule as its ResNet canonizer does, activations passed):

- ``vgg``: conv-BN-ReLU, max and average pooling, two dense layers;
- ``resnet``: a stem and two basic blocks (one with a strided 1×1 projection), residual sums;
- ``mobilenet``: MobileNetV2 inverted residuals (expand, depthwise, linear bottleneck, ReLU6);
- ``smooth``: SiLU, GELU, Hardswish, ELU and Tanh between convolutions, a residual sum;
- ``densenet``: pre-activation dense layers, whose BatchNorm after a concat no canonizer
  merges (zennit's gradient crosses it: LRP-0 with its shift as a bias, the ``shift`` rule).
- ``convnext`` (not in ``MODELS``: zennit has no LayerNorm rule to compare with): a patchify
  stem, ConvNeXt blocks (depthwise 7×7, LayerNorm over channels, pointwise Linear layers
  channels last, GELU, layer scale, residual sum), a LayerNorm + strided-conv downsampling.

Every model is built twice from one seed: with plain ``a + b`` residual sums (exported to
ONNX) and with ``zennit.layer.Sum`` (explained by zennit). zennit imports torchvision at load
time for its ResNet canonizer; torchvision is never installed here, so a stub module stands
in (``import_zennit``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (3, 32, 32)


def import_zennit():
    """zennit's modules, with a stub ``torchvision.models.resnet`` for its import of block classes."""
    from tests import torchvision_stub

    torchvision_stub.install()
    import zennit.canonizers
    import zennit.composites
    import zennit.layer

    return zennit


def _torch():
    import torch
    from torch import nn

    return torch, nn


def _adder(zennit_sum: bool):
    """``a + b``, or zennit's Sum layer over the two stacked (what its canonizers insert)."""
    torch, nn = _torch()
    if not zennit_sum:
        return None
    return import_zennit().layer.Sum()


def _add(summer, a, b):
    import torch

    return a + b if summer is None else summer(torch.stack([a, b], dim=-1))


def _conv_bn(cin, cout, k=3, stride=1, groups=1, act=None):
    torch, nn = _torch()
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


def build(name: str, seed: int, zennit_sum: bool = False):
    """The model ``name`` with seeded weights and BatchNorm statistics, in eval mode."""
    torch, nn = _torch()
    torch.manual_seed(seed)

    class Vgg(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = _conv_bn(cin, cout, 3, stride, act=nn.ReLU())
            self.conv2 = _conv_bn(cout, cout, 3)
            self.down = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None
            self.act = nn.ReLU()
            self.sum = _adder(zennit_sum)

        def forward(self, x):
            identity = x if self.down is None else self.down(x)
            return self.act(_add(self.sum, self.conv2(self.conv1(x)), identity))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 8, 3, act=nn.ReLU())
            self.block1 = Basic(8, 8, 1)
            self.block2 = Basic(8, 16, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.expand = _conv_bn(cin, hidden, 1, act=nn.ReLU6()) if expand != 1 else None
            self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6())
            self.project = _conv_bn(hidden, cout, 1)  # linear bottleneck: no activation
            self.residual = stride == 1 and cin == cout
            self.sum = _adder(zennit_sum) if self.residual else None

        def forward(self, x):
            y = x if self.expand is None else self.expand(x)
            y = self.project(self.depthwise(y))
            return _add(self.sum, y, x) if self.residual else y

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 8, 3, 2, act=nn.ReLU6())
            self.blocks = nn.Sequential(Inverted(8, 8, 1, 1), Inverted(8, 12, 2, 4), Inverted(12, 12, 1, 4))
            self.head = _conv_bn(12, 32, 1, act=nn.ReLU6())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))

    class Smooth(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 8, 3, act=nn.SiLU())
            self.conv1 = _conv_bn(8, 8, 3, act=nn.GELU())
            self.conv2 = _conv_bn(8, 8, 3, groups=8, act=nn.Hardswish())
            self.sum = _adder(zennit_sum)
            self.conv3 = _conv_bn(8, 16, 3, 2, act=nn.ELU())
            self.conv4 = _conv_bn(16, 16, 1, act=nn.Tanh())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.stem(x)
            x = _add(self.sum, self.conv2(self.conv1(x)), x)
            return self.fc(torch.flatten(self.pool(self.conv4(self.conv3(x))), 1))

    class DenseLayer(nn.Module):
        """Pre-activation: BatchNorm-ReLU-conv 1×1 (BN merged into it)-ReLU-conv 3×3, the
        new features concatenated to the input. The first BatchNorm follows a concat, so no
        canonizer merges it."""

        def __init__(self, cin, growth):
            super().__init__()
            # registered in this order because zennit's SequentialMergeBatchNorm pairs a linear
            # module with the BatchNorm registered right after it, across module boundaries
            self.conv = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)
            self.act = nn.ReLU()
            self.norm = nn.BatchNorm2d(cin)
            self.bottleneck = _conv_bn(cin, 2 * growth, 1, act=nn.ReLU())

        def forward(self, x):
            return torch.cat([x, self.conv(self.bottleneck(self.act(self.norm(x))))], 1)

    class DenseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(*_conv_bn(3, 8, 3, act=nn.ReLU()), nn.MaxPool2d(2))
            self.block = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
            self.act = nn.ReLU()
            self.norm = nn.BatchNorm2d(16)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.act(self.norm(self.block(self.stem(x))))), 1))

    class ChannelsLastNorm(nn.Module):
        """LayerNorm over the channels of an N×C×H×W map (permute, LayerNorm, permute back)."""

        def __init__(self, c):
            super().__init__()
            self.ln = nn.LayerNorm(c, eps=1e-6)

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class NextBlock(nn.Module):
        """A ConvNeXt block: depthwise 7×7, LayerNorm over channels, two Linear layers applied
        per position (1×1 convolutions, channels last) around a GELU, a layer scale, a residual sum."""

        def __init__(self, c):
            super().__init__()
            self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c, eps=1e-6)
            self.pwconv1 = nn.Linear(c, 4 * c)
            self.act = nn.GELU()
            self.pwconv2 = nn.Linear(4 * c, c)
            self.scale = nn.Parameter(0.1 + 0.5 * torch.rand(c))

        def forward(self, x):
            y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
            return x + (self.scale * y).permute(0, 3, 1, 2)

    class ConvNeXt(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), ChannelsLastNorm(16))
            self.stage1 = nn.Sequential(NextBlock(16), NextBlock(16))
            self.down = nn.Sequential(ChannelsLastNorm(16), nn.Conv2d(16, 32, 2, 2))
            self.stage2 = NextBlock(32)
            self.norm = nn.LayerNorm(32, eps=1e-6)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stage2(self.down(self.stage1(self.stem(x))))
            return self.fc(self.norm(x.mean((-2, -1))))

    model = {"vgg": Vgg, "resnet": ResNet, "mobilenet": MobileNet, "smooth": Smooth, "densenet": DenseNet,
             "convnext": ConvNeXt}[name]()
    g = torch.Generator().manual_seed(seed + 1000)
    for m in model.modules():  # BN with non-trivial statistics, so merging it matters
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        elif isinstance(m, nn.LayerNorm):  # shifted, so its bias takes a share
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))

    return model.eval()


MODELS = ("vgg", "resnet", "mobilenet", "smooth", "densenet")


def export(model, path: Path, dynamo: bool = False, opset: int = 17) -> Path:
    """The model as ONNX (input ``input`` N×3×32×32, output ``logits``, dynamic batch)."""
    import torch

    x = torch.zeros(1, *SHAPE)
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=max(opset, 18),
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=64)}})
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def inputs(seed: int, n: int = 2) -> np.ndarray:
    """Seeded inputs in [-1, 1] (the z^B box used with them)."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE)).astype(np.float32)


def zennit_relevance(model, x: np.ndarray, targets, composite: str, low=-1.0, high=1.0,
                     zero_bias: bool = False, dtype=None) -> np.ndarray:
    """zennit's input relevance of ``targets`` (one class per sample), BN merged."""
    import torch

    zennit = import_zennit()
    comp = zennit.composites
    canon = [zennit.canonizers.SequentialMergeBatchNorm()]
    kw = {"canonizers": canon}
    if zero_bias:
        kw["zero_params"] = ["bias"]
    dtype = dtype or torch.float32
    model = model.to(dtype)
    for m in model.modules():
        # zennit's BN merging leaves each BatchNorm as "identity" with running_var 1 but its own ε,
        # so every merged BN still scales by 1/sqrt(1 + ε) (≈ 1 − 5e-6): the canonized network is
        # not quite the model. Moving ε into running_var first keeps the model's function and
        # makes the merge exact.
        if isinstance(m, torch.nn.BatchNorm2d) and m.eps:
            with torch.no_grad():
                m.running_var += m.eps
            m.eps = 0.0
    xt = torch.tensor(x, dtype=dtype)
    if composite == "epsilon-gamma-box":
        lo = torch.full((1, *SHAPE), float(low), dtype=dtype)
        hi = torch.full((1, *SHAPE), float(high), dtype=dtype)
        c = comp.EpsilonGammaBox(low=lo, high=hi, **kw)
    elif composite == "epsilon-plus":
        c = comp.EpsilonPlus(**kw)
    elif composite == "epsilon-alpha2-beta1":
        c = comp.EpsilonAlpha2Beta1(**kw)
    else:
        raise ValueError(composite)
    xt.requires_grad_(True)
    with c.context(model) as modified:
        out = modified(xt)
        onehot = torch.zeros_like(out)
        onehot[torch.arange(len(targets)), torch.as_tensor(targets)] = 1.0
        (grad,) = torch.autograd.grad(out, xt, grad_outputs=onehot * out)
    model.float()
    return grad.detach().numpy().astype(np.float64)
