"""Pixel transforms: scaling, uniform dequantization, binarization (NumPy, applied per batch by the
DataLoader), and the logit transform with its log-Jacobian (minigen ops, computed inside a flow's loss).

A transform takes an array and returns one. Random transforms take the generator as a keyword argument
`rng`; the DataLoader passes its own per-batch generator there, so a run is reproducible and resumable.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import numpy as np

from .. import backend
from ..tensor import Tensor, as_tensor


def to_unit(x: np.ndarray) -> np.ndarray:
    """Pixels to float32 in [0, 1]: uint8 values are divided by 255, floats are taken as already in [0, 1]."""
    return x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


def to_symmetric(x: np.ndarray) -> np.ndarray:
    """Pixels to float32 in [-1, 1] (2 x - 1 of `to_unit`), the range of a tanh generator's output."""
    return 2 * to_unit(x) - 1


def dequantize(x: np.ndarray, rng: np.random.Generator, levels: int = 256) -> np.ndarray:
    """Uniform dequantization: y = (k + u) / L, u ~ U[0, 1), for the grey level k = x (L - 1) of pixels x in
    [0, 1] on L levels (uint8 pixels: k = x).

    With L = 256: y = (255 x + u) / 256, the k-th grey level spread over [k/256, (k+1)/256) (computed in
    float64; the float32 result can round up to the bin's upper edge). A continuous density p(y) then bounds
    the discrete likelihood: log P(k) >= E_u[log p(y)] - D log 256 for D pixels (Theis et al. 2016), which
    is how bits/dim are reported.
    """
    k = x if x.dtype == np.uint8 else np.rint(to_unit(x) * (levels - 1))
    return ((k + rng.random(x.shape)) / levels).astype(np.float32)


def dequantize_batch(x: Tensor, levels: int = 256) -> Tensor:
    """`dequantize` for a batch Tensor on any device, inside a model's loss: the noise is drawn from
    minigen's CPU generator, so a run draws the same numbers on the CPU and on a GPU."""
    y = dequantize(backend.to_device(x.data, "cpu"), rng=backend.generator("cpu"), levels=levels)
    return Tensor(backend.to_device(y, x.device))


def binarize(x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """1 where the intensity in [0, 1] is at least `threshold`, else 0 (float32, NumPy or CuPy as x): the 8x8
    digits' grey level >= 8 of 0..16 is x >= 1/2."""
    return (to_unit(x) >= threshold).astype(np.float32)


def binarize_stochastic(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Bernoulli draw per pixel with the pixel's intensity in [0, 1] as probability (float32 {0, 1}).

    Applied by a DataLoader, every epoch sees a fresh draw: dynamically binarized MNIST.
    """
    x = to_unit(x)
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def logit_transform(x, alpha: float = 0.05) -> tuple[Tensor, Tensor]:
    """y = logit(p), p = alpha + (1 - 2 alpha) x, and log|det dy/dx| per example.

    Maps x in [0, 1] (dequantized pixels) to the real line, squeezing first into [alpha, 1 - alpha] so that
    y stays finite (RealNVP, Dinh et al. 2017, sec. 4.1, alpha = 0.05; written here in the symmetric form
    used by most implementations). The map is elementwise, so its Jacobian is diagonal with

        dy/dx = (1 - 2 alpha) / (p (1 - p)),
        log|det J| = sum over the pixels of  log(1 - 2 alpha) - log p - log(1 - p).

    For a flow on y: log p(x) = log p(y) + log|det J|. `x` is a Tensor (or array) of shape (n, ...);
    returns y of the same shape and log_det of shape (n,), both differentiable.
    """
    x = as_tensor(x)
    p = alpha + (1 - 2 * alpha) * x
    log_p, log_1mp = p.log(), (1 - p).log()
    log_det = (math.log(1 - 2 * alpha) - log_p - log_1mp).sum(axis=tuple(range(1, x.ndim)))
    return log_p - log_1mp, log_det


def logit_inverse(y, alpha: float = 0.05) -> Tensor:
    """The inverse of `logit_transform`: x = (sigmoid(y) - alpha) / (1 - 2 alpha)."""
    return (as_tensor(y).sigmoid() - alpha) / (1 - 2 * alpha)


def _takes_rng(step: Callable) -> bool:
    return "rng" in inspect.signature(step).parameters


def apply(transform: Callable, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """transform(x, rng=rng) when the transform takes an `rng`, else transform(x)."""
    return transform(x, rng=rng) if _takes_rng(transform) else transform(x)


def compose(*steps: Callable) -> Callable:
    """One transform applying `steps` in order, e.g. compose(dequantize, to_symmetric)."""
    def composed(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in steps:
            x = apply(step, x, rng)
        return x
    return composed
