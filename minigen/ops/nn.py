"""Neural-network operations, named and shaped as in torch.nn.functional: softmax, log_softmax, dropout,
linear, the normalizations, embedding, interpolate, pad. (conv2d, conv_transpose2d and pooling come with
the kernels.)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

import kernels
from kernels import fused, norm

from .. import backend
from ..tensor import Function, Tensor, as_tensor, enable_grad, grad, is_grad_enabled, zeros
from .elementwise import Scale, exp, sigmoid, sqrt, tanh, where
from .linalg import ProductGrads, matmul, weight_grad
from .reduce import mean as _mean
from .reduce import sum as _sum
from .reduce import var as _var
from .shape import concatenate, getitem, normalize_axes, repeat, reshape, split, stack, swapaxes
from .shape import pad as _shape_pad


class Softmax(Function):
    """y = exp(x - max) / sum exp(x - max) along `axis` (the softmax kernel);  gx = SoftmaxGrad(y, g)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return kernels.softmax(x, self.axis) if x.shape[self.axis] else x.copy()   # an empty axis: empty

    def backward(self, g):
        return SoftmaxGrad(self.axis)(self.output(), g)


class SoftmaxGrad(Function):
    """z = y * (g - sum(g * y)), softmax's backward as one node (the fused kernel). Its Jacobian in g,
    diag(y) - y y^T, is symmetric, so gg = SoftmaxGrad(y, gz); in y: gy = gz (g - s) - g sum(gz y),
    with s = sum(g y)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        return kernels.softmax_backward(y, g, self.axis)

    def backward(self, gz):
        y, g = self.inputs
        gy = gg = None
        if y.requires_grad:
            s = _sum(g * y, self.axis, keepdims=True)
            gy = gz * (g - s) - g * _sum(gz * y, self.axis, keepdims=True)
        if g.requires_grad:
            gg = SoftmaxGrad(self.axis)(y, gz)
        return gy, gg


class LogSoftmax(Function):
    """y = x - logsumexp(x) along `axis` (the log_softmax kernel);  gx = LogSoftmaxGrad(y, g)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return kernels.log_softmax(x, self.axis) if x.shape[self.axis] else x.copy()

    def backward(self, g):
        return LogSoftmaxGrad(self.axis)(self.output(), g)


class LogSoftmaxGrad(Function):
    """z = g - exp(y) sum(g), log_softmax's backward as one node (the fused kernel).
    In g: gg = gz - sum(gz exp(y)) (the transposed Jacobian I - 1 exp(y)^T); in y: gy = -gz exp(y) sum(g)."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        return kernels.log_softmax_backward(y, g, self.axis)

    def backward(self, gz):
        y, g = self.inputs
        p = exp(y)
        gy = -gz * p * _sum(g, self.axis, keepdims=True) if y.requires_grad else None
        gg = gz - _sum(gz * p, self.axis, keepdims=True) if g.requires_grad else None
        return gy, gg


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    (axis,) = normalize_axes(axis, x.ndim)
    return Softmax(axis)(x)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    (axis,) = normalize_axes(axis, x.ndim)
    return LogSoftmax(axis)(x)


class GatedTanh(Function):
    """y = tanh(a) sigmoid(b) for x = [a; b], its halves along axis 1 (the gated activation unit of the gated
    PixelCNN, van den Oord et al. 2016, eq. 2);  gx = GatedTanhGrad(x, g). One fused pass each way where
    NumPy makes seven (split copies, tanh, sigmoid, product; and their backward)."""

    def forward(self, x):
        return fused.gated_tanh(x)

    def backward(self, g):
        return GatedTanhGrad()(self.inputs[0], g)


class GatedTanhGrad(Function):
    """z = [g s t', g t s'] with t = tanh(a), s = sigmoid(b), t' = 1 - t^2, s' = s (1 - s), as one node and
    one fused pass. Its own derivatives, with t'' = -2 t t' and s'' = s' (1 - 2 s):
    gg = gz_a s t' + gz_b t s',  gx = [g (gz_a s t'' + gz_b t' s'); g (gz_a t' s' + gz_b t s'')]."""

    def forward(self, x, g):
        return fused.gated_tanh_backward(x, g)

    def backward(self, gz):
        x, g = self.inputs
        (a, b), (gz_a, gz_b) = split(x, 2, axis=1), split(gz, 2, axis=1)
        t, s = tanh(a), sigmoid(b)
        dt, ds = 1 - t * t, s * (1 - s)
        gx = concatenate([g * (gz_a * s * (-2 * t * dt) + gz_b * dt * ds),
                          g * (gz_a * dt * ds + gz_b * t * ds * (1 - 2 * s))], axis=1) if x.requires_grad else None
        gg = gz_a * s * dt + gz_b * t * ds if g.requires_grad else None
        return gx, gg


def gated_tanh(x: Tensor) -> Tensor:
    """tanh(a) * sigmoid(b) for the two halves a, b of x along axis 1 (channels): the gated activation unit."""
    if x.ndim < 2 or x.shape[1] % 2:
        raise ValueError(f"gated_tanh: x of shape {x.shape} has no even axis 1 (channels) to split into the "
                         "tanh half and the sigmoid half")
    return GatedTanh()(x)


class _Alias(Function):
    """y = x as a node of its own."""

    def forward(self, x):
        return x

    def backward(self, g):
        return g


class _GradByFormula(Function):
    """A fused node computing a gradient (its forward), whose own derivatives are those of `formula`, the same
    gradient written in operations, taken by grad(): second derivatives without a second fused node. The
    formula may give None for a gradient no input wants.

    The formula reads aliases of the inputs, which nothing else reads: grad() gives the partial derivative in
    each, where in the inputs themselves it would give the total one, through every path between them (in a
    sequence of LSTM cells, the gradient gh arriving at step t was computed from z_t), and walk, and free, the
    graph above them."""

    formula: staticmethod

    def backward(self, *grads):
        with enable_grad():
            xs = [_Alias()(x) if x.requires_grad else x for x in self.inputs]
            pairs = [(y, g) for y, g in zip(self.formula(*xs), grads) if y is not None and y.requires_grad]
        if not pairs:
            return (None,) * len(self.inputs)
        found = iter(grad([y for y, _ in pairs], [x for x in xs if x.requires_grad], [g for _, g in pairs],
                          create_graph=is_grad_enabled(), allow_unused=True))
        return tuple(next(found) if x.requires_grad else None for x in xs)


def _vjp_by_grad(f, n_inputs: int):
    """The vector-Jacobian product of f (a function of n_inputs tensors, in operations) as a function of f's
    inputs and one gradient per output of f, taken by grad() with its graph: a _GradByFormula's formula for a
    node whose forward is that product in arrays. None for an input that wants no gradient."""
    def vjp(*args):
        xs, gys = args[:n_inputs], args[n_inputs:]
        ys = f(*xs)
        wrt = [x for x in xs if x.requires_grad]
        found = iter(grad(ys if isinstance(ys, tuple) else [ys], wrt, list(gys), create_graph=True,
                          allow_unused=True))
        return tuple(next(found) if x.requires_grad else None for x in xs)
    return vjp


def _lstm_cell_vjp(z: Tensor, c: Tensor, gh: Tensor, gc: Tensor) -> tuple[Tensor, Tensor]:
    """LSTMCellUpdate's gradients (gz, gc) in operations (kernels.fused.lstm_cell_backward's formula)."""
    i, f, g, o = split(z, 4, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    t = tanh(f * c + i * g)
    dc = gc + gh * o * (1 - t * t)
    gz = concatenate([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g), gh * t * o * (1 - o)], axis=1)
    return gz, dc * f


class LSTMCellUpdateGrad(_GradByFormula):
    """(gz, gc) of LSTMCellUpdate given (gh', gc'), as one node."""

    formula = staticmethod(_lstm_cell_vjp)

    def forward(self, z, c, gh, gc):
        return fused.lstm_cell_backward(z, c, gh, gc)


class LSTMCellUpdate(Function):
    """(h', c') = (o tanh(c'), f c + i g) from z = [z_i, z_f, z_g, z_o] = W_ih x + b_ih + W_hh h + b_hh and c,
    with i, f, o = sigmoid and g = tanh of z's quarters: an LSTM cell past its products, one node each way where
    the cell in operations makes a dozen; gradients LSTMCellUpdateGrad."""

    def forward(self, z, c):
        return fused.lstm_cell(z, c)[:2]

    def backward(self, gh, gc):
        return LSTMCellUpdateGrad()(*self.inputs, gh, gc)


def _gru_cell_vjp(a: Tensor, b: Tensor, h: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """GRUCellUpdate's gradients (ga, gb, gh) in operations (kernels.fused.gru_cell_backward's formula)."""
    (a_r, a_z, a_n), (b_r, b_z, b_n) = split(a, 3, axis=1), split(b, 3, axis=1)
    r, z = sigmoid(a_r + b_r), sigmoid(a_z + b_z)
    n = tanh(a_n + r * b_n)
    dn = g * (1 - z) * (1 - n * n)
    dr, dz = dn * b_n * r * (1 - r), g * (h - n) * z * (1 - z)
    return concatenate([dr, dz, dn], axis=1), concatenate([dr, dz, dn * r], axis=1), g * z


class GRUCellUpdateGrad(_GradByFormula):
    """(ga, gb, gh) of GRUCellUpdate given gh', as one node."""

    formula = staticmethod(_gru_cell_vjp)

    def forward(self, a, b, h, g):
        return fused.gru_cell_backward(a, b, h, g)


class GRUCellUpdate(Function):
    """h' = (1 - z) n + z h with r, z = sigmoid(a_r + b_r), sigmoid(a_z + b_z) and n = tanh(a_n + r b_n), from
    a = W_ih x + b_ih and b = W_hh h + b_hh (N, 3H, gates r, z, n): a GRU cell past its products (PyTorch's
    variant, the reset gate applied after W_hn), one node each way; gradients GRUCellUpdateGrad."""

    def forward(self, a, b, h):
        return fused.gru_cell(a, b, h)[0]

    def backward(self, g):
        return GRUCellUpdateGrad()(*self.inputs, g)


def lstm_cell_update(z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """An LSTM cell's state update from its gates' pre-activations z (N, 4H), gates in PyTorch's order i, f, g, o,
    and its cell state c (N, H): (h', c') = (o tanh(c'), f c + i g)."""
    if z.ndim != 2 or c.ndim != 2 or z.shape != (c.shape[0], 4 * c.shape[1]):
        raise ValueError(f"lstm_cell_update: z of shape {z.shape} and c of shape {c.shape}: z must be (N, 4H) for "
                         "c (N, H), the gates i, f, g, o side by side")
    if z.dtype != c.dtype:
        raise TypeError(f"lstm_cell_update: z is {z.dtype} and c {c.dtype}; they must be of one dtype")
    return LSTMCellUpdate()(z, c)


def gru_cell_update(a: Tensor, b: Tensor, h: Tensor) -> Tensor:
    """A GRU cell's state update (PyTorch's variant) from the input's map a = W_ih x + b_ih and the hidden state's
    b = W_hh h + b_hh, both (N, 3H) with the gates r, z, n side by side, and the state h (N, H): h' = (1 - z) n + z h,
    r, z = sigmoid(a_r + b_r), sigmoid(a_z + b_z), n = tanh(a_n + r b_n)."""
    if not (a.ndim == b.ndim == h.ndim == 2 and a.shape == b.shape == (h.shape[0], 3 * h.shape[1])):
        raise ValueError(f"gru_cell_update: a of shape {a.shape}, b of shape {b.shape}, h of shape {h.shape}: a and b "
                         "must be (N, 3H) for h (N, H), the gates r, z, n side by side")
    if not a.dtype == b.dtype == h.dtype:
        raise TypeError(f"gru_cell_update: a is {a.dtype}, b {b.dtype} and h {h.dtype}; they must be of one dtype")
    return GRUCellUpdate()(a, b, h)


# --- recurrent layers: a whole sequence as one node ---------------------------------------------------------
# The cells above over a sequence, h_t = cell(a_t, W_hh h_{t-1} + b_hh, state_{t-1}) with a = W_ih x + b_ih at
# every step made before (one product), as one node each way. Its backward is backpropagation through time
# (Werbos 1990) in arrays: per step back, the cell's backward and gh_{t-1} += gm_t W_hh; the weight's gradient
# gW_hh = sum_t gm_t^T h_{t-1} once, one product over all T N rows, where the step nodes made T small ones and T
# adds. Second derivatives: the same loop in operations (`recurrence` over the cells' nodes) under grad().


def recurrence(step, a: Tensor, state):
    """state = step(a_t, state) for every t along a's axis 0 (a (T, N, G)): (every step's h stacked (T, N, H),
    the last state). A state is h, or a tuple whose first entry is h."""
    hs = []
    for a_t in split(a, a.shape[0], axis=0):        # one node, where a[t] would scatter a (T, N, G) gradient each
        state = step(reshape(a_t, a_t.shape[1:]), state)
        hs.append(state[0] if isinstance(state, tuple) else state)
    return stack(hs), state


def _lstm_layer_in_ops(a, w, b, h, c):
    hs, (_, c) = recurrence(lambda a_t, state: lstm_cell_update(a_t + linear(state[0], w, b), state[1]), a, (h, c))
    return hs, c


def _gru_layer_in_ops(a, w, b, h):
    return recurrence(lambda a_t, h: gru_cell_update(a_t, linear(h, w, b), h), a, h)[0]


def _hidden_map(h, w, b, out):
    """out = h W^T + b, W_hh's product of one step."""
    backend.get_array_module(h).add(kernels.matmul(h, w.T), b, out=out)
    return out


def _weight_grad_through_time(gm, h0, hs):
    """sum over t of gm_t^T h_{t-1} (h_{-1} = h0): one product over the T N rows of every step."""
    xp = backend.get_array_module(gm)
    h_prev = xp.concatenate([h0[None], hs[:-1]])
    return kernels.matmul(gm.reshape(-1, gm.shape[2]).T, h_prev.reshape(-1, h_prev.shape[2]))


class LSTMLayer(Function):
    """(every h_t (T, N, H), c_T) of an LSTM layer from a = W_ih x + b_ih (T, N, 4H), W_hh (4H, H), b_hh (4H,) and
    (h_0, c_0): z_t = a_t + W_hh h_{t-1} + b_hh, (h_t, c_t) = LSTMCellUpdate(z_t, c_{t-1}). Keeps every z_t, c_t and
    the gates for LSTMLayerGrad."""

    def forward(self, a, w, b, h, c):
        xp = backend.get_array_module(a)
        self.z, self.c, self.h = xp.empty_like(a), xp.empty((len(a) + 1,) + c.shape, a.dtype), xp.empty(
            a.shape[:2] + h.shape[1:], a.dtype)
        self.c[0], self.gates = c, []
        for t in range(len(a)):
            z = _hidden_map(h, w, b, self.z[t])
            z += a[t]
            h, self.c[t + 1], gates = fused.lstm_cell(z, self.c[t])
            self.h[t] = h
            self.gates.append(gates)
        return self.h, self.c[-1].copy()

    def backward(self, gh, gc):
        return LSTMLayerGrad(self.z, self.c, self.h, self.gates)(*self.inputs, gh, gc)


class LSTMLayerGrad(_GradByFormula):
    """(ga, gW_hh, gb_hh, gh_0, gc_0) of LSTMLayer given the gradients of every h_t and of c_T, as one node."""

    formula = staticmethod(_vjp_by_grad(_lstm_layer_in_ops, 5))

    def __init__(self, z, c, h, gates):
        self.z, self.c, self.h, self.gates = z, c, h, gates

    def forward(self, a, w, b, h0, c0, gh_out, gc):
        gz, gh = backend.get_array_module(a).empty_like(self.z), None
        for t in reversed(range(len(gz))):
            _, gc = fused.lstm_cell_backward(self.z[t], self.c[t], gh_out[t] if gh is None else gh_out[t] + gh, gc,
                                             self.gates[t], out=gz[t])
            gh = kernels.matmul(gz[t], w)
        return gz, _weight_grad_through_time(gz, h0, self.h), gz.sum((0, 1)), gh, gc


class GRULayer(Function):
    """Every h_t (T, N, H) of a GRU layer from a = W_ih x + b_ih (T, N, 3H), W_hh (3H, H), b_hh (3H,) and h_0:
    m_t = W_hh h_{t-1} + b_hh, h_t = GRUCellUpdate(a_t, m_t, h_{t-1}). Keeps every m_t and the gates for
    GRULayerGrad."""

    def forward(self, a, w, b, h):
        xp = backend.get_array_module(a)
        self.m, self.h, self.gates = xp.empty_like(a), xp.empty(a.shape[:2] + h.shape[1:], a.dtype), []
        for t in range(len(a)):
            h, gates = fused.gru_cell(a[t], _hidden_map(h, w, b, self.m[t]), h)
            self.h[t] = h
            self.gates.append(gates)
        return self.h

    def backward(self, gh):
        return GRULayerGrad(self.m, self.h, self.gates)(*self.inputs, gh)


class GRULayerGrad(_GradByFormula):
    """(ga, gW_hh, gb_hh, gh_0) of GRULayer given the gradients of every h_t, as one node."""

    formula = staticmethod(_vjp_by_grad(_gru_layer_in_ops, 4))

    def __init__(self, m, h, gates):
        self.m, self.h, self.gates = m, h, gates

    def forward(self, a, w, b, h0, gh_out):
        xp = backend.get_array_module(a)
        ga, gm, gh = xp.empty_like(a), xp.empty_like(a), None
        for t in reversed(range(len(ga))):
            _, _, gh_direct = fused.gru_cell_backward(a[t], self.m[t], self.h[t - 1] if t else h0,
                                                      gh_out[t] if gh is None else gh_out[t] + gh, self.gates[t],
                                                      out=(ga[t], gm[t]))
            gh = gh_direct + kernels.matmul(gm[t], w)
        return ga, _weight_grad_through_time(gm, h0, self.h), gm.sum((0, 1)), gh


def _layer_inputs(name: str, gates: int, a: Tensor, w: Tensor, b: Tensor | None, states: tuple) -> tuple:
    """A recurrent layer's inputs checked, b and the missing states made zeros: (a, w, b, *states)."""
    if a.ndim != 3 or w.ndim != 2 or w.shape[0] != gates * w.shape[1] or a.shape[2] != w.shape[0]:
        raise ValueError(f"{name}: a of shape {a.shape} and weight_hh of shape {w.shape}: expected a (T, N, "
                         f"{gates}H) and weight_hh ({gates}H, H), the gates side by side")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: a of shape {a.shape} is a sequence of length 0; a recurrent layer needs a step")
    (_, n, g), hidden = a.shape, w.shape[1]
    b = zeros(g, dtype=a.dtype, device=a.device) if b is None else b
    states = tuple(zeros(n, hidden, dtype=a.dtype, device=a.device) if s is None else s for s in states)
    if b.shape != (g,) or any(s.shape != (n, hidden) for s in states):
        raise ValueError(f"{name}: bias_hh of shape {b.shape} and states of shapes {[s.shape for s in states]} for "
                         f"a of shape {a.shape}: expected ({g},) and ({n}, {hidden})")
    if len({x.dtype for x in (a, w, b, *states)}) > 1:
        raise TypeError(f"{name}: a is {a.dtype}, weight_hh {w.dtype}, bias_hh {b.dtype} and the states "
                        f"{[str(s.dtype) for s in states]}; they must be of one dtype")
    return (a, w, b, *states)


def lstm_layer(a: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None, h0: Tensor | None = None,
               c0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """An LSTM layer over a sequence, one node each way, from the input's map at every step a = W_ih x + b_ih
    (T, N, 4H, gates i, f, g, o), W_hh (4H, H), b_hh and the initial state (h0, c0) (N, H), zeros when None:
    (every h_t (T, N, H), c_T)."""
    return LSTMLayer()(*_layer_inputs("lstm_layer", 4, a, weight_hh, bias_hh, (h0, c0)))


def gru_layer(a: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None, h0: Tensor | None = None) -> Tensor:
    """A GRU layer over a sequence (PyTorch's variant), one node each way, from the input's map at every step
    a = W_ih x + b_ih (T, N, 3H, gates r, z, n), W_hh (3H, H), b_hh and h0 (N, H), zeros when None: every h_t
    (T, N, H)."""
    return GRULayer()(*_layer_inputs("gru_layer", 3, a, weight_hh, bias_hh, (h0,)))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p) (inverted dropout), so the
    expectation is unchanged; the identity when not training."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    keep = backend.generator(x.device).random(x.shape) >= p
    return Scale(keep * (0.0 if p == 1 else 1.0 / (1.0 - p)))(x)


# --- normalization -----------------------------------------------------------------------------------------


class Standardize(Function):
    """y = (x - mean) * rstd with rstd = 1 / sqrt(var + eps), the mean and biased variance over `axes`
    (Ioffe & Szegedy 2015, Algorithm 1; Ba et al. 2016, eq. 4; Wu & He 2018, eqs. 1-2);
    gx = rstd (g - mean(g) - y mean(g y)) (StandardizeGrad). One fused kernel pass each way; the statistics
    stay on the node as arrays (`mean`, `var`, `rstd`), for the backward and for batch_norm's running ones."""

    def __init__(self, axes, eps):
        self.axes, self.eps = axes, eps

    def forward(self, x):
        y, self.mean, self.var = norm.standardize(x, self.axes, self.eps)
        self.rstd = 1 / np.sqrt(self.var + self.eps)
        return y

    def backward(self, g):
        return StandardizeGrad(self.axes, self.eps, self.output().data, self.rstd)(self.inputs[0], g)


class StandardizeGrad(Function):
    """z = rstd P(g) with P(g) = g - mean(g) - y mean(g y), Standardize's backward as one node (the fused
    kernel), given the forward's y and rstd. P is symmetric, so gg = StandardizeGrad(x, gz). In x, through y
    and rstd (drstd/dx = -rstd^2 y / n): gx = StandardizeGrad(x, gy) - rstd y mean(gz z), with
    gy = -rstd (gz mean(g y) + g mean(gz y)); y and rstd are rebuilt from x there, so every order is right."""

    def __init__(self, axes, eps, y, rstd):
        self.axes, self.eps, self.y, self.rstd = axes, eps, y, rstd

    def forward(self, x, g):
        return norm.standardize_backward(self.y, self.rstd, g, self.axes)

    def backward(self, gz):
        x, g = self.inputs
        again = StandardizeGrad(self.axes, self.eps, self.y, self.rstd)     # called twice: two nodes
        gx = None
        if x.requires_grad:
            axes = self.axes
            y, rstd = Standardize(axes, self.eps)(x), 1 / sqrt(_var(x, axes, keepdims=True) + self.eps)
            gy = -rstd * (gz * _mean(g * y, axes, keepdims=True) + g * _mean(gz * y, axes, keepdims=True))
            gx = again(x, gy) - rstd * y * _mean(gz * self.output(), axes, keepdims=True)
        return gx, (again(x, gz) if g.requires_grad else None)


class ChannelAffine(Function):
    """y = x w[c] (+ b[c]) along the channel axis 1 of x (N, C, ...), the scale and shift of group and batch
    norm in one pass;  gx = g w[c] (a ChannelAffine), (gw, gb) = ChannelSums(g, x)."""

    def forward(self, x, w, b=None):
        return norm.scale_shift(x, w, b)

    def backward(self, g):
        x, w = self.inputs[:2]
        gx = ChannelAffine()(g, w) if x.requires_grad else None
        gw = gb = None
        if any(p.requires_grad for p in self.inputs[1:]):
            gw, gb = ChannelSums()(g, x)
        return (gx, gw) if len(self.inputs) == 2 else (gx, gw, gb)


class ChannelSums(Function):
    """(s, t) = (sum of g x, sum of g) per channel over all axes but 1, one pass; with a and c the gradients
    of s and t: gg = a[c] x + c[c] and gx = a[c] g, both ChannelAffine."""

    def forward(self, g, x):
        return norm.channel_sums(g, x)

    def backward(self, gs, gt):
        g, x = self.inputs
        return (ChannelAffine()(x, gs, gt) if g.requires_grad else None,
                ChannelAffine()(g, gs) if x.requires_grad else None)


def _channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, norm_name: str) -> Tensor:
    """y * weight + bias per channel (y's axis 1), each skipped when absent."""
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (y.shape[1],):
            raise ValueError(f"{norm_name}: {name} of shape {p.shape} for an input of {y.shape[1]} channels; "
                             f"expected ({y.shape[1]},)")
    if weight is None:
        return y if bias is None else y + reshape(bias, (1, -1) + (1,) * (y.ndim - 2))
    return ChannelAffine()(y, weight) if bias is None else ChannelAffine()(y, weight, bias)


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, shape: tuple) -> Tensor:
    """y * weight + bias with both reshaped to `shape` (skipped when absent)."""
    if weight is not None:
        y = y * reshape(weight, shape)
    if bias is not None:
        y = y + reshape(bias, shape)
    return y


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Each example standardized over its last dimensions, those of `normalized_shape`, then scaled and
    shifted elementwise (Ba et al. 2016)."""
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(normalized_shape)
    if x.shape[x.ndim - k:] != normalized_shape:
        raise ValueError(f"layer_norm over {normalized_shape} got an input of shape {x.shape}")
    y = Standardize(tuple(range(x.ndim - k, x.ndim)), eps)(x)
    return _affine(y, weight, bias, normalized_shape)


def group_norm(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """x (N, C, ...): the channels cut into `num_groups` groups, each example's group standardized over
    its channels and positions, then weight and bias per channel (Wu & He 2018)."""
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels do not split into {num_groups} groups")
    groups = reshape(x, (n, num_groups, c // num_groups) + x.shape[2:])   # a view in either layout
    y = reshape(Standardize(tuple(range(2, groups.ndim)), eps)(groups), x.shape)
    return _channel_affine(y, weight, bias, "group_norm")


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """x (N, C, ...) standardized per channel (Ioffe & Szegedy 2015): with the batch's statistics when
    training, which also moves the running ones in place, r <- (1 - momentum) r + momentum s (the unbiased
    batch variance); with the running ones otherwise."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if not training:
        y = (x - reshape(running_mean, shape)) / sqrt(reshape(running_var, shape) + eps)
        return _channel_affine(y, weight, bias, "batch_norm")
    n = x.size // x.shape[1]
    if n < 2:
        raise ValueError(f"batch_norm needs more than 1 value per channel when training, got input of shape {x.shape}")
    standardize = Standardize(axes, eps)
    y = standardize(x)
    if running_mean is not None:     # on raw arrays: the running statistics are not part of any graph
        mean, var = standardize.mean.reshape(-1), standardize.var.reshape(-1)
        running_mean.data[...] = (1 - momentum) * running_mean.data + momentum * mean
        running_var.data[...] = (1 - momentum) * running_var.data + momentum * var * (n / (n - 1))
    return _channel_affine(y, weight, bias, "batch_norm")


# --- lookup, resampling, padding ------------------------------------------------------------------------


def embedding(indices, weight: Tensor) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) picked by integer `indices` of any shape: (..., dim)."""
    return getitem(weight, indices)


def interpolate(x: Tensor, size=None, scale_factor=None, mode: str = "nearest") -> Tensor:
    """Nearest-neighbour resampling of (N, C, *spatial) to `size`, or by `scale_factor`: output index i reads
    input index floor(i * in / out) (PyTorch's 'nearest'), so the gradient sums each input's copies."""
    if mode != "nearest":
        raise NotImplementedError(f"interpolate supports mode='nearest' only, got {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    spatial = x.shape[2:]
    if size is not None:
        size = (size,) * len(spatial) if isinstance(size, int) else tuple(size)
        ratios = [n / m for n, m in zip(spatial, size)]
    else:
        factors = (scale_factor,) * len(spatial) if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
        size = tuple(int(math.floor(n * f)) for n, f in zip(spatial, factors))
        ratios = [1 / f for f in factors]
    xp = backend.get_array_module(x.data)
    for axis, (n, m, r) in enumerate(zip(spatial, size, ratios), start=2):
        if m % n == 0 and r == n / m:                # a whole factor: each element repeated m / n times
            x = repeat(x, m // n, axis)
        elif m != n:
            src = xp.minimum(xp.floor(xp.arange(m) * r).astype(np.int64), n - 1)
            x = getitem(x, (slice(None),) * axis + (src,))
    return x


_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(x: Tensor, pad: Sequence, mode: str = "constant", value: float | None = None) -> Tensor:
    """PyTorch's F.pad: `pad` = (left, right) for the last axis, then (top, bottom) for the one before, ...;
    mode 'constant' (with `value`, default 0), 'reflect', 'replicate' or 'circular'. A sequence of
    (before, after) pairs instead is read as numpy.pad's pad_width, one pair per axis from the first.
    The last three modes read x at padded index positions, so their gradients sum the copies."""
    if all(isinstance(p, (tuple, list)) for p in pad):
        widths = [tuple(p) for p in pad]
    elif len(pad) % 2 == 0 and len(pad) // 2 <= x.ndim:
        pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
        widths = [(0, 0)] * (x.ndim - len(pairs)) + pairs[::-1]
    else:
        raise ValueError(f"pad: expected (before, after) pairs for at most {x.ndim} axes, got {pad}")
    if mode == "constant":
        return _shape_pad(x, widths, value=0.0 if value is None else value)
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be 'constant', 'reflect', 'replicate' or 'circular', got {mode!r}")
    xp = backend.get_array_module(x.data)
    for axis, (before, after) in enumerate(widths):
        if before or after:
            positions = np.pad(np.arange(x.shape[axis]), (before, after), mode=_PAD_MODES[mode])
            x = getitem(x, (slice(None),) * axis + (xp.asarray(positions),))
    return x


def pixel_shuffle(x: Tensor, upscale_factor: int) -> Tensor:
    """(N, C r^2, H, W) -> (N, C, H r, W r): each group of r^2 channels becomes an r x r block of pixels
    (Shi et al. 2016's sub-pixel convolution); a reshape and a transpose."""
    n, c, h, w = x.shape
    r = upscale_factor
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: {c} channels are not a multiple of upscale_factor^2 = {r * r}")
    blocks = reshape(x, (n, c // (r * r), r, r, h, w)).transpose((0, 1, 4, 2, 5, 3))
    return reshape(blocks, (n, c // (r * r), h * r, w * r))


def pixel_unshuffle(x: Tensor, downscale_factor: int) -> Tensor:
    """(N, C, H r, W r) -> (N, C r^2, H, W), the inverse of pixel_shuffle (a space-to-depth squeeze)."""
    n, c, hr, wr = x.shape
    r = downscale_factor
    if hr % r or wr % r:
        raise ValueError(f"pixel_unshuffle: spatial size {(hr, wr)} is not a multiple of {r}")
    blocks = reshape(x, (n, c, hr // r, r, wr // r, r)).transpose((0, 1, 3, 5, 2, 4))
    return reshape(blocks, (n, c * r * r, hr // r, wr // r))


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask=None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None) -> Tensor:
    """softmax(Q K^T * scale + mask) V over the last two axes, scale = 1/sqrt(d) by default (Vaswani et al.
    2017, eq. 1). attn_mask: boolean (True where a query may attend) or additive floats; is_causal: query i
    attends to keys j <= i."""
    d, (l_q, l_k) = query.shape[-1], (query.shape[-2], key.shape[-2])
    scores = matmul(query, swapaxes(key, -1, -2)) * (1 / math.sqrt(d) if scale is None else scale)
    xp = backend.get_array_module(query.data)
    if is_causal:
        scores = where(xp.tri(l_q, l_k, dtype=bool), scores, -math.inf)
    if attn_mask is not None:
        mask = attn_mask.data if isinstance(attn_mask, Tensor) else xp.asarray(attn_mask)
        scores = where(mask, scores, -math.inf) if mask.dtype == bool else scores + attn_mask
    return matmul(dropout(softmax(scores, -1), dropout_p), value)


class Linear(Function):
    """y = x W^T (+ b), x (..., in), W (out, in), b (out,);  gx = g W, gW = g^T x over all leading axes, gb = g
    summed over them. One node: gW as g^T x comes out contiguous in W's layout, which Adam's one-pass kernel
    takes as it is (x^T g, the gradient of a transposed W, is a transposed view it would have to copy)."""

    def forward(self, x, w, b=None):
        y = kernels.matmul(x, w.T)
        if b is None:
            return y
        if np.result_type(y.dtype, b.dtype) != y.dtype:
            return y + b
        y += b
        return y

    def backward(self, g):
        x, w = self.inputs[:2]
        if x.requires_grad and w.requires_grad:
            gx, gw = ProductGrads(w_transposed=True)(g, x, w)
        else:
            gx = matmul(g, w) if x.requires_grad else None
            gw = weight_grad(g, x) if w.requires_grad else None
        if len(self.inputs) == 2:
            return gx, gw
        return gx, gw, (g if self.inputs[2].requires_grad else None)   # the engine sums g to b's shape


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b, with W of shape (out_features, in_features) as in PyTorch."""
    x = as_tensor(x, like=weight)
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1] if x.ndim else 0} features, the "
                         f"weight of shape {weight.shape} expects {weight.shape[-1] if weight.ndim else 0}")
    if bias is not None and bias.shape not in ((weight.shape[0],), ()):
        raise ValueError(f"linear: bias of shape {bias.shape} for a weight of shape {weight.shape}: expected "
                         f"({weight.shape[0]},)")
    return Linear()(x, weight) if bias is None else Linear()(x, weight, bias)


# `pad` stays out: minigen.pad is NumPy's; this one is nn.functional's
__all__ = ["softmax", "log_softmax", "gated_tanh", "dropout", "linear", "layer_norm", "group_norm", "batch_norm",
           "embedding", "interpolate", "pixel_shuffle", "pixel_unshuffle", "scaled_dot_product_attention"]
