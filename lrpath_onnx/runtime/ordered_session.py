"""Open the analyzer's onnxruntime session with its optimized graph in ``node_order``'s order.

onnxruntime optimizes a graph when a session is made and can save the result; the saved
graph, its nodes reordered and opened without optimizing it again, runs the same kernels in
an order that frees each blocked activation as soon as it is written out. Where any step
cannot be done, the model is opened as onnxruntime orders it.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from .node_order import leaves_last

#: models (without their shared dense weights) up to this size have onnxruntime's optimized
#: graph saved and reordered; a larger one might not fit protobuf's 2 GB once its filters
#: are laid out in blocks
REORDER_BYTES = 1 << 30


def session_options(threads: int | None) -> ort.SessionOptions:
    """The analyzer session's settings."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_prepacking", "1")  # weights are shared
    # idle onnxruntime threads must not spin while the numba kernels run
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no memory pattern: with the pools on the NCHWc path (switches derived, not fetched) the
    # planned block grew VGG16's batch-8 forward by 430 MB, for no measurable speed
    opts.enable_mem_pattern = False
    # no arena either: onnxruntime's scratch memory goes back to the heap after each run,
    # where the backward pass reuses it (VGG16 batch 8: peak RSS 2.33-2.43 -> 2.18-2.21 GB, the
    # first backward's system time for fresh pages 3.3-3.5 -> 1.1-1.2 s); same speed within noise
    opts.enable_cpu_mem_arena = False
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def _plain(data: bytes, threads: int | None, providers: list[str]) -> ort.InferenceSession:
    return ort.InferenceSession(data, session_options(threads), providers=providers)


def inference_session(data: bytes, threads: int | None, providers: list[str]) -> ort.InferenceSession:
    """onnxruntime's session for the model ``data``: on the CPU with its optimized graph in
    the order ``leaves_last`` gives, else (another provider, a model over ``REORDER_BYTES``,
    no temporary folder, a graph onnxruntime cannot save or take back) as onnxruntime orders
    it. A model onnxruntime cannot run raises from the plain session."""
    if providers[0] != "CPUExecutionProvider" or len(data) > REORDER_BYTES:
        return _plain(data, threads, providers)
    try:
        folder = tempfile.TemporaryDirectory(prefix="lrpath-ort-")
    except OSError:
        return _plain(data, threads, providers)
    with folder as tmp:
        opts = session_options(threads)
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        try:
            session = ort.InferenceSession(data, opts, providers=providers)
            optimized = onnx.load(opts.optimized_model_filepath)
        except Exception:  # saving failed (a full disk), or the model itself: the plain session decides
            return _plain(data, threads, providers)
    if not leaves_last(optimized):
        return session
    del session  # not held while the reordered graph is serialized and opened
    reordered = optimized.SerializeToString()
    del optimized
    opts = session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimized already
    try:
        return ort.InferenceSession(reordered, opts, providers=providers)
    except Exception:  # onnxruntime refuses its own saved graph
        return _plain(data, threads, providers)
