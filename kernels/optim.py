"""Adam's update in one pass over memory, where NumPy makes eight (and allocates four temporaries): the
update of a 784x500 MADE weight is about a third of that model's whole training step on one thread.

The loop runs in parallel from THREADS_MIN_SIZE elements (kernels/_threads.py: 32 K where minigen's kernels
own the threads, on the OpenMP layer; 4 M on workqueue). Under OpenMP beside NumPy's threaded BLAS, a parallel
region before every parameter's update left its threads spinning into the matrix products that follow,
starving BLAS's threads (the README's 2-thread VAE run went 2.4x slower); with the products on Numba's threads
too, the parallel loop measured 0.95 of a MADE step's time at 2 threads (in-process A/B, p25).
"""
from __future__ import annotations

import numba
import numpy as np

import kernels

from ._threads import parallel


@parallel(error_model="numpy")      # no zero-division check: the loop vectorizes (4x faster)
def _adam(p, g, m, v, beta2, one_minus_beta1, one_minus_beta2, step_size, bias2_sqrt, eps):
    """In place, elementwise, in the order of optim.Adam's array formulas (so float64 results agree with
    them and with torch.optim to rounding): m <- m + (1 - beta1)(g - m), v <- beta2 v + (1 - beta2) g^2,
    p <- p - step_size m / (sqrt(v) / bias2_sqrt + eps)."""
    for i in numba.prange(p.size):
        m[i] += one_minus_beta1 * (g[i] - m[i])
        v[i] = v[i] * beta2 + one_minus_beta2 * g[i] * g[i]
        p[i] -= step_size * (m[i] / (np.sqrt(v[i]) / bias2_sqrt + eps))


def adam_update(p, g, m, v, beta1, beta2, step_size, bias2_sqrt, eps) -> bool:
    """Adam's update of p, m, v in place (see _adam). Returns False, having done nothing, unless all four are
    NumPy arrays of one float dtype and one shape with p, m and v contiguous: the caller then uses array
    operations (CuPy arrays, other layouts). The constants are rounded to p's dtype as NumPy rounds Python
    floats (1 - beta2 from float64, not float32(1) - float32(beta2), which differ by 5e-5 relative)."""
    arrays = (p, g, m, v)
    if not (all(type(a) is np.ndarray and a.dtype == p.dtype and a.shape == p.shape for a in arrays)
            and p.dtype in (np.float32, np.float64) and all(a.flags.c_contiguous for a in (p, m, v))
            and kernels.numba_passes()):
        return False
    f = p.dtype.type
    _adam(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1), f(beta2), f(1 - beta1),
          f(1 - beta2), f(step_size), f(bias2_sqrt), f(eps))
    return True
