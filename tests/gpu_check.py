"""One run on a machine with a CUDA GPU: every check that CI (simulator only) cannot make.

    python tests/gpu_check.py OUTDIR [--budget SECONDS]

Steps, most important first, each skipped (and said so in ``gpu_check.json``) once the time
budget is spent: (1) the CUDA kernel and backend case modules on the real device; (2) VGG16
(random weights, built by ``models/vgg16.py``) explained with ``--device cuda`` against
``--device cpu`` for two presets, batch 2: largest relevance difference relative to the
largest relevance, per kept layer too, and the conservation ratios; (3) the backward pass
alone at batch 8 and 32, timed with CUDA events (median of 10 after warm-up), its relevance
against the CPU backend's, and its achieved TFLOP/s against the card's fp32 peak; (4) the
tiled GEMM on a square and on VGG16's transposed-convolution shapes against cuBLAS SGEMM
(and the GEMM module of an earlier commit, if carried as ``.bench/gemm_previous.py``);
(5) zennit's ``EpsilonGammaBox`` on the same weights on the same GPU (its wheel carried
along), with and without TF32; (6) the same VGG16 forward in PyTorch with cuDNN; (7)
``lrpath bench vgg16 --device cuda`` at batch 1 and 8. ``summary`` in the JSON holds the
figures the GPU issue asks for under fixed keys. ``--steps`` picks some of
``cases,vgg16,events,profile,gemm,zennit,torch,bench`` (``profile``: the GPU time of one
backward pass at batch 32 per kernel, by PyTorch's profiler). Works from a plain checkout:
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
        e1, e2 = (cuda.event(timing=True) for _ in range(2))
        for _ in range(runs):
            cuda.synchronize()
            t0 = time.perf_counter()  # the host-to-device copies of the forward tensors alone
            ctx, _ = gpu._context(x, dict(fwd))
            cuda.synchronize()
            uploads.append(time.perf_counter() - t0)
            del ctx
            e1.record()
            got = gpu._backward(x, fwd, start_tensor, start, ())  # its own copies included
            e2.record()
            e2.synchronize()
            times.append(cuda.event_elapsed_time(e1, e2) / 1e3)
        want = cpu.relevance_from(x, start_tensor, start).relevance
        t, up = float(np.median(times)), float(np.median(uploads))
        flops = backward_flops(gpu, b)
        out[f"b{b}"] = {"backward_s": t, "backward_s_per_image": t / b, "upload_alone_s": up,
                        "gflop": flops / 1e9, "tflops_incl_upload": flops / t / 1e12,
                        "share_of_fp32_peak_incl_upload": flops / t / _fp32_peak_flops(),
                        "max_abs_diff_over_max_abs": float(np.abs(got.relevance - want).max() / np.abs(want).max())}
    return out


def _kernel_profile(path: Path, batch: int = 32) -> dict:
    """Where one backward pass at ``batch`` spends its GPU time: CUDA kernel time per kernel
    (numba's mangled names shortened to the Python name) and copies, by PyTorch's profiler
    (CUPTI sees every kernel in the process, numba's too)."""
    import re

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lrpath_onnx import Analyzer

    gpu = Analyzer(path, device="cuda")
    x = np.random.default_rng(batch).random((batch, 3, 224, 224), dtype=np.float32)
    fwd = gpu.forward(x)
    start_tensor, start, _ = gpu._start(fwd, None, batch)
    gpu._backward(x, fwd, start_tensor, start, ())
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        gpu._backward(x, fwd, start_tensor, start, ())
        torch.cuda.synchronize()
    totals: dict[str, list] = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if not t:
            continue
        found = re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:kernel|reduce|_cast)\w*", ev.key)
        name = found[0] if found else ev.key[:60]
        row = totals.setdefault(name, [0.0, 0])
        row[0] += t / 1e6
        row[1] += ev.count
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
    kernel_s = sum(v[0] for k, v in ranked if not k.startswith("Memcpy"))
    flops = backward_flops(gpu, batch)
    return {"batch": batch, "total_s": sum(v[0] for _, v in ranked), "kernel_s": kernel_s,
            "tflops_kernels": flops / kernel_s / 1e12,
            "share_of_fp32_peak_kernels": flops / kernel_s / _fp32_peak_flops(),
            "kernels": {k: {"s": v[0], "calls": v[1]} for k, v in ranked[:25]}}


def _torch_forward(batches=(1, 8, 32), runs: int = 20) -> dict:
    import numpy as np
    import torch

    model = _vgg16_torch()
    torch.backends.cudnn.benchmark = True
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
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


#: GEMM shapes timed by ``--steps gemm`` (M, K, N, trans_a): a square product and VGG16's
#: transposed-convolution products at batch 8 (conv1_2, conv3_2, conv5_2: Wᵀ·S per sample chunk)
#: and conv1_2's forward product (64 rows)
GEMM_SHAPES = [(4096, 4096, 4096, False), (576, 64, 8 * 50176, True), (2304, 256, 8 * 3136, True),
               (4608, 512, 8 * 196, True), (64, 576, 8 * 50176, False)]


def _time_cuda(fn, runs: int = 10) -> float:
    """Median seconds of ``fn()`` by CUDA events, after two warm-up calls."""
    import numpy as np
    from numba import cuda

    for _ in range(2):
        fn()
    cuda.synchronize()
    times = []
    e0, e1 = cuda.event(timing=True), cuda.event(timing=True)
    for _ in range(runs):
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        times.append(cuda.event_elapsed_time(e0, e1) / 1e3)
    return float(np.median(times))


def _previous_gemm():
    """The GEMM module this session started from, if ``.bench/gemm_previous.py`` was carried along."""
    import importlib.util

    path = ROOT / ".bench" / "gemm_previous.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("lrpath_onnx.kernels.cuda.gemm_previous", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gemm_bench() -> dict:
    """TFLOP/s of the tiled GEMM (and the previous one, if carried) against cuBLAS SGEMM without TF32."""
    import numpy as np
    import torch
    from numba import cuda

    from lrpath_onnx.kernels.cuda import gemm as G

    old = _previous_gemm()
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for M, K, N, ta in GEMM_SHAPES:
        rng = np.random.default_rng(M)
        a = cuda.to_device(rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32))
        b = cuda.to_device(rng.standard_normal((K, N), dtype=np.float32))
        c = cuda.device_array((M, N), dtype=np.float32)
        flops = 2.0 * M * K * N
        row = {"ours_tile": G.choose_tile(M)}
        ta_, tb_ = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
        try:
            row["ours_tflops"] = flops / _time_cuda(lambda: G.gemm(a, b, c, trans_a=ta)) / 1e12
            want = (ta_.T if ta else ta_) @ tb_
            row["max_abs_diff_vs_cublas_over_max_abs"] = float(
                (torch.as_tensor(c, device="cuda") - want).abs().max() / want.abs().max())
            if G.choose_tile(M) != "large":
                row["ours_large_tile_tflops"] = flops / _time_cuda(lambda: G.gemm(a, b, c, trans_a=ta,
                                                                                  tile="large")) / 1e12
        except Exception as e:  # the earlier kernel and cuBLAS are still worth timing
            row["ours"] = f"failed: {type(e).__name__}: {e}"
        if old is not None:
            row["previous_tflops"] = flops / _time_cuda(lambda: old.gemm(a, b, c, trans_a=ta)) / 1e12
        row["cublas_fp32_tflops"] = flops / _time_cuda(lambda: torch.matmul(ta_.T if ta else ta_, tb_)) / 1e12
        out[f"{M}x{K}x{N}" + ("_ta" if ta else "")] = row
    for tile, kernel in G.KERNELS.items():
        try:
            out[f"registers_per_thread_{tile}"] = str(kernel.get_regs_per_thread())
        except Exception as e:  # not compiled for this device yet, or no such query
            out[f"registers_per_thread_{tile}"] = f"n/a: {type(e).__name__}"
    return out


def _vgg16_torch():
    """VGG16 in PyTorch with the same random weights as ``models/vgg16.py`` builds, on the GPU."""
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
    return model.cuda().eval()


def _zennit(batches=(8, 32), runs: int = 10) -> dict:
    """zennit's EpsilonGammaBox on the same VGG16 weights on the same GPU: the attribution
    (forward + modified backward) minus a plain forward at the same batch is its relevance
    pass, the counterpart of our backward. Timed with TF32 convolutions as PyTorch ships
    them (``tf32``) and with TF32 off (``fp32``, the arithmetic our kernels do)."""
    import importlib.metadata

    import numpy as np
    import torch

    try:
        import torchvision  # noqa: F401  (zennit imports two class names from it)
    except ImportError:
        from tests import torchvision_stub

        torchvision_stub.install()
    from zennit.composites import EpsilonGammaBox

    model = _vgg16_torch()
    torch.backends.cudnn.benchmark = True
    out = {"zennit": importlib.metadata.version("zennit")}

    def median(fn):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(runs):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    for mode in ("tf32", "fp32"):
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        for b in batches:
            x = torch.rand(b, 3, 224, 224, device="cuda")
            with torch.no_grad():
                target = model(x).argmax(1)
            onehot = torch.nn.functional.one_hot(target, 1000).float()
            composite = EpsilonGammaBox(low=torch.zeros_like(x), high=torch.ones_like(x))

            def attribute():
                xi = x.clone().requires_grad_(True)
                with composite.context(model) as modified:
                    y = modified(xi)
                    (rel,) = torch.autograd.grad(y, xi, onehot)
                return rel

            def forward():
                with torch.no_grad():
                    model(x)

            t_attr, t_fwd = median(attribute), median(forward)
            out[f"{mode}_b{b}"] = {"attribution_s_per_image": t_attr / b, "forward_s_per_image": t_fwd / b,
                                   "backward_s_per_image": (t_attr - t_fwd) / b}
    torch.backends.cudnn.allow_tf32 = True
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for all steps")
    ap.add_argument("--steps", default="cases,vgg16,events,profile,gemm,zennit,torch,bench")
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
                                         "-o", "addopts=", "-rfE", "-n", "8"], min(240, left()),
                                        args.out / "cases.log")
        save()
    from lrpath_onnx.cli.options import model_file

    t = time.perf_counter()
    vgg = model_file("vgg16")
    report["vgg16_build_s"] = round(time.perf_counter() - t, 1)
    for key, name, step in (("vgg16", "vgg16_cpu_vs_cuda", lambda: _compare_vgg16(vgg)),
                            ("events", "backward_cuda_events", lambda: _backward_events(vgg)),
                            ("profile", "backward_kernel_profile", lambda: _kernel_profile(vgg)),
                            ("gemm", "gemm_tflops", _gemm_bench), ("zennit", "zennit_epsilon_gamma_box", _zennit),
                            ("torch", "torch_cudnn_forward", _torch_forward),
                            ("bench", "bench_cuda_b1", None), ("bench", "bench_cuda_b8", None)):
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
        report["summary"] = _summary(report["steps"])
        save()
    print(json.dumps(report, indent=1, default=str))
    _table(report)
    return 0


def _summary(steps: dict) -> dict:
    """The figures the GPU issue asks for, under fixed keys (None where a step did not run)."""
    ev, zn = steps.get("backward_cuda_events"), steps.get("zennit_epsilon_gamma_box")
    pr = steps.get("backward_kernel_profile")
    b32 = ev.get("b32") if isinstance(ev, dict) else None
    z32 = zn.get("tf32_b32") if isinstance(zn, dict) else None
    z32_fp32 = zn.get("fp32_b32") if isinstance(zn, dict) else None
    ours = b32["backward_s_per_image"] if b32 else None
    return {
        # the kernels' own time (no copies), as the README's table had it
        "backward_fraction_of_fp32_peak": pr["share_of_fp32_peak_kernels"] if isinstance(pr, dict) else None,
        "backward_fraction_of_fp32_peak_incl_upload": b32["share_of_fp32_peak_incl_upload"] if b32 else None,
        "explain_s_per_image_b32": ours,
        "zennit_s_per_image_b32": z32["backward_s_per_image"] if z32 else None,
        "zennit_s_per_image_b32_no_tf32": z32_fp32["backward_s_per_image"] if z32_fp32 else None,
        "ours_over_zennit_b32": ours / z32["backward_s_per_image"] if ours and z32 else None,
    }


def _table(report: dict) -> None:
    """The figures that matter, last in the output."""
    ev = report["steps"].get("backward_cuda_events")
    if isinstance(ev, dict):
        print(f"\nbackward on the GPU (CUDA events, fp32 peak {ev['fp32_peak_tflops']:.1f} TFLOP/s)")
        print(f"{'batch':>5} {'s/image':>9} {'copies alone s':>15} {'GFLOP':>8} {'TFLOP/s':>8} {'% peak':>7} "
              f"{'max rel err':>12}")
        for k, v in ev.items():
            if k.startswith("b"):
                print(f"{k[1:]:>5} {v['backward_s_per_image']:9.4f} {v['upload_alone_s']:15.4f} {v['gflop']:8.0f} "
                      f"{v['tflops_incl_upload']:8.2f} {100 * v['share_of_fp32_peak_incl_upload']:6.1f}% "
                      f"{v['max_abs_diff_over_max_abs']:12.2e}")
    gm = report["steps"].get("gemm_tflops")
    if isinstance(gm, dict):
        for shape, row in gm.items():
            print(f"GEMM {shape}: " + (", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in row.items()) if isinstance(row, dict) else row))
    pr = report["steps"].get("backward_kernel_profile")
    if isinstance(pr, dict):
        print(f"backward at batch {pr['batch']}: {pr['total_s']:.4f} s of GPU time, kernels {pr['kernel_s']:.4f} s "
              f"({100 * pr['share_of_fp32_peak_kernels']:.1f} % of the fp32 peak); "
              + ", ".join(f"{k} {v['s']:.4f} s ({v['calls']})" for k, v in list(pr["kernels"].items())[:10]))
    print("summary: " + json.dumps(report.get("summary", {})))
    tf = report["steps"].get("torch_cudnn_forward")
    if isinstance(tf, dict):
        print("PyTorch cuDNN forward s/image: " + ", ".join(f"{k.split('_')[0]} {v:.5f}" for k, v in tf.items()
                                                           if k.endswith("per_image")))


if __name__ == "__main__":
    sys.exit(main())
