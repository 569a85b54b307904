"""Continuous normalizing flows: a neural ODE solver, FFJORD and OT-Flow.

A continuous flow carries a data point x = z(0) along dz/dt = f(z, t) to z(T), where the base N(0, I) sits.
By the instantaneous change of variables (Chen et al. 2018, theorem 1), d log p(z(t)) / dt = -tr(df/dz), so

    log p(x) = log N(z(T); 0, I) + Delta(T),   dDelta/dt = tr(df/dz(z(t), t)),  Delta(0) = 0,

and (z, Delta) is one ODE, integrated from 0 to T. Sampling integrates dz/dt = f backwards from z(T) ~ N(0, I).

- Solvers: explicit Runge-Kutta methods given by their Butcher tableaus, one loop for all: classic RK4 with
  fixed steps, Dormand-Prince 5(4) with adaptive steps (error per step within atol + rtol |y|).
  Gradients are discretize-then-optimize: the tape records the solver's arithmetic and backpropagates through
  it, which gives the exact gradient of the computed solution (not the continuous adjoint of Chen et al.);
  memory grows with the number of function evaluations. Dopri5's step sizes are decided from values and are
  constants to the tape, as are its rejected steps, which leave no trace in the result.
- FFJORD (Grathwohl et al. 2019): f is a free-form MLP; tr(df/dz) exactly with one vector-Jacobian product
  per dimension (two in 2-D), or by Hutchinson's estimator eps^T (df/dz) eps from one vector-Jacobian product,
  with `create_graph=True` so that the trace is differentiated in training.
- OT-Flow (Onken et al. 2021): f = -grad Phi for a potential Phi, whose gradient and Hessian trace are written
  in closed form, plus the transport cost and the Hamilton-Jacobi-Bellman penalty that make the flow an
  optimal-transport map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import backend, nn, optim
from ..data import dequantize_batch, logit_inverse, logit_transform
from ..distributions import standard_normal_log_prob
from ..metrics import likelihood_metrics
from ..nn import Parameter
from ..ops import abs as abs_, concatenate, softplus, tanh
from ..tensor import Tensor, enable_grad, grad, is_grad_enabled, no_grad, randn, zeros
from ..train import Recipe

State = tuple  # a tuple of tensors, integrated together

# --- solvers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method (Hairer, Norsett & Wanner, vol. I, II.1): stages
    k_i = f(t + c_i h, y + h sum_j a_ij k_j), step y + h sum_i b_i k_i; an embedded pair also gives the error
    estimate h sum_i e_i k_i (e = b - b_hat) of its lower `order`. `fsal`: the last stage is f at the new
    point, i.e. the next step's first stage (first same as last)."""
    c: tuple
    a: tuple
    b: tuple
    e: tuple | None = None
    order: int = 4
    fsal: bool = False


RK4 = Tableau(c=(0, 1 / 2, 1 / 2, 1), a=((), (1 / 2,), (0, 1 / 2), (0, 0, 1)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6))

# Dormand & Prince (1980): 5th-order solution, 4th-order embedded estimate.
_DOPRI_B = (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0)
_DOPRI_B_HAT = (5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5 = Tableau(
    c=(0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1),
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656), _DOPRI_B[:6]),
    b=_DOPRI_B, e=tuple(b - bh for b, bh in zip(_DOPRI_B, _DOPRI_B_HAT)), order=4, fsal=True)

METHODS = {"rk4": RK4, "dopri5": DOPRI5}


def _combine(y: State, h: float, coefs: tuple, ks: list) -> State:
    """y + h sum_j coefs_j k_j, componentwise over the state's tensors or arrays (zero coefficients skipped)."""
    terms = [(h * c, k) for c, k in zip(coefs, ks) if c != 0]
    out = []
    for i, yi in enumerate(y):
        for hc, k in terms:
            yi = yi + k[i] * hc
        out.append(yi)
    return tuple(out)


def _rms(arrays) -> float:
    return math.sqrt(sum(float((a * a).sum()) for a in arrays) / sum(a.size for a in arrays))


def rk_step(f: Callable, t: float, y: State, h: float, k1: State, tab: Tableau) -> tuple[State, list]:
    """One Runge-Kutta step from (t, y) given k1 = f(t, y): (y + h sum_i b_i k_i, the stages k)."""
    ks = [k1]
    for c, a in zip(tab.c[1:], tab.a[1:]):
        ks.append(f(t + c * h, _combine(y, h, a, ks)))
    return _combine(y, h, tab.b, ks), ks


def _error_ratio(tab: Tableau, h: float, ks: list, y: State, y_new: State, rtol: float, atol: float) -> float:
    """RMS of the embedded error estimate h sum_i e_i k_i over atol + rtol max(|y|, |y_new|) (Hairer et al.
    vol. I, II.4, eq. 4.11), on values only."""
    err = _combine(tuple(yi.data * 0 for yi in y), h, tab.e, [[ki.data for ki in k] for k in ks])
    return _rms([e / (atol + rtol * np.maximum(abs(a.data), abs(b.data))) for e, a, b in zip(err, y, y_new)])


def _initial_step(y: State, k1: State, span: float, rtol: float, atol: float) -> float:
    """Hairer et al.'s starting guess h = 0.01 rms(y0 / scale) / rms(f0 / scale), at most the whole span."""
    scale = [atol + rtol * abs(yi.data) for yi in y]
    d0, d1 = _rms([yi.data / s for yi, s in zip(y, scale)]), _rms([ki.data / s for ki, s in zip(k1, scale)])
    return math.copysign(min(abs(span), 0.01 * d0 / d1 if min(d0, d1) > 1e-5 else 1e-6), span)


def odeint(f: Callable, y0: State, t0: float, t1: float, method: str = "rk4", steps: int = 8,
           rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 10_000) -> tuple[State, dict]:
    """y(t1) for dy/dt = f(t, y), y(t0) = y0 (t1 < t0 integrates backwards), and the counts
    {"steps", "rejected", "nfe"}. `y0` and f's value are tuples of tensors.

    rk4 takes `steps` equal steps. dopri5 adapts h: a step is accepted when its error ratio is <= 1, and the
    next h is h * clip(0.9 ratio^(-1/5), 0.2, 10) (Hairer et al. vol. I, II.4), after a rejection too.
    """
    tab = METHODS[method]
    adaptive, span = tab.e is not None, t1 - t0
    t, y, k1, h = t0, tuple(y0), None, span / steps
    counts = {"steps": 0, "rejected": 0, "nfe": 0}
    while abs(t1 - t) > 1e-9 * abs(span):
        if counts["steps"] + counts["rejected"] >= max_steps:
            raise RuntimeError(f"odeint: more than {max_steps} steps from t={t0} to t={t1} (now t={t})")
        if k1 is None:
            k1 = f(t, y)
            counts["nfe"] += 1
            if adaptive and counts["steps"] == 0:
                h = _initial_step(y, k1, span, rtol, atol)
        if (t + h - t1) * span > 0:
            h = t1 - t
        y_new, ks = rk_step(f, t, y, h, k1, tab)
        counts["nfe"] += len(tab.c) - 1
        ratio = _error_ratio(tab, h, ks, y, y_new, rtol, atol) if adaptive else 0.0
        if ratio <= 1:
            t, y, k1 = t + h, y_new, ks[-1] if tab.fsal else None
            counts["steps"] += 1
        else:
            counts["rejected"] += 1
        if adaptive:
            h *= min(10.0, max(0.2, 0.9 * ratio ** (-1 / (tab.order + 1)))) if ratio > 0 else 10.0
    return y, counts


# --- the trace of the Jacobian ----------------------------------------------------------------------------


def exact_trace(f: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """(tr df/dz, |df/dz|_F^2) per example from the rows e_i^T df/dz: one vector-Jacobian product per
    dimension."""
    trace, frobenius = 0, 0
    for i in range(z.shape[1]):
        e = backend.get_array_module(z.data).zeros(z.shape, dtype=z.dtype)
        e[:, i] = 1
        (row,) = grad(f, z, Tensor(e), retain_graph=True, create_graph=create_graph)
        trace, frobenius = trace + row[:, i], frobenius + (row * row).sum(axis=1)
    return trace, frobenius


def hutchinson_trace(eps: Tensor) -> Callable:
    """Hutchinson's estimator (Hutchinson 1990; FFJORD, Grathwohl et al. 2019 eq. 7):
    tr(A) = E[eps^T A eps] and |A|_F^2 = E[|eps^T A|^2] for any probe with E[eps eps^T] = I, both from one
    vector-Jacobian product eps^T A. The same `eps` serves the whole solve, so the integrated estimate stays
    unbiased."""
    def trace(f: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        (row,) = grad(f, z, eps, retain_graph=True, create_graph=create_graph)
        return (row * eps).sum(axis=1), (row * row).sum(axis=1)
    return trace


def probe(shape: tuple, kind: str = "rademacher", dtype=np.float32, device: str = "cpu") -> Tensor:
    """Hutchinson probes: Rademacher (+-1 with probability 1/2, the lower-variance choice) or N(0, I)."""
    eps = randn(*shape, dtype=dtype, device=device)
    if kind == "rademacher":
        return Tensor(backend.get_array_module(eps.data).where(eps.data < 0, -1, 1).astype(dtype))
    if kind == "gaussian":
        return eps
    raise ValueError(f"unknown probe {kind!r}; choose 'rademacher' or 'gaussian'")


# --- FFJORD ------------------------------------------------------------------------------------------------


class ConcatLinear(nn.Module):
    """y = W h + b + t u: a linear layer on [h, t] (FFJORD's concat layer)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.u = Parameter(zeros(out_features))

    def forward(self, h: Tensor, t: float) -> Tensor:
        return self.linear(h) + self.u * t


class ODENet(nn.Module):
    """f(z, t): h_0 = z, h_l = tanh(W_l h_(l-1) + t u_l + b_l), f = W_L h_(L-1) + t u_L + b_L; every layer
    sees the time. tanh keeps f smooth, as the trace's gradient needs second derivatives."""

    def __init__(self, dim: int, hidden: int = 64, layers: int = 3):
        super().__init__()
        self.dim = dim
        sizes = [dim] + [hidden] * (layers - 1) + [dim]
        self.layers = nn.ModuleList([ConcatLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])

    def forward(self, z: Tensor, t: float) -> Tensor:
        h = self.layers[0](z, t)
        for layer in self.layers[1:]:
            h = layer(tanh(h), t)
        return h


def cnf_dynamics(velocity: Callable, trace: Callable) -> Callable:
    """The augmented dynamics (Chen et al. 2018 eq. 4, with Delta's sign flipped so that
    log p(x) = log p(z(T)) + Delta(T); the last two from Finlay et al. 2020, "How to train your neural ODE"):

        dz/dt = f(z, t),  dDelta/dt = tr df/dz,  dE/dt = |f|^2 (kinetic energy),  dF/dt = |df/dz|_F^2.

    The trace needs f's graph even when the caller records none (evaluation, sampling): it is built here
    and differentiated only when recorded."""
    def dynamics(t: float, state: State) -> State:
        record = is_grad_enabled()
        with enable_grad():
            z = state[0] if state[0].requires_grad else Tensor(state[0].data, requires_grad=True)
            f = velocity(z, t)
            derivatives = (f, *trace(f, z, record), (f * f).sum(axis=1))
        return derivatives if record else tuple(d.detach() for d in derivatives)
    return dynamics


def sample_backwards(velocity: Callable, dim: int, n: int, T: float, temperature: float = 1.0,
                     device: str = "cpu", **solver) -> Tensor:
    """x = z(0) from z(T) ~ N(0, temperature^2 I) on `device`, integrating dz/dt = velocity(z, t) backwards in
    time."""
    z = randn(n, dim, device=device) * temperature
    with no_grad():
        (x,), _ = odeint(lambda t, y: (velocity(y[0], t),), (z,), T, 0.0, **solver)
    return x


class FFJORD(nn.Module):
    """A continuous flow with a free-form velocity network (Grathwohl et al. 2019) on [0, T], trained on
    E[-log p(x) + lambda_E E(T) + lambda_F F(T)]: the kinetic-energy and Jacobian-norm penalties of RNODE
    (Finlay et al. 2020) keep the dynamics smooth enough for a few fixed RK4 steps to follow them (without
    them a model trained with coarse steps learns to exploit the discretization error)."""

    def __init__(self, dim: int, hidden: int = 64, layers: int = 3, T: float = 1.0, trace: str = "exact",
                 probe: str = "rademacher", lambda_E: float = 0.01, lambda_F: float = 0.01):
        super().__init__()
        self.net, self.T, self.trace, self.probe = ODENet(dim, hidden, layers), T, trace, probe
        self.lambda_E, self.lambda_F = lambda_E, lambda_F

    def _integrate(self, x: Tensor, trace: str | None, **solver):
        trace = trace or self.trace
        div = exact_trace if trace == "exact" else hutchinson_trace(probe(x.shape, self.probe, x.dtype, x.device))
        zero = zeros(len(x), dtype=x.dtype, device=x.device)
        (z, delta, F, E), counts = odeint(cnf_dynamics(self.net, div), (x, zero, zero, zero), 0.0, self.T,
                                          **solver)
        return standard_normal_log_prob(z).sum(axis=1) + delta, E, F, counts

    def log_prob(self, x: Tensor, trace: str | None = None, **solver) -> tuple[Tensor, dict]:
        """(log p(x) per example, the solver's counts). `trace`: "exact" or "hutchinson" (default: the
        model's); `solver`: odeint's options (method, steps, rtol, atol)."""
        log_p, _, _, counts = self._integrate(x, trace, **solver)
        return log_p, counts

    def loss(self, x: Tensor, **solver) -> tuple[Tensor, dict]:
        """(the penalized mean negative log-likelihood, metrics)."""
        log_p, E, F, counts = self._integrate(x, None, **solver)
        nll, E, F = -log_p.mean(), E.mean(), F.mean()
        return nll + E * self.lambda_E + F * self.lambda_F, {"nll": nll.item(), "kinetic": E.item(),
                                                             "jacobian": F.item(), "nfe": counts["nfe"]}

    def sample(self, n: int, temperature: float = 1.0, **solver) -> Tensor:
        return sample_backwards(self.net, self.net.dim, n, self.T, temperature, next(self.parameters()).device,
                                **solver)


# --- OT-Flow -----------------------------------------------------------------------------------------------


def log_cosh(a: Tensor) -> Tensor:
    """sigma(a) = log cosh a = softplus(2a) - a - log 2; sigma' = tanh, sigma'' = 1 - tanh^2."""
    return softplus(a * 2.0) - a - math.log(2.0)


class Potential(nn.Module):
    """OT-Flow's potential (Onken et al. 2021, eq. 12) on s = (x, t):

        Phi(s) = w^T N(s) + 1/2 s^T (A^T A) s + c^T s + c0,
        N: u_0 = sigma(K_0 s + b_0),  u_i = u_(i-1) + h sigma(K_i u_(i-1) + b_i), i = 1..M-1,

    a ResNet of width m with step h = 1/(M-1) and sigma = log cosh; A is r x (d+1) with r = min(10, d+1)."""

    def __init__(self, dim: int, width: int = 32, layers: int = 2, rank: int = 10):
        super().__init__()
        self.dim, self.h = dim, 1.0 / max(layers - 1, 1)
        self.opening = nn.Linear(dim + 1, width)
        self.residual = nn.ModuleList([nn.Linear(width, width) for _ in range(layers - 1)])
        self.w = nn.Linear(width, 1, bias=False)
        self.A = Parameter(randn(min(rank, dim + 1), dim + 1) * 0.1)
        self.c = nn.Linear(dim + 1, 1)

    def _s(self, x: Tensor, t: float) -> Tensor:
        return concatenate([x, Tensor(backend.get_array_module(x.data).full((len(x), 1), t, dtype=x.dtype))], axis=1)

    def forward(self, x: Tensor, t: float) -> Tensor:
        """Phi(x, t) per example (for checks; training uses only its gradient and Laplacian)."""
        s = self._s(x, t)
        u = log_cosh(self.opening(s))
        for layer in self.residual:
            u = u + log_cosh(layer(u)) * self.h
        quadratic = ((s @ self.A.T) ** 2).sum(axis=1) * 0.5
        return self.w(u)[:, 0] + quadratic + self.c(s)[:, 0]

    def gradient_and_laplacian(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """(grad_s Phi of shape (n, d+1), its last column dPhi/dt; tr grad_x^2 Phi of shape (n,)), in closed
        form (Onken et al. 2021, section 3.2 and eqs. 14-16):

        forward  a_0 = K_0 s + b_0, u_0 = sigma(a_0); a_i = K_i u_(i-1) + b_i, u_i = u_(i-1) + h sigma(a_i);
        backward z_M = w, z_i = z_(i+1) + h K_i^T (tanh(a_i) * z_(i+1)); grad_s(w^T N) = K_0^T (tanh(a_0) * z_1);
        trace    t_0 = sum_j sigma''(a_0)_j z_1,j |K_0[j, :d]|^2, J_0 = diag(tanh(a_0)) K_0[:, :d] (du_0/dx),
                 t_i = h sum_j sigma''(a_i)_j z_(i+1),j |(K_i J_(i-1))_j|^2,
                 J_i = J_(i-1) + h diag(tanh(a_i)) K_i J_(i-1),
        plus the quadratic's A^T A s + c and tr((A^T A)[:d, :d]).
        """
        s, d = self._s(x, t), self.dim
        a = [self.opening(s)]
        u = log_cosh(a[0])
        for layer in self.residual:
            a.append(layer(u))
            u = u + log_cosh(a[-1]) * self.h
        tanhs = [tanh(ai) for ai in a]
        zs = [self.w.weight]                                    # z_M = w, shape (1, m) broadcast over the batch
        for layer, th in zip(reversed(self.residual), reversed(tanhs[1:])):
            zs.append(zs[-1] + ((th * zs[-1]) @ layer.weight) * self.h)
        zs = zs[::-1]                                           # zs[i] = z_(i+1)
        AtA = self.A.T @ self.A
        gradient = (tanhs[0] * zs[0]) @ self.opening.weight + s @ AtA + self.c.weight
        K0x = self.opening.weight[:, :d]
        laplacian = ((1 - tanhs[0] ** 2) * zs[0] * (K0x ** 2).sum(axis=1)).sum(axis=1)
        J = tanhs[0].expand_dims(2) * K0x                      # (n, m, d)
        for i, layer in enumerate(self.residual, start=1):
            KJ = layer.weight @ J
            laplacian = laplacian + ((1 - tanhs[i] ** 2) * zs[i] * (KJ ** 2).sum(axis=2)).sum(axis=1) * self.h
            J = J + tanhs[i].expand_dims(2) * KJ * self.h
        trace_AtA = sum(AtA[i, i] for i in range(d))
        return gradient, laplacian + trace_AtA


class OTFlow(nn.Module):
    """OT-Flow (Onken et al. 2021): velocity v = -grad_x Phi on [0, T], integrated with the costs

        dz/dt = -grad_x Phi,   dDelta/dt = -tr grad_x^2 Phi   (= div v),
        dL/dt = 1/2 |grad_x Phi|^2                             (transport cost, eq. 5),
        dR/dt = |dPhi/dt - 1/2 |grad_x Phi|^2|                 (HJB residual, eq. 8),

    trained on E[-log p(x) + alpha_L L(T) + alpha_R R(T)] (eq. 10)."""

    def __init__(self, dim: int, width: int = 32, layers: int = 2, T: float = 1.0, alpha_L: float = 0.01,
                 alpha_R: float = 0.05):
        super().__init__()
        self.phi, self.T, self.alpha_L, self.alpha_R = Potential(dim, width, layers), T, alpha_L, alpha_R

    def dynamics(self, t: float, state: State) -> State:
        gradient, laplacian = self.phi.gradient_and_laplacian(state[0], t)
        grad_x, dphi_dt = gradient[:, :-1], gradient[:, -1]
        kinetic = (grad_x ** 2).sum(axis=1) * 0.5
        return -grad_x, -laplacian, kinetic, abs_(dphi_dt - kinetic)

    def log_prob(self, x: Tensor, **solver) -> tuple[Tensor, dict]:
        log_p, _, _, counts = self._integrate(x, **solver)
        return log_p, counts

    def _integrate(self, x: Tensor, **solver):
        zero = zeros(len(x), dtype=x.dtype, device=x.device)
        (z, delta, L, R), counts = odeint(self.dynamics, (x, zero, zero, zero), 0.0, self.T, **solver)
        return standard_normal_log_prob(z).sum(axis=1) + delta, L, R, counts

    def loss(self, x: Tensor, **solver) -> tuple[Tensor, dict]:
        log_p, L, R, counts = self._integrate(x, **solver)
        nll, L, R = -log_p.mean(), L.mean(), R.mean()
        return nll + L * self.alpha_L + R * self.alpha_R, {"nll": nll.item(), "transport": L.item(),
                                                           "hjb": R.item(), "nfe": counts["nfe"]}

    def sample(self, n: int, temperature: float = 1.0, **solver) -> Tensor:
        velocity = lambda z, t: -self.phi.gradient_and_laplacian(z, t)[0][:, :-1]
        return sample_backwards(velocity, self.phi.dim, n, self.T, temperature, next(self.parameters()).device,
                                **solver)


# --- recipes -----------------------------------------------------------------------------------------------


class CNFRecipe(Recipe):
    """Maximum likelihood with Adam. Training solves with `train_method`: RK4 with `train_steps` steps (the
    default: cheap) or Dopri5 at rtol = atol = `train_tol`. Evaluation reports the test NLL in nats with
    Dopri5 at rtol = atol = `eval_tol` and the exact trace, which is the model's density (it integrates to
    one), and the mean number of function evaluations; sampling integrates backwards with that solver.

    Images are modelled as `FlowRecipe` models them: dequantized on the data's grey levels, through the logit
    transform (its log-Jacobian counted) and flattened, so that evaluation reports honest bits/dim.

    With a few fixed steps the training loss is not a likelihood: a long run can learn dynamics whose
    discretization error flatters it (train NLL below test NLL, evaluation NFE climbing). Then raise the
    penalties, the steps, or train with Dopri5."""

    default_dataset = "8gaussians"
    default_epochs = 5

    log_prob_options: dict = {}     # what evaluation passes to the model's log_prob besides the solver

    def __init__(self, spec, model: nn.Module, lr: float, train_method: str, train_steps: int, train_tol: float,
                 eval_tol: float):
        self.spec = spec
        self.model, self.temperature = model, 1.0       # temperature: the base's standard deviation in `sample`
        self.optimizer = optim.Adam(self.model.parameters(), lr=lr)
        self.train_solver = {"method": train_method, "steps": train_steps, "rtol": train_tol, "atol": train_tol}
        self.eval_solver = {"method": "dopri5", "rtol": eval_tol, "atol": eval_tol}

    def modules(self) -> dict:
        return {"model": self.model}

    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer}

    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor | float]:
        """(what the ODE models, the log-density offset): points as they are (offset 0); images y = dequantized
        pixels, u = logit(y) flattened, offset = log|det du/dy|, so that -(log p(u) + offset) = -log p(y)."""
        if not self.spec.is_image:
            return x, 0.0
        u, log_det = logit_transform(dequantize_batch(x, self.spec.levels))
        return u.reshape(len(x), -1), log_det

    def step(self, batch, t: int) -> dict:
        u, offset = self._prepare(batch[0])
        loss, metrics = self.model.loss(u, **self.train_solver)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.spec.is_image:
            metrics["nll"] = likelihood_metrics(metrics["nll"] - float(offset.data.mean()), self.spec)["nll"]
        return {"loss": loss.item(), **metrics}

    def evaluate(self, loader) -> dict:
        total, nfe, n = 0.0, 0, 0
        with no_grad():
            for batch in loader:
                u, offset = self._prepare(batch[0])
                log_p, counts = self.model.log_prob(u, **self.eval_solver, **self.log_prob_options)
                total, nfe, n = total - float((log_p + offset).data.sum()), nfe + counts["nfe"] * len(u), n + len(u)
        return {**likelihood_metrics(total / n, self.spec), "nfe": nfe / n}

    def sample(self, n: int) -> np.ndarray:
        u = self.model.sample(n, self.temperature, **self.eval_solver)
        if not self.spec.is_image:
            return u.numpy()
        return np.clip(logit_inverse(u).numpy().reshape(n, *self.spec.shape), 0, 1)


class FFJORDRecipe(CNFRecipe):
    """`minigen train ffjord --dataset 8gaussians`. Options: hidden, layers, T, trace ("exact" or
    "hutchinson"), probe ("rademacher" or "gaussian"), lambda_E, lambda_F, train_method, train_steps,
    train_tol, eval_tol, lr. Evaluation takes the exact trace on points; on images, where it would cost D
    vector-Jacobian products per function evaluation, the Hutchinson estimate (unbiased for log p), which is
    also the default for training there."""

    name = "ffjord"

    def __init__(self, spec, hidden: int = 64, layers: int = 3, T: float = 1.0, trace: str | None = None,
                 probe: str = "rademacher", lambda_E: float = 0.01, lambda_F: float = 0.01, lr: float = 5e-3,
                 train_method: str = "rk4", train_steps: int = 4, train_tol: float = 1e-3, eval_tol: float = 1e-5):
        eval_trace = "hutchinson" if spec.is_image else "exact"
        model = FFJORD(spec.dim, hidden, layers, T, trace or eval_trace, probe, lambda_E, lambda_F)
        super().__init__(spec, model, lr, train_method, train_steps, train_tol, eval_tol)
        self.log_prob_options = {"trace": eval_trace}


class OTFlowRecipe(CNFRecipe):
    """`minigen train otflow --dataset 8gaussians`. Options: width, layers, T, alpha_L, alpha_R,
    train_method, train_steps, train_tol, eval_tol, lr."""

    name = "otflow"

    def __init__(self, spec, width: int = 32, layers: int = 2, T: float = 1.0, alpha_L: float = 0.01,
                 alpha_R: float = 0.05, lr: float = 1e-2, train_method: str = "rk4", train_steps: int = 8,
                 train_tol: float = 1e-3, eval_tol: float = 1e-5):
        model = OTFlow(spec.dim, width, layers, T, alpha_L, alpha_R)
        super().__init__(spec, model, lr, train_method, train_steps, train_tol, eval_tol)
