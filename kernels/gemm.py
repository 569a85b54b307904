"""Matrix products split over Numba's threads, each part one single-threaded BLAS call.

On the OpenMP layer minigen's kernels own the threads (kernels/_threads.py): a product left to NumPy's
threaded OpenBLAS would wake its worker thread, which then spins against OpenMP's (whole steps 1.5-3x slower,
measured). So `matmul(a, b)` cuts a large product into one part per thread inside a Numba parallel loop, and
each part is one single-threaded call of sgemm / dgemm: MKL's where it is installed, else SciPy's OpenBLAS
(below). On one thread a product is computed here, whole, only on MKL, from `_WHOLE_MIN` multiply-adds.
Products of at most `_SPLIT_MIN` multiply-adds stay NumPy's: OpenBLAS runs those on one thread anyway
(interface/gemm.c: m n k <= 65536 * GEMM_MULTITHREAD_THRESHOLD, 4).

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
together (the backward of Linear and of matmul, minigen.ops.linalg.ProductGrads).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.metadata
import os
import platform

import numba
import numpy as np
from numba.extending import get_cython_function_address

from . import _threads

_SPLIT_MIN = 1 << 18
# A stack of matrices that BLAS reads in place but not as one (transposed ones: the per-image columns of
# cpu._image_columns) times one matrix is one product per matrix from this many multiply-adds each, else copied
# into one tall product: per matrix, the copy spared, 0.37-0.67 of the time at 2 threads and 0.53-0.83 at one
# for stacks of 16-256 products of 28 K to 1.8 M multiply-adds (AMD EPYC Zen 4).
_PER_MATRIX_MIN = 1 << 14
_WHOLE_MIN = 1 << 21


# The BLAS each part calls, as ctypes functions of Fortran's sgemm and dgemm, which Numba calls: on an Intel CPU
# MKL's, where the `mkl` wheel (pip install "minigen[mkl]") or a system MKL is found, else SciPy's OpenBLAS (the
# one Numba's np.dot calls). MKL on one thread took 0.40-0.86 of OpenBLAS's time on every product of the
# training steps measured (128 x 784 x 512 0.83, 3136 x 512 x 64 0.84, 448 x 64 x 64 0.71, 64 x 12544 x 576
# 0.40; Intel Xeon, AVX-512), the same time as PyTorch's (0.98-1.02), which calls MKL too; whole training steps
# took 0.82-0.97 of their time on OpenBLAS. On other CPUs OpenBLAS serves unless MINIGEN_BLAS=mkl: on an AMD EPYC
# (Zen 3, AVX2) neither wins (`python -m benchmarks blas`, 2 runs: MKL 0.86-0.93 of OpenBLAS's time on MLP products
# and on 64 x 12544 x 576, 1.04-1.27 on tall im2col products such as 3136 x 1024 x 128), and the training steps
# there took 0.50-0.88 of PyTorch's time on OpenBLAS. MINIGEN_BLAS=openblas chooses OpenBLAS anywhere.
# Looked up at the first product matmul computes (_load_blas), as importing scipy.linalg takes 0.1-0.2 s that
# `import minigen` need not pay. The kernels are not cached on disk (cache=False): they call BLAS at addresses
# known only in this process.
_sgemm = _dgemm = None
_provider = None                # "mkl" or "openblas", once loaded
_N, _T = ord("N"), ord("T")
_MKL_LP64, _MKL_SEQUENTIAL = 0, 1   # MKL's interface layer of 32-bit integers; its threading layer that runs
                                    # each call on its caller's thread


def _mkl_library():
    """The path of MKL's runtime library (libmkl_rt): the `mkl` wheel's, else the system's; None without MKL."""
    try:
        files = importlib.metadata.files("mkl") or ()
    except importlib.metadata.PackageNotFoundError:
        files = ()
    for file in files:
        if file.name.startswith(("libmkl_rt.", "mkl_rt.")):      # .so.N on Linux, .N.dylib, .N.dll
            return str(file.locate())
    return ctypes.util.find_library("mkl_rt")


def _intel_cpu() -> bool:
    """Whether this is an Intel CPU, where MKL was measured (/proc/cpuinfo's vendor, else platform's name)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read(1 << 12)
    except OSError:
        return "Intel" in platform.processor()


def _blas_functions(choice: str):
    """(provider, address of sgemm, address of dgemm) for MINIGEN_BLAS's choice: 'auto', 'mkl' or 'openblas'."""
    if choice not in ("auto", "mkl", "openblas"):
        raise ValueError(f"MINIGEN_BLAS={choice!r}: expected 'mkl', 'openblas' or unset (MKL where installed, on "
                         "an Intel CPU)")
    path = _mkl_library() if choice == "mkl" or choice == "auto" and _intel_cpu() else None
    if path is not None:
        mkl = ctypes.CDLL(path)
        # 32-bit integer arguments, whatever MKL_INTERFACE_LAYER says; and each part on its caller's thread:
        # the sequential layer, whatever MKL_THREADING_LAYER says (unless MKL ran on another one already)
        if mkl.MKL_Set_Interface_Layer(_MKL_LP64) == _MKL_LP64 and \
                mkl.MKL_Set_Threading_Layer(_MKL_SEQUENTIAL) == _MKL_SEQUENTIAL:
            return ("mkl",) + tuple(ctypes.cast(getattr(mkl, name), ctypes.c_void_p).value
                                    for name in ("sgemm", "dgemm"))
    if choice == "mkl":
        raise RuntimeError("MINIGEN_BLAS=mkl, but MKL " + ("was not found: pip install 'minigen[mkl]'" if path is None
                           else "was set up in this process otherwise (its interface or threading layer)"))
    importlib.import_module("scipy.linalg.cython_blas")
    return ("openblas",) + tuple(get_cython_function_address("scipy.linalg.cython_blas", name)
                                 for name in ("sgemm", "dgemm"))


def _load_blas() -> None:
    global _sgemm, _dgemm, _provider
    if _sgemm is None:
        _provider, *addresses = _blas_functions(os.environ.get("MINIGEN_BLAS", "auto"))
        gemm_type = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)     # Fortran's arguments: all pointers
        _sgemm, _dgemm = (gemm_type(address) for address in addresses)


def blas() -> str:
    """The BLAS library that matmul's products call: 'mkl' or 'openblas'."""
    _load_blas()
    return _provider


@numba.njit(inline="always")
def _operand(x, size):
    """How BLAS, column-major, reads the transpose of the row-major matrix x: (flag, leading dimension). A
    row-major block is that transpose as it lies ('N'); a column-major block is x itself, to transpose ('T').
    The row-major test is _in_place's, by which _blocks has made every operand one or the other."""
    if x.strides[1] == size and x.strides[0] >= x.shape[1] * size:
        return _N, max(x.strides[0] // size, x.shape[1], 1)
    return _T, max(x.strides[1] // size, x.shape[0], 1)


@numba.njit
def _gemm(a, b, c, alpha, beta):
    """c = alpha a @ b + beta c by one BLAS call on 2-D blocks as _blocks leaves them (c row-major).
    Column-major, BLAS computes c^T = b^T a^T. No defaults for alpha and beta: a call from Python that left them
    out went through Numba's slow dispatch for omitted arguments, 110-190 us a call."""
    size = a.itemsize
    dims = np.empty(6, np.int32)            # n, m, k and the leading dimensions of b^T, a^T, c^T
    flags = np.empty(2, np.uint8)
    dims[0], dims[1], dims[2] = b.shape[1], a.shape[0], a.shape[1]
    flags[0], dims[3] = _operand(b, size)
    flags[1], dims[4] = _operand(a, size)
    dims[5] = max(c.strides[0] // size, c.shape[1], 1)
    scale = np.empty(2, a.dtype)
    scale[0], scale[1] = alpha, beta
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
            _gemm(a[i0:i1], b, out[i0:i1], 1.0, 0.0)
    else:
        j0, j1 = _block(p, parts, b.shape[1])
        if j1 > j0:
            _gemm(a, b[:, j0:j1], out[:, j0:j1], 1.0, 0.0)


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
            _gemm(a[:, k0:k1], b[k0:k1], partial[p], 1.0, 0.0)
        else:
            partial[p] = 0


@_threads.parallel(cache=False)
def _stack(a, b, out):
    """out[i] = a[i] @ b[i] over a stack, one whole product per iteration."""
    for i in numba.prange(out.shape[0]):
        _gemm(a[i], b[i], out[i], 1.0, 0.0)


def _in_place(x) -> bool:
    """Whether BLAS reads each of x's matrices in place: unit stride along one of the last two axes, and along the
    other a positive stride over a whole row (column)."""
    size, (rows, cols), (s_row, s_col) = x.itemsize, x.shape[-2:], x.strides[-2:]
    return (s_col == size and s_row >= cols * size or s_row == size and s_col >= rows * size) and \
        s_row % size == 0 and s_col % size == 0


def _blocks(x):
    """x, or a copy of it, such that each of its matrices is one BLAS reads in place."""
    return x if _in_place(x) else np.ascontiguousarray(x)


def _smallest_product():
    """The fewest multiply-adds of a product matmul computes itself, None where it leaves every product to NumPy:
    split over minigen's threads where it has several, whole on one thread where its BLAS is MKL (faster than
    NumPy's OpenBLAS, above, once the product outweighs the call's 6-7 us: from about 128 x 128 x 128)."""
    if _threads.shared():
        return _SPLIT_MIN
    return _WHOLE_MIN if _threads.num_threads() == 1 and blas() == "mkl" else None


def _splits(a, b) -> bool:
    """Whether matmul can compute a @ b itself: float NumPy matrices or stacks of them (2-D or 3-D, either one a
    single matrix) of one dtype; not subclasses (the 'sim' device's arrays), which np.matmul returns in their
    own type."""
    return (type(a) is np.ndarray and type(b) is np.ndarray
            and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
            and a.ndim in (2, 3) and b.ndim in (2, 3) and a.shape[-1] == b.shape[-2]
            and (a.ndim == 2 or b.ndim == 2 or a.shape[0] == b.shape[0]))


def matmul(a, b):
    """np.matmul(a, b), split over Numba's threads for large float products of matrices and stacks of them
    (2-D or 3-D operands, either one a single matrix), and computed whole by MKL on one thread; everything else
    is np.matmul's."""
    smallest = _smallest_product() if _splits(a, b) else None
    if smallest is None:
        return np.matmul(a, b)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    stack = a.shape[0] if a.ndim == 3 else b.shape[0] if b.ndim == 3 else 1
    if stack * m * n * k <= smallest or 0 in a.shape or 0 in b.shape:
        return np.matmul(a, b)
    if a.ndim == 3 and b.ndim == 2:
        if a.flags.c_contiguous or m * n * k < _PER_MATRIX_MIN or not _in_place(a):
            return matmul(np.ascontiguousarray(a).reshape(-1, k), b).reshape(stack, m, n)  # one tall product
        b = np.broadcast_to(b, (stack, k, n))   # a stack of transposed matrices, read in place: one product each
    if b.ndim == 3 and stack == 1:
        return matmul(a if a.ndim == 2 else a[0], b[0])[None]
    _load_blas()
    a, b = _blocks(a), _blocks(b)
    if b.ndim == 3:                                 # a stack times a stack, or one matrix times a stack
        out = np.empty((stack, m, n), dtype=a.dtype)
        _threads.spread(_stack, np.broadcast_to(a, (stack, m, k)), b, out)
        return out
    if k >= 2 * (m + n) and _threads.num_threads() > 1:
        partial = np.empty((_threads.num_threads(), m, n), dtype=a.dtype)
        _threads.spread(_inner, a, b, partial)
        return partial.sum(axis=0)
    out = np.empty((m, n), dtype=a.dtype)
    _threads.spread(_outer, a, b, out)
    return out


def matmul_pair(a1, b1, a2, b2) -> tuple:
    """(a1 @ b1, a2 @ b2), the two products of a layer's backward (g W and g^T x). On minigen's threads two
    matrix products that are large together run at once, each on half the threads: at two threads one whole
    product on each, which runs at its full speed where a product cut in two does not (module docstring)."""
    if not (_threads.shared() and _splits(a1, b1) and _splits(a2, b2) and a1.ndim == b1.ndim == a2.ndim == b2.ndim == 2
            and a1.dtype == a2.dtype and 0 not in a1.shape + b1.shape + a2.shape + b2.shape
            and a1.shape[0] * a1.shape[1] * b1.shape[1] + a2.shape[0] * a2.shape[1] * b2.shape[1] > _SPLIT_MIN):
        return matmul(a1, b1), matmul(a2, b2)
    _load_blas()
    out1 = np.empty((a1.shape[0], b1.shape[1]), dtype=a1.dtype)
    out2 = np.empty((a2.shape[0], b2.shape[1]), dtype=a2.dtype)
    _threads.spread(_pair, _blocks(a1), _blocks(b1), out1, _blocks(a2), _blocks(b2), out2)
    return out1, out2
