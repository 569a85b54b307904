"""Edge cases and the functional forms of issue 13: empty and 0-d tensors, what `tensor` accepts,
gaussian_nll_loss below eps, F.pad's PyTorch meaning and modes, the functional normalizations, embedding and
interpolate; each gradient checked in float64 to second order."""
import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

import minigen as mg
import minigen.nn.functional as F
from minigen import nn
from minigen import testing as mt


def leaf(a):
    return mg.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def check(fn, arrays, reference=None, second_order=True):
    xs = [leaf(a) for a in arrays]
    if reference is not None:
        np.testing.assert_allclose(fn(*xs).numpy(), reference(*arrays), rtol=1e-7, atol=1e-10)
    assert mg.gradcheck(fn, xs)
    if second_order:
        assert mg.gradgradcheck(fn, xs)


# --- empty and 0-d tensors (point 3) ----------------------------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((3, 0), 1), ((0,), 0), ((2, 0, 3), 1)])
def test_softmax_and_logsumexp_over_an_empty_axis(shape, axis):
    x = leaf(np.zeros(shape))
    for fn in (mg.softmax, mg.log_softmax, F.softmax, F.log_softmax):
        y = fn(x, axis)
        assert y.shape == shape
        g, = mg.grad(y, [x], mg.zeros(shape, dtype="float64"))
        assert g.shape == shape
    y = mg.logsumexp(x, axis)
    np.testing.assert_array_equal(y.numpy(), np.full(np.delete(shape, axis), -np.inf))   # log of an empty sum
    g, = mg.grad(y.sum(), [x])
    assert g.shape == shape


def test_reductions_of_empty_tensors_follow_numpy():
    assert np.isnan(mg.mean(mg.zeros(0)).item()) and np.isnan(mg.var(mg.zeros(2, 0), axis=1).numpy()).all()
    assert mg.sum(mg.zeros(0, 3), axis=0).shape == (3,) and mg.max(mg.zeros(0, 3), axis=1).shape == (0,)
    with pytest.raises(ValueError, match="axis of length 0"):
        mg.max(mg.zeros(2, 0), axis=1)


def test_group_norm_on_an_empty_batch():
    x = mg.zeros(0, 4, 3, 3, requires_grad=True)
    y = nn.GroupNorm(2, 4)(x)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("fn", [mg.sum, mg.mean, mg.var, mg.std, mg.max, mg.min, mg.prod, mg.logsumexp, mg.cumsum,
                                mg.softmax, mg.log_softmax, mg.flip])
@pytest.mark.parametrize("axis", [0, -1, (0,)])
def test_an_axis_of_a_0d_tensor_is_one_clear_error(fn, axis):
    if fn in (mg.cumsum, mg.softmax, mg.log_softmax) and isinstance(axis, tuple):
        return
    with pytest.raises(ValueError, match=r"out of bounds for a tensor of 0 dimension\(s\) \(a 0-d tensor has no axes"):
        fn(mg.tensor(1.5), axis)
    if fn not in (mg.cumsum, mg.softmax, mg.log_softmax):
        assert fn(mg.tensor(1.5), None).shape == ()


# --- what a tensor holds (point 6) --------------------------------------------------------------------------


@pytest.mark.parametrize("data", [["a", "b"], None, [[1, 2], [3]], [1.0, "x"], {"a": 1}, object()],
                         ids=["strings", "None", "ragged", "mixed", "dict", "object"])
def test_tensor_accepts_numbers_and_booleans_only(data):
    with pytest.raises(TypeError, match="tensor: data must be numbers or booleans"):
        mg.tensor(data)


def test_tensor_of_numbers_bools_and_arrays():
    assert mg.tensor([True, False]).dtype == np.bool_ and mg.tensor([[1, 2], [3, 4]]).dtype == np.int64
    assert mg.tensor(np.array([1.5], dtype=np.float64)).dtype == np.float64 and mg.tensor(2.5).dtype == np.float32


# --- gaussian_nll_loss below eps (point 5) -------------------------------------------------------------------


def test_gaussian_nll_loss_clamps_the_variance_without_stopping_its_gradient():
    """PyTorch clamps var to eps in place under no_grad: the loss is taken at eps, and the gradient in var is
    the one at eps, d/dv 0.5 (log v + d^2 / v) = 0.5 (1/v - d^2 / v^2), not zero."""
    eps = 1e-3
    x, t = leaf([0.5, 0.02, 1.0]), mg.tensor([0.0, 0.0, 0.0], dtype="float64")
    var = leaf([1e-5, 1e-4, 2.0])                 # two below eps, one above
    loss = F.gaussian_nll_loss(x, t, var, eps=eps, reduction="sum")
    v = np.maximum(var.data, eps)
    np.testing.assert_allclose(loss.item(), np.sum(0.5 * (np.log(v) + x.data ** 2 / v)))
    gx, gv = mg.grad(loss, [x, var])
    np.testing.assert_allclose(gv.numpy(), 0.5 * (1 / v - x.data ** 2 / v ** 2))
    np.testing.assert_allclose(gx.numpy(), x.data / v)
    assert np.all(gv.numpy() != 0)


# --- F.pad: PyTorch's meaning (point 4) ------------------------------------------------------------------------


def test_pad_takes_pairs_from_the_last_axis():
    x = mg.ones(3, 4)
    assert F.pad(x, (1, 2)).shape == (3, 7)                          # PyTorch's meaning (was (6, 7))
    assert F.pad(x, (1, 2, 0, 1)).shape == (4, 7)
    assert F.pad(x, ((1, 0), (0, 2))).shape == (4, 6)               # numpy.pad's pad_width, per axis
    assert mg.pad(x, (1, 2)).shape == (6, 7)                         # minigen.pad is numpy.pad
    np.testing.assert_array_equal(F.pad(x, (1, 0), value=7.0).numpy()[:, 0], 7.0)
    with pytest.raises(ValueError, match="mode must be"):
        F.pad(x, (1, 1), mode="wrap")
    with pytest.raises(ValueError, match="pairs"):
        F.pad(x, (1, 2, 3))


_NUMPY_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("mode", sorted(_NUMPY_MODES))
@given(data=st.data())
def test_pad_modes(mode, data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3, min_side=3, max_side=4)))
    k = data.draw(st.integers(1, x.ndim))
    flat = data.draw(st.lists(st.integers(0, 2), min_size=2 * k, max_size=2 * k))
    widths = [(0, 0)] * (x.ndim - k) + [(flat[2 * i], flat[2 * i + 1]) for i in range(k)][::-1]
    check(lambda t: F.pad(t, flat, mode=mode), [x], lambda a: np.pad(a, widths, mode=_NUMPY_MODES[mode]))


# --- the functional normalizations, embedding, interpolate (point 4) -----------------------------------------


@given(data=st.data())
def test_layer_norm_and_group_norm(data):
    n, groups, per_group = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    c = groups * per_group
    x = data.draw(mt.arrays((n, c, 3)))
    w, b = data.draw(mt.arrays((c,))), data.draw(mt.arrays((c,)))

    def reference_gn(x, w, b):
        g = x.reshape(n, groups, -1)
        y = ((g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + 1e-5)).reshape(x.shape)
        return y * w[:, None] + b[:, None]
    check(lambda x, w, b: F.group_norm(x, groups, w, b), [x, w, b], reference_gn)
    lw, lb = data.draw(mt.arrays((c, 3))), data.draw(mt.arrays((c, 3)))

    def reference_ln(x, w, b):
        m, v = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5) * w + b
    check(lambda x, w, b: F.layer_norm(x, (c, 3), w, b), [x, lw, lb], reference_ln)


def test_batch_norm_functional_training_and_eval():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((5, 3, 2)), rng.standard_normal(3), rng.standard_normal(3)
    mean, var = mg.zeros(3, dtype="float64"), mg.ones(3, dtype="float64")
    y = F.batch_norm(leaf(x), mean, var, leaf(w), leaf(b), training=True, momentum=0.5)
    m, v = x.mean((0, 2)), x.var((0, 2))
    np.testing.assert_allclose(y.numpy(), (x - m[:, None]) / np.sqrt(v[:, None] + 1e-5) * w[:, None] + b[:, None])
    np.testing.assert_allclose(mean.numpy(), 0.5 * m)
    np.testing.assert_allclose(var.numpy(), 0.5 + 0.5 * v * 10 / 9)
    check(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [x, w, b])
    check(lambda x, w, b: F.batch_norm(x, mean, var, w, b), [x, w, b])


def test_embedding():
    weight = np.random.default_rng(1).standard_normal((5, 3))
    idx = np.array([[0, 4], [4, 2]])
    check(lambda w: F.embedding(idx, w), [weight], lambda w: w[idx])
    check(lambda w: F.embedding(mg.tensor(idx), w), [weight])


@given(data=st.data())
def test_interpolate_nearest(data):
    x = data.draw(mt.arrays((1, 2, data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))))
    size = (data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7)))
    rows = np.minimum(np.floor(np.arange(size[0]) * x.shape[2] / size[0]).astype(int), x.shape[2] - 1)
    cols = np.minimum(np.floor(np.arange(size[1]) * x.shape[3] / size[1]).astype(int), x.shape[3] - 1)
    check(lambda t: F.interpolate(t, size), [x], lambda a: a[:, :, rows][:, :, :, cols])
    check(lambda t: F.interpolate(t, scale_factor=2), [x], lambda a: a.repeat(2, axis=2).repeat(2, axis=3))
