"""Every operation: forward against NumPy, first-order gradcheck and second-order gradgradcheck in float64 on
hypothesis-drawn shapes (broadcasting, axes, keepdims, non-contiguous inputs)."""
import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

import kernels
import minigen as mg
import minigen.nn.functional as F
from minigen import testing as mt


def leaf(a):
    """A float64 leaf that keeps the array as drawn (a strided view stays strided)."""
    return mg.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def check(fn, arrays, reference=None, second_order=True, rtol=1e-6):
    xs = [leaf(a) for a in arrays]
    if reference is not None:
        np.testing.assert_allclose(fn(*xs).numpy(), reference(*arrays), rtol=rtol, atol=1e-10)
    assert mg.gradcheck(fn, xs)
    if second_order:
        assert mg.gradgradcheck(fn, xs)


# --- elementwise -----------------------------------------------------------------------------------------

# name: (minigen function, NumPy reference, low, high, points to keep away from)
UNARY = {
    "neg": (mg.neg, np.negative, -3, 3, ()),
    "exp": (mg.exp, np.exp, -3, 3, ()),
    "log": (mg.log, np.log, 0.2, 3, ()),
    "log1p": (mg.log1p, np.log1p, -0.8, 3, ()),
    "expm1": (mg.expm1, np.expm1, -3, 3, ()),
    "sqrt": (mg.sqrt, np.sqrt, 0.2, 3, ()),
    "abs": (mg.abs, np.abs, -3, 3, (0,)),
    "sin": (mg.sin, np.sin, -3, 3, ()),
    "cos": (mg.cos, np.cos, -3, 3, ()),
    "tanh": (mg.tanh, np.tanh, -3, 3, ()),
    "sigmoid": (mg.sigmoid, scipy.special.expit, -5, 5, ()),
    "logsigmoid": (mg.logsigmoid, lambda x: -np.logaddexp(0, -x), -5, 5, ()),
    "relu": (mg.relu, lambda x: np.maximum(x, 0), -3, 3, (0,)),
    "leaky_relu": (lambda x: mg.leaky_relu(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x), -3, 3, (0,)),
    "elu": (mg.elu, lambda x: np.where(x > 0, x, np.expm1(x)), -3, 3, (0,)),
    "silu": (mg.silu, lambda x: x * scipy.special.expit(x), -4, 4, ()),
    "gelu": (mg.gelu, lambda x: x * 0.5 * (1 + scipy.special.erf(x / math.sqrt(2))), -4, 4, ()),
    "gelu_tanh": (lambda x: mg.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))), -4, 4, ()),
    "softplus": (mg.softplus, lambda x: np.logaddexp(0, x), -5, 5, ()),
    "softplus_beta": (lambda x: mg.softplus(x, beta=2.0, threshold=3.0),
                      lambda x: np.where(2 * x > 3, x, np.logaddexp(0, 2 * x) / 2), -3, 3, (1.5,)),
    "clip": (lambda x: mg.clip(x, -1.0, 1.5), lambda x: np.clip(x, -1, 1.5), -3, 3, (-1.0, 1.5)),
    "erf": (mg.erf, scipy.special.erf, -3, 3, ()),
    "cube": (lambda x: x ** 3, lambda x: x ** 3, -3, 3, ()),
    "square": (lambda x: x ** 2, lambda x: x ** 2, -3, 3, ()),
    "pow_fraction": (lambda x: x ** 1.5, lambda x: x ** 1.5, 0.2, 3, ()),
    "rdiv": (lambda x: 2.0 / x, lambda x: 2.0 / x, 0.3, 3, ()),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, -2, 2, ()),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary(name, data):
    fn, ref, low, high, avoid = UNARY[name]
    x = data.draw(mt.arrays(mt.shapes(max_dims=3), low=low, high=high, avoid=avoid))
    check(fn, [x], ref)


def test_gelu_names_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        mg.gelu(leaf([1.0]), approximate="erf")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_exact_to_rounding_on_a_wide_range(dtype):
    """Within a few ulps everywhere: past PyTorch's cut-off of 20, log1p(exp(-x)) still matters in float64."""
    x = np.linspace(-60, 60, 24001).astype(dtype)
    expected = np.logaddexp(0, x.astype(np.float64))
    np.testing.assert_allclose(mg.softplus(mg.tensor(x)).numpy(), expected, rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_allclose(mg.softplus(mg.tensor(x), threshold=20.0).numpy(),
                               np.where(x > 20, x, expected), rtol=4 * np.finfo(dtype).eps, atol=0)


def test_astype_gradient_comes_back_in_the_input_dtype():
    x = leaf([1.0, 2.0])
    y = mg.astype(x, np.float32)
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad.data, [2.0, 4.0])


# name: (function, reference, (low, high) of a, (low, high) of b)
BINARY = {
    "add": (lambda a, b: a + b, np.add, (-3, 3), (-3, 3)),
    "sub": (lambda a, b: a - b, np.subtract, (-3, 3), (-3, 3)),
    "mul": (lambda a, b: a * b, np.multiply, (-3, 3), (-3, 3)),
    "div": (lambda a, b: a / b, np.divide, (-3, 3), (0.3, 3)),
    "pow": (lambda a, b: a ** b, np.power, (0.3, 3), (-2, 2)),
    "maximum": (mg.maximum, np.maximum, (-3, 3), (-3, 3)),
    "minimum": (mg.minimum, np.minimum, (-3, 3), (-3, 3)),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_broadcasting(name, data):
    fn, ref, (la, ha), (lb, hb) = BINARY[name]
    shape_a, shape_b = data.draw(mt.broadcastable_shapes(2, max_dims=3))
    a = data.draw(mt.arrays(shape_a, low=la, high=ha))
    b = data.draw(mt.arrays(shape_b, low=lb, high=hb))
    if name in ("maximum", "minimum"):   # keep a and b apart: at a tie the first derivative jumps
        a, b = np.round(a * 2) / 2, np.round(b * 2) / 2 + 0.25
    check(fn, [a, b], ref)


@given(data=st.data())
def test_where(data):
    shape_c, shape_a, shape_b = data.draw(mt.broadcastable_shapes(3, max_dims=3))
    cond = data.draw(mt.arrays(shape_c)) > 0
    a, b = data.draw(mt.arrays(shape_a)), data.draw(mt.arrays(shape_b))
    check(lambda a, b: mg.where(cond, a, b), [a, b], lambda a, b: np.where(cond, a, b))


def test_maximum_splits_ties_and_sign_has_zero_gradient():
    a, b = leaf([1.0, 2.0]), leaf([1.0, 3.0])
    mg.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad.data, [0.5, 0.0])
    np.testing.assert_array_equal(b.grad.data, [0.5, 1.0])
    g, = mg.grad(mg.sign(a).sum(), [a])          # zero, as PyTorch (not "unused")
    np.testing.assert_array_equal(g.data, [0.0, 0.0])


def test_python_scalars_follow_numpy_promotion():
    x32 = mg.tensor([1.0, 2.0])
    assert (x32 * 2).dtype == np.float32 and (2.5 * x32).dtype == np.float32
    assert (mg.tensor([1, 2]) * 1.5).dtype == np.float64
    assert (x32 + mg.tensor([1.0], dtype=np.float64)).dtype == np.float64
    assert (np.float64(2.0) * x32).dtype == np.float64   # a NumPy scalar is typed, as in NumPy 2


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
@pytest.mark.parametrize("c", [1.01, 0.1, -3, 0.0, -0.0, 1e30, float("inf")])
def test_python_scalars_give_numpy_values_and_signed_zeros(dtype, c):
    """x + c and x * c (a Python number, handed to NumPy as a cached 0-d array of x's float dtype) equal NumPy's
    x + c and x * c bit for bit, -0.0 against 0.0 included."""
    x = np.array([-0.0, 0.0, 1.0, -2.5, 3e-5, 7.0]).astype(dtype)
    t = mg.tensor(x)
    with np.errstate(over="ignore", invalid="ignore"):
        for got, want in (((t + c).data, x + c), ((t * c).data, x * c), ((c * t).data, c * x)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


# --- reductions ------------------------------------------------------------------------------------------

REDUCTIONS = {
    "sum": (mg.sum, np.sum),
    "mean": (mg.mean, np.mean),
    "var": (mg.var, np.var),
    "std": (mg.std, np.std),
    "max": (mg.max, np.max),
    "min": (mg.min, np.min),
    "prod": (mg.prod, np.prod),
    "logsumexp": (mg.logsumexp, lambda x, axis, keepdims: scipy.special.logsumexp(x, axis=axis, keepdims=keepdims)),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@given(data=st.data())
def test_reduction(name, data):
    fn, ref = REDUCTIONS[name]
    # std's gradient is infinite at zero variance, so it reduces over at least two elements
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3, min_side=2 if name == "std" else 1)))
    axis = data.draw(mt.axes(x.ndim))
    keepdims = data.draw(st.booleans())
    check(lambda t: fn(t, axis=axis, keepdims=keepdims), [x], lambda a: ref(a, axis=axis, keepdims=keepdims))


def test_prod_gradient_with_zeros():
    x = leaf([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0]])
    mg.prod(x, axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [[0.0, 6.0, 0.0], [0.0, 0.0, 0.0]])
    x = np.array([[2.0, 0.0, 3.0, 1.5]])
    check(lambda t: mg.prod(t, axis=1), [x])


def test_max_splits_gradient_between_ties():
    x = leaf([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]])
    mg.max(x, axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [[0, 0.5, 0.5], [1, 0, 0]])


@given(data=st.data())
def test_cumsum(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check(lambda t: mg.cumsum(t, axis), [x], lambda a: np.cumsum(a, axis))


def test_logsumexp_is_stable():
    x = mg.tensor([[1e4, 1e4 - 1.0], [-1e4, -np.inf]], requires_grad=True)
    y = mg.logsumexp(x, axis=1)
    assert np.isfinite(y.numpy()).all()
    np.testing.assert_allclose(y.numpy(), [1e4 + np.log1p(np.exp(-1.0)), -1e4], rtol=1e-6)
    y.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_unknown_axis_is_a_clear_error():
    with pytest.raises(ValueError, match="axis 2 is out of bounds for a tensor of 2 dimension"):
        mg.sum(mg.ones(2, 3), axis=2)


# --- shape operations -------------------------------------------------------------------------------------


@given(data=st.data())
def test_reshape_transpose_swapaxes_moveaxis(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=4)))
    perm = tuple(data.draw(st.permutations(range(x.ndim))))
    check(lambda t: mg.transpose(t, perm), [x], lambda a: np.transpose(a, perm))
    check(lambda t: mg.reshape(t, (-1,)), [x], lambda a: a.reshape(-1))
    check(lambda t: t.T, [x], lambda a: a.T)
    a1, a2 = data.draw(st.integers(0, x.ndim - 1)), data.draw(st.integers(0, x.ndim - 1))
    check(lambda t: mg.swapaxes(t, a1, a2), [x], lambda a: np.swapaxes(a, a1, a2))
    check(lambda t: mg.moveaxis(t, a1, a2), [x], lambda a: np.moveaxis(a, a1, a2))


@given(data=st.data())
def test_squeeze_expand_dims_broadcast_to(data):
    shape = data.draw(mt.shapes(max_dims=3, min_side=1, max_side=3))
    x = data.draw(mt.arrays(shape))
    axis = data.draw(st.integers(-x.ndim - 1, x.ndim))
    check(lambda t: mg.expand_dims(t, axis), [x], lambda a: np.expand_dims(a, axis))
    check(lambda t: mg.squeeze(t), [x], lambda a: np.squeeze(a))
    target = data.draw(st.sampled_from([(2,) + shape, (3, 1) + shape]))
    check(lambda t: mg.broadcast_to(t, target), [x], lambda a: np.broadcast_to(a, target))


@given(data=st.data())
def test_concatenate_stack_split(data):
    shape = data.draw(mt.shapes(min_dims=1, max_dims=3, min_side=2))
    axis = data.draw(st.integers(0, len(shape) - 1))
    parts = [data.draw(mt.arrays(shape)) for _ in range(data.draw(st.integers(1, 3)))]
    check(lambda *ts: mg.concatenate(ts, axis), parts, lambda *a: np.concatenate(a, axis))
    check(lambda *ts: mg.stack(ts, axis), parts, lambda *a: np.stack(a, axis))
    x = np.concatenate(parts, axis)
    cut = data.draw(st.integers(0, x.shape[axis]))
    check(lambda t: mg.split(t, [cut], axis), [x])
    check(lambda t: mg.split(t, [cut], axis)[0] * 2, [x])          # a piece unused: zeros in its place
    np.testing.assert_array_equal(mg.split(mg.tensor(x), [cut], axis)[1].numpy(), np.split(x, [cut], axis)[1])


@given(data=st.data())
def test_flip_pad_repeat_tile(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3)))
    axis = data.draw(mt.axes(x.ndim))
    check(lambda t: mg.flip(t, axis), [x], lambda a: np.flip(a, axis))
    width = data.draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=x.ndim, max_size=x.ndim))
    check(lambda t: mg.pad(t, width, value=1.5), [x], lambda a: np.pad(a, width, constant_values=1.5))
    reps = data.draw(st.integers(1, 3))
    rep_axis = data.draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
    check(lambda t: mg.repeat(t, reps, rep_axis), [x], lambda a: np.repeat(a, reps, rep_axis))
    tiles = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=x.ndim + 1)))
    check(lambda t: mg.tile(t, tiles), [x], lambda a: np.tile(a, tiles))


def test_pad_keeps_a_channels_last_layout():
    """A channels-last (cropped) map padded stays channels-last, with numpy.pad's values."""
    x = np.random.default_rng(0).standard_normal((2, 7, 5, 6)).astype(np.float32).transpose(0, 3, 1, 2)[:, :, 1:]
    y = mg.pad(mg.tensor(x), ((0, 0), (1, 2), (1, 0), (0, 3)), value=-2.0).numpy()
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (1, 2), (1, 0), (0, 3)), constant_values=-2.0))
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous


def test_a_crops_gradient_keeps_the_layout_of_the_gradient():
    """GetItem's backward (ScatterAdd) writes a channels-last gradient into channels-last zeros, with the values
    of NumPy's scatter."""
    x = mg.tensor(np.zeros((2, 6, 5, 4), np.float32), requires_grad=True)
    g = np.random.default_rng(1).standard_normal((2, 3, 4, 6)).astype(np.float32).transpose(0, 3, 1, 2)
    x[:, :, 1:4].backward(mg.tensor(g))
    expected = np.zeros((2, 6, 5, 4), np.float32)
    expected[:, :, 1:4] = g
    np.testing.assert_array_equal(x.grad.numpy(), expected)
    assert x.grad.numpy().transpose(0, 2, 3, 1).flags.c_contiguous


INDICES = [
    (1,), (slice(None, None, 2),), (Ellipsis, 0), (None, slice(1, None)), (slice(None), None, 0),
    (np.array([0, 2, 0, 1]),), (np.array([[1, 1], [0, 2]]), slice(None)), (slice(None), np.array([2, 0, 2])),
    (np.array([0, 1]), np.array([2, 2])), (-1, slice(None, None, -1)),
]


@pytest.mark.parametrize("index", INDICES, ids=str)
def test_getitem(index):
    x = np.random.default_rng(0).standard_normal((3, 4))
    check(lambda t: t[index], [x], lambda a: a[index])


@given(data=st.data())
def test_getitem_boolean_mask(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3)))
    mask = data.draw(mt.arrays(x.shape)) > 0
    check(lambda t: t[mask], [x], lambda a: a[mask])
    check(lambda t: t[mg.tensor(mask)], [x], lambda a: a[mask])


@given(data=st.data())
def test_take_along_axis(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    k = data.draw(st.integers(1, 4))
    shape = list(x.shape)
    shape[axis] = k
    idx = np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, x.shape[axis], size=shape)
    check(lambda t: mg.take_along_axis(t, idx, axis), [x], lambda a: np.take_along_axis(a, idx, axis))


def test_one_hot():
    y = F.one_hot(mg.tensor([0, 2, 1]), 3)
    np.testing.assert_array_equal(y.numpy(), np.eye(3, dtype=np.int64)[[0, 2, 1]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        F.one_hot(mg.tensor([3]), 3)


# --- linear algebra ---------------------------------------------------------------------------------------

MATMUL_SHAPES = [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((2, 3), (3, 4)), ((5, 2, 3), (3, 4)),
                 ((2, 3), (5, 3, 4)), ((2, 1, 2, 3), (4, 3, 2)), ((4,), (2, 4, 3)), ((2, 2, 4), (4,))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes):
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(s) for s in shapes)
    check(lambda s, t: s @ t, [a, b], np.matmul)


def test_matmul_gradients_of_two_matrices_are_one_pair_of_products(monkeypatch):
    """x @ W with both wanting gradients: gx and gW come from one kernels.matmul_pair call (ProductGrads),
    equal to the separate products."""
    calls = []
    pair = kernels.matmul_pair
    monkeypatch.setattr(kernels, "matmul_pair", lambda *args: calls.append(args) or pair(*args))
    rng = np.random.default_rng(0)
    x, w = leaf(rng.standard_normal((2, 5, 3))), leaf(rng.standard_normal((3, 4)))
    g = rng.standard_normal((2, 5, 4))
    (x @ w).backward(mg.Tensor(g))
    assert len(calls) == 1
    np.testing.assert_allclose(x.grad.numpy(), g @ w.numpy().T, rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), np.einsum("bmk,bmn->kn", x.numpy(), g), rtol=1e-12)


def test_matmul_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\)"):
        mg.ones(2, 3) @ mg.ones(4, 5)


EINSUMS = {"ij,jk->ik": [(2, 3), (3, 4)], "bij,bjk->bik": [(2, 2, 3), (2, 3, 2)], "i,i->": [(3,), (3,)],
           "ij->j": [(2, 3)], "ij,j->i": [(2, 3), (3,)], "i,j->ij": [(2,), (3,)], "ijk,ik->ij": [(2, 3, 4), (2, 4)],
           "ij,jk,kl->il": [(2, 3), (3, 2), (2, 2)], "ij->ji": [(2, 3)]}


@pytest.mark.parametrize("spec", sorted(EINSUMS))
def test_einsum(spec):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s) for s in EINSUMS[spec]]
    check(lambda *ts: mg.einsum(spec, *ts), arrays, lambda *a: np.einsum(spec, *a))


@given(data=st.data())
def test_inv_solve_slogdet(data):
    n = data.draw(st.integers(1, 4))
    batch = data.draw(st.sampled_from([(), (2,), (2, 3)]))
    a = data.draw(mt.matrices(n, batch_shape=batch))
    b = data.draw(mt.arrays(batch + (n, 2)))
    check(mg.inv, [a], np.linalg.inv)
    check(mg.solve, [a, b], np.linalg.solve)
    check(lambda t: mg.slogdet(t)[1], [a], lambda m: np.linalg.slogdet(m)[1])
    check(mg.det, [a], np.linalg.det)
    check(mg.trace, [a], lambda m: np.trace(m, axis1=-2, axis2=-1))
    v = data.draw(mt.arrays((n,)))
    check(lambda t, u: mg.solve(t, u), [a[(0,) * len(batch)], v], np.linalg.solve)


@given(data=st.data())
def test_logdet_and_sign(data):
    a = data.draw(mt.matrices(st.integers(1, 4), batch_shape=(2,), negative_det=False))
    check(mg.logdet, [a], lambda m: np.log(np.linalg.det(m)))
    neg = data.draw(mt.matrices(3, negative_det=True))
    assert np.isnan(mg.logdet(mg.tensor(neg)).item())
    sign, _ = mg.slogdet(mg.tensor(neg))
    assert sign.item() == -1 and not sign.requires_grad


@pytest.mark.parametrize("lower", [True, False])
def test_solve_triangular(lower):
    rng = np.random.default_rng(3)
    for batch in [(), (2,)]:
        a = rng.standard_normal(batch + (3, 3)) + 3 * np.eye(3)
        b = rng.standard_normal(batch + (3, 2))
        tri = np.tril(a) if lower else np.triu(a)
        check(lambda t, u: mg.solve_triangular(t, u, lower=lower), [a, b], lambda m, u: np.linalg.solve(tri, u))


def test_logdet_gradient_on_badly_conditioned_matrix():
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a = (u * np.array([1e-4, 1e-2, 1.0, 1e2])) @ u.T
    x = leaf(a)
    mg.slogdet(x)[1].backward()
    np.testing.assert_allclose(x.grad.data, np.linalg.inv(a).T, rtol=1e-8)


def test_slogdet_gradient_reuses_the_forward_factors(monkeypatch):
    """Matrices large enough for kernels.lu (float32 from n = 192) are factored once per matrix: slogdet's
    backward inverts with the forward's LU factors. Gradient a^-T, and second derivatives through it:
    d/da sum(a^-T * v) = -(a^-1 v a^-1)^T."""
    from kernels import lu
    calls = []
    factor = lu.lu
    monkeypatch.setattr(lu, "lu", lambda m: calls.append(m.shape) or factor(m))
    rng = np.random.default_rng(5)
    n = 200
    a = (rng.standard_normal((2, n, n)) + 3 * np.sqrt(n) * np.eye(n)).astype(np.float32)
    x = mg.tensor(a, requires_grad=True)
    g, = mg.grad(mg.slogdet(x)[1].sum(), [x], create_graph=True)
    assert calls == [(n, n), (n, n)]
    a_inv = np.linalg.inv(a.astype(np.float64))
    np.testing.assert_allclose(g.data, a_inv.swapaxes(-1, -2), rtol=1e-3, atol=1e-6)
    v = rng.standard_normal(a.shape).astype(np.float32)
    (g * mg.tensor(v)).sum().backward()
    np.testing.assert_allclose(x.grad.data, -(a_inv @ v @ a_inv).swapaxes(-1, -2), rtol=1e-3, atol=1e-6)


# --- neural-network operations and losses ----------------------------------------------------------------


@given(data=st.data())
def test_softmax_log_softmax(data):
    x = data.draw(mt.arrays(mt.shapes(min_dims=1, max_dims=3)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check(lambda t: mg.softmax(t, axis), [x], lambda a: scipy.special.softmax(a, axis))
    check(lambda t: mg.log_softmax(t, axis), [x], lambda a: scipy.special.log_softmax(a, axis))
    np.testing.assert_allclose(mg.softmax(mg.tensor(x), axis).numpy().sum(axis), 1.0)


@pytest.mark.parametrize("fn", [mg.softmax, mg.log_softmax])
def test_softmax_finite_for_huge_logits_float32(fn):
    x = mg.tensor(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32), requires_grad=True)
    y = fn(x, axis=1)
    assert np.isfinite(y.numpy()).all()
    (y * mg.tensor([[1.0, 2.0, 3.0], [1.0, -1.0, 0.5]])).sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def _gated_tanh(x):
    c = x.shape[1] // 2
    return np.tanh(x[:, :c]) * scipy.special.expit(x[:, c:])


@given(data=st.data())
def test_gated_tanh(data):
    """tanh(a) sigmoid(b) of the halves along axis 1, at first and second order; the third order too, through
    its backward's backward (written in ops) on a small case."""
    shape = data.draw(mt.shapes(min_dims=2, max_dims=4).map(lambda s: (s[0], 2 * s[1], *s[2:])))
    check(F.gated_tanh, [data.draw(mt.arrays(shape))], _gated_tanh)
    x = leaf(np.random.default_rng(0).standard_normal((2, 4, 3)))
    assert mg.gradgradcheck(lambda t: mg.grad(F.gated_tanh(t).sum(), [t], create_graph=True)[0], [x])


def test_gated_tanh_names_an_odd_channel_axis():
    with pytest.raises(ValueError, match=r"shape \(2, 5, 3\) has no even axis 1"):
        F.gated_tanh(leaf(np.zeros((2, 5, 3))))


def _lstm_cell_update(z, c):
    i, f, g, o = np.split(z, 4, axis=1)
    c_next = scipy.special.expit(f) * c + scipy.special.expit(i) * np.tanh(g)
    return scipy.special.expit(o) * np.tanh(c_next), c_next


@given(data=st.data())
def test_lstm_cell_update(data):
    """(h', c') from the gates' pre-activations z (N, 4H) and c (N, H), each output at first and second order (the
    second through the backward's backward, the formula in ops under grad()); the third order on a small case."""
    n, hidden = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    z, c = data.draw(mt.arrays((n, 4 * hidden), low=-3, high=3)), data.draw(mt.arrays((n, hidden), low=-2, high=2))
    for k in range(2):
        check(lambda z, c: F.lstm_cell_update(z, c)[k], [z, c], lambda z, c: _lstm_cell_update(z, c)[k])
    both = lambda z, c: sum((w * y).sum() for w, y in zip((1.0, -0.7), F.lstm_cell_update(z, c)))  # noqa: E731
    assert mg.gradgradcheck(both, [leaf(z), leaf(c)])
    rng = np.random.default_rng(0)
    z, c = leaf(rng.standard_normal((2, 8))), leaf(rng.standard_normal((2, 2)))
    assert mg.gradgradcheck(lambda z, c: mg.grad(both(z, c), [z, c], create_graph=True)[0], [z, c])


def test_lstm_cell_update_names_wrong_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"z of shape \(2, 7\) and c of shape \(2, 2\): z must be \(N, 4H\)"):
        F.lstm_cell_update(leaf(np.zeros((2, 7))), leaf(np.zeros((2, 2))))
    with pytest.raises(TypeError, match="z is float32 and c float64"):
        F.lstm_cell_update(mg.tensor(np.zeros((2, 8), np.float32)), leaf(np.zeros((2, 2))))


def test_lstm_cell_update_in_float32_agrees_with_float64_and_stays_finite_at_1e4():
    rng = np.random.default_rng(3)
    z, c = rng.standard_normal((64, 512)) * 4, rng.standard_normal((64, 128))
    z[0, :4], c[0, :2] = [1e4, -1e4, 1e4, -1e4], [1e4, -1e4]
    z32, c32 = (mg.tensor(a.astype(np.float32), requires_grad=True) for a in (z, c))
    z64, c64 = (mg.tensor(a, requires_grad=True) for a in (z, c))
    gh, gc = rng.standard_normal((64, 128)), rng.standard_normal((64, 128))
    for zz, cc in ((z32, c32), (z64, c64)):
        h, c_next = F.lstm_cell_update(zz, cc)
        ((h * mg.tensor(gh.astype(zz.dtype))).sum() + (c_next * mg.tensor(gc.astype(zz.dtype))).sum()).backward()
    for a32, a64 in ((z32.grad, z64.grad), (c32.grad, c64.grad)):
        assert np.isfinite(a32.numpy()).all()
        np.testing.assert_allclose(a32.numpy(), a64.numpy(), rtol=1e-4, atol=1e-5 * np.abs(a64.numpy()).max())


def _gru_cell_update(a, b, h):
    (a_r, a_z, a_n), (b_r, b_z, b_n) = np.split(a, 3, axis=1), np.split(b, 3, axis=1)
    r, z = scipy.special.expit(a_r + b_r), scipy.special.expit(a_z + b_z)
    n = np.tanh(a_n + r * b_n)
    return (1 - z) * n + z * h


@given(data=st.data())
def test_gru_cell_update(data):
    """h' from the maps a, b (N, 3H) and h (N, H) at first and second order (the second through the backward's
    backward, the formula in operations under grad()); the third order on a small case."""
    n, hidden = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    a, b = (data.draw(mt.arrays((n, 3 * hidden), low=-3, high=3)) for _ in range(2))
    check(F.gru_cell_update, [a, b, data.draw(mt.arrays((n, hidden), low=-2, high=2))], _gru_cell_update)
    rng = np.random.default_rng(0)
    a, b, h = leaf(rng.standard_normal((2, 6))), leaf(rng.standard_normal((2, 6))), leaf(rng.standard_normal((2, 2)))
    assert mg.gradgradcheck(lambda a, b, h: mg.grad(F.gru_cell_update(a, b, h).sum(), [a, b, h], create_graph=True)[1],
                            [a, b, h])


def test_gru_cell_update_names_wrong_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"a of shape \(2, 6\), b of shape \(2, 6\), h of shape \(2, 3\)"):
        F.gru_cell_update(leaf(np.zeros((2, 6))), leaf(np.zeros((2, 6))), leaf(np.zeros((2, 3))))
    with pytest.raises(TypeError, match="a is float64, b float32 and h float64"):
        F.gru_cell_update(leaf(np.zeros((2, 6))), mg.tensor(np.zeros((2, 6), np.float32)), leaf(np.zeros((2, 2))))


def _lstm_layer(a, w, b, h, c):
    hs = []
    for a_t in a:
        h, c = _lstm_cell_update(a_t + h @ w.T + b, c)
        hs.append(h)
    return np.stack(hs), c


def _gru_layer(a, w, b, h):
    hs = []
    for a_t in a:
        h = _gru_cell_update(a_t, h @ w.T + b, h)
        hs.append(h)
    return np.stack(hs)


def _layer_arrays(data, gates: int) -> list:
    """a (T, N, gates H), W_hh (gates H, H), b_hh and the initial states (N, H), drawn."""
    t, n, hidden = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    shapes = [(t, n, gates * hidden), (gates * hidden, hidden), (gates * hidden,)] + [(n, hidden)] * (gates == 4) + \
        [(n, hidden)]
    return [data.draw(mt.arrays(s, low=-1.5, high=1.5)) for s in shapes]


@given(data=st.data())
def test_lstm_layer(data):
    """Every h_t and c_T of a whole LSTM layer (one node, its backward through time in arrays) against the cells
    step by step in NumPy, each output at first and second order (the second through the formula in operations
    under grad())."""
    a, w, b, h, c = _layer_arrays(data, 4)
    for k in range(2):
        check(lambda *xs: F.lstm_layer(*xs)[k], [a, w, b, h, c], lambda *xs: _lstm_layer(*xs)[k])


@given(data=st.data())
def test_gru_layer(data):
    """Every h_t of a whole GRU layer (one node) against the cells step by step in NumPy, at first and second
    order."""
    check(F.gru_layer, _layer_arrays(data, 3), _gru_layer)


def test_recurrent_layers_take_zeros_for_a_missing_bias_and_state():
    rng = np.random.default_rng(1)
    a, w = rng.standard_normal((3, 2, 8)), rng.standard_normal((8, 2))
    zeros = np.zeros((2, 2))
    for got, want in zip(F.lstm_layer(leaf(a), leaf(w)), _lstm_layer(a, w, np.zeros(8), zeros, zeros)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(F.gru_layer(leaf(a[..., :6]), leaf(w[:6])).numpy(),
                               _gru_layer(a[..., :6], w[:6], np.zeros(6), zeros), rtol=1e-12)


def test_recurrent_layers_name_wrong_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"lstm_layer: a of shape \(3, 2, 8\) and weight_hh of shape \(6, 2\): "
                                         r"expected a \(T, N, 4H\)"):
        F.lstm_layer(leaf(np.zeros((3, 2, 8))), leaf(np.zeros((6, 2))))
    with pytest.raises(ValueError, match=r"gru_layer: bias_hh of shape \(6,\) and states of shapes \[\(3, 2\)\] "
                                         r"for a of shape \(3, 2, 6\): expected \(6,\) and \(2, 2\)"):
        F.gru_layer(leaf(np.zeros((3, 2, 6))), leaf(np.zeros((6, 2))), leaf(np.zeros(6)), leaf(np.zeros((3, 2))))
    with pytest.raises(ValueError, match=r"gru_layer: a of shape \(0, 2, 6\) is a sequence of length 0"):
        F.gru_layer(leaf(np.zeros((0, 2, 6))), leaf(np.zeros((6, 2))))
    with pytest.raises(TypeError, match=r"lstm_layer: a is float32, weight_hh float64"):
        F.lstm_layer(mg.tensor(np.zeros((3, 2, 8), np.float32)), leaf(np.zeros((8, 2))))


def test_recurrent_layers_in_float32_agree_with_float64_and_stay_finite_at_1e4():
    rng = np.random.default_rng(5)
    a, w, b = rng.standard_normal((6, 16, 32)) * 3, rng.standard_normal((32, 8)), rng.standard_normal(32)
    a[2, 0, :4], a[4, 1, 4:8] = [1e4, -1e4, 1e4, -1e4], -1e4
    for layer, gates in ((F.lstm_layer, 32), (F.gru_layer, 24)):
        found = []
        for dtype in (np.float32, np.float64):
            xs = [mg.tensor(x.astype(dtype), requires_grad=True) for x in (a[..., :gates], w[:gates], b[:gates])]
            y = layer(*xs)
            y = y[0] if isinstance(y, tuple) else y
            (y * mg.tensor(np.cos(np.arange(y.size)).reshape(y.shape).astype(dtype))).sum().backward()
            found.append([y.numpy()] + [x.grad.numpy() for x in xs])
        for a32, a64 in zip(*found):
            assert np.isfinite(a32).all()
            np.testing.assert_allclose(a32, a64, rtol=1e-3, atol=1e-4 * np.abs(a64).max())


def test_dropout():
    def fn(t):
        mg.manual_seed(7)           # the same mask at every evaluation
        return F.dropout(t, p=0.3)
    check(fn, [np.random.default_rng(0).standard_normal((4, 5))])
    y = F.dropout(mg.ones(100_000), p=0.25)
    assert abs(y.numpy().mean() - 1.0) < 0.02
    assert set(np.unique(y.numpy())) == {0.0, np.float32(1 / 0.75)}
    x = mg.ones(3)
    assert F.dropout(x, 0.5, training=False) is x


@given(data=st.data())
def test_linear(data):
    """x of any leading axes (none: a single vector), with and without bias; the weight's gradient comes out
    contiguous (Adam's kernel takes it without a copy)."""
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    d_in, d_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x, w, b = (data.draw(mt.arrays(s)) for s in [(*lead, d_in), (d_out, d_in), (d_out,)])
    check(F.linear, [x, w, b], lambda x, w, b: x @ w.T + b)
    check(F.linear, [x, w], lambda x, w: x @ w.T)
    wt = mg.tensor(w, requires_grad=True)
    F.linear(mg.tensor(x), wt).sum().backward()
    assert wt.grad.data.flags.c_contiguous


def test_linear_names_mismatched_shapes():
    with pytest.raises(ValueError, match=r"input of shape \(2, 3\) has 3 features, the weight of shape \(4, 5\)"):
        F.linear(mg.zeros(2, 3), mg.zeros(4, 5))
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) for a weight of shape \(4, 5\)"):
        F.linear(mg.zeros(2, 5), mg.zeros(4, 5), mg.zeros(3))


LOSSES = {   # name: (loss(input, target, reduction), (low, high) of input, (low, high) of target)
    "mse": (F.mse_loss, (-3, 3), (-3, 3)),
    "bce": (F.binary_cross_entropy, (0.05, 0.95), (0, 1)),
    "bce_logits": (F.binary_cross_entropy_with_logits, (-5, 5), (0, 1)),
    "bce_logits_pos_weight": (lambda x, t, reduction: F.binary_cross_entropy_with_logits(
        x, t, reduction=reduction, pos_weight=3.0), (-5, 5), (0, 1)),
    "gaussian_nll": (lambda x, t, reduction: F.gaussian_nll_loss(
        x, t, mg.exp(t * 0.3), full=True, reduction=reduction), (-3, 3), (-3, 3)),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data())
def test_losses(name, reduction, data):
    fn, (lx, hx), (lt, ht) = LOSSES[name]
    shape = data.draw(mt.shapes(min_dims=1, max_dims=3))
    x, t = data.draw(mt.arrays(shape, low=lx, high=hx)), data.draw(mt.arrays(shape, low=lt, high=ht))
    check(lambda a, b: fn(a, b, reduction=reduction), [x, t])


@given(data=st.data())
def test_kl_normal(data):
    shape_a, shape_b = data.draw(mt.broadcastable_shapes(2, max_dims=3))
    mu, log_var = data.draw(mt.arrays(shape_a)), data.draw(mt.arrays(shape_b, low=-2, high=2))
    check(lambda m, lv: F.kl_normal(m, lv, 0.5, -0.3), [mu, log_var],
          lambda m, lv: 0.5 * (-0.3 - lv + (np.exp(lv) + (m - 0.5) ** 2) / np.exp(-0.3) - 1))


def test_loss_values_against_formulas():
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((4, 3)), rng.uniform(size=(4, 3))
    p = scipy.special.expit(x)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(leaf(x), t, reduction="none").numpy(), bce)
    np.testing.assert_allclose(F.binary_cross_entropy(leaf(p), t, reduction="none").numpy(), bce)
    mu, lv = rng.standard_normal(5), rng.standard_normal(5)
    kl = 0.5 * (np.exp(lv) + mu ** 2 - 1 - lv)
    np.testing.assert_allclose(F.kl_normal(leaf(mu), leaf(lv)).numpy(), kl)
    var = np.exp(rng.standard_normal((4, 3)))
    nll = 0.5 * (np.log(var) + (x - t) ** 2 / var + np.log(2 * np.pi))
    np.testing.assert_allclose(F.gaussian_nll_loss(leaf(x), t, var, full=True).item(), nll.mean())


@given(data=st.data())
def test_cross_entropy(data):
    n, c = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 5))
    spatial = data.draw(st.sampled_from([(), (3,), (2, 2)]))
    x = data.draw(mt.arrays((n, c) + spatial))
    labels = np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, c, size=(n,) + spatial)
    log_p = scipy.special.log_softmax(x, axis=1)
    expected = -np.take_along_axis(log_p, labels[:, None], axis=1).mean()
    check(lambda t: F.cross_entropy(t, labels), [x], lambda a: expected)
    probs = scipy.special.softmax(data.draw(mt.arrays((n, c) + spatial)), axis=1)
    check(lambda t: F.cross_entropy(t, probs, reduction="sum"), [x], lambda a: -(probs * log_p).sum())


@pytest.mark.parametrize("loss", ["bce_logits", "cross_entropy", "bce"])
def test_losses_finite_for_huge_logits_float32(loss):
    x = mg.tensor(np.array([[1e4, -1e4], [-1e4, 1e4]], dtype=np.float32), requires_grad=True)
    if loss == "bce_logits":
        y = F.binary_cross_entropy_with_logits(x, mg.tensor([[0.0, 1.0], [1.0, 0.0]]))
        assert y.item() == pytest.approx(1e4)
    elif loss == "cross_entropy":
        y = F.cross_entropy(x, mg.tensor([1, 1]))
        assert y.item() == pytest.approx(1e4)
    else:
        y = F.binary_cross_entropy(mg.sigmoid(x), mg.tensor([[0.0, 1.0], [1.0, 0.0]]))
        assert y.item() == pytest.approx(100.0)     # log clamped at -100, as PyTorch
    y.backward()
    assert np.isfinite(y.item()) and np.isfinite(x.grad.numpy()).all()


def test_cross_entropy_of_plain_labels_is_one_node():
    """Integer labels without weight or ignored labels: one LabelCrossEntropy node, of the value the composition
    (nll_loss of log_softmax) gives; with an ignored label, the composition."""
    x = leaf(np.random.default_rng(0).standard_normal((4, 3)))
    labels = mg.tensor([0, 2, 1, 1])
    for reduction in ("mean", "sum"):
        y = F.cross_entropy(x, labels, reduction=reduction)
        assert type(y.creator).__name__ == "LabelCrossEntropy"
        np.testing.assert_allclose(y.item(), F.nll_loss(mg.log_softmax(x, 1), labels, reduction=reduction).item(),
                                   rtol=1e-12)
    assert type(F.cross_entropy(x, labels, ignore_index=1).creator).__name__ != "LabelCrossEntropy"


def test_cross_entropy_label_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        F.cross_entropy(mg.ones(2, 3), mg.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"must have shape \(2,\)"):
        F.cross_entropy(mg.ones(2, 3), mg.tensor([0, 1, 2]))


def test_subclasses_of_tensor_take_python_scalars_like_tensors():
    class Sub(mg.Tensor):
        __slots__ = ()

    p = Sub(np.ones(2, dtype=np.float32), requires_grad=True)
    assert (p * 2).dtype == np.float32 and (2 * p).dtype == np.float32 and (p + 1.5).dtype == np.float32
