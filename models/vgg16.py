"""VGG16 in torchvision's layer layout, written straight to ONNX with ``onnx.helper``.

Why not export from PyTorch: the analyzer must never need torch, and the benchmark and
tests need a VGG16 on any machine. The node names follow torchvision's module names
(``features.0`` … ``features.30``, ``classifier.0/3/6``) so rule plans and paths read
like the paper's figures. Weights come from a ``.npz`` holding a torchvision-style
state_dict, or from seeded random draws with torchvision's initialisation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: torchvision's configuration "D": channel counts, "M" for a 2x2 max-pool.
VGG16_CFG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                    512, 512, 512, "M", 512, 512, 512, "M")
CLASSIFIER = (("classifier.0", 512 * 7 * 7, 4096), ("classifier.3", 4096, 4096),
              ("classifier.6", 4096, 1000))


def conv_names() -> list[str]:
    """Module names of the 13 convolutions, in order (``features.0`` … ``features.28``)."""
    names, idx = [], 0
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
        else:
            names.append(f"features.{idx}")
            idx += 2
    return names


def random_state_dict(seed: int = 0, bias_scale: float = 0.0,
                      num_classes: int = 1000) -> dict[str, np.ndarray]:
    """Seeded weights drawn like torchvision's VGG init.

    Kaiming-normal (fan_out, ReLU) convolutions, N(0, 0.01) linear layers, zero biases;
    ``bias_scale > 0`` draws biases from N(0, bias_scale) instead, because all-zero
    biases hide bias-handling bugs.
    """
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    cin = 3
    for name, cout in zip(conv_names(), [v for v in VGG16_CFG if v != "M"]):
        std = np.sqrt(2.0 / (cout * 9))
        sd[f"{name}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(np.float32)
        sd[f"{name}.bias"] = (rng.standard_normal(cout) * bias_scale).astype(np.float32)
        cin = cout
    for name, fin, fout in CLASSIFIER:
        fout = num_classes if name == "classifier.6" else fout
        sd[f"{name}.weight"] = (rng.standard_normal((fout, fin)) * 0.01).astype(np.float32)
        sd[f"{name}.bias"] = (rng.standard_normal(fout) * bias_scale).astype(np.float32)
    return sd


def build_vgg16(state_dict: Mapping[str, np.ndarray], image_size: int = 224,
                opset: int = 17) -> onnx.ModelProto:
    """VGG16 as an ONNX graph (NCHW input ``input``, logits output ``logits``, dynamic batch).

    The adaptive average pool of torchvision is the identity at 224x224 and is left
    out, so ``image_size`` must be 224 for the classifier shapes to fit.
    """
    if image_size != 224:
        raise ValueError("VGG16's classifier expects 7x7 features, i.e. a 224x224 input")
    nodes, inits = [], []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    x, idx = "input", 0
    for v in VGG16_CFG:
        name = f"features.{idx}"
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [x], [name], name=name,
                                          kernel_shape=[2, 2], strides=[2, 2]))
            x, idx = name, idx + 1
            continue
        w = init(f"{name}.weight", state_dict[f"{name}.weight"])
        b = init(f"{name}.bias", state_dict[f"{name}.bias"])
        nodes.append(helper.make_node("Conv", [x, w, b], [name], name=name,
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        relu = f"features.{idx + 1}"
        nodes.append(helper.make_node("Relu", [name], [relu], name=relu))
        x, idx = relu, idx + 2
    nodes.append(helper.make_node("Flatten", [x], ["flatten"], name="flatten", axis=1))
    x = "flatten"
    for i, (name, _, _) in enumerate(CLASSIFIER):
        w = init(f"{name}.weight", state_dict[f"{name}.weight"])
        b = init(f"{name}.bias", state_dict[f"{name}.bias"])
        out = "logits" if i == len(CLASSIFIER) - 1 else name
        nodes.append(helper.make_node("Gemm", [x, w, b], [out], name=name, transB=1))
        x = out
        if i < len(CLASSIFIER) - 1:
            relu = f"classifier.{3 * i + 1}"
            nodes.append(helper.make_node("Relu", [x], [relu], name=relu))
            drop = f"classifier.{3 * i + 2}"
            nodes.append(helper.make_node("Dropout", [relu], [drop], name=drop))
            x = drop
    num_classes = state_dict["classifier.6.weight"].shape[0]
    graph = helper.make_graph(
        nodes, "vgg16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="lrpath-onnx")
    model.ir_version = 8
    return model


def load_state_dict_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torchvision-style state_dict saved with ``np.savez`` (never pickled objects)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k], np.float32) for k in data.files}


def load_state_dict_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torchvision VGG16 ``.pth`` state_dict (needs torch; loaded with weights_only=True)."""
    try:
        import torch
    except ImportError:
        from ..errors import InputError

        raise InputError("reading a .pth needs torch: pip install torch==2.13.0 (or save the "
                         "state_dict as .npz with numpy)") from None
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in sd.items()}


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torchvision-style VGG16 state_dict from ``.npz`` or ``.pth``, checked for every tensor."""
    from ..errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file not found: {p}")
    try:
        sd = load_state_dict_pth(p) if p.suffix in (".pth", ".pt") else load_state_dict_npz(p)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read VGG16 weights from {p.name}: {exc}") from None
    names = [f"{n}.{k}" for n in conv_names() + [c[0] for c in CLASSIFIER] for k in ("weight", "bias")]
    missing = [n for n in names if n not in sd]
    if missing:
        raise InputError(f"{p.name} is not a torchvision VGG16 state_dict: missing {', '.join(missing[:3])}")
    return sd


def export_vgg16(out: str | os.PathLike, seed: int = 0, weights: str | None = None,
                 bias_scale: float = 0.0) -> Path:
    """Write VGG16 to ``out`` (atomically) from ``weights`` (.npz/.pth) or seeded random weights."""
    sd = load_weights(weights) if weights else random_state_dict(seed, bias_scale)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        onnx.save(build_vgg16(sd), tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
