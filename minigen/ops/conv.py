"""Convolutions, pooling and upsampling on (N, C, H, W) tensors, as in torch.nn.functional.

The arithmetic runs in the hand-written kernels (`kernels/`); here each kernel becomes a differentiable node
whose backward is made of the same nodes, so convolutions differentiate to any order (WGAN-GP's penalty
through a conv critic). With y = conv2d(x, w) and <a, b> the sum of a * b:

    <conv2d(x, w), g> = <x, conv_transpose2d(g, w)> = <w, conv2d_weight(x, g)>

so gx = conv_transpose2d(g, w) and gw = conv2d_weight(x, g); for the transpose the roles swap:
gx = conv2d(g, w) and gw = conv2d_weight(g, x). conv2d_weight is bilinear in (x, g), and the identity above
gives its own backward: with upstream h, gx = conv_transpose2d(g, h) and gg = conv2d(x, h).
"""
from __future__ import annotations

import numpy as np

import kernels
from kernels._geometry import geometry, pair

from .. import backend
from ..tensor import Function, Tensor
from .reduce import sum as _sum
from .elementwise import tie
from .linalg import einsum
from .shape import GetItem, expand_dims, repeat, squeeze


class _Conv:
    """The geometry shared by the three convolution nodes."""

    def __init__(self, kernel_size, stride, padding, dilation, groups):
        self.kernel_size = pair(kernel_size)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    @property
    def geometry(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def output_padding_for(self, size: tuple, small: tuple) -> tuple:
        """The output_padding that makes conv_transpose2d of a (small) map come back to `size` (the
        information a strided convolution drops: H = (Ho - 1) s - 2 p + d (k - 1) + op + 1)."""
        g = geometry(self.kernel_size, self.stride, self.padding, self.dilation, self.groups)
        return tuple(n - ((m - 1) * s - 2 * p + d * (k - 1) + 1)
                     for n, m, s, p, d, k in zip(size, small, g.stride, g.padding, g.dilation, g.kernel))


    def conv2d_to(self, shape: tuple, x: Tensor, w: Tensor) -> tuple[Tensor, dict]:
        """conv2d(x, w) as the adjoint of a transposed convolution whose input had `shape`, and what that
        conv2d saved of x for a weight gradient. An output_padding of stride or more (allowed when dilated)
        adds rows that no input reached: they are cropped."""
        node = Conv2d(self.kernel_size, **self.geometry)
        y = node(x, w)
        return (y if y.shape[2:] == shape[2:] else y[:, :, :shape[2], :shape[3]]), node.saved


class Conv2d(_Conv, Function):
    """y = conv2d(x, w) (+ b per output channel);  gx = conv_transpose2d(g, w), gw = conv2d_weight(x, g),
    gb = sum of g over (N, H, W). The kernel may leave in `saved` what gw reuses (the CPU's im2col columns)."""

    def forward(self, x, w, b=None):
        self.saved = {}
        return kernels.conv2d(x, w, b, saved=self.saved, **self.geometry)

    def backward(self, g):
        x, w = self.inputs[:2]
        gx = gw = gb = None
        if x.requires_grad:
            op = self.output_padding_for(x.shape[2:], g.shape[2:])
            gx = ConvTranspose2d(self.kernel_size, output_padding=op, **self.geometry)(g, w)
        if w.requires_grad:
            gw = Conv2dWeight(self.kernel_size, saved=self.saved, **self.geometry)(x, g)
        if len(self.inputs) == 3 and self.inputs[2].requires_grad:
            gb = _sum(g, axis=(0, 2, 3))
        return gx, gw, gb


class ConvTranspose2d(_Conv, Function):
    """y = conv_transpose2d(x, w) (+ b);  gx = conv2d(g, w), gw = conv2d_weight(g, x), gb = sum of g. Both
    gradients convolve g alike: gw reuses what gx's conv2d saved, if anything (the CPU's whole-batch im2col
    columns of g)."""

    def __init__(self, kernel_size, stride, padding, dilation, groups, output_padding):
        super().__init__(kernel_size, stride, padding, dilation, groups)
        self.output_padding = output_padding

    def forward(self, x, w, b=None):
        return kernels.conv_transpose2d(x, w, b, output_padding=self.output_padding, **self.geometry)

    def backward(self, g):
        x, w = self.inputs[:2]
        gx, saved = self.conv2d_to(x.shape, g, w) if x.requires_grad else (None, None)
        gw = Conv2dWeight(self.kernel_size, saved=saved, **self.geometry)(g, x) if w.requires_grad else None
        gb = _sum(g, axis=(0, 2, 3)) if len(self.inputs) == 3 and self.inputs[2].requires_grad else None
        return gx, gw, gb


class Conv2dWeight(_Conv, Function):
    """z = conv2d_weight(x, g), the weight gradient of conv2d as a node of its own. Bilinear in (x, g):
    with upstream h, gx = conv_transpose2d(g, h) and gg = conv2d(x, h)."""

    def __init__(self, kernel_size, stride, padding, dilation, groups, saved=None):
        super().__init__(kernel_size, stride, padding, dilation, groups)
        self.saved = saved     # Conv2d's, for its weight gradient: read once, then let go

    def forward(self, x, g):
        saved, self.saved = self.saved, None
        return kernels.conv2d_weight(x, g, self.kernel_size, saved=saved, **self.geometry)

    def backward(self, h):
        x, g = self.inputs
        gx = gg = None
        if x.requires_grad:
            op = self.output_padding_for(x.shape[2:], g.shape[2:])
            gx = ConvTranspose2d(self.kernel_size, output_padding=op, **self.geometry)(g, h)
        if g.requires_grad:
            gg = self.conv2d_to(g.shape, x, h)[0]
        return gx, gg


def _check_4d(name: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected input of shape (N, C, H, W), got shape {x.shape}")


def _conv_args(name, x, weight, bias, transposed, groups):
    _check_4d(name, x)
    if weight.ndim != 4:
        raise ValueError(f"{name}: expected weight of 4 dimensions, got shape {weight.shape}")
    c_in = weight.shape[0] if transposed else weight.shape[1] * groups
    if x.shape[1] != c_in:
        raise ValueError(f"{name}: input of shape {x.shape} has {x.shape[1]} channels but the weight of shape "
                         f"{weight.shape} with groups={groups} expects {c_in}")
    return (x, weight) if bias is None else (x, weight, bias)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D cross-correlation: x (N, C, H, W), weight (O, C/groups, kh, kw) -> (N, O, Ho, Wo)."""
    args = _conv_args("conv2d", x, weight, bias, False, groups)
    return Conv2d(weight.shape[2:], stride, padding, dilation, groups)(*args)


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """The adjoint of conv2d in its input (a "deconvolution"): x (N, C, H, W), weight (C, O/groups, kh, kw)
    -> (N, O, (H-1) s - 2 p + d (k-1) + output_padding + 1, ...). Argument order as PyTorch's."""
    args = _conv_args("conv_transpose2d", x, weight, bias, True, groups)
    return ConvTranspose2d(weight.shape[2:], stride, padding, dilation, groups, output_padding)(*args)


class AvgPool2d(Conv2d):
    """y = avg_pool2d(x): conv2d of x with a constant 1/(kh kw) kernel per channel;  gx = its
    conv_transpose2d, tied to x (`tie`: the second derivative in x is an exact zero, as PyTorch's)."""

    def backward(self, g):
        x = self.inputs[0]
        return tie(super().backward(g)[0], x), None


class MaxPool2d(GetItem):
    """y = x at the arg-max of each window (found on the arrays);  gx = g scattered back there, tied to x
    (`tie`: its derivative in x is zero, since the arg-maxes are piecewise constant in x)."""

    def backward(self, g):
        return tie(super().backward(g), self.inputs[0])


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0,
           dilation: int = 1, groups: int = 1) -> Tensor:
    """1-D cross-correlation: x (N, C, L), weight (O, C/groups, k) -> (N, O, Lo), as conv2d over a height of 1."""
    if x.ndim != 3 or weight.ndim != 3:
        raise ValueError(f"conv1d: expected input (N, C, L) and weight (O, C/groups, k), got shapes {x.shape} "
                         f"and {weight.shape}")
    y = conv2d(expand_dims(x, 2), expand_dims(weight, 2), bias, (1, stride), (0, padding), (1, dilation), groups)
    return squeeze(y, 2)


def _adaptive_bins(n: int, m: int, xp) -> np.ndarray:
    """The (m, n) averaging matrix of adaptive pooling: output i averages inputs floor(i n / m) ..
    ceil((i + 1) n / m) - 1 (PyTorch's bins, which overlap when m does not divide n)."""
    i = np.arange(m)
    start, end = (i * n) // m, -((-(i + 1) * n) // m)
    j = np.arange(n)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return xp.asarray(inside / (end - start)[:, None])


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Mean over the adaptive bins of each axis, to an (H_out, W_out) map whatever the input size (None
    keeps that axis): y = P_h x P_w^T with constant averaging matrices, so it differentiates as einsum."""
    _check_4d("adaptive_avg_pool2d", x)
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    ho, wo = (n if m is None else m for n, m in zip(x.shape[2:], sizes))
    xp = backend.get_array_module(x.data)
    p_h, p_w = (Tensor(_adaptive_bins(n, m, xp).astype(x.dtype)) for n, m in zip(x.shape[2:], (ho, wo)))
    return einsum("ih,nchw,jw->ncij", p_h, x, p_w)


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Mean over each window (zero padding counted, PyTorch's count_include_pad=True): a grouped
    convolution with a constant 1/(kh kw) kernel, so its derivatives come from conv2d's."""
    _check_4d("avg_pool2d", x)
    kh, kw = pair(kernel_size)
    xp = backend.get_array_module(x.data)
    w = Tensor(xp.full((x.shape[1], 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype))
    stride = kernel_size if stride is None else stride
    return AvgPool2d((kh, kw), stride, padding, 1, x.shape[1])(x, w)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max over each window (padding with -inf). The arg-max of every window is found on the arrays, then
    the output is x indexed there, so the gradient (a scatter-add to the arg-maxes) and its own
    derivatives come from indexing."""
    _check_4d("max_pool2d", x)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(kernel_size if stride is None else stride), pair(padding)
    xp = backend.get_array_module(x.data)
    n, c, h, w = x.shape
    padded = xp.pad(x.data, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf) if ph or pw else x.data
    windows = xp.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    ho, wo = windows.shape[2:4]
    arg = windows.reshape(n, c, ho, wo, kh * kw).argmax(axis=-1)
    # (row, col) in x of each arg-max; clipped for a window whose real entries are all -inf
    rows = xp.clip(xp.arange(ho)[:, None] * sh + arg // kw - ph, 0, h - 1)
    cols = xp.clip(xp.arange(wo)[None, :] * sw + arg % kw - pw, 0, w - 1)
    batch, channel = xp.arange(n).reshape(n, 1, 1, 1), xp.arange(c).reshape(1, c, 1, 1)
    return MaxPool2d((batch, channel, rows, cols))(x)


def upsample_nearest2d(x: Tensor, scale_factor: int = 2) -> Tensor:
    """Each pixel repeated scale_factor times along H and W (nearest-neighbour upsampling)."""
    _check_4d("upsample_nearest2d", x)
    factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
    if any(int(f) != f or f < 1 for f in factors):
        raise ValueError(f"upsample_nearest2d: scale_factor must be positive integers, got {scale_factor!r}")
    sh, sw = pair(scale_factor)
    return repeat(repeat(x, sh, axis=2), sw, axis=3)


__all__ = ["conv1d", "conv2d", "conv_transpose2d", "avg_pool2d", "max_pool2d", "adaptive_avg_pool2d",
           "upsample_nearest2d"]
