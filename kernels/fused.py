"""Fused elementwise kernels for activations and their backward passes (sigmoid, SiLU, ReLU, leaky ReLU and
ReLU's backward, tanh's backward, ELU, GELU, the gated tanh), each one vectorized pass over memory where NumPy
makes one pass (and one temporary) per ufunc, and np.where one unpredictable branch per element (1.4 ms on 0.4 M
random float32).

The pass is bound by memory. It runs in parallel from THREADS_MIN_SIZE elements (kernels/_threads.py: 32 K
where minigen's kernels own the threads, on the OpenMP layer; 4 M on workqueue). Under OpenMP beside NumPy's
threaded BLAS a parallel region's threads spun after it and starved the BLAS threads of the convolution that
follows (at 2 threads: DCGAN step 250 ms with a parallel kernel, 190 ms serial); with the products on Numba's
threads too, the parallel pass measured 0.97 of the step time (DCGAN, MLP VAE; in-process A/B, p25),
0.99-1.03 elsewhere.

Every function takes any array: NumPy arrays of float32 / float64 go to the Numba kernel, from a size at which
it beats NumPy's formula (SHORT_FORMULA, EXP_FORMULA), its serial compilation below THREADS_MIN_SIZE; everything
else (small arrays, CuPy arrays, other dtypes) to the same formula in array operations, so that callers never
choose. An LSTM's training step (batch 64, 128 hidden units, 32 steps; one thread) took 0.85 of its time with the
gates' activations on the kernels from any size, a GRU's 0.89, against from 32 K elements. All formulas use
e = exp(-|x|) <= 1, which never overflows:

    sigmoid(x) = 1 / (1 + e) for x >= 0,  e / (1 + e) for x < 0
    silu(x)    = x sigmoid(x)
    silu'(x)   = s (1 + x (1 - s)),  s = sigmoid(x)
    elu(x)     = x for x > 0,  a expm1(-|x|) otherwise;   elu'(x) = 1 for x > 0,  a e otherwise
    leaky(x)   = x for x > 0,  a x otherwise;   leaky'(x) = 1 for x > 0,  a otherwise (relu's: a = 0)
    relu(x)    = x for x > 0,  0 otherwise (NaN stays NaN; relu(-inf) = 0, where a leaky of a = 0 gives NaN)
    tanh'(x)   = 1 - y^2,  y = tanh(x);   sigmoid'(x) = y (1 - y),  y = sigmoid(x)
    gelu(x)    = x Phi(x);   gelu'(x) = Phi(x) + x phi(x)   (Phi, phi: the normal CDF and density)

tanh's forward on one thread is a single vectorized NumPy pass already. softplus,
max(x, 0) + log1p(e), has a kernel of its own, with its backward g sigmoid(beta x); its forward serves float32
only (_fastmath.log1p, vectorized) and float64's stays in array operations: libm's log1p is a scalar call, and
a branch calling libm would leave every kind of _activation scalar (softplus with math.log1p: 6.2 ms on 0.4 M
float32, NumPy's 0.7 ms). GELU has a kernel of its own too (with its four kinds in _activation, LLVM no longer
unswitched that loop: SiLU took 6.7x the time), Phi being _fastmath.normal_cdf_pdf, vectorized for float32
(libm's erfc for float64). float32 GELU forward + backward on 2 M elements took 1.05-1.11 of PyTorch's time at
1 and 2 threads (benchmarks/activations); composed of erf and products, as it was, 9x. The gated tanh,
tanh(a) sigmoid(b) of a map's two channel halves, reads the halves where they lie in x's memory (channels-last or
NCHW, cropped or not) and writes its gradient's two halves in one pass: forward and backward on a gated
PixelCNN layer's 16x128x28x28 float32 took 0.33-0.51 of the time of split, tanh, sigmoid and product (one and
two threads), and the training step 0.87-0.89 of its time (in-process A/B). An LSTM cell's update past its
products (lstm_cell) is array operations around one sigmoid pass over all four gates; its backward, from the gates
the forward kept (minigen.ops.nn.LSTMLayer keeps them), one Numba pass (_lstm_backward): 29 us a call inside the
row LSTM's training step (median of 1680 on (64, 512) float32 z, p99 41, one thread; the array formula about 70),
whole steps 0.885 / 0.824 of their time with the formula (1 / 2 threads, in-process alternation, Intel Xeon); a
GRU cell's backward likewise (_gru_backward; the row GRU's step 0.91 / 0.90 of its time with the formula). A
kernel for the whole cell (one pass each way, the gates recomputed in the backward) had taken 29 / 67 us in
isolation, but 5-7x that in 10-60% of its calls inside a training step, depending on where the arrays it read and
wrote lay (AMD EPYC Zen 4): not kept.
"""
from __future__ import annotations

import math

import numba
import numpy as np

import kernels

from . import layout
from ._fastmath import FASTMATH, INV_SQRT_2PI, exp, expm1, log1p, normal_cdf_pdf, wide_vectors
from ._threads import PARALLEL_MIN_SIZE, in_parallel, parallel

(_SIGMOID, _SILU, _SILU_BACKWARD, _ELU, _ELU_BACKWARD, _LEAKY, _FROM_OUTPUT, _TANH,
 _GELU, _GELU_BACKWARD, _GELU_TANH, _GELU_TANH_BACKWARD) = range(12)

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# From how many elements the kernels serve NumPy arrays, by what NumPy's formula costs (float32, one thread): a
# kernel's call costs about 2 us (its arguments and Numba's dispatch), so formulas of one to three ufuncs (relu,
# leaky relu and relu', tanh' and sigmoid' from the output: 1.4 us at 16 elements, 4 us at 8 K, as the kernel)
# stay NumPy's below 8 K elements, and formulas with an exp (sigmoid, SiLU, ELU, GELU, softplus: 3.6-4 us at 16
# elements, sigmoid 41 us at 20 K against the kernel's 8.6) take the kernel at any size. The gated tanh, which
# prepares its halves' layout first, from PARALLEL_MIN_SIZE.
SHORT_FORMULA, EXP_FORMULA = 1 << 13, 1

# GELU's tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) = x sigmoid(v), v = x (K0 + K1 x^2)
GELU_K0 = 2 * math.sqrt(2 / math.pi)
GELU_K1 = GELU_K0 * 0.044715
_GELU_CLAMP = 40.0   # past |x| = 40, Phi(x) and sigmoid(v) are exactly 0 or 1 and x phi(x) is 0: x is clamped there


# error_model="numpy": a division without Python's zero check, whose branch would keep the loop scalar
_serial = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")


@_serial
def _sigmoid(v, one):
    """sigmoid(v) from e = exp(-|v|), `one` 1 in v's type."""
    e = exp(-abs(v))
    return (one if v >= 0 else e) / (one + e)


@_serial
def _tanh(v, one):
    """tanh(v) = sign(v) (1 - e) / (1 + e), e = exp(-2 |v|), as -m / (2 + m), m = expm1(-2 |v|) (see tanh)."""
    m = expm1(-abs(v + v))
    return math.copysign(-m / (one + one + m), v)


@parallel(fastmath=FASTMATH, error_model="numpy")
def _activation(kind, x, g, a, out):
    """out = f(x) or g f'(x) elementwise on flat arrays, f chosen by `kind` (a: the slope or alpha).

    One branch per kind on the loop-invariant `kind`: LLVM unswitches the loop into one vectorized loop per
    kind, as fast as a kernel of its own (measured), as long as every branch is branch-free arithmetic (a
    libm call such as math.log1p in any branch would leave every kind scalar, 2-6x slower)."""
    one = x.dtype.type(1)
    for i in numba.prange(x.size):
        wide_vectors()
        v = x[i]
        if kind == _LEAKY:
            out[i] = g[i] if v > 0 else a * g[i]
        elif kind == _FROM_OUTPUT:      # v = y: tanh' = 1 - y^2 (a = 1), sigmoid' = y - y^2 (a = 0)
            out[i] = g[i] * (a + (one - a) * v - v * v)
        elif kind == _ELU:
            out[i] = v if v > 0 else a * expm1(-abs(v))
        elif kind == _ELU_BACKWARD:
            out[i] = g[i] if v > 0 else g[i] * (a * exp(-abs(v)))
        elif kind == _SIGMOID:
            out[i] = _sigmoid(v, one)
        elif kind == _TANH:
            out[i] = _tanh(v, one)
        elif kind == _SILU:
            out[i] = v * _sigmoid(v, one)
        else:
            s = _sigmoid(v, one)
            out[i] = g[i] * s * (one + v * (one - s))


@parallel(fastmath=FASTMATH, error_model="numpy")
def _gelu(kind, x, g, a, out):
    """out = gelu(x) or g gelu'(x), exact or in the tanh form, chosen by `kind` as in _activation (`a` unused)."""
    t = x.dtype.type
    one, lim, k0, k1 = t(1), t(_GELU_CLAMP), t(GELU_K0), t(GELU_K1)
    for i in numba.prange(x.size):
        wide_vectors()
        v = x[i]
        c = -lim if v < -lim else lim if v > lim else v      # NaN stays NaN
        if kind == _GELU:
            out[i] = v * normal_cdf_pdf(c)[0]
        elif kind == _GELU_BACKWARD:
            cdf, pdf = normal_cdf_pdf(c)
            out[i] = g[i] * (cdf + c * pdf)
        else:
            s = _sigmoid(c * (k0 + k1 * c * c), one)
            out[i] = v * s if kind == _GELU_TANH else g[i] * (s + c * s * (one - s) * (k0 + 3 * k1 * c * c))


@parallel(fastmath=FASTMATH, error_model="numpy")
def _softplus(backward, x, g, beta, cutoff, out):
    """On flat arrays, with v = beta x: the forward out = x where v > cutoff, else (max(v, 0) + log1p(exp(-|v|)))
    / beta; or the backward out = g where v > cutoff, else g sigmoid(v)."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in numba.prange(x.size):
        wide_vectors()
        v = beta * x[i]
        if backward:
            out[i] = g[i] if v > cutoff else g[i] * _sigmoid(v, one)
        else:
            y = (max(v, zero) + log1p(exp(-abs(v)))) / beta
            out[i] = x[i] if v > cutoff else y


@parallel(fastmath=FASTMATH, error_model="numpy")
def _gated_tanh(backward, x, steps, half, y, gx, gx_steps, gx_half):
    """The gated activation over the index space (n0, n1, n2, n3) of y, dense. x and gx are flat memory from
    their first element: element (i, j, k, c) of x's first half (a) at i steps[0] + j steps[1] + k steps[2] + c,
    of its second half (b) `half` further, and likewise in gx. With t = tanh(a), s = sigmoid(b): the forward
    writes t s to y; the backward reads y as the gradient gy and writes gy s (1 - t^2) and gy t s (1 - s) to
    gx's two halves. Runs of n3 along unit stride: they vectorize."""
    one = x.dtype.type(1)
    n0, n1, n2, n3 = y.shape
    y_flat = y.reshape(-1)
    u = np.uint64      # unsigned indices: no wraparound of negative ones in the loop, which LLVM would leave
    for ij in numba.prange(n0 * n1):  # as gathers (4x the time)
        wide_vectors()
        i, j = ij // n1, ij % n1
        for k in range(n2):
            a0, y0 = u(i * steps[0] + j * steps[1] + k * steps[2]), u((ij * n2 + k) * n3)
            b0, o0 = a0 + u(half), u(i * gx_steps[0] + j * gx_steps[1] + k * gx_steps[2])
            for c in range(u(n3)):
                t, s = _tanh(x[a0 + c], one), _sigmoid(x[b0 + c], one)
                if backward:
                    gs = y_flat[y0 + c] * s
                    gx[o0 + c] = gs * (one - t * t)
                    gx[o0 + u(gx_half) + c] = gs * t * (one - s)
                else:
                    y_flat[y0 + c] = t * s


def _fast(*arrays, least: int = PARALLEL_MIN_SIZE) -> bool:
    """Whether the Numba path serves these arrays: NumPy, one float dtype, one shape, at least `least` elements."""
    a = arrays[0]
    return (a.size >= least and type(a) is np.ndarray and a.dtype in _FLOATS
            and all(type(b) is np.ndarray and b.dtype == a.dtype and b.shape == a.shape for b in arrays[1:])
            and kernels.numba_passes())


_ONES = {np.dtype(t): np.array(1, t) for t in (np.float32, np.float64)}


def _one(x):
    """1 for a formula on x: for a float NumPy array a 0-d array of its dtype, which NumPy's ufuncs take sooner
    than a Python number (g * (1 - y * y) on 16 float32: 1.13 us, 0.82 with it)."""
    return _ONES.get(x.dtype, 1) if type(x) is np.ndarray else 1


def _fused(kind, x, g, *scalars, kernel=_activation):
    """kernel(kind, x, g, *scalars, out) over memory in g's order (x's for a forward, where g is x): a
    channels-last view of NCHW stays one, as in NumPy's g * f'(x), and the gradient flowing through keeps its
    layout. The scalars (_activation's a, 0 when not given) are cast to x's dtype."""
    out = np.empty_like(g)
    flat_x, flat_g = layout.in_layout_of(x, out).ravel(order="K"), layout.in_layout_of(g, out).ravel(order="K")
    kernel.sized(out.size, kind, flat_x, flat_g, *map(x.dtype.type, scalars or (0.0,)), out.ravel(order="K"))
    return out


def softplus(x, beta, cutoff):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > cutoff: max(bx, 0) + log1p(exp(-|bx|)) over
    beta, finite for any x."""
    if _fast(x, least=EXP_FORMULA) and x.dtype == np.float32:     # float64's log1p would be libm's scalar call
        return _fused(False, x, x, beta, cutoff, kernel=_softplus)
    bx = x * beta if beta != 1 else x
    y = np.maximum(bx, 0) + np.log1p(np.exp(-np.abs(bx)))
    if beta != 1:
        y = y / beta
    return np.where(bx > cutoff, x, y).astype(x.dtype, copy=False)


def softplus_backward(x, g, beta, cutoff):
    """g softplus'(x) = g sigmoid(beta x), and g itself where beta x > cutoff."""
    if _fast(x, g, least=EXP_FORMULA):
        return _fused(True, x, g, beta, cutoff, kernel=_softplus)
    bx = x * beta if beta != 1 else x
    return g * np.where(bx > cutoff, 1, _sigmoid_formula(bx)).astype(g.dtype, copy=False)


def _sigmoid_formula(x):
    """The formula in array operations (any array module through NumPy's dispatch)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def _leaky_formula(x, w, a):
    """w where x > 0, a w elsewhere; a plain mask product when a = 0, which np.where's per-element branch
    makes 10x slower on random signs."""
    return w * (x > 0) if a == 0 else np.where(x > 0, w, w * a)


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _fused(_SIGMOID, x, x) if _fast(x, least=EXP_FORMULA) else _sigmoid_formula(x)


def silu(x):
    """x sigmoid(x)."""
    return _fused(_SILU, x, x) if _fast(x, least=EXP_FORMULA) else x * _sigmoid_formula(x)


def silu_backward(x, g):
    """g silu'(x) = g s (1 + x (1 - s))."""
    if _fast(x, g, least=EXP_FORMULA):
        return _fused(_SILU_BACKWARD, x, g)
    s = _sigmoid_formula(x)
    return g * s * (1 + x * (1 - s))


def special(x):
    """cupyx.scipy.special for CuPy arrays, scipy.special for the rest (NumPy's arrays and scalars)."""
    if not kernels._is_cupy(x):
        import scipy.special
        return scipy.special
    import cupyx.scipy.special
    return cupyx.scipy.special


def _gelu_pieces(x, approximate):
    """(c, F(c)) for the formula path: x clamped to +-_GELU_CLAMP, and Phi(c) or sigmoid(c (K0 + K1 c^2))."""
    c = np.clip(x, -_GELU_CLAMP, _GELU_CLAMP)
    f = _sigmoid_formula(c * (GELU_K0 + GELU_K1 * c * c)) if approximate == "tanh" else special(x).ndtr(c)
    return c, f.astype(x.dtype, copy=False)     # scipy's ndtr returns float16 as float64


def gelu(x, approximate):
    """x Phi(x), Phi the standard normal CDF; for approximate='tanh' x sigmoid(x (K0 + K1 x^2)), which is
    Hendrycks & Gimpel's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) without its cancellation at x < 0."""
    if _fast(x, least=EXP_FORMULA):
        return _fused(_GELU_TANH if approximate == "tanh" else _GELU, x, x, kernel=_gelu)
    return x * _gelu_pieces(x, approximate)[1]


def gelu_backward(x, g, approximate):
    """g gelu'(x): g (Phi(x) + x phi(x)), or g (s + x s (1 - s) (K0 + 3 K1 x^2)) with s the tanh form's
    sigmoid."""
    if _fast(x, g, least=EXP_FORMULA):
        return _fused(_GELU_TANH_BACKWARD if approximate == "tanh" else _GELU_BACKWARD, x, g, kernel=_gelu)
    c, f = _gelu_pieces(x, approximate)
    if approximate == "tanh":
        return g * (f + c * f * (1 - f) * (GELU_K0 + 3 * GELU_K1 * c * c))
    return g * (f + c * np.exp(-0.5 * c * c) * INV_SQRT_2PI)


def elu(x, a):
    """x for x > 0, a (exp(x) - 1) otherwise."""
    return _fused(_ELU, x, x, a) if _fast(x, least=EXP_FORMULA) else np.where(x > 0, x, a * np.expm1(-np.abs(x)))


def elu_backward(x, g, a):
    """g elu'(x) = g for x > 0, g a exp(x) otherwise."""
    if _fast(x, g, least=EXP_FORMULA):
        return _fused(_ELU_BACKWARD, x, g, a)
    return np.where(x > 0, g, g * (a * np.exp(-np.abs(x))))


@parallel(fastmath=FASTMATH)
def _relu(x, out):
    """out = max(x, 0) on flat arrays, NaN kept. A kernel of its own: as one more kind of _activation it stopped
    LLVM unswitching that loop (every kind 4-20x slower on one thread)."""
    zero = x.dtype.type(0)
    for i in numba.prange(x.size):
        v = x[i]
        out[i] = zero if v <= 0 else v


def relu(x):
    """max(x, 0) (NaN stays NaN). NumPy's maximum took 2.2x the time over (16, 64, 14, 14) float32 on one thread."""
    if not _fast(x, least=SHORT_FORMULA):
        return np.maximum(x, 0)
    out = np.empty_like(x)
    _relu.sized(out.size, layout.in_layout_of(x, out).ravel(order="K"), out.ravel(order="K"))
    return out


def leaky_relu(x, a):
    """x for x > 0, a x otherwise (NaN stays NaN)."""
    return _fused(_LEAKY, x, x, a) if _fast(x, least=SHORT_FORMULA) else _leaky_formula(x, x, a)


def leaky_relu_backward(x, g, a):
    """g leaky'(x) = g for x > 0, a g otherwise: relu's backward with a = 0."""
    return _fused(_LEAKY, x, g, a) if _fast(x, g, least=SHORT_FORMULA) else _leaky_formula(x, g, a)


def _gate_halves(x):
    """(index space, element steps, half, permutation) of x's two channel halves (axis 1 of a 4-d x) in memory
    order, its last axis of unit stride: (N, H, W, C) when x is channels-last (a convolution's output, maybe
    cropped), (N, C, H, W) when its rows are contiguous (NCHW, maybe cropped); None otherwise (negative or
    other strides), and for what the kernel does not serve (_fast)."""
    if not (_fast(x) and x.ndim == 4) or min(x.strides) < 0:
        return None
    size, (n, c2, h, w) = x.itemsize, x.shape
    steps = [s // size for s in x.strides]
    if steps[1] == 1:
        return (n, h, w, c2 // 2), (steps[0], steps[2], steps[3]), c2 // 2, (0, 2, 3, 1)
    if steps[3] == 1:
        return (n, c2 // 2, h, w), (steps[0], steps[1], steps[2]), c2 // 2 * steps[1], (0, 1, 2, 3)
    return None


def _runs(space, steps):
    """The kernel's index space with its last two axes as one where x's rows follow each other (uncropped
    NCHW: whole maps, not 28-wide rows, whose vector loops would end in long scalar remainders)."""
    return (space[0], space[1], 1, space[2] * space[3]) if steps[2] == space[3] else space


def _memory(x, writeable=False):
    """x's memory from its first element to its last, as a flat array (no copy)."""
    extent = 1 + sum((d - 1) * s for d, s in zip(x.shape, x.strides)) // x.itemsize
    return np.lib.stride_tricks.as_strided(x, (extent,), (x.itemsize,), writeable=writeable)


def _gate_pieces(x):
    """(t, s) = (tanh(a), sigmoid(b)) of x's halves a, b along axis 1, for the array-formula path."""
    c = x.shape[1] // 2
    return tanh(x[:, :c]), _sigmoid_formula(x[:, c:]).astype(x.dtype, copy=False)


def gated_tanh(x):
    """tanh(a) sigmoid(b) for x's halves a, b along axis 1, in one pass where the kernel serves x."""
    halves = _gate_halves(x)
    if halves is None:
        t, s = _gate_pieces(x)
        return t * s
    space, steps, half, order = halves
    y = np.empty(space, x.dtype)
    _gated_tanh(False, _memory(x), np.array(steps), half, y.reshape(_runs(space, steps)), y.reshape(-1),
                np.array(steps), 0)     # gx unused
    return y.transpose(np.argsort(order))


def gated_tanh_backward(x, gy):
    """The gradient in x of gated_tanh(x) given gy: [gy s (1 - t^2), gy t s (1 - s)] along axis 1, with
    t = tanh(a), s = sigmoid(b); dense, in x's layout, where the kernel serves x and gy."""
    halves = _gate_halves(x)
    if halves is None or not _fast(gy):
        t, s = _gate_pieces(x)
        gs = gy * s
        return np.concatenate([gs * (1 - t * t), gs * t * (1 - s)], axis=1)
    space, steps, half, order = halves
    gx = np.empty(np.array(x.shape)[list(order)], x.dtype).transpose(np.argsort(order))    # x's layout, dense
    _, gx_steps, gx_half, _ = _gate_halves(gx)
    gy = layout.in_layout_of(gy, np.empty(space, x.dtype).transpose(np.argsort(order)))     # the forward's
    _gated_tanh(True, _memory(x), np.array(steps), half, gy.transpose(order).reshape(_runs(space, steps)),
                _memory(gx, writeable=True), np.array(gx_steps), gx_half)
    return gx


def tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2 |x|), as -m / (2 + m) with m = expm1(-2 |x|), which keeps
    its precision near 0 where 1 - e cancels. The kernel only where it runs on several threads: on one,
    NumPy's own vectorized tanh is faster (2 M float32: 0.71 ms, the kernel 1.04; on two threads 0.58)."""
    return _fused(_TANH, x, x) if in_parallel(x.size) and _fast(x) else np.tanh(x)


def tanh_backward(y, g):
    """g tanh'(x) = g (1 - y^2) from the output y = tanh(x)."""
    return _fused(_FROM_OUTPUT, y, g, 1.0) if _fast(y, g, least=SHORT_FORMULA) else g * (_one(y) - y * y)


def sigmoid_backward(y, g):
    """g sigmoid'(x) = g y (1 - y) from the output y = sigmoid(x)."""
    return _fused(_FROM_OUTPUT, y, g, 0.0) if _fast(y, g, least=SHORT_FORMULA) else g * y * (_one(y) - y)


def lstm_gates(z, c):
    """(s, g, c', t) of an LSTM cell from its gates' pre-activations z = [z_i, z_f, z_g, z_o] (N, 4H) and its
    state c (N, H): s = sigmoid(z) by one pass over the whole of z (its quarters the gates i, f, o; its g quarter
    unused), g = tanh(z_g), c' = f c + i g and t = tanh(c')."""
    hidden = c.shape[1]
    s = sigmoid(z)
    g = np.tanh(z[:, 2 * hidden:3 * hidden])
    c_next = s[:, hidden:2 * hidden] * c + s[:, :hidden] * g
    return s, g, c_next, np.tanh(c_next)


def lstm_cell(z, c):
    """(h', c', gates) with (h', c') = (o tanh(c'), f c + i g), i, f, o = sigmoid and g = tanh of z's quarters,
    and the gates lstm_gates(z, c), for a backward that keeps them."""
    gates = lstm_gates(z, c)
    return gates[0][:, 3 * c.shape[1]:] * gates[3], gates[2], gates


def lstm_cell_backward(z, c, gh, gc, gates=None, out=None):
    """The gradients (gz, gc) of lstm_cell(z, c) given gh' and gc', those of its outputs: with t = tanh(c') and
    dc = gc' + gh' o (1 - t^2), gz = [dc g i (1 - i), dc c f (1 - f), dc i (1 - g^2), gh' t o (1 - o)] and
    gc = dc f. The gates are lstm_gates(z, c), recomputed unless given; gz is written into `out` if given. With
    the gates given, one pass of _lstm_backward over NumPy arrays of a float dtype."""
    s, g, c_next, t = lstm_gates(z, c) if gates is None else gates
    gz = np.empty_like(z) if out is None else out
    if gates is not None and _fast(c, gh, gc, g, t, least=SHORT_FORMULA) and all(type(x) is np.ndarray and x.dtype == c.dtype
                                                            and x.flags.c_contiguous for x in (s, gz)):
        gc_prev = np.empty_like(c)
        _lstm_backward.sized(gz.size, s, g, t, c, gh, gc, gz, gc_prev)
        return gz, gc_prev
    hidden, one = c.shape[1], _one(z)
    i, f, o = s[:, :hidden], s[:, hidden:2 * hidden], s[:, 3 * hidden:]
    gh_o = gh * o
    dc = gc + gh_o * (one - t * t)
    for k, (a, b) in enumerate([(dc * g, i * (one - i)), (dc * c, f * (one - f)), (dc * i, one - g * g),
                                (gh_o * t, one - o)]):
        np.multiply(a, b, out=gz[:, k * hidden:(k + 1) * hidden])
    return gz, dc * f


@parallel(fastmath=FASTMATH, error_model="numpy")
def _lstm_backward(s, g, t, c, gh, gc, gz, gc_prev):
    """lstm_cell_backward's formula, row by row, from its kept gates: s = sigmoid(z) (N, 4H), g, t = tanh(c')."""
    hidden = c.shape[1]
    one = c.dtype.type(1)
    for n in numba.prange(c.shape[0]):
        for j in range(hidden):
            wide_vectors()
            i, f, o, tj = s[n, j], s[n, hidden + j], s[n, 3 * hidden + j], t[n, j]
            gh_o = gh[n, j] * o
            dc = gc[n, j] + gh_o * (one - tj * tj)
            gz[n, j] = dc * g[n, j] * i * (one - i)
            gz[n, hidden + j] = dc * c[n, j] * f * (one - f)
            gz[n, 2 * hidden + j] = dc * i * (one - g[n, j] * g[n, j])
            gz[n, 3 * hidden + j] = gh_o * tj * (one - o)
            gc_prev[n, j] = dc * f


def gru_gates(a, b, h):
    """(rz, n) of a GRU cell (PyTorch's variant) from the input's map a = [a_r, a_z, a_n] and the hidden state's
    b = [b_r, b_z, b_n] (N, 3H): rz = [r, z] = sigmoid([a_r + b_r, a_z + b_z]) by one sigmoid pass over both, and
    n = tanh(a_n + r b_n)."""
    hidden = h.shape[1]
    rz = sigmoid(a[:, :2 * hidden] + b[:, :2 * hidden])
    return rz, np.tanh(a[:, 2 * hidden:] + rz[:, :hidden] * b[:, 2 * hidden:])


def gru_cell(a, b, h):
    """(h', gates) with h' = (1 - z) n + z h = n + z (h - n) and the gates gru_gates(a, b, h), for a backward that
    keeps them."""
    rz, n = gates = gru_gates(a, b, h)
    return n + rz[:, h.shape[1]:] * (h - n), gates


def gru_cell_backward(a, b, h, g, gates=None, out=(None, None)):
    """The gradients (ga, gb, gh) of gru_cell(a, b, h) given g, that of h': with dn = g (1 - z) (1 - n^2),
    dr = dn b_n r (1 - r) and dz = g (h - n) z (1 - z), ga = [dr, dz, dn], gb = [dr, dz, dn r] and gh = g z.
    The gates are gru_gates(a, b, h), recomputed unless given; ga and gb are written into `out` where given. With
    the gates given, one pass of _gru_backward over NumPy arrays of a float dtype."""
    hidden, one = h.shape[1], _one(a)
    rz, n = gru_gates(a, b, h) if gates is None else gates
    ga, gb = (np.empty_like(x) if y is None else y for x, y in zip((a, b), out))
    if gates is not None and _fast(h, g, n, least=SHORT_FORMULA) and all(
            type(x) is np.ndarray and x.dtype == h.dtype and x.flags.c_contiguous for x in (rz, b, ga, gb)):
        gh = np.empty_like(h)
        _gru_backward.sized(ga.size, rz, n, b, h, g, ga, gb, gh)
        return ga, gb, gh
    r, z = rz[:, :hidden], rz[:, hidden:]
    dn = g * (one - z) * (one - n * n)
    np.multiply(dn * b[:, 2 * hidden:], r * (one - r), out=ga[:, :hidden])
    np.multiply(g * (h - n), z * (one - z), out=ga[:, hidden:2 * hidden])
    ga[:, 2 * hidden:] = dn
    gb[:, :2 * hidden] = ga[:, :2 * hidden]
    np.multiply(dn, r, out=gb[:, 2 * hidden:])
    return ga, gb, g * z


@parallel(fastmath=FASTMATH, error_model="numpy")
def _gru_backward(rz, n, b, h, g, ga, gb, gh):
    """gru_cell_backward's formula, row by row, from its kept gates rz = [r, z] (N, 2H) and n."""
    hidden = h.shape[1]
    one = h.dtype.type(1)
    for i in numba.prange(h.shape[0]):
        for j in range(hidden):
            wide_vectors()
            r, z, nj, gj = rz[i, j], rz[i, hidden + j], n[i, j], g[i, j]
            dn = gj * (one - z) * (one - nj * nj)
            dr = dn * b[i, 2 * hidden + j] * r * (one - r)
            dz = gj * (h[i, j] - nj) * z * (one - z)
            ga[i, j], ga[i, hidden + j], ga[i, 2 * hidden + j] = dr, dz, dn
            gb[i, j], gb[i, hidden + j], gb[i, 2 * hidden + j] = dr, dz, dn * r
            gh[i, j] = gj * z
