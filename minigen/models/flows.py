"""Discrete normalizing flows: an invertible map f from data x to a base variable z with a simple density,
and the change of variables

    log p(x) = log p_Z(f(x)) + log |det df/dx|,      f = f_K o ... o f_1,  log|det| = sum_k log_det_k.

Convention (as nflows): every `Bijector` maps data to base in `forward` and base to data in `inverse`, and
both return `(output, log_det)` with log_det = log|det d output / d input| per example, so the inverse's is
minus the forward's. `log_abs_det_jacobian(x)` is the forward one. Density evaluation runs `forward`,
sampling runs `inverse`, and each family is fast in one direction only:

- coupling layers (NICE, RealNVP, Glow): both directions one pass;
- MAF: density one pass, sampling d sequential passes (train by maximum likelihood, sample slowly);
- IAF, planar, radial: sampling one pass with its own log q, density sequential or numerical (train by
  reverse KL on an unnormalized target exp(-U), where only samples and their log q are needed).

A `Flow` composes bijectors, summing their log_dets, and with a base distribution gives `log_prob`,
`sample(n, temperature)` and `sample_with_log_prob(n)`. Images are handled by the `LogitTransform` bijector
(its log-Jacobian counted) on dequantized pixels; `FlowRecipe` reports honest bits/dim from there.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from .. import backend, nn, optim
from ..data import (ENERGIES, ENERGY_Z1_MAX, dequantize_batch, energy_log_partition, logit_inverse,
                   logit_transform)
from ..distributions import standard_normal_log_prob
from ..metrics import likelihood_metrics
from ..ops import concatenate, conv2d, flip, inv, logsigmoid, slogdet, softplus, split, sqrt, sum as sum_, tanh
from ..tensor import Tensor, no_grad, randn, zeros
from ..train import Recipe


def _sum_per_example(v: Tensor) -> Tensor:
    """Sum over all axes but the batch axis."""
    return sum_(v, axis=tuple(range(1, v.ndim)))


def _pixels(x: Tensor) -> int:
    """Spatial positions per example: H*W for (n, C, H, W), 1 for vectors (n, C)."""
    return math.prod(x.shape[2:])


def _no_log_det(x: Tensor) -> Tensor:
    """log_det = 0 for each example of x (a permutation or reshape)."""
    return zeros(len(x), dtype=x.dtype, device=x.device)


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    """A (C,) parameter shaped to broadcast along axis 1 of x."""
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


# ---------------------------------------------------------------------------------------------------------
# Base distribution and the container
# ---------------------------------------------------------------------------------------------------------


class StandardNormal:
    """p_Z = N(0, I) over `event_shape`; `sample` draws from N(0, T^2 I) at temperature T (Kingma & Dhariwal
    2018, sec. 4: T < 1 trades diversity for sample quality)."""

    def __init__(self, event_shape: tuple):
        self.event_shape = tuple(event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        return _sum_per_example(standard_normal_log_prob(z))

    def sample(self, n: int, temperature: float = 1.0, device: str = "cpu") -> Tensor:
        return randn(n, *self.event_shape, device=device) * temperature


class Bijector(nn.Module):
    """An invertible map: `forward(x) -> (z, log_det)` towards the base, `inverse(z) -> (x, log_det)` back,
    log_det = log|det d output / d input| per example."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def log_abs_det_jacobian(self, x: Tensor) -> Tensor:
        return self.forward(x)[1]


class Flow(Bijector):
    """f = f_K o ... o f_1 (bijectors listed data side first), log_det summed; with a `base` it is a density:
    log p(x) = log p_Z(f(x)) + sum_k log_det_k."""

    def __init__(self, bijectors, base: StandardNormal | None = None):
        super().__init__()
        self.bijectors = nn.ModuleList(bijectors)
        self.base = base

    def forward(self, x):
        log_det = 0.0
        for b in self.bijectors:
            x, ld = b(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z):
        log_det = 0.0
        for b in reversed(self.bijectors):
            z, ld = b.inverse(z)
            log_det = log_det + ld
        return z, log_det

    def log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self.forward(x)
        return self.base.log_prob(z) + log_det

    def _base_sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """z ~ p_Z at `temperature`, on the device of the flow's parameters (the CPU when it has none)."""
        return self.base.sample(n, temperature, next((p.device for p in self.parameters()), "cpu"))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        with no_grad():
            return self.inverse(self._base_sample(n, temperature))[0]

    def sample_with_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        """x = f^-1(z), z ~ p_Z, with log q(x) = log p_Z(z) - log|det df^-1/dz| (reparameterized: for reverse KL)."""
        z = self._base_sample(n)
        x, log_det = self.inverse(z)
        return x, self.base.log_prob(z) - log_det


class Inverse(Bijector):
    """A bijector run backwards (e.g. unsqueezing as the inverse of `Squeeze`)."""

    def __init__(self, bijector: Bijector):
        super().__init__()
        self.bijector = bijector

    def forward(self, x):
        return self.bijector.inverse(x)

    def inverse(self, z):
        return self.bijector.forward(z)


# ---------------------------------------------------------------------------------------------------------
# Planar and radial flows (Rezende & Mohamed 2015, sec. 4): one-pass sampling, density by root finding
# ---------------------------------------------------------------------------------------------------------


class Planar(Bijector):
    """x = g(z) = z + u_hat h(w^T z + b), h = tanh (Rezende & Mohamed 2015, eq. 10), the sampling direction.

    log|det dg/dz| = log|1 + u_hat^T psi(z)|, psi = h'(w^T z + b) w (matrix determinant lemma, eq. 11-12,
    O(d)). g is invertible when w^T u_hat >= -1, which u_hat = u + (m(w^T u) - w^T u) w / |w|^2 with
    m(a) = -1 + softplus(a) guarantees (appendix A.1). `forward` inverts g numerically: a = w^T z solves the
    monotone scalar equation a + (w^T u_hat) h(a + b) = w^T x (bisection; evaluation only, no gradient
    into x), then z = x - u_hat h(a + b).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.u = nn.Parameter(randn(dim) * 0.1)
        self.w = nn.Parameter(randn(dim) * 0.1)
        self.b = nn.Parameter(zeros(1))

    def u_hat(self) -> Tensor:
        wu = sum_(self.w * self.u)
        return self.u + (softplus(wu) - 1 - wu) * self.w / sum_(self.w * self.w)

    def _log_det(self, a: Tensor, wu_hat: Tensor) -> Tensor:
        """log|1 + u_hat^T psi| with psi = (1 - tanh^2(a + b)) w, for pre-activations a = w^T z."""
        return (1 + wu_hat * (1 - tanh(a + self.b) ** 2)).abs().log()

    def inverse(self, z):
        u_hat = self.u_hat()
        a = z @ self.w
        x = z + tanh(a + self.b).reshape(-1, 1) * u_hat
        return x, self._log_det(a, sum_(self.w * u_hat))

    def forward(self, x):
        u_hat = self.u_hat()
        c, b = float(sum_(self.w * u_hat).item()), float(self.b.item())
        s = (x @ self.w).numpy().astype(np.float64)
        lo, hi = s - abs(c) - 1, s + abs(c) + 1               # |a - s| = |c h| <= |c|
        for _ in range(60):
            mid = (lo + hi) / 2
            below = mid + c * np.tanh(mid + b) < s
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        a = Tensor(((lo + hi) / 2).astype(x.dtype))
        z = x - tanh(a + self.b).reshape(-1, 1) * u_hat
        return z, -self._log_det(a, sum_(self.w * u_hat))


class Radial(Bijector):
    """x = g(z) = z + beta_hat h(alpha, r) (z - z0), h = 1 / (alpha + r), r = |z - z0| (Rezende & Mohamed
    2015, eq. 14), alpha = softplus(.) > 0 and beta_hat = -alpha + softplus(beta) >= -alpha for invertibility.
    Each layer starts as the identity (beta_hat = 0) with its centre z0 drawn from N(0, I), the base: a
    radial layer moves mass near z0 only, so centres bunched at the origin leave most of the plane unreachable.

    log|det dg/dz| = (d - 1) log(1 + beta_hat h) + log(1 + beta_hat h + beta_hat h'(r) r)   (eq. 15), where
    h + h'(r) r = alpha h^2 since h' = -h^2.
    The inverse is closed form: |x - z0| = r (1 + beta_hat / (alpha + r)) is a quadratic in r >= 0.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.z0 = nn.Parameter(randn(dim))
        self.alpha_raw = nn.Parameter(zeros(1))
        self.beta = nn.Parameter(zeros(1))

    def _alpha_beta(self):
        alpha = softplus(self.alpha_raw)
        return alpha, softplus(self.beta) - alpha

    def _log_det(self, r: Tensor, alpha: Tensor, beta_hat: Tensor, dim: int) -> Tensor:
        h = 1 / (alpha + r)
        return (dim - 1) * (1 + beta_hat * h).log() + (1 + beta_hat * alpha * h * h).log()

    def inverse(self, z):
        alpha, beta_hat = self._alpha_beta()
        d = z - self.z0
        r = sqrt(sum_(d * d, axis=1))
        x = z + (beta_hat / (alpha + r)).reshape(-1, 1) * d
        return x, self._log_det(r, alpha, beta_hat, z.shape[1])

    def forward(self, x):
        alpha, beta_hat = self._alpha_beta()
        d = x - self.z0
        r_x = sqrt(sum_(d * d, axis=1))
        p = alpha + beta_hat - r_x                           # r^2 + p r - alpha r_x = 0
        r = (sqrt(p * p + 4 * alpha * r_x) - p) / 2
        z = self.z0 + d / (1 + beta_hat / (alpha + r)).reshape(-1, 1)
        return z, -self._log_det(r, alpha, beta_hat, x.shape[1])


# ---------------------------------------------------------------------------------------------------------
# Elementwise and linear bijectors
# ---------------------------------------------------------------------------------------------------------


class Scaling(Bijector):
    """z = exp(s) * x + b elementwise, log_det = sum s: NICE's final diagonal scaling (Dinh et al. 2015, sec.
    3.3), b = 0 unless `shift`. Next to a N(0, I) base, with the shift, it makes the base a learned diagonal
    Gaussian N(-b exp(-s), diag exp(-2 s))."""

    def __init__(self, shape: tuple, shift: bool = False):
        super().__init__()
        self.s = nn.Parameter(zeros(*shape))
        self.b = nn.Parameter(zeros(*shape)) if shift else None

    def forward(self, x):
        z = x * self.s.exp()
        return (z if self.b is None else z + self.b), sum_(self.s) + _no_log_det(x)

    def inverse(self, z):
        z = z if self.b is None else z - self.b
        return z * (-self.s).exp(), -sum_(self.s) + _no_log_det(z)


class ActNorm(Bijector):
    """z = exp(log_s) * x + b per channel, log_det = H W sum log|s| (Kingma & Dhariwal 2018, sec. 3.1).

    Data-dependent initialization: on the first forward batch, log_s = -log std and b = -mean / std per
    channel, so that z starts with zero mean and unit variance; the `initialized` buffer keeps it done
    across checkpoints.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.log_s = nn.Parameter(zeros(channels))
        self.b = nn.Parameter(zeros(channels))
        self.register_buffer("initialized", zeros(()))

    def _initialize(self, x: Tensor) -> None:
        xp = backend.get_array_module(x.data)
        axes = (0,) + tuple(range(2, x.ndim))
        mean, std = x.data.mean(axis=axes), x.data.std(axis=axes) + 1e-6
        self.log_s.data[...] = -xp.log(std)
        self.b.data[...] = -mean / std
        self.initialized.data[...] = 1

    def forward(self, x):
        if not self.initialized.item():
            self._initialize(x)
        z = x * _per_channel(self.log_s, x).exp() + _per_channel(self.b, x)
        return z, _pixels(x) * sum_(self.log_s) + _no_log_det(x)

    def inverse(self, z):
        x = (z - _per_channel(self.b, z)) * _per_channel(-self.log_s, z).exp()
        return x, -_pixels(z) * sum_(self.log_s) + _no_log_det(z)


class Invertible1x1Conv(Bijector):
    """z = W x at every pixel, a 1x1 convolution with an invertible C x C matrix (Kingma & Dhariwal 2018,
    sec. 3.2): log_det = H W log|det W| (the slogdet kernel). With `lu=True`, W = P L (U + diag(s)) with P
    a fixed permutation, L unit lower- and U strictly upper-triangular: log_det = H W sum log|s|, O(C).
    On vectors (n, C) it is the linear map x -> W x (H W = 1). W starts as a random rotation.
    """

    def __init__(self, channels: int, lu: bool = False):
        super().__init__()
        self.lu, dtype = lu, backend.get_default_dtype()
        w = np.linalg.qr(backend.generator("cpu").standard_normal((channels, channels)))[0]
        if not lu:
            self.weight = nn.Parameter(Tensor(w.astype(dtype)))
            return
        p, lower, upper = scipy.linalg.lu(w)
        s = np.diag(upper)
        self.register_buffer("p", Tensor(p.astype(dtype)))
        self.register_buffer("sign_s", Tensor(np.sign(s).astype(dtype)))
        self.register_buffer("lower_mask", Tensor(np.tril(np.ones((channels, channels), dtype), -1)))
        self.register_buffer("eye", Tensor(np.eye(channels, dtype=dtype)))
        self.lower = nn.Parameter(Tensor(lower.astype(dtype)))
        self.upper = nn.Parameter(Tensor(np.triu(upper, 1).astype(dtype)))
        self.log_abs_s = nn.Parameter(Tensor(np.log(np.abs(s)).astype(dtype)))

    def _weight_and_log_det(self) -> tuple[Tensor, Tensor]:
        """(W, log|det W|)."""
        if not self.lu:
            return self.weight, slogdet(self.weight)[1]
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + self.eye * (self.sign_s * self.log_abs_s.exp())
        return self.p @ lower @ upper, sum_(self.log_abs_s)

    @staticmethod
    def _apply(w: Tensor, x: Tensor) -> Tensor:
        return x @ w.T if x.ndim == 2 else conv2d(x, w.reshape(w.shape + (1, 1)))

    def forward(self, x):
        w, log_det = self._weight_and_log_det()
        return self._apply(w, x), _pixels(x) * log_det + _no_log_det(x)

    def inverse(self, z):
        w, log_det = self._weight_and_log_det()
        return self._apply(inv(w), z), -_pixels(z) * log_det + _no_log_det(z)


class Reverse(Bijector):
    """z = x with the feature (channel) order reversed: a permutation, log_det = 0; placed between
    autoregressive layers so that each conditions on a different order."""

    def forward(self, x):
        return flip(x, axis=1), _no_log_det(x)

    def inverse(self, z):
        return self.forward(z)


class Squeeze(Bijector):
    """(C, H, W) -> (4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels (Dinh et al. 2017, sec.
    3.6), a permutation, log_det = 0."""

    def forward(self, x):
        n, c, h, w = x.shape
        z = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return z, _no_log_det(x)

    def inverse(self, z):
        n, c, h, w = z.shape
        x = z.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)
        return x, _no_log_det(z)


class Flatten(Bijector):
    """(C, H, W) <-> (C H W): a reshape, log_det = 0."""

    def __init__(self, shape: tuple):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(len(x), -1), _no_log_det(x)

    def inverse(self, z):
        return z.reshape((len(z),) + self.shape), _no_log_det(z)


class FactorOut(Bijector):
    """The multiscale architecture (Dinh et al. 2017, sec. 3.6): half of the channels is factored out,
    going to the base distribution unchanged, while `flow` transforms the other half further:
    z = (x_1, flow(x_2)), log_det = flow's."""

    def __init__(self, flow: Bijector):
        super().__init__()
        self.flow = flow

    def forward(self, x):
        x1, x2 = split(x, 2, axis=1)
        z2, log_det = self.flow(x2)
        return concatenate([x1, z2], axis=1), log_det

    def inverse(self, z):
        z1, z2 = split(z, 2, axis=1)
        x2, log_det = self.flow.inverse(z2)
        return concatenate([z1, x2], axis=1), log_det


class LogitTransform(Bijector):
    """Pixels in [0, 1] to the real line: y = logit(alpha + (1 - 2 alpha) x) (Dinh et al. 2017, sec. 4.1),
    with its log-Jacobian, so that log p(x) on dequantized pixels counts it (`minigen.data.logit_transform`)."""

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return logit_transform(x, self.alpha)

    def inverse(self, z):
        x = logit_inverse(z, self.alpha)
        return x, -logit_transform(x, self.alpha)[1]


# ---------------------------------------------------------------------------------------------------------
# Coupling layers (NICE, RealNVP, Glow): one base, additive or affine
# ---------------------------------------------------------------------------------------------------------


def checkerboard_mask(shape: tuple, parity: int) -> np.ndarray:
    """1 where (h + w + parity) is even, for (C, H, W); for vectors (D,), where (i + parity) is even."""
    index = np.indices(shape[-2:]).sum(0) if len(shape) == 3 else np.arange(shape[0])
    return np.broadcast_to((index + parity) % 2 == 0, shape).astype(np.float32)


def channel_mask(shape: tuple, parity: int) -> np.ndarray:
    """1 on the first half of the channels (parity 0) or the second (parity 1), for (C, H, W)."""
    first = np.arange(shape[0]) < shape[0] // 2
    return np.broadcast_to((first != bool(parity))[:, None, None], shape).astype(np.float32)


class Coupling(Bijector):
    """x_a = m * x passes unchanged and conditions the rest: z = x_a + (1 - m) * (x * exp(s) + t) with
    (t, s) = net(x_a), each masked to the (1 - m) part, so log_det = sum s (Dinh et al. 2017, eq. 4-6).
    The inverse is x = (z - t) * exp(-s) with (t, s) from z_a = x_a. `log_scale(raw)` gives s; subclasses
    choose it (NICE: none; RealNVP / Glow: bounded)."""

    def __init__(self, mask: np.ndarray, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", Tensor(np.asarray(mask, np.float32)))
        self.net = net

    def log_scale(self, raw: Tensor) -> Tensor | None:
        raise NotImplementedError

    def _shift_and_log_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor | None]:
        t, raw = split(self.net(x_a), 2, axis=1)
        s = self.log_scale(raw)
        free = 1 - self.mask
        return t * free, None if s is None else s * free

    def forward(self, x):
        t, s = self._shift_and_log_scale(x * self.mask)
        if s is None:
            return x + t, _no_log_det(x)
        return x * s.exp() + t, _sum_per_example(s)

    def inverse(self, z):
        t, s = self._shift_and_log_scale(z * self.mask)
        if s is None:
            return z - t, _no_log_det(z)
        return (z - t) * (-s).exp(), -_sum_per_example(s)


class AdditiveCoupling(Coupling):
    """NICE (Dinh et al. 2015, eq. 5): z_b = x_b + m(x_a), volume preserving (log_det = 0); the net's
    second half of outputs is unused."""

    def log_scale(self, raw):
        return None


class AffineCoupling(Coupling):
    """RealNVP (Dinh et al. 2017, eq. 6) and Glow's coupling: z_b = x_b * exp(s(x_a)) + t(x_a), with the
    log-scale bounded, s = c tanh(raw / c) (about raw near 0, never past +-c), so training cannot blow up."""

    def __init__(self, mask, net, max_log_scale: float = 3.0):
        super().__init__(mask, net)
        self.max_log_scale = max_log_scale

    def log_scale(self, raw):
        c = self.max_log_scale
        return tanh(raw / c) * c


def _zero_last(net: nn.Sequential) -> nn.Sequential:
    """Zero the last layer: the coupling starts as the identity (Kingma & Dhariwal 2018, sec. 3.3)."""
    net[-1].weight.data[...] = 0
    net[-1].bias.data[...] = 0
    return net


def mlp_net(dim: int, hidden: int, layers: int = 2) -> nn.Sequential:
    """dim -> hidden (x layers, ReLU) -> 2 dim: the (t, raw s) of a coupling on vectors."""
    return _zero_last(nn.mlp([dim] + [hidden] * layers + [2 * dim]))


def conv_net(channels: int, hidden: int) -> nn.Sequential:
    """3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv to 2 C channels: the (t, raw s) of a coupling on images."""
    return _zero_last(nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                    nn.Conv2d(hidden, 2 * channels, 3, padding=1)))


# ---------------------------------------------------------------------------------------------------------
# Autoregressive flows on MADE: MAF and IAF
# ---------------------------------------------------------------------------------------------------------


class MADE(nn.Module):
    """Masked autoencoder (Germain et al. 2015): outputs (mu, alpha), each (n, D), where output d depends on
    inputs 1..d-1 only. Degrees: inputs 1..D, hidden units spread evenly over 1..D-1 (so that every output
    can see all of its inputs even with fewer hidden units than D), and a connection from degree k to a
    hidden unit of degree m iff m >= k, to an output of degree d iff d > m."""

    def __init__(self, dim: int, hidden: int, layers: int = 2):
        super().__init__()
        degrees = [np.arange(1, dim + 1)] + [np.arange(hidden) * max(dim - 1, 1) // hidden + 1] * layers
        self.layers = nn.ModuleList()
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            layer = nn.MaskedLinear(len(d_in), len(d_out))
            layer.set_mask(d_out[:, None] >= d_in[None, :])
            self.layers.append(layer)
        out = nn.MaskedLinear(hidden, 2 * dim)
        out.set_mask(np.tile(np.arange(1, dim + 1), 2)[:, None] > degrees[-1][None, :])
        out.weight.data[...] = 0                         # mu = 0, alpha = 0: MAF starts as the identity
        out.bias.data[...] = 0
        self.layers.append(out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers[:-1]:
            x = layer(x).relu()
        mu, alpha = split(self.layers[-1](x), 2, axis=1)
        return mu, tanh(alpha / 3) * 3                      # bounded log-scale, as AffineCoupling


class MAF(Bijector):
    """Masked autoregressive flow (Papamakarios et al. 2017, eq. 2-5): the data are generated as
    x_i = u_i exp(alpha_i) + mu_i with (mu_i, alpha_i) functions of x_{<i}. Density (forward): one MADE
    pass, u = (x - mu(x)) exp(-alpha(x)), log_det = -sum alpha. Sampling (inverse): D sequential passes,
    pass i fixing x_i. Fast to train by maximum likelihood, slow to sample."""

    def __init__(self, dim: int, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.made = MADE(dim, hidden, layers)

    def forward(self, x):
        mu, alpha = self.made(x)
        return (x - mu) * (-alpha).exp(), -sum_(alpha, axis=1)

    def inverse(self, u):
        x = zeros(*u.shape, dtype=u.dtype, device=u.device)
        for _ in range(u.shape[1]):
            mu, alpha = self.made(x)
            x = u * alpha.exp() + mu
        return x, sum_(alpha, axis=1)


class IAF(Bijector):
    """Inverse autoregressive flow (Kingma et al. 2016, eq. 10-11): samples are x = u exp(alpha(u)) + mu(u)
    with (mu_i, alpha_i) functions of u_{<i}: sampling with its log-density (inverse) is one MADE pass,
    log_det = sum alpha; the density of a given x (forward) needs D sequential passes. MAF's trade-off
    reversed: fast for reverse-KL / variational inference, slow for maximum likelihood."""

    def __init__(self, dim: int, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.made = MADE(dim, hidden, layers)

    def inverse(self, u):
        mu, alpha = self.made(u)
        return u * alpha.exp() + mu, sum_(alpha, axis=1)

    def forward(self, x):
        u = zeros(*x.shape, dtype=x.dtype, device=x.device)
        for _ in range(x.shape[1]):
            mu, alpha = self.made(u)
            u = (x - mu) * (-alpha).exp()
        return u, -sum_(alpha, axis=1)


class StripSquash(Bijector):
    """Maps z1 of a 2-D sample onto (-a, a), x1 = a tanh(z1), x2 = z2: the support of the energies U2-U4,
    whose target density is restricted to the strip |x1| <= a (see `minigen.data.toy`). Data-side last layer
    of a reverse-KL flow; log_det of the sampling direction = log a + log(1 - tanh^2 z1), written as
    log 4a + log sigmoid(2 z1) + log sigmoid(-2 z1) so that it stays finite where tanh z1 rounds to +-1."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def inverse(self, z):
        z1 = z[:, 0:1]
        log_det = math.log(4 * self.a) + logsigmoid(2 * z1) + logsigmoid(-2 * z1)
        return concatenate([tanh(z1) * self.a, z[:, 1:]], axis=1), log_det[:, 0]

    def forward(self, x):
        t = x[:, 0:1] / self.a
        z1 = ((1 + t) / (1 - t)).log() / 2
        return concatenate([z1, x[:, 1:]], axis=1), -(math.log(self.a) + (1 - t * t).log()[:, 0])


# ---------------------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------------------


def realnvp_2d(hidden: int = 64, couplings: int = 8) -> Flow:
    """RealNVP on points: affine couplings with alternating masks."""
    return Flow([AffineCoupling(checkerboard_mask((2,), k % 2), mlp_net(2, hidden)) for k in range(couplings)],
                StandardNormal((2,)))


def nice_2d(hidden: int = 64, couplings: int = 4) -> Flow:
    """NICE on points: additive couplings with alternating masks, then the diagonal scaling."""
    return Flow([AdditiveCoupling(checkerboard_mask((2,), k % 2), mlp_net(2, hidden)) for k in range(couplings)]
                + [Scaling((2,))], StandardNormal((2,)))


def glow_2d(hidden: int = 64, steps: int = 8, lu: bool = False) -> Flow:
    """A Glow-style flow on points: K steps of actnorm, an invertible 2x2 'convolution', affine coupling."""
    layers = []
    for _ in range(steps):
        layers += [ActNorm(2), Invertible1x1Conv(2, lu), AffineCoupling(checkerboard_mask((2,), 0), mlp_net(2, hidden))]
    return Flow(layers, StandardNormal((2,)))


def maf(dim: int, hidden: int = 64, layers: int = 5) -> Flow:
    """MAF: MADE layers with the order reversed between them."""
    bijectors = []
    for k in range(layers):
        bijectors += [MAF(dim, hidden)] + ([Reverse()] if k < layers - 1 else [])
    return Flow(bijectors, StandardNormal((dim,)))


def realnvp_image(shape: tuple, hidden: int = 32, scales: int = 2) -> Flow:
    """RealNVP's multiscale architecture (Dinh et al. 2017, sec. 4.1) after the logit transform: per scale 3
    checkerboard couplings, squeeze, 3 channel couplings, factor out half; the last scale 4 checkerboard
    couplings. Each scale unsqueezes at its end, so the latent has the shape of the data."""
    return Flow([LogitTransform(), _realnvp_scale(tuple(shape), hidden, scales)], StandardNormal(shape))


def _realnvp_scale(shape: tuple, hidden: int, scales: int) -> Flow:
    c, h, w = shape
    if scales == 1 or h % 2:
        return Flow([AffineCoupling(checkerboard_mask(shape, k % 2), conv_net(c, hidden)) for k in range(4)])
    squeezed = (4 * c, h // 2, w // 2)
    return Flow([AffineCoupling(checkerboard_mask(shape, k % 2), conv_net(c, hidden)) for k in range(3)]
                + [Squeeze()]
                + [AffineCoupling(channel_mask(squeezed, k % 2), conv_net(4 * c, hidden)) for k in range(3)]
                + [FactorOut(_realnvp_scale((2 * c, h // 2, w // 2), 2 * hidden, scales - 1)), Inverse(Squeeze())])


def glow_image(shape: tuple, hidden: int = 32, scales: int = 2, steps: int = 4, lu: bool = True) -> Flow:
    """Glow (Kingma & Dhariwal 2018, fig. 2; its L levels are `scales` here, as in RealNVP, since `levels`
    are grey levels) after the logit transform: per level squeeze, K steps of (actnorm, invertible 1x1 conv,
    affine coupling on half the channels), split off half (not at the last level); each level unsqueezes
    at its end."""
    return Flow([LogitTransform(), _glow_level(tuple(shape), hidden, scales, steps, lu)], StandardNormal(shape))


def _glow_level(shape: tuple, hidden: int, scales: int, steps: int, lu: bool) -> Flow:
    c, h, w = shape
    squeezed = (4 * c, h // 2, w // 2)
    layers: list = [Squeeze()]
    for _ in range(steps):
        layers += [ActNorm(4 * c), Invertible1x1Conv(4 * c, lu),
                   AffineCoupling(channel_mask(squeezed, 0), conv_net(4 * c, hidden))]
    if scales > 1 and (h // 2) % 2 == 0:
        layers.append(FactorOut(_glow_level((2 * c, h // 2, w // 2), hidden, scales - 1, steps, lu)))
    return Flow(layers + [Inverse(Squeeze())])


# ---------------------------------------------------------------------------------------------------------
# Recipes for the shared training loop
# ---------------------------------------------------------------------------------------------------------


class FlowRecipe(Recipe):
    """Maximum likelihood, loss = -mean log p(x). Points are modelled as they are; images are dequantized
    per batch, y = (k + u) / L on the data's L grey levels, and the flow starts with the logit transform, so
    -log P(k) <= -log p(y) + D log L (Theis et al. 2016): `evaluate` reports that NLL in nats per example and
    bits/dim (`metrics.likelihood_metrics`). A subclass builds its flow for the data and passes it on.
    Options: lr, temperature (for `sample`), and the architecture's own."""

    default_dataset = "moons"
    default_epochs = 20

    def __init__(self, spec, flow: Flow, lr: float = 1e-3, temperature: float = 1.0):
        self.spec, self.flow, self.temperature = spec, flow, temperature
        self.optimizer = optim.Adam(self.flow.parameters(), lr=lr)

    def modules(self) -> dict:
        return {"flow": self.flow}

    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer}

    def nll(self, x: Tensor) -> Tensor:
        """-log p per example in nats: of the dequantized pixels y for images, of the points otherwise."""
        return -self.flow.log_prob(dequantize_batch(x, self.spec.levels) if self.spec.is_image else x)

    def step(self, batch, t: int) -> dict:
        self.flow.train()
        loss = self.nll(batch[0]).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"nll": likelihood_metrics(loss.item(), self.spec)["nll"]}

    def evaluate(self, loader) -> dict:
        self.flow.eval()
        with no_grad():
            nll = np.concatenate([backend.to_device(self.nll(b[0]).data, "cpu") for b in loader])
        return likelihood_metrics(float(nll.mean()), self.spec)

    def sample(self, n: int) -> np.ndarray:
        x = self.flow.sample(n, self.temperature).numpy()
        return np.clip(x, 0, 1) if self.spec.is_image else x


class RealNVPRecipe(FlowRecipe):
    """`minigen train realnvp`: couplings with alternating masks on points, the multiscale model on images."""
    name = "realnvp"

    def __init__(self, spec, hidden: int = 64, couplings: int = 8, scales: int = 2, **options):
        flow = realnvp_image(spec.shape, hidden, scales) if spec.is_image else realnvp_2d(hidden, couplings)
        super().__init__(spec, flow, **options)


class NICERecipe(FlowRecipe):
    """`minigen train nice`: additive couplings and the diagonal scaling (points)."""
    name = "nice"
    kinds = ("continuous",)

    def __init__(self, spec, hidden: int = 64, couplings: int = 4, **options):
        super().__init__(spec, nice_2d(hidden, couplings), **options)


class GlowRecipe(FlowRecipe):
    """`minigen train glow`: actnorm, invertible 1x1 convolution (LU by default), affine coupling."""
    name = "glow"

    def __init__(self, spec, hidden: int = 64, steps: int = 8, scales: int = 2, lu: bool = True, **options):
        flow = glow_image(spec.shape, hidden, scales, steps, lu) if spec.is_image else glow_2d(hidden, steps, lu)
        super().__init__(spec, flow, **options)


class MAFRecipe(FlowRecipe):
    """`minigen train maf`: MADE layers on flattened data (images: after the logit transform)."""
    name = "maf"

    def __init__(self, spec, hidden: int = 64, layers: int = 5, **options):
        flow = maf(spec.dim, hidden, layers)
        if spec.is_image:
            flow = Flow([LogitTransform(), Flatten(spec.shape)] + list(flow.bijectors), flow.base)
        super().__init__(spec, flow, **options)


def energy_flow(kind: str, target: str, length: int = 32, hidden: int = 32) -> Flow:
    """K planar, radial or IAF layers from N(0, I) in 2-D, followed for U2-U4 by `StripSquash` onto their
    support |x1| <= 4. Radial layers only move mass near their centres and cannot rescale the plane, so
    they sit between two elementwise affine maps (`Scaling` with a shift): the first makes the base a learned
    diagonal Gaussian, the last sets the scale of the plane that the squash maps onto the strip."""
    make = {"planar": lambda: Planar(2), "radial": lambda: Radial(2), "iaf": lambda: IAF(2, hidden)}[kind]
    layers = [make() for _ in range(length)]
    if kind == "iaf":
        layers = [m for layer in layers for m in (layer, Reverse())][:-1]
    if kind == "radial":
        layers = [Scaling((2,), shift=True)] + layers + [Scaling((2,), shift=True)]
    squash = [] if target == "u1" else [StripSquash(ENERGY_Z1_MAX)]
    return Flow(squash + layers, StandardNormal((2,)))


class EnergyRecipe(Recipe):
    """Reverse KL to p = exp(-U) / Z (Rezende & Mohamed 2015, sec. 6.1): loss = E_q[log q(x) + U(x)] over
    samples of the flow, = KL(q || p) - log Z >= -log Z. The energy is annealed, beta_t U with
    beta_t = min(1, 0.1 + t / anneal_steps) (the paper's schedule, started at 0.1), so that q spreads over
    all modes before it tightens. `evaluate` reports the loss at beta = 1 on 10^5 samples with its standard
    error and its floor -log Z (quadrature, `minigen.data.energy_log_partition`). The data batches are not
    used.
    Options: target (u1..u4), length (K), lr, batch, anneal_steps."""

    default_dataset = "moons"
    default_epochs = 20
    kind = "planar"

    def __init__(self, spec, target: str = "u1", length: int = 32, lr: float = 1e-3, batch: int = 256,
                 anneal_steps: int = 2000):
        if target not in ENERGIES:
            raise ValueError(f"target must be one of {', '.join(ENERGIES)}, got {target!r}")
        self.target, self.batch, self.anneal_steps = target, batch, anneal_steps
        self.energy = ENERGIES[target]
        self.flow = energy_flow(self.kind, target, length)
        self.optimizer = optim.Adam(self.flow.parameters(), lr=lr)

    def modules(self) -> dict:
        return {"flow": self.flow}

    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer}

    def terms(self, n: int, beta: float = 1.0) -> Tensor:
        """log q(x) + beta U(x) for n samples x of the flow; their mean is the loss."""
        x, log_q = self.flow.sample_with_log_prob(n)
        return log_q + beta * self.energy(x)

    def step(self, batch, t: int) -> dict:
        beta = min(1.0, 0.1 + (t - 1) / self.anneal_steps)
        loss = self.terms(self.batch, beta).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "beta": beta}

    def evaluate(self, loader) -> dict:
        """The loss on 10^5 samples (its standard error, `loss_se`, about 10^-3) and the floor -log Z."""
        with no_grad():
            terms = self.terms(100000).numpy()
        return {"loss": float(terms.mean()), "loss_se": float(terms.std() / math.sqrt(len(terms))),
                "floor": -energy_log_partition(self.energy)}

    def sample(self, n: int) -> np.ndarray:
        return self.flow.sample(n).numpy()


class PlanarRecipe(EnergyRecipe):
    """`minigen train planar --opt target=u2`: K planar flows fitted by reverse KL."""
    name, kind = "planar", "planar"


class RadialRecipe(EnergyRecipe):
    """`minigen train radial --opt target=u1`: K radial flows fitted by reverse KL."""
    name, kind = "radial", "radial"


class IAFRecipe(EnergyRecipe):
    """`minigen train iaf --opt target=u3`: IAF layers fitted by reverse KL (one-pass sampling with log q)."""
    name, kind = "iaf", "iaf"
