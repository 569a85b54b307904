"""Neural-network operations, named and shaped as in torch.nn.functional: softmax, log_softmax, dropout,
linear. (conv2d, conv_transpose2d and pooling come with the kernels.)
"""
from __future__ import annotations

from .. import backend
from ..tensor import Function, Tensor
from .elementwise import Scale, exp
from .linalg import matmul
from .reduce import normalize_axes
from .reduce import sum as _sum
from .shape import swapaxes


class Softmax(Function):
    """y = exp(x - max) / sum exp(x - max) along `axis`;  gx = y * (g - sum(g * y))."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        e = backend.get_array_module(x).exp(x - x.max(axis=self.axis, keepdims=True))
        return e / e.sum(axis=self.axis, keepdims=True)

    def backward(self, g):
        y = self.output()
        return y * (g - _sum(g * y, self.axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x) along `axis`;  gx = g - exp(y) * sum(g)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        xp = backend.get_array_module(x)
        shifted = x - x.max(axis=self.axis, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=self.axis, keepdims=True))

    def backward(self, g):
        return g - exp(self.output()) * _sum(g, self.axis, keepdims=True)


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
