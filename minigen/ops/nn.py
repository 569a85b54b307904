"""Neural-network operations, named and shaped as in torch.nn.functional: softmax, log_softmax, dropout,
linear. (conv2d, conv_transpose2d and pooling come with the kernels.)
"""
from __future__ import annotations

import kernels

from .. import backend
from ..tensor import Function, Tensor
from .elementwise import Scale, exp
from .linalg import matmul
from .reduce import sum as _sum
from .shape import normalize_axes, swapaxes


class Softmax(Function):
    """y = exp(x - max) / sum exp(x - max) along `axis` (the softmax kernel);  gx = SoftmaxGrad(y, g)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return kernels.softmax(x, self.axis)

    def backward(self, g):
        return SoftmaxGrad(self.axis)(self.output(), g)


class SoftmaxGrad(Function):
    """z = y * (g - sum(g * y)), softmax's backward as one node (the fused kernel). Its Jacobian in g,
    diag(y) - y y^T, is symmetric, so gg = SoftmaxGrad(y, gz); in y: gy = gz (g - s) - g sum(gz y),
    with s = sum(g y)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        return kernels.softmax_backward(y, g, self.axis)

    def backward(self, gz):
        y, g = self.inputs
        gy = gg = None
        if y.requires_grad:
            s = _sum(g * y, self.axis, keepdims=True)
            gy = gz * (g - s) - g * _sum(gz * y, self.axis, keepdims=True)
        if g.requires_grad:
            gg = SoftmaxGrad(self.axis)(y, gz)
        return gy, gg


class LogSoftmax(Function):
    """y = x - logsumexp(x) along `axis` (the log_softmax kernel);  gx = LogSoftmaxGrad(y, g)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return kernels.log_softmax(x, self.axis)

    def backward(self, g):
        return LogSoftmaxGrad(self.axis)(self.output(), g)


class LogSoftmaxGrad(Function):
    """z = g - exp(y) sum(g), log_softmax's backward as one node (the fused kernel).
    In g: gg = gz - sum(gz exp(y)) (the transposed Jacobian I - 1 exp(y)^T); in y: gy = -gz exp(y) sum(g)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        return kernels.log_softmax_backward(y, g, self.axis)

    def backward(self, gz):
        y, g = self.inputs
        p = exp(y)
        gy = -gz * p * _sum(g, self.axis, keepdims=True) if y.requires_grad else None
        gg = gz - _sum(gz * p, self.axis, keepdims=True) if g.requires_grad else None
        return gy, gg


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    (axis,) = normalize_axes(axis, x.ndim)
    return Softmax(axis)(x)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    (axis,) = normalize_axes(axis, x.ndim)
    return LogSoftmax(axis)(x)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p) (inverted dropout), so the
    expectation is unchanged; the identity when not training."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    keep = backend.generator(x.device).random(x.shape) >= p
    return Scale(keep * (0.0 if p == 1 else 1.0 / (1.0 - p)))(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b, with W of shape (out_features, in_features) as in PyTorch."""
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1]} features, the weight of shape "
                         f"{weight.shape} expects {weight.shape[-1]}")
    y = matmul(x, swapaxes(weight, 0, 1))
    return y if bias is None else y + bias


__all__ = ["softmax", "log_softmax", "dropout", "linear"]
