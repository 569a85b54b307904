"""The fused elementwise kernels (kernels/fused.py), softplus's float32 kernel among them: the Numba path (large
NumPy arrays) against float64 references, on ordinary values, at +-1e4 (no NaN, exact limits) and on NaN, on
non-contiguous inputs; the formula path (small arrays, other array modules) gives the same values; the ops built on
them keep their first and second derivatives on the Numba path."""
import contextlib

import numpy as np
import pytest
from scipy.special import expit, ndtr

import kernels
import minigen as mg
from kernels import _threads, fused
from kernels._threads import PARALLEL_MIN_SIZE

G, A = 0.5, 0.2     # the upstream gradient and the slope / alpha the cases use


def _g(x):
    return np.full_like(x, G)


def _silu_grad(x):
    s = expit(x)
    return s * (1 + x * (1 - s))


def _phi(x):
    return np.exp(-x * x / 2) / np.sqrt(2 * np.pi)


def _tanh_form(x):
    """GELU's tanh form as the paper writes it, 0.5 (1 + tanh(u)) = sigmoid(2 u): (s, dv/dx) for v = 2 u. The
    sigmoid as exp(min(v, 0)) / (1 + exp(-|v|)), whose subnormal values scipy's expit flushes to 0."""
    c = np.sqrt(2 / np.pi)
    v = 2 * c * (x + 0.044715 * x ** 3)
    return np.exp(np.minimum(v, 0)) / (1 + np.exp(-np.abs(v))), 2 * c * (1 + 3 * 0.044715 * x * x)


def _tanh_gelu_grad(x):
    s, dv = _tanh_form(x)
    return s + x * s * (1 - s) * dv


def _tanh_condition(x):
    """x s'(v(x)) / s: how much s's relative error grows from the rounding of x (large for x << 0)."""
    s, dv = _tanh_form(x)
    return 1 + np.abs(x * dv) * (1 - s)


def _tanh_kernel(x):
    """The tanh kernel itself (fused.tanh takes NumPy's on one thread); NumPy's where _fast declines."""
    return fused._fused(fused._TANH, x, x) if fused._fast(x) else np.tanh(x)


def _softplus(x):
    """log(1 + exp(x)) in float64, NaN for NaN without NumPy's warning."""
    with np.errstate(invalid="ignore"):
        return np.logaddexp(0, x)


@contextlib.contextmanager
def formulas():
    """Every function on its formula in array operations: the reference backend turns the kernels off."""
    kernels.set_backend("reference")
    try:
        yield
    finally:
        kernels.set_backend("auto")


# name: (fused function of x, float64 reference, size of the terms that cancel in it (None: none do))
CASES = {
    "sigmoid": (fused.sigmoid, expit, None),
    "silu": (fused.silu, lambda x: x * expit(x), None),
    "silu_backward": (lambda x: fused.silu_backward(x, _g(x)), lambda x: G * _silu_grad(x), np.abs),  # 0 at x = -1.28
    "elu": (lambda x: fused.elu(x, A), lambda x: np.where(x > 0, x, A * np.expm1(np.minimum(x, 0))), None),
    "elu_backward": (lambda x: fused.elu_backward(x, _g(x), A),
                     lambda x: G * np.where(x > 0, 1, A * np.exp(np.minimum(x, 0))), None),
    "leaky_relu": (lambda x: fused.leaky_relu(x, A), lambda x: np.where(x > 0, x, A * x), None),
    "leaky_relu_backward": (lambda x: fused.leaky_relu_backward(x, _g(x), A),
                            lambda x: G * np.where(x > 0, 1, A), None),
    "relu": (fused.relu, lambda x: np.maximum(x, 0), None),
    "relu_backward": (lambda x: fused.leaky_relu_backward(x, _g(x), 0.0), lambda x: G * (x > 0), None),
    "tanh": (_tanh_kernel, np.tanh, None),
    "tanh_backward": (lambda x: fused.tanh_backward(x, _g(x)), lambda x: G * (1 - x * x), np.square),  # 0 at |y| = 1
    "sigmoid_backward": (lambda x: fused.sigmoid_backward(x, _g(x)), lambda x: G * x * (1 - x),  # 0 at y = 0, 1
                         lambda x: np.abs(x) + x * x),
    # Phi's tails go through exp(-x^2 / 2), whose condition number is x^2: the rounding of x alone moves the
    # exact value that much, so errors are measured against the value times 1 + x^2 (gelu' = 0 at x = -0.75)
    "gelu": (lambda x: fused.gelu(x, "none"), lambda x: x * ndtr(x), lambda x: x * x * np.abs(x * ndtr(x))),
    "gelu_backward": (lambda x: fused.gelu_backward(x, _g(x), "none"), lambda x: G * (ndtr(x) + x * _phi(x)),
                      lambda x: G * (1 + x * x) * (ndtr(x) + np.abs(x) * _phi(x))),
    "gelu_tanh": (lambda x: fused.gelu(x, "tanh"), lambda x: x * _tanh_form(x)[0],
                  lambda x: np.abs(x * _tanh_form(x)[0]) * _tanh_condition(x)),
    "gelu_tanh_backward": (lambda x: fused.gelu_backward(x, _g(x), "tanh"), lambda x: G * _tanh_gelu_grad(x),
                           lambda x: G * _tanh_condition(x) * (_tanh_form(x)[0] + np.abs(_tanh_gelu_grad(x)))),
    # x itself past the cut-off -log(eps), where log1p(exp(-x)) is below half an ulp of x
    "softplus": (lambda x: fused.softplus(x, 1.0, -np.log(np.finfo(x.dtype).eps)), _softplus, None),
    "softplus_beta": (lambda x: fused.softplus(x, 2.0, 20.0),     # beta x exact: the error is softplus's alone
                      lambda x: np.where(2 * x > 20, x, _softplus(2 * x) / 2), None),
    "softplus_backward": (lambda x: fused.softplus_backward(x, _g(x), 2.0, 3.0),
                          lambda x: G * np.where(2 * x > 3, 1, expit(2 * x)), None),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CASES)
def test_numba_path_matches_float64_reference(name, dtype):
    fn, ref, terms = CASES[name]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(PARALLEL_MIN_SIZE + 7) * 8).astype(dtype)
    x[:8] = [-1e4, 1e4, -100.0, 100.0, 0.0, -0.0, 1e-3, -1e-3]
    y = fn(x)
    assert y.dtype == dtype and y.shape == x.shape and np.isfinite(y).all()
    expected = ref(x.astype(np.float64))
    # relative to the value, or where terms cancel (to 0 in silu' near x = -1.28) to the size of the terms; and
    # float32 exp flushes results below the smallest normal float to 0 (_fastmath.exp), a factor that gelu'
    # multiplies by up to |x|^3 (x s (1 - s) v' in the tanh form)
    tol, scale = 8 * np.finfo(dtype).eps, np.abs(expected) + (0 if terms is None else terms(x.astype(np.float64)))
    flushed = np.finfo(dtype).tiny * (1 + np.abs(x.astype(np.float64)) ** 3)
    assert (np.abs(y - expected) <= tol * scale + flushed).all()
    with formulas():
        assert (np.abs(fn(x) - y) <= 2 * tol * scale + flushed).all()


@pytest.mark.parametrize("size", [8, PARALLEL_MIN_SIZE])
def test_relu_keeps_nan_and_infinity_and_sends_minus_infinity_to_zero(size):
    x = np.zeros(size, np.float32)
    x[:7] = [-np.inf, np.inf, np.nan, -1, 1, -0.0, 1e-30]
    expected = np.zeros(size, np.float32)
    expected[:7] = [0, np.inf, np.nan, 0, 1, 0, 1e-30]
    np.testing.assert_array_equal(fused.relu(x), expected)


@pytest.mark.parametrize("name", CASES)
def test_nan_as_in_the_reference_and_a_non_contiguous_input(name):
    """NaN in x gives NaN where the function has it (not in relu's and leaky_relu's backward, whose x > 0 is
    simply false there); a non-contiguous input gives the values of its contiguous copy."""
    fn, ref, _ = CASES[name]
    x = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)
    x[3, 5] = np.nan
    y = fn(x.T)
    assert y.shape == (1024, 64)
    np.testing.assert_array_equal(y, fn(np.ascontiguousarray(x.T)))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref(x.T.astype(np.float64))))
    np.testing.assert_array_equal(np.isnan(fn(x[:4, :8])), np.isnan(ref(x[:4, :8].astype(np.float64))))


@pytest.mark.parametrize("fn", [fused.silu_backward, fused.tanh_backward, fused.sigmoid_backward,
                                lambda x, g: fused.elu_backward(x, g, A),
                                lambda x, g: fused.leaky_relu_backward(x, g, A),
                                lambda x, g: fused.gelu_backward(x, g, "none"),
                                lambda x, g: fused.gelu_backward(x, g, "tanh")])
def test_inputs_of_different_layouts(fn):
    """g channels-last (an NCHW view of NHWC memory) and x with gaps (a crop), or x channels-last and g with
    gaps: the output has g's layout (dense), with the values of contiguous inputs."""
    rng = np.random.default_rng(3)
    nhwc = rng.standard_normal((8, 16, 16, 32)).astype(np.float32).transpose(0, 3, 1, 2)
    crop = rng.standard_normal((8, 32, 18, 18)).astype(np.float32)[:, :, 1:-1, 1:-1]
    for x, g in [(crop, nhwc), (nhwc, crop)]:
        y = fn(x, g)
        assert y.strides == np.empty_like(g).strides
        np.testing.assert_array_equal(y, fn(np.ascontiguousarray(x), np.ascontiguousarray(g)))


def test_tanh_takes_the_kernel_only_where_it_runs_on_several_threads():
    import numba
    x = np.random.default_rng(4).standard_normal(PARALLEL_MIN_SIZE).astype(np.float32)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(fused.tanh(x), np.tanh(x))
        if numba.config.NUMBA_NUM_THREADS > 1:
            numba.set_num_threads(2)       # the kernel runs in parallel from THREADS_MIN_SIZE (4 M on workqueue)
            expected = _tanh_kernel(x) if x.size >= _threads.THREADS_MIN_SIZE else np.tanh(x)
            np.testing.assert_array_equal(fused.tanh(x), expected)
            assert not np.array_equal(_tanh_kernel(x), np.tanh(x))     # the two paths are told apart
    finally:
        numba.set_num_threads(threads)


def _gate_layouts(dtype) -> dict:
    """x (N, 2C, H, W) as the gated_tanh kernel meets it: NCHW, NCHW cropped, channels-last (a convolution's
    output), channels-last cropped (the gated PixelCNN's vertical stack), channels-last with H and W swapped
    in memory; values spread to +-30 with +-1e4 and NaN among them."""
    nhwc = (np.random.default_rng(5).standard_normal((4, 18, 17, 64)) * 8).astype(dtype)
    nhwc[0, 0, 0, :4] = [1e4, -1e4, np.nan, 0.0]
    nhwc[0, 0, 0, 32:36] = [-1e4, 1e4, 0.5, np.nan]
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    return {"nchw": nchw, "nchw crop": nchw[:, :, 1:, 2:], "channels-last": nhwc.transpose(0, 3, 1, 2),
            "channels-last crop": nhwc.transpose(0, 3, 1, 2)[:, :, 1:], "swapped": nhwc.transpose(0, 3, 2, 1)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["nchw", "nchw crop", "channels-last", "channels-last crop", "swapped"])
def test_gated_tanh_kernel_matches_float64_reference_in_every_layout(name, dtype):
    """y = tanh(a) sigmoid(b) and its gradient [gy s (1 - t^2), gy t s (1 - s)] on the Numba path, against
    float64: relative to the value, or where 1 - t^2 and 1 - s cancel (|a|, b large) to the size of their
    terms; NaN where x has it, finite at +-1e4; the formula path (a small slice) agrees."""
    x = _gate_layouts(dtype)[name]
    assert fused._gate_halves(x) is not None           # the kernel serves this layout
    c = x.shape[1] // 2
    gy = np.random.default_rng(6).standard_normal((x.shape[0], c, *x.shape[2:])).astype(dtype).transpose(0, 1, 3, 2)
    gy = np.ascontiguousarray(gy).transpose(0, 1, 3, 2)   # NCHW with H and W swapped: copied to y's layout
    y, gx = fused.gated_tanh(x), fused.gated_tanh_backward(x, gy)
    assert y.dtype == gx.dtype == dtype and y.shape == gy.shape and gx.shape == x.shape
    t, s = np.tanh(x[:, :c].astype(np.float64)), expit(x[:, c:].astype(np.float64))
    tol, g64 = 8 * np.finfo(dtype).eps, gy.astype(np.float64)
    for got, expected, scale in [(y, t * s, np.abs(t * s)),
                                 (gx[:, :c], g64 * s * (1 - t * t), np.abs(g64) * s * (1 + t * t)),
                                 (gx[:, c:], g64 * t * s * (1 - s), np.abs(g64 * t) * s)]:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        finite = ~np.isnan(expected)
        assert (np.abs(got - expected)[finite] <= tol * scale[finite] + np.finfo(dtype).tiny).all()
    small = x[:2, :, :3]
    assert fused._gate_halves(small) is None
    np.testing.assert_allclose(fused.gated_tanh(small), y[:2, :, :3], rtol=2 * tol, atol=np.finfo(dtype).tiny)
    np.testing.assert_allclose(fused.gated_tanh_backward(small, gy[:2, :, :3]), gx[:2, :, :3], rtol=2 * tol,
                               atol=4 * tol * np.abs(gy[:2, :, :3]).max())


@pytest.mark.parametrize("name", ["nchw", "channels-last crop"])
def test_gated_tanh_on_the_numba_path_has_right_first_and_second_derivatives(name):
    x = mg.Tensor(_gate_layouts(np.float64)[name] / 8, requires_grad=True)
    x.data[np.isnan(x.data)] = 0.3
    assert fused._gate_halves(x.data) is not None
    assert mg.gradcheck(mg.nn.functional.gated_tanh, [x]) and mg.gradgradcheck(mg.nn.functional.gated_tanh, [x])


OPS = {"sigmoid": mg.sigmoid, "silu": mg.silu, "tanh": mg.tanh, "relu": mg.relu, "elu": lambda x: mg.elu(x, 1.5),
       "leaky_relu": lambda x: mg.leaky_relu(x, A), "gelu": mg.gelu, "gelu_tanh": lambda x: mg.gelu(x, "tanh"),
       "softplus": lambda x: mg.softplus(x, beta=2.0, threshold=3.0)}


@pytest.mark.parametrize("name", OPS)
def test_ops_on_the_numba_path_have_right_first_and_second_derivatives(name):
    """float64, large enough for the kernels, |x| >= 0.1 (away from the kinks at 0 of relu, leaky_relu, elu)."""
    x = np.random.default_rng(2).standard_normal(PARALLEL_MIN_SIZE + 7)
    x = mg.Tensor(x + 0.1 * np.sign(x), requires_grad=True)
    assert mg.gradcheck(OPS[name], [x]) and mg.gradgradcheck(OPS[name], [x])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("name", OPS)
def test_ops_keep_the_dtype_of_their_input(name, dtype):
    """On the array-formula path too, where scipy's ndtr (GELU's Phi) would return float16 as float64."""
    x = mg.tensor(np.linspace(-3, 3, 7).astype(dtype), requires_grad=True)
    y = OPS[name](x)
    y.sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype


def test_the_reference_backend_turns_every_numba_pass_off():
    """With 'reference' chosen, the activations, normalizations, Adam's and SGD's updates and layout copies take
    their NumPy formulas too, so that the reference is plain NumPy throughout."""
    from unittest import mock

    import kernels
    from kernels import layout, norm, optim
    x = np.random.default_rng(0).standard_normal((4, 32, 16, 16)).astype(np.float32)
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    p, g, m, v = (a.copy() for a in (x, x, x, np.abs(x)))

    def numba_used() -> list[bool]:
        with mock.patch.object(layout, "_to_nchw", side_effect=AssertionError("_to_nchw ran")) as to_nchw:
            try:
                layout.contiguous(channels_last)
            except AssertionError:
                pass
        return [fused._fast(x), norm._fast(x, (0, 2, 3)) is not None,
                optim.adam_update(p, g, m, v, 0.9, 0.999, 1e-3, 1.0, 1e-8),
                optim.sgd_update(p, g, None, 0.1, 0.0, 0.0, 0.0, False, False), to_nchw.called]
    assert numba_used() == [True, True, True, True, True]
    with formulas():
        assert numba_used() == [False, False, False, False, False]


@contextlib.contextmanager
def _threads_at(n: int):
    """Numba's loops on n threads (as many as it has, if fewer)."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _lstm_case(rng):
    z, c, gh, gc = (rng.standard_normal(s) * k for s, k in [((64, 512), 4), ((64, 128), 2), ((64, 128), 1),
                                                             ((64, 128), 1)])
    z[0, :4], z[1, 128:132], c[2, :2] = [1e4, -1e4, 1e4, -1e4], -1e4, [1e4, -1e4]
    return (z, c), (gh, gc)


def _gru_case(rng):
    a, b, h, g = (rng.standard_normal(s) * k for s, k in [((64, 384), 4), ((64, 384), 4), ((64, 128), 1),
                                                           ((64, 128), 1)])
    a[0, :4], b[1, 128:132], b[2, 256:260] = [1e4, -1e4, 1e4, -1e4], -1e4, [1e4, -1e4, 1e4, -1e4]
    return (a, b, h), (g,)


# cell: (its forward keeping the gates, its backward, the kernel that serves the backward from them, a case)
CELLS = {"lstm": (lambda z, c: fused.lstm_cell(z, c)[2], fused.lstm_cell_backward, "_lstm_backward", _lstm_case),
         "gru": (lambda a, b, h: fused.gru_cell(a, b, h)[1], fused.gru_cell_backward, "_gru_backward", _gru_case)}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_recurrent_cell_backward_kernels_match_the_formula_at_1e4(cell, dtype, threads, monkeypatch):
    """An LSTM's and a GRU's cell backward from kept gates (one Numba pass over 64 x 128 units) against the same
    formula in array operations from the recomputed gates, float64 as the reference, with +-1e4
    pre-activations: no NaN."""
    gates_of, backward, name, case = CELLS[cell]
    kernel, calls = getattr(fused, name), []
    monkeypatch.setattr(fused, name, type("Spy", (), {"sized": lambda self, *a: calls.append(kernel.sized(*a))})())
    inputs, grads = case(np.random.default_rng(7))
    want = backward(*inputs, *grads)
    with _threads_at(threads):
        inputs, grads = [a.astype(dtype) for a in inputs], [a.astype(dtype) for a in grads]
        got = backward(*inputs, *grads, gates=gates_of(*inputs))
    assert len(calls) == 1
    for g, w in zip(got, want):
        assert g.dtype == dtype and np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-6 * np.abs(w).max())
