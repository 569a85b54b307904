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


# --- the ops a generative-model engine is expected to have (point 7) ----------------------------------------

# name: (minigen fn, SciPy / NumPy reference, (low, high), kinks to avoid, second order)
UNARY_MORE = {
    "lgamma": (mg.lgamma, scipy.special.gammaln, (0.2, 5), (), True),
    "digamma": (mg.digamma, scipy.special.digamma, (0.2, 5), (), True),
    "polygamma1": (lambda x: mg.polygamma(1, x), lambda x: scipy.special.polygamma(1, x), (0.3, 5), (), True),
    "erfinv": (mg.erfinv, scipy.special.erfinv, (-0.9, 0.9), (), True),
}


@pytest.mark.parametrize("name", sorted(UNARY_MORE))
@given(data=st.data())
def test_special_functions(name, data):
    fn, ref, (low, high), avoid, second = UNARY_MORE[name]
    x = data.draw(mt.arrays(mt.shapes(max_dims=3), low=low, high=high, avoid=avoid))
    check(fn, [x], ref, second)


BINARY_MORE = {   # name: (fn, reference, (low, high) of a, (low, high) of b)
    "logaddexp": (mg.logaddexp, np.logaddexp, (-3, 3), (-3, 3)),
    "xlogy": (mg.xlogy, scipy.special.xlogy, (-3, 3), (0.2, 3)),
    "atan2": (mg.atan2, np.arctan2, (-3, 3), (0.3, 3)),
}


@pytest.mark.parametrize("name", sorted(BINARY_MORE))
@given(data=st.data())
def test_binary_more(name, data):
    fn, ref, (la, ha), (lb, hb) = BINARY_MORE[name]
    shape_a, shape_b = data.draw(mt.broadcastable_shapes(2, max_dims=3))
    check(fn, [data.draw(mt.arrays(shape_a, low=la, high=ha)), data.draw(mt.arrays(shape_b, low=lb, high=hb))], ref)


def test_xlogy_and_logaddexp_at_their_edges():
    x, y = leaf([0.0, 0.0, 2.0]), mg.tensor([0.0, 3.0, 1.0], dtype="float64")
    np.testing.assert_array_equal(mg.xlogy(x, y).numpy(), [0.0, 0.0, 0.0])         # 0 log 0 = 0
    gx, = mg.grad(mg.xlogy(x, y).sum(), [x])
    np.testing.assert_array_equal(gx.numpy(), [0.0, 0.0, 0.0])                     # PyTorch's convention
    big = leaf([1e4, -1e4])
    np.testing.assert_allclose(mg.logaddexp(big, big).numpy(), big.data + np.log(2))
    assert mg.atan2(mg.tensor(1.0), mg.tensor(-1.0)).item() == pytest.approx(3 * np.pi / 4)


@given(data=st.data())
def test_scans_cumprod_logcumsumexp(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3, max_side=4)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check(lambda t: mg.cumprod(t, axis), [x], lambda a: np.cumprod(a, axis))
    check(lambda t: mg.logcumsumexp(t, axis), [x], lambda a: np.logaddexp.accumulate(a, axis))


def test_cumprod_with_zeros_and_logcumsumexp_of_huge_values():
    x = np.array([[2.0, 0.0, 3.0, 0.5], [0.0, 0.0, 1.5, 2.0]])
    check(lambda t: mg.cumprod(t, 1), [x], lambda a: np.cumprod(a, 1))
    y = mg.logcumsumexp(mg.tensor(np.array([1e4, 1e4, -1e4], dtype=np.float32)), 0)
    np.testing.assert_allclose(y.numpy(), [1e4, 1e4 + np.log(2), 1e4 + np.log(2)], rtol=1e-6)


@pytest.mark.parametrize("ord", [2, 1, 3, np.inf, -np.inf])
@given(data=st.data())
def test_vector_norm(ord, data):
    # distinct for the max / min of |x| (inf norms), whose first derivative jumps at ties
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3), low=0.1, high=3, distinct=True))
    x = x * np.where(np.arange(x.size).reshape(x.shape) % 2, 1, -1)
    axis = data.draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
    keepdims = data.draw(st.booleans())
    if axis is None:
        def reference(a):
            return np.linalg.norm(a.reshape(-1), ord).reshape((1,) * a.ndim if keepdims else ())
    else:
        def reference(a):
            return np.linalg.norm(a, ord, axis, keepdims)
    check(lambda t: mg.vector_norm(t, ord, axis, keepdims), [x], reference)


def test_norm_is_numpys_and_zero_has_a_zero_gradient():
    x = np.random.default_rng(2).standard_normal((3, 4))
    np.testing.assert_allclose(mg.norm(mg.tensor(x)).item(), np.linalg.norm(x))
    np.testing.assert_allclose(mg.norm(mg.tensor(x), 1, axis=0).numpy(), np.linalg.norm(x, 1, axis=0))
    z = leaf(np.zeros(3))
    mg.norm(z).backward()
    np.testing.assert_array_equal(z.grad.numpy(), 0.0)
    with pytest.raises(NotImplementedError, match="matrix norms"):
        mg.norm(mg.tensor(x), 2)


def test_argmax_argmin_sort_argsort_topk():
    x = np.array([[3.0, 1.0, 2.0, 1.0], [0.5, 4.0, 4.0, -1.0]])
    t = leaf(x)
    np.testing.assert_array_equal(mg.argmax(t, 1).numpy(), [0, 1])
    np.testing.assert_array_equal(mg.argmin(t, axis=1, keepdims=True).numpy(), [[1], [3]])
    assert mg.argmax(t).item() == 5 and mg.argmax(t).dtype.kind == "i"
    values, indices = mg.sort(t, 1)
    np.testing.assert_array_equal(values.numpy(), np.sort(x, 1))
    np.testing.assert_array_equal(indices.numpy(), np.argsort(x, 1, kind="stable"))
    np.testing.assert_array_equal(mg.argsort(t, 0, descending=True).numpy(), [[0, 1, 1, 0], [1, 0, 0, 1]])
    values, indices = mg.topk(t, 2, 1)
    np.testing.assert_array_equal(values.numpy(), [[3.0, 2.0], [4.0, 4.0]])
    np.testing.assert_array_equal(indices.numpy(), [[0, 2], [1, 2]])
    distinct = np.random.default_rng(3).permutation(12).reshape(3, 4) * 0.5
    check(lambda s: mg.sort(s, 0)[0], [distinct], lambda a: np.sort(a, 0))
    check(lambda s: mg.topk(s, 3, largest=False)[0] ** 2, [distinct], lambda a: np.sort(a, 1)[:, :3] ** 2)


@given(data=st.data())
def test_tril_triu_diagonal_roll(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=2, max_dims=3)))
    k = data.draw(st.integers(-2, 2))
    check(lambda t: mg.tril(t, k), [x], lambda a: np.tril(a, k))
    check(lambda t: mg.triu(t, k), [x], lambda a: np.triu(a, k))
    a1, a2 = data.draw(st.sampled_from([(0, 1), (-1, -2), (0, -1)]))
    check(lambda t: mg.diagonal(t, k, a1, a2), [x], lambda a: np.diagonal(a, k, a1, a2))
    shift = data.draw(st.integers(-5, 5))
    axis = data.draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
    check(lambda t: mg.roll(t, shift, axis), [x], lambda a: np.roll(a, shift, axis))


@given(data=st.data())
def test_scatter_add_and_index_add(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3, max_side=4)))
    axis = data.draw(st.integers(0, x.ndim - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    index = rng.integers(0, x.shape[axis], size=x.shape)
    src = data.draw(mt.arrays(x.shape))

    def reference_scatter(a, s):
        out = a.copy()
        for pos in np.ndindex(index.shape):
            target = list(pos)
            target[axis] = index[pos]
            out[tuple(target)] += s[pos]
        return out
    check(lambda a, s: mg.scatter_add(a, axis, index, s), [x, src], reference_scatter)
    picks = rng.integers(0, x.shape[axis], size=3)
    source = data.draw(mt.arrays(x.shape[:axis] + (3,) + x.shape[axis + 1:]))

    def reference_index_add(a, s):
        out = np.moveaxis(a.copy(), axis, 0)
        np.add.at(out, picks, np.moveaxis(s, axis, 0))
        return np.moveaxis(out, 0, axis)
    check(lambda a, s: mg.index_add(a, axis, picks, s), [x, source], reference_index_add)


def test_pixel_shuffle_round_trip():
    x = np.random.default_rng(4).standard_normal((2, 8, 3, 2))
    y = F.pixel_shuffle(leaf(x), 2)
    assert y.shape == (2, 2, 6, 4)
    np.testing.assert_array_equal(F.pixel_unshuffle(y, 2).numpy(), x)
    np.testing.assert_array_equal(y.numpy()[0, 1, 2 * 1 + 1, 2 * 0 + 0], x[0, 1 * 4 + 1 * 2 + 0, 1, 0])
    check(lambda t: F.pixel_shuffle(t, 2) ** 2, [x])


@given(data=st.data())
def test_cholesky_and_qr(data):
    n = data.draw(st.integers(1, 4))
    batch = data.draw(st.sampled_from([(), (2,)]))
    a = data.draw(mt.matrices(n, batch_shape=batch))
    eye = np.eye(n)

    def spd(t):             # symmetric positive definite, also under the checks' perturbations
        return t @ t.mT + eye
    check(lambda t: mg.cholesky(spd(t)), [a], lambda m: np.linalg.cholesky(m @ np.swapaxes(m, -1, -2) + eye))
    m = data.draw(st.integers(n, n + 2))
    tall = data.draw(mt.arrays(batch + (m, n)))
    tall[..., :n, :] += 3 * eye               # full column rank
    q, r = mg.qr(mg.tensor(tall))
    np.testing.assert_allclose((q @ r).numpy(), tall, atol=1e-12)
    np.testing.assert_allclose(r.numpy(), np.linalg.qr(tall)[1], atol=1e-12)
    check(lambda t: mg.qr(t), [tall])


@given(data=st.data())
def test_conv1d_and_adaptive_avg_pool2d(data):
    groups, k = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    stride, padding, dilation = data.draw(st.integers(1, 2)), data.draw(st.integers(0, 1)), data.draw(st.integers(1, 2))
    x = data.draw(mt.arrays((2, 2 * groups, data.draw(st.integers(dilation * (k - 1) + 1, 7)))))
    w = data.draw(mt.arrays((2 * groups, 2, k)))

    def reference(x, w):
        x4, w4 = x[:, :, None], w[:, :, None]
        from kernels import reference as kref
        return kref.conv2d(x4, w4, None, stride=(1, stride), padding=(0, padding), dilation=(1, dilation),
                           groups=groups)[:, :, 0]
    check(lambda x, w: F.conv1d(x, w, None, stride, padding, dilation, groups), [x, w], reference)
    image = data.draw(mt.arrays((1, 2, data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6)))))
    size = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    check(lambda t: F.adaptive_avg_pool2d(t, size), [image])
    np.testing.assert_allclose(F.adaptive_avg_pool2d(mg.tensor(image), 1).numpy(), image.mean((2, 3), keepdims=True))


def test_scaled_dot_product_attention_is_the_formula():
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 2))
    weights = scipy.special.softmax(q @ np.swapaxes(k, 1, 2) / 2.0, axis=-1)
    check(F.scaled_dot_product_attention, [q, k, v], lambda q, k, v: weights @ v)
    causal = np.where(np.tri(3, 5, dtype=bool), q @ np.swapaxes(k, 1, 2) / 2.0, -np.inf)
    np.testing.assert_allclose(F.scaled_dot_product_attention(mg.tensor(q), mg.tensor(k), mg.tensor(v),
                                                              is_causal=True).numpy(),
                               scipy.special.softmax(causal, axis=-1) @ v)


LOSSES_MORE = {   # name: (loss(input, target, reduction), input range, target range)
    "l1": (F.l1_loss, (-3, 3), (-3, 3)),
    "smooth_l1": (lambda x, t, reduction: F.smooth_l1_loss(x, t, reduction=reduction, beta=0.7), (-3, 3), (-3, 3)),
    "kl_div": (F.kl_div, (-3, -0.1), (0.05, 1)),        # t log t: finite differences need t away from 0
    "kl_div_log_target": (lambda x, t, reduction: F.kl_div(x, t, reduction=reduction, log_target=True), (-3, -0.1),
                          (-3, 0)),
}


@pytest.mark.parametrize("name", sorted(LOSSES_MORE))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data())
def test_losses_more(name, reduction, data):
    fn, (lx, hx), (lt, ht) = LOSSES_MORE[name]
    shape = data.draw(mt.shapes(min_dims=1, max_dims=3))
    avoid = (0,) if name == "l1" else (-0.7, 0.7) if name == "smooth_l1" else ()
    t = data.draw(mt.arrays(shape, low=lt, high=ht))
    x = t + data.draw(mt.arrays(shape, low=lx, high=hx, avoid=avoid)) if name in ("l1", "smooth_l1") else \
        data.draw(mt.arrays(shape, low=lx, high=hx))
    check(lambda a, b: fn(a, b, reduction=reduction), [x, t])


@given(data=st.data())
def test_nll_loss_with_weights_and_ignore_index(data):
    n, c = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 4))
    x = data.draw(mt.arrays((n, c, 2)))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    labels = rng.integers(0, c, size=(n, 2))
    labels[0, 0] = -100
    w = rng.uniform(0.5, 2.0, size=c)
    kept = labels != -100
    picked = np.take_along_axis(x, np.where(kept, labels, 0)[:, None], 1)[:, 0]
    weights = np.where(kept, w[np.where(kept, labels, 0)], 0.0)
    expected = -(picked * weights).sum() / weights.sum() if weights.sum() else np.nan
    check(lambda t: F.nll_loss(t, labels, w), [x], lambda a: expected)
    check(lambda t: F.cross_entropy(t, labels, w, reduction="sum"), [x],
          lambda a: -(np.take_along_axis(scipy.special.log_softmax(a, 1), np.where(kept, labels, 0)[:, None], 1)[:, 0]
                      * weights).sum())


# --- on another device: every op allocates on its input's array module (issue 14) ----------------------------

SIM_CASES = {   # name: (function, input shapes, (low, high))
    "relu": (mg.relu, [(3, 4)], (-2, 2)), "leaky_relu": (F.leaky_relu, [(3, 4)], (-2, 2)),
    "clip": (lambda x: mg.clip(x, -1.0, 1.0), [(3, 4)], (-2, 2)),
    "sign": (lambda x: mg.sign(x) * x, [(3, 4)], (-2, 2)), "max": (lambda x: mg.max(x, 1), [(3, 4)], (-2, 2)),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2, 1, 1), [(1, 2, 5, 4)], (-2, 2)),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2), [(1, 2, 4, 4)], (-2, 2)),
    "logaddexp": (mg.logaddexp, [(3, 4), (4,)], (-2, 2)), "lgamma": (mg.lgamma, [(3,)], (0.5, 3)),
    "digamma": (mg.digamma, [(3,)], (0.5, 3)), "erfinv": (mg.erfinv, [(3,)], (-0.5, 0.5)),
    "xlogy": (mg.xlogy, [(3,), (3,)], (0.5, 2)), "atan2": (mg.atan2, [(3,), (3,)], (0.5, 2)),
    "cumprod": (lambda x: mg.cumprod(x, 1), [(3, 4)], (-2, 2)),
    "logcumsumexp": (lambda x: mg.logcumsumexp(x, 0), [(3, 4)], (-2, 2)),
    "vector_norm": (lambda x: mg.vector_norm(x, 3, 1), [(3, 4)], (0.5, 2)),
    "tril": (lambda x: mg.tril(x) ** 2, [(3, 4)], (-2, 2)),
    "diagonal": (lambda x: mg.diagonal(x) ** 2, [(3, 4)], (-2, 2)),
    "roll": (lambda x: mg.roll(x, 1, 0) ** 2, [(3, 4)], (-2, 2)),
    "sort": (lambda x: mg.sort(x)[0] ** 2, [(3, 4)], (-2, 2)),
    "topk": (lambda x: mg.topk(x, 2)[0] ** 2, [(3, 4)], (-2, 2)),
    "scatter_add": (lambda x, s: mg.scatter_add(x, 1, [[0, 1], [2, 3], [1, 1]], s) ** 2, [(3, 4), (3, 2)], (-2, 2)),
    "index_add": (lambda x, s: mg.index_add(x, 0, [0, 2], s) ** 2, [(3, 4), (2, 4)], (-2, 2)),
    "take_along_axis": (lambda x: mg.take_along_axis(x, [[0], [2], [1]], 1) ** 2, [(3, 4)], (-2, 2)),
    "getitem_list_and_mask": (lambda x: x[[0, 2]] ** 2 + x[np.array([True, False, True])], [(3, 4)], (-2, 2)),
    "embedding": (lambda w: F.embedding([[0, 2], [2, 1]], w) ** 2, [(3, 4)], (-2, 2)),
    "cholesky": (lambda a: mg.cholesky(a @ a.mT + mg.eye(3, dtype="float64", device="sim")), [(3, 3)], (-1, 1)),
    "qr": (lambda a: mg.qr(a)[1], [(4, 3)], (-1, 1)), "conv1d": (F.conv1d, [(1, 2, 6), (3, 2, 3)], (-2, 2)),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (2, 3)) ** 2, [(1, 2, 5, 4)], (-2, 2)),
    "pixel_shuffle": (lambda x: F.pixel_shuffle(x, 2) ** 2, [(1, 4, 2, 2)], (-2, 2)),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [(2, 3, 4)] * 3, (-2, 2)),
    "pad_reflect": (lambda x: F.pad(x, (1, 1, 2, 0), mode="reflect") ** 2, [(1, 2, 4, 4)], (-2, 2)),
    "interpolate": (lambda x: F.interpolate(x, (5, 4)) ** 2, [(1, 2, 3, 3)], (-2, 2)),
    "group_norm": (lambda x: F.group_norm(x, 2), [(2, 4, 3)], (-2, 2)),
    "nll_loss": (lambda x: F.nll_loss(mg.log_softmax(x, 1), [0, 1, 2, 4], ignore_index=1), [(4, 5)], (-2, 2)),
    "kl_div": (F.kl_div, [(3, 4), (3, 4)], (0.1, 1)), "smooth_l1_loss": (F.smooth_l1_loss, [(3, 4), (3, 4)], (-2, 2)),
    "gaussian_nll_loss": (lambda x, v: F.gaussian_nll_loss(x, x * 0.5, v, eps=0.5), [(3,), (3,)], (0.1, 1)),
}


@pytest.mark.parametrize("name", sorted(SIM_CASES))
def test_ops_to_second_order_on_the_simulated_device(name):
    """On device 'sim' (NumPy arrays that refuse plain ones) an op that makes an array on the CPU fails."""
    from minigen.backend import SimArray
    fn, shapes, (low, high) = SIM_CASES[name]
    rng = np.random.default_rng(0)
    xs = [mg.tensor(rng.uniform(low, high, s), dtype="float64", device="sim", requires_grad=True) for s in shapes]
    y = fn(*xs)
    gs = mg.grad(y, xs, mg.ones(y.shape, dtype="float64", device="sim"), create_graph=True, allow_unused=True)
    live = [g.sum() for g in gs if g is not None and g.requires_grad]
    hs = mg.grad(live, xs, allow_unused=True) if live else []
    assert all(isinstance(t.data, SimArray) for t in [y, *gs, *hs] if t is not None)
