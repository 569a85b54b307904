"""Copies between the NCHW layout of minigen's tensors and the channels-last (NHWC) layout of the convolution
kernels, one (image, row) slab at a time, where the slabs are wide enough to beat NumPy's strided copy of
`x.transpose(0, 2, 3, 1)`. Measured at 1 thread, float32, batch 64 (NumPy / Numba time):
- to padded NHWC: 0.75-0.86 at 32-128 channels and 14-28 columns; 1.0-1.5 at 7 columns or 8-16 channels, and
  4-11 at one channel, where NumPy's copy is a plain one;
- to NCHW: 0.49-0.80 at 16-128 channels and 28 columns (32x64x16x16: 0.35), 1.3-3.6 below 16 of either.

The convolutions return channels-last arrays seen as (N, C, H, W) (a transposed view), which elementwise ops
and the next convolution's channels-last copy read in order; only a reshape or a normalization that needs NCHW
order copies them, by `contiguous`.
"""
from __future__ import annotations

import numba
import numpy as np

import kernels

from ._threads import PARALLEL_MIN_SIZE, parallel

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
    if x.dtype in _COMPILED and c >= 32 and w >= 14 and x.size >= PARALLEL_MIN_SIZE and kernels.numba_passes():
        _to_nhwc(x, xp, ph, pw)
    else:
        xp[:, ph:ph + h, pw:pw + w] = x.transpose(0, 2, 3, 1)
    return xp


def contiguous(x):
    """x as a C-contiguous array; a wide channels-last view of (N, C, H, W), which the convolutions return, is
    copied by _to_nchw."""
    if (type(x) is np.ndarray and x.ndim == 4 and x.dtype in _COMPILED and x.shape[1] >= 16 and x.shape[3] >= 16
            and x.size >= PARALLEL_MIN_SIZE and channels_last(x) and kernels.numba_passes()):
        out = np.empty(x.shape, dtype=x.dtype)
        _to_nchw(x.transpose(0, 2, 3, 1), out)
        return out
    return np.ascontiguousarray(x)


def channels_last(x) -> bool:
    """Whether x (N, C, H, W) is a channels-last view (a convolution's output) rather than NCHW."""
    return not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous


def matched(a, b):
    """(a, b) for an elementwise op of two arrays of one 4-d shape: a wide channels-last view beside a C-contiguous
    array is copied to NCHW first (`contiguous`), where NumPy's loop would read it across its strides. The U-Net
    block's residual add, x + h on 32x64x16x16 float32: 1.2 ms, against 0.75 (1 thread) and 0.50 (2) with the
    copy."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 4 and a.shape == b.shape:
        if a.flags.c_contiguous and channels_last(b):
            return a, contiguous(b)
        if b.flags.c_contiguous and channels_last(a):
            return contiguous(a), b
    return a, b


def in_layout_of(a, ref):
    """a (ref's shape) with ref's strides: itself when it has them, else a copy into ref's layout (dense): NCHW
    or channels-last by the copies above (parallel where they pay: the U-Net block's gradient into its
    convolution's layout, 0.53 ms by NumPy's strided copy at 2 threads)."""
    if a.strides == ref.strides:
        return a
    if a.dtype == ref.dtype and a.ndim == 4:
        if ref.flags.c_contiguous:
            return contiguous(a)
        if channels_last(ref):
            return padded_nhwc(a).transpose(0, 3, 1, 2)
    out = np.empty_like(ref)
    out[...] = a
    return out


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
def _to_nchw(y, out):
    """out[n, c, h, w] = y[n, h, w, c], a row of y (W x C, contiguous) at a time."""
    N, H, W, C = y.shape
    for nh in numba.prange(N * H):
        n, h = nh // H, nh % H
        for c in range(C):
            dst = out[n, c, h]
            for w in range(W):
                dst[w] = y[n, h, w, c]
