"""Channel-pair relevance flow (CPU): how much relevance each output channel sends to each
input channel of a layer.

For a convolution with input factor ``m`` (the activation, a bound, or 1), weights ``w`` and
upper signal ``s``, ``F[i, j] = Σ_positions Σ_taps m_i · w[j, i, tap] · s_j``. The inner sum
over positions is the convolution's weight gradient for channels (i, j), so F is one BLAS
product of the unfolded input with the signal, multiplied by the weights and summed over
taps. Only the requested rows (input channels) and columns (output channels) are computed,
which is what the neuron graph needs (the top neurons of two layers).
"""

from __future__ import annotations

import numpy as np

from .conv import ConvGeometry, im2col


def conv_flow(mul: np.ndarray | None, s: np.ndarray, w: np.ndarray, geom: ConvGeometry,
              in_shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """F (N, len(rows), len(cols)) for a grouped 2-D convolution; ``mul=None`` means 1."""
    N = s.shape[0]
    C, H, W = in_shape[1:]
    K, Cg, kh, kw = w.shape
    Kg = K // geom.groups
    oh, ow = s.shape[2:]
    (sh, sw), (pt, pl), (dh, dw) = geom.strides, geom.pads[:2], geom.dilations
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    out = np.zeros((N, len(rows), len(cols)), s.dtype)
    for g in range(geom.groups):
        ri = np.nonzero(rows // Cg == g)[0]
        ci = np.nonzero(cols // Kg == g)[0]
        if not len(ri) or not len(ci):
            continue
        r_ch, c_ch = rows[ri], cols[ci]
        wsub = w[c_ch][:, r_ch - g * Cg].reshape(len(ci), len(ri), kh * kw).transpose(1, 2, 0)
        unfolded = np.empty((len(ri) * kh * kw, oh * ow), s.dtype)
        for n in range(N):
            x = np.ones((len(ri), H, W), s.dtype) if mul is None else np.ascontiguousarray(mul[n, r_ch], s.dtype)
            im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, 0, oh, ow, unfolded)
            grad = unfolded @ s[n, c_ch].reshape(len(ci), oh * ow).T  # (ri·taps, ci)
            out[n][np.ix_(ri, ci)] = (grad.reshape(len(ri), kh * kw, len(ci)) * wsub).sum(axis=1)
    return out


def dense_flow(mul: np.ndarray | None, s: np.ndarray, w: np.ndarray, rows: np.ndarray,
               cols: np.ndarray) -> np.ndarray:
    """F (N, len(rows), len(cols)) = m_i · w[i, j] · s_j for a dense layer (w is (in, out))."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    wsub = np.asarray(w[np.ix_(rows, cols)], s.dtype)  # the pairs only, not whole rows of w
    m = np.ones((s.shape[0], len(rows)), s.dtype) if mul is None else mul[:, rows]
    return m[:, :, None] * wsub[None] * s[:, None, cols]
