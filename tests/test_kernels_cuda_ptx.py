"""Every ``@cuda.jit`` kernel of ``kernels/cuda`` compiles to PTX for sm_90 (H100), no GPU needed.

``numba.cuda.compile_ptx`` runs NVVM (from the ``numba-cuda[cu13]`` wheels) on the kernel's
Python function with an explicit signature: the types the launchers pass (C-contiguous
arrays of the data dtype, int64 geometry, boolean flags). The simulator cannot catch what
only the real compiler rejects (typing of the device code, unsupported features), so a
compile failure here fails loudly. A new kernel without an entry in ``SIGNATURES`` fails
``test_every_kernel_has_a_signature``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from numba import boolean, cuda, float32, float64, int64
from numba import config as numba_config

from lrpath_onnx.kernels.cuda import conv, elementwise, flow, gemm, im2col, launch, pooling

MODULES = (launch, gemm, conv, im2col, elementwise, pooling, flow)
INSTALL_HINT = 'pip install "numba-cuda[cu13]"'


def _arr(t, nd):
    return t[(slice(None),) * (nd - 1) + (slice(None, None, 1),)]


def _signatures(f):
    """Launch signatures per kernel for data dtype ``f``."""
    A1, A2, A3, A4 = (_arr(f, n) for n in (1, 2, 3, 4))
    I1 = int64[::1]
    i, b = int64, boolean
    other = float64 if f is float32 else float32
    return {
        "_cast": (_arr(other, 1), A1),
        "gemm_kernel": (A2, A2, A2, A3, f, f, b, b, i, A1, i, A2, b),
        "gemm_kernel_mid": (A2, A2, A2, A3, f, f, b, b, i, A1, i, A2, b),
        "gemm_kernel_thin": (A2, A2, A2, A3, f, f, b, b, i, A1, i, A2, b),
        "gemm_kernel_small": (A2, A2, A2, A3, f, f, b, b, i, A1, i, A2, b),
        "splitk_reduce": (A3, A2, f, f, A1, i, A2, b),
        "divide_kernel": (A1, A1, f, A1),
        "multiply_kernel": (A1, A1, A1),
        "gate_kernel": (A1, A1, i, A1),
        "partial_sums_kernel": (A2, i, float64[:, ::1]),
        "finish_sums_kernel": (float64[:, ::1], float64[::1]),
        "zero_kernel": (A1,),
        "scatter_kernel": (A1, I1, i, i, A1),
        "conv_flow_kernel": (A4, b, A4, A4, I1, I1) + (i,) * 10 + (A3,),
        "dense_flow_kernel": (A2, b, A2, A2, I1, I1, A3),
        "im2col_kernel": (A4,) + (i,) * 12 + (A2,),
        "unstack_kernel": (A2, A4, i, i),
        "conv_direct_kernel": (A4, A4) + (i,) * 6 + (A1, b, A4),
        "conv_transpose_gather_kernel": (A4, A4) + (i,) * 6 + (A4, f, b, A4, b, A4),
        "stack_kernel": (A4, i, i, A4, f, b, A2),
        "col2im_kernel": (A2,) + (i,) * 12 + (A4, b, A4),
    }


#: kernels whose types do not depend on the data dtype: compiled once
DTYPE_FREE = {"finish_sums_kernel"}


def _kernels():
    from numba.cuda.dispatcher import CUDADispatcher

    found = {}
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if isinstance(obj, CUDADispatcher) and obj.py_func.__module__ == mod.__name__:
                assert not obj.targetoptions.get("device"), f"{mod.__name__}.{name}: device functions " \
                    "cannot be compiled to PTX without a GPU (numba asks the driver for its cc); inline it"
                found[name] = obj
    return found


KERNELS = _kernels()
CASES = [(name, t) for name in sorted(KERNELS) for t in (float32, float64)
         if not (name in DTYPE_FREE and t is float32)]


@pytest.fixture(scope="module")
def nvvm():
    """Fails (never skips) with an install hint when NVVM cannot be found."""
    if numba_config.ENABLE_CUDASIM:
        pytest.fail("NUMBA_ENABLE_CUDASIM=1 is set: PTX compilation needs the real CUDA target")
    from numba.cuda.cudadrv.error import NvvmSupportError

    def probe(x):
        x[0] = 1.0

    try:
        cuda.compile_ptx(probe, (float32[::1],), cc=(9, 0))
    except NvvmSupportError as exc:
        pytest.fail(f"CUDA's NVVM compiler library was not found ({exc}); install it with {INSTALL_HINT}")
    except Exception as exc:  # other loader failures name NVVM too
        if "nvvm" in str(exc).lower():
            pytest.fail(f"CUDA's NVVM compiler library could not be loaded ({exc}); install it with {INSTALL_HINT}")
        raise


def test_every_kernel_has_a_signature():
    assert len(KERNELS) >= 19
    assert set(KERNELS) == set(_signatures(float32)), "add the new kernel's launch signature to _signatures"


@pytest.mark.parametrize("name,dtype", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_kernel_compiles_to_sm90_ptx(nvvm, name, dtype):
    sig = _signatures(dtype)[name]
    ptx, restype = cuda.compile_ptx(KERNELS[name].py_func, sig, cc=(9, 0))
    assert ".target sm_90" in ptx
    entry = KERNELS[name].py_func.__name__
    assert re.search(r"\.entry\s+\w*" + entry, ptx), f"no .entry for {name} in the PTX"
    assert str(restype) == "none"
    if name.startswith("gemm_kernel"):
        tile = {"gemm_kernel": "large"}.get(name, name.removeprefix("gemm_kernel_"))
        BM, BN, BK, TY, TX = gemm.TILES[tile]
        assert entry == gemm.kernel_name(BM, BN, BK, TY, TX)
        TM, TN = BM // TY, BN // TX
        # every multiply-add of a slice written out (accumulators in registers, not a local array) ...
        assert ptx.count("fma.rn." + ("f32" if dtype is float32 else "f64")) >= BK * TM * TN
        # ... and the operands read from shared memory in 16-byte vector loads, none one by one
        vector = "ld.shared.v4.f32" if dtype is float32 else "ld.shared.v2.f64"
        assert ptx.count(vector) == BK * (TM + TN) // 4 * (1 if dtype is float32 else 2)
        assert not re.search(r"ld\.shared\.f(32|64)", ptx)
        # the static shared memory the PTX declares is what gemm.shared_bytes says
        declared = sum(int(n) for n in re.findall(r"\.shared \.align \d+ \.b8 \w+\[(\d+)\]", ptx))
        assert declared == gemm.shared_bytes(tile, "f4" if dtype is float32 else "f8")


def test_gemm_tiles_are_checked_and_named():
    for tile in gemm.TILES.values():
        gemm.check_tile(*tile)
    names = {KERNELS[n].py_func.__name__ for n in KERNELS if n.startswith("gemm_kernel")}
    assert names == {gemm.kernel_name(*t) for t in gemm.TILES.values()}  # one name per tile shape
    # 32 threads, a 1 x 16 slice of B: 16 elements cannot be staged by 32 threads evenly (none
    # would be, and the product would use zeros for B); a row of A not a multiple of four per thread
    for bad in [(32, 16, 1, 8, 4), (32, 128, 16, 8, 12), (24, 128, 16, 8, 16), (0, 128, 16, 8, 16)]:
        with pytest.raises(ValueError, match="stage whole rows"):
            gemm.check_tile(*bad)


def test_load4_refuses_strided_arrays(nvvm):
    from numba.core.errors import TypingError

    from lrpath_onnx.kernels.cuda.vector_load import load4

    def first_four(a, out):
        x0, x1, x2, x3 = load4(a, 0)
        out[0] = x0 + x1 + x2 + x3

    ptx, _ = cuda.compile_ptx(first_four, (float32[::1], float32[::1]), cc=(9, 0))
    assert "ld.global.v4.f32" in ptx
    with pytest.raises(TypingError):
        cuda.compile_ptx(first_four, (float32[:], float32[::1]), cc=(9, 0))


def test_load4_in_the_simulator_asserts_alignment_and_contiguity():
    code = ("import numpy as np\n"
            "from lrpath_onnx.kernels.cuda.vector_load import load4\n"
            "a = np.arange(12.0)\n"
            "assert load4(a, 8) == (8.0, 9.0, 10.0, 11.0)\n"
            "for arr, i in ((a, 2), (a[::2], 0)):\n"
            "    try:\n"
            "        load4(arr, i)\n"
            "    except AssertionError:\n"
            "        continue\n"
            "    raise SystemExit(f'load4 accepted index {i} of {arr.strides}')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
