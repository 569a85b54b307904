"""The fastest CPU kernels we measured on a 2-core AVX-512 machine (see benchmarks/results/kernels_cpu.md).

Convolutions are GEMMs over NumPy strided views (im2col): the padded input is copied once to
channels-last (NHWC), a zero-copy ``as_strided`` view lists every kernel window, and one BLAS GEMM per
group contracts windows with the weight. Channels-last won over NCHW im2col (contiguous channel runs make
the window copy ~2x cheaper) and over per-tap "shifted" GEMMs (K = C is too small for BLAS to run at speed).
Ungrouped layers from 16 input channels gather the same columns a block of images at a time instead, each
block multiplied while in cache (columns.py: DCGAN's 4x4 stride-2 layers 0.83-0.93 of the time); layers of at
most 4 input channels (an image's own) gather theirs per image from NCHW, in runs of a whole output row
(_image_columns).
3x3 stride-1 layers of 16 channels or more go to Winograd's F(4x4, 3x3) instead (winograd.py: 0.25x the
multiply-adds and no 9-fold copy), and 4x4 stride-2 layers (DCGAN's) of 32 channels or more, split into four
phases of a 2x2 stride-1 layer, to F(4x4, 2x2) (_phase_padded: 0.39x the multiply-adds); 1x1 layers are a
GEMM over the channels in the input's own layout, no copy.
The transposed convolution runs the GEMM first and then scatters each tap's block back (col2im, a Numba loop
per image; ungrouped, a block of images per GEMM, columns.py), instead of convolving a dilated input of zeros;
so do stride-1 layers with few output channels (_taps: Glow's 64 -> 4 coupling output, 2.3-2.8x faster than
im2col).

Softmax and the batched small LU are Numba kernels, parallel over rows / matrices: a row or a matrix
stays in cache while it is reduced and written, where NumPy makes one pass over memory per ufunc.
Softmax's exp is written out in float32 arithmetic so that LLVM vectorizes it.
Large matrices (n > _LU_MAX_N) go to lu.py's blocked LU, whose flops are mostly BLAS GEMMs.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _threads, columns, gemm, lu, norm, reference, winograd
from ._fastmath import FASTMATH, exp, parallel_fastmath, wide_vectors
from .layout import channels_last, padded_nhwc
from ._threads import PARALLEL_MIN_SIZE as _PARALLEL_MIN_SIZE
from ._threads import parallel
from ._geometry import check_channels, conv_out_size, conv_transpose_out_size, geometry


# ---------------------------------------------------------------------------------------------- convolution

def _im2col(x, g, ho, wo):
    """Windows of x as a (groups, N*Ho*Wo, kh*kw*C/groups) array: row (n, ho, wo), column (i, j, c). Copied by
    NumPy from a strided view of the windows; where minigen's kernels share threads, by _windows in parallel
    (on one thread Numba's copy took 1.4-2.7x NumPy's time; on two, 0.63-0.82 of it, DCGAN's layers)."""
    xp = padded_nhwc(x, g.padding)
    if _threads.shared() and g.groups == 1 and xp.dtype in (np.float32, np.float64):
        cols = np.empty((1, x.shape[0] * ho * wo, g.kernel[0] * g.kernel[1] * x.shape[1]), x.dtype)
        _windows(xp, cols[0], ho, wo, *g.kernel, *g.stride, *g.dilation)
        return cols
    n, G, cg = x.shape[0], g.groups, x.shape[1] // g.groups
    sN, sH, sW, sC = xp.strides
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    windows = as_strided(xp, (G, n, ho, wo, kh, kw, cg),
                         (cg * sC, sN, sh * sH, sw * sW, dh * sH, dw * sW, sC), writeable=False)
    return windows.reshape(G, n * ho * wo, kh * kw * cg)


@parallel()
def _windows(xp, cols, ho, wo, kh, kw, sh, sw, dh, dw):
    """cols[(n, r, c), (i, j, ch)] = xp[n, r*sh + i*dh, c*sw + j*dw, ch], xp channels-last and C-contiguous:
    one slice copy per window row (kw*C numbers in a run when dw = 1), parallel over (n, r)."""
    n_images, rows, columns, channels = xp.shape
    x, out = xp.reshape(-1), cols.reshape(-1)
    run, runs = (kw * channels, 1) if dw == 1 else (channels, kw)
    for nr in numba.prange(n_images * ho):
        n, r = nr // ho, nr % ho
        o = nr * wo * cols.shape[1]
        for c in range(wo):
            for i in range(kh):
                for j in range(runs):
                    s = ((n * rows + r * sh + i * dh) * columns + c * sw + j * dw) * channels
                    out[o:o + run] = x[s:s + run]
                    o += run


# conv2d and its weight gradient both read x through the same transform: the im2col columns (sparing one
# copy of kh*kw/(sh*sw) times x per layer and step, DCGAN's 4x4 stride-2 layers) or Winograd's transformed
# tiles (one input transform of two). conv2d leaves it in the caller's dict `saved`, under the x, geometry and
# output size it belongs to; conv2d_weight takes it only for that same x (an array object), geometry and size
# (a transposed convolution's gradient can be cropped smaller than conv2d's output: a dilated output_padding).

def _save(saved, x, g, size, name, value):
    if saved is not None:
        saved.clear()
        saved.update(x=x, geometry=g, size=size, **{name: value})


def _saved(saved, x, g, size, name):
    """What conv2d of this same x, geometry and output size left in `saved` under `name`, else None."""
    if saved and saved.get("x") is x and saved.get("geometry") == g and saved.get("size") == size:
        return saved.get(name)
    return None


def _add_bias(y, b):
    """y + b over the channels, in place: y is always the convolution's own new array (in place saves
    0.1-0.3 ms of a new 2 MB array at 64 x 16 x 16 x 32)."""
    return y if b is None else norm.add_channels(y, b.astype(y.dtype, copy=False))


def _winograd_serves(g, x, og) -> bool:
    """Whether conv2d takes Winograd's F(4x4, 3x3): a 3x3 kernel at stride 1, undilated, ungrouped, with the
    channels (its GEMMs' inner and outer sizes) and the map large enough to pay for the transforms. Measured
    on one thread against im2col, forward and weight gradient together (batch 16-64, 8-28 pixels square, the
    range of 3-6 runs): Winograd's time 0.36-0.76 of im2col's at 64 channels, 0.37-0.67 at 32, 0.51-1.14 at
    16, 0.69-1.78 at 12."""
    n, c, h, w = x.shape
    return (g.kernel == (3, 3) and g.stride == g.dilation == (1, 1) and g.groups == 1 and min(c, og) >= 16
            and x.dtype in (np.float32, np.float64) and n * c * h * w >= _PARALLEL_MIN_SIZE)


def _phases_serve(g, c, og, x) -> bool:
    """Whether a layer goes by its phases to Winograd's F(4x4, 2x2) (_phase_padded, _phase_transpose): a 4x4
    kernel at stride 2 (DCGAN's layers), undilated, ungrouped, from 32 channels in and out (c and og: the
    convolution's, whichever way it runs), on a float x large enough to pay for the transforms. Measured in one
    process against the columns (columns.py), alternating, batch 64, AMD EPYC Zen 4, 1 / 2 threads, forward and
    backward together: 64 -> 128 (14x14) 0.76-0.78 / 0.84-0.86 of the time, transposed 128 -> 64 (7x7)
    0.74 / 0.89-0.90, 32 -> 64 0.82-0.90 / 0.91-1.01, transposed 64 -> 32 0.72-0.81 / 1.04-1.19, 16 -> 32 (28x28)
    1.06-1.13 / 1.03-1.28; the DCGAN step of benchmarks/training_steps.py (width 32) 0.90 / 0.99, WGAN-GP's
    critic step 0.94 / 0.94."""
    return (g.kernel == (4, 4) and g.stride == (2, 2) and g.dilation == (1, 1) and g.groups == 1
            and min(c, og) >= 32 and x.dtype in (np.float32, np.float64) and x.size >= _PARALLEL_MIN_SIZE)


def _phase_padded(x, padding, ho, wo):
    """A 4x4 stride-2 convolution is a 2x2 stride-1 one on the four phases of its padded input: with a = 2p + u,
    b = 2q + v, y[i, j] = sum over (u, v, c, p, q) of w[o, c, a, b] xp[2(i + p) + u, 2(j + q) + v, c]. So x
    (N, C, H, W) becomes X (N, H', W', 4C), X[n, i, j, (u, v, c)] = xp[n, 2i + u, 2j + v, c] for its zero-padded
    map xp, as many rows and columns as F(4x4, 2x2) reads for an (ho, wo) output; and the weight (O, C, 4, 4)
    becomes (2, 2, 4C, O) (_phase_weight). F(4x4, 2x2) then takes 25 products for every 16 outputs, where im2col
    takes 64 (DCGAN's 64 -> 128 layer, 14x14 -> 7x7: 3.1 outputs of 4 cropped, 0.51x the multiply-adds)."""
    n, c = x.shape[:2]
    rows, cols = winograd.padded_size(ho, wo, 2)
    phases = np.empty((n, rows, cols, 2, 2, c), dtype=x.dtype)
    _phase_copy(x.transpose(0, 2, 3, 1), phases, *padding, True)
    return phases.reshape(n, rows, cols, 4 * c)


@parallel()
def _phase_copy(image, phases, ph, pw, to_phases):
    """phases[n, i, j, u, v] = image[n, 2i + u - ph, 2j + v - pw] (a run of channels; zeros outside the image),
    or, not to_phases, the other way: image's pixels from their phases. image is (N, H, W, C): channels-last, or
    an NCHW array's transposed view, read across its strides (a row of the image, C x W numbers, stays in L1),
    in one pass where a copy to channels-last first made two: 0.46-0.74 of their time (DCGAN's 32 -> 64, 64 ->
    128 and 128 -> 64 inputs, batch 64, 1 and 2 threads, in one process). Parallel over rows of phases."""
    N, R, Q = phases.shape[:3]
    H, W, C = image.shape[1:]
    for ni in numba.prange(N * R):
        n, i = ni // R, ni % R
        for u in range(2):
            r = 2 * i + u - ph
            for j in range(Q):
                for v in range(2):
                    c = 2 * j + v - pw
                    inside = 0 <= r < H and 0 <= c < W
                    cell = phases[n, i, j, u, v]
                    if to_phases:
                        for k in range(C):
                            cell[k] = image[n, r, c, k] if inside else 0
                    elif inside:
                        for k in range(C):
                            image[n, r, c, k] = cell[k]


def _phase_weight(w, flip=False):
    """w (O, C, 4, 4) as (2, 2, 4C, O): [p, q, (u, v, c), o] = w[o, c, 2p + u, 2q + v]; or, flip, w (C, O, 4, 4)
    of a transposed convolution as (2, 2, C, 4O): [p, q, c, (u, v, o)] = w[c, o, 2(1 - p) + u, 2(1 - q) + v]."""
    a, b = w.shape[:2]
    w6 = w.reshape(a, b, 2, 2, 2, 2)            # [a, b, p, u, q, v]
    if flip:
        return w6[:, :, ::-1, :, ::-1].transpose(2, 4, 0, 3, 5, 1).reshape(2, 2, a, 4 * b)
    return w6.transpose(2, 4, 3, 5, 1, 0).reshape(2, 2, 4 * b, a)


def _phase_transpose(x, w, padding, ho, wo):
    """conv_transpose2d(x, w) for a 4x4 kernel at stride 2 (w (C, O, 4, 4)), cropped to (ho, wo) from `padding`,
    channels-last (N, ho, wo, O). By phases: output phase (u, v) of the padded output is a 2x2 stride-1
    convolution of x padded by 1 with the flipped weight (_phase_weight), so F(4x4, 2x2) computes all four
    phases as 4O channels, which are then interleaved."""
    n, c, h, wd = x.shape
    o = w.shape[1]
    hh, ww = (ho + padding[0] + 1) // 2, (wo + padding[1] + 1) // 2    # phase rows and columns to compute
    size = winograd.padded_size(hh, ww, 2)
    xp = padded_nhwc(x, (1, 1), (max(size[0], h + 2), max(size[1], wd + 2)))
    z = winograd.conv(xp, _phase_weight(w, flip=True), hh, ww)[0]
    y = np.empty((n, ho, wo, o), x.dtype)
    _phase_copy(y, z.reshape(n, hh, ww, 2, 2, o), *padding, False)
    return y


def _gemm_first_serves(g, x, og) -> bool:
    """Whether conv2d multiplies first and sums the taps after (_taps): at stride 1, ungrouped, with at least 4
    times as many input channels as output channels (Glow's coupling output 64 -> 4, and the input gradient
    of a 2 -> 64 layer), or twice as many on maps of 14x14 or more (the gated PixelCNN's 128 -> 64 (2, 3) and
    (1, 3) layers). im2col would copy kh*kw*C numbers per output pixel for a GEMM only Og columns wide;
    multiplying first writes kh*kw*Og per input pixel, and the GEMM is as large. Measured at C = 2 Og, one
    thread, forward / weight gradient against im2col: 0.35-0.94 / 0.57-1.01 of the time on 14x14 to 28x28 maps
    (kernels 5x5, (2, 3), (1, 3)), 0.96-1.45 on 7x7 maps (4x4, 2x2)."""
    c, pixels = x.shape[1], x.shape[2] * x.shape[3]
    return (g.stride == (1, 1) and g.groups == 1 and (4 * og <= c or 2 * og <= c and pixels >= 14 * 14)
            and x.dtype in (np.float32, np.float64))


def _blocks_serve(g, x) -> bool:
    """Whether conv2d and its weight gradient gather im2col columns a block of images at a time (columns.py)
    rather than for the whole batch: ungrouped, float, from MIN_CHANNELS input channels (below that a window row
    is too short a copy)."""
    return g.groups == 1 and x.shape[1] >= columns.MIN_CHANNELS and x.dtype in (np.float32, np.float64)


def _image_columns_serve(g, x) -> bool:
    """Whether conv2d and its weight gradient multiply per image by columns gathered from NCHW (_image_columns):
    ungrouped, float, at most 4 input channels (an image's own: DCGAN's, PixelCNN's and the conv VAE's first
    layers; Glow's coupling input), where channels-last im2col copies runs of kw*C numbers, one number for a
    one-channel image. In one process against im2col, alternating, AMD EPYC Zen 4, forward / forward and weight
    gradient, one thread (two): 1 -> 64 4x4 stride 2 (28x28, batch 64) 0.73 / 0.65 (0.71 / 0.61), 3 -> 64 0.76 /
    0.70 (0.72 / 0.61), 4 -> 64 0.90-1.03 / 0.83-0.85 (0.94 / 0.81); 1 -> 64 7x7 0.76 / 0.86 (0.87 / 0.86), 1 -> 32
    5x5 0.50 / 0.48 (0.55 / 0.49), 2 -> 64 3x3 0.65-0.85 / 0.54-0.66 (0.62 / 0.42), 3 -> 64 3x3 0.78-0.86 / 0.74-0.79
    (0.84 / 0.75), 4 -> 64 3x3 0.96 / 0.93-0.97 (1.00 / 0.81); from 6 channels 1.00-1.15 / 0.93-1.16 (one thread)."""
    return g.groups == 1 and x.shape[1] <= 4 and x.dtype in (np.float32, np.float64)


def _image_columns(x, g, ho, wo):
    """The windows of x as (N, C*kh*kw, Ho*Wo) columns, row (c, i, j) and column (ho, wo), from x zero-padded in
    NCHW: in runs of wo numbers by NumPy from a strided view, or by _image_windows in parallel over the images
    where minigen's kernels share threads."""
    (n, c, h, w), (ph, pw) = x.shape, g.padding
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    if _threads.shared():
        cols = np.empty((n, c * kh * kw, ho * wo), x.dtype)
        _image_windows(xp, cols, ho, wo, kh, kw, sh, sw, dh, dw)
        return cols
    sN, sC, sH, sW = xp.strides
    windows = as_strided(xp, (n, c, kh, kw, ho, wo), (sN, sC, dh * sH, dw * sW, sh * sH, sw * sW), writeable=False)
    return windows.reshape(n, c * kh * kw, ho * wo)


@parallel()
def _image_windows(xp, cols, ho, wo, kh, kw, sh, sw, dh, dw):
    """cols[n, (c, i, j), (r, q)] = xp[n, c, r*sh + i*dh, q*sw + j*dw], parallel over the images n."""
    n_images, channels = xp.shape[:2]
    for n in numba.prange(n_images):
        k = 0
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    for r in range(ho):
                        row, out = xp[n, c, r * sh + i * dh], cols[n, k, r * wo:(r + 1) * wo]
                        for q in range(wo):
                            out[q] = row[q * sw + j * dw]
                    k += 1


def _pointwise_serves(g) -> bool:
    """Whether conv2d is a product over channels alone (a 1x1 kernel at stride 1, unpadded, ungrouped): one
    GEMM per image on NCHW, (O, C) @ (C, H*W), or one GEMM on a channels-last view, (N*H*W, C) @ (C, O); no
    copy either way, where im2col copied the input to channels-last first."""
    return g.kernel == (1, 1) and g.stride == (1, 1) and g.padding == (0, 0) and g.groups == 1


def _per_image(x) -> bool:
    """Whether a 1x1 layer on x multiplies per image on NCHW: x is NCHW and its maps are large enough for
    GEMMs H*W wide. Below 16x16 a channels-last copy and one GEMM measured faster (7x7, 128 -> 384 channels,
    batch 64: per image 1.1-1.7x the time). A one-channel x is both layouts at once: it takes channels-last,
    the layout of every other convolution's output (the gradient of a one-channel output layer, so that the
    gradients it sends back do not meet channels-last ones as NCHW, each such sum a copy)."""
    return x.shape[1] > 1 and not channels_last(x) and x.shape[2] * x.shape[3] >= 256


def _pointwise(x, wm):
    """y[n, o] = sum over c of wm[o, c] x[n, c] for x (N, C, H, W), in x's layout."""
    n, c, h, w = x.shape
    if _per_image(x):
        return gemm.matmul(wm, x.reshape(n, c, h * w)).reshape(n, -1, h, w)
    return gemm.matmul(_nhwc(x).reshape(-1, c), wm.T).reshape(n, h, w, -1).transpose(0, 3, 1, 2)


def _pointwise_weight(x, gy):
    """dw[o, c] = sum over n, h, w of gy[n, o] x[n, c]: one GEMM per image on NCHW, or one GEMM on
    channels-last."""
    n, c, h, w = x.shape
    if _per_image(x) and _per_image(gy):
        return gemm.matmul(gy.reshape(n, -1, h * w), x.reshape(n, c, h * w).transpose(0, 2, 1)).sum(axis=0)
    return gemm.matmul(_nhwc(gy).reshape(-1, gy.shape[1]).T, _nhwc(x).reshape(-1, c))


def _nhwc(x):
    """x (N, C, H, W) as a C-contiguous channels-last array: a free view when x is a convolution's output."""
    t = x.transpose(0, 2, 3, 1)
    return t if t.flags.c_contiguous else padded_nhwc(x)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, saved=None):
    """y = im2col(x) @ w^T per group: (N*Ho*Wo, kh*kw*Cg) @ (kh*kw*Cg, Og); 1x1 layers by a GEMM in x's layout,
    3x3 stride-1 and 4x4 stride-2 layers by Winograd, layers with few output channels by a GEMM first: (N*H*W, C) @
    (C, kh*kw*O), then the taps summed; ungrouped layers from 16 channels by im2col a block of images at a time
    (columns.py), layers of at most 4 input channels by columns per image (_image_columns). The whole-batch im2col
    columns, the per-image ones or Winograd's tiles of x are left in `saved` (a dict) for conv2d_weight."""
    g = geometry(w.shape[2:], stride, padding, dilation, groups)
    (n, c, h, wd), G = x.shape, g.groups
    cg, og = check_channels(c, w.shape, g, transposed=False)
    ho, wo = conv_out_size(h, wd, g)
    if _pointwise_serves(g):
        return _add_bias(_pointwise(x, w.reshape(og, c).astype(x.dtype, copy=False)), b)
    if _winograd_serves(g, x, og):
        y, tiles = winograd.conv(padded_nhwc(x, g.padding, winograd.padded_size(ho, wo)), w.transpose(2, 3, 1, 0),
                                 ho, wo, keep=saved is not None)
        _save(saved, x, g, (ho, wo), "tiles", tiles)
        return _add_bias(y.transpose(0, 3, 1, 2), b)
    if _phases_serve(g, c, og, x):
        y, tiles = winograd.conv(_phase_padded(x, g.padding, ho, wo), _phase_weight(w), ho, wo, keep=saved is not None)
        _save(saved, x, g, (ho, wo), "tiles", tiles)
        return _add_bias(y.transpose(0, 3, 1, 2), b)
    if _gemm_first_serves(g, x, og):
        wm = w.transpose(1, 2, 3, 0).reshape(c, -1).astype(x.dtype, copy=False)      # (C, kh*kw*O)
        z = gemm.matmul(_nhwc(x).reshape(-1, c), wm).reshape(n, h, wd, *g.kernel, og)
        y = np.zeros((n, ho, wo, og), dtype=x.dtype)
        _taps(z, y, *g.padding, *g.dilation, False)
        return _add_bias(y.transpose(0, 3, 1, 2), b)
    if _image_columns_serve(g, x):             # y[n] = cols[n]^T @ w^T, (Ho*Wo, C*kh*kw) @ (C*kh*kw, O)
        cols = _image_columns(x, g, ho, wo)
        _save(saved, x, g, (ho, wo), "image columns", cols)
        y = gemm.matmul(cols.transpose(0, 2, 1), w.reshape(og, -1).T.astype(x.dtype, copy=False))
        return _add_bias(y.reshape(n, ho, wo, og).transpose(0, 3, 1, 2), b)
    wm = w.reshape(G, og, cg, -1).transpose(0, 3, 2, 1).reshape(G, -1, og)   # (G, kh*kw*Cg, Og)
    if _blocks_serve(g, x):
        y = columns.conv2d(_nhwc(x), np.ascontiguousarray(wm[0], dtype=x.dtype), g, ho, wo)
        return _add_bias(y.reshape(n, ho, wo, og).transpose(0, 3, 1, 2), b)
    cols = _im2col(x, g, ho, wo)
    _save(saved, x, g, (ho, wo), "columns", cols)
    y = gemm.matmul(cols, wm.astype(x.dtype, copy=False))                      # (G, N*Ho*Wo, Og)
    y = y.reshape(G, n, ho, wo, og).transpose(1, 0, 4, 2, 3).reshape(n, G * og, ho, wo)
    return _add_bias(y, b)


def conv2d_weight(x, gy, kernel_size, stride=1, padding=0, dilation=1, groups=1, saved=None):
    """dw = gy^T @ im2col(x) per group: (Og, N*Ho*Wo) @ (N*Ho*Wo, kh*kw*Cg), reordered to (O, Cg, kh, kw),
    im2col(x) from `saved` when conv2d of x left it, or gathered again a block of images at a time where conv2d
    did so (columns.py); 1x1 layers by a GEMM in the inputs' layout, 3x3 stride-1 and 4x4 stride-2 layers by
    Winograd (its transformed tiles of x from `saved` alike)."""
    g = geometry(kernel_size, stride, padding, dilation, groups)
    (n, c), G = x.shape[:2], g.groups
    ho, wo = gy.shape[2:]
    og, cg = gy.shape[1] // G, c // G
    if _pointwise_serves(g):     # gy may be smaller than x: conv_transpose2d's output_padding adds rows
        return _pointwise_weight(x[:, :, :ho, :wo], gy).reshape(og, c, 1, 1)
    if _winograd_serves(g, x, og):
        tiles = _saved(saved, x, g, (ho, wo), "tiles")
        xp = None if tiles is not None else padded_nhwc(x, g.padding, winograd.padded_size(ho, wo))
        return np.ascontiguousarray(winograd.conv_weight(xp, _nhwc(gy), 3, ho, wo, tiles).transpose(3, 2, 0, 1))
    if _phases_serve(g, c, og, x):
        tiles = _saved(saved, x, g, (ho, wo), "tiles")
        xp = None if tiles is not None else _phase_padded(x, g.padding, ho, wo)
        dw = winograd.conv_weight(xp, _nhwc(gy), 2, ho, wo, tiles)                      # [p, q, (u, v, c), o]
        return np.ascontiguousarray(dw.reshape(2, 2, 2, 2, c, og).transpose(5, 4, 0, 2, 1, 3).reshape(og, c, 4, 4))
    if _gemm_first_serves(g, x, og):          # dw = x^T @ t, t the adjoint of conv2d's tap sums applied to gy
        t = np.zeros((n, *x.shape[2:], *g.kernel, og), dtype=x.dtype)
        _taps(t, _nhwc(gy), *g.padding, *g.dilation, True)
        dw = gemm.matmul(_nhwc(x).reshape(-1, c).T, t.reshape(n * x.shape[2] * x.shape[3], -1))  # (C, kh*kw*O)
        return np.ascontiguousarray(dw.reshape(c, *g.kernel, og).transpose(3, 0, 1, 2))
    if _image_columns_serve(g, x):             # dw = sum over n of gy[n] cols[n]^T, in gy's layout
        cols = _saved(saved, x, g, (ho, wo), "image columns")
        cols = _image_columns(x, g, ho, wo) if cols is None else cols
        if channels_last(gy):                # (C*kh*kw, Ho*Wo) @ (Ho*Wo, O), transposed after
            dw = gemm.matmul(cols, _nhwc(gy).reshape(n, ho * wo, og)).sum(axis=0).T
        else:                                # (O, Ho*Wo) @ (Ho*Wo, C*kh*kw)
            dw = gemm.matmul(gy.reshape(n, og, ho * wo), cols.transpose(0, 2, 1)).sum(axis=0)
        return np.ascontiguousarray(dw).reshape(og, c, *g.kernel)
    if _blocks_serve(g, x):
        dw = columns.conv2d_weight(_nhwc(x), _nhwc(gy).reshape(-1, og), g, ho, wo)
        return dw.reshape(og, *g.kernel, cg).transpose(0, 3, 1, 2).copy()
    gym = gy.reshape(n, G, og, ho * wo).transpose(1, 2, 0, 3).reshape(G, og, -1)   # (G, Og, N*Ho*Wo)
    cols = _saved(saved, x, g, (ho, wo), "columns")
    dw = gemm.matmul(gym, _im2col(x, g, ho, wo) if cols is None else cols)        # (G, Og, kh*kw*Cg)
    return dw.reshape(G * og, *g.kernel, cg).transpose(0, 3, 1, 2).copy()


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """The adjoint of conv2d, y[n, o, h*sh + i*dh - ph, w*sw + j*dw - pw] += x[n, c, h, w] * w[c, o, i, j].

    With stride 1 and no output_padding it is itself a convolution (kernel flipped, in/out channels
    swapped, padding d(k-1) - p), which measured ~2x faster than col2im for the U-Net 3x3 layer. Not when the
    input is smaller than the kernel, though: there the flipped convolution's windows are mostly padding
    (DCGAN's first layer, 1x1 -> 7x7: 14 ms against col2im's 0.4 ms). A 4x4 stride-2 layer of 32 channels or
    more computes the four phases of its output by Winograd (_phase_transpose).
    Otherwise col2im: channels-last GEMMs, (N*H*W, Cg) @ (Cg, kh*kw*Og), then each tap's block is added at its
    strided place in the output, the taps that land in the padding skipped (columns.scatter): ungrouped, a
    block of images per GEMM (columns.py); grouped, one whole-batch GEMM per group (_col2im). An NCHW input
    to a layer of at most _FEW_OUTPUTS channels (an image decoder's last) is multiplied per image as it lies,
    (kh*kw*O, C) @ (C, H*W), and scattered a plane at a time (_col2im_planes).
    """
    g = geometry(w.shape[2:], stride, padding, dilation, groups)
    (n, c, h, wd), G = x.shape, g.groups
    cg, og = check_channels(c, w.shape, g, transposed=True)
    ho, wo = conv_transpose_out_size(h, wd, g, output_padding)
    flip_pad = tuple(d * (k - 1) - p for k, p, d in zip(g.kernel, g.padding, g.dilation))
    same_size = (ho, wo) == (h + flip_pad[0] - g.padding[0], wd + flip_pad[1] - g.padding[1])
    if g.stride == (1, 1) and min(flip_pad) >= 0 and same_size and h >= g.kernel[0] and wd >= g.kernel[1]:
        wf = w.reshape(G, cg, og, *g.kernel).swapaxes(1, 2)[..., ::-1, ::-1].reshape(G * og, cg, *g.kernel)
        return conv2d(x, wf, b, 1, flip_pad, g.dilation, G)
    if _phases_serve(g, c, og, x):
        return _add_bias(_phase_transpose(x, w, g.padding, ho, wo).transpose(0, 3, 1, 2), b)
    (kh, kw) = g.kernel
    if G == 1 and og <= _FEW_OUTPUTS and x.flags.c_contiguous and x.dtype in (np.float32, np.float64):
        wm = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, c), dtype=x.dtype)    # rows (i, j, o)
        cols = gemm.matmul(wm, x.reshape(n, c, h * wd)).reshape(n, kh, kw, og, h, wd)     # per image, in place
        y = np.empty((n, og, ho, wo), x.dtype)
        _col2im_planes(cols, y, *g.stride, *g.padding, *g.dilation)
        return _add_bias(y, b)
    if G == 1 and x.dtype in (np.float32, np.float64):          # a block of images at a time (columns.py)
        wm = np.ascontiguousarray(w.reshape(c, og, kh * kw).transpose(0, 2, 1).reshape(c, -1), dtype=x.dtype)
        return _add_bias(columns.conv_transpose2d(_nhwc(x), wm, g, ho, wo).transpose(0, 3, 1, 2), b)
    xm = x.reshape(n, G, cg, h, wd).transpose(1, 0, 3, 4, 2).reshape(G, -1, cg)        # (G, N*H*W, Cg)
    wm = w.reshape(G, cg, og, kh * kw).transpose(0, 1, 3, 2).reshape(G, cg, -1)         # (G, Cg, kh*kw*Og)
    cols = gemm.matmul(xm, wm.astype(x.dtype, copy=False)).reshape(G * n, h, wd, kh, kw, og)
    y = np.empty((G * n, ho, wo, og), dtype=x.dtype)
    _col2im(cols, y, *g.stride, *g.padding, *g.dilation)
    y = y.reshape(G, n, ho, wo, og).transpose(1, 0, 4, 2, 3).reshape(n, G * og, ho, wo)
    return _add_bias(y, b)


@parallel()
def _taps(z, y, ph, pw, dh, dw, adjoint):
    """The tap sums of a stride-1 convolution whose GEMM went first: z[b, h, w, i, j] holds input pixel (h, w)
    times tap (i, j)'s weights (O numbers), and
        y[b, r, c] = sum over taps (i, j) inside the input of z[b, r + i*dh - ph, c + j*dw - pw, i, j];
    or, adjoint, z[b, r + i*dh - ph, c + j*dw - pw, i, j] = y[b, r, c] (the rest of z left as it is, zeros).
    y is zero on entry when summed into. Parallel over images."""
    _, H, W, KH, KW, O = z.shape
    for b in numba.prange(y.shape[0]):
        for r in range(y.shape[1]):
            for i in range(KH):
                h = r + i * dh - ph
                if h < 0 or h >= H:
                    continue
                for c in range(y.shape[2]):
                    for j in range(KW):
                        w = c + j * dw - pw
                        if 0 <= w < W:
                            for o in range(O):
                                if adjoint:
                                    z[b, h, w, i, j, o] = y[b, r, c, o]
                                else:
                                    y[b, r, c, o] += z[b, h, w, i, j, o]


# Output channels up to which the transposed convolution of an NCHW input multiplies per image in NCHW: an image
# decoder's last layer (64 -> 1 channel, 4x4 stride 2, 14x14 -> 28x28, batch 64, one thread: 0.79-0.97 ms against
# 1.4-2.6 by channels-last columns, which copy x to channels-last first and scatter runs of O = 1 number; 3
# channels 2.2-3.4 against 2.4-3.7; 8 channels 6.1-9.3 against 4.2-5.4).
_FEW_OUTPUTS = 3


@parallel()
def _col2im_planes(cols, y, sh, sw, ph, pw, dh, dw):
    """y[n, o, h*sh + i*dh - ph, w*sw + j*dw - pw] = the sum of cols[n, i, j, o, h, w] over inputs (h, w) and
    taps (i, j) that land inside y, parallel over the (n, o) planes of y (N, O, Ho, Wo): each tap's row of
    inputs, contiguous in cols, is added along a row of y at stride sw. (columns.scatter, whose innermost loop
    runs over the O channels, took 1.4-1.5 ms on a transposed view of these columns for the 64 -> 1 layer, this
    loop 0.9.)"""
    N, KH, KW, O, H, W = cols.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for plane in numba.prange(N * O):
        n, o = plane // O, plane % O
        out = y[n, o]
        out[:] = 0
        for i in range(KH):
            for h in range(H):
                r = h * sh + i * dh - ph
                if r < 0 or r >= Ho:
                    continue
                for j in range(KW):
                    q = j * dw - pw                 # column w*sw + q, inside for w in [w0, w1)
                    w0, w1 = max(0, -(q // sw)), min(W, (Wo - 1 - q) // sw + 1)
                    src, dst = cols[n, i, j, o, h], out[r]
                    for w in range(w0, w1):
                        dst[w * sw + q] += src[w]


@parallel()
def _col2im(cols, y, sh, sw, ph, pw, dh, dw):
    """y[b] = columns.scatter of cols[b] (N, H, W, kh, kw, O) for each image b, parallel over images: the grouped
    transposed convolution's scatter, after one whole-batch GEMM per group."""
    for b in numba.prange(y.shape[0]):
        columns.scatter(cols[b], y[b], sh, sw, ph, pw, dh, dw)


# -------------------------------------------------------------------------------------------------- softmax
# One Numba pass per row, parallel over rows: the row sits in L1 while its max, its exponentials, their sum
# and the normalized values are computed, where NumPy makes one pass over memory per ufunc. Its exp is
# _fastmath.exp, written out in float32 arithmetic so that LLVM vectorizes it, in 512-bit vectors where the CPU
# has them (wide_vectors; 4096 x 1024 float32 on an Emerald Rapids Xeon, in-process A/B against 256-bit
# vectors: the forward 0.81-0.84 of the time at 1 thread, 0.89 at 2; the backward, bound by memory, 0.98-1.00).

@numba.njit(cache=True, fastmath=FASTMATH)
def _row_max(x, r, lanes):
    """max of row r, in 16 independent running maxima (`lanes`, 16 numbers of scratch): one chain of dependent
    maxes does not vectorize (it cost two thirds of softmax's time). A NaN is skipped by the selects unless the
    row starts with one (then the result is NaN); softmax's sum of exponentials turns the row to NaN either
    way."""
    k = 0
    lanes[:] = x[r, 0]
    while k + 16 <= x.shape[1]:
        for lane in range(16):
            v = x[r, k + lane]
            lanes[lane] = v if v > lanes[lane] else lanes[lane]
        k += 16
    m = lanes[0]
    for lane in range(1, 16):
        m = lanes[lane] if lanes[lane] > m else m
    for k in range(k, x.shape[1]):
        m = x[r, k] if x[r, k] > m else m
    return m


_ROWS_PER_STEP = 8    # rows per step of softmax's parallel loop, sharing one scratch of lanes: against one per row,
                      # 0.88 of the time on 64 x 10, 0.97 on 4096 x 1024 (serial, in-process A/B, medians of 20)


@parallel_fastmath
def _softmax_rows(x, out, log):
    """softmax:     out = exp(x - m) / s;   log_softmax: out = x - m - log(s);
    with m = max(x) and s = sum(exp(x - m)) over each row. A row whose max is not finite gives NaN."""
    n = x.shape[0]
    for step in numba.prange((n + _ROWS_PER_STEP - 1) // _ROWS_PER_STEP):
        wide_vectors()
        lanes = np.empty(16, x.dtype)
        for r in range(step * _ROWS_PER_STEP, min(n, (step + 1) * _ROWS_PER_STEP)):
            m = _row_max(x, r, lanes)
            if not np.isfinite(m):
                out[r, :] = np.nan
                continue
            s = x.dtype.type(0)
            if log:         # x - m stored first: fastmath would take x - (m + log s), rounding log s away
                for k in range(x.shape[1]):           # when |m| is large (0.6934 for log 2 at m = 1e4, float32)
                    out[r, k] = x[r, k] - m
                    s += exp(out[r, k])
                log_s = np.log(s)
                for k in range(x.shape[1]):
                    out[r, k] -= log_s
            else:
                for k in range(x.shape[1]):
                    out[r, k] = exp(x[r, k] - m)
                    s += out[r, k]
                for k in range(x.shape[1]):
                    out[r, k] /= s


@parallel_fastmath
def _softmax_backward_rows(y, gy, out, log):
    """softmax:     out = y * (gy - sum(gy * y));   log_softmax: out = gy - exp(y) * sum(gy)."""
    for r in numba.prange(y.shape[0]):
        s = y.dtype.type(0)
        for k in range(y.shape[1]):
            s += gy[r, k] if log else gy[r, k] * y[r, k]
        for k in range(y.shape[1]):
            out[r, k] = gy[r, k] - exp(y[r, k]) * s if log else y[r, k] * (gy[r, k] - s)


def _rowwise(kernel, axis, log, *arrays):
    """Run a row kernel over `axis` of same-shaped arrays: move the axis last, view as 2-D rows (no copy when
    `axis` is already the last, contiguous one: then no moveaxis either, 3-4 us each on a 64 x 10 softmax)."""
    x = arrays[0]
    if (axis == -1 or axis == x.ndim - 1) and all(a.flags.c_contiguous for a in arrays):
        rows = [a if a.ndim == 2 else a.reshape(-1, x.shape[-1]) for a in arrays]
        out = np.empty(rows[0].shape, x.dtype)
        kernel.sized(x.size, *rows, out, log)
        return out.reshape(x.shape)
    rows = [np.ascontiguousarray(np.moveaxis(a, axis, -1)) for a in arrays]
    shape = rows[0].shape
    out = np.empty(shape, dtype=rows[0].dtype)
    kernel(*(r.reshape(-1, shape[-1]) for r in rows), out.reshape(-1, shape[-1]), log)
    return np.moveaxis(out, -1, axis)


def _rows_serve(x) -> bool:
    """Whether the row kernels serve x: float32 or float64 (NumPy's formulas otherwise, as for CuPy's arrays), at
    least one row of at least one element. Below PARALLEL_MIN_SIZE they run serially (the kernels' call picks),
    still faster than NumPy's five passes: a 64 x 10 float32 softmax took 12-13 us by NumPy's formula, 5.3-6.2 us
    here (the kernel's call itself 3.1-3.3), 4.0-4.2 us by PyTorch's."""
    return x.dtype in (np.float32, np.float64) and x.ndim > 0 and x.size > 0


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along `axis`; a row of all -inf gives NaN, as in PyTorch."""
    if not _rows_serve(x):
        return reference.softmax(x, axis)
    return _rowwise(_softmax_rows, axis, False, x)


def log_softmax(x, axis=-1):
    """x - max - log(sum(exp(x - max))) along `axis`; a row of all -inf gives NaN, as in PyTorch."""
    if not _rows_serve(x):
        return reference.log_softmax(x, axis)
    return _rowwise(_softmax_rows, axis, True, x)


def softmax_backward(y, gy, axis=-1):
    """Vector-Jacobian product of y = softmax(x): y * (gy - sum(gy * y))."""
    if not _rows_serve(y):
        return reference.softmax_backward(y, gy, axis)
    return _rowwise(_softmax_backward_rows, axis, False, y, np.asarray(gy, dtype=y.dtype))


def log_softmax_backward(y, gy, axis=-1):
    """Vector-Jacobian product of y = log_softmax(x): gy - exp(y) * sum(gy)."""
    if not _rows_serve(y):
        return reference.log_softmax_backward(y, gy, axis)
    return _rowwise(_softmax_backward_rows, axis, True, y, np.asarray(gy, dtype=y.dtype))


# ------------------------------------------------------------------------------------------- slogdet, inv
# Batched small matrices: a Numba LU per matrix, parallel over the batch, measured ~3x faster than
# numpy.linalg.slogdet (whose per-matrix LAPACK call overhead dominates at n = 8); the inverse that
# slogdet's gradient needs likewise by Gauss-Jordan. Larger matrices, one at a time: lu.py's blocked LU
# (BLAS GEMMs) from the n where its recursive predecessor beat LAPACK (1 thread, time against numpy.linalg:
# inv 0.75x float32 and 0.91x float64 at n = 96, 0.3x / 0.5x at 512; slogdet float32 0.93x at 192, 0.5x at 512,
# float64 0.92x at 512, 0.8x at 1024), LAPACK below; the blocked LU and inverse took at most its time up to
# n = 1024 (lu.py).

_LU_MAX_N = 48
_LU_INV_MIN_N = {np.dtype(np.float32): 96, np.dtype(np.float64): 96}
_LU_SLOGDET_MIN_N = {np.dtype(np.float32): 192, np.dtype(np.float64): 512}


def _lu_serves(a, min_n: dict) -> bool:
    """Whether a is a stack of square matrices, n >= min_n[its dtype], for lu.py."""
    return a.ndim >= 2 and a.shape[-2] == a.shape[-1] >= min_n.get(a.dtype, math.inf) and a.size > 0


_njit_lu = parallel(error_model="numpy")   # no ZeroDivisionError check in the loops; no FMA contraction,
# which rounds differently from LAPACK: float64 log|det| of cond-1e10 matrices moved by 8e-8


@_njit_lu
def _slogdet_batch(a, sign, logabs):
    """LU with partial pivoting (Doolittle, in a private copy of each matrix):
    det a = (-1)^(row swaps) * prod_k u_kk; a zero pivot column means det = 0 -> (0, -inf).
    |prod u_kk| is kept as a float64 product of frexp mantissas (each in [0.5, 1), so no over- or
    underflow for n <= 1000) and a sum of exponents: one log per matrix instead of one per pivot."""
    n = a.shape[1]
    for b in numba.prange(a.shape[0]):
        lu = a[b].copy()
        s, mant, ex = 1.0, 1.0, 0
        for k in range(n):
            p, big = k, abs(lu[k, k])
            for r in range(k + 1, n):
                v = abs(lu[r, k])
                if v > big:
                    p, big = r, v
            pivot = lu[p, k]
            if pivot == 0:
                s, mant = 0.0, 0.0
                break
            rowk = lu[k, k:]
            if p != k:
                rowp = lu[p, k:]
                for c in range(n - k):
                    rowk[c], rowp[c] = rowp[c], rowk[c]
                s = -s
            if pivot < 0:
                s = -s
            fr, e = math.frexp(pivot)
            mant *= abs(fr)
            ex += e
            inv = 1 / pivot               # in a's dtype: float32 rows stay float32 (and vectorize)
            for r in range(k + 1, n):
                rowr = lu[r, k:]
                f = rowr[0] * inv
                for c in range(1, n - k):
                    rowr[c] -= f * rowk[c]
        sign[b] = s
        logabs[b] = math.log(mant) + ex * math.log(2.0)


@_njit_lu
def _inv_batch(a, out, singular):
    """Gauss-Jordan elimination with partial pivoting, in place, one matrix per thread: as column k is
    eliminated it is free to hold column k of the inverse, so [a | I] never needs its second half
    (2n^3 flops instead of 4n^3). The inverse is found for the row-swapped matrix P a, and
    a^-1 = (P a)^-1 P undoes the swaps on columns. A zero pivot column marks the matrix singular."""
    n = a.shape[1]
    one = a.dtype.type(1)
    for b in numba.prange(a.shape[0]):
        m = out[b]
        m[:] = a[b]
        swaps = np.empty(n, np.int64)
        for k in range(n):
            p, big = k, abs(m[k, k])
            for r in range(k + 1, n):
                v = abs(m[r, k])
                if v > big:
                    p, big = r, v
            if m[p, k] == 0:
                singular[b] = True
                break
            swaps[k] = p
            mk = m[k]
            if p != k:
                mp = m[p]
                for c in range(n):
                    mk[c], mp[c] = mp[c], mk[c]
            scale = one / mk[k]
            mk[k] = one
            for c in range(n):
                mk[c] *= scale
            i = 0
            while i + 2 <= n - 1:          # the rows other than k, two at a time: each load of mk serves two
                r0 = i if i < k else i + 1
                r1 = i + 1 if i + 1 < k else i + 2
                m0, m1 = m[r0], m[r1]
                f0, f1 = m0[k], m1[k]
                m0[k] = 0
                m1[k] = 0
                for c in range(n):
                    m0[c] -= f0 * mk[c]
                    m1[c] -= f1 * mk[c]
                i += 2
            if i < n - 1:
                m0 = m[i if i < k else i + 1]
                f0 = m0[k]
                m0[k] = 0
                for c in range(n):
                    m0[c] -= f0 * mk[c]
        if not singular[b]:
            for k in range(n - 1, -1, -1):
                p = swaps[k]
                if p != k:
                    for r in range(n):
                        m[r, k], m[r, p] = m[r, p], m[r, k]


def inv(a, factors=None):
    """a^-1 of a batch (..., n, n), like numpy.linalg.inv (LinAlgError for a singular matrix). Batches of
    small matrices run in Numba, parallel over matrices (LAPACK's per-call overhead dominates there).
    `factors`: slogdet's, a list of lu.lu(m) per matrix, or None."""
    n = a.shape[-1]
    if factors is not None or _lu_serves(a, _LU_INV_MIN_N):
        out = np.empty(a.shape, a.dtype)
        for i, (m, x) in enumerate(zip(a.reshape(-1, n, n), out.reshape(-1, n, n))):
            inverse = lu.inv(m, None if factors is None else factors[i])
            if inverse is None:
                raise np.linalg.LinAlgError(f"singular matrix (batch index {i})")
            x[...] = inverse
        return out
    if n > _LU_MAX_N or a.ndim < 2 or a.shape[-2] != n or a.size < _PARALLEL_MIN_SIZE // 8:
        return np.linalg.inv(a)
    batch = np.ascontiguousarray(a).reshape(-1, n, n)
    out = np.empty_like(batch)
    singular = np.zeros(batch.shape[0], dtype=np.bool_)
    _inv_batch(batch, out, singular)
    if singular.any():
        raise np.linalg.LinAlgError(f"singular matrix (batch index {int(np.argmax(singular))})")
    return out.reshape(a.shape)


def slogdet(a, keep_factors=False):
    """(sign, log|det a|) of a batch (..., n, n), like numpy.linalg.slogdet; singular: (0, -inf).
    keep_factors: a third item, the list of lu.lu(m) per matrix where lu.py factored them (large matrices:
    inv(a, factors) then skips its own factorization), else None."""
    sign, logabs, factors = _slogdet(a)
    return (sign, logabs, factors) if keep_factors else (sign, logabs)


def _slogdet(a):
    n = a.shape[-1]
    if _lu_serves(a, _LU_SLOGDET_MIN_N):
        batch = a.reshape(-1, n, n)
        factors = [lu.lu(m) for m in batch]
        sign, logabs = np.empty(len(batch), a.dtype), np.empty(len(batch), a.dtype)
        for i, (m, f) in enumerate(zip(batch, factors)):
            sign[i], logabs[i] = lu.slogdet(m, f)
        return sign.reshape(a.shape[:-2]), logabs.reshape(a.shape[:-2]), factors
    if n > _LU_MAX_N or a.ndim < 2 or a.shape[-2] != n or a.size < _PARALLEL_MIN_SIZE // 8:
        return (*np.linalg.slogdet(a), None)
    batch = np.ascontiguousarray(a).reshape(-1, n, n)
    sign = np.empty(batch.shape[0], dtype=a.dtype)
    logabs = np.empty(batch.shape[0], dtype=a.dtype)
    _slogdet_batch(batch, sign, logabs)
    return sign.reshape(a.shape[:-2]), logabs.reshape(a.shape[:-2]), None
