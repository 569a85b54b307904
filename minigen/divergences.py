"""f-divergences, their convex conjugates, and the f-GAN output activations (Nowozin, Cseke & Tomioka 2016).

For a convex f with f(1) = 0 (the GAN's f is shifted: f(1) = -log 4) and densities p, q,

    D_f(P || Q) = E_Q f(p(x) / q(x))                                            (Nowozin et al. eq. 1)

and with the convex conjugate f*(t) = sup_u (u t - f(u)) (Fenchel-Young: f(u) + f*(t) >= u t, equal at
t = f'(u)) every function T gives a lower bound, attained at T*(x) = f'(p(x) / q(x)):

    D_f(P || Q) >= sup_T  E_P T(x) - E_Q f*(T(x))                               (eq. 4)

The f-GAN critic is T = g_f(V) with V any real-valued network and g_f an output activation onto dom f*
(Table 2). `FDivergence.conjugate_of_activation` is f*(g_f(v)) simplified so that it is finite for every v
(e.g. softplus(v) for the GAN divergence, where f*(g_f(v)) = -log(1 - exp(-softplus(-v))) would round to
-log 0 for large v).

Conventions (those of the paper's f, so that the f-GAN is the paper's): "js" is f(u) = u log u - (u + 1)
log((u + 1) / 2), whose D_f = KL(P || M) + KL(Q || M) with M = (P + Q) / 2 is twice the Jensen-Shannon
divergence; "gan" gives D_f = 2 JSD(P, Q) - log 4; "hellinger" is sum (sqrt p - sqrt q)^2 (no 1/2); "tv" is
1/2 sum |p - q|.

    from minigen.divergences import DIVERGENCES, f_divergence
    f_divergence(p, q, "kl")                       # sum_i p_i log(p_i / q_i)
    DIVERGENCES["gan"].activation(v)               # -softplus(-v)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .ops import abs as abs_, exp, expm1, log, log1p, softplus, sign, sqrt, sum as sum_, tanh, where
from .tensor import Tensor, as_tensor

Op = Callable[[Tensor], Tensor]
LOG2 = math.log(2.0)


@dataclass(frozen=True)
class FDivergence:
    """One f-divergence: its generator f, derivative f' (the optimal critic is T* = f'(p/q)), conjugate f*
    on dom f* = `domain` (an interval (lo, hi)), the output activation g_f: R -> dom f*, and f*(g_f(v)) in a
    form finite for every v. Each is a function of Tensors, so all of them are differentiable."""

    name: str
    f: Op
    f_prime: Op
    conjugate: Op
    activation: Op
    conjugate_of_activation: Op
    domain: tuple[float, float]


def _xlogx(u: Tensor) -> Tensor:
    """u log u, with its limit 0 at u = 0 (the log sees 1 there, so neither value nor gradient is NaN)."""
    return u * log(where(u.data > 0, u, 1.0))


# Nowozin et al. 2016, Table 2 (f*, g_f, dom f*) and the appendix's table of f and f'.
KL = FDivergence(
    "kl", f=_xlogx, f_prime=lambda u: 1 + log(u), conjugate=lambda t: exp(t - 1),
    activation=lambda v: v, conjugate_of_activation=lambda v: exp(v - 1), domain=(-math.inf, math.inf))

REVERSE_KL = FDivergence(
    "reverse-kl", f=lambda u: -log(u), f_prime=lambda u: -1 / u, conjugate=lambda t: -1 - log(-t),
    activation=lambda v: -exp(-v), conjugate_of_activation=lambda v: v - 1, domain=(-math.inf, 0.0))

PEARSON = FDivergence(
    "pearson", f=lambda u: (u - 1) ** 2, f_prime=lambda u: 2 * (u - 1), conjugate=lambda t: t * t / 4 + t,
    activation=lambda v: v, conjugate_of_activation=lambda v: v * v / 4 + v, domain=(-math.inf, math.inf))

HELLINGER = FDivergence(
    "hellinger", f=lambda u: (sqrt(u) - 1) ** 2, f_prime=lambda u: 1 - 1 / sqrt(u),
    conjugate=lambda t: t / (1 - t), activation=lambda v: 1 - exp(-v),
    conjugate_of_activation=expm1,                  # (1 - e^-v) / e^-v
    domain=(-math.inf, 1.0))

JS = FDivergence(
    "js", f=lambda u: _xlogx(u) - (u + 1) * (log1p(u) - LOG2), f_prime=lambda u: LOG2 + log(u) - log1p(u),
    conjugate=lambda t: -log(2 - exp(t)), activation=lambda v: LOG2 - softplus(-v),
    conjugate_of_activation=lambda v: softplus(v) - LOG2,    # -log(2 - 2 sigmoid(v))
    domain=(-math.inf, LOG2))

GAN = FDivergence(
    "gan", f=lambda u: _xlogx(u) - (u + 1) * log1p(u), f_prime=lambda u: log(u) - log1p(u),
    conjugate=lambda t: -log(-expm1(t)), activation=lambda v: -softplus(-v),
    conjugate_of_activation=softplus,               # -log(1 - sigmoid(v))
    domain=(-math.inf, 0.0))

TOTAL_VARIATION = FDivergence(
    "tv", f=lambda u: abs_(u - 1) / 2, f_prime=lambda u: sign(u - 1) / 2, conjugate=lambda t: t,
    activation=lambda v: tanh(v) / 2, conjugate_of_activation=lambda v: tanh(v) / 2, domain=(-0.5, 0.5))

DIVERGENCES = {d.name: d for d in (KL, REVERSE_KL, PEARSON, HELLINGER, JS, GAN, TOTAL_VARIATION)}


def divergence(name: str) -> FDivergence:
    """The FDivergence called `name`, or a one-line error naming those there are."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown f-divergence {name!r}; choose one of: {', '.join(DIVERGENCES)}")
    return DIVERGENCES[name]


def f_divergence(p, q, name: str) -> Tensor:
    """D_f(P || Q) = sum_i q_i f(p_i / q_i) of discrete distributions along the last axis (q > 0; p may hold
    zeros). p and q are Tensors or arrays; the result is differentiable in both."""
    p, q = as_tensor(p), as_tensor(q)
    return sum_(q * divergence(name).f(p / q), axis=-1)


def variational_bound(t_p: Tensor, t_q: Tensor, name: str) -> Tensor:
    """E_P T - E_Q f*(T) (eq. 4), from the critic's values t_p = T(x), x ~ P, and t_q = T(x), x ~ Q."""
    return t_p.mean() - divergence(name).conjugate(t_q).mean()
