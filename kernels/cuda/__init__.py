"""CUDA forms (numba-cuda) of the kernel families, one module per family like the CPU ones.

``conv`` (im2col + tiled GEMM, direct and gather kernels, transposed convolution with fused
stabilised divide and multiply; its layout kernels in ``im2col``), ``gemm`` (shared-memory tiled SGEMM/DGEMM), ``dense``,
``elementwise`` (stabilised divide, multiply, per-sample sums), ``pooling`` (switch
unpooling), ``flow`` (channel-pair relevance flow), and ``launch`` (launch configuration,
device copies, scratch buffers). Public functions take numba device arrays (host numpy
arrays are copied to the device once) and return device arrays in the input's dtype.

Nothing is compiled at import: ``@cuda.jit`` kernels compile on first launch, per dtype.
Without a GPU they run in numba's simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""

from . import numpy_compat  # noqa: F401  (before any numba.cuda import)
