"""Probability distributions written in minigen operations, so that log-densities, entropies, KL
divergences and reparameterized samples all differentiate with respect to the parameters.

Shapes follow torch.distributions: a sample of `d.sample(shape)` has shape `shape + batch_shape +
event_shape`; `log_prob` sums over the event dimensions and returns `shape + batch_shape`. A Normal over
(B, D) means has batch_shape (B, D) and event_shape (); `Independent(Normal(...), 1)` reinterprets the last
batch dimension as an event dimension: batch (B,), event (D,), and its log_prob sums over D (a diagonal
Gaussian, as a VAE's encoder defines).

Log-densities are computed in log space: the Bernoulli's from its logits by -binary_cross_entropy_with_logits
and the Categorical's by log_softmax, finite in float32 for logits of +-1e4.

Random numbers come from `minigen.backend.generator(device)` (seeded by `minigen.manual_seed`).
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .ops import (binary_cross_entropy_with_logits, broadcast_to, exp, kl_normal, log, log1p, log_softmax,
                  sigmoid, softmax, softplus, squeeze, take_along_axis)
from .ops import abs as _abs
from .ops.losses import LOG_2PI
from .ops import sum as _sum
from .tensor import Tensor, as_tensor, no_grad

# ---------------------------------------------------------------------------------------------------------
# Base class: batch and event shapes, sampling under no_grad
# ---------------------------------------------------------------------------------------------------------


class Distribution:
    """A batch of distributions of identical type, each over `event_shape`-shaped values."""

    has_rsample = False

    def __init__(self, batch_shape: tuple = (), event_shape: tuple = ()):
        self.batch_shape = tuple(batch_shape)
        self.event_shape = tuple(event_shape)

    def _extended_shape(self, shape) -> tuple:
        return tuple(shape) + self.batch_shape + self.event_shape

    def sample(self, shape: tuple = ()) -> Tensor:
        """Samples of shape `shape + batch_shape + event_shape`, cut from the graph."""
        with no_grad():
            return self.rsample(shape)

    def rsample(self, shape: tuple = ()) -> Tensor:
        """Reparameterized samples x = g(params, noise): gradients flow into the parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no reparameterized sampler (rsample); use "
                                  "sample() with a score-function (REINFORCE) estimator or a relaxation")

    def log_prob(self, value) -> Tensor:
        raise NotImplementedError

    def entropy(self) -> Tensor:
        raise NotImplementedError

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no mean")

    @property
    def stddev(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no standard deviation")

    @property
    def variance(self) -> Tensor:
        return self.stddev ** 2

    def __repr__(self):
        return f"{type(self).__name__}(batch_shape={self.batch_shape}, event_shape={self.event_shape})"


def _params(*values) -> list[Tensor]:
    """Parameters as floating tensors broadcast to one shape; Python numbers take the dtype of the first
    tensor given (the default dtype if none is)."""
    like = next((v for v in values if isinstance(v, Tensor)), None)
    ts = [as_tensor(v, like=like) if like is not None else as_tensor(v) for v in values]
    ts = [t if t.dtype.kind == "f" else t.astype(backend.get_default_dtype()) for t in ts]
    shape = np.broadcast_shapes(*(t.shape for t in ts))
    return [broadcast_to(t, shape) for t in ts]


def _uniform_open(like: Tensor, shape: tuple):
    """Uniform noise in the open interval (0, 1), as an array on `like`'s device with its dtype."""
    u = backend.generator(like.device).random(shape, dtype=like.dtype)
    return backend.get_array_module(u).maximum(u, np.finfo(like.dtype).tiny)


# ---------------------------------------------------------------------------------------------------------
# The Gaussian log-density, written once
# ---------------------------------------------------------------------------------------------------------


def standard_normal_log_prob(z):
    """log N(z; 0, 1) = -(z^2 + log 2 pi) / 2 elementwise, for a Tensor or an array."""
    return -0.5 * (z * z + LOG_2PI)


def normal_log_prob(x, mu, log_var) -> Tensor:
    """log N(x; mu, exp(log_var)) = -(log 2 pi + log_var + (x - mu)^2 exp(-log_var)) / 2 elementwise: the
    standard density at z = (x - mu) exp(-log_var / 2), less log sigma = log_var / 2. In the log-variance, as
    a VAE's encoder and decoder give it."""
    return standard_normal_log_prob((x - mu) * exp(-0.5 * log_var)) - 0.5 * log_var


# ---------------------------------------------------------------------------------------------------------
# Location-scale families: x = loc + scale z with z from a fixed standard distribution
# ---------------------------------------------------------------------------------------------------------


class _LocationScale(Distribution):
    """x = loc + scale z, z drawn from a standard member of the family. Then

        log p(x) = log p0((x - loc) / scale) - log scale,   H = H0 + log scale,
        E x = loc + scale E z,   sd x = scale sd z,   and rsample = loc + scale z is reparameterized.

    A family gives its standard density p0 (`_standard_log_prob`), sampler, entropy H0, mean and sd.
    """

    has_rsample = True
    _standard_mean = 0.0
    _standard_stddev: float
    _standard_entropy: float

    def __init__(self, loc, scale):
        self.loc, self.scale = _params(loc, scale)
        super().__init__(self.loc.shape)

    def _standard_sample(self, shape: tuple):
        raise NotImplementedError

    def _standard_log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def rsample(self, shape: tuple = ()) -> Tensor:
        z = Tensor(self._standard_sample(self._extended_shape(shape)))
        return self.loc + self.scale * z

    def log_prob(self, value) -> Tensor:
        z = (as_tensor(value, like=self.loc) - self.loc) / self.scale
        return self._standard_log_prob(z) - log(self.scale)

    def entropy(self) -> Tensor:
        return log(self.scale) + self._standard_entropy

    @property
    def mean(self) -> Tensor:
        return self.loc + self.scale * self._standard_mean

    @property
    def stddev(self) -> Tensor:
        return self.scale * self._standard_stddev


class Normal(_LocationScale):
    """N(loc, scale^2) elementwise (a diagonal Gaussian; wrap in Independent for a vector event).

    log p(x) = -(x - loc)^2 / (2 scale^2) - log scale - log(2 pi) / 2;  rsample = loc + scale eps,
    eps ~ N(0, 1) (the reparameterization trick, Kingma & Welling 2014, section 2.4).
    """

    _standard_stddev = 1.0
    _standard_entropy = 0.5 + 0.5 * LOG_2PI

    def _standard_sample(self, shape):
        return backend.generator(self.loc.device).standard_normal(shape, dtype=self.loc.dtype)

    def _standard_log_prob(self, z):
        return standard_normal_log_prob(z)


class Laplace(_LocationScale):
    """Laplace(loc, scale): p(x) = exp(-|x - loc| / scale) / (2 scale). Sampled by the inverse CDF:
    z = log(2u) for u < 1/2, -log(2 - 2u) otherwise, u ~ U(0, 1)."""

    _standard_stddev = math.sqrt(2.0)
    _standard_entropy = 1.0 + math.log(2.0)

    def _standard_sample(self, shape):
        u = _uniform_open(self.loc, shape)
        xp = backend.get_array_module(u)
        return xp.where(u < 0.5, xp.log(2 * u), -xp.log(2 - 2 * u))

    def _standard_log_prob(self, z):
        return -_abs(z) - math.log(2.0)


class Logistic(_LocationScale):
    """Logistic(loc, scale): CDF sigmoid((x - loc) / scale), so p0(z) = sigmoid(z) sigmoid(-z) and
    log p0(z) = -z - 2 softplus(-z). Sampled by the inverse CDF z = log u - log(1 - u), u ~ U(0, 1)."""

    _standard_stddev = math.pi / math.sqrt(3.0)
    _standard_entropy = 2.0

    def _standard_sample(self, shape):
        u = _uniform_open(self.loc, shape)
        xp = backend.get_array_module(u)
        return xp.log(u) - xp.log1p(-u)

    def _standard_log_prob(self, z):
        return -z - 2 * softplus(-z)


class Uniform(_LocationScale):
    """U[low, high): the location-scale family of U[0, 1) with loc = low, scale = high - low.
    log p(x) = -log(high - low) inside [low, high), -inf outside; rsample = low + (high - low) u."""

    _standard_mean = 0.5
    _standard_stddev = 1 / math.sqrt(12.0)
    _standard_entropy = 0.0

    def __init__(self, low, high):
        low, high = _params(low, high)
        super().__init__(low, high - low)
        self.low, self.high = low, high

    def _standard_sample(self, shape):
        return backend.generator(self.loc.device).random(shape, dtype=self.loc.dtype)

    def _standard_log_prob(self, z):
        xp = backend.get_array_module(z.data)
        inside = (z.data >= 0) & (z.data < 1)
        return Tensor(xp.where(inside, 0.0, -xp.inf).astype(z.dtype))


# ---------------------------------------------------------------------------------------------------------
# Discrete distributions, parameterized by logits
# ---------------------------------------------------------------------------------------------------------


class Bernoulli(Distribution):
    """Bernoulli with P(x = 1) = probs = sigmoid(logits); give exactly one of `logits` and `probs`.

    log p(x) = x log sigmoid(l) + (1 - x) log sigmoid(-l) = -binary_cross_entropy_with_logits(l, x),
    finite for any logit. Probabilities are turned into logits log p - log(1 - p), with p clamped into
    [tiny, 1 - eps] of its dtype so that 0 and 1 stay finite.
    """

    def __init__(self, logits=None, probs=None):
        if (logits is None) == (probs is None):
            raise ValueError("Bernoulli: give exactly one of logits and probs")
        if logits is None:
            (p,) = _params(probs)
            info = np.finfo(p.dtype)
            p = p.clip(float(info.tiny), 1 - float(info.eps))
            logits = log(p) - log1p(-p)
        (self.logits,) = _params(logits)
        super().__init__(self.logits.shape)

    @property
    def probs(self) -> Tensor:
        return sigmoid(self.logits)

    def sample(self, shape: tuple = ()) -> Tensor:
        u = backend.generator(self.logits.device).random(self._extended_shape(shape), dtype=self.logits.dtype)
        return Tensor((u < self.probs.data).astype(self.logits.dtype))

    def log_prob(self, value) -> Tensor:
        logits, value = _params(self.logits, as_tensor(value, like=self.logits))
        return -binary_cross_entropy_with_logits(logits, value, reduction="none")

    def entropy(self) -> Tensor:
        return binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def stddev(self) -> Tensor:
        """sqrt(p (1 - p)) = exp(-(softplus(l) + softplus(-l)) / 2): in log space, so that its gradient is
        finite (and tends to 0) where p(1 - p) underflows."""
        return exp(-0.5 * (softplus(self.logits) + softplus(-self.logits)))


class Categorical(Distribution):
    """Categorical over {0, ..., K-1} with probabilities softmax(logits) along the last axis; batch_shape is
    logits.shape[:-1]. Kept as normalized log-probabilities log_softmax(logits).

    Sampled by the Gumbel-max trick: argmax_k (logits_k + G_k), G_k = -log(-log u_k) (Gumbel 1954;
    Maddison et al. 2014). Values are int64 tensors.
    """

    def __init__(self, logits):
        (logits,) = _params(logits)
        if logits.ndim < 1:
            raise ValueError("Categorical: logits need a last axis of categories")
        self.logits = log_softmax(logits, axis=-1)
        super().__init__(logits.shape[:-1])

    @property
    def num_categories(self) -> int:
        return self.logits.shape[-1]

    @property
    def probs(self) -> Tensor:
        return softmax(self.logits, axis=-1)

    def sample(self, shape: tuple = ()) -> Tensor:
        u = _uniform_open(self.logits, self._extended_shape(shape) + (self.num_categories,))
        xp = backend.get_array_module(u)
        return Tensor(xp.argmax(self.logits.data - xp.log(-xp.log(u)), axis=-1))

    def log_prob(self, value) -> Tensor:
        value = value.data if isinstance(value, Tensor) else value
        xp = backend.get_array_module(self.logits.data)
        value = xp.asarray(value)
        if value.dtype.kind not in "iu":
            raise TypeError(f"Categorical.log_prob: values must be integer categories, got {value.dtype}")
        shape = np.broadcast_shapes(value.shape, self.batch_shape)
        logits = broadcast_to(self.logits, shape + (self.num_categories,))
        index = xp.broadcast_to(value, shape)[..., None]
        return squeeze(take_along_axis(logits, index, axis=-1), -1)

    def entropy(self) -> Tensor:
        return -_sum(self.probs * self.logits, axis=-1)


# ---------------------------------------------------------------------------------------------------------
# Independent: batch dimensions reinterpreted as event dimensions
# ---------------------------------------------------------------------------------------------------------


class Independent(Distribution):
    """The product of `base`'s distributions over its last `reinterpreted_batch_ndims` batch dimensions,
    seen as one distribution over those dimensions: log p(x) = sum over them of base.log_prob(x)."""

    def __init__(self, base: Distribution, reinterpreted_batch_ndims: int):
        n = reinterpreted_batch_ndims
        if not 0 <= n <= len(base.batch_shape):
            raise ValueError(f"Independent: cannot reinterpret {n} of the {len(base.batch_shape)} batch "
                             "dimension(s) of the base distribution")
        self.base, self.reinterpreted_batch_ndims = base, n
        cut = len(base.batch_shape) - n
        super().__init__(base.batch_shape[:cut], base.batch_shape[cut:] + base.event_shape)
        self.has_rsample = base.has_rsample

    def _sum_event(self, x: Tensor) -> Tensor:
        n = self.reinterpreted_batch_ndims
        return _sum(x, axis=tuple(range(-n, 0))) if n else x

    def sample(self, shape: tuple = ()) -> Tensor:
        return self.base.sample(shape)

    def rsample(self, shape: tuple = ()) -> Tensor:
        return self.base.rsample(shape)

    def log_prob(self, value) -> Tensor:
        return self._sum_event(self.base.log_prob(value))

    def entropy(self) -> Tensor:
        return self._sum_event(self.base.entropy())

    @property
    def mean(self) -> Tensor:
        return self.base.mean

    @property
    def stddev(self) -> Tensor:
        return self.base.stddev


# ---------------------------------------------------------------------------------------------------------
# KL divergences in closed form
# ---------------------------------------------------------------------------------------------------------

_KL_REGISTRY: dict[tuple[type, type], object] = {}


def register_kl(type_p: type, type_q: type):
    """Decorator registering a closed form for KL(p || q) between distributions of these types."""
    def register(fn):
        _KL_REGISTRY[type_p, type_q] = fn
        return fn
    return register


def kl_divergence(p: Distribution, q: Distribution) -> Tensor:
    """KL(p || q) = E_p[log p(x) - log q(x)] in closed form, of shape batch_shape; dispatched on the
    types of p and q (their classes, then their base classes)."""
    for type_p in type(p).__mro__:
        for type_q in type(q).__mro__:
            fn = _KL_REGISTRY.get((type_p, type_q))
            if fn is not None:
                return fn(p, q)
    raise NotImplementedError(
        f"no closed-form KL divergence between {type(p).__name__} and {type(q).__name__} is known here; "
        "estimate it by Monte Carlo instead: (p.log_prob(x) - q.log_prob(x)).mean(axis=0) with x = p.rsample((n,))")


@register_kl(Normal, Normal)
def _kl_normal_normal(p: Normal, q: Normal) -> Tensor:
    """log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2: ops.kl_normal in the log-variances."""
    return kl_normal(p.loc, 2 * log(p.scale), q.loc, 2 * log(q.scale))


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli(p: Bernoulli, q: Bernoulli) -> Tensor:
    """pi (log pi - log rho) + (1 - pi)(log(1 - pi) - log(1 - rho)), with log sigmoid(l) = -softplus(-l) and
    log(1 - sigmoid(l)) = -softplus(l): finite for any logits."""
    pi = p.probs
    return (pi * (softplus(-q.logits) - softplus(-p.logits))
            + sigmoid(-p.logits) * (softplus(q.logits) - softplus(p.logits)))


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p: Categorical, q: Categorical) -> Tensor:
    """sum_k p_k (log p_k - log q_k)."""
    return _sum(p.probs * (p.logits - q.logits), axis=-1)


@register_kl(Independent, Independent)
def _kl_independent_independent(p: Independent, q: Independent) -> Tensor:
    """The KL of a product is the sum of the KLs of its factors."""
    if p.event_shape != q.event_shape or p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise NotImplementedError(f"KL between Independent distributions with event shapes {p.event_shape} "
                                  f"and {q.event_shape} (reinterpreting different dimensions)")
    return p._sum_event(kl_divergence(p.base, q.base))


__all__ = ["Distribution", "Normal", "Laplace", "Logistic", "Uniform", "Bernoulli", "Categorical",
           "Independent", "kl_divergence", "register_kl", "LOG_2PI", "standard_normal_log_prob", "normal_log_prob"]
