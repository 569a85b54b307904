"""Convolutions, pooling and upsampling as differentiable ops: gradients to second order on drawn geometries,
and the WGAN-GP pattern (a gradient penalty through a conv critic) differentiated twice."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minigen as mg
import minigen.nn.functional as F
from kernels import reference
from minigen import testing as mt


def leaf(a):
    return mg.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def check(fn, arrays, second_order=True):
    xs = [leaf(a) for a in arrays]
    assert mg.gradcheck(fn, xs)
    if second_order:
        assert mg.gradgradcheck(fn, xs)


@st.composite
def conv_case(draw, transposed=False, few_outputs=False):
    """few_outputs: 4-5 input channels to one, at stride 1 (the CPU kernels' GEMM-first path, cpu._taps)."""
    groups = 1 if few_outputs else draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    if few_outputs:
        c_in, c_out = (1, draw(st.integers(4, 5))) if transposed else (draw(st.integers(4, 5)), 1)
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride, dilation = 1 if few_outputs else draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.integers(0, 1))
    size = draw(st.integers(max(k) * dilation, 6))
    x = draw(mt.arrays((draw(st.integers(1, 2)), c_in, size, size)))
    w_shape = (c_in, c_out // groups) + k if transposed else (c_out, c_in // groups) + k
    w = draw(mt.arrays(w_shape))
    b = draw(mt.arrays((c_out,)))
    output_padding = draw(st.integers(0, max(stride, dilation) - 1)) if transposed else 0
    for k_axis in k:      # the output size per axis: a kernel (1, 2) with padding 1 can empty one axis only
        out = (size - 1) * stride - 2 * padding + dilation * (k_axis - 1) + output_padding + 1 if transposed \
            else (size + 2 * padding - dilation * (k_axis - 1) - 1) // stride + 1
        assume(out >= 1)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), output_padding


@given(case=st.one_of(conv_case(), conv_case(few_outputs=True)))
def test_conv2d(case):
    x, w, b, geo, _ = case
    np.testing.assert_allclose(F.conv2d(leaf(x), leaf(w), leaf(b), **geo).numpy(), reference.conv2d(x, w, b, **geo),
                               rtol=1e-10, atol=1e-12)
    check(lambda x, w, b: F.conv2d(x, w, b, **geo), [x, w, b])


@given(case=st.one_of(conv_case(transposed=True), conv_case(transposed=True, few_outputs=True)))
def test_conv_transpose2d(case):
    x, w, b, geo, op = case
    np.testing.assert_allclose(F.conv_transpose2d(leaf(x), leaf(w), leaf(b), output_padding=op, **geo).numpy(),
                               reference.conv_transpose2d(x, w, b, output_padding=op, **geo), rtol=1e-10, atol=1e-12)
    check(lambda x, w, b: F.conv_transpose2d(x, w, b, output_padding=op, **geo), [x, w, b])


@given(data=st.data())
def test_pooling_and_upsampling(data):
    x = data.draw(mt.arrays((data.draw(st.integers(1, 2)), 2, data.draw(st.integers(2, 6)), 4), distinct=True))
    k = data.draw(st.integers(1, 2))
    stride, padding = data.draw(st.integers(1, 2)), data.draw(st.integers(0, k // 2))
    check(lambda t: F.avg_pool2d(t, k, stride, padding), [x])
    check(lambda t: F.max_pool2d(t, k, stride, padding), [x])           # distinct values: no ties to split
    check(lambda t: F.upsample_nearest2d(t, 2), [x])


def test_pooling_values():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(F.max_pool2d(leaf(x), 2).numpy(), [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(F.avg_pool2d(leaf(x), 2).numpy(), [[[[2.5, 4.5], [10.5, 12.5]]]])
    np.testing.assert_array_equal(F.upsample_nearest2d(leaf(x[..., :1, :2]), 2).numpy(),
                                  [[[[0, 0, 1, 1], [0, 0, 1, 1]]]])
    t = leaf(x)
    F.max_pool2d(t, 3, stride=1, padding=1).sum().backward()    # each pixel's count of windows it wins
    assert t.grad.numpy().sum() == 16 and t.grad.numpy()[0, 0, 3, 3] == 4


def test_conv_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"input of shape \(1, 3, 5, 5\) has 3 channels.*expects 2"):
        F.conv2d(mg.ones(1, 3, 5, 5), mg.ones(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\), got shape \(3, 5, 5\)"):
        F.conv2d(mg.ones(3, 5, 5), mg.ones(4, 3, 3, 3))


def _critic(x, w1, w2, v):
    """A tiny conv critic: conv(stride 2) -> softplus -> conv -> linear read-out."""
    h = F.softplus(F.conv2d(x, w1, stride=2, padding=1))
    h = F.conv_transpose2d(h, w2, stride=1)
    return (h.reshape(h.shape[0], -1) @ v).sum()


def _penalty(x, w1, w2, v):
    """WGAN-GP: (||grad_x D(x)|| - 1)^2, with the gradient taken with create_graph=True."""
    (gx,) = mg.grad(_critic(x, w1, w2, v), [x], create_graph=True)
    norm = mg.sqrt((gx * gx).reshape(gx.shape[0], -1).sum(axis=1))
    return ((norm - 1) ** 2).mean()


def test_gradient_penalty_through_a_conv_critic_is_twice_differentiable():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 6, 6))
    w1, w2 = rng.standard_normal((2, 1, 3, 3)) * 0.5, rng.standard_normal((2, 2, 2, 2)) * 0.5
    v = rng.standard_normal((2 * 4 * 4, 1)) * 0.3
    tensors = [leaf(a) for a in (x, w1, w2, v)]
    assert mg.gradcheck(_penalty, tensors)          # the penalty's gradient: second derivatives of D
    assert mg.gradgradcheck(_critic, tensors)       # D's second derivatives, in every input
