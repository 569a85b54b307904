"""Fused elementwise kernels: sigmoid, SiLU and SiLU's backward (the activations of the U-Net and the gated
networks), and Adam's update, each one parallel pass over memory where NumPy makes one pass (and one
temporary) per ufunc.

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


@_njit_fastmath
def _adam(p, g, m, v, beta1, beta2, step_size, bias2_sqrt, eps):
    for i in numba.prange(p.size):
        m[i] += (1 - beta1) * (g[i] - m[i])
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
        p[i] -= step_size * m[i] / (np.sqrt(v[i]) / bias2_sqrt + eps)


def adam_step(p, g, m, v, beta1, beta2, step_size, bias2_sqrt, eps) -> bool:
    """Adam's update in place, one pass: m <- m + (1 - beta1)(g - m), v <- beta2 v + (1 - beta2) g^2,
    p <- p - step_size m / (sqrt(v) / bias2_sqrt + eps). Returns False, having done nothing, where the
    arrays are not all large contiguous NumPy arrays of one float dtype (the caller then uses array
    operations)."""
    if not (_fast(p, g, m, v) and all(a.flags.c_contiguous for a in (p, m, v))):
        return False
    f = p.dtype.type
    _adam(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1), f(beta1), f(beta2),
          f(step_size), f(bias2_sqrt), f(eps))
    return True


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
