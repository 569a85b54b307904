"""The Gaussian image model: every example flattened to a vector x in R^D and modelled as x ~ N(mu, Sigma).

Maximum likelihood is closed form: mu is the sample mean and Sigma the sample covariance, whose
eigen-decomposition Sigma = E Lambda E^T (columns of E the principal directions) gives samples
x = mu + E Lambda^(1/2) z with z ~ N(0, I). Keeping only the top k directions is probabilistic PCA
(Tipping & Bishop 1999): Sigma = E_k (Lambda_k - sigma^2 I) E_k^T + sigma^2 I, where the maximum-likelihood
sigma^2 is the mean of the D - k discarded eigenvalues, so
    log p(x) = -1/2 [ D log 2 pi + sum_{i<=k} log lambda_i + (D - k) log sigma^2
                      + sum_{i<=k} y_i^2 / lambda_i + sum_{i>k} y_i^2 / sigma^2 ],   y = E^T (x - mu).
Training is one pass accumulating the sufficient statistics (count, sum x, sum x x^T) in float64.
"""
from __future__ import annotations

import numpy as np

from .. import backend, nn
from ..data.transforms import dequantize_batch
from ..distributions import LOG_2PI
from ..metrics import likelihood_metrics
from ..tensor import Tensor
from ..train import Recipe


class Gaussian(nn.Module):
    """N(mu, Sigma) on D-dimensional vectors, with Sigma restricted to k principal directions plus isotropic
    noise (k = D: the full covariance)."""

    def __init__(self, dim: int, components: int | None = None, min_variance: float = 1e-6):
        super().__init__()
        self.dim, self.components = dim, components or dim
        if not 1 <= self.components <= dim:
            raise ValueError(f"components must be in [1, {dim}], got {components}")
        self.min_variance = min_variance
        self.register_buffer("count", Tensor(np.zeros((), np.float64)))
        self.register_buffer("sum_x", Tensor(np.zeros(dim, np.float64)))
        self.register_buffer("sum_xx", Tensor(np.zeros((dim, dim), np.float64)))

    def accumulate(self, x) -> None:
        """Add a batch (n, D), an array on the model's device, to the sufficient statistics."""
        x = x.astype(np.float64)
        self.count.data = self.count.data + len(x)
        self.sum_x.data = self.sum_x.data + x.sum(axis=0)
        self.sum_xx.data = self.sum_xx.data + x.T @ x

    def fit(self):
        """mu, the eigenvalues (descending, top k then sigma^2 for the rest) and eigenvectors E (D, D)."""
        n = float(self.count.data)
        if n < 2:
            raise RuntimeError("the Gaussian model has seen fewer than 2 examples: train it first")
        xp = backend.get_array_module(self.sum_x.data)
        mu = self.sum_x.data / n
        cov = self.sum_xx.data / n - xp.outer(mu, mu)
        lam, e = xp.linalg.eigh(cov)
        lam, e = xp.maximum(lam[::-1], 0), e[:, ::-1]
        k = self.components
        if k < self.dim:
            lam = xp.concatenate([lam[:k], xp.full(self.dim - k, float(lam[k:].mean()))])
        return mu, xp.maximum(lam, self.min_variance), e

    def log_prob(self, x):
        """log N(x; mu, Sigma) per example, in nats (x and the result on the model's device)."""
        mu, lam, e = self.fit()
        y = (x.astype(np.float64) - mu) @ e
        return -0.5 * (self.dim * LOG_2PI + backend.get_array_module(lam).log(lam).sum()
                       + (y * y / lam).sum(axis=1))

    def sample(self, n: int):
        """x = mu + E Lambda^(1/2) z, z ~ N(0, I) from minigen's generator (on the model's device)."""
        mu, lam, e = self.fit()
        z = backend.generator(backend.device_of(mu)).standard_normal((n, self.dim))
        return mu + (z * lam ** 0.5) @ e.T


def _flat(x: Tensor):
    return x.data.reshape(len(x.data), -1)


class GaussianRecipe(Recipe):
    """`minigen train gaussian`: one pass over the data fits the model; evaluation reports the held-out NLL
    (nats per example) and bits per dimension. Grey levels are dequantized, y = (k + u) / L, so that the
    density bounds the probability of the levels as in the flows (`metrics.likelihood_metrics`)."""

    name = "gaussian"

    def __init__(self, spec, components: int | None = None):
        self.spec = spec
        self.model = Gaussian(spec.dim, components)

    def modules(self) -> dict:
        return {"model": self.model}

    def _points(self, x: Tensor):
        return _flat(dequantize_batch(x, self.spec.levels) if self.spec.kind == "levels" else x)

    def step(self, batch, t: int) -> dict:
        self.model.accumulate(self._points(batch[0]))
        return {"examples": float(self.model.count.data)}

    def evaluate(self, loader) -> dict:
        points = [self._points(b[0]) for b in loader]
        log_p = self.model.log_prob(backend.get_array_module(points[0]).concatenate(points))   # one eigh in all
        return likelihood_metrics(float(-log_p.mean()), self.spec)

    def sample(self, n: int) -> np.ndarray:
        return backend.to_device(self.model.sample(n), "cpu").reshape((n,) + self.spec.shape).astype(np.float32)
