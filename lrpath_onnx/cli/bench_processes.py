"""Baselines measured apart from the analyzer: the plain onnxruntime forward in its own
process, and ``bench --processes``, which times whole command runs as a user's shell would.

``--processes N``: ``lrpath explain`` and a plain onnxruntime script (``plain_forward.py``)
each run on 1 and on N seeded random ``.npy`` inputs, ``runs`` times (``--process-runs``,
three by default), interleaved; the marginal seconds per image, (T(N) − T(1)) / (N − 1),
takes process start, imports and model loading out. T is each count's fastest run: on a
shared machine a process's start and model load vary by a second or more and noise only ever
adds time, so the difference of two medians of three can land anywhere (the plain script's
marginal at batch 1 came out at half its steady forward). The medians' marginal is reported
beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.outputs import write_json
from ..io.schema import model_json, stamp

PLAIN = Path(__file__).with_name("plain_forward.py")


def _run(cmd: list[str], what: str) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise InputError(f"{what} failed: {last}")
    return seconds, res.stdout


def plain_forward_times(path: Path, device: str, batch: int, runs: int, warmup: int, seed: int) -> list[float]:
    """Seconds per run of a batch of ``batch`` in a plain onnxruntime session, in a fresh process."""
    _, out = _run([sys.executable, str(PLAIN), str(path), device, "--timed", str(batch), str(runs), str(warmup),
                   str(seed)], "the plain onnxruntime forward")
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def _input_shape(path: Path) -> tuple[int, ...]:
    import onnxruntime as ort

    dims = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    if any(not isinstance(d, int) for d in dims[1:]):
        raise InputError(f"model input {dims} has unknown dims; bench needs a fixed input size")
    return tuple(int(d) for d in dims[1:])


def _marginal(times: dict, n: int, pick) -> dict[str, float]:
    """(T(N) − T(1)) / (N − 1) per command, T picked from each count's runs by ``pick``."""
    return {name: (float(pick(ts[n])) - float(pick(ts[1]))) / (n - 1) for name, ts in times.items()}


def _ratio(marginal: dict[str, float], name: str) -> float | None:
    base = marginal["onnxruntime"]
    return marginal[name] / base if base > 0 else None


def _shown(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def bench_processes(path: Path, out: Path, device: str, batch: int, n: int, preset: str, rules, model_name,
                    runs: int = 3, forward_engine: str = "auto") -> int:
    """Whole-process timings of explain against the plain forward; writes the bench JSON."""
    import click

    from .bench_cmd import machine

    shape = _input_shape(path)
    times: dict[str, dict[int, list[float]]] = {"explain": {1: [], n: []}, "onnxruntime": {1: [], n: []}}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        files = []
        for i in range(n):
            files.append(str(Path(tmp) / f"x{i:03d}.npy"))
            np.save(files[-1], rng.random(shape, dtype=np.float32))
        cli = [sys.executable, "-c", "from lrpath_onnx.cli.main import entry; entry()"]
        extra = ["--preset", preset, "--device", device, "--forward-engine", forward_engine,
                 *[a for r in rules for a in ("--rule", r)]]
        for _ in range(runs):  # interleaved, so drift hits both alike
            for k in (1, n):
                t, _ = _run([*cli, "explain", str(path), *files[:k], "--batch-size", str(batch),
                             "--out", str(Path(tmp) / "out"), *extra], "lrpath explain")
                times["explain"][k].append(t)
                t, _ = _run([sys.executable, str(PLAIN), str(path), device, "--files", str(batch), *files[:k]],
                            "the plain onnxruntime script")
                times["onnxruntime"][k].append(t)
    fastest = _marginal(times, n, min)
    medians = _marginal(times, n, np.median)
    stages = [{"stage": f"{name}_process", "s_per_image": fastest[name],
               "ratio_to_ort_forward": _ratio(fastest, name), "median_s_per_image": medians[name],
               "median_ratio_to_ort_forward": _ratio(medians, name), "runs": runs}
              for name in ("onnxruntime", "explain")]
    result = {"machine": machine(), **model_json(path, model_name), "input_shape": [None, *shape],
              "batch_size": batch, "preset": preset, "rule_overrides": list(rules), "provider": device,
              "device": device, "forward_engine": forward_engine, "stages": stages,
              "processes": {"inputs": [1, n], "runs": runs, "seconds": {k: {str(m): v for m, v in ts.items()}
                                                                      for k, ts in times.items()}},
              "baseline": "marginal seconds per image, (T(N) − T(1)) / (N − 1), of whole processes, T the "
                          "fastest of the runs (median_*: T the median): `lrpath explain` against a plain "
                          "onnxruntime script (plain_forward.py) on the same .npy files"}
    click.echo(f"{path.name}  batch {batch}  whole processes on 1 and {n} inputs, {runs} runs each "
               f"({result['machine']['cpu']}, {result['machine']['cores']} cores); fastest runs (medians)")
    for s in stages:
        click.echo(f"{s['stage']:28s} {s['s_per_image']:8.4f} s/image {_shown(s['ratio_to_ort_forward'])}x   "
                   f"({s['median_s_per_image']:.4f} s/image {_shown(s['median_ratio_to_ort_forward'])}x)")
    json_path = out / f"bench-{path.stem}-b{batch}-processes.json"
    write_json(json_path, stamp("bench", result))
    click.echo(f"wrote {json_path}")
    return 0
