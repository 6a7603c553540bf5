"""Vision-transformer fixtures for the AttnLRP / CP-LRP tests, and their LXT explanations.

One torch ViT, configurable (patch size, width, heads, depth, channels, image size, the
GELU's form, hand-written attention or ``scaled_dot_product_attention``, a class token or
mean pooling), runs in two modes on the same weights:

- plain, for the ONNX export the analyzer reads;
- ``lxt``, with LXT's own rule functions (``lxt/efficient/rules.py``) put where LXT's patches
  put them: the LayerNorm's standard deviation through ``stop_gradient``, the GELU through
  ``identity_rule_implicit``, and before the attention ``divide_gradient`` of q and k by 4 and
  v by 2 (AttnLRP) or ``stop_gradient`` of q and k (CP-LRP). Gradient × Input of that forward
  is LXT's relevance.

LXT's package imports transformers on import; its rules module needs torch only, so it is
loaded from its file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def lxt_rules():
    """``lxt.efficient.rules`` loaded from its file (the package's ``__init__`` wants transformers)."""
    spec = importlib.util.find_spec("lxt")
    if spec is None:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "efficient" / "rules.py"
    mod_spec = importlib.util.spec_from_file_location("lxt_efficient_rules", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


CONFIGS = {
    # name: (channels, size, patch, dim, heads, depth, hidden, gelu, attention, cls token)
    "vit-digits": (1, 28, 7, 32, 4, 2, 64, "none", "manual", True),
    "vit-rgb-tanh": (3, 24, 6, 24, 3, 3, 48, "tanh", "manual", True),
    "vit-sdpa-meanpool": (3, 16, 4, 16, 2, 2, 40, "none", "sdpa", False),
    # torch's own nn.MultiheadAttention (as torchvision's ViT): only the dynamo exporter writes it
    "vit-mha": (1, 28, 7, 32, 4, 2, 64, "none", "mha", True),
    # torch's nn.TransformerEncoderLayer (pre-norm, GELU): its fused fast path, dynamo only too
    "vit-encoder": (3, 16, 4, 24, 3, 2, 48, "none", "encoder", True),
}


def exporters(name: str) -> tuple[str, ...]:
    """How the fixture can be exported: ``torchscript`` (opset 17), ``opset16``, ``dynamo``."""
    return ("dynamo",) if CONFIGS[name][8] in ("mha", "encoder") else ("torchscript", "opset16", "dynamo")


def build(name: str, seed: int, mode: str = "plain"):
    """The fixture ``name`` with seeded weights, in ``mode`` ``plain``, ``attnlrp`` or ``cp-lrp``."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    channels, size, patch, dim, heads, depth, hidden, gelu, attention, cls_token = CONFIGS[name]
    rules = lxt_rules() if mode != "plain" else None

    def lxt_layer_norm(norm, x):
        """LayerNorm with σ through LXT's ``stop_gradient`` (its ``layer_norm_forward``)."""
        mean = x.mean(dim=-1, keepdim=True)
        std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).add(norm.eps).sqrt()
        return (x - mean) / rules.stop_gradient(std) * norm.weight + norm.bias

    class LayerNorm(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) if rules is None else lxt_layer_norm(self, x)

    class Gelu(nn.GELU):
        def forward(self, x):
            if rules is None:
                return super().forward(x)
            return rules.identity_rule_implicit(lambda t: F.gelu(t, approximate=self.approximate), x)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            if attention in ("mha", "encoder"):
                self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
            else:
                self.qkv = nn.Linear(dim, 3 * dim)
                self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            n, t, d = x.shape
            if attention == "mha" and mode == "plain":
                return self.mha(x, x, x, need_weights=False)[0]
            if attention in ("mha", "encoder"):  # the same weights, written out so LXT's rules can be placed
                qkv = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias)
            else:
                qkv = self.qkv(x)
            qkv = qkv.reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if mode == "attnlrp":
                q, k, v = rules.divide_gradient(q, 4), rules.divide_gradient(k, 4), rules.divide_gradient(v, 2)
            elif mode == "cp-lrp":
                q, k = rules.stop_gradient(q), rules.stop_gradient(k)
            if attention == "sdpa" and mode == "plain":
                y = F.scaled_dot_product_attention(q, k, v)
            else:
                attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
                y = attn @ v
            y = y.transpose(1, 2).reshape(n, t, d)
            return self.mha.out_proj(y) if attention in ("mha", "encoder") else self.proj(y)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            if attention == "encoder":
                self.layer = nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, activation="gelu",
                                                        batch_first=True, norm_first=True)
                return
            self.norm1, self.attn = LayerNorm(dim), Attention()
            self.norm2 = LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), Gelu(approximate=gelu), nn.Linear(hidden, dim))

        def forward(self, x):
            if attention == "encoder":
                return self.layer(x) if rules is None else self._encoder_lxt(x)
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

        def _encoder_lxt(self, x):
            """nn.TransformerEncoderLayer's pre-norm computation with its own weights, LXT's rules placed."""
            layer = self.layer
            attn = Attention()
            attn.mha = layer.self_attn
            x = x + attn(lxt_layer_norm(layer.norm1, x))
            h = rules.identity_rule_implicit(F.gelu, layer.linear1(lxt_layer_norm(layer.norm2, x)))
            return x + layer.linear2(h)

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(channels, dim, patch, patch)
            tokens = (size // patch) ** 2 + int(cls_token)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5) if cls_token else None
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm = LayerNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            if self.cls is not None:
                t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1)
            t = self.norm(self.blocks(t + self.pos))
            return self.head(t[:, 0] if self.cls is not None else t.mean(dim=1))

    torch.manual_seed(seed)
    model = ViT()
    with torch.no_grad():  # LayerNorm weights away from 1 and biases away from 0, so they matter
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def shape(name: str) -> tuple[int, int, int]:
    channels, size = CONFIGS[name][:2]
    return channels, size, size


def inputs(name: str, seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape(name))).astype(np.float32)


def export(model, name: str, path: Path, dynamo: bool = False, opset: int = 17) -> Path:
    """torch's TorchScript exporter at ``opset`` (16 writes LayerNorm out in elementary ops), or
    its default dynamo exporter at opset 18, dynamic batch, as a user would write it."""
    import torch

    with torch.no_grad():
        if dynamo:
            torch.onnx.export(model, (torch.zeros(1, *shape(name)),), str(path), dynamo=True, opset_version=18,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=64)}})
        else:
            torch.onnx.export(model, (torch.zeros(1, *shape(name)),), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def lxt_relevance(name: str, seed: int, x: np.ndarray, targets, mode: str) -> np.ndarray:
    """LXT's Gradient × Input relevance of ``targets`` under ``mode`` (attnlrp or cp-lrp), float64."""
    import torch

    model = build(name, seed, mode).double()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = model(xt)
    out[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
    return (xt * xt.grad).detach().numpy()


def lxt_patches():
    """``lxt.efficient.patches``: LXT's own forward patches (the package imports transformers'
    model files and ``torchvision.models.vision_transformer``, which the stub stands in for)."""
    from tests import torchvision_stub

    torchvision_stub.install()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lxt warns when zennit's optional hooks do not load
        from lxt.efficient import patches
    return patches


def hf_vit(seed: int):
    """A Hugging Face ``ViTForImageClassification`` (eager attention), 32² RGB, patch 8, width 48,
    2 layers of 4 heads, seeded, LayerNorms and embeddings away from their defaults."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=48, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=96, num_labels=10, attn_implementation="eager")
    torch.manual_seed(seed)
    m = ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
        m.vit.embeddings.cls_token.normal_(0, 0.5)
        m.vit.embeddings.position_embeddings.normal_(0, 0.5)
    return m


def logits_of(model):
    """``pixel_values → logits`` of a Hugging Face classifier, as a module for the ONNX export."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(pixel_values=x).logits

    return Logits().eval()


def hf_lxt_relevance(seed: int, x: np.ndarray, targets, mode: str) -> np.ndarray:
    """LXT's Gradient × Input on the Hugging Face ViT with LXT's own patches applied: its attention
    wrapper (q, k ÷ 4 and v ÷ 2 for AttnLRP; q, k stopped for CP-LRP), its LayerNorm forward (σ
    stopped) and its identity rule on the GELU. The patches change the classes for good, so
    this runs in a process of its own (``python -m tests.vit_models``)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "x.npy", x)
        args = [str(seed), mode, d, json.dumps([int(t) for t in targets])]
        subprocess.run([sys.executable, "-m", "tests.vit_models", *args], check=True,
                       cwd=Path(__file__).resolve().parents[1])
        return np.load(Path(d) / "relevance.npy")


def _hf_lxt_main(seed: int, mode: str, folder: str, targets: list[int]) -> None:
    import torch
    from transformers import activations
    from transformers.models.vit import modeling_vit

    patches = lxt_patches()
    model = hf_vit(seed).double()
    if mode == "attnlrp":
        patches.patch_attention(modeling_vit)
    else:
        patches.patch_cp_attention(modeling_vit)
    patches.patch_method(patches.layer_norm_forward, torch.nn.LayerNorm)
    patches.patch_method(patches.non_linear_forward, activations.GELUActivation, keep_original=True)
    x = torch.tensor(np.load(Path(folder) / "x.npy"), dtype=torch.float64, requires_grad=True)
    out = model(pixel_values=x).logits
    out[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
    np.save(Path(folder) / "relevance.npy", (x * x.grad).detach().numpy())


if __name__ == "__main__":
    import json
    import sys

    _hf_lxt_main(int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
