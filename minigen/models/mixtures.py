"""Mixture models fitted by expectation-maximization (Dempster, Laird & Rubin 1977): a Gaussian mixture with
full or diagonal covariances, and a mixture of Bernoullis for binary images.

    p(x) = sum_k pi_k p(x | theta_k),      log p(x) = logsumexp_k [log pi_k + log p(x | theta_k)]

E step, in log space: the responsibilities r_nk = p(k | x_n) = exp(log pi_k + log p(x_n | theta_k) - log p(x_n))
(Bishop 2006, eq. 9.23), from which the weighted sufficient statistics, averaged over the n examples,

    N_k = 1/n sum_n r_nk,    S1_k = 1/n sum_n r_nk x_n,    S2_k = 1/n sum_n r_nk x_n x_n^T (or its diagonal).

M step, in closed form: pi_k = N_k, mu_k = S1_k / N_k, Sigma_k = S2_k / N_k - mu_k mu_k^T (Bishop eq. 9.24-9.26);
a Bernoulli component's pixel probabilities are p_k = S1_k / N_k. An EM iteration never decreases the
log-likelihood (Bishop sec. 9.4). Two safeguards keep the parameters finite: `reg` I is added to every
covariance (scikit-learn's reg_covar; with reg > 0 the M step is no longer exact and the guarantee holds only
up to that perturbation), and Bernoulli probabilities are kept in [min_prob, 1 - min_prob] (the exact M step
over that box: each pixel's objective is concave in p_kd, so its constrained maximum is the clipped one).

Initialization: k-means++ seeding (Arthur & Vassilvitskii 2007) picks K examples as centres, a few k-means
(Lloyd) iterations move them, and one M step on the hard assignment of each example to its nearest centre
gives the first parameters (scikit-learn's default).

In the `minigen train` loop a step is one step of stepwise EM (Liang & Klein 2009; Cappé & Moulines 2009) on
the batch it is given: the running statistics move towards the batch's, s <- (1 - rho_t) s + rho_t s_batch with
rho_t = (t + 1)^(-kappa), and the M step follows. With kappa = 0 and the whole training set as one batch
(`--batch-size` at least the training set's size) each step is one iteration of classic (full-batch) EM.
All EM arithmetic is in float64, on the data's device.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, nn
from ..data.spec import DataSpec
from ..distributions import LOG_2PI
from ..metrics import likelihood_metrics
from ..ops import logsumexp
from ..tensor import Tensor
from ..train import Recipe


def draw_index(weights, n: int, gen):
    """n indices drawn with probabilities proportional to the non-negative `weights`, by inverting the
    cumulative sum on uniform draws from `gen` (any device)."""
    xp = backend.get_array_module(weights)
    cdf = xp.cumsum(weights)
    u = gen.random(n) * cdf[-1]
    return xp.minimum(xp.searchsorted(cdf, u, side="right"), len(weights) - 1)


def kmeans_pp(x, K: int, gen):
    """K rows of x (n, D) as centres by k-means++: the first uniformly, each next one with probability
    proportional to its squared distance to the nearest centre chosen so far."""
    xp = backend.get_array_module(x)
    centres = [x[int(draw_index(xp.ones(len(x)), 1, gen)[0])]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(K - 1):
        c = x[int(draw_index(d2, 1, gen)[0])]
        centres.append(c)
        d2 = xp.minimum(d2, ((x - c) ** 2).sum(axis=1))
    return xp.stack(centres)


class Mixture(nn.Module):
    """K components with weights pi_k (kept as log_pi): the log-likelihood, the E step, k-means++
    initialization, classic EM and ancestral sampling. A subclass gives its components' log-densities, the
    statistics its M step needs, the M step, and how to sample a component. Parameters are float64 buffers."""

    def __init__(self, dim: int, components: int):
        super().__init__()
        self.dim, self.components = dim, components
        self.register_buffer("log_pi", Tensor(np.full(components, -math.log(components))))

    def component_log_prob(self, x):
        """log p(x_n | theta_k), (n, K)."""
        raise NotImplementedError

    def statistics(self, x, r) -> dict:
        """The responsibility-weighted sufficient statistics of x (n, D) under r (n, K), averaged over n."""
        raise NotImplementedError

    def m_step(self, stats: dict) -> None:
        raise NotImplementedError

    def sample_component(self, k):
        """One draw x_n ~ p(x | theta_{k_n}) for every index in k (n,)."""
        raise NotImplementedError

    def log_joint(self, x):
        """log pi_k + log p(x_n | theta_k), (n, K)."""
        return self.log_pi.data + self.component_log_prob(x)

    def log_prob(self, x):
        """log p(x_n) in nats, (n,), for x (n, D) float64 on the model's device."""
        return logsumexp(Tensor(self.log_joint(x)), axis=1).data

    def e_step(self, x) -> tuple:
        """(log p(x_n) (n,), the statistics of x under the responsibilities r_nk = p(k | x_n))."""
        a = self.log_joint(x)
        log_p = logsumexp(Tensor(a), axis=1).data
        r = backend.get_array_module(a).exp(a - log_p[:, None])           # Bishop eq. 9.23, in log space
        return log_p, self.statistics(x, r)

    def initialize(self, x, gen, lloyd: int = 10) -> dict:
        """k-means++ centres refined by `lloyd` k-means (Lloyd) iterations, then one M step on the hard
        assignment of every example to its nearest centre; returns the statistics of that assignment."""
        xp = backend.get_array_module(x)

        def assign(centres):                              # one-hot rows: each example's nearest centre
            return xp.eye(self.components)[((x[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)]

        centres = kmeans_pp(x, self.components, gen)
        for _ in range(lloyd):
            r = assign(centres)
            count = r.sum(axis=0)[:, None]
            centres = xp.where(count > 0, r.T @ x / xp.maximum(count, 1), centres)    # an empty cluster stays
        stats = self.statistics(x, assign(centres))
        self.m_step(stats)
        return stats

    def fit(self, x, iterations: int, restarts: int = 1, gen=None) -> list[float]:
        """Classic EM on all of x (n, D): k-means++ initialization, then `iterations` E and M steps, from
        `restarts` initializations, keeping the one of highest final log-likelihood (EM finds a local
        maximum). Returns its mean log-likelihood after initialization and after every iteration."""
        x = _float64(x, self.log_pi.device)
        gen = gen or backend.generator(self.log_pi.device)
        best_trace, best_state = None, None
        for _ in range(restarts):
            self.initialize(x, gen)
            trace = []
            for _ in range(iterations):
                log_p, stats = self.e_step(x)
                trace.append(float(log_p.mean()))
                self.m_step(stats)
            trace.append(float(self.log_prob(x).mean()))
            if best_trace is None or trace[-1] > best_trace[-1]:
                best_trace, best_state = trace, self.state_dict()
        self.load_state_dict(best_state)
        return best_trace

    def sample(self, n: int):
        """Ancestral sampling: k ~ Categorical(pi), then x ~ p(x | theta_k); (n, D) on the model's device."""
        xp = backend.get_array_module(self.log_pi.data)
        gen = backend.generator(self.log_pi.device)
        return self.sample_component(draw_index(xp.exp(self.log_pi.data), n, gen))

    def _set(self, **buffers) -> None:
        for name, value in buffers.items():
            getattr(self, name).data = value


class GaussianMixture(Mixture):
    """Mixture of Gaussians N(mu_k, Sigma_k) with full (K, D, D) or diagonal (K, D) covariances."""

    def __init__(self, dim: int, components: int, covariance: str = "full", reg: float = 1e-6):
        if covariance not in ("full", "diag"):
            raise ValueError(f"covariance must be 'full' or 'diag', got {covariance!r}")
        super().__init__(dim, components)
        self.covariance, self.reg = covariance, reg
        self.register_buffer("mu", Tensor(np.zeros((components, dim))))
        cov = np.tile(np.eye(dim), (components, 1, 1)) if covariance == "full" else np.ones((components, dim))
        self.register_buffer("cov", Tensor(cov))

    def component_log_prob(self, x):
        """log N(x; mu_k, Sigma_k) = -1/2 [D log 2 pi + log |Sigma_k| + (x - mu_k)^T Sigma_k^-1 (x - mu_k)];
        with Sigma_k = L_k L_k^T (Cholesky) the quadratic form is |L_k^-1 (x - mu_k)|^2 and log |Sigma_k| =
        2 sum_i log L_k,ii."""
        xp = backend.get_array_module(x)
        diff = x[:, None, :] - self.mu.data[None]                                 # (n, K, D)
        if self.covariance == "diag":
            var = self.cov.data
            maha, log_det = (diff ** 2 / var).sum(axis=2), xp.log(var).sum(axis=1)
        else:
            L = xp.linalg.cholesky(self.cov.data)
            y = xp.einsum("kij,nkj->nki", xp.linalg.inv(L), diff)
            maha = (y ** 2).sum(axis=2)
            log_det = 2 * xp.log(xp.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        return -0.5 * (self.dim * LOG_2PI + log_det + maha)

    def statistics(self, x, r) -> dict:
        xp = backend.get_array_module(x)
        n = len(x)
        S2 = r.T @ (x * x) if self.covariance == "diag" else xp.einsum("nk,nd,ne->kde", r, x, x)
        return {"N": r.mean(axis=0), "S1": r.T @ x / n, "S2": S2 / n}

    def m_step(self, stats: dict) -> None:
        """Bishop eq. 9.24-9.26, plus reg I on each covariance."""
        xp = backend.get_array_module(stats["N"])
        N = stats["N"] + 10 * np.finfo(np.float64).eps           # an empty component stays finite
        mu = stats["S1"] / N[:, None]
        if self.covariance == "diag":
            cov = stats["S2"] / N[:, None] - mu ** 2 + self.reg
        else:
            cov = stats["S2"] / N[:, None, None] - mu[:, :, None] * mu[:, None, :] + self.reg * xp.eye(self.dim)
        self._set(log_pi=xp.log(N / N.sum()), mu=mu, cov=cov)

    def sample_component(self, k):
        xp = backend.get_array_module(k)
        eps = backend.generator(self.mu.device).standard_normal((len(k), self.dim))
        if self.covariance == "diag":
            return self.mu.data[k] + xp.sqrt(self.cov.data[k]) * eps
        L = xp.linalg.cholesky(self.cov.data)
        return self.mu.data[k] + xp.einsum("nij,nj->ni", L[k], eps)


class BernoulliMixture(Mixture):
    """Mixture of independent Bernoullis over D binary pixels, p(x | k) = prod_d p_kd^x_d (1 - p_kd)^(1 - x_d)."""

    def __init__(self, dim: int, components: int, min_prob: float = 1e-3):
        super().__init__(dim, components)
        self.min_prob = min_prob
        self.register_buffer("p", Tensor(np.full((components, dim), 0.5)))

    def component_log_prob(self, x):
        """sum_d x_d log p_kd + (1 - x_d) log(1 - p_kd), for every (n, k) pair as two matrix products."""
        xp = backend.get_array_module(x)
        return x @ xp.log(self.p.data).T + (1 - x) @ xp.log1p(-self.p.data).T

    def statistics(self, x, r) -> dict:
        return {"N": r.mean(axis=0), "S1": r.T @ x / len(x)}

    def m_step(self, stats: dict) -> None:
        """pi_k = N_k, p_k = S1_k / N_k kept in [min_prob, 1 - min_prob] (Bishop eq. 9.59-9.60)."""
        xp = backend.get_array_module(stats["N"])
        N = stats["N"] + 10 * np.finfo(np.float64).eps
        p = xp.clip(stats["S1"] / N[:, None], self.min_prob, 1 - self.min_prob)
        self._set(log_pi=xp.log(N / N.sum()), p=p)

    def sample_component(self, k):
        u = backend.generator(self.p.device).random((len(k), self.dim))
        return (u < self.p.data[k]).astype(np.float64)


def _float64(x, device: str):
    """A batch (Tensor or array, any shape (n, ...)) as a float64 (n, D) array on `device`."""
    data = x.data if isinstance(x, Tensor) else x
    data = backend.to_device(data, device)
    return data.reshape(len(data), -1).astype(np.float64)


class EMRecipe(Recipe):
    """A mixture trained by stepwise EM (see the module docstring): step t does an E step on the batch,
    blends its statistics into the running ones with rho_t = (t + 1)^(-kappa) and does the M step; the first
    step initializes by k-means++ on its batch. The running statistics are the extra state a resume needs.
    Reports the batch's mean log-likelihood before the update; evaluation gives the exact test NLL."""

    def __init__(self, spec: DataSpec, model: Mixture, kappa: float):
        self.spec, self.model, self.kappa = spec, model, kappa
        self.stats: dict = {}

    def modules(self) -> dict:
        return {"model": self.model}

    def step(self, batch, t: int) -> dict:
        x = _float64(batch[0], self.spec.device)
        if t == 1:
            self.stats = self.model.initialize(x, backend.generator(self.spec.device))
        log_p, batch_stats = self.model.e_step(x)
        rho = (t + 1) ** -self.kappa
        self.stats = {k: (1 - rho) * s + rho * batch_stats[k] for k, s in self.stats.items()}
        self.model.m_step(self.stats)
        return {"log_likelihood": float(log_p.mean())}

    def evaluate(self, loader) -> dict:
        log_p = np.concatenate([backend.to_device(self.model.log_prob(_float64(b[0], self.spec.device)), "cpu")
                                for b in loader])
        return likelihood_metrics(float(-log_p.mean()), self.spec, density=False)

    def sample(self, n: int) -> np.ndarray:
        x = backend.to_device(self.model.sample(n), "cpu")
        return x.reshape((n,) + self.spec.shape).astype(np.float32)

    def extra_state(self) -> dict:
        return {"stats": self.stats}

    def load_extra_state(self, state: dict) -> None:
        self.stats = {k: backend.to_device(v, self.spec.device) for k, v in state.get("stats", {}).items()}


class GMMRecipe(EMRecipe):
    """`minigen train gmm`: a Gaussian mixture on 2-D points (or any real vectors) by stepwise EM.
    Options: components K, covariance 'full' | 'diag', reg (added to every covariance), kappa (the
    step-size decay; 0 with a full batch is classic EM)."""

    name = "gmm"
    default_dataset = "8gaussians"
    default_epochs = 2.0
    kinds = ("continuous",)

    def __init__(self, spec: DataSpec, components: int = 8, covariance: str = "full", reg: float = 1e-6,
                 kappa: float = 0.6):
        super().__init__(spec, GaussianMixture(spec.dim, components, covariance, reg), kappa)


class BernoulliMixtureRecipe(EMRecipe):
    """`minigen train bernoulli-mixture`: a mixture of Bernoullis on binary images by stepwise EM.
    Options: components K, min_prob (pixel probabilities kept in [min_prob, 1 - min_prob]), kappa."""

    name = "bernoulli-mixture"
    default_dataset = "binarized-digits"
    default_epochs = 20.0
    kinds = ("binary",)

    def __init__(self, spec: DataSpec, components: int = 20, min_prob: float = 1e-3, kappa: float = 0.6):
        super().__init__(spec, BernoulliMixture(spec.dim, components, min_prob), kappa)
