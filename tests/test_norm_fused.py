"""The fused standardization (kernels/norm.py and the Standardize node behind layer_norm, group_norm and
batch_norm): the kernels against float64 references in float32 and float64, on every layout the norms use,
at a mean of 1e4 (no variance lost), on NaN and on strided inputs; the Numba path (large NumPy arrays) and
the formula path (everything else) agreeing; and the gradients against central differences in float64 on
hypothesis-drawn shapes, to first and second order, through both paths."""
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen as mg
import minigen.nn.functional as F
from kernels import norm
from minigen import testing as mt
from minigen.ops.nn import ChannelAffine, Standardize

EPS = 1e-5

# name: (shape, reduced axes) at >= PARALLEL_MIN_SIZE elements: LayerNorm rows, GroupNorm's (N, G, C/G*H*W)
# and (N, G, C/G, H, W), BatchNorm2d's channels (N runs of H*W), BatchNorm1d's columns (the formula path),
# everything reduced; "_channels_last": the same in the memory order of a convolution's output (N, H, W, C)
LAYOUTS = {
    "layer_norm": ((64, 16, 48), (1, 2)),
    "group_norm": ((8, 4, 16 * 8 * 8), (2,)),
    "group_norm_5d": ((8, 4, 16, 8, 8), (2, 3, 4)),
    "group_norm_channels_last": ((8, 4, 16, 8, 8), (2, 3, 4)),
    "batch_norm2d": ((16, 32, 9, 9), (0, 2, 3)),
    "batch_norm2d_channels_last": ((16, 32, 9, 9), (0, 2, 3)),
    "batch_norm1d": ((512, 96), (0,)),
    "all_axes": ((40, 1000), (0, 1)),
}


def channels_last(a):
    """a (N, C, *spatial) or (N, G, C/G, *spatial) with the channel axes innermost in memory, as a view."""
    lead = 3 if a.ndim == 5 else 2
    order = (0,) + tuple(range(lead, a.ndim)) + tuple(range(1, lead))
    return np.ascontiguousarray(a.transpose(order)).transpose(np.argsort(order))


def normal(rng, layout, dtype):
    """Standard normal values in the layout's shape and memory order."""
    a = rng.standard_normal(LAYOUTS[layout][0]).astype(dtype)
    return channels_last(a) if layout.endswith("_channels_last") else a


def forced(numba_path: bool):
    """Every array through the Numba kernels (threshold 1) or none (threshold above any test's size)."""
    return mock.patch.object(norm, "PARALLEL_MIN_SIZE", 1 if numba_path else 1 << 40)


def reference(x, axes):
    """(y, mean, var) in float64, NumPy's two-pass mean and variance."""
    x = x.astype(np.float64)
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS), mean, var


def reference_backward(y, rstd, g, axes):
    y, rstd, g = (a.astype(np.float64) for a in (y, rstd, g))
    return rstd * (g - g.mean(axes, keepdims=True) - y * (g * y).mean(axes, keepdims=True))


def assert_close(actual, expected, dtype, scale=1.0):
    """Within a few rounding errors of dtype, relative to the values or to `scale`."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    tol = 16 * np.finfo(dtype).eps * (np.abs(expected) + scale)
    assert (np.abs(actual - expected) <= tol).all(), np.abs(actual - expected).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_standardize_matches_float64_reference(layout, dtype):
    shape, axes = LAYOUTS[layout]
    x = normal(np.random.default_rng(0), layout, dtype) * 3 + 2
    assert x.size >= norm.PARALLEL_MIN_SIZE
    y, mean, var = norm.standardize(x, axes, EPS)
    assert y.strides == x.strides     # a channels-last x gives a channels-last y
    y_ref, mean_ref, var_ref = reference(x, axes)
    for a, b in ((y, y_ref), (mean, mean_ref), (var, var_ref)):
        assert_close(a, b, dtype)
    with forced(numba_path=False):
        assert_close(norm.standardize(x, axes, EPS)[0], y_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_standardize_backward_matches_float64_reference(layout, dtype):
    shape, axes = LAYOUTS[layout]
    rng = np.random.default_rng(1)
    x, g = (normal(rng, layout, dtype) for _ in range(2))
    y, _, var = norm.standardize(x, axes, EPS)
    rstd = 1 / np.sqrt(var + EPS)
    expected = reference_backward(y, rstd, g, axes)
    for g_layout in (g, np.ascontiguousarray(g)):      # a gradient of another layout is copied to y's
        assert_close(norm.standardize_backward(y, rstd, g_layout, axes), expected, dtype, scale=4.0)
    with forced(numba_path=False):
        assert_close(norm.standardize_backward(y, rstd, g, axes), expected, dtype, scale=4.0)


@pytest.mark.parametrize("numba_path", [True, False])
@pytest.mark.parametrize("layout", ["group_norm", "batch_norm2d", "group_norm_channels_last",
                                    "batch_norm2d_channels_last"])
def test_a_large_mean_keeps_the_variance_in_float32(layout, numba_path):
    """1e4 + N(0, 0.1^2) in float32: E[x^2] - E[x]^2 would lose every digit of the variance (and a float32
    mean would shift y by its rounding, ~5e-4 / 0.1); two passes in float64 keep both to rounding."""
    shape, axes = LAYOUTS[layout]
    x = (1e4 + 0.1 * normal(np.random.default_rng(2), layout, np.float64)).astype(np.float32)
    with forced(numba_path):
        y, mean, var = norm.standardize(x, axes, EPS)
    y_ref, mean_ref, var_ref = reference(x, axes)
    assert_close(y, y_ref, np.float32)
    np.testing.assert_allclose(var, var_ref, rtol=1e-6)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-7)


@pytest.mark.parametrize("numba_path", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_spoils_its_own_row_or_channel_only(layout, numba_path):
    shape, axes = LAYOUTS[layout]
    x = normal(np.random.default_rng(3), layout, np.float32)
    x[(1,) * x.ndim] = np.nan
    with forced(numba_path):
        y, mean, var = norm.standardize(x, axes, EPS)
        gx = norm.standardize_backward(y, 1 / np.sqrt(var + EPS), np.ones_like(x), axes)
    spoiled = np.isnan(x).any(axis=axes, keepdims=True)
    for a in (y, gx):
        np.testing.assert_array_equal(np.isnan(a), np.broadcast_to(spoiled, shape))
    np.testing.assert_array_equal(np.isnan(mean), spoiled)


@pytest.mark.parametrize("layout", ["layer_norm", "group_norm", "batch_norm2d"])
def test_strided_inputs_give_the_contiguous_results(layout):
    shape, axes = LAYOUTS[layout]
    rng = np.random.default_rng(4)
    big = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(np.float32)
    x, g = big[..., ::2], big[..., 1::2]
    y, _, var = norm.standardize(x, axes, EPS)
    y_c, _, _ = norm.standardize(np.ascontiguousarray(x), axes, EPS)
    np.testing.assert_array_equal(y, y_c)
    rstd = 1 / np.sqrt(var + EPS)
    np.testing.assert_array_equal(norm.standardize_backward(y[..., ::-1], rstd, g, axes),
                                  norm.standardize_backward(y[..., ::-1].copy(), rstd, g.copy(), axes))


@pytest.mark.parametrize("layout", ["batch_norm2d", "batch_norm2d_channels_last"])
def test_batch_norm_statistics_come_from_the_node(layout):
    """Training batch_norm moves the running statistics by the node's mean and unbiased variance (Ioffe &
    Szegedy 2015, Algorithm 2), in float32 as in float64."""
    x = normal(np.random.default_rng(5), layout, np.float32) + 5
    mean, var = mg.zeros(32), mg.ones(32)
    F.batch_norm(mg.tensor(x), mean, var, training=True, momentum=0.25)
    n = x.size // 32
    np.testing.assert_allclose(mean.numpy(), 0.25 * x.astype(np.float64).mean((0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), 0.75 + 0.25 * x.astype(np.float64).var((0, 2, 3)) * n / (n - 1),
                               rtol=1e-6)


# --- gradients, first and second order, through both paths ---------------------------------------------------


def leaf(a):
    return mg.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def check(fn, arrays, numba_path):
    xs = [leaf(a) for a in arrays]
    with forced(numba_path):
        assert mg.gradcheck(fn, xs)
        assert mg.gradgradcheck(fn, xs)


@pytest.mark.parametrize("numba_path", [True, False])
@given(data=st.data())
def test_standardize_over_drawn_axes_to_second_order(numba_path, data):
    shape = data.draw(mt.shapes(min_dims=1, max_dims=4, min_side=2, max_side=4))
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1).map(lambda a: tuple(sorted(a))))
    x = data.draw(mt.arrays(shape))
    check(lambda x: Standardize(axes, EPS)(x), [x], numba_path)


@pytest.mark.parametrize("numba_path", [True, False])
@given(data=st.data())
def test_the_three_norms_to_second_order(numba_path, data):
    n, groups, per_group = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    c, spatial = groups * per_group, data.draw(mt.shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    x = data.draw(mt.arrays((n, c) + spatial))
    if spatial and data.draw(st.booleans(), label="channels_last"):   # the layout a convolution hands on
        x = channels_last(x)
    w, b = data.draw(mt.arrays((c,))), data.draw(mt.arrays((c,)))
    check(lambda x, w, b: F.group_norm(x, groups, w, b), [x, w, b], numba_path)
    lw, lb = data.draw(mt.arrays(x.shape[1:])), data.draw(mt.arrays(x.shape[1:]))
    check(lambda x, w, b: F.layer_norm(x, x.shape[1:], w, b), [x, lw, lb], numba_path)
    if x.size > c:   # more than one value per channel
        check(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [x, w, b], numba_path)


@pytest.mark.parametrize("numba_path", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_channel_scale_and_shift_and_their_sums_match_float64_formulas(dtype, numba_path):
    """norm.scale_shift, norm.channel_sums (the norms' affine step and its weight gradients), norm.add_channels
    (a convolution's bias, in place) and norm.sum_over (a bias's gradient, the sum node over (0, 2, 3)) on
    BatchNorm2d's layout, NCHW and channels-last."""
    rng = np.random.default_rng(3)
    x, g = (rng.standard_normal((16, 32, 9, 9)).astype(dtype) * 3 + 1 for _ in range(2))
    w, b = (rng.standard_normal(32).astype(dtype) for _ in range(2))
    x64, g64, shape = x.astype(np.float64), g.astype(np.float64), (1, -1, 1, 1)
    with forced(numba_path):
        for x_layout in (x, channels_last(x)):
            y = norm.scale_shift(x_layout, w, b)
            assert_close(y, x64 * w.reshape(shape) + b.reshape(shape), dtype, 4)
            assert y.strides == x_layout.strides or not numba_path
            assert_close(norm.scale_shift(x_layout, w), x64 * w.reshape(shape), dtype, 4)
            shifted = x_layout.copy(order="K")
            assert norm.add_channels(shifted, b) is shifted and shifted.strides == x_layout.strides
            np.testing.assert_array_equal(shifted, x_layout + b.reshape(shape))    # the same rounding as NumPy's
            for g_layout in (g, channels_last(g)):
                sgx, sg = norm.channel_sums(g_layout, x_layout)
                assert_close(sgx, (g64 * x64).sum((0, 2, 3)), dtype, 16 * 81 * 4)
                assert_close(sg, g64.sum((0, 2, 3)), dtype, 16 * 81)
                assert_close(norm.sum_over(g_layout, (0, 2, 3)), g64.sum((0, 2, 3)), dtype, 16 * 81)
                assert_close(mg.tensor(g_layout).sum((0, 2, 3), keepdims=True).data,
                             g64.sum((0, 2, 3), keepdims=True), dtype, 16 * 81)


@pytest.mark.parametrize("numba_path", [True, False])
@given(data=st.data())
def test_channel_affine_to_second_order_with_and_without_bias(numba_path, data):
    x = data.draw(mt.arrays(data.draw(mt.shapes(min_dims=2, max_dims=4, min_side=1, max_side=3))))
    w, b = data.draw(mt.arrays((x.shape[1],))), data.draw(mt.arrays((x.shape[1],)))
    check(lambda x, w, b: ChannelAffine()(x, w, b), [x, w, b], numba_path)
    check(lambda x, w: ChannelAffine()(x, w), [x, w], numba_path)


def test_third_order():
    """StandardizeGrad's backward rebuilds y and rstd from x in differentiable nodes, so even the second
    derivative's gradient is right."""
    x = np.random.default_rng(6).standard_normal((2, 3, 4))
    v = mg.tensor(np.random.default_rng(7).standard_normal((2, 3, 4)))

    def gradient(x):
        (gx,) = mg.grad(F.group_norm(x, 3) ** 3, [x], v, create_graph=True)
        return gx
    for numba_path in (True, False):
        check(gradient, [x], numba_path)


def test_norm_weights_of_the_wrong_shape_are_named():
    x = mg.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"group_norm: weight of shape \(1,\) for an input of 4 channels"):
        F.group_norm(x, 2, mg.ones(1), mg.zeros(4))
    with pytest.raises(ValueError, match=r"batch_norm: bias of shape \(5,\) for an input of 4 channels"):
        F.batch_norm(x, None, None, mg.ones(4), mg.zeros(5), training=True)
