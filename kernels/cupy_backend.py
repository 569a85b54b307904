"""CUDA kernels from ``kernels/cuda/*.cu``, compiled by NVRTC through CuPy and launched on CuPy arrays.

Two layers:

- ``CudaKernels`` is the array-level API shared by both CUDA backends (this one and ``numba_cuda``): it
  checks shapes, normalises arguments, allocates outputs and picks the launch geometry, then calls
  ``self.launch(family, name, dtype, grid, block, args, shared_mem)``. Kernel arguments are flat
  contiguous arrays and int32 scalars, in the order of the ``extern "C"`` entry points.
- ``RawKernels.launch`` finds ``{name}_{f32|f64}`` in the family's ``.cu`` file, compiled once per device.

Importing this module needs neither CuPy nor a GPU; CuPy is imported on the first call.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from ._geometry import check_channels, conv_out_size, conv_transpose_out_size, geometry

CUDA_DIR = Path(__file__).parent / "cuda"
FAMILIES = {"softmax": "softmax.cu", "conv": "conv.cu", "slogdet": "slogdet.cu"}
SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

# Launch geometry, mirrored by the constants at the top of each .cu file.
GEMM_THREADS, GEMM_TILE, NAIVE_TILE = 256, 64, 16
SOFTMAX_WARP_ROWS_MAX = 1024      # rows up to this length get one warp each, longer ones a block each
SOFTMAX_ROWS_PER_BLOCK, SOFTMAX_BLOCK = 4, 256
SLOGDET_SMALL_MAX, SLOGDET_MATS_PER_BLOCK, SLOGDET_LARGE_THREADS = 32, 4, 256
SPLIT_K_TARGET_BLOCKS = 256       # conv2d_weight splits its long K until about this many blocks run


def cuda_source(family: str) -> str:
    """The source of a family's .cu file with ``#include "common.cu"`` inlined, so that CuPy's kernel
    cache (keyed on the source text) sees every change."""
    common = (CUDA_DIR / "common.cu").read_text()
    return (CUDA_DIR / FAMILIES[family]).read_text().replace('#include "common.cu"', common)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def softmax_launch(rows: int, n: int):
    """(grid, block): one warp per row for short rows, one block of 256 threads per row for long ones."""
    if n <= SOFTMAX_WARP_ROWS_MAX:
        return (_cdiv(rows, SOFTMAX_ROWS_PER_BLOCK),), (32, SOFTMAX_ROWS_PER_BLOCK)
    return (rows,), (SOFTMAX_BLOCK, 1)


def gemm_launch(algorithm: str, m: int, n: int, batches: int):
    """(grid, block) covering an m x n output per group and split; blockIdx.z runs over groups * splits."""
    if algorithm == "gemm":
        return (_cdiv(n, GEMM_TILE), _cdiv(m, GEMM_TILE), batches), (GEMM_THREADS,)
    if algorithm == "naive":
        return (_cdiv(n, NAIVE_TILE), _cdiv(m, NAIVE_TILE), batches), (NAIVE_TILE, NAIVE_TILE)
    raise ValueError(f"unknown convolution algorithm {algorithm!r}: 'gemm' or 'naive'")


def split_k(m: int, n: int, k: int, groups: int) -> tuple[int, int]:
    """(splits, kchunk) for a GEMM with a long K: enough splits to fill about SPLIT_K_TARGET_BLOCKS blocks,
    each split at least a few tiles of K long; kchunk is a multiple of the 16-wide K step."""
    tiles = groups * _cdiv(m, GEMM_TILE) * _cdiv(n, GEMM_TILE)
    splits = max(1, min(_cdiv(SPLIT_K_TARGET_BLOCKS, tiles), k // (4 * 16)))
    kchunk = _cdiv(_cdiv(k, splits), 16) * 16
    return _cdiv(k, kchunk), kchunk


def _int32(*values):
    return tuple(np.int32(v) for v in values)


class CudaKernels:
    """The array-level kernel API over one set of CUDA kernels; subclasses define ``launch`` and ``xp``."""

    def xp(self, a):
        """The array module of ``a`` (CuPy here; NumPy too for numba.cuda, whose kernels take host arrays)."""
        raise NotImplementedError

    def launch(self, family, name, dtype, grid, block, args, shared_mem=0):
        raise NotImplementedError

    def _float(self, *arrays):
        """The arrays as contiguous arrays of their common float dtype (float32 or float64)."""
        xp = self.xp(arrays[0])
        dtype = np.result_type(*[a.dtype for a in arrays])
        if dtype not in SUFFIX:
            raise TypeError(f"CUDA kernels take float32 or float64 arrays, got {dtype}")
        return [xp.ascontiguousarray(xp.asarray(a), dtype=dtype) for a in arrays]

    # softmax family: rows along the last axis; any other axis is moved there (a copy) and back.
    def _rows(self, name, arrays, axis):
        xp = self.xp(arrays[0])
        rows_major = [xp.ascontiguousarray(xp.moveaxis(a, axis, -1)) for a in self._float(*arrays)]
        first = rows_major[0]
        out = xp.empty_like(first)
        if first.size:
            rows, n = first.size // first.shape[-1], first.shape[-1]
            grid, block = softmax_launch(rows, n)
            args = (*[a.ravel() for a in rows_major], out.ravel(), *_int32(rows, n))
            self.launch("softmax", name, first.dtype, grid, block, args)
        return xp.moveaxis(out, -1, axis)

    def softmax(self, x, axis=-1):
        return self._rows("softmax", [x], axis)

    def log_softmax(self, x, axis=-1):
        return self._rows("log_softmax", [x], axis)

    def softmax_backward(self, y, gy, axis=-1):
        return self._rows("softmax_backward", [y, gy], axis)

    def log_softmax_backward(self, y, gy, axis=-1):
        return self._rows("log_softmax_backward", [y, gy], axis)

    # convolutions: implicit GEMMs over (p, q, bias, out) with the geometry as int32 scalars; they keep no
    # im2col columns, so conv2d leaves `saved` empty
    def _gemm(self, op, algorithm, p, q, bias, out, geom, m, n, k, splits=1, kchunk=None):
        groups = geom[-1]
        grid, block = gemm_launch(algorithm, m, n, groups * splits)
        args = (p.ravel(), q.ravel(), bias.ravel(), out.ravel(), *_int32(*geom, kchunk or k))
        self.launch("conv", f"{op}_{algorithm}", p.dtype, grid, block, args)

    def _bias(self, b, o, like):
        xp = self.xp(like)
        return xp.zeros(o, like.dtype) if b is None else self._float(xp.asarray(b, like.dtype))[0]

    def conv2d(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1, saved=None, *, algorithm="gemm"):
        g = geometry(w.shape[2:], stride, padding, dilation, groups)
        x, w = self._float(x, w)
        n, c, h, wd = x.shape
        cg, og = check_channels(c, w.shape, g, transposed=False)
        ho, wo = conv_out_size(h, wd, g)
        y = self.xp(x).empty((n, og * g.groups, ho, wo), x.dtype)
        geom = (n, c, h, wd, og * g.groups, ho, wo, *g.kernel, *g.stride, *g.padding, *g.dilation, g.groups)
        if y.size:
            self._gemm("conv2d", algorithm, x, w, self._bias(b, y.shape[1], x), y, geom,
                       og, n * ho * wo, cg * g.kernel[0] * g.kernel[1])
        return y

    def conv_transpose2d(self, x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                         *, algorithm="gemm"):
        g = geometry(w.shape[2:], stride, padding, dilation, groups)
        x, w = self._float(x, w)
        n, c, h, wd = x.shape
        cg, og = check_channels(c, w.shape, g, transposed=True)
        ho, wo = conv_transpose_out_size(h, wd, g, output_padding)
        y = self.xp(x).empty((n, og * g.groups, ho, wo), x.dtype)
        geom = (n, c, h, wd, og * g.groups, ho, wo, *g.kernel, *g.stride, *g.padding, *g.dilation, g.groups)
        if y.size:
            self._gemm("conv_transpose2d", algorithm, x, w, self._bias(b, y.shape[1], x), y, geom,
                       og, n * ho * wo, cg * g.kernel[0] * g.kernel[1])
        return y

    def conv2d_weight(self, x, gy, kernel_size, stride=1, padding=0, dilation=1, groups=1, saved=None, *,
                      algorithm="gemm"):
        g = geometry(kernel_size, stride, padding, dilation, groups)
        x, gy = self._float(x, gy)
        xp = self.xp(x)
        n, c, h, wd = x.shape
        o = gy.shape[1]
        ho, wo = conv_out_size(h, wd, g)
        if gy.shape != (n, o, ho, wo) or c % g.groups or o % g.groups:
            raise ValueError(f"gy {gy.shape} does not match x {x.shape} and geometry {g}")
        og, cg = o // g.groups, c // g.groups
        m, cols, k = og, cg * g.kernel[0] * g.kernel[1], n * ho * wo
        splits, kchunk = split_k(m, cols, k, g.groups) if algorithm == "gemm" else (1, k)
        partial = xp.empty((splits, o, cols), x.dtype)
        geom = (n, c, h, wd, o, ho, wo, *g.kernel, *g.stride, *g.padding, *g.dilation, g.groups)
        if partial.size and k:
            self._gemm("conv2d_weight", algorithm, x, gy, x, partial, geom, m, cols, k, splits, kchunk)
        else:
            partial[...] = 0
        return partial.sum(axis=0).reshape(o, cg, *g.kernel)

    def inv(self, a, factors=None):
        """The inverse slogdet's gradient needs: the array library's batched LU solve (cuSOLVER on a GPU);
        slogdet keeps no factors, so `factors` is always None."""
        return self.xp(a).linalg.inv(a)

    # batched slogdet
    def slogdet(self, a, keep_factors=False):
        """(sign, log|det a|); the kernels keep no factors: keep_factors gives None as the third item."""
        (a,) = self._float(a)
        xp = self.xp(a)
        *batch_shape, n, n2 = a.shape
        if n != n2:
            raise ValueError(f"slogdet needs square matrices, got shape {a.shape}")
        batch = math.prod(batch_shape)
        sign, logabs = xp.ones(batch, a.dtype), xp.zeros(batch, a.dtype)
        if batch and n <= SLOGDET_SMALL_MAX and n:
            grid, block = (_cdiv(batch, SLOGDET_MATS_PER_BLOCK),), (32, SLOGDET_MATS_PER_BLOCK)
            shared = SLOGDET_MATS_PER_BLOCK * n * (n | 1) * a.dtype.itemsize
            self.launch("slogdet", "slogdet_small", a.dtype, grid, block,
                        (a.ravel(), sign, logabs, *_int32(batch, n)), shared)
        elif batch and n:
            work = a.copy()
            self.launch("slogdet", "slogdet_large", a.dtype, (batch,), (SLOGDET_LARGE_THREADS,),
                        (work.ravel(), sign, logabs, *_int32(n)))
        return (sign.reshape(batch_shape), logabs.reshape(batch_shape)) + ((None,) if keep_factors else ())


@functools.lru_cache(maxsize=None)
def _module(family: str, device_id: int):
    """One RawModule per (.cu file, device); NVRTC runs once, on the first kernel fetched from it."""
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=cuda_source(family), options=("--std=c++17",))


class RawKernels(CudaKernels):
    """The .cu kernels launched through ``cupy.RawModule`` on the current CuPy device and stream."""

    def xp(self, a):
        import cupy

        return cupy

    def launch(self, family, name, dtype, grid, block, args, shared_mem=0):
        import cupy

        kernel = _module(family, cupy.cuda.Device().id).get_function(f"{name}_{SUFFIX[np.dtype(dtype)]}")
        kernel(grid, block, args, shared_mem=shared_mem)


_kernels = RawKernels()
conv2d = _kernels.conv2d
conv_transpose2d = _kernels.conv_transpose2d
conv2d_weight = _kernels.conv2d_weight
softmax = _kernels.softmax
log_softmax = _kernels.log_softmax
softmax_backward = _kernels.softmax_backward
log_softmax_backward = _kernels.log_softmax_backward
slogdet = _kernels.slogdet
inv = _kernels.inv
