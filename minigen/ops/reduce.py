"""Reductions over axes: sum, mean, var, std, max, min, prod, logsumexp, norms, arg-max / arg-min, and the
scans cumsum, cumprod, logcumsumexp.

`axis` is an int, a tuple of ints or None (all axes), negative values counting from the end, as in NumPy;
`keepdims` keeps the reduced axes with length 1. The backward of a reduction broadcasts the output
gradient back over the reduced axes, which `_expand` does once for all of them.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.norm import sum_over

from .. import backend
from ..tensor import Function, Tensor
from .elementwise import Scale, exp, sqrt, tie, where
from .shape import broadcast_to, flip, moveaxis, normalize_axes, reshape, take_along_axis


def _kept_shape(shape, axes) -> tuple:
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _expand(g: Tensor, shape: tuple, axes: tuple, keepdims: bool) -> Tensor:
    """The gradient of a reduction's output, broadcast back to the reduced tensor's shape."""
    if not keepdims:
        g = reshape(g, _kept_shape(shape, axes))
    return broadcast_to(g, shape)


class Sum(Function):
    """y = sum of x over `axes`;  gx = g broadcast over those axes."""

    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        return sum_over(x, self.axes, self.keepdims)

    def backward(self, g):
        return _expand(g, self.inputs[0].shape, self.axes, self.keepdims)


class Extremum(Function):
    """y = max (or min) of x over `axes`;  gx = g at the positions that attain it, split evenly on ties."""

    def __init__(self, reduce, axes, keepdims):
        self.reduce, self.axes, self.keepdims = reduce, axes, keepdims

    def forward(self, x):
        if any(x.shape[a] == 0 for a in self.axes):
            raise ValueError(f"{self.reduce.__name__} over an axis of length 0 (shape {x.shape}) has no value")
        return self.reduce(x, axis=self.axes, keepdims=self.keepdims)

    def backward(self, g):
        x = self.inputs[0]
        y = self.output().data
        attained = x.data == (y if self.keepdims else y.reshape(_kept_shape(x.shape, self.axes)))
        share = attained / attained.sum(axis=self.axes, keepdims=True)
        return tie(Scale(share)(_expand(g, x.shape, self.axes, self.keepdims)), x)


class LogSumExp(Function):
    """y = log sum exp(x) over `axes`, computed as m + log sum exp(x - m) with m the max (finite for any
    finite x, and -inf for a row of -inf);  gx = g * exp(x - y) (the softmax of x)."""

    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        if any(x.shape[a] == 0 for a in self.axes):      # an empty sum: log 0
            return np.full_like(x.sum(axis=self.axes, keepdims=self.keepdims), -np.inf)
        m = x.max(axis=self.axes, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):
            y = np.log(np.exp(x - m).sum(axis=self.axes, keepdims=True)) + m
        return y if self.keepdims else np.squeeze(y, axis=self.axes)

    def backward(self, g):
        x = self.inputs[0]
        y = _expand(self.output(), x.shape, self.axes, self.keepdims)
        return _expand(g, x.shape, self.axes, self.keepdims) * exp(x - y)


class Cumsum(Function):
    """y_i = sum_{j <= i} x_j along `axis`;  gx_i = sum_{j >= i} g_j (a reversed cumsum)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return np.cumsum(x, axis=self.axis)

    def backward(self, g):
        return flip(cumsum(flip(g, self.axis), self.axis), self.axis)


def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - NumPy's name
    return Sum(normalize_axes(axis, x.ndim), keepdims)(x)


def _reciprocal(n: int) -> float:
    """1 / n for a count: NaN for none (the mean of nothing, as NumPy and PyTorch)."""
    return 1.0 / n if n > 0 else math.nan


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    axes = normalize_axes(axis, x.ndim)
    n = math.prod(x.shape[a] for a in axes)
    return Sum(axes, keepdims)(x) * _reciprocal(n)


def var(x: Tensor, axis=None, ddof: int = 0, keepdims: bool = False) -> Tensor:
    """mean of (x - mean(x))^2 with n - ddof in the denominator (NumPy's default ddof=0)."""
    axes = normalize_axes(axis, x.ndim)
    n = math.prod(x.shape[a] for a in axes)
    d = x - mean(x, axes, keepdims=True)
    return Sum(axes, keepdims)(d * d) * _reciprocal(n - ddof)


def std(x: Tensor, axis=None, ddof: int = 0, keepdims: bool = False) -> Tensor:
    """sqrt(var); its gradient is infinite where the variance is 0."""
    return sqrt(var(x, axis, ddof, keepdims))


def max(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - NumPy's name
    return Extremum(np.max, normalize_axes(axis, x.ndim), keepdims)(x)


def min(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - NumPy's name
    return Extremum(np.min, normalize_axes(axis, x.ndim), keepdims)(x)


def logsumexp(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    return LogSumExp(normalize_axes(axis, x.ndim), keepdims)(x)


def cumsum(x: Tensor, axis: int) -> Tensor:
    (axis,) = normalize_axes(axis, x.ndim)
    return Cumsum(axis)(x)


def prod(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Product over `axis`, with exact gradients also where x has zeros.

    The reduced axes are moved to the end and flattened to one axis of length n. d prod / d x_i is the
    product of the other entries: the product of each row of the n x n matrix X_i with x_i replaced by 1.
    So the backward is itself a prod, differentiable to any order, at O(n^2) memory per reduced row.
    """
    axes = normalize_axes(axis, x.ndim)
    kept = [a for a in range(x.ndim) if a not in axes]
    rows = reshape(moveaxis(x, axes, tuple(range(len(kept), x.ndim))), [x.shape[a] for a in kept] + [-1])
    y = _ProdLast()(rows)
    return reshape(y, _kept_shape(x.shape, axes)) if keepdims else y


class _ProdLast(Function):
    """y = prod of x over its last axis;  gx_i = g * prod_{j != i} x_j (see `prod`)."""

    def forward(self, x):
        return np.prod(x, axis=-1)

    def backward(self, g):
        x = self.inputs[0]
        n = x.shape[-1]
        diagonal = backend.get_array_module(x.data).eye(n, dtype=bool)
        x_without_i = where(diagonal, 1.0, reshape(x, x.shape[:-1] + (1, n)))   # (..., n, n)
        return reshape(g, g.shape + (1,)) * _ProdLast()(x_without_i)


def _lower_rows(x: Tensor, axis: int, fill: float) -> Tensor:
    """For scans along `axis`: x moved to the last axis and repeated into rows (..., n, n) whose row j holds
    x_0 .. x_j and `fill` after: a cumulative op is then a plain reduction of each row."""
    x = moveaxis(x, axis, -1)
    n = x.shape[-1]
    xp = backend.get_array_module(x.data)
    upto = xp.tril(xp.ones((n, n), dtype=bool))            # row j, column i: i <= j
    return where(upto, reshape(x, x.shape[:-1] + (1, n)), fill)


def cumprod(x: Tensor, axis: int) -> Tensor:
    """y_j = prod_{i <= j} x_i along `axis`: the products of the rows of `_lower_rows`, so its gradients of
    every order are prod's, exact where x has zeros (O(n^2) memory per scanned row)."""
    (axis,) = normalize_axes(axis, x.ndim)
    return moveaxis(_ProdLast()(_lower_rows(x, axis, 1.0)), -1, axis)


def logcumsumexp(x: Tensor, axis: int) -> Tensor:
    """y_j = log sum_{i <= j} exp(x_i) along `axis`, stable for any finite x: the logsumexp of the rows of
    `_lower_rows` padded with -inf, so its derivatives are logsumexp's (O(n^2) memory per scanned row)."""
    (axis,) = normalize_axes(axis, x.ndim)
    return moveaxis(logsumexp(_lower_rows(x, axis, -np.inf), axis=-1), -1, axis)


def _arg(reduce):
    def arg(x: Tensor, axis: int | None = None, keepdims: bool = False) -> Tensor:
        if axis is not None:
            (axis,) = normalize_axes(axis, x.ndim)
        return Tensor(reduce(x.data, axis=axis, keepdims=keepdims))
    arg.__name__ = reduce.__name__
    arg.__doc__ = (f"The index of the {reduce.__name__[3:]} along `axis` (of the flattened tensor when None), "
                   "an integer tensor; the first one on ties.")
    return arg


argmax, argmin = _arg(np.argmax), _arg(np.argmin)


class VectorNorm2(Function):
    """y = sqrt(sum x^2) over `axes`;  gx = g x / y, taken as 0 where y = 0 (PyTorch's subgradient)."""

    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        return np.sqrt((x * x).sum(axis=self.axes, keepdims=self.keepdims))

    def backward(self, g):
        x = self.inputs[0]
        y = _expand(self.output(), x.shape, self.axes, self.keepdims)
        nonzero = y.data != 0
        return _expand(g, x.shape, self.axes, self.keepdims) * where(nonzero, x, 0.0) / where(nonzero, y, 1.0)


def vector_norm(x: Tensor, ord: float = 2, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A002
    """(sum |x|^ord)^(1/ord) over `axis` (all elements when None): ord 2 (the Euclidean norm, gradient 0 at
    0), 1, inf, -inf, or any other positive number."""
    axes = normalize_axes(axis, x.ndim)
    if ord == 2:
        return VectorNorm2(axes, keepdims)(x)
    a = x.abs()
    if ord == math.inf:
        return max(a, axes, keepdims)
    if ord == -math.inf:
        return min(a, axes, keepdims)
    if ord == 1:
        return sum(a, axes, keepdims)
    if ord <= 0:
        raise ValueError(f"vector_norm: ord must be positive or +-inf, got {ord}")
    return sum(a ** ord, axes, keepdims) ** (1.0 / ord)


def norm(x: Tensor, ord=None, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A002
    """numpy.linalg.norm for the vector norms and the Frobenius norm: ord None or 'fro' is the 2-norm of all
    the elements over `axis` (every axis when None); a number is a vector norm along an int axis."""
    if ord in (None, "fro"):
        return vector_norm(x, 2, axis, keepdims)
    if axis is not None and not isinstance(axis, (int, np.integer)) or axis is None and x.ndim > 1:
        raise NotImplementedError("norm: matrix norms other than 'fro' are not implemented; use vector_norm")
    return vector_norm(x, ord, axis, keepdims)


def argsort(x: Tensor, axis: int = -1, descending: bool = False) -> Tensor:
    """The indices that sort x along `axis` (stable: ties keep their order), an integer tensor."""
    (axis,) = normalize_axes(axis, x.ndim)
    xp = backend.get_array_module(x.data)
    if descending:     # stable and descending: sort the negation (NaN-free data)
        return Tensor(xp.argsort(-x.data, axis=axis, kind="stable"))
    return Tensor(xp.argsort(x.data, axis=axis, kind="stable"))


def sort(x: Tensor, axis: int = -1, descending: bool = False) -> tuple[Tensor, Tensor]:
    """(values, indices) of x sorted along `axis` (PyTorch's pair); the values are x gathered at the
    indices, so their gradient is scattered back."""
    indices = argsort(x, axis, descending)
    return take_along_axis(x, indices, axis), indices


def topk(x: Tensor, k: int, axis: int = -1, largest: bool = True) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest (or smallest) entries along `axis`, in that order."""
    (axis,) = normalize_axes(axis, x.ndim)
    if not 0 <= k <= x.shape[axis]:
        raise ValueError(f"topk: k={k} for an axis of length {x.shape[axis]}")
    order = argsort(x, axis, descending=largest).data
    indices = Tensor(order[(slice(None),) * axis + (slice(0, k),)])
    return take_along_axis(x, indices, axis), indices
