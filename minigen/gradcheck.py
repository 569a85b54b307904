"""Numerical gradient checks, first and second order, for any function of tensors.

    >>> import minigen as mg
    >>> x = mg.randn(3, 4, dtype="float64", requires_grad=True)
    >>> mg.gradcheck(lambda x: mg.tanh(x).sum(axis=0), [x])
    True
    >>> mg.gradgradcheck(lambda x: mg.tanh(x), [x])
    True

'directional' (the default) compares, for each input x on its own, the analytic <v, J u> (one backward pass
with grad_outputs v, dotted with u) against the central difference (<v, f(x + eps u)> - <v, f(x - eps u)>)
/ 2 eps, for a few random directions u and v, with the tolerance atol + rtol |<v, J u>| of that input: cheap
for any size (two forward passes per input and direction: n_directions=1 is PyTorch's fast mode, enough for
a model with many parameter tensors), and an input of small effect is checked at its own scale. 'full'
builds the whole Jacobian both ways (one backward per output element, two forward passes per input
element) and on failure names the worst element by its indices with both values: for small inputs, when you
need to know where a gradient is wrong.

Checks run in float64; pass float64 tensors (a float32 input is an error, since central differences in
float32 cannot tell a right gradient from a wrong one).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .tensor import Tensor, _wrap, grad


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its finite-difference estimate."""


def _as_outputs(out) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else [o for o in out if o is not None]


def _prepare(inputs) -> list[Tensor]:
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"gradcheck: input {i} is a {type(x).__name__}, expected a Tensor")
        if x.requires_grad and x.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {x.dtype}; gradient checks need float64 inputs")
    return inputs


def _perturbed_outputs(fn, inputs, shifts) -> list[np.ndarray]:
    """fn at inputs + shifts (shifts None for inputs not moved), as arrays. Gradients stay recorded:
    gradgradcheck's fn takes a gradient inside."""
    moved = [x if s is None else Tensor(x.data + s, requires_grad=x.requires_grad) for x, s in zip(inputs, shifts)]
    return [o.data for o in _as_outputs(fn(*moved))]


def _analytic_vjp(outputs, xs, v):
    """The gradients of <v, outputs> with respect to xs (None where unused). Outputs that do not require
    grad contribute nothing: if they do vary with the inputs, the finite differences will say so."""
    live = [(o, a) for o, a in zip(outputs, v) if o.requires_grad]
    if not live:
        return [None] * len(xs)
    return grad([o for o, _ in live], xs, [_wrap(a) for _, a in live], retain_graph=True, allow_unused=True)


def _fail(message: str, raise_exception: bool) -> bool:
    if raise_exception:
        raise GradcheckError(message)
    return False


def gradcheck(fn: Callable, inputs: Sequence[Tensor], eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, mode: str = "directional", n_directions: int = 3, seed: int = 0,
              raise_exception: bool = True) -> bool:
    """Check the gradients of `fn(*inputs)` (a tensor or tuple of tensors) with respect to every input with
    requires_grad=True against central differences. Returns True, or raises GradcheckError (returns False
    with raise_exception=False). Also checks that fn leaves its inputs unchanged."""
    inputs = _prepare(inputs)
    checked = [i for i, x in enumerate(inputs) if x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    before = [x.data.copy() for x in inputs]
    outputs = _as_outputs(fn(*inputs))
    if any(not np.array_equal(b, x.data, equal_nan=True) for b, x in zip(before, inputs)):
        return _fail("gradcheck: the function modified one of its inputs in place", raise_exception)
    if mode == "directional":
        return _check_directional(fn, inputs, checked, outputs, eps, atol, rtol, n_directions, seed,
                                  raise_exception)
    if mode == "full":
        return _check_full(fn, inputs, checked, outputs, eps, atol, rtol, raise_exception)
    raise ValueError(f"gradcheck: mode must be 'directional' or 'full', got {mode!r}")


def _check_directional(fn, inputs, checked, outputs, eps, atol, rtol, n_directions, seed, raise_exception):
    """Each input on its own, as PyTorch's fast mode: <v, J_i u_i> from one backward pass against the central
    difference moving input i alone, within a tolerance from that number's own size, so that a wrong
    gradient in an input of small effect is not hidden under the others' sum."""
    rng = np.random.default_rng(seed)
    for trial in range(n_directions):
        v = [rng.standard_normal(o.shape) for o in outputs]
        grads = _analytic_vjp(outputs, [inputs[i] for i in checked], v)
        for i, g in zip(checked, grads):
            u = rng.standard_normal(inputs[i].shape)
            analytic = 0.0 if g is None else float(np.sum(g.data * u))
            plus, minus = (_perturbed_outputs(fn, inputs, [sign * eps * u if j == i else None
                                                           for j in range(len(inputs))]) for sign in (1, -1))
            numeric = sum(float(np.sum(a * (p - m))) for a, p, m in zip(v, plus, minus)) / (2 * eps)
            if not abs(analytic - numeric) <= atol + rtol * abs(numeric):
                return _fail(f"gradcheck (directional, input {i}, trial {trial}): analytic <v, J u> = "
                             f"{analytic!r} but finite differences give {numeric!r} (difference "
                             f"{analytic - numeric:.3g}, atol={atol}, rtol={rtol})", raise_exception)
    return True


def _check_full(fn, inputs, checked, outputs, eps, atol, rtol, raise_exception):
    for k, out in enumerate(outputs):
        for i in checked:
            x = inputs[i]
            numeric = np.zeros(out.shape + x.shape)
            for idx in np.ndindex(x.shape):
                shift = np.zeros(x.shape)
                shift[idx] = eps
                plus = _perturbed_outputs(fn, inputs, [shift if j == i else None for j in range(len(inputs))])
                minus = _perturbed_outputs(fn, inputs, [-shift if j == i else None for j in range(len(inputs))])
                numeric[(Ellipsis,) + idx] = (plus[k] - minus[k]) / (2 * eps)
            analytic = np.zeros_like(numeric)
            for oidx in np.ndindex(out.shape):
                v = [np.zeros(o.shape) for o in outputs]
                v[k][oidx] = 1.0
                (g,) = _analytic_vjp(outputs, [x], v)
                if g is not None:
                    analytic[oidx] = g.data
            err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
            if err.size and err.max() > 0:
                worst = np.unravel_index(np.argmax(err), err.shape)
                o_idx, x_idx = [int(j) for j in worst[:out.ndim]], [int(j) for j in worst[out.ndim:]]
                return _fail(f"gradcheck (full): d output{k}{o_idx} / d input{i}{x_idx} is "
                             f"{float(analytic[worst])!r} analytically but {float(numeric[worst])!r} by finite differences "
                             f"({int((err > 0).sum())} of {err.size} Jacobian entries disagree)",
                             raise_exception)
    return True


def gradgradcheck(fn: Callable, inputs: Sequence[Tensor], grad_outputs: Sequence[Tensor] | None = None,
                  eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, mode: str = "directional",
                  n_directions: int = 3, seed: int = 0, raise_exception: bool = True) -> bool:
    """Check second derivatives: gradcheck of the map (inputs, v) -> grad(fn(inputs), inputs, v,
    create_graph=True), which exercises every backward's own backward. `grad_outputs` v default to random
    float64 tensors, themselves checked as inputs (the backward must be right in them too)."""
    inputs = _prepare(inputs)
    outputs = [o for o in _as_outputs(fn(*inputs)) if o.requires_grad]
    if grad_outputs is None:
        rng = np.random.default_rng(seed + 1)
        grad_outputs = [Tensor(rng.standard_normal(o.shape), requires_grad=True) for o in outputs]
    grad_outputs = list(grad_outputs)
    n = len(inputs)

    def first_derivatives(*args):
        xs, vs = args[:n], args[n:]
        outs = [o for o in _as_outputs(fn(*xs)) if o.requires_grad]
        gs = grad(outs, [x for x in xs if x.requires_grad], list(vs), create_graph=True, allow_unused=True)
        return tuple(g for g in gs if g is not None)

    return gradcheck(first_derivatives, inputs + grad_outputs, eps, atol, rtol, mode, n_directions, seed,
                     raise_exception)
