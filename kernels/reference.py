"""Plain NumPy kernels: the ground truth every other backend is tested against.

Written for clarity, not speed. A 2-D convolution is a sum over kernel taps (i, j): each tap reads a
strided slice of the padded input (``Geometry.tap_slices``) and contracts channels with ``w[..., i, j]``.
The transposed convolution scatters the same taps back (it is the adjoint), and the weight gradient
contracts each tap's slice with the output gradient.
"""
from __future__ import annotations

import numpy as np

from ._geometry import check_channels, conv_out_size, conv_transpose_out_size, geometry


def _pad(x, padding):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _add_bias(out, b):
    return out if b is None else out + b.reshape(1, -1, 1, 1).astype(out.dtype, copy=False)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, saved=None):
    """y[n, o, ho, wo] = b[o] + sum_{c, i, j} x_pad[n, c, ho*sh + i*dh, wo*sw + j*dw] * w[o, c, i, j]
    (c runs over the channels of o's group). Keeps nothing in `saved`: conv2d_weight computes afresh."""
    g = geometry(w.shape[2:], stride, padding, dilation, groups)
    (n, c, h, wd), G = x.shape, g.groups
    cg, og = check_channels(c, w.shape, g, transposed=False)
    ho, wo = conv_out_size(h, wd, g)
    xp = _pad(x, g.padding).reshape(n, G, cg, h + 2 * g.padding[0], wd + 2 * g.padding[1])
    wg = w.reshape(G, og, cg, *g.kernel)
    y = np.zeros((n, G, og, ho, wo), dtype=x.dtype)
    for i, j in g.taps():
        rows, cols = g.tap_slices(i, j, ho, wo)
        y += np.einsum("ngchw,goc->ngohw", xp[..., rows, cols], wg[..., i, j])
    return _add_bias(y.reshape(n, G * og, ho, wo), b)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """The adjoint of conv2d in x: scatter x[n, c, h, w] * w[c, o, i, j] to padded output pixel
    (h*sh + i*dh, w*sw + j*dw), then crop the padding (output_padding extends the far edge)."""
    g = geometry(w.shape[2:], stride, padding, dilation, groups)
    (n, c, h, wd), G = x.shape, g.groups
    cg, og = check_channels(c, w.shape, g, transposed=True)
    ho, wo = conv_transpose_out_size(h, wd, g, output_padding)
    ph, pw = g.padding
    full = np.zeros((n, G, og, ho + 2 * ph, wo + 2 * pw), dtype=x.dtype)
    xg = x.reshape(n, G, cg, h, wd)
    wg = w.reshape(G, cg, og, *g.kernel)
    for i, j in g.taps():
        rows, cols = g.tap_slices(i, j, h, wd)
        full[..., rows, cols] += np.einsum("ngchw,gco->ngohw", xg, wg[..., i, j])
    y = full[..., ph:ph + ho, pw:pw + wo]
    return _add_bias(y.reshape(n, G * og, ho, wo), b)


def conv2d_weight(x, gy, kernel_size, stride=1, padding=0, dilation=1, groups=1, saved=None):
    """dL/dw[o, c, i, j] = sum_{n, ho, wo} gy[n, o, ho, wo] * x_pad[n, c, ho*sh + i*dh, wo*sw + j*dw]."""
    g = geometry(kernel_size, stride, padding, dilation, groups)
    (n, c, h, wd), G = x.shape, g.groups
    og, cg = gy.shape[1] // G, c // G
    ho, wo = gy.shape[2:]
    xp = _pad(x, g.padding).reshape(n, G, cg, h + 2 * g.padding[0], wd + 2 * g.padding[1])
    gyg = gy.reshape(n, G, og, ho, wo)
    dw = np.zeros((G, og, cg, *g.kernel), dtype=x.dtype)
    for i, j in g.taps():
        rows, cols = g.tap_slices(i, j, ho, wo)
        dw[..., i, j] = np.einsum("ngchw,ngohw->goc", xp[..., rows, cols], gyg)
    return dw.reshape(G * og, cg, *g.kernel)


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)). A row of all -inf gives NaN (0/0), as in PyTorch."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """x - max - log(sum(exp(x - max))). A row of all -inf gives NaN, as in PyTorch."""
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def softmax_backward(y, gy, axis=-1):
    """Vector-Jacobian product of y = softmax(x): gx = y * (gy - sum(gy * y))."""
    return y * (gy - (gy * y).sum(axis=axis, keepdims=True))


def log_softmax_backward(y, gy, axis=-1):
    """Vector-Jacobian product of y = log_softmax(x): gx = gy - exp(y) * sum(gy)."""
    return gy - np.exp(y) * gy.sum(axis=axis, keepdims=True)


def slogdet(a, keep_factors=False):
    """(sign, log|det a|) of a batch (..., n, n), LAPACK's LU with partial pivoting; singular: (0, -inf).
    LAPACK's factors are not kept: keep_factors gives None as the third item."""
    return tuple(np.linalg.slogdet(a)) + ((None,) if keep_factors else ())


def inv(a, factors=None):
    """a^-1 of a batch (..., n, n) (LAPACK's LU); LinAlgError for a singular matrix. (factors: always None.)"""
    return np.linalg.inv(a)
