"""Standardization over some axes, the core of LayerNorm, GroupNorm and BatchNorm, and its backward, each one
parallel Numba sweep in which a row or a channel stays in cache across its reductions and its write, where
the composed NumPy formula makes about ten passes over memory, each with its temporary:

    y = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps)    (mean and biased var over the axes)
    gx = rstd * (g - mean(g) - y * mean(g * y))

The kernels see x as (outer, C, inner), reducing over outer and inner for each of the C kept positions,
parallel over C: a LayerNorm or GroupNorm row is (1, rows, inner), contiguous; a BatchNorm channel of
(N, C, H, W) is N contiguous runs of H*W, read in place. Measured at 1 thread, float32, forward / backward:
on the DCGAN's (64, 128, 7, 7) the in-place loop took 0.33 / 0.41 ms, channels moved first by a transposed
copy 0.54 / 0.75 ms, the formula path 1.7 / 1.4 ms; on (64, 64, 14, 14) 0.51 / 0.74 against 1.0 / 4.3 ms for
the copy. BatchNorm1d's (N, C), runs of one value, is where the loop loses: a strided walk per column took
0.62 / 0.53 ms on (256, 512) and 1.4 / 2.4 ms on (4096, 64), NumPy's reductions down axis 0 (which run
along rows) 0.31 / 0.18 and 0.88 / 0.68 ms; it takes the formula path.

Mean and variance are two passes accumulated in float64 (a float32 input of mean 1e4 keeps its variance),
and the kernel forms y in float64 from them. Every function takes any array: NumPy arrays of float32 / float64 with
at least PARALLEL_MIN_SIZE elements, reduced over axes around a contiguous block of kept ones, go to a Numba
kernel; everything else (small arrays, CuPy arrays, other dtypes and axes, (N, C) columns) to the same
formulas in array operations, so that callers never choose.
"""
from __future__ import annotations

import math

import numba
import numpy as np

import kernels

from ._fastmath import parallel_fastmath
from ._threads import PARALLEL_MIN_SIZE
from .layout import contiguous


@parallel_fastmath
def _standardize_channels(x, eps, y, mean, var):
    """y = (x - m) / sqrt(v + eps) for x (outer, C, inner), with m and v the mean and biased variance of
    each x[:, c, :] (two passes in float64), written to mean[c] and var[c]."""
    outer, channels, inner = x.shape
    n = outer * inner
    for c in numba.prange(channels):
        s = 0.0
        for o in range(outer):
            for i in range(inner):
                s += x[o, c, i]
        m = s / n
        ss = 0.0
        for o in range(outer):
            for i in range(inner):
                d = x[o, c, i] - m
                ss += d * d
        v = ss / n
        rstd = 1.0 / math.sqrt(v + eps)
        for o in range(outer):
            for i in range(inner):
                y[o, c, i] = (x[o, c, i] - m) * rstd
        mean[c], var[c] = m, v


@parallel_fastmath
def _standardize_backward_channels(y, rstd, g, gx):
    """gx = rstd (g - mean(g) - y mean(g y)) for (outer, C, inner) arrays, means over outer and inner of each
    channel (accumulated in float64)."""
    outer, channels, inner = y.shape
    n = outer * inner
    for c in numba.prange(channels):
        sg = sgy = 0.0
        for o in range(outer):
            for i in range(inner):
                sg += g[o, c, i]
                sgy += g[o, c, i] * y[o, c, i]
        mg, mgy, r = sg / n, sgy / n, rstd[c]
        for o in range(outer):
            for i in range(inner):
                gx[o, c, i] = r * (g[o, c, i] - mg - y[o, c, i] * mgy)


@parallel_fastmath
def _scale_shift_channels(x, w, b, y):
    """y = x w[c] + b[c] for (outer, C, inner) arrays."""
    outer, channels, inner = x.shape
    for c in numba.prange(channels):
        wc, bc = w[c], b[c]
        for o in range(outer):
            for i in range(inner):
                y[o, c, i] = x[o, c, i] * wc + bc


@parallel_fastmath
def _channel_sums(g, x, sgx, sg):
    """sgx[c] = sum of g x and sg[c] = sum of g over outer and inner, for (outer, C, inner) arrays (float64)."""
    outer, channels, inner = g.shape
    for c in numba.prange(channels):
        a = b = 0.0
        for o in range(outer):
            for i in range(inner):
                a += g[o, c, i] * x[o, c, i]
                b += g[o, c, i]
        sgx[c], sg[c] = a, b


def _channels_view(shape: tuple, axes: tuple) -> tuple | None:
    """(outer, C, inner) when the axes not reduced form one contiguous block (C = 1 when all are reduced),
    else None."""
    kept = [a for a in range(len(shape)) if a not in axes]
    if kept and kept != list(range(kept[0], kept[-1] + 1)):
        return None
    start, stop = (kept[0], kept[-1] + 1) if kept else (0, 0)
    return math.prod(shape[:start]), math.prod(shape[start:stop]), math.prod(shape[stop:])


def _fast(x, axes, *others) -> tuple | None:
    """The (outer, C, inner) view when the Numba path serves these arrays (NumPy, one float dtype, large
    enough, axes around a block, not (N, C) columns: see the module's docstring), else None."""
    if not (type(x) is np.ndarray and x.dtype in (np.float32, np.float64) and x.size >= PARALLEL_MIN_SIZE
            and all(type(b) is np.ndarray and b.dtype == x.dtype and b.shape == x.shape for b in others)
            and kernels.numba_passes()):
        return None
    view = _channels_view(x.shape, axes)
    columns = view is not None and view[0] > 1 and view[2] == 1
    return None if columns else view


def _stats_shape(shape: tuple, axes: tuple) -> tuple:
    """The statistics' shape: x's with the reduced axes kept as length 1."""
    return tuple(1 if a in axes else s for a, s in enumerate(shape))


def standardize(x, axes: tuple, eps: float):
    """(y, mean, var): y = (x - mean) / sqrt(var + eps), with the mean and biased variance over `axes` (a
    tuple of non-negative axes), both returned with those axes kept as length 1, in x's dtype (float64 for
    integers, as NumPy's mean)."""
    x = x if x.dtype.kind == "f" else x.astype(np.float64)
    view = _fast(x, axes)
    if view is None:    # in x's dtype but for sums; the mean's rounding to that dtype, shift, is taken out
        mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
        d = x - mean.astype(x.dtype)
        shift = d.mean(axis=axes, dtype=np.float64, keepdims=True)
        var = (d * d).mean(axis=axes, dtype=np.float64, keepdims=True) - shift * shift
        y = (d - shift.astype(x.dtype)) * (1 / np.sqrt(var + eps)).astype(x.dtype)
        return y, mean.astype(x.dtype), var.astype(x.dtype)
    y = np.empty(x.shape, dtype=x.dtype)
    mean, var = (np.empty(view[1], dtype=np.float64) for _ in range(2))
    _standardize_channels(contiguous(x).reshape(view), eps, y.reshape(view), mean, var)
    stats = _stats_shape(x.shape, axes)
    return y, mean.astype(x.dtype).reshape(stats), var.astype(x.dtype).reshape(stats)


def standardize_backward(y, rstd, g, axes: tuple):
    """The input gradient of y = standardize(x): rstd (g - mean(g) - y mean(g y)), means over `axes`, with
    rstd = 1 / sqrt(var + eps) shaped as standardize's statistics."""
    view = _fast(y, axes, g)
    if view is None:
        return rstd * (g - g.mean(axis=axes, keepdims=True) - y * (g * y).mean(axis=axes, keepdims=True))
    gx = np.empty(y.shape, dtype=y.dtype)
    _standardize_backward_channels(contiguous(y).reshape(view), rstd.astype(y.dtype).reshape(-1),
                                   contiguous(g).reshape(view), gx.reshape(view))
    return gx


# --- the per-channel scale and shift of group and batch norm, x (N, C, ...) with w, b (C,) ---------------------


def _channel_axes(ndim: int) -> tuple:
    """Every axis but the channels' (axis 1)."""
    return (0,) + tuple(range(2, ndim))


def _channel_view(x, *others):
    """The (N, C, inner) view of C-contiguous x when the Numba kernels serve x and `others` (same dtype; the
    weights of x's dtype), else None."""
    view = _fast(x, _channel_axes(x.ndim))
    if view is None or not x.flags.c_contiguous or not all(
            type(a) is np.ndarray and a.dtype == x.dtype and (a.shape in (x.shape, (x.shape[1],)))
            and a.flags.c_contiguous for a in others if a is not None):
        return None
    return view


def scale_shift(x, w, b=None):
    """y = x w + b per channel (x's axis 1), b optional."""
    view = _channel_view(x, w, b)
    if view is None:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = x * w.reshape(shape)
        return y if b is None else y + b.reshape(shape)
    y = np.empty(x.shape, dtype=x.dtype)
    _scale_shift_channels(x.reshape(view), w, np.zeros_like(w) if b is None else b, y.reshape(view))
    return y


def channel_sums(g, x):
    """(sum of g x, sum of g) per channel (axis 1), each (C,) in g's dtype, accumulated in float64. A gradient
    g that comes channels-last from a convolution is copied to NCHW first: one pass, where the formula takes
    three."""
    axes = _channel_axes(g.ndim)
    if _fast(g, axes, x) is not None:
        g, x = contiguous(g), contiguous(x)
    view = _channel_view(g, x)
    if view is None:
        return tuple(a.sum(axis=axes, dtype=np.float64).astype(g.dtype) for a in (g * x, g))
    sgx, sg = (np.empty(g.shape[1], dtype=np.float64) for _ in range(2))
    _channel_sums(g.reshape(view), x.reshape(view), sgx, sg)
    return sgx.astype(g.dtype), sg.astype(g.dtype)
