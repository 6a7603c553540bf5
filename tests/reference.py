"""Plain float64 NumPy references, written for clarity, not speed.

Every linear layer is unrolled into an explicit matrix ``M`` (inputs × outputs) plus a
connectivity mask, and every LRP rule is written once over that matrix with the formulas
of DESIGN.md. Tests compare the analyzer's relevance with these on random inputs.
"""

from __future__ import annotations

import numpy as np

#: zennit's stabiliser of every rule but ε, added with the denominator's sign (sign(0) = 1)
STAB = 1e-6


# ----------------------------------------------------------------------------- unrolling

def case_geometry(kw: dict) -> dict:
    """The conv_matrix keywords of a test case built by ``models.conv_model(**kw)`` (its defaults: pads 1)."""
    return dict(strides=kw.get("strides", (1, 1)), pads=kw.get("pads", (1, 1, 1, 1)),
                dilations=kw.get("dilations", (1, 1)), groups=kw.get("groups", 1))


def conv_matrix(w, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1):
    """Unroll a 2-D convolution of an input (C, H, W) into M of shape (C*H*W, K*oh*ow)."""
    w = np.asarray(w, np.float64)
    C, H, W = in_shape
    K, Cg, kh, kw = w.shape
    sh, sw = strides
    pt, pl, pb, pr = pads
    dh, dw = dilations
    oh = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    M = np.zeros((C * H * W, K * oh * ow))
    mask = np.zeros_like(M)
    Kg = K // groups
    for k in range(K):
        g = k // Kg
        for oy in range(oh):
            for ox in range(ow):
                col = (k * oh + oy) * ow + ox
                for cc in range(Cg):
                    c = g * Cg + cc
                    for i in range(kh):
                        for j in range(kw):
                            iy, ix = oy * sh - pt + i * dh, ox * sw - pl + j * dw
                            if 0 <= iy < H and 0 <= ix < W:
                                row = (c * H + iy) * W + ix
                                M[row, col] += w[k, cc, i, j]
                                mask[row, col] = 1.0
    return M, mask, (K, oh, ow)


def avgpool_matrix(in_shape, kernel, strides=(1, 1), pads=(0, 0, 0, 0), count_include_pad=False):
    """Unroll AveragePool (floor mode) into M; the divisor follows ONNX's count_include_pad."""
    C, H, W = in_shape
    kh, kw = kernel
    sh, sw = strides
    pt, pl, pb, pr = pads
    oh = (H + pt + pb - kh) // sh + 1
    ow = (W + pl + pr - kw) // sw + 1
    M = np.zeros((C * H * W, C * oh * ow))
    for c in range(C):
        for oy in range(oh):
            for ox in range(ow):
                taps = [(oy * sh - pt + i, ox * sw - pl + j) for i in range(kh) for j in range(kw)]
                inside = [(y, x) for y, x in taps if 0 <= y < H and 0 <= x < W]
                if count_include_pad:
                    n = sum(1 for y, x in taps if -pt <= y < H + pb and -pl <= x < W + pr)
                else:
                    n = len(inside)
                for y, x in inside:
                    M[(c * H + y) * W + x, (c * oh + oy) * ow + ox] = 1.0 / n
    return M, (M != 0).astype(float), (C, oh, ow)


# ----------------------------------------------------------------------------- rules

def _div(r, z, eps):
    d = z + eps * np.where(z >= 0, 1.0, -1.0)
    return np.where(d != 0, r / np.where(d != 0, d, 1.0), 0.0)


def lrp_contributions(rule: str, a, M, b, r, mask=None, gamma=0.25, eps=0.0, alpha=2.0, beta=1.0,
                      low=None, high=None, stabilizer=STAB, bias=True):
    """C[p, q]: relevance output q sends to input p for ``z = a @ M + b`` (one sample).

    Summing over q gives the input relevance; summing blocks of C over the positions of two
    channels gives the channel-pair flow. ``bias=False`` (a rule's ``nobias``): the layer is
    taken as bias-free everywhere (γ's choice of sign included, zero outputs going to the
    negative group), and the relevance of outputs whose denominator is exactly 0 goes on by w².
    """
    a = np.asarray(a, np.float64)
    M = np.asarray(M, np.float64)
    b = np.zeros(M.shape[1]) if b is None else np.asarray(b, np.float64)
    bb = b if bias else np.zeros_like(b)
    r = np.asarray(r, np.float64)
    mask = (M != 0).astype(float) if mask is None else mask
    ap, an = np.maximum(a, 0)[:, None], np.minimum(a, 0)[:, None]
    lost = np.zeros_like(r)
    if rule in ("zero", "epsilon"):
        Z = a[:, None] * M
        C = Z * _div(r, Z.sum(0) + bb, eps)[None, :]
        lost += r * (Z.sum(0) == 0)
    elif rule == "gamma":
        # generalized γ: positive outputs favour positive contributions, negative ones negative
        up, down = M + gamma * np.maximum(M, 0), M + gamma * np.minimum(M, 0)
        z = a @ M + bb
        Zp = ap * up + an * down        # z > 0: (a⁺, w + γw⁺) and (a⁻, w + γw⁻)
        Zn = ap * down + an * up        # z < 0: (a⁺, w + γw⁻) and (a⁻, w + γw⁺)
        bp, bn = bb + gamma * np.maximum(bb, 0), bb + gamma * np.minimum(bb, 0)
        rp, rn = r * (z > 0), r * ((z < 0) if bias else (z <= 0))
        C = (Zp * _div(rp, Zp.sum(0) + bp, stabilizer)[None, :] + Zn * _div(rn, Zn.sum(0) + bn, stabilizer)[None, :])
        lost += rp * (Zp.sum(0) + bp == 0) + rn * (Zn.sum(0) + bn == 0)
    elif rule in ("zplus", "alphabeta"):
        if rule == "zplus":
            alpha, beta = 1.0, 0.0
        Z = a[:, None] * M
        Zp, Zn = np.maximum(Z, 0), np.minimum(Z, 0)
        zp, zn = Zp.sum(0) + np.maximum(bb, 0), Zn.sum(0) + np.minimum(bb, 0)
        C = alpha * Zp * _div(r, zp, stabilizer)[None, :] - beta * Zn * _div(r, zn, stabilizer)[None, :]
        lost += alpha * r * (zp == 0) - (beta * r * (zn == 0) if beta else 0)
    elif rule == "flat":
        return mask * _div(r, mask.sum(0), stabilizer)[None, :]
    elif rule == "wsquare":
        Z = M * M
        return Z * _div(r, Z.sum(0) + bb * bb, stabilizer)[None, :]
    elif rule == "zbox":
        Z = a[:, None] * M - low[:, None] * np.maximum(M, 0) - high[:, None] * np.minimum(M, 0)
        return Z * _div(r, Z.sum(0), stabilizer)[None, :]
    else:
        raise ValueError(rule)
    if not bias:  # outputs no input contributes to pass their relevance on by w²
        W2 = M * M
        fstab = min(eps, STAB) if rule in ("zero", "epsilon") else stabilizer
        C = C + W2 * _div(lost, W2.sum(0), fstab)[None, :]
    return C


def lrp_linear(rule: str, a, M, b, r, mask=None, **kw):
    """Input relevance of ``z = a @ M + b`` for one sample (a: (I,), r: (O,))."""
    return lrp_contributions(rule, a, M, b, r, mask, **kw).sum(1)


def channel_blocks(C, in_shape, out_shape):
    """Sum a (C_in·H·W, K·oh·ow) contribution matrix into (C_in, K) channel-pair flows."""
    ci, co = in_shape[0], out_shape[0]
    return C.reshape(ci, -1, co, C.shape[1] // co).sum(axis=(1, 3))


def maxpool_wta(x, r, kernel, strides, pads=(0, 0, 0, 0)):
    """Winner-take-all: each pooled relevance goes to the first maximum of its window."""
    N, C, H, W = x.shape
    kh, kw = kernel
    sh, sw = strides
    pt, pl = pads[:2]
    out = np.zeros(x.shape)
    oh, ow = r.shape[2:]
    for n in range(N):
        for c in range(C):
            for oy in range(oh):
                for ox in range(ow):
                    best, where = -np.inf, None
                    for i in range(kh):
                        for j in range(kw):
                            y, xx = oy * sh - pt + i, ox * sw - pl + j
                            if 0 <= y < H and 0 <= xx < W and x[n, c, y, xx] > best:
                                best, where = x[n, c, y, xx], (y, xx)
                    out[n, c, where[0], where[1]] += r[n, c, oy, ox]
    return out


def relu_net_gradient_x_input(layers, x, target):
    """Gradient × input of ``logits[target]`` for a bias-free chain of (matrix, relu?) layers.

    ``layers`` is a list of (M, apply_relu); ``x`` is one flattened sample.
    """
    acts, masks = [np.asarray(x, np.float64)], []
    h = acts[0]
    for M, relu in layers:
        z = h @ M
        m = (z > 0).astype(float) if relu else np.ones_like(z)
        masks.append(m)
        h = z * m
        acts.append(h)
    g = np.zeros_like(h)
    g[target] = 1.0
    for (M, _), m in zip(layers[::-1], masks[::-1]):
        g = (g * m) @ M.T
    return g * acts[0]
