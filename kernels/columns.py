"""im2col convolutions a block of images at a time, each block's columns written and multiplied while in cache.

A whole-batch im2col writes its columns to memory and the GEMM reads them back: for DCGAN's 64 -> 128 critic
layer (4x4 kernel, stride 2, batch 64) that is 12.8 MB of columns for a 7.7 ms GEMM, plus a padded channels-last
copy of the input. Here each thread takes a few images at a time (BLOCK_BYTES of columns, which stay in its L2
cache), gathers their windows straight from the unpadded channels-last input (zeros where a window reads
padding) and multiplies them by one BLAS call into their rows of the output. The weight gradient gathers the
same blocks again, each thread summing gy_block^T @ columns into a partial of its own (beta = 1), rather than
keeping the forward's columns; the transposed convolution multiplies first, a block of images at a time, and
scatters each image's taps into its output (scatter, which cpu._col2im shares).

Measured in one process, old (whole-batch im2col / col2im) and new alternating call by call, 60 calls each
(Intel Xeon, AVX-512), new / old time at 1 and 2 threads: conv 64 -> 128 on 14x14 forward 0.91 / 0.88,
forward+backward 0.88 / 0.90; transposed conv 128 -> 64 from 7x7 forward 0.83 / 0.93, forward+backward 0.89 /
0.93; whole DCGAN steps 0.89 / 0.86, WGAN-GP critic steps 0.88 / 0.80-0.85. Blocks of 256 KiB measured
0.92-1.0, of 1-2 MiB 0.85-1.0. Below 16 input channels a window row is too short a copy to pay: conv2d from 1,
3, 8 channels (4x4, stride 2, 28x28) took 2.4, 2.0, 1.25 times the whole-batch path's time at 1 thread, from
16 channels 0.98, from 32 0.76. These figures predate the unsigned-index copy (_copy); with it, conv 64 -> 128
forward 0.84-0.86 / 0.89-0.91 of the whole-batch time, and within 1.2x of its GEMM alone on channels-last input
(8.3 against 7.1 ms at 1 thread, 4.2 against 4.1 at 2). On an AMD EPYC (Zen 3, 512 KiB of L2 a core) blocks of
2 MiB took 0.84-0.89 of 512 KiB's time in these forward and transposed convolutions alone, but whole DCGAN and
WGAN-GP steps 0.98 of it at 1 thread and 1.10 at 2 (in-process A/B, 40 steps each): 512 KiB stays.
"""
from __future__ import annotations

import numba
import numpy as np

from . import _threads, gemm
from .gemm import _gemm

BLOCK_BYTES = 1 << 19
MIN_CHANNELS = 16


@numba.njit(inline="always")
def _copy(dst, o, src, s, run):
    """dst[o:o + run] = src[s:s + run] (src None: zeros), flat arrays. Unsigned indices spare Numba's check for
    negative ones, which kept LLVM from vectorizing the loop: a block of DCGAN's columns (2 images, 400 KB)
    gathered in 24 us, against 46-77 us by slice assignment."""
    o, s = np.uint64(o), np.uint64(s)
    for t in range(np.uint64(run)):
        dst[o + t] = 0 if src is None else src[s + t]


@numba.njit(inline="always")
def _gather(x, cols, n0, n1, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """cols[(n - n0, r, c), (i, j, ch)] = x[n, r*sh + i*dh - ph, c*sw + j*dw - pw, ch] for images n0 .. n1-1, zero
    where the window reads padding; x channels-last (N, H, W, C) and C-contiguous, cols C-contiguous. A window
    row inside x is one copy of kw*C numbers when undilated."""
    _, H, W, C = x.shape
    xf, out, k, run = x.reshape(-1), cols.reshape(-1), cols.shape[1], kw * C
    for n in range(n0, n1):
        for r in range(ho):
            for c in range(wo):
                w0, row = c * sw - pw, (((n - n0) * ho + r) * wo + c) * k
                whole = dw == 1 and w0 >= 0 and w0 + kw <= W
                for i in range(kh):
                    h, o = r * sh + i * dh - ph, row + i * run
                    if h < 0 or h >= H:
                        _copy(out, o, None, 0, run)
                    elif whole:
                        _copy(out, o, xf, ((n * H + h) * W + w0) * C, run)
                    else:
                        for j in range(kw):
                            w = w0 + j * dw
                            inside = 0 <= w < W
                            _copy(out, o + j * C, xf if inside else None, ((n * H + h) * W + w) * C, C)


@numba.njit(inline="always")
def scatter(cols, y, sh, sw, ph, pw, dh, dw):
    """y = the sum of cols[h, w, i, j, :] at y[h*sh + i*dh - ph, w*sw + j*dw - pw, :] over inputs (h, w) and taps
    (i, j) that land inside y: one image of a transposed convolution, channels-last, read once in order while
    the image summed into stays in cache."""
    H, W, KH, KW, O = cols.shape
    Ho, Wo = y.shape[0], y.shape[1]
    y[:] = 0
    for h in range(H):
        for i in range(KH):
            r = h * sh + i * dh - ph
            if r < 0 or r >= Ho:
                continue
            for w in range(W):
                for j in range(KW):
                    c = w * sw + j * dw - pw
                    if 0 <= c < Wo:
                        for o in range(O):
                            y[r, c, o] += cols[h, w, i, j, o]


@_threads.parallel(cache=False)
def _forward(x, wm, out, cols, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """out[rows of images n0 .. n1-1] = columns of those images @ wm, a block per step of each thread."""
    parts, rows = cols.shape[0], ho * wo
    per_block, n = cols.shape[1] // rows, x.shape[0]
    for p in numba.prange(parts):
        for t in range(p, (n + per_block - 1) // per_block, parts):
            n0, n1 = t * per_block, min(n, (t + 1) * per_block)
            _gather(x, cols[p], n0, n1, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
            _gemm(cols[p, :(n1 - n0) * rows], wm, out[n0 * rows:n1 * rows], 1.0, 0.0)


@_threads.parallel(cache=False)
def _weight(x, gy, partial, cols, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """partial[p] = the sum over thread p's blocks of gy[block rows]^T @ columns of the block."""
    parts, rows = cols.shape[0], ho * wo
    per_block, n = cols.shape[1] // rows, x.shape[0]
    for p in numba.prange(parts):
        beta = 0.0
        for t in range(p, (n + per_block - 1) // per_block, parts):
            n0, n1 = t * per_block, min(n, (t + 1) * per_block)
            _gather(x, cols[p], n0, n1, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
            _gemm(gy[n0 * rows:n1 * rows].T, cols[p, :(n1 - n0) * rows], partial[p], 1.0, beta)
            beta = 1.0
        if beta == 0.0:          # a thread left without a block
            partial[p] = 0


@_threads.parallel(cache=False)
def _transpose(x, wm, y, cols, kh, kw, sh, sw, ph, pw, dh, dw):
    """y[n] = the scatter of (x[n] as rows) @ wm, for a block of images per GEMM."""
    parts, (n, h, w, c) = cols.shape[0], x.shape
    rows, o = h * w, y.shape[3]
    per_block, xm = cols.shape[1] // rows, x.reshape(-1, c)
    for p in numba.prange(parts):
        for t in range(p, (n + per_block - 1) // per_block, parts):
            n0, n1 = t * per_block, min(n, (t + 1) * per_block)
            _gemm(xm[n0 * rows:n1 * rows], wm, cols[p, :(n1 - n0) * rows], 1.0, 0.0)
            for k in range(n0, n1):
                image = cols[p, (k - n0) * rows:(k - n0 + 1) * rows].reshape(h, w, kh, kw, o)
                scatter(image, y[k], sh, sw, ph, pw, dh, dw)


def _scratch(n, rows, k, dtype):
    """Each thread's block of columns: as many whole images (`rows` rows of k each) as fit BLOCK_BYTES, at least
    one, and no more than gives every thread a block."""
    parts = numba.get_num_threads()
    per_block = max(1, min(-(-n // parts), BLOCK_BYTES // (rows * k * np.dtype(dtype).itemsize)))
    gemm._load_blas()
    return np.empty((parts, per_block * rows, k), dtype)


def conv2d(x, wm, g, ho, wo):
    """x (N, H, W, C) channels-last, C-contiguous; wm (kh*kw*C, O) -> y (N*Ho*Wo, O), rows (n, r, c)."""
    out = np.empty((x.shape[0] * ho * wo, wm.shape[1]), x.dtype)
    cols = _scratch(x.shape[0], ho * wo, wm.shape[0], x.dtype)
    _threads.spread(_forward, x, wm, out, cols, ho, wo, *g.kernel, *g.stride, *g.padding, *g.dilation)
    return out


def conv2d_weight(x, gy, g, ho, wo):
    """x (N, H, W, C) and gy (N*Ho*Wo, O), both C-contiguous -> dw (O, kh*kw*C), columns (i, j, c)."""
    k = g.kernel[0] * g.kernel[1] * x.shape[3]
    cols = _scratch(x.shape[0], ho * wo, k, x.dtype)
    partial = np.empty((cols.shape[0], gy.shape[1], k), x.dtype)
    _threads.spread(_weight, x, gy, partial, cols, ho, wo, *g.kernel, *g.stride, *g.padding, *g.dilation)
    return partial[0] if partial.shape[0] == 1 else partial.sum(axis=0)


def conv_transpose2d(x, wm, g, ho, wo):
    """x (N, H, W, C) C-contiguous; wm (C, kh*kw*O), columns (i, j, o) -> y (N, Ho, Wo, O)."""
    (n, h, w, _), (kh, kw) = x.shape, g.kernel
    y = np.empty((n, ho, wo, wm.shape[1] // (kh * kw)), x.dtype)
    cols = _scratch(n, h * w, wm.shape[1], x.dtype)
    _threads.spread(_transpose, x, wm, y, cols, kh, kw, *g.stride, *g.padding, *g.dilation)
    return y
