"""Keep numba-cuda importable on NumPy releases newer than it knows.

numba-cuda 0.30 registers an overload for ``np.row_stack`` at import; NumPy 2.5 removed that
alias (it was ``np.vstack`` all along), so the import dies with AttributeError. Restoring the
alias as ``np.vstack`` changes nothing for code that never used it and lets the GPU machine,
which ships NumPy 2.5, run the kernels. Remove once numba-cuda stops touching ``row_stack``.
"""

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack
