"""What a user runs instead of lrpath: a plain onnxruntime session with default settings.

Run as a script in its own process, so nothing of the analyzer (its thread pools, numba,
BLAS settings) is loaded beside it; it imports only onnxruntime and numpy. Two modes, both
printing one JSON line:

- ``python plain_forward.py MODEL cpu|cuda --timed B R W SEED``: W warm-up runs, then R timed
  runs of one random batch of B (seconds per run);
- ``python plain_forward.py MODEL cpu|cuda --files B F...``: every ``.npy`` file through the
  session in batches of B, as a script that explains nothing would (the process's wall time
  is what is compared).

A model exported for a fixed batch size is run as a user would have to: in chunks of that
size, the last filled up with copies of its last sample.
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


def _runner(sess):
    """``x ->`` the session's first output, in chunks where the model's batch size is fixed (and
    in float16 for a float16 model)."""
    import numpy as np

    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def run(x):
        x = x.astype(dtype, copy=False)
        if fixed is None or x.shape[0] == fixed:
            return sess.run(None, {inp.name: x})[0]
        short = -x.shape[0] % fixed
        xp = np.concatenate([x, np.repeat(x[-1:], short, axis=0)]) if short else x
        return np.concatenate([sess.run(None, {inp.name: xp[i:i + fixed]})[0]
                               for i in range(0, xp.shape[0], fixed)])[:x.shape[0]]
    return run


def timed(model: str, provider: str, batch: int, runs: int, warmup: int, seed: int) -> dict:
    import numpy as np

    sess = session(model, provider)
    x = np.random.default_rng(seed).random(_shape(sess, batch), dtype=np.float32)
    run = _runner(sess)
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return {"seconds": times, "providers": sess.get_providers()}


def files(model: str, provider: str, batch: int, paths: list[str]) -> dict:
    import numpy as np

    sess = session(model, provider)
    run = _runner(sess)
    xs = [np.load(p) for p in paths]
    xs = [x[None] if x.ndim == len(sess.get_inputs()[0].shape) - 1 else x for x in xs]
    n = 0
    for i in range(0, len(xs), batch):
        n += run(np.concatenate(xs[i:i + batch]).astype(np.float32)).shape[0]
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
