"""Stacked float32 matrix products on onnxruntime's MLAS kernels.

The Winograd layers spend most of the backward pass in stacks of small products (16 or 36
taps of ``(K, C) @ (C, tiles)``). Measured on the 2-core CI machine type, onnxruntime's
MatMul (MLAS, the GEMM its own convolutions use) runs them 10–25 % faster than numpy's
OpenBLAS split over the backend's threads (VGG16's shapes at batch 8: 64 channels 215 →
270 GFLOP/s, 512 channels 289 → 318), with float32 accumulation like OpenBLAS's. One
session of a single MatMul node with symbolic dims serves every shape; inputs and the
output are bound to the caller's arrays, so nothing is copied. onnxruntime is already the
analyzer's forward engine, so this adds no dependency.
"""

from __future__ import annotations

import numpy as np


class StackedGemm:
    """``out[s] = a[s] @ b[s]`` for C-contiguous float32 stacks, on ``threads`` threads.

    A transposed ``a`` (F(2x2, 3x3)'s transposed direction reads the forward's transformed
    kernel so) stays with numpy: onnxruntime's FusedMatMul with ``transA`` ran those
    products 10 % slower than OpenBLAS."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._session = None

    def _make(self):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        dims = {"a": ["S", "M", "K"], "b": ["S", "K", "N"], "c": ["S", "M", "N"]}
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "stacked_gemm",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims[n]) for n in ("a", "b")],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, dims["c"])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7  # what every supported onnxruntime reads
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # idle threads must not spin while the numba kernels run (see ``threads``)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    @staticmethod
    def takes(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
        """Whether these operands can be bound as they are (anything else goes to numpy)."""
        return (a.ndim == b.ndim == out.ndim == 3 and a.shape[0] == b.shape[0] == out.shape[0] and out.size > 0
                and a.dtype == b.dtype == out.dtype == np.float32
                and a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous
                and out.flags.writeable
                and a.shape[2] == b.shape[1] and out.shape[1:] == (a.shape[1], b.shape[2]))

    def __call__(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = self._make()
        binding = self._session.io_binding()
        binding.bind_cpu_input("a", a)
        binding.bind_cpu_input("b", b)
        binding.bind_output("c", "cpu", element_type=np.float32, shape=out.shape, buffer_ptr=out.ctypes.data)
        self._session.run_with_iobinding(binding)
        return out
