"""Matrix products split over Numba's threads, each part one single-threaded BLAS call.

On the OpenMP layer minigen's kernels own the threads (kernels/_threads.py): a product left to NumPy's
threaded OpenBLAS would wake its worker thread, which then spins against OpenMP's (whole steps 1.5-3x slower,
measured). So `matmul(a, b)` cuts a large product into one part per thread inside a Numba parallel loop, and
each part is one call of SciPy's sgemm / dgemm (the BLAS Numba's np.dot calls, kept at one thread:
_threads.spread). Products of at most `_SPLIT_MIN` multiply-adds stay NumPy's: OpenBLAS runs those on one
thread anyway (interface/gemm.c: m n k <= 65536 * GEMM_MULTITHREAD_THRESHOLD, 4).

BLAS reads a matrix through a pointer, a leading dimension and a transpose flag, so a block of a C- or
F-ordered matrix (some of its rows, columns or inner slices) is read in place: `_gemm` is called on the
blocks themselves, with no copy. (Numba's np.dot copied every block it could not type contiguous: columns of
a C-ordered b, rows of an F-ordered a; calling BLAS on the blocks took 0.90-0.93 of the time for such products
of MLP sizes at 2 threads, 0.75 for 64 x 64 x 3136, and the same elsewhere.)

Each thread packs the whole of the operand it does not cut, so matmul cuts the longer of the product's outer
axes: rows of a for a tall product (an im2col convolution), columns of b for a wide one (a Linear layer's
batch times its weight); a long inner axis (a weight gradient, x^T gy over every pixel) into slices whose
partial products are summed; a stack into whole products. On its own a split product is no faster than
NumPy's 2-thread OpenBLAS (measured, p25: 0.9-1.2x the time for MLP-sized products, 100 x 784 x 200 to 784 x
100 x 500; 1.2-1.3x for a stack of 36 Winograd products 448 x 64 x 64): the gain is in the step, where no
worker spins against the parallel loops.

A product cut in two runs at 0.66-0.93 of its one-thread time at these sizes, where two whole products, one
on each thread, run at 0.57-0.72 of theirs: so a layer's two gradient products go through `matmul_pair`
together (Linear's backward, minigen.ops.nn.LinearGrad).
"""
from __future__ import annotations

import ctypes
import importlib

import numba
import numpy as np
from numba.extending import get_cython_function_address

from . import _threads

_SPLIT_MIN = 1 << 18


# SciPy's sgemm and dgemm as ctypes functions, which Numba calls: looked up at the first split product
# (_load_blas), as importing scipy.linalg takes 0.1-0.2 s that `import minigen` need not pay. The kernels are
# not cached on disk (cache=False): they call BLAS at addresses known only in this process.
_sgemm = _dgemm = None
_N, _T = ord("N"), ord("T")


def _load_blas() -> None:
    global _sgemm, _dgemm
    if _sgemm is None:
        importlib.import_module("scipy.linalg.cython_blas")
        gemm_type = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)     # Fortran's arguments: all pointers
        _sgemm, _dgemm = (gemm_type(get_cython_function_address("scipy.linalg.cython_blas", name))
                          for name in ("sgemm", "dgemm"))


@numba.njit(inline="always")
def _operand(x, size):
    """How BLAS, column-major, reads the transpose of the row-major matrix x: (flag, leading dimension). A
    row-major block is that transpose as it lies ('N'); a column-major block is x itself, to transpose ('T').
    The row-major test is _blocks' own, which has made every operand one or the other."""
    if x.strides[1] == size and x.strides[0] >= x.shape[1] * size:
        return _N, max(x.strides[0] // size, x.shape[1], 1)
    return _T, max(x.strides[1] // size, x.shape[0], 1)


@numba.njit
def _gemm(a, b, c):
    """c = a @ b by one BLAS call on 2-D blocks as _blocks leaves them (c row-major). Column-major, BLAS
    computes c^T = b^T a^T."""
    size = a.itemsize
    dims = np.empty(6, np.int32)            # n, m, k and the leading dimensions of b^T, a^T, c^T
    flags = np.empty(2, np.uint8)
    dims[0], dims[1], dims[2] = b.shape[1], a.shape[0], a.shape[1]
    flags[0], dims[3] = _operand(b, size)
    flags[1], dims[4] = _operand(a, size)
    dims[5] = max(c.strides[0] // size, c.shape[1], 1)
    scale = np.zeros(2, a.dtype)            # alpha 1, beta 0
    scale[0] = 1
    gemm = _sgemm if size == 4 else _dgemm
    gemm(flags[0:].ctypes, flags[1:].ctypes, dims[0:].ctypes, dims[1:].ctypes, dims[2:].ctypes, scale.ctypes,
         b.ctypes, dims[3:].ctypes, a.ctypes, dims[4:].ctypes, scale[1:].ctypes, c.ctypes, dims[5:].ctypes)


@numba.njit(inline="always")
def _block(p, parts, size):
    """The range of part p of `parts` near-equal parts of range(size)."""
    return p * size // parts, (p + 1) * size // parts


@numba.njit(inline="always")
def _part(a, b, out, p, parts):
    """Part p of `parts` of out = a @ b: a block of the rows of a for a tall product (the thread packs all of b),
    else of the columns of b (it packs all of a)."""
    if a.shape[0] >= b.shape[1]:
        i0, i1 = _block(p, parts, a.shape[0])
        if i1 > i0:
            _gemm(a[i0:i1], b, out[i0:i1])
    else:
        j0, j1 = _block(p, parts, b.shape[1])
        if j1 > j0:
            _gemm(a, b[:, j0:j1], out[:, j0:j1])


@_threads.parallel(cache=False)
def _outer(a, b, out):
    """out = a @ b, cut along its longer outer axis into one part per thread."""
    parts = numba.get_num_threads()
    for p in numba.prange(parts):
        _part(a, b, out, p, parts)


@_threads.parallel(cache=False)
def _pair(a1, b1, out1, a2, b2, out2):
    """out1 = a1 @ b1 and out2 = a2 @ b2 at once, each cut into half as many parts as there are threads."""
    parts = max(1, numba.get_num_threads() // 2)
    for p in numba.prange(2 * parts):
        if p < parts:
            _part(a1, b1, out1, p, parts)
        else:
            _part(a2, b2, out2, p - parts, parts)


@_threads.parallel(cache=False)
def _inner(a, b, partial):
    """partial[p] = a[:, k_p] @ b[k_p], the inner axis cut into one slice per thread; the product is partial's
    sum."""
    parts = partial.shape[0]
    for p in numba.prange(parts):
        k0, k1 = _block(p, parts, b.shape[0])
        if k1 > k0:
            _gemm(a[:, k0:k1], b[k0:k1], partial[p])
        else:
            partial[p] = 0


@_threads.parallel(cache=False)
def _stack(a, b, out):
    """out[i] = a[i] @ b[i] over a stack, one whole product per iteration."""
    for i in numba.prange(out.shape[0]):
        _gemm(a[i], b[i], out[i])


def _blocks(x):
    """x, or a copy of it, such that each of its matrices is one BLAS reads in place: unit stride along one of
    the last two axes, and along the other a positive stride over a whole row (column)."""
    size, (rows, cols), (s_row, s_col) = x.itemsize, x.shape[-2:], x.strides[-2:]
    if (s_col == size and s_row >= cols * size or s_row == size and s_col >= rows * size) and \
            s_row % size == 0 and s_col % size == 0:
        return x
    return np.ascontiguousarray(x)


def _splits(a, b) -> bool:
    """Whether matmul may cut a @ b over minigen's threads: float NumPy matrices or stacks of them (2-D or 3-D,
    either one a single matrix) of one dtype."""
    return (_threads.shared() and isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
            and a.ndim in (2, 3) and b.ndim in (2, 3) and a.shape[-1] == b.shape[-2]
            and (a.ndim == 2 or b.ndim == 2 or a.shape[0] == b.shape[0]))


def matmul(a, b):
    """np.matmul(a, b), split over Numba's threads for large float products of matrices and stacks of them
    (2-D or 3-D operands, either one a single matrix); everything else is np.matmul's."""
    if not _splits(a, b):
        return np.matmul(a, b)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    stack = a.shape[0] if a.ndim == 3 else b.shape[0] if b.ndim == 3 else 1
    if stack * m * n * k <= _SPLIT_MIN or 0 in a.shape or 0 in b.shape:
        return np.matmul(a, b)
    if a.ndim == 3 and b.ndim == 2:                  # a stack times one matrix: one tall product
        return matmul(np.ascontiguousarray(a).reshape(-1, k), b).reshape(stack, m, n)
    if b.ndim == 3 and stack == 1:
        return matmul(a if a.ndim == 2 else a[0], b[0])[None]
    _load_blas()
    a, b = _blocks(a), _blocks(b)
    if b.ndim == 3:                                 # a stack times a stack, or one matrix times a stack
        out = np.empty((stack, m, n), dtype=a.dtype)
        _threads.spread(_stack, np.broadcast_to(a, (stack, m, k)), b, out)
        return out
    if k >= 2 * (m + n):
        partial = np.empty((numba.get_num_threads(), m, n), dtype=a.dtype)
        _threads.spread(_inner, a, b, partial)
        return partial.sum(axis=0)
    out = np.empty((m, n), dtype=a.dtype)
    _threads.spread(_outer, a, b, out)
    return out


def matmul_pair(a1, b1, a2, b2) -> tuple:
    """(a1 @ b1, a2 @ b2), the two products of a layer's backward (g W and g^T x). On minigen's threads two
    matrix products that are large together run at once, each on half the threads: at two threads one whole
    product on each, which runs at its full speed where a product cut in two does not (module docstring)."""
    if not (_splits(a1, b1) and _splits(a2, b2) and a1.ndim == b1.ndim == a2.ndim == b2.ndim == 2
            and a1.dtype == a2.dtype and 0 not in a1.shape + b1.shape + a2.shape + b2.shape
            and a1.shape[0] * a1.shape[1] * b1.shape[1] + a2.shape[0] * a2.shape[1] * b2.shape[1] > _SPLIT_MIN):
        return matmul(a1, b1), matmul(a2, b2)
    _load_blas()
    out1 = np.empty((a1.shape[0], b1.shape[1]), dtype=a1.dtype)
    out2 = np.empty((a2.shape[0], b2.shape[1]), dtype=a2.dtype)
    _threads.spread(_pair, _blocks(a1), _blocks(b1), out1, _blocks(a2), _blocks(b2), out2)
    return out1, out2
