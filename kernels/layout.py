"""Copies between the NCHW layout of minigen's tensors and the channels-last (NHWC) layout of the convolution
kernels, one (image, row) slab at a time: NumPy's strided copy of `x.transpose(0, 2, 3, 1)` runs 1.3-3 times
slower (measured on a U-Net layer, 32x64x16x16: zero-padded NHWC 0.58 -> 0.44 ms, NCHW plus bias 1.05 -> 0.37 ms).

The convolutions return channels-last arrays seen as (N, C, H, W) (a transposed view), which elementwise ops
and the next convolution's channels-last copy read in order; only a reshape or a normalization that needs NCHW
order copies them, by `contiguous`.
"""
from __future__ import annotations

import numba
import numpy as np

from ._threads import parallel

_COMPILED = (np.float32, np.float64)      # other dtypes take NumPy's copy


def padded_nhwc(x, padding=(0, 0), size=None):
    """x (N, C, H, W) -> zero-padded channels-last copy (N, H + 2ph, W + 2pw, C), or of `size` (rows,
    columns) when given (more zeros at the bottom and right)."""
    (n, c, h, w), (ph, pw) = x.shape, padding
    rows, cols = size or (h + 2 * ph, w + 2 * pw)
    xp = np.empty((n, rows, cols, c), dtype=x.dtype)
    xp[:, :ph] = 0
    xp[:, ph + h:] = 0
    xp[:, ph:ph + h, :pw] = 0
    xp[:, ph:ph + h, pw + w:] = 0
    if x.dtype in _COMPILED:
        _to_nhwc(x, xp, ph, pw)
    else:
        xp[:, ph:ph + h, pw:pw + w] = x.transpose(0, 2, 3, 1)
    return xp


def nchw(y, b=None):
    """y (N, H, W, C) channels-last -> a contiguous (N, C, H, W) copy, plus the bias b (C,) when given."""
    n, h, w, c = y.shape
    out = np.empty((n, c, h, w), dtype=y.dtype)
    b = np.zeros(c, y.dtype) if b is None else b.astype(y.dtype, copy=False)
    if y.dtype in _COMPILED:
        _to_nchw(y, b, out)
    else:
        np.add(y.transpose(0, 3, 1, 2), b.reshape(-1, 1, 1), out=out)
    return out


def contiguous(x):
    """x as a C-contiguous array; a channels-last view of (N, C, H, W), which the convolutions return, is copied
    by _to_nchw."""
    if (type(x) is np.ndarray and x.ndim == 4 and not x.flags.c_contiguous and x.dtype in _COMPILED
            and x.transpose(0, 2, 3, 1).flags.c_contiguous):
        return nchw(x.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(x)


@parallel()
def _to_nhwc(x, out, ph, pw):
    """out[n, h + ph, w + pw, c] = x[n, c, h, w]: each slab x[n, :, h, :] (C lines of W) is read whole while its
    row of out is written in order."""
    N, C, H, W = x.shape
    for nh in numba.prange(N * H):
        n, h = nh // H, nh % H
        row = out[n, h + ph]
        for w in range(W):
            dst = row[w + pw]
            for c in range(C):
                dst[c] = x[n, c, h, w]


@parallel()
def _to_nchw(y, b, out):
    """out[n, c, h, w] = y[n, h, w, c] + b[c], a row of y (W x C, contiguous) at a time."""
    N, H, W, C = y.shape
    for nh in numba.prange(N * H):
        n, h = nh // H, nh % H
        for c in range(C):
            dst, bc = out[n, c, h], b[c]
            for w in range(W):
                dst[w] = y[n, h, w, c] + bc
