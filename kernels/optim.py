"""Adam's and SGD's updates in one pass over memory, where NumPy makes eight for Adam (and allocates four
temporaries) and two to five for SGD (one to three temporaries): the update of a 784x500 MADE weight is about a
third of that model's whole training step on one thread.

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


@parallel(error_model="numpy")
def _sgd(p, g, buf, lr, weight_decay, mu, one_minus_dampening, nesterov, first):
    """In place, elementwise, in the order of optim.SGD's array formulas: d = g + weight_decay p (if
    weight_decay != 0); with momentum mu != 0, buf <- d at the first step, else mu buf + (1 - dampening) d, and
    d <- d + mu buf if nesterov, else buf; p <- p - lr d. The flags are loop-invariant: LLVM unswitches the
    loop into one vectorized loop per case."""
    for i in numba.prange(p.size):
        d = g[i] + weight_decay * p[i] if weight_decay != 0 else g[i]
        if mu != 0:
            b = d if first else buf[i] * mu + one_minus_dampening * d
            buf[i] = b
            d = d + mu * b if nesterov else b
        p[i] -= lr * d


def _serves(p, g, *state) -> bool:
    """Whether the kernels serve these arrays: NumPy arrays of one float dtype and one shape, the parameter and
    its state contiguous (the gradient is made so). Otherwise (CuPy arrays, other layouts) the caller uses
    array operations."""
    return (all(type(a) is np.ndarray and a.dtype == p.dtype and a.shape == p.shape for a in (p, g, *state))
            and p.dtype in (np.float32, np.float64) and all(a.flags.c_contiguous for a in (p, *state))
            and kernels.numba_passes())


# The constants are rounded to p's dtype as NumPy rounds Python floats: 1 - beta2 from float64, not
# float32(1) - float32(beta2), which differ by 5e-5 relative.

def adam_update(p, g, m, v, beta1, beta2, step_size, bias2_sqrt, eps) -> bool:
    """Adam's update of p, m, v in place (see _adam); False, having done nothing, where the kernel does not
    serve these arrays (_serves)."""
    if not _serves(p, g, m, v):
        return False
    f = p.dtype.type
    _adam(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1), f(beta2), f(1 - beta1),
          f(1 - beta2), f(step_size), f(bias2_sqrt), f(eps))
    return True


def sgd_update(p, g, buf, lr, weight_decay, momentum, dampening, nesterov, first) -> bool:
    """SGD's update of p and of its momentum buffer `buf` in place (see _sgd): `buf` is None without momentum,
    and at the `first` step an array that it fills. False, having done nothing, where the kernel does not
    serve these arrays (_serves)."""
    buf = p if buf is None else buf         # without momentum, never read nor written
    if not _serves(p, g, buf):
        return False
    f = p.dtype.type
    _sgd(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), buf.reshape(-1), f(lr), f(weight_decay), f(momentum),
         f(1 - dampening), nesterov, first)
    return True
