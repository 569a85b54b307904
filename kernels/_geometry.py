"""Convolution geometry shared by every backend.

A convolution with kernel taps (i, j), stride s, padding p and dilation d reads input row
``h = ho*s - p + i*d`` for output row ``ho`` (PyTorch's convention). All backends normalize their
int-or-pair arguments here and take output sizes and tap slices from here, so they agree on shapes.
"""
from __future__ import annotations

from typing import NamedTuple


def pair(v) -> tuple[int, int]:
    """An int or a pair of ints as a pair of ints: 2 -> (2, 2), (1, 3) -> (1, 3)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class Geometry(NamedTuple):
    """Per-axis geometry of a 2-D convolution (all pairs are (rows, columns))."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def taps(self):
        """Every kernel tap (i, j), row-major."""
        kh, kw = self.kernel
        return [(i, j) for i in range(kh) for j in range(kw)]

    def tap_slices(self, i: int, j: int, out_h: int, out_w: int):
        """Slices of the *padded* input read by tap (i, j) for an (out_h, out_w) output.

        Output pixel (ho, wo) reads padded pixel (ho*sh + i*dh, wo*sw + j*dw).
        """
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return (slice(i * dh, i * dh + sh * (out_h - 1) + 1, sh),
                slice(j * dw, j * dw + sw * (out_w - 1) + 1, sw))


def geometry(kernel, stride, padding, dilation, groups) -> Geometry:
    """Normalize and validate int-or-pair convolution arguments."""
    g = Geometry(pair(kernel), pair(stride), pair(padding), pair(dilation), int(groups))
    if min(g.stride + g.dilation + g.kernel) < 1 or min(g.padding) < 0 or g.groups < 1:
        raise ValueError(f"invalid convolution geometry {g}")
    return g


def conv_out_size(h: int, w: int, g: Geometry) -> tuple[int, int]:
    """Ho = (H + 2p - d(k-1) - 1)//s + 1 per axis; raises if the output would be empty."""
    out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, k, s, p, d in zip((h, w), g.kernel, g.stride, g.padding, g.dilation))
    if min(out) < 1:
        raise ValueError(f"input {h}x{w} is too small for {g}")
    return out


def conv_transpose_out_size(h: int, w: int, g: Geometry, output_padding) -> tuple[int, int]:
    """Ho = (H-1)s - 2p + d(k-1) + output_padding + 1 per axis; output_padding < max(s, d) as in PyTorch."""
    op = pair(output_padding)
    for o, s, d in zip(op, g.stride, g.dilation):
        if not 0 <= o < max(s, d):
            raise ValueError(f"output_padding {op} must be >= 0 and smaller than stride or dilation")
    out = tuple((n - 1) * s - 2 * p + d * (k - 1) + o + 1
                for n, k, s, p, d, o in zip((h, w), g.kernel, g.stride, g.padding, g.dilation, op))
    if min(out) < 1:
        raise ValueError(f"input {h}x{w} gives an empty transposed-convolution output for {g}")
    return out


def check_channels(c_in: int, w_shape, g: Geometry, transposed: bool) -> tuple[int, int]:
    """Check channel counts against the weight; return (input channels per group, output channels per group).

    conv2d weights are (O, C/groups, kh, kw); conv_transpose2d weights are (C, O/groups, kh, kw).
    """
    if len(w_shape) != 4:
        raise ValueError(f"weight must be 4-D, got shape {tuple(w_shape)}")
    if transposed:
        c_w, og = w_shape[0], w_shape[1]
        cg = c_in // g.groups
    else:
        og, cg = w_shape[0] // g.groups, w_shape[1]
        c_w = cg * g.groups
    if c_w != c_in or c_in % g.groups or (not transposed and w_shape[0] % g.groups):
        raise ValueError(f"input with {c_in} channels does not fit weight {tuple(w_shape)} with groups={g.groups}")
    return cg, og
