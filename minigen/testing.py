"""Hypothesis strategies for property-testing operations and models built on minigen.

    from hypothesis import given
    from minigen import testing as mt

    @given(mt.arrays(mt.shapes(), low=0.1, high=3.0))      # inside log's domain
    def test_log(x):
        assert mg.gradcheck(mg.log, [mg.tensor(x, requires_grad=True)])

Strategies draw NumPy arrays (float64 unless asked); wrap them with `minigen.tensor(..., requires_grad=True)`.
"""
from __future__ import annotations

import contextlib

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 1, max_side: int = 5) -> st.SearchStrategy:
    """Array shapes, e.g. (), (3,), (2, 1, 4)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes: int = 2, min_dims: int = 0, max_dims: int = 4, min_side: int = 1,
                         max_side: int = 5) -> st.SearchStrategy:
    """A tuple of `num_shapes` shapes that broadcast together (some axes of length 1, some missing)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=min_side, max_side=max_side).map(lambda r: r.input_shapes)


@st.composite
def arrays(draw, shape, dtype=np.float64, low: float = -3.0, high: float = 3.0, avoid=(),
           min_distance: float = 0.1, non_contiguous: bool | None = None, distinct: bool = False) -> np.ndarray:
    """An array of `shape` (a tuple or a strategy of shapes) with values in [low, high], at least
    `min_distance` away from each value in `avoid` (kinks and poles: 0 for abs, ...). With `distinct`, the
    values are evenly spread over [low, high] in a drawn order, (high - low) / size apart, so no two tie
    (the kinks of max, sort, max pooling). Drawn from a seeded generator rather than element by element, so
    large arrays are cheap. With non_contiguous (drawn when None), the array is a strided view of a larger
    one, which catches code that assumes C order."""
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.uniform(low, high, size=shape)
    if distinct:
        x = low + (rng.permutation(x.size).reshape(x.shape) + 0.5) * ((high - low) / max(x.size, 1))
    for a in avoid:
        near = np.abs(x - a) < min_distance
        x = np.where(near, a + np.copysign(min_distance, np.where(x == a, 1.0, x - a)) * 1.5, x)
    x = np.clip(x, low, high).astype(dtype)
    if non_contiguous is None:
        non_contiguous = draw(st.booleans())
    if non_contiguous and x.ndim:
        big = np.empty(x.shape[:-1] + (2 * x.shape[-1],), dtype=dtype)
        big[..., ::2] = x
        x = big[..., ::2]
    return x


def axes(ndim: int, allow_none: bool = True, allow_tuple: bool = True) -> st.SearchStrategy:
    """A valid `axis` argument for a tensor of `ndim` dimensions: None, an int (negative too), or a tuple of
    distinct ints."""
    options = []
    if allow_none:
        options.append(st.none())
    if ndim:
        options.append(st.integers(-ndim, ndim - 1))
        if allow_tuple:
            options.append(st.lists(st.integers(0, ndim - 1), unique=True, min_size=1, max_size=ndim)
                           .map(tuple))
    return st.one_of(*options) if options else st.none()


@st.composite
def matrices(draw, n: int | st.SearchStrategy | None = None, batch_shape=(), singular_values=(0.5, 2.0),
             negative_det: bool | None = None, dtype=np.float64) -> np.ndarray:
    """Square matrices U diag(s) V^T with singular values s drawn log-uniformly from `singular_values`
    (lo, hi): lo/hi sets the condition number. U, V are random orthogonal (QR of a Gaussian matrix);
    `negative_det` picks the determinant's sign (drawn when None)."""
    if n is None:
        n = st.integers(1, 5)
    if isinstance(n, st.SearchStrategy):
        n = draw(n)
    if isinstance(batch_shape, st.SearchStrategy):
        batch_shape = draw(batch_shape)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    lo, hi = singular_values
    s = np.exp(rng.uniform(np.log(lo), np.log(hi), size=tuple(batch_shape) + (n,)))
    u, _ = np.linalg.qr(rng.standard_normal(tuple(batch_shape) + (n, n)))
    v, _ = np.linalg.qr(rng.standard_normal(tuple(batch_shape) + (n, n)))
    a = (u * s[..., None, :]) @ np.swapaxes(v, -1, -2)
    if negative_det is None:
        negative_det = draw(st.booleans())
    sign = np.sign(np.linalg.det(a))
    flip = np.where((sign < 0) != negative_det, -1.0, 1.0)   # negating one row flips the sign of det
    a[..., 0, :] *= flip[..., None]
    return a.astype(dtype)


@contextlib.contextmanager
def swapped_parameters(module, tensors):
    """Inside, `module`'s parameters (in `named_parameters()` order) are `tensors`; afterwards the originals
    are back. For checking a model's gradients in its parameters, since gradcheck calls its function with
    shifted copies of the inputs:

        params = list(model.parameters())
        def loss(*ps):
            with swapped_parameters(model, ps):
                return model(x).sum()
        minigen.gradcheck(loss, params)
    """
    slots = []
    for name, _ in module.named_parameters():
        *path, leaf = name.split(".")
        owner = module
        for part in path:
            owner = owner._modules[part]
        slots.append((owner, leaf))
    if len(slots) != len(tensors):
        raise ValueError(f"the module has {len(slots)} parameters, {len(tensors)} tensors given")
    originals = [owner._parameters[leaf] for owner, leaf in slots]
    for (owner, leaf), t in zip(slots, tensors):
        owner._parameters[leaf] = t
    try:
        yield
    finally:
        for (owner, leaf), p in zip(slots, originals):
            owner._parameters[leaf] = p
