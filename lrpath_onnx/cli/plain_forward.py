"""What a user runs instead of lrpath: a plain onnxruntime session with default settings.

Run as a script in its own process, so nothing of the analyzer (its thread pools, numba,
BLAS settings) is loaded beside it; it imports only onnxruntime and numpy. Two modes, both
printing one JSON line:

- ``python plain_forward.py MODEL cpu|cuda --timed B R W SEED``: W warm-up runs, then R timed
  runs of one random batch of B (seconds per run);
- ``python plain_forward.py MODEL cpu|cuda --files B F...``: every ``.npy`` file through the
  session in batches of B, as a script that explains nothing would (the process's wall time
  is what is compared).
"""

from __future__ import annotations

import json
import sys
import time


def session(model: str, provider: str):
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(model, providers=providers)


def _shape(sess, batch: int) -> tuple:
    dims = sess.get_inputs()[0].shape
    return tuple(batch if i == 0 else int(d) for i, d in enumerate(dims))


def timed(model: str, provider: str, batch: int, runs: int, warmup: int, seed: int) -> dict:
    import numpy as np

    sess = session(model, provider)
    x = np.random.default_rng(seed).random(_shape(sess, batch), dtype=np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return {"seconds": times, "providers": sess.get_providers()}


def files(model: str, provider: str, batch: int, paths: list[str]) -> dict:
    import numpy as np

    sess = session(model, provider)
    name = sess.get_inputs()[0].name
    xs = [np.load(p) for p in paths]
    xs = [x[None] if x.ndim == len(sess.get_inputs()[0].shape) - 1 else x for x in xs]
    n = 0
    for i in range(0, len(xs), batch):
        out = sess.run(None, {name: np.concatenate(xs[i:i + batch]).astype(np.float32)})
        n += out[0].shape[0]
    return {"inputs": n}


def main(argv: list[str]) -> int:
    model, provider, mode = argv[0], argv[1], argv[2]
    if mode == "--timed":
        batch, runs, warmup, seed = (int(v) for v in argv[3:7])
        print(json.dumps(timed(model, provider, batch, runs, warmup, seed)))
    else:
        print(json.dumps(files(model, provider, int(argv[3]), argv[4:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
