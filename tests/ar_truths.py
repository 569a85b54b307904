"""Ground truths for any autoregressive model p(x) = prod_i p(x_i | x_<i) on small discrete images.

Both checks talk to the model through plain NumPy functions, so they serve every AR family alike (FVSBN,
NADE, MADE, RNNs, PixelCNN, PixelRNN):

- `log_prob(x) -> (n,)`: log p(x) in nats (float64 where the model allows) for images x of shape
  (n, *shape) with values in [0, 1] (grey level k as k / (L - 1); binary images are 0 / 1);
- `conditionals(x) -> (n, D, ...)`: the parameters of every conditional p(x_d | x_<d) (logits), indexed by
  the pixel's flat index d = 0..D-1 in C order of `shape` (not by its position in the generation order).

Typical use, on 4x4 binary images (D = 16, 2^16 = 65536 images):

    assert_normalized(model_log_prob, (1, 4, 4))
    assert_autoregressive(model_logits, (1, 4, 4), full_context=True)
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np


def all_images(shape: Sequence[int], levels: int = 2) -> np.ndarray:
    """Every image of `shape` with `levels` grey levels, (levels^D, *shape) in [0, 1], in lexicographic order
    of the flat pixels."""
    D = int(np.prod(shape))
    codes = np.array(list(itertools.product(range(levels), repeat=D)), dtype=np.float64)
    return (codes / (levels - 1)).reshape(-1, *shape)


def _logsumexp(a: np.ndarray) -> float:
    m = float(np.max(a))
    return m + float(np.log(np.sum(np.exp(a - m))))


def assert_normalized(log_prob: Callable[[np.ndarray], np.ndarray], shape: Sequence[int], levels: int = 2,
                      batch: int = 4096, tol: float = 1e-6) -> float:
    """Sum p(x) over all levels^D images of `shape` (evaluated `batch` at a time) and assert it is 1 within
    `tol`; returns the sum.

    Catches: conditionals that do not each sum to one over x_d (a wrong sigmoid / softmax sign or offset),
    a log-likelihood that sums the wrong pixels or the wrong number of them, and, in combination with a model
    whose conditionals peek at the pixel they predict or at later ones (a mask-A / mask-B mix-up, an
    off-by-one shift of the input sequence in an RNN, an order used in training that differs from the one
    used in log_prob), a total that is no longer 1: p(x_d | x_d, ...) is not a distribution over x_d.
    """
    images = all_images(shape, levels)
    log_p = np.concatenate([np.asarray(log_prob(images[i:i + batch]), dtype=np.float64).reshape(-1)
                            for i in range(0, len(images), batch)])
    assert log_p.shape == (len(images),), f"log_prob returned {log_p.shape} for {len(images)} images"
    assert np.all(np.isfinite(log_p)), "log_prob gave a non-finite value"
    total = float(np.exp(_logsumexp(log_p)))
    assert abs(total - 1.0) <= tol, f"sum of p(x) over all {len(images)} images is {total!r}, not 1 (tol {tol})"
    return total


def dependencies(conditionals: Callable[[np.ndarray], np.ndarray], shape: Sequence[int], n: int = 4,
                 seed: int = 0, tol: float = 1e-7) -> np.ndarray:
    """The (D, D) boolean matrix dep[i, j]: the conditional of pixel i moved (by more than `tol`) when pixel
    j of the input was changed, on any of `n` random binary images. Pixels are flat indices of `shape`."""
    D = int(np.prod(shape))
    x = np.random.default_rng(seed).integers(0, 2, size=(n, D)).astype(np.float64)
    flipped = np.repeat(x[None], D, axis=0)                       # (D, n, D): copy j has pixel j changed
    idx = np.arange(D)
    flipped[idx, :, idx] = np.where(x[:, idx].T < 0.5, 1.0, 0.0)
    batch = np.concatenate([x, flipped.reshape(D * n, D)]).reshape(-1, *shape)
    out = np.asarray(conditionals(batch), dtype=np.float64)
    assert out.shape[:2] == (n * (D + 1), D), f"conditionals returned {out.shape}, expected ({n * (D + 1)}, {D}, ...)"
    base, moved = out[:n], out[n:].reshape(D, n, D, -1)
    change = np.abs(moved - base.reshape(1, n, D, -1)).max(axis=(1, 3))   # (j, i)
    return change.T > tol


def assert_autoregressive(conditionals: Callable[[np.ndarray], np.ndarray], shape: Sequence[int],
                          order: Sequence[int] | None = None, full_context: bool = False, n: int = 4,
                          seed: int = 0, tol: float = 1e-7) -> np.ndarray:
    """Assert that changing pixel j never moves the conditional of any pixel i that comes at or before j in
    `order` (a permutation of the flat indices 0..D-1, order[k] = the k-th pixel generated; raster order by
    default). With full_context=True also assert the converse: every conditional does move with every pixel
    before it. Returns the dependency matrix (see `dependencies`).

    Catches: a mask that lets a pixel see itself or a later pixel (mask A used where B belongs or the reverse,
    a MADE output degree compared with >= instead of >, a vertical stack of a gated PixelCNN not shifted down
    one row, an RNN fed x_t instead of x_{t-1}), and an ordering bug (a model trained in one order and
    evaluated in another). With full_context=True it also catches blind spots: the pixels a stacked masked
    convolution never sees (van den Oord et al. 2016, fig. 1), a window or receptive field smaller than
    claimed, a mask that cuts a path from an earlier pixel (e.g. MADE hidden degrees never reaching D-1).
    Use full_context only for models meant to see the whole past, with untrained random weights.
    """
    D = int(np.prod(shape))
    order = np.arange(D) if order is None else np.asarray(order)
    assert sorted(order.tolist()) == list(range(D)), "order must be a permutation of 0..D-1"
    position = np.empty(D, dtype=int)
    position[order] = np.arange(D)
    dep = dependencies(conditionals, shape, n=n, seed=seed, tol=tol)
    earlier = position[None, :] < position[:, None]              # earlier[i, j]: j comes before i
    leaks = np.argwhere(dep & ~earlier)
    assert len(leaks) == 0, ("conditional of pixel i moved when pixel j (not before i) changed, (i, j) = "
                             f"{leaks[:8].tolist()}")
    if full_context:
        blind = np.argwhere(earlier & ~dep)
        assert len(blind) == 0, f"conditional of pixel i ignores earlier pixel j, (i, j) = {blind[:8].tolist()}"
    return dep
