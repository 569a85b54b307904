"""The CUDA kernels of ``kernels/cuda/*.cu`` written again in ``numba.cuda``, same algorithms, same launches.

Each kernel's algorithm is described once, at the top of its .cu file; the comments here only point out
what differs. The array-level API (argument checks, output allocation, launch geometry) is
``cupy_backend.CudaKernels``; this module supplies ``launch``, which compiles a kernel per dtype on first use
(no signatures at import, so importing needs no GPU and no CUDA toolkit). Kernels take CuPy arrays on a GPU,
and NumPy arrays under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

Warp primitives go through ``shfl_xor`` (which exchanges a pair of values) and ``warp_sync``. The simulator
has neither shuffles nor ``syncwarp``, so there they become a shared-memory exchange between two
``syncthreads``. That stand-in is a
block-wide barrier: every live thread of a block must reach the same sequence of warp primitives, which the
kernels below respect (threads only leave early a whole warp or block at a time).
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

from .cupy_backend import CudaKernels, GEMM_THREADS, GEMM_TILE, SLOGDET_LARGE_THREADS

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
FULL_MASK = 0xFFFFFFFF
TILE_K, MICRO = 16, 4  # GEMM: K step, and each thread's MICRO x MICRO outputs (conv.cu)
A_TILE_LD = GEMM_TILE + 1  # row length of the A tile in shared memory, padded as in conv.cu

if SIMULATOR:
    @cuda.jit(device=True)
    def shfl_xor(a, b, offset):
        """Stand-in for two __shfl_xor_sync: swap (a, b) through shared memory with thread id ^ offset."""
        exchange = cuda.shared.array((2, 1024), np.float64)
        t = cuda.threadIdx.x + cuda.blockDim.x * cuda.threadIdx.y
        cuda.syncthreads()
        exchange[0, t], exchange[1, t] = a, b
        cuda.syncthreads()
        return type(a)(exchange[0, t ^ offset]), type(b)(exchange[1, t ^ offset])

    @cuda.jit(device=True)
    def warp_sync():
        cuda.syncthreads()
else:
    @cuda.jit(device=True)
    def shfl_xor(a, b, offset):
        """The pair (a, b) of the lane whose index differs by offset (xor)."""
        return cuda.shfl_xor_sync(FULL_MASK, a, offset), cuda.shfl_xor_sync(FULL_MASK, b, offset)

    @cuda.jit(device=True)
    def warp_sync():
        cuda.syncwarp(FULL_MASK)


@cuda.jit(device=True)
def warp_argmax(value, index):
    """(value, index) of the warp's largest value, ties to the smaller index, in every lane."""
    offset = 16
    while offset > 0:
        other_value, other_index = shfl_xor(value, index, offset)
        if other_value > value or (other_value == value and other_index < index):
            value, index = other_value, other_index
        offset //= 2
    return value, index


# ---------------------------------------------------------------------------------------------- softmax
# A row reduction carries a pair (a, b): (running max, sum of exp(x - max)) for the forward pass, (sum, unused)
# for the backward pass; `merge` combines two pairs.

@cuda.jit(device=True)
def _merge_max_sum(m1, s1, m2, s2):
    m = max(m1, m2)
    if m == -math.inf:
        return m, s1
    return m, s1 * math.exp(m1 - m) + s2 * math.exp(m2 - m)


@cuda.jit(device=True)
def _merge_sum(a1, b1, a2, b2):
    return a1 + a2, b1


@functools.lru_cache(maxsize=None)
def _row_allreduce(merge, identity, dtype):
    """Device function reducing a pair over the blockDim.x threads of a row (row_allreduce in softmax.cu);
    (identity, 0) is the pair that merges as a no-op."""
    ty = numba.from_dtype(dtype)

    @cuda.jit(device=True)
    def row_allreduce(a, b):
        offset = 16
        while offset > 0:
            other_a, other_b = shfl_xor(a, b, offset)
            a, b = merge(a, b, other_a, other_b)
            offset //= 2
        if cuda.blockDim.x == 32:
            return a, b
        partial = cuda.shared.array((2, 32), ty)
        lane, warp = cuda.threadIdx.x % 32, cuda.threadIdx.x // 32
        if lane == 0:
            partial[0, warp], partial[1, warp] = a, b
        cuda.syncthreads()
        if lane < cuda.blockDim.x // 32:
            a, b = partial[0, lane], partial[1, lane]
        else:
            a, b = ty(identity), ty(0)
        offset = 16
        while offset > 0:
            other_a, other_b = shfl_xor(a, b, offset)
            a, b = merge(a, b, other_a, other_b)
            offset //= 2
        return a, b

    return row_allreduce


@functools.lru_cache(maxsize=None)
def _softmax_kernel(log, dtype):
    ty = numba.from_dtype(dtype)
    reduce = _row_allreduce(_merge_max_sum, -math.inf, dtype)

    @cuda.jit
    def softmax(x, y, rows, n):
        row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if row >= rows:
            return
        base = row * n
        m, s = ty(-math.inf), ty(0)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            v = x[base + j]
            if v > m:
                s, m = s * math.exp(m - v) + ty(1), v
            elif v != -math.inf:
                s += math.exp(v - m)
        m, s = reduce(m, s)
        log_s = math.log(s) if log else ty(0)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            y[base + j] = x[base + j] - m - log_s if log else math.exp(x[base + j] - m) / s

    return softmax


@functools.lru_cache(maxsize=None)
def _softmax_backward_kernel(log, dtype):
    ty = numba.from_dtype(dtype)
    reduce = _row_allreduce(_merge_sum, 0.0, dtype)

    @cuda.jit
    def softmax_backward(y, gy, gx, rows, n):
        row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if row >= rows:
            return
        base = row * n
        s = ty(0)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            s += gy[base + j] if log else gy[base + j] * y[base + j]
        s, _ = reduce(s, ty(0))
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            i = base + j
            gx[i] = gy[i] - math.exp(y[i]) * s if log else y[i] * (gy[i] - s)

    return softmax_backward


# ------------------------------------------------------------------------------------------ convolutions
# Implicit GEMMs, as in conv.cu: an op is four device functions over the geometry tuple
# g = (n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups):
#   dims(g) -> (M, N, K) per group;  a(p, q, g, group, m, k);  b(p, q, g, group, k, col);
#   store(out, bias, g, group, split, m, col, v).

@cuda.jit(device=True)
def _pixel(g, p):
    """Output position p -> (image, oh, ow)."""
    return p // (g[5] * g[6]), p // g[6] % g[5], p % g[6]


@cuda.jit(device=True)
def _tap(g, k):
    """Filter index k -> (channel within the group, i, j)."""
    return k // (g[7] * g[8]), k // g[8] % g[7], k % g[8]


@cuda.jit(device=True)
def _im2col(x, g, group, k, p):
    n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups = g
    ch, i, j = _tap(g, k)
    img, oh, ow = _pixel(g, p)
    ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
    if ih < 0 or ih >= h or iw < 0 or iw >= w:
        return 0.0
    return x[((img * c + group * (c // groups) + ch) * h + ih) * w + iw]


@cuda.jit(device=True)
def _store_nchw(y, bias, g, group, split, m, p, v):
    img, oh, ow = _pixel(g, p)
    ch = group * (g[4] // g[15]) + m
    y[((img * g[4] + ch) * g[5] + oh) * g[6] + ow] = v + bias[ch]


@cuda.jit(device=True)
def _conv2d_dims(g):
    return g[4] // g[15], g[0] * g[5] * g[6], g[1] // g[15] * g[7] * g[8]


@cuda.jit(device=True)
def _conv2d_a(x, w, g, group, m, k):
    og, _, kdim = _conv2d_dims(g)
    return w[(group * og + m) * kdim + k]


@cuda.jit(device=True)
def _conv2d_b(x, w, g, group, k, p):
    return _im2col(x, g, group, k, p)


@cuda.jit(device=True)
def _conv_transpose2d_a(x, w, g, group, m, k):
    og, taps = g[4] // g[15], g[7] * g[8]
    ch = group * (g[1] // g[15]) + k // taps
    return w[(ch * og + m) * taps + k % taps]


@cuda.jit(device=True)
def _conv_transpose2d_b(x, w, g, group, k, p):
    """x at the input pixel that tap k carries to output p: ih*sh = oh + ph - i*dh, if integral and inside."""
    n, c, h, wd, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups = g
    ch, i, j = _tap(g, k)
    img, oh, ow = _pixel(g, p)
    th, tw = oh + ph - i * dh, ow + pw - j * dw
    if th < 0 or tw < 0 or th % sh or tw % sw or th // sh >= h or tw // sw >= wd:
        return 0.0
    return x[((img * c + group * (c // groups) + ch) * h + th // sh) * wd + tw // sw]


@cuda.jit(device=True)
def _conv2d_weight_dims(g):
    return g[4] // g[15], g[1] // g[15] * g[7] * g[8], g[0] * g[5] * g[6]


@cuda.jit(device=True)
def _conv2d_weight_a(x, gy, g, group, m, p):
    img, oh, ow = _pixel(g, p)
    return gy[((img * g[4] + group * (g[4] // g[15]) + m) * g[5] + oh) * g[6] + ow]


@cuda.jit(device=True)
def _conv2d_weight_b(x, gy, g, group, p, k):
    return _im2col(x, g, group, k, p)


@cuda.jit(device=True)
def _conv2d_weight_store(dw, bias, g, group, split, m, k, v):
    og, cols, _ = _conv2d_weight_dims(g)
    dw[(split * g[4] + group * og + m) * cols + k] = v


_GEMM_OPS = {
    "conv2d": (_conv2d_dims, _conv2d_a, _conv2d_b, _store_nchw),
    "conv_transpose2d": (_conv2d_dims, _conv_transpose2d_a, _conv_transpose2d_b, _store_nchw),
    "conv2d_weight": (_conv2d_weight_dims, _conv2d_weight_a, _conv2d_weight_b, _conv2d_weight_store),
}


@functools.lru_cache(maxsize=None)
def _gemm_kernel(op, algorithm, dtype):
    """The tiled (gemm_tiled in conv.cu) or naive GEMM kernel for one op and dtype."""
    dims, load_a, load_b, store = _GEMM_OPS[op]
    ty = numba.from_dtype(dtype)
    naive = algorithm == "naive"
    if algorithm not in ("gemm", "naive"):
        raise ValueError(f"unknown convolution algorithm {algorithm!r}")

    @cuda.jit
    def gemm(p, q, bias, out, n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups, kchunk):
        g = (n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups)
        big_m, big_n, big_k = dims(g)
        group, split = cuda.blockIdx.z % groups, cuda.blockIdx.z // groups
        k_begin = split * kchunk
        k_end = min(big_k, k_begin + kchunk)
        if naive:
            m = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
            col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
            if m < big_m and col < big_n:
                acc = ty(0)
                for k in range(k_begin, k_end):
                    acc += ty(load_a(p, q, g, group, m, k)) * ty(load_b(p, q, g, group, k, col))
                store(out, bias, g, group, split, m, col, acc)
            return
        a_tile = cuda.shared.array((TILE_K, A_TILE_LD), ty)
        b_tile = cuda.shared.array((TILE_K, GEMM_TILE), ty)
        acc = cuda.local.array((MICRO, MICRO), ty)
        a, b = cuda.local.array(MICRO, ty), cuda.local.array(MICRO, ty)
        for i in range(MICRO):
            for j in range(MICRO):
                acc[i, j] = 0
        tid = cuda.threadIdx.x
        tcol, trow = tid % 16, tid // 16
        m0, n0 = cuda.blockIdx.y * GEMM_TILE, cuda.blockIdx.x * GEMM_TILE
        for k0 in range(k_begin, k_end, TILE_K):
            for r in range(GEMM_TILE * TILE_K // GEMM_THREADS):
                e = tid + r * GEMM_THREADS
                am, ak, bk, bn = e // TILE_K, e % TILE_K, e // GEMM_TILE, e % GEMM_TILE
                a_tile[ak, am] = (load_a(p, q, g, group, m0 + am, k0 + ak)
                                  if m0 + am < big_m and k0 + ak < k_end else 0)
                b_tile[bk, bn] = (load_b(p, q, g, group, k0 + bk, n0 + bn)
                                  if n0 + bn < big_n and k0 + bk < k_end else 0)
            cuda.syncthreads()
            for kk in range(TILE_K):
                for i in range(MICRO):
                    a[i], b[i] = a_tile[kk, trow + 16 * i], b_tile[kk, tcol + 16 * i]
                for i in range(MICRO):
                    for j in range(MICRO):
                        acc[i, j] += a[i] * b[j]
            cuda.syncthreads()
        for i in range(MICRO):
            for j in range(MICRO):
                m, col = m0 + trow + 16 * i, n0 + tcol + 16 * j
                if m < big_m and col < big_n:
                    store(out, bias, g, group, split, m, col, acc[i, j])

    return gemm


# ------------------------------------------------------------------------------------------------ slogdet
# As slogdet.cu, except that log|det| is summed pivot by pivot inside the loop (slogdet.cu sums over U's
# diagonal after it, to keep slow-path calls out of the hot loop; Numba's code is not checked for spills).

@cuda.jit(device=True)
def _pivot(sign, logabs, u, swapped):
    if swapped:
        sign = -sign
    if u < 0:
        sign = -sign
    return sign, logabs + math.log(abs(u))


@functools.lru_cache(maxsize=None)
def _slogdet_small_kernel(dtype):
    ty = numba.from_dtype(dtype)

    @cuda.jit
    def slogdet_small(src, sign, logabs, batch, n):
        mat = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if mat >= batch:
            return
        lane, ld = cuda.threadIdx.x, n | 1
        a = cuda.shared.array(0, ty)
        base = cuda.threadIdx.y * n * ld
        for e in range(lane, n * n, 32):
            a[base + e // n * ld + e % n] = src[mat * n * n + e]
        warp_sync()
        s, la = ty(1), ty(0)
        for k in range(n):
            best = abs(a[base + lane * ld + k]) if k <= lane < n else ty(-1)
            best, p = warp_argmax(best, lane)
            if best == 0:
                s, la = ty(0), ty(-math.inf)
                break
            if p != k and k <= lane < n:
                a[base + k * ld + lane], a[base + p * ld + lane] = a[base + p * ld + lane], a[base + k * ld + lane]
            warp_sync()
            u = a[base + k * ld + k]
            inv_u = 1 / u
            s, la = _pivot(s, la, u, p != k)
            if k < lane < n:
                for i in range(k + 1, n):
                    a[base + i * ld + lane] -= a[base + i * ld + k] * inv_u * a[base + k * ld + lane]
            warp_sync()
        if lane == 0:
            sign[mat], logabs[mat] = s, la

    return slogdet_small


@functools.lru_cache(maxsize=None)
def _slogdet_large_kernel(dtype):
    ty = numba.from_dtype(dtype)
    warps = SLOGDET_LARGE_THREADS // 32

    @cuda.jit
    def slogdet_large(a, sign, logabs, n):
        best_v = cuda.shared.array(32, ty)
        best_i = cuda.shared.array(32, np.int32)
        base = cuda.blockIdx.x * n * n
        tid = cuda.threadIdx.x
        lane, warp = tid % 32, tid // 32
        s, la = ty(1), ty(0)
        for k in range(n):
            best, p = ty(-1), k
            for i in range(k + tid, n, SLOGDET_LARGE_THREADS):
                v = abs(a[base + i * n + k])
                if v > best:
                    best, p = v, i
            best, p = warp_argmax(best, p)  # block argmax: per warp, then across the warps' winners
            if lane == 0:
                best_v[warp], best_i[warp] = best, p
            cuda.syncthreads()
            best, p = (best_v[lane], best_i[lane]) if lane < warps else (ty(-1), 0)
            best, p = warp_argmax(best, p)
            cuda.syncthreads()
            if best == 0:
                s, la = ty(0), ty(-math.inf)
                break
            if p != k:
                for j in range(k + tid, n, SLOGDET_LARGE_THREADS):
                    a[base + k * n + j], a[base + p * n + j] = a[base + p * n + j], a[base + k * n + j]
            cuda.syncthreads()
            u = a[base + k * n + k]
            inv_u = 1 / u
            s, la = _pivot(s, la, u, p != k)
            for i in range(k + 1 + warp, n, warps):
                l_ik = a[base + i * n + k] * inv_u
                for j in range(k + 1 + lane, n, 32):
                    a[base + i * n + j] -= l_ik * a[base + k * n + j]
            cuda.syncthreads()
        if tid == 0:
            sign[cuda.blockIdx.x], logabs[cuda.blockIdx.x] = s, la

    return slogdet_large


def kernel(name: str, dtype):
    """The numba.cuda kernel behind a .cu entry point name (without its _f32/_f64 suffix)."""
    dtype = np.dtype(dtype)
    if name.endswith("softmax"):
        return _softmax_kernel(name.startswith("log"), dtype)
    if name.endswith("softmax_backward"):
        return _softmax_backward_kernel(name.startswith("log"), dtype)
    if name == "slogdet_small":
        return _slogdet_small_kernel(dtype)
    if name == "slogdet_large":
        return _slogdet_large_kernel(dtype)
    op, algorithm = name.rsplit("_", 1)
    return _gemm_kernel(op, algorithm, dtype)


class NumbaKernels(CudaKernels):
    """The array-level API (cupy_backend.CudaKernels) launching the kernels above."""

    def xp(self, a):
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
        return np

    def launch(self, family, name, dtype, grid, block, args, shared_mem=0):
        kernel(name, dtype)[grid, block, 0, shared_mem](*args)


_kernels = NumbaKernels()
conv2d = _kernels.conv2d
conv_transpose2d = _kernels.conv_transpose2d
conv2d_weight = _kernels.conv2d_weight
softmax = _kernels.softmax
log_softmax = _kernels.log_softmax
softmax_backward = _kernels.softmax_backward
log_softmax_backward = _kernels.log_softmax_backward
slogdet = _kernels.slogdet
inv = _kernels.inv
