"""Losses, as in torch.nn.functional, each written in log space where it matters so that it stays finite
for logits of +-1e4 in float32. `reduction` is 'mean' (default), 'sum' or 'none', keyword-only (where
PyTorch's positions hold its deprecated size_average and reduce).
"""
from __future__ import annotations

import math

import numpy as np

import kernels

from .. import backend
from ..tensor import Function, Tensor, as_tensor
from .elementwise import abs, clip, exp, log, maximum, softplus, where, xlogy
from .nn import log_softmax, softmax
from .reduce import mean as _mean
from .reduce import sum as _sum
from .shape import reshape, squeeze, take_along_axis


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return _mean(loss)
    if reduction == "sum":
        return _sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _same_shape(name: str, input: Tensor, target: Tensor) -> None:
    if input.shape != target.shape:
        raise ValueError(f"{name}: input of shape {input.shape} and target of shape {target.shape} differ")


def mse_loss(input: Tensor, target, *, reduction: str = "mean") -> Tensor:
    """(input - target)^2."""
    target = as_tensor(target, like=input)
    _same_shape("mse_loss", input, target)
    d = input - target
    return _reduce(d * d, reduction)


class BinaryCrossEntropy(Function):
    """l = -(t log p + (1 - t) log(1 - p)), each log clamped at -100 as PyTorch does (so p = 0 or 1 gives a
    finite loss);  gp = g (p - t) / max(p (1 - p), 1e-12),  gt = g (log(1 - p) - log p)."""

    def forward(self, p, t):
        with np.errstate(divide="ignore"):
            log_p, log_1mp = np.maximum(np.log(p), -100), np.maximum(np.log1p(-p), -100)
        return -(t * log_p + (1 - t) * log_1mp)

    def backward(self, g):
        p, t = self.inputs
        gp = g * (p - t) / clip(p * (1 - p), 1e-12, None) if p.requires_grad else None
        gt = g * (_clamped_log(1 - p) - _clamped_log(p)) if t.requires_grad else None
        return gp, gt


def _clamped_log(q: Tensor) -> Tensor:
    return maximum(log(q), -100.0)


def _weighted(loss: Tensor, weight) -> Tensor:
    return loss if weight is None else loss * weight


def binary_cross_entropy(input: Tensor, target, weight=None, *, reduction: str = "mean") -> Tensor:
    """Cross-entropy of probabilities `input` in [0, 1], times `weight` (broadcast); prefer
    binary_cross_entropy_with_logits."""
    target = as_tensor(target, like=input)
    _same_shape("binary_cross_entropy", input, target)
    if input.size and (input.data.min() < 0 or input.data.max() > 1):
        raise ValueError("binary_cross_entropy: input must be probabilities in [0, 1]; for logits use "
                         "binary_cross_entropy_with_logits")
    return _reduce(_weighted(BinaryCrossEntropy()(input, target), weight), reduction)


def binary_cross_entropy_with_logits(input: Tensor, target, weight=None, *, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))) = softplus(x) - t x, finite for any x;
    with pos_weight w: (1 - t) x + (1 + (w - 1) t) softplus(-x); times `weight` (broadcast)."""
    target = as_tensor(target, like=input)
    _same_shape("binary_cross_entropy_with_logits", input, target)
    if pos_weight is None:
        loss = softplus(input) - input * target
    else:
        loss = (1 - target) * input + (1 + (pos_weight - 1) * target) * softplus(-input)
    return _reduce(_weighted(loss, weight), reduction)


def _labels(name: str, input: Tensor, target: Tensor, ignore_index: int):
    """The integer labels checked against input (N, C, d1, ...): shape (N, d1, ...), values in [0, C) or
    ignore_index; returned with the mask of the kept ones."""
    if target.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must be integer labels, got {target.dtype}")
    expected = input.shape[:1] + input.shape[2:]
    if target.shape != expected:
        raise ValueError(f"{name}: for input of shape {input.shape} the labels must have shape "
                         f"{expected}, got {target.shape}")
    labels = target.data
    kept = labels != ignore_index
    if kept.any() and (labels[kept].min() < 0 or labels[kept].max() >= input.shape[1]):
        raise ValueError(f"{name}: labels must lie in [0, {input.shape[1]}), got range "
                         f"[{labels[kept].min()}, {labels[kept].max()}]")
    return labels, kept


def nll_loss(input: Tensor, target, weight=None, *, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-w[t] input[t] for log-probabilities input (N, C) or (N, C, d1, ...) and labels t (N,) / (N, d1, ...);
    labels equal to ignore_index count for nothing, and 'mean' divides by the kept labels' total weight
    (PyTorch's convention)."""
    labels, kept = _labels("nll_loss", input, as_tensor(target, like=input), ignore_index)
    return _nll(input, labels, kept, weight, reduction)


def _nll(input: Tensor, labels, kept, weight, reduction: str) -> Tensor:
    """nll_loss on labels that _labels has checked."""
    xp = backend.get_array_module(labels)
    every_label = bool(kept.all())
    safe = labels if every_label else xp.where(kept, labels, 0)
    loss = -squeeze(take_along_axis(input, xp.expand_dims(safe, 1), axis=1), 1)
    if weight is None and every_label:          # the common case: a plain mean of -input[t]
        return _reduce(loss, reduction)
    w = kept.astype(input.dtype)
    if weight is not None:
        w = w * (weight.data if isinstance(weight, Tensor) else xp.asarray(weight))[safe]
    loss = loss * Tensor(w.astype(input.dtype, copy=False))
    if reduction == "mean":
        total = float(w.sum())
        return _sum(loss) * (1.0 / total if total else math.nan)
    return _reduce(loss, reduction)


class LabelCrossEntropy(Function):
    """The sum (or mean) over the labels t of -log softmax(x)[t], classes on axis 1, as one node: the composition
    (log_softmax, take, negate, reduce) costs five and its backward six (an MLP's loss over 128 x 10 logits:
    forward and backward 0.26 ms, where PyTorch's took 0.13). gx = (softmax(x) - onehot(t)) g scale, scale 1 for
    the sum, 1/count for the mean; written in differentiable ops, so that a second derivative follows."""

    def __init__(self, labels, scale):
        self.labels, self.scale = labels, scale

    def forward(self, x):
        xp = backend.get_array_module(x)
        picked = xp.take_along_axis(kernels.log_softmax(x, 1), xp.expand_dims(self.labels, 1), axis=1)
        return -picked.sum() * x.dtype.type(self.scale)

    def backward(self, g):
        x = self.inputs[0]
        xp = backend.get_array_module(x.data)
        classes = xp.arange(x.shape[1]).reshape((-1,) + (1,) * (x.ndim - 2))
        onehot = (xp.expand_dims(self.labels, 1) == classes).astype(x.dtype)
        return (softmax(x, axis=1) - onehot) * (g * self.scale)


def cross_entropy(input: Tensor, target, weight=None, *, ignore_index: int = -100,
                  reduction: str = "mean") -> Tensor:
    """-log softmax(input)[target] with class logits on axis 1: input (N, C) or (N, C, d1, ...), target
    integer labels (N,) / (N, d1, ...) (nll_loss of the log-softmax, with its weight and ignore_index; one node,
    LabelCrossEntropy, where neither is in play), or class probabilities of input's shape
    (-sum_c w_c t_c log p_c)."""
    target = as_tensor(target, like=input)
    if target.dtype.kind != "f" and input.ndim >= 2:
        labels, kept = _labels("cross_entropy", input, target, ignore_index)
        if weight is None and reduction in ("mean", "sum") and input.dtype.kind == "f" and labels.size \
                and kept.all():
            return LabelCrossEntropy(labels, 1.0 / labels.size if reduction == "mean" else 1.0)(input)
        return _nll(log_softmax(input, axis=1), labels, kept, weight, reduction)
    log_p = log_softmax(input, axis=1)      # a vector input raises here: it has no class axis
    _same_shape("cross_entropy", input, target)
    if weight is not None:
        weight = reshape(as_tensor(weight, like=input), (-1,) + (1,) * (input.ndim - 2))
    return _reduce(-_sum(_weighted(target * log_p, weight), axis=1), reduction)


def l1_loss(input: Tensor, target, *, reduction: str = "mean") -> Tensor:
    """|input - target|."""
    target = as_tensor(target, like=input)
    _same_shape("l1_loss", input, target)
    return _reduce(abs(input - target), reduction)


def smooth_l1_loss(input: Tensor, target, *, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere, d = input - target (Girshick 2015's
    Huber-like loss); beta = 0 is l1_loss."""
    target = as_tensor(target, like=input)
    _same_shape("smooth_l1_loss", input, target)
    d = input - target
    if beta == 0:
        return _reduce(abs(d), reduction)
    return _reduce(where(abs(d).data < beta, d * d * (0.5 / beta), abs(d) - 0.5 * beta), reduction)


def kl_div(input: Tensor, target, *, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """Pointwise KL(target || q) terms for log-probabilities input = log q: t (log t - input), 0 where t = 0
    (xlogy); with log_target, target is log t. reduction 'batchmean' divides the sum by the batch size
    (the true KL per example), 'mean' by the number of elements (PyTorch's default)."""
    target = as_tensor(target, like=input)
    _same_shape("kl_div", input, target)
    if log_target:
        loss = exp(target) * (target - input)
    else:
        loss = xlogy(target, target) - target * input
    if reduction == "batchmean":
        return _sum(loss) * (1.0 / input.shape[0])
    return _reduce(loss, reduction)


class ClampStraightThrough(Function):
    """y = max(x, lo);  gx = g everywhere: the clamp is not differentiated, as PyTorch's in-place clamp of the
    variance under no_grad in gaussian_nll_loss, so a variance below lo still gets a gradient."""

    def __init__(self, lo):
        self.lo = lo

    def forward(self, x):
        return np.maximum(x, self.lo)

    def backward(self, g):
        return g


LOG_2PI = math.log(2 * math.pi)


def gaussian_nll_loss(input: Tensor, target, var, full: bool = False, eps: float = 1e-6,
                      reduction: str = "mean") -> Tensor:
    """0.5 (log v + (input - target)^2 / v) with v = max(var, eps) (+ 0.5 log 2 pi when full), as PyTorch,
    whose clamp passes the gradient through unchanged (ClampStraightThrough)."""
    target, var = as_tensor(target, like=input), as_tensor(var, like=input)
    _same_shape("gaussian_nll_loss", input, target)
    v = ClampStraightThrough(eps)(var)
    d = input - target
    loss = 0.5 * (log(v) + d * d / v)
    if full:
        loss = loss + 0.5 * LOG_2PI
    return _reduce(loss, reduction)


def kl_normal(mu_q, log_var_q, mu_p=0.0, log_var_p=0.0) -> Tensor:
    """KL(N(mu_q, exp(log_var_q)) || N(mu_p, exp(log_var_p))) elementwise, in closed form:
    0.5 (log_var_p - log_var_q + (exp(log_var_q) + (mu_q - mu_p)^2) / exp(log_var_p) - 1).
    With the defaults, the KL to the standard normal of the VAE (Kingma & Welling 2014, appendix B)."""
    mu_q = as_tensor(mu_q)
    log_var_q = as_tensor(log_var_q, like=mu_q)
    mu_p, log_var_p = as_tensor(mu_p, like=mu_q), as_tensor(log_var_p, like=mu_q)
    d = mu_q - mu_p
    return 0.5 * (log_var_p - log_var_q + (exp(log_var_q) + d * d) * exp(-log_var_p) - 1)


__all__ = ["mse_loss", "l1_loss", "smooth_l1_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
           "nll_loss", "cross_entropy", "kl_div",
           "gaussian_nll_loss", "kl_normal"]
