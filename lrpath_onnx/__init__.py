"""lrpath-onnx: Layer-wise Relevance Propagation for image classifiers exported to ONNX.

Three thread pools share the CPU here (onnxruntime's, OpenBLAS's and numba's); each one
spinning idly after its work slows the next one down by half on a small machine. Unless
the user chose otherwise, idle OpenBLAS and OpenMP threads are told to sleep quickly
(this must happen before numpy and numba load their libraries, hence here) — but not at
once: numba's OpenMP threads spin briefly first, since waking sleeping ones cost each
kernel call 75 µs against 4 (efficientnet-lite0's backward at batch 1, hundreds of small
calls: 210–320 → 145–155 ms per image; mnist-vgg's audit 170–185 → 217–242 images/s).
"""

import os as _os

_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # libgomp: overrides PASSIVE's zero spin

__version__ = "0.1.0"

from .allocator import tune_allocator  # noqa: E402
from .api import Analyzer, Explanation, NeuronTarget, parse_target  # noqa: E402
from .errors import (InputError, LrpathError, ModelError, NumericalError,  # noqa: E402
                     OutputError, RuleError, UnsupportedOpError)

__all__ = ["Analyzer", "Explanation", "NeuronTarget", "parse_target", "tune_allocator", "LrpathError", "ModelError",
           "UnsupportedOpError", "InputError", "RuleError", "OutputError", "NumericalError"]
