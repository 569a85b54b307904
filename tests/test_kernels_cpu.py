"""CPU kernels: every CPU backend against the NumPy reference, the reference against PyTorch (when
installed), the convolution adjoint identities, softmax edge cases, slogdet on matrices with chosen
singular values, and the dispatcher."""
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import kernels
from kernels import reference

try:
    import torch
except ImportError:
    torch = None

CPU = [kernels.backend_module(name) for name in kernels.CPU_BACKENDS]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}
FEW = settings(max_examples=25, deadline=None)


@st.composite
def conv_cases(draw):
    """A convolution geometry with a non-empty output, and matching float64 arrays x, w, b."""
    groups = draw(st.integers(1, 3))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 8))
    w_ = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 8))
    n = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    geo = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    x = rng.standard_normal((n, cg * groups, h, w_))
    w = rng.standard_normal((og * groups, cg, kh, kw))
    b = rng.standard_normal(og * groups) if draw(st.booleans()) else None
    return x, w, b, geo


def _output_padding(x_shape, y_shape, w_shape, geo):
    """The output_padding that makes conv_transpose2d of a conv2d output recover the input size."""
    return tuple(n - ((m - 1) * s - 2 * p + d * (k - 1) + 1)
                 for n, m, k, s, p, d in zip(x_shape[2:], y_shape[2:], w_shape[2:], geo["stride"],
                                             geo["padding"], geo["dilation"]))


# ---------------------------------------------------------------------------------------------- convolution

@FEW
@given(conv_cases(), st.sampled_from(DTYPES))
def test_conv_backends_agree_with_reference(case, dtype):
    x, w, b, geo = case
    x, w = x.astype(dtype), w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    y = reference.conv2d(x, w, b, **geo)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    op = _output_padding(x.shape, y.shape, w.shape, geo)
    gx = reference.conv_transpose2d(gy, w, output_padding=op, **geo)
    gw = reference.conv2d_weight(x, gy, w.shape[2:], **geo)
    assert gx.shape == x.shape and gw.shape == w.shape
    for mod in CPU:
        out = [mod.conv2d(x, w, b, **geo),
               mod.conv_transpose2d(gy, w, output_padding=op, **geo),
               mod.conv2d_weight(x, gy, w.shape[2:], **geo)]
        for got, want in zip(out, (y, gx, gw)):
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=mod.__name__)


@pytest.mark.skipif(torch is None, reason="PyTorch is the oracle here")
@FEW
@given(conv_cases())
def test_reference_conv_matches_torch(case):
    x, w, b, geo = case
    F, t = torch.nn.functional, torch.from_numpy
    xt, wt = t(x).requires_grad_(), t(w).requires_grad_()
    yt = F.conv2d(xt, wt, None if b is None else t(b), **geo)
    np.testing.assert_allclose(reference.conv2d(x, w, b, **geo), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    gy = np.random.default_rng(2).standard_normal(yt.shape)
    yt.backward(t(gy))
    op = _output_padding(x.shape, yt.shape, w.shape, geo)
    np.testing.assert_allclose(reference.conv_transpose2d(gy, w, output_padding=op, **geo), xt.grad.numpy(),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(reference.conv2d_weight(x, gy, w.shape[2:], **geo), wt.grad.numpy(),
                               rtol=1e-10, atol=1e-10)
    # conv_transpose2d's own forward against PyTorch's, on the same geometry and weight layout
    ct = F.conv_transpose2d(t(gy), t(w), None, geo["stride"], geo["padding"], op, geo["groups"], geo["dilation"])
    np.testing.assert_allclose(ct.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-10)


@FEW
@given(conv_cases(), st.sampled_from(CPU))
def test_convolutions_are_adjoint(case, mod):
    """<conv2d(x, w), gy> = <x, conv_transpose2d(gy, w)> = <w, conv2d_weight(x, gy)> (conv2d is linear in
    x and in w); and the weight gradient of a = conv_transpose2d(y, v) with upstream gradient ga is
    conv2d_weight(ga, y): <conv_transpose2d(y, v), ga> = <v, conv2d_weight(ga, y)>."""
    x, w, _, geo = case
    rng = np.random.default_rng(3)
    y = mod.conv2d(x, w, **geo)
    gy = rng.standard_normal(y.shape)
    op = _output_padding(x.shape, y.shape, w.shape, geo)
    lhs = np.vdot(y, gy)
    assert np.isclose(lhs, np.vdot(x, mod.conv_transpose2d(gy, w, output_padding=op, **geo)), rtol=1e-10, atol=1e-10)
    assert np.isclose(lhs, np.vdot(w, mod.conv2d_weight(x, gy, w.shape[2:], **geo)), rtol=1e-10, atol=1e-10)
    v, ga = rng.standard_normal(w.shape), rng.standard_normal(x.shape)
    assert np.isclose(np.vdot(mod.conv_transpose2d(gy, v, output_padding=op, **geo), ga),
                      np.vdot(v, mod.conv2d_weight(ga, gy, w.shape[2:], **geo)), rtol=1e-10, atol=1e-10)


@FEW
@given(o=st.integers(1, 3), extra=st.integers(0, 5), kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       size=st.tuples(st.integers(1, 2), st.integers(1, 8), st.integers(1, 8)), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2 ** 16))
def test_convolutions_with_few_output_channels_match_the_reference(o, extra, kernel, padding, dilation, size,
                                                                  dtype, seed):
    """The GEMM-first path (cpu._taps) at 4 or more input channels per output channel, stride 1: conv2d, its
    weight gradient; and a transposed conv from c to o channels, which goes through the flipped conv2d where
    its geometry allows (the input gradient of a layer with few input channels)."""
    from kernels import cpu
    from kernels._geometry import geometry
    n, h, w = size
    # non-empty outputs for the conv2d and for the transposed one
    assume(all(s + 2 * p >= d * (k - 1) + 1 and s + d * (k - 1) > 2 * p
               for s, p, d, k in zip((h, w), padding, dilation, kernel)))
    rng = np.random.default_rng(seed)
    c = 4 * o + extra
    x, wt = rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((o, c, *kernel)).astype(dtype)
    geo = dict(stride=1, padding=padding, dilation=dilation)
    assert cpu._gemm_first_serves(geometry(kernel, groups=1, **geo), x, o)
    y = cpu.conv2d(x, wt, None, **geo)
    np.testing.assert_allclose(y, reference.conv2d(x, wt, None, **geo), **TOL[dtype])
    gy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(cpu.conv2d_weight(x, gy, kernel, **geo), reference.conv2d_weight(x, gy, kernel, **geo),
                               **TOL[dtype])
    wt_t = wt.transpose(1, 0, 2, 3).copy()                        # a transposed conv from c to o channels
    np.testing.assert_allclose(cpu.conv_transpose2d(x, wt_t, None, **geo),
                               reference.conv_transpose2d(x, wt_t, None, **geo), **TOL[dtype])


@pytest.mark.parametrize("kernel, padding", [((2, 3), (1, 1)), ((1, 3), (0, 1)), ((5, 5), (2, 2))])
def test_gemm_first_at_twice_the_output_channels_on_large_maps(kernel, padding):
    """C = 2 Og goes GEMM-first on maps of 14x14 and more (the gated PixelCNN's layers), not on 7x7 ones; the
    results match the reference either way."""
    from kernels import cpu
    from kernels._geometry import geometry
    rng = np.random.default_rng(0)
    geo = dict(stride=1, padding=padding, dilation=1)
    for side, gemm_first in ((14, True), (7, False)):
        x, wt = rng.standard_normal((2, 8, side, side)), rng.standard_normal((4, 8, *kernel))
        assert cpu._gemm_first_serves(geometry(kernel, groups=1, **geo), x, 4) == gemm_first
        y = cpu.conv2d(x, wt, None, **geo)
        np.testing.assert_allclose(y, reference.conv2d(x, wt, None, **geo), **TOL[np.float64])
        gy = rng.standard_normal(y.shape)
        np.testing.assert_allclose(cpu.conv2d_weight(x, gy, kernel, **geo),
                                   reference.conv2d_weight(x, gy, kernel, **geo), **TOL[np.float64])


@FEW
@given(n=st.integers(1, 3), c=st.integers(1, 6), o=st.integers(1, 6), size=st.sampled_from([(1, 1), (3, 5), (16, 16),
       (17, 20)]), x_last=st.booleans(), gy_last=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2 ** 16))
def test_1x1_convolutions_in_either_layout_match_the_reference(n, c, o, size, x_last, gy_last, dtype, seed):
    """1x1 layers multiply over channels in the inputs' layout (per image on NCHW maps of 16x16 or more, one
    GEMM channels-last): conv2d, its weight gradient (the two inputs in either layout) and the transposed
    conv, on NCHW arrays and on the channels-last views that convolutions return."""
    from kernels import cpu
    rng = np.random.default_rng(seed)

    def laid_out(a, last):
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if last else a
    x = laid_out(rng.standard_normal((n, c, *size)).astype(dtype), x_last)
    gy = laid_out(rng.standard_normal((n, o, *size)).astype(dtype), gy_last)
    w, b = rng.standard_normal((o, c, 1, 1)).astype(dtype), rng.standard_normal(o).astype(dtype)
    np.testing.assert_allclose(cpu.conv2d(x, w, b), reference.conv2d(x, w, b), **TOL[dtype])
    np.testing.assert_allclose(cpu.conv2d_weight(x, gy, 1), reference.conv2d_weight(x, gy, 1), **TOL[dtype])
    np.testing.assert_allclose(cpu.conv_transpose2d(gy, w, None), reference.conv_transpose2d(gy, w, None),
                               **TOL[dtype])


def test_a_1x1_layer_on_one_channel_answers_channels_last():
    """A one-channel map is NCHW and channels-last at once: a 1x1 layer on it (a one-channel output layer's
    gradient) gives channels-last, as the other convolutions do; an NCHW map of several channels, NCHW."""
    from kernels import cpu, layout
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 1, 1)).astype(np.float32)
    assert layout.channels_last(cpu.conv2d(rng.standard_normal((2, 1, 16, 16)).astype(np.float32), w))
    w = rng.standard_normal((8, 3, 1, 1)).astype(np.float32)
    assert cpu.conv2d(rng.standard_normal((2, 3, 16, 16)).astype(np.float32), w).flags.c_contiguous


@settings(max_examples=12)
@given(n=st.integers(1, 3), c=st.integers(1, 5), o=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       p=st.integers(0, 2), r=st.sampled_from([2, 3]), seed=st.integers(0, 2 ** 16))
def test_winograd_matches_the_reference(n, c, o, h, w, p, r, seed):
    """F(4x4, 3x3) and F(4x4, 2x2) and their weight gradients on any map (sizes not a multiple of 4 crop the last
    tile, maps smaller than a tile) in float64, with the tiles in one chunk and in a chunk per row of tiles (kept
    in one array, or each chunk's scratch), the weight gradient transforming x itself or taking the tiles the
    forward kept, in chunks of its own."""
    from kernels import layout, winograd
    assume(h + 2 * p >= r and w + 2 * p >= r)
    rng = np.random.default_rng(seed)
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, r, r))
    ho, wo = h + 2 * p - r + 1, w + 2 * p - r + 1
    xp = layout.padded_nhwc(x, (p, p), winograd.padded_size(ho, wo, r))
    gy = rng.standard_normal((n, ho, wo, o))
    # the tiles in one chunk, a chunk per row of tiles, and the weight gradient's chunks unlike the forward's
    for forward, weight in ((1 << 30, 1 << 30), (1, 1), (1, 1 << 30), (1 << 30, 1)):
        with mock.patch.multiple(winograd, _CHUNK_BYTES=forward, _WEIGHT_CHUNK_BYTES=weight):
            y, tiles = winograd.conv(xp, wt.transpose(2, 3, 1, 0), ho, wo, keep=True)
            np.testing.assert_allclose(y.transpose(0, 3, 1, 2), reference.conv2d(x, wt, None, 1, p),
                                       rtol=1e-10, atol=1e-10)
            np.testing.assert_array_equal(winograd.conv(xp, wt.transpose(2, 3, 1, 0), ho, wo)[0], y)
            want = reference.conv2d_weight(x, gy.transpose(0, 3, 1, 2), r, 1, p).transpose(2, 3, 1, 0)
            for xp_, tiles_ in ((xp, None), (None, tiles)):
                np.testing.assert_allclose(winograd.conv_weight(xp_, gy, r, ho, wo, tiles_), want,
                                           rtol=1e-10, atol=1e-10)


def test_winograd_matrices_are_the_transforms_written_out():
    """Toom-Cook's F(4, r) matrices are the ones the transforms written out by hand compute (_bt, _at, _a for
    r = 3; _bt2, _at2, _a2 for r = 2), and each F(4, r) computes a correlation: A^T [(G g) * (B^T d)] = g
    correlated with d."""
    from kernels import winograd as W
    rng = np.random.default_rng(0)
    for r, (bt_, at_, a_) in ((3, (W._bt, W._at, W._a)), (2, (W._bt2, W._at2, W._a2))):
        at, g, bt = W._MATRICES[r]
        eye, eye4 = np.eye(3 + r, dtype=np.float32), np.eye(4, dtype=np.float32)
        np.testing.assert_array_equal(np.array([bt_(*col) for col in eye]).T, bt)
        np.testing.assert_array_equal(np.array([at_(*col) for col in eye]).T, at)
        np.testing.assert_array_equal(np.array([a_(*col) for col in eye4]).T, at.T)
        d, f = rng.standard_normal(3 + r), rng.standard_normal(r)
        np.testing.assert_allclose(at @ ((g @ f) * (bt @ d)), np.correlate(d, f, "valid"), rtol=1e-12, atol=1e-12)


@settings(max_examples=20)
@given(shape=st.tuples(st.integers(1, 3), st.sampled_from([1, 3, 16, 40]), st.integers(1, 4),
                       st.sampled_from([1, 5, 16, 19])),
       ph=st.integers(0, 2), pw=st.integers(0, 2), extra=st.integers(0, 2),
       dtype=st.sampled_from([np.float32, np.float64, np.int64]))
def test_layout_copies_match_numpy_transposes(shape, ph, pw, extra, dtype):
    """NCHW <-> channels-last copies (kernels/layout.py), on both sides of the widths where the Numba kernels
    take over, in the compiled dtypes and NumPy's fallback."""
    from kernels import layout
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    (n, c, h, w), size = shape, (shape[2] + 2 * ph + extra, shape[3] + 2 * pw)
    want = np.zeros((n, *size, c), dtype)
    want[:, ph:ph + h, pw:pw + w] = x.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(layout.padded_nhwc(x, (ph, pw), size), want)
    np.testing.assert_array_equal(layout.padded_nhwc(x[:, :, ::-1]), x[:, :, ::-1].transpose(0, 2, 3, 1))
    for view in (np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), x[:, ::-1]):
        copy = layout.contiguous(view)
        assert copy.flags.c_contiguous
        np.testing.assert_array_equal(copy, view)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_layout_of_copies_into_the_reference_layout(dtype):
    """layout.in_layout_of gives ref's strides and a's values, for NCHW, channels-last and other references."""
    from kernels import layout
    rng = np.random.default_rng(6)
    nchw = rng.standard_normal((4, 32, 16, 16)).astype(dtype)
    last = np.ascontiguousarray(rng.standard_normal((4, 16, 16, 32)).astype(dtype)).transpose(0, 3, 1, 2)
    flipped = rng.standard_normal((4, 32, 16, 16)).astype(dtype)[:, :, ::-1]
    for a in (nchw, last, flipped, nchw.astype(np.float16)):
        for ref in (nchw, last, flipped):
            got = layout.in_layout_of(a, ref)
            assert got.dtype == ref.dtype
            assert got.strides == ref.strides or ref is flipped      # a reversed view: a dense copy
            np.testing.assert_array_equal(got, a.astype(ref.dtype))


def test_elementwise_ops_copy_a_channels_last_operand_beside_an_nchw_one_first():
    """layout.matched: a channels-last view added to an NCHW array is copied to NCHW first, on either side;
    the sum, difference, product and quotient nodes give NumPy's values either way."""
    import minigen as mg
    from kernels import layout
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
    b = np.ascontiguousarray(rng.standard_normal((4, 16, 16, 32)).astype(np.float32)).transpose(0, 3, 1, 2)
    for x, y in ((a, b), (b, a)):
        mx, my = layout.matched(x, y)
        assert mx.flags.c_contiguous and my.flags.c_contiguous
        np.testing.assert_array_equal(mx, x)
        np.testing.assert_array_equal(my, y)
        tx, ty = mg.Tensor(x), mg.Tensor(y)
        for got, want in ((tx + ty, x + y), (tx - ty, x - y), (tx * ty, x * y), (tx / ty, x / y)):
            np.testing.assert_array_equal(got.data, want)
    same = layout.matched(a, a[::-1])     # no channels-last operand: both as they are
    assert same[0] is a and same[1].base is a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_conv2d_and_its_weight_gradient_take_winograd_on_a_unet_layer(dtype):
    from kernels import cpu
    from kernels._geometry import geometry
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 64, 13, 12)), rng.standard_normal((64, 64, 3, 3)) / 24, rng.standard_normal(64)
    assert cpu._winograd_serves(geometry((3, 3), 1, 1, 1, 1), x.astype(dtype), 64)
    y = cpu.conv2d(*(a.astype(dtype) for a in (x, w, b)), 1, 1)
    # F(4x4, 3x3)'s float32 error, relative to the largest output: 4-6e-6 measured on three draws
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert y.dtype == dtype
    want = reference.conv2d(x, w, b, 1, 1)
    np.testing.assert_allclose(y, want, rtol=0, atol=tol * np.abs(want).max())
    gy = rng.standard_normal(y.shape)
    dw = cpu.conv2d_weight(x.astype(dtype), gy.astype(dtype), 3, 1, 1)
    assert dw.dtype == dtype
    want = reference.conv2d_weight(x, gy, 3, 1, 1)
    np.testing.assert_allclose(dw, want, rtol=0, atol=tol * np.abs(want).max())
    # the weight gradient takes the transformed tiles conv2d kept for the same x: no second input transform
    from kernels import winograd
    xd, saved = x.astype(dtype), {}
    np.testing.assert_array_equal(cpu.conv2d(xd, w.astype(dtype), b.astype(dtype), 1, 1, saved=saved), y)
    with mock.patch.object(winograd, "conv_weight", wraps=winograd.conv_weight) as conv_weight:
        np.testing.assert_array_equal(cpu.conv2d_weight(xd, gy.astype(dtype), 3, 1, 1, saved=saved), dw)
    assert conv_weight.call_args.args[0] is None, "tiles transformed again"


@settings(max_examples=8, deadline=None)
@given(c=st.sampled_from([32, 40]), o=st.sampled_from([32, 35]), h=st.integers(13, 16), w=st.integers(13, 16),
       padding=st.integers(0, 2), output_padding=st.integers(0, 1), last=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 16))
def test_4x4_stride_2_layers_go_by_phases_to_winograd(c, o, h, w, padding, output_padding, last, dtype, seed):
    """DCGAN's 4x4 stride-2 layers by F(4x4, 2x2) on their four phases (_phases_serve): conv2d, its weight
    gradient (transforming x, or taking the tiles conv2d kept) and conv_transpose2d (an output_padding too), on
    odd and even maps, x NCHW or a channels-last view."""
    from kernels import cpu, winograd
    from kernels._geometry import geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, c, h, w))
    xd = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=dtype).transpose(0, 3, 1, 2) if last else x.astype(dtype)
    wt, b = rng.standard_normal((o, c, 4, 4)) / 8, rng.standard_normal(o)
    assert cpu._phases_serve(geometry((4, 4), 2, padding, 1, 1), c, o, xd)
    # F(4x4, 2x2)'s float32 error, relative to the largest output: 1-6e-6 measured on DCGAN's layers (batch 64)
    tol = 1e-5 if dtype == np.float32 else 1e-12

    def check(got, want):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())

    saved = {}
    y = cpu.conv2d(xd, wt.astype(dtype), b.astype(dtype), 2, padding, saved=saved)
    check(y, reference.conv2d(x, wt, b, 2, padding))
    gy = rng.standard_normal(y.shape)
    want = reference.conv2d_weight(x, gy, 4, 2, padding)
    check(cpu.conv2d_weight(xd, gy.astype(dtype), 4, 2, padding), want)
    with mock.patch.object(winograd, "conv_weight", wraps=winograd.conv_weight) as conv_weight:
        check(cpu.conv2d_weight(xd, gy.astype(dtype), 4, 2, padding, saved=saved), want)
    assert conv_weight.call_args.args[0] is None, "tiles transformed again"
    wt = rng.standard_normal((c, o, 4, 4)) / 8
    check(cpu.conv_transpose2d(xd, wt.astype(dtype), b.astype(dtype), 2, padding, output_padding),
          reference.conv_transpose2d(x, wt, b, 2, padding, output_padding))


def test_conv2d_weight_matches_finite_differences():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2))
    geo = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    gy = rng.standard_normal(reference.conv2d(x, w, **geo).shape)
    for mod in CPU:
        dw = mod.conv2d_weight(x, gy, (3, 2), **geo)
        for idx in [(0, 0, 0, 0), (5, 1, 2, 1), (3, 0, 1, 0)]:
            e = np.zeros_like(w)
            e[idx] = 1e-6
            fd = (np.vdot(mod.conv2d(x, w + e, **geo), gy) - np.vdot(mod.conv2d(x, w - e, **geo), gy)) / 2e-6
            assert np.isclose(dw[idx], fd, rtol=1e-6, atol=1e-6)


@FEW
@given(conv_cases(), st.sampled_from(DTYPES))
def test_conv2d_weight_reuses_the_columns_conv2d_saved_only_for_its_own_input(case, dtype):
    from kernels import cpu
    x, w, _, geo = case
    x, w = x.astype(dtype), w.astype(dtype)
    saved = {}
    y = cpu.conv2d(x, w, None, **geo, saved=saved)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    want = reference.conv2d_weight(x, gy, w.shape[2:], **geo)
    if saved:    # the im2col path kept its columns: conv2d_weight must take them, not copy x again
        with mock.patch.object(cpu, "_im2col", side_effect=AssertionError("columns copied again")):
            np.testing.assert_allclose(cpu.conv2d_weight(x, gy, w.shape[2:], **geo, saved=saved), want,
                                       **TOL[dtype])
    other = x[::-1].copy() + 1    # another input of the same shape, handed the first one's columns
    np.testing.assert_allclose(cpu.conv2d_weight(other, gy, w.shape[2:], **geo, saved=saved),
                               reference.conv2d_weight(other, gy, w.shape[2:], **geo), **TOL[dtype])
    if gy.shape[2] > 1:           # the same input with a cropped gradient (a transposed layer's, dilated)
        cropped = np.ascontiguousarray(gy[:, :, :-1])
        cpu.conv2d(x, w, None, **geo, saved=saved)
        np.testing.assert_allclose(cpu.conv2d_weight(x, cropped, w.shape[2:], **geo, saved=saved),
                                   reference.conv2d_weight(x, cropped, w.shape[2:], **geo), **TOL[dtype])


@FEW
@given(conv_cases(), st.sampled_from(DTYPES))
def test_im2col_columns_are_the_same_from_the_parallel_gather_and_numpy(case, dtype):
    """_windows (threads shared) and NumPy's copy of the strided windows give the same columns, for every
    stride, dilation and padding; groups stay NumPy's."""
    from kernels import cpu
    from kernels._geometry import conv_out_size, geometry
    x, w, _, geo = case
    x = x.astype(dtype)
    g = geometry(w.shape[2:], **geo)
    ho, wo = conv_out_size(*x.shape[2:], g)
    with mock.patch.object(cpu._threads, "shared", return_value=False):
        want = cpu._im2col(x, g, ho, wo)
    with mock.patch.object(cpu._threads, "shared", return_value=True), \
            mock.patch.object(cpu, "_windows", wraps=cpu._windows) as windows:
        got = cpu._im2col(x, g, ho, wo)
    assert windows.call_count == (g.groups == 1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dilation", [1, 2])
def test_im2col_parallel_gather_on_a_dcgan_sized_layer(dilation):
    """The parallel compilation of _windows (an input past THREADS_MIN_SIZE) against NumPy's copy."""
    from kernels import cpu
    from kernels._geometry import conv_out_size, geometry
    x = np.random.default_rng(4).standard_normal((16, 32, 14, 14)).astype(np.float32)
    g = geometry((4, 4), 2, 1, dilation, 1)
    ho, wo = conv_out_size(14, 14, g)
    with mock.patch.object(cpu._threads, "shared", return_value=False):
        want = cpu._im2col(x, g, ho, wo)
    with mock.patch.object(cpu._threads, "shared", return_value=True):
        np.testing.assert_array_equal(cpu._im2col(x, g, ho, wo), want)


@FEW
@given(conv_cases(), st.integers(16, 20), st.integers(6, 8), st.integers(1, 5), st.sampled_from(DTYPES),
       st.booleans(), st.sampled_from([1, 3000, 1 << 19]))
def test_blocks_of_images_give_the_whole_batch_convolutions(case, channels, og, n, dtype, last, block_bytes):
    """columns.py's convolutions (ungrouped, from 16 input channels; every ungrouped transposed one) against the
    reference, for every stride, dilation and padding, on NCHW and channels-last inputs, with blocks of one
    image, of a few (the last one short) and of the whole batch. 6-8 output channels keep the layer off the
    paths that multiply first (_gemm_first_serves) and off Winograd's."""
    from kernels import columns, cpu
    x, w, b, geo = case
    assume(geo["groups"] == 1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, channels, *x.shape[2:])).astype(dtype)
    w = rng.standard_normal((og, channels, *w.shape[2:])).astype(dtype)
    b = None if b is None else rng.standard_normal(og).astype(dtype)
    if last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    pointwise = w.shape[2:] == (1, 1) and geo["stride"] == (1, 1) and geo["padding"] == (0, 0)
    with mock.patch.object(columns, "BLOCK_BYTES", block_bytes), \
            mock.patch.object(cpu, "_im2col", side_effect=AssertionError("whole-batch columns")), \
            mock.patch.object(columns, "conv2d", wraps=columns.conv2d) as blocks:
        y = cpu.conv2d(x, w, b, **geo)
        np.testing.assert_allclose(y, reference.conv2d(x, w, b, **geo), **TOL[dtype])
        gy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_allclose(cpu.conv2d_weight(x, gy, w.shape[2:], **geo),
                                   reference.conv2d_weight(x, gy, w.shape[2:], **geo), **TOL[dtype])
    assert blocks.call_count == (not pointwise)
    op = _output_padding(x.shape, y.shape, w.shape, geo)
    with mock.patch.object(columns, "BLOCK_BYTES", block_bytes):
        np.testing.assert_allclose(cpu.conv_transpose2d(gy, w, None, output_padding=op, **geo),
                                   reference.conv_transpose2d(gy, w, None, output_padding=op, **geo), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("o, kernel, stride, padding, dilation, output_padding",
                         [(1, 4, 2, 1, 1, 0), (3, 3, 2, 1, 1, 1), (2, (3, 2), (3, 2), (2, 0), (2, 1), (2, 1)),
                          (1, 3, 1, 0, 2, 1)])
def test_transposed_conv_to_few_channels_multiplies_per_image_in_nchw(dtype, o, kernel, stride, padding, dilation,
                                                                      output_padding):
    """An NCHW input to a transposed convolution of at most cpu._FEW_OUTPUTS output channels takes the per-image
    path (_col2im_planes), bias, dilation and output_padding included; a channels-last one the columns'."""
    from kernels import cpu
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 5, 4)).astype(dtype)
    w, b = rng.standard_normal((6, o, *np.broadcast_to(kernel, 2))).astype(dtype), rng.standard_normal(o).astype(dtype)
    geo = dict(stride=stride, padding=padding, dilation=dilation, output_padding=output_padding)
    want = reference.conv_transpose2d(x, w, b, **geo)
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for array, planes in ((x, 1), (last, 0)):
        with mock.patch.object(cpu, "_col2im_planes", wraps=cpu._col2im_planes) as spy:
            np.testing.assert_allclose(cpu.conv_transpose2d(array, w, b, **geo), want, **TOL[dtype])
        assert spy.call_count == planes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c, kernel, stride, padding, dilation",
                         [(1, 4, 2, 1, 1), (3, 3, 1, 1, 1), (2, (3, 2), (2, 1), (2, 0), (1, 2)), (4, 5, 1, 2, 1)])
def test_layers_of_few_input_channels_gather_their_columns_once_per_image(dtype, c, kernel, stride, padding,
                                                                          dilation):
    """conv2d of at most 4 input channels gathers its columns per image from NCHW (_image_columns: NumPy's copy,
    or _image_windows where the kernels share threads), once for the forward and the weight gradient, the
    gradient given in either layout; bias, stride and dilation included."""
    from kernels import _threads, cpu
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, c, 9, 8)).astype(dtype)
    w, b = rng.standard_normal((5, c, *np.broadcast_to(kernel, 2))).astype(dtype), rng.standard_normal(5).astype(dtype)
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    want = reference.conv2d(x, w, b, **geo)
    gy = rng.standard_normal(want.shape).astype(dtype)
    last = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for shared in (False, True):
        saved = {}
        with mock.patch.object(cpu, "_image_columns", wraps=cpu._image_columns) as spy, \
                mock.patch.object(_threads, "shared", lambda: shared):
            np.testing.assert_allclose(cpu.conv2d(x, w, b, saved=saved, **geo), want, **TOL[dtype])
            for g in (gy, last):
                np.testing.assert_allclose(cpu.conv2d_weight(x, g, w.shape[2:], saved=saved, **geo),
                                           reference.conv2d_weight(x, gy, w.shape[2:], **geo), **TOL[dtype])
        assert spy.call_count == 1


def test_strided_4x4_layer_saves_its_columns_and_the_node_hands_them_on():
    """A strided 4x4 layer of few channels (below columns.MIN_CHANNELS, as DCGAN's first critic layer): one
    im2col copy of x serves conv2d and the weight gradient of its node."""
    import minigen as mg
    from kernels import cpu
    rng = np.random.default_rng(2)
    x = mg.tensor(rng.standard_normal((3, 5, 10, 10)).astype(np.float32))
    w = mg.tensor(rng.standard_normal((4, 5, 4, 4)).astype(np.float32), requires_grad=True)
    with mock.patch.object(cpu, "_im2col", wraps=cpu._im2col) as im2col:
        y = mg.nn.functional.conv2d(x, w, stride=2, padding=1)
        (y * y).sum().backward()
    assert im2col.call_count == 1
    gy = 2 * reference.conv2d(x.data, w.data, stride=2, padding=1)
    np.testing.assert_allclose(w.grad.data, reference.conv2d_weight(x.data, gy, (4, 4), stride=2, padding=1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels, gather", [(4, "_image_columns"), (8, "_im2col")])
def test_strided_transposed_layer_convolves_its_gradient_once_for_both_gradients(channels, gather):
    """A transposed layer with few output channels (as DCGAN's generator output): its backward's conv2d of g
    (the input gradient) and conv2d_weight of g (the weight gradient) share one copy of g's windows (per image
    from NCHW up to 4 channels, else im2col's)."""
    import minigen as mg
    from kernels import cpu
    rng = np.random.default_rng(3)
    x = mg.tensor(rng.standard_normal((3, 5, 5, 5)).astype(np.float32), requires_grad=True)
    w = mg.tensor(rng.standard_normal((5, channels, 4, 4)).astype(np.float32), requires_grad=True)
    y = mg.nn.functional.conv_transpose2d(x, w, stride=2, padding=1)
    with mock.patch.object(cpu, gather, wraps=getattr(cpu, gather)) as windows:
        (y * y).sum().backward()
    assert windows.call_count == 1
    g = 2 * y.data
    np.testing.assert_allclose(x.grad.data, reference.conv2d(g, w.data, stride=2, padding=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(w.grad.data, reference.conv2d_weight(g, x.data, (4, 4), stride=2, padding=1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mod", CPU)
def test_convolution_argument_errors(mod):
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ValueError, match="channels"):
        mod.conv2d(x, np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="too small"):
        mod.conv2d(x, np.zeros((2, 4, 7, 7)))
    with pytest.raises(ValueError, match="output_padding"):
        mod.conv_transpose2d(x, np.zeros((4, 2, 3, 3)), stride=2, output_padding=2)


# -------------------------------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("mod", CPU)
def test_softmax_extreme_logits_float32(mod):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -np.inf], [3.0, -np.inf, -np.inf]], np.float32)
    y = mod.softmax(x)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(y[2], [0.5, 0.5, 0.0])
    ly = mod.log_softmax(x)
    assert ly.dtype == np.float32 and np.isfinite(ly[:, 0]).all()
    assert ly[2, 2] == -np.inf and ly[3, 1] == -np.inf
    np.testing.assert_allclose(np.exp(ly), y, atol=1e-7)


@pytest.mark.parametrize("mod", CPU)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_softmax_of_all_minus_inf_row_is_nan_like_torch(mod):
    y = mod.softmax(np.array([[-np.inf, -np.inf], [0.0, 1.0]]))
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
    assert np.isnan(mod.log_softmax(np.array([[-np.inf, -np.inf]]))).all()


@FEW
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.data(), st.sampled_from(DTYPES),
       st.sampled_from(CPU))
def test_softmax_and_backward_pieces(shape, data, dtype, mod):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    y, ly = mod.softmax(x, axis), mod.log_softmax(x, axis)
    np.testing.assert_allclose(y, reference.softmax(x, axis), **TOL[dtype])
    np.testing.assert_allclose(ly, reference.log_softmax(x, axis), **TOL[dtype])
    np.testing.assert_allclose(y.sum(axis), 1, **TOL[dtype])
    gx = mod.softmax_backward(y, gy, axis)
    np.testing.assert_allclose(gx, y * (gy - (gy * y).sum(axis, keepdims=True)), **TOL[dtype])
    lgx = mod.log_softmax_backward(ly, gy, axis)
    np.testing.assert_allclose(lgx, gy - np.exp(ly) * gy.sum(axis, keepdims=True), **TOL[dtype])
    assert {a.dtype for a in (y, ly, gx, lgx)} == {np.dtype(dtype)}


@FEW
@given(st.integers(0, 2), st.sampled_from(DTYPES), st.booleans(), st.integers(0, 2**32 - 1))
def test_cpu_softmax_kernel_on_arrays_large_enough_for_numba(axis, dtype, log, seed):
    """Arrays over _PARALLEL_MIN_SIZE run the Numba row kernels (smaller ones take reference's formulas),
    including rows of +-1e4, -inf, all -inf and NaN (first, and inside a row)."""
    rng = np.random.default_rng(seed)
    shape = [4, 5, 6]
    shape[axis] = kernels.cpu._PARALLEL_MIN_SIZE // 30 + 7
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    rows = np.moveaxis(x, axis, -1)  # a view: writing rows writes x
    rows[0, 0, ::3], rows[0, 1, :] = -1e4, -np.inf
    rows[1, 0, 1], rows[1, 1, ::2], rows[1, 2, 0], rows[2, 0, 40] = 1e4, -np.inf, np.nan, np.nan
    forward, backward = ((kernels.cpu.log_softmax, kernels.cpu.log_softmax_backward) if log
                         else (kernels.cpu.softmax, kernels.cpu.softmax_backward))
    ref_forward, ref_backward = ((reference.log_softmax, reference.log_softmax_backward) if log
                                 else (reference.softmax, reference.softmax_backward))
    with np.errstate(invalid="ignore"):
        y, want = forward(x, axis), ref_forward(x.astype(np.float64), axis)
        gx, want_gx = backward(y, gy, axis), ref_backward(want, gy.astype(np.float64), axis)
    assert y.dtype == gx.dtype == dtype
    nan_rows = np.isnan(np.moveaxis(want, axis, -1)).all(-1)
    assert nan_rows[0, 1] and nan_rows[1, 2] and nan_rows[2, 0] and nan_rows.sum() == 3
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_allclose(y, want, **TOL[dtype])
    np.testing.assert_allclose(gx, want_gx, **TOL[dtype])


def test_float32_exp_of_the_softmax_kernel_is_accurate():
    """_fastmath.exp, exp written out in float32 arithmetic so that it vectorizes: within 2 ulp of exp on
    y <= 0, flushed to 0 below 2^-126, exp(-inf) = 0 and NaN stays NaN."""
    import numba
    from kernels import _fastmath
    exp = numba.njit(lambda y: np.array([_fastmath.exp(v) for v in y], dtype=np.float32))
    y = np.concatenate([-np.logspace(-8, np.log10(87.3), 200_001), [0, -88, -1e4, -np.inf, np.nan]])
    got = exp(y.astype(np.float32))
    want = np.exp(y.astype(np.float32).astype(np.float64))
    normal = want >= np.finfo(np.float32).tiny
    ulp = np.spacing(want[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[normal] - want[normal]) / ulp) <= 2
    assert got[-5] == 1 and (got[-4:-1] == 0).all() and np.isnan(got[-1])


def test_wide_vectors_marks_the_function_that_calls_it_and_leaves_its_result_alone():
    """wide_vectors adds LLVM's "prefer-vector-width"="512" to the function it is called in (none other), and
    a loop compiled with it computes what it computes without it."""
    import numba
    from kernels import _fastmath

    @numba.njit(fastmath=_fastmath.FASTMATH)
    def plain(x):
        s = x.dtype.type(0)
        for v in x:
            s += _fastmath.exp(-abs(v))
        return s

    @numba.njit(fastmath=_fastmath.FASTMATH)
    def wide(x):
        _fastmath.wide_vectors()
        return plain(x)

    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_allclose(wide(x), plain(x), rtol=1e-5)
    assert '"prefer-vector-width"="512"' in next(iter(wide.inspect_llvm().values()))
    assert "prefer-vector-width" not in next(iter(plain.inspect_llvm().values()))


def test_the_normal_cdf_is_inlined_into_the_loop_that_calls_it():
    """always_inline makes LLVM inline normal_cdf_pdf (exp inlined into it) into a calling loop, which it declines
    for a function of that size: the compiled loop keeps no call to it, and it vectorizes (_fastmath.always_inline)."""
    import re

    import numba
    from kernels import _fastmath

    @numba.njit(fastmath=_fastmath.FASTMATH, error_model="numpy")
    def loop(x, out):
        for i in range(x.size):
            out[i] = _fastmath.normal_cdf_pdf(x[i])[0]

    x = np.linspace(-5, 5, 64).astype(np.float32)
    out = np.empty_like(x)
    loop(x, out)
    ir = loop.overloads[loop.signatures[0]].library.get_llvm_str()
    assert re.search(r"\bcall\b[^\n]*_fastmath14normal_cdf_pdf", ir) is None     # its mangled name


def test_softmax_backward_is_the_jacobian_product():
    """softmax_backward(y, gy) = J^T gy with J = diag(y) - y y^T, checked by central differences."""
    rng = np.random.default_rng(5)
    x, gy, v = rng.standard_normal((3, 6)), rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    for mod in CPU:
        for f, df in ((mod.softmax, mod.softmax_backward), (mod.log_softmax, mod.log_softmax_backward)):
            fd = (np.vdot(f(x + 1e-6 * v), gy) - np.vdot(f(x - 1e-6 * v), gy)) / 2e-6
            assert np.isclose(np.vdot(df(f(x), gy), v), fd, rtol=1e-6)


# -------------------------------------------------------------------------------------------------- slogdet

def _with_singular_values(rng, s, negate):
    """U diag(s) V^T with random orthogonal U, V; one column of U negated when `negate`."""
    n = len(s)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if negate:
        u[:, 0] *= -1
    return (u * s) @ v.T


@pytest.mark.parametrize("n", [1, 3, 8, 32, 48, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_slogdet_matches_numpy(n, dtype):
    rng = np.random.default_rng(n)
    spectra = [np.ones(n), np.logspace(0, -3 if dtype == np.float32 else -10, n), rng.uniform(0.1, 10, n)]
    a = np.stack([_with_singular_values(rng, s, neg) for s in spectra for neg in (False, True)]).astype(dtype)
    a = a.reshape(3, 2, n, n)
    want_sign, want_log = np.linalg.slogdet(a.astype(np.float64))
    # LU with partial pivoting is backward stable: it returns log|det(A + E)| with |E| ~ n eps |A|, and
    # |d log|det| / dA| = |A^-T| makes that an error of up to n eps cond(A), for the reference as for ours (on an
    # AMD EPYC, at n = 8 and cond 1e10, ours was 4e-8 and NumPy's 2.3e-7 from the sum of the logs of the spectrum)
    bound = 1e-9 + np.finfo(dtype).eps * n * np.linalg.cond(a.astype(np.float64))
    if dtype == np.float32:
        bound = np.maximum(bound, 1e-3)

    def assert_close(logabs, want):
        err = np.abs(logabs - want)
        assert np.all(err <= bound), f"log|det| off by {err.ravel()} (bounds {bound.ravel()})"

    for mod in CPU:
        sign, logabs = mod.slogdet(a)
        assert sign.shape == logabs.shape == (3, 2) and sign.dtype == logabs.dtype == dtype
        np.testing.assert_array_equal(sign, want_sign)
        assert_close(logabs, want_log)
    # a batch large enough for the parallel Numba path (small batches take LAPACK)
    big = np.tile(a.reshape(-1, n, n), (_batch_over_threshold(n) // 6 + 1, 1, 1))
    sign, logabs = kernels.cpu.slogdet(big)
    np.testing.assert_array_equal(sign, np.tile(want_sign.ravel(), len(big) // 6))
    assert_close(logabs.reshape(-1, 3, 2), want_log)


def _batch_over_threshold(n):
    return kernels.cpu._PARALLEL_MIN_SIZE // (8 * n * n) + 1


@pytest.mark.parametrize("n", [1, 2, 5, 8, 32, 48, 64])     # odd and even: Gauss-Jordan pairs rows
@pytest.mark.parametrize("dtype", DTYPES)
def test_inv_matches_numpy(n, dtype):
    rng = np.random.default_rng(n)
    a = np.stack([_with_singular_values(rng, rng.uniform(0.3, 3, n), i % 2 == 1)
                  for i in range(_batch_over_threshold(n))]).astype(dtype)
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    for mod in CPU:
        for batch in (a[:2], a):          # LAPACK for small batches, Numba's Gauss-Jordan for large ones
            out = mod.inv(batch)
            assert out.dtype == dtype
            np.testing.assert_allclose(out, np.linalg.inv(batch.astype(np.float64)), **tol)


@pytest.mark.parametrize("mod", CPU)
def test_inv_of_a_singular_matrix_raises(mod):
    a = np.tile(np.eye(4), (_batch_over_threshold(4), 1, 1))
    a[3] = 0.0
    with pytest.raises(np.linalg.LinAlgError, match="[Ss]ingular matrix"):
        mod.inv(a)


@pytest.mark.parametrize("mod", CPU)
def test_slogdet_of_singular_matrices(mod):
    a = np.array([[[1.0, 2.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    for batch in (a, np.tile(a, (_batch_over_threshold(2) // 3 + 1, 1, 1))):   # LAPACK, then the Numba LU
        sign, logabs = mod.slogdet(batch)
        np.testing.assert_array_equal(sign, np.tile([0, 0, -1], len(batch) // 3))
        np.testing.assert_array_equal(logabs, np.tile([-np.inf, -np.inf, 0], len(batch) // 3))


@st.composite
def large_matrices(draw):
    """(kind, a): one square float64 matrix past _LU_MAX_N, "conditioned" (singular values in [0.3, 3]),
    "ill" (singular values down to 1e-5), "zero lead" (leading half-block zero, so that every early pivot
    needs a swap) or "singular" (a zero column: an exact zero pivot)."""
    n = draw(st.integers(kernels.cpu._LU_MAX_N + 1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["conditioned", "ill", "zero lead", "singular"]))
    s = np.logspace(0, -5, n) if kind == "ill" else rng.uniform(0.3, 3, n)
    a = _with_singular_values(rng, s, draw(st.booleans()))
    if kind == "zero lead":
        a[:n // 2, :n // 2] = 0
    if kind == "singular":
        a[:, draw(st.integers(0, n - 1))] = 0
    return kind, a


@FEW
@given(case=large_matrices(), dtype=st.sampled_from(DTYPES))
def test_blocked_lu_slogdet_and_inv_match_numpy(case, dtype):
    """kernels.lu against numpy.linalg in float64: sign, log|det|, and the inverse (or LinAlgError)."""
    from kernels import lu
    kind, a = case
    a = a.astype(dtype)
    want_sign, want_log = np.linalg.slogdet(a.astype(np.float64))
    sign, logabs = lu.slogdet(a)
    if kind == "singular":
        assert (sign, logabs) == (0, -np.inf) and lu.inv(a) is None
        return
    assert sign == want_sign
    np.testing.assert_allclose(logabs, want_log, atol=(2e-2 if dtype == np.float32 else 1e-8) * len(a) ** 0.5)
    x, want = lu.inv(a), np.linalg.inv(a.astype(np.float64))
    assert x.dtype == dtype     # the forward error bound of an inverse: n eps cond(a), relative
    bound = len(a) * np.finfo(dtype).eps * np.linalg.cond(a.astype(np.float64))
    assert np.linalg.norm(x - want) <= bound * np.linalg.norm(want)
    factors = lu.lu(a)          # given the factors, both skip their own factorization: the same numbers
    assert lu.slogdet(a, factors) == (sign, logabs)
    np.testing.assert_array_equal(lu.inv(a, factors), x)


def test_large_slogdet_and_inv_of_batches_and_nan():
    """The dispatch of large matrices: batches loop over kernels.lu (from _LU_SLOGDET_MIN_N and
    _LU_INV_MIN_N of their dtype), a singular one names its batch index, NaN spreads as in numpy."""
    from kernels import cpu
    rng = np.random.default_rng(0)
    n = max(*cpu._LU_SLOGDET_MIN_N.values(), *cpu._LU_INV_MIN_N.values()) + 5
    a = np.stack([_with_singular_values(rng, rng.uniform(0.3, 3, n), i % 2 == 1) for i in range(4)])
    for dtype in DTYPES:
        batch = a.astype(dtype).reshape(2, 2, n, n)
        sign, logabs = cpu.slogdet(batch)
        want_sign, want_log = np.linalg.slogdet(a.reshape(2, 2, n, n))
        assert sign.shape == logabs.shape == (2, 2) and sign.dtype == logabs.dtype == dtype
        np.testing.assert_array_equal(sign, want_sign)
        np.testing.assert_allclose(logabs, want_log, atol=1e-3)
        x = cpu.inv(batch)
        assert x.shape == batch.shape and x.dtype == dtype
        np.testing.assert_allclose(x, np.linalg.inv(a.reshape(2, 2, n, n)), atol=1e-4)
        kept = cpu.slogdet(batch, keep_factors=True)        # the factors slogdet's gradient reuses
        assert len(kept[2]) == 4
        np.testing.assert_array_equal(kept[0], sign)
        np.testing.assert_array_equal(kept[1], logabs)
        np.testing.assert_array_equal(cpu.inv(batch, kept[2]), x)
        batch[1, 0, 3] = 0
        with pytest.raises(np.linalg.LinAlgError, match="batch index 2"):
            cpu.inv(batch)
        batch[1, 0] = a[2]
        batch[1, 0, 3, 4] = np.nan
        assert np.isnan(cpu.slogdet(batch)[1][1, 0]) and np.isnan(cpu.inv(batch)[1, 0]).any()


# ------------------------------------------------------------------------------------------------- dispatch

@pytest.fixture
def restore_backend():
    yield
    kernels.set_backend("auto")


def test_dispatch_follows_set_backend(restore_backend, monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "softmax", lambda x, axis=-1: calls.append("reference") or x)
    x = np.zeros((64, 1024))  # large enough that the cpu backend runs its own kernel, not reference's
    kernels.set_backend("reference")
    assert kernels.get_backend() == "reference"
    kernels.softmax(x)
    kernels.set_backend("auto")
    kernels.softmax(x)
    assert calls == ["reference"] and kernels.get_backend() == "auto"
    assert {"auto", "reference", "cpu"} <= set(kernels.available_backends())
    assert kernels.backend_module("cpu") is kernels.cpu


def test_unknown_backend_names_are_rejected():
    with pytest.raises(ValueError, match="unknown kernel backend 'tpu'"):
        kernels.set_backend("tpu")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.backend_module("numpy")


def _gpu_ready():
    return "cupy" in kernels.available_backends()


@pytest.mark.skipif(_gpu_ready(), reason="this machine has a usable GPU")
@pytest.mark.parametrize("name", kernels.GPU_BACKENDS)
def test_gpu_backend_without_gpu_says_what_is_missing(name):
    with pytest.raises(RuntimeError, match=r"pip install minigen\[cuda\]"):
        kernels.set_backend(name)
    with pytest.raises(RuntimeError, match=name):
        kernels.backend_module(name)
    assert kernels.get_backend() == "auto"


def _run_with_env(value, code):
    env = dict(os.environ, MINIGEN_KERNELS=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_environment_variable_is_read_at_import():
    ok = _run_with_env("reference", "import kernels; print(kernels.get_backend())")
    assert ok.returncode == 0 and ok.stdout.strip() == "reference"
    bad = _run_with_env("fast", "import kernels")
    assert bad.returncode != 0 and "unknown kernel backend 'fast'" in bad.stderr
    no_cupy = "import sys, kernels; assert 'cupy' not in sys.modules; print(kernels.get_backend())"
    if not _gpu_ready():   # a GPU name imports fine, and the first call says what is missing
        gpu = _run_with_env("cupy", no_cupy + "; import numpy; kernels.softmax(numpy.zeros(3))")
        assert "cupy" in gpu.stdout and "pip install minigen[cuda]" in gpu.stderr


def _printed_by_a_new_process(probe: str, variable: str, value: str | None) -> str:
    """What `probe` prints in a fresh Python process whose environment has `variable` unset or set to value."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != variable}
    env.update({} if value is None else {variable: value})
    return subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def test_parallel_kernels_launched_from_two_python_threads_take_turns():
    """Workqueue aborts the process on concurrent launches; kernels/_threads.py serializes them."""
    probe = ("import threading, numpy as np, numba, kernels; from kernels import norm; numba.set_num_threads(2); "
             "kernels._threads.THREADS_MIN_SIZE = 0; "
             "x = np.ones((8, 64, 16, 16), np.float32); "
             "work = lambda: [norm.standardize(x, (0, 2, 3), 1e-5) for _ in range(100)]; "
             "ts = [threading.Thread(target=work) for _ in range(3)]; [t.start() for t in ts]; "
             "[t.join() for t in ts]; print(numba.threading_layer())")
    assert _printed_by_a_new_process(probe, "NUMBA_THREADING_LAYER", "workqueue") == "workqueue"


def test_parallel_kernels_run_on_openmp_threads_unless_the_user_chose_a_layer():
    """kernels/_threads.py: OpenMP where Numba finds a runtime for it (minigen's kernels and products then share
    its threads), workqueue otherwise or when the user says so; products split only on OpenMP."""
    import importlib
    try:
        importlib.import_module("numba.np.ufunc.omppool")
        default = "omp"
    except (ImportError, OSError):
        default = "workqueue"
    probe = ("import numpy as np, numba, kernels; kernels._threads.THREADS_MIN_SIZE = 0; "
             "kernels.softmax(np.ones((512, 128), np.float32)); "
             "print(numba.threading_layer(), kernels._threads.OWN_THREADS)")
    assert [_printed_by_a_new_process(probe, "NUMBA_THREADING_LAYER", v) for v in (None, "workqueue")] == \
        [f"{default} {default == 'omp'}", "workqueue False"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_runs_the_kernels_on_one_thread():
    """GNU OpenMP cannot serve a child of fork() once the parent used it (Numba terminates the child at its
    first parallel region): kernels/_threads.py sets the child to one thread."""
    probe = ("import os, numpy as np, numba, kernels; from kernels import fused, gemm; numba.set_num_threads(2); "
             "x = np.ones(1 << 20, np.float32); a = np.ones((300, 300), np.float32); "
             "fused.silu(x); gemm.matmul(a, a); pid = os.fork()\n"
             "if pid == 0:\n"
             "    print(numba.get_num_threads(), fused.silu(x)[0] > 0.73, gemm.matmul(a, a)[0, 0], flush=True); "
             "os._exit(0)\n"
             "print(os.waitpid(pid, 0)[1], numba.get_num_threads())")
    assert _printed_by_a_new_process(probe, "NUMBA_NUM_THREADS", "2").split("\n") == ["1 True 300.0", "0 2"]


def test_parallel_and_serial_compilations_of_the_kernels_agree(monkeypatch):
    """Each Numba loop is compiled parallel (run on 2+ threads and large arrays) and serial (kernels/_threads.py):
    the suite runs on one thread, so here every kernel runs both ways on inputs large enough for Numba."""
    import numba
    from kernels import _threads, cpu, fused, layout, lu, norm, winograd
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here")
    monkeypatch.setattr(_threads, "THREADS_MIN_SIZE", 0)
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", 1)      # a chunk per row of tiles: the threads share them
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((4, 64, 12, 12), dtype=np.float32), rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    wt = rng.standard_normal((64, 32, 4, 4), dtype=np.float32)
    a = rng.standard_normal((1024, 8, 8)) + 3 * np.eye(8)
    big = rng.standard_normal((300, 300))        # lu.py on 2 threads: 9 panels and one of 12 columns
    wide = rng.standard_normal((4, 32, 16, 16), dtype=np.float32)
    x64 = x.astype(np.float64)
    calls = {"softmax": lambda: cpu.log_softmax(x.reshape(-1, 144) * 3),
             "softmax_backward": lambda: cpu.softmax_backward(cpu.softmax(x.reshape(256, -1)), x.reshape(256, -1)),
             "winograd": lambda: cpu.conv2d(x, w, None, 1, 1),
             "winograd kept": lambda: _weight_gradient_from_kept_tiles(x, w),
             "winograd weight": lambda: cpu.conv2d_weight(x, x, 3, 1, 1),
             "col2im": lambda: cpu.conv_transpose2d(x, wt, None, 2, 1),
             "im2col blocks": lambda: cpu.conv2d(x, wt.transpose(1, 0, 2, 3), None, 2, 1),
             "im2col blocks weight": lambda: cpu.conv2d_weight(x64, x64[:, :32, :6, :6], 4, 2, 1),   # sums split
             "slogdet": lambda: cpu.slogdet(a)[1], "inv": lambda: cpu.inv(a),
             "lu look-ahead": lambda: _factors_and_pivots(big), "lu inverse": lambda: lu.inv(big),
             "norm": lambda: norm.standardize(x, (0, 2, 3), 1e-5)[0],
             "norm backward": lambda: norm.standardize_backward(x, np.ones((1, 64, 1, 1), np.float32), x, (0, 2, 3)),
             "scale and shift": lambda: norm.scale_shift(x, w[:, 0, 0, 0], w[0, :, 0, 0]),
             "channel sums": lambda: np.stack(norm.channel_sums(x, x * 2)),
             "to channels-last": lambda: layout.padded_nhwc(wide, (1, 1)),
             "to NCHW": lambda: layout.contiguous(wide.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)),
             "silu backward": lambda: fused.silu_backward(x, 1 - x),
             "gated tanh": lambda: fused.gated_tanh(x),
             "gated tanh backward": lambda: fused.gated_tanh_backward(x, x[:, :32]),
             "adam": lambda: _adam_step(x.copy(), 1 - x, x * 0.1, x * x),
             "sgd": lambda: _sgd_step(x.copy(), 1 - x, x * 0.1)}
    for name, call in calls.items():
        numba.set_num_threads(1)
        serial = call()
        numba.set_num_threads(2)
        try:
            parallel = call()
        finally:
            numba.set_num_threads(1)
        # float32 to the output's scale: the two compilations may round float32 sums differently (on an AMD EPYC,
        # AVX2, the winograd conv's serial and parallel outputs differ by 2e-4 of 94, each 5.9e-4 from float64's)
        scale = 1e-6 + (2e-5 * np.abs(serial).max() if serial.dtype == np.float32 else 0)
        np.testing.assert_allclose(parallel, serial, rtol=1e-6, atol=scale, err_msg=name)


def _weight_gradient_from_kept_tiles(x, w):
    """conv2d's weight gradient from the tiles conv2d kept (each thread writing its chunks' tiles into them)."""
    from kernels import cpu
    saved = {}
    y = cpu.conv2d(x, w, None, 1, 1, saved=saved)
    return cpu.conv2d_weight(x, y, 3, 1, 1, saved=saved)


def _factors_and_pivots(a):
    from kernels import lu
    m, piv = lu.lu(a)
    return np.hstack([m, piv[:, None]])


def _adam_step(p, g, m, v):
    from kernels import optim
    assert optim.adam_update(p, g, m, v, 0.9, 0.999, 1e-3, 0.5, 1e-8)
    return np.stack([p, m, v])


def _sgd_step(p, g, buf):
    from kernels import optim
    assert optim.sgd_update(p, g, buf, 0.1, 0.01, 0.9, 0.1, True, False)
    return np.stack([p, buf])


def test_kernels_run_in_parallel_only_on_two_threads_and_large_arrays(monkeypatch):
    """kernels/_threads.py: the parallel compilation serves a call only when Numba has 2+ threads and the largest
    array has THREADS_MIN_SIZE elements."""
    import numba
    from kernels import _threads, cpu
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here")
    kernel, ran = cpu._softmax_rows, []
    monkeypatch.setattr(kernel, "serial", lambda *args: ran.append("serial"))
    monkeypatch.setattr(kernel, "parallel", lambda *args: ran.append("parallel"))
    monkeypatch.setattr(_threads, "THREADS_MIN_SIZE", 100)
    small, large = np.ones((9, 11)), np.ones((10, 10))
    numba.set_num_threads(2)
    try:
        kernel(small, small, False)
        kernel(large, small, False)
    finally:
        numba.set_num_threads(1)
    kernel(large, large, False)
    assert ran == ["serial", "parallel", "serial"]


def test_malloc_keeps_freed_memory_unless_told_not_to():
    """kernels._keep_freed_memory: glibc's malloc tuned and NumPy's huge pages off on import, both left alone
    with MINIGEN_MALLOC=default."""
    probe = "import kernels, numpy; print(kernels.MALLOC_TUNED, numpy._core.multiarray._get_madvise_hugepage())"
    printed = [_printed_by_a_new_process(probe, "MINIGEN_MALLOC", v) for v in (None, "default")]
    default = _printed_by_a_new_process("import numpy; print(numpy._core.multiarray._get_madvise_hugepage())",
                                        "MINIGEN_MALLOC", "default")
    assert printed == ["True False", f"False {default}"]
