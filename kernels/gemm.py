"""Matrix products split over Numba's threads, each part one single-threaded BLAS call.

On the OpenMP layer minigen's kernels own the threads (kernels/_threads.py): a product left to NumPy's
threaded OpenBLAS would wake its worker thread, which then spins against OpenMP's (whole steps 1.5-3x slower,
measured). So `matmul(a, b)` cuts a large product into one part per thread inside a Numba parallel loop, and
each part is an `np.dot` that Numba hands to SciPy's OpenBLAS, kept at one thread (_threads.spread). Products
of at most `_SPLIT_MIN` multiply-adds stay NumPy's: OpenBLAS runs those on one thread anyway
(interface/gemm.c: m n k <= 65536 * GEMM_MULTITHREAD_THRESHOLD, 4).

Each thread packs the whole of the operand it does not cut, so matmul cuts the longer of the product's axes,
where the blocks are contiguous (Numba copies a block it cannot type contiguous, rows of an F-ordered array
say): rows of a for a tall product (an im2col convolution), columns of b for a wide one whose b is a
transposed array (Linear's x @ w.T); a long inner axis (a weight gradient, x^T gy over every pixel) into
slices whose partial products are summed; a stack into whole products. On its own a split product is no
faster than NumPy's 2-thread OpenBLAS (measured, p25: 0.9-1.2x the time for MLP-sized products, 100 x 784 x
200 to 784 x 100 x 500; 1.2-1.3x for a stack of 36 Winograd products 448 x 64 x 64): the gain is in the
step, where no worker spins against the parallel loops.
"""
from __future__ import annotations

import warnings

import numba
import numpy as np

from . import _threads

# Numba warns when it copies a block to make it contiguous; here that copy is the plan, not an accident.
warnings.filterwarnings("ignore", category=numba.NumbaPerformanceWarning, module=r".*kernels[/\\]gemm")

_SPLIT_MIN = 1 << 18

# The kernels are not cached on disk (cache=False): Numba's np.dot calls BLAS through pointers it cannot cache.


@numba.njit(inline="always")
def _block(p, parts, size):
    """The range of part p of `parts` near-equal parts of range(size)."""
    return p * size // parts, (p + 1) * size // parts


@_threads.parallel(cache=False)
def _rows(a, b, out):
    """out = a @ b, the rows of a cut into one block per thread (each thread packs all of b)."""
    parts = numba.get_num_threads()
    for p in numba.prange(parts):
        i0, i1 = _block(p, parts, a.shape[0])
        if i1 > i0:
            np.dot(a[i0:i1], b, out[i0:i1])


@_threads.parallel(cache=False)
def _columns(a, b_t, out):
    """out = a @ b_t.T, the columns of b cut into one block per thread (each thread packs all of a)."""
    parts = numba.get_num_threads()
    for p in numba.prange(parts):
        j0, j1 = _block(p, parts, b_t.shape[0])
        if j1 > j0:
            out[:, j0:j1] = np.dot(a, b_t[j0:j1].T)


@_threads.parallel(cache=False)
def _inner(a_t, b, partial):
    """partial[p] = a[:, k_p] @ b[k_p] for a = a_t.T, the inner axis cut into one slice per thread; the product
    is partial's sum."""
    parts = partial.shape[0]
    for p in numba.prange(parts):
        k0, k1 = _block(p, parts, b.shape[0])
        if k1 > k0:
            np.dot(a_t[k0:k1].T, b[k0:k1], partial[p])
        else:
            partial[p] = 0


@_threads.parallel(cache=False)
def _stack(a, a_t, b, b_t, out):
    """out[i] = A[i] @ B[i] over a stack, A[i] = a[i].T if a_t else a[i], B alike: a and b C-contiguous, so
    that each branch's operands are typed contiguous."""
    for i in numba.prange(out.shape[0]):
        if a_t and b_t:
            np.dot(a[i].T, b[i].T, out[i])
        elif a_t:
            np.dot(a[i].T, b[i], out[i])
        elif b_t:
            np.dot(a[i], b[i].T, out[i])
        else:
            np.dot(a[i], b[i], out[i])


def _storage(a) -> tuple:
    """(c, t): a C-contiguous array c with a == c, or (when t) with a == c.T in its last two axes."""
    if a.flags.c_contiguous:
        return a, False
    a_t = np.swapaxes(a, -1, -2)
    if a_t.flags.c_contiguous:
        return a_t, True
    return np.ascontiguousarray(a), False


def matmul(a, b):
    """np.matmul(a, b), split over Numba's threads for large float products of matrices and stacks of them
    (2-D or 3-D operands, either one a single matrix); everything else is np.matmul's."""
    if not (_threads.shared() and isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
            and a.ndim in (2, 3) and b.ndim in (2, 3) and a.shape[-1] == b.shape[-2]
            and (a.ndim == 2 or b.ndim == 2 or a.shape[0] == b.shape[0])):
        return np.matmul(a, b)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    stack = a.shape[0] if a.ndim == 3 else b.shape[0] if b.ndim == 3 else 1
    if stack * m * n * k <= _SPLIT_MIN or 0 in a.shape or 0 in b.shape:
        return np.matmul(a, b)
    if a.ndim == 3 and b.ndim == 2:                  # a stack times one matrix: one tall product
        return matmul(np.ascontiguousarray(a).reshape(-1, k), b).reshape(stack, m, n)
    if b.ndim == 3 and stack == 1:
        return matmul(a if a.ndim == 2 else a[0], b[0])[None]
    if b.ndim == 3:                                 # a stack times a stack, or one matrix times a stack
        out = np.empty((stack, m, n), dtype=a.dtype)
        _threads.spread(_stack, *_storage(np.broadcast_to(a, (stack, m, k))), *_storage(b), out)
        return out
    a = a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)
    b = b if b.flags.c_contiguous or b.flags.f_contiguous else np.ascontiguousarray(b)
    if k >= 2 * (m + n) and not (a.flags.c_contiguous and m >= n or b.flags.f_contiguous and n >= m):
        partial = np.empty((numba.get_num_threads(), m, n), dtype=a.dtype)
        _threads.spread(_inner, a.T, b, partial)
        return partial.sum(axis=0)
    out = np.empty((m, n), dtype=a.dtype)
    if m >= n and (a.flags.c_contiguous or not b.flags.f_contiguous):
        _threads.spread(_rows, a, b, out)
    else:
        _threads.spread(_columns, a, b.T, out)
    return out
