"""Fused elementwise kernels for the activations of the U-Net and gated networks: sigmoid, SiLU and SiLU's
backward, each one parallel pass over memory where NumPy makes one pass (and one temporary) per ufunc.

Every function takes any array: NumPy arrays of float32 / float64 with at least _PARALLEL_MIN_SIZE elements
go to a Numba kernel, everything else (small arrays, CuPy arrays, other dtypes) to the same formula in
array operations, so that callers never choose. All formulas use e = exp(-|x|) <= 1, which never overflows:

    sigmoid(x) = 1 / (1 + e) for x >= 0,  e / (1 + e) for x < 0
    silu(x)    = x sigmoid(x)
    silu'(x)   = s (1 + x (1 - s)),  s = sigmoid(x)
"""
from __future__ import annotations

import numba
import numpy as np

from .cpu import _PARALLEL_MIN_SIZE, _exp, _njit_fastmath


@_njit_fastmath
def _sigmoid_family(kind, x, g, out):
    """out = sigmoid(x) (kind 0), silu(x) (kind 1) or g silu'(x) (kind 2), elementwise on flat arrays."""
    one = x.dtype.type(1)
    for i in numba.prange(x.size):
        v = x[i]
        e = _exp(-abs(v))
        s = (one if v >= 0 else e) / (one + e)
        out[i] = s if kind == 0 else v * s if kind == 1 else g[i] * s * (one + v * (one - s))


def _fast(*arrays) -> bool:
    """Whether the Numba path serves these arrays: NumPy, one float dtype, large enough."""
    a = arrays[0]
    return (type(a) is np.ndarray and a.dtype in (np.float32, np.float64) and a.size >= _PARALLEL_MIN_SIZE
            and all(type(b) is np.ndarray and b.dtype == a.dtype and b.shape == a.shape for b in arrays))


def _fused(kind, x, g):
    out = np.empty(x.shape, dtype=x.dtype)
    flat = [np.ascontiguousarray(a).reshape(-1) for a in (x, g)]
    _sigmoid_family(kind, *flat, out.reshape(-1))
    return out


def _sigmoid_formula(x):
    """The formula in array operations (any array module through NumPy's dispatch)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _fused(0, x, x) if _fast(x) else _sigmoid_formula(x)


def silu(x):
    """x sigmoid(x)."""
    return _fused(1, x, x) if _fast(x) else x * _sigmoid_formula(x)


def silu_backward(x, g):
    """g silu'(x) = g s (1 + x (1 - s))."""
    if _fast(x, g):
        return _fused(2, x, g)
    s = _sigmoid_formula(x)
    return g * s * (1 + x * (1 - s))
