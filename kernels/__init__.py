"""Numba kernels, one module per family; installed as ``lrpath_onnx.kernels``.

Families: ``conv`` (forward with any weights, transposed convolution), ``dense``,
``elementwise`` (stabilised divide, multiply), ``pooling`` (switch unpooling).
"""
