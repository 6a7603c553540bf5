"""One run on a machine with a CUDA GPU: every check that CI (simulator only) cannot make.

    python tests/gpu_check.py OUTDIR [--budget SECONDS]

Steps, most important first, each skipped (and said so in ``gpu_check.json``) once the time
budget is spent: (1) the CUDA kernel and backend case modules on the real device; (2) VGG16
(random weights, built by ``models/vgg16.py``) explained with ``--device cuda`` against
``--device cpu`` for two presets, batch 2: largest relevance difference relative to the
largest relevance, per kept layer too, and the conservation ratios; (3) ``lrpath bench
vgg16 --device cuda`` at batch 1 and 8 (ratios to onnxruntime's forward in the same run);
(4) the same VGG16 forward in PyTorch with cuDNN, the fastest GPU forward at hand, so the
GPU relevance pass can be set against a GPU forward too; (5) the backward pass alone at
batch 8 and 32, timed with CUDA events (median of 10 after warm-up), its relevance against
the CPU backend's, and its achieved GFLOP/s against the card's fp32 peak. ``--steps`` picks
some of ``cases,vgg16,bench,torch,events``. Works from a plain checkout:
``kernels/`` and ``models/`` are linked in as ``lrpath_onnx.kernels``/``.models`` as the
wheel installs them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _link_package() -> None:
    for sub in ("kernels", "models"):
        link = ROOT / "lrpath_onnx" / sub
        if not link.exists():
            link.symlink_to(Path("..") / sub)
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    sys.path.insert(0, str(ROOT))


def _run(cmd: list[str], timeout: float, log: Path) -> dict:
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"{e.stdout or ''}{e.stderr or ''}\nTIMEOUT after {timeout:.0f} s", 124
    log.write_text(text if isinstance(text, str) else text.decode())
    tail = [line for line in str(text).strip().splitlines() if line.strip()][-1:] or [""]
    return {"cmd": " ".join(cmd[1:]), "rc": rc, "s": round(time.perf_counter() - t, 1), "last_line": tail[0]}


def _compare_vgg16(path: Path) -> dict:
    import numpy as np

    from lrpath_onnx import Analyzer

    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    keep = ["features.28", "features.14", "classifier.0"]
    out = {}
    for preset in ("epsilon-gamma-box", "paper"):
        cpu, gpu = Analyzer(path, preset=preset), Analyzer(path, preset=preset, device="cuda")
        a, b = cpu.explain(x, keep=keep), gpu.explain(x, keep=keep)
        scale = float(np.abs(a.relevance).max())
        row = {"targets_equal": [int(t) for t in a.targets] == [int(t) for t in b.targets],
               "max_abs_diff_over_max_abs": float(np.abs(b.relevance - a.relevance).max()) / scale,
               "provider_cuda_run": b.provider,
               "conservation_cpu": [a.conservation(i)["ratio"] for i in range(2)],
               "conservation_cuda": [b.conservation(i)["ratio"] for i in range(2)],
               "kept": {k: float(np.abs(b.kept[k] - a.kept[k]).max() / np.abs(a.kept[k]).max()) for k in keep}}
        t = time.perf_counter()
        for _ in range(3):
            gpu.explain(x)
        row["cuda_explain_s_per_image"] = (time.perf_counter() - t) / 6
        out[preset] = row
    return out


#: (modified forwards, transposed products) each rule computes per linear layer; ε and LRP-0
#: reuse onnxruntime's pre-activations. Element-wise work is not counted.
PRODUCTS = {"zero": (0, 1), "epsilon": (0, 1), "gamma": (1, 1), "zplus": (1, 1), "alphabeta": (2, 2),
            "flat": (1, 1), "wsquare": (1, 1), "zbox": (2, 3)}


def backward_flops(an, batch: int) -> float:
    """Dense-product FLOPs (2 per multiply-add) of one backward pass of ``an`` at ``batch``."""
    import numpy as np

    total = 0.0
    for layer in an.graph.linear_layers():
        out = an.graph.shapes[layer.output]
        w = getattr(layer, "weight", None)
        if w is None:  # pools: window sums, not counted
            continue
        macs = float(np.prod(out[1:])) * (w.size // out[1])
        fwd, tr = PRODUCTS[an.plan().rule_for(layer).name]
        total += 2.0 * macs * (fwd + tr) * batch
    return total


def _fp32_peak_flops() -> float:
    """SMs x 128 fp32 lanes x 2 (FMA) x clock: Hopper's rate without tensor cores."""
    from numba import cuda

    dev = cuda.get_current_device()
    return dev.MULTIPROCESSOR_COUNT * 128 * 2 * dev.CLOCK_RATE * 1e3


def _backward_events(path: Path, batches=(8, 32), runs: int = 10) -> dict:
    import numpy as np
    from numba import cuda

    from lrpath_onnx import Analyzer

    out = {"fp32_peak_tflops": _fp32_peak_flops() / 1e12}
    gpu, cpu = Analyzer(path, device="cuda"), Analyzer(path)
    for b in batches:
        x = np.random.default_rng(b).random((b, 3, 224, 224), dtype=np.float32)
        fwd = gpu.forward(x)
        start_tensor, start, _ = gpu._start(fwd, None, b)
        for _ in range(2):
            got = gpu._backward(x, fwd, start_tensor, start, ())
        times, uploads = [], []
        e0, e1, e2 = (cuda.event(timing=True) for _ in range(3))
        for _ in range(runs):
            e0.record()
            gpu._context(x, dict(fwd))  # the host-to-device copies of the forward tensors alone
            e1.record()
            gpu._backward(x, fwd, start_tensor, start, ())
            e2.record()
            e2.synchronize()
            uploads.append(cuda.event_elapsed_time(e0, e1) / 1e3)
            times.append(cuda.event_elapsed_time(e1, e2) / 1e3)
        want = cpu.relevance_from(x, start_tensor, start).relevance
        t, up = float(np.median(times)), float(np.median(uploads))
        flops = backward_flops(gpu, b)
        out[f"b{b}"] = {"backward_s": t, "backward_s_per_image": t / b, "upload_s": up,
                        "gflop": flops / 1e9, "tflops_incl_upload": flops / t / 1e12,
                        "tflops_excl_upload": flops / max(t - up, 1e-9) / 1e12,
                        "share_of_fp32_peak_excl_upload": flops / max(t - up, 1e-9) / _fp32_peak_flops(),
                        "max_abs_diff_over_max_abs": float(np.abs(got.relevance - want).max() / np.abs(want).max())}
    return out


def _torch_forward(batches=(1, 8, 32), runs: int = 20) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from lrpath_onnx.models.vgg16 import VGG16_CFG, random_state_dict

    layers, cin = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*layers))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Sequential(nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(),
                                                 nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                                                 nn.Linear(4096, 1000)))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in random_state_dict(0).items()})
    model = model.cuda().eval()
    torch.backends.cudnn.benchmark = True
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with torch.no_grad():
        for b in batches:
            x = torch.rand(b, 3, 224, 224, device="cuda")
            for _ in range(3):
                model(x)
            ts = []
            for _ in range(runs):
                torch.cuda.synchronize()
                t = time.perf_counter()
                model(x)
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t)
            out[f"b{b}_median_s_per_image"] = float(np.median(ts)) / b
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for all steps")
    ap.add_argument("--steps", default="cases,vgg16,bench,torch,events")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget
    _link_package()
    os.environ.setdefault("LRPATH_CACHE", "/tmp/lrpath-cache")
    report: dict = {"steps": {}}
    save = lambda: (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))  # noqa: E731
    left = lambda: deadline - time.perf_counter()  # noqa: E731
    py = sys.executable

    steps = set(args.steps.split(","))
    if "cases" in steps:
        report["steps"]["cases"] = _run([py, "-m", "pytest", "tests/cuda_sim_cases.py",
                                         "tests/cuda_sim_backend_cases.py", "-q", "-p", "no:cacheprovider",
                                         "-o", "addopts=", "-rfE"], min(150, left()), args.out / "cases.log")
        save()
    from lrpath_onnx.cli.options import model_file

    t = time.perf_counter()
    vgg = model_file("vgg16")
    report["vgg16_build_s"] = round(time.perf_counter() - t, 1)
    for key, name, step in (("vgg16", "vgg16_cpu_vs_cuda", lambda: _compare_vgg16(vgg)),
                            ("events", "backward_cuda_events", lambda: _backward_events(vgg)),
                            ("bench", "bench_cuda_b1", None), ("bench", "bench_cuda_b8", None),
                            ("torch", "torch_cudnn_forward", _torch_forward)):
        if key not in steps:
            continue
        if left() < 20:
            report["steps"][name] = "skipped: time budget spent"
        elif step is None:
            b = name[-1]
            report["steps"][name] = _run([py, "-m", "lrpath_onnx.cli.main", "bench", "vgg16", "--device", "cuda",
                                          "--batch-size", b, "--out", str(args.out / "bench-cuda")],
                                         left() - 10, args.out / f"bench-cuda-b{b}.log")
        else:
            try:
                report["steps"][name] = step()
            except Exception as e:  # report and go on: the later steps are still worth having
                report["steps"][name] = f"failed: {type(e).__name__}: {e}"
        save()
    print(json.dumps(report, indent=1, default=str))
    _table(report)
    return 0


def _table(report: dict) -> None:
    """The figures that matter, last in the output."""
    ev = report["steps"].get("backward_cuda_events")
    if isinstance(ev, dict):
        print(f"\nbackward on the GPU (CUDA events, fp32 peak {ev['fp32_peak_tflops']:.1f} TFLOP/s)")
        print(f"{'batch':>5} {'s/image':>9} {'upload s':>9} {'GFLOP':>8} {'TFLOP/s':>8} {'% peak':>7} {'max rel err':>12}")
        for k, v in ev.items():
            if k.startswith("b"):
                print(f"{k[1:]:>5} {v['backward_s_per_image']:9.4f} {v['upload_s']:9.4f} {v['gflop']:8.0f} "
                      f"{v['tflops_excl_upload']:8.2f} {100 * v['share_of_fp32_peak_excl_upload']:6.1f}% "
                      f"{v['max_abs_diff_over_max_abs']:12.2e}")
    tf = report["steps"].get("torch_cudnn_forward")
    if isinstance(tf, dict):
        print("PyTorch cuDNN forward s/image: " + ", ".join(f"{k.split('_')[0]} {v:.5f}" for k, v in tf.items()
                                                           if k.endswith("per_image")))


if __name__ == "__main__":
    sys.exit(main())
