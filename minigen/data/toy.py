"""Two-dimensional test problems: samplers of the toy sets and the energy densities U1-U4.

Samplers follow FFJORD's toy data (Grathwohl et al. 2019, `lib/toy_data.py`), itself built on
scikit-learn's generators, except that every point is drawn independently from the stated generator
(components picked at random, angles drawn uniformly rather than on a grid), so a sample is an i.i.d. draw
from a known density. Each sampler takes `n` and `rng` (a NumPy Generator or a seed) and returns float32
(n, 2). U(0, 1) is uniform, N(0, s^2) Gaussian, and every sampler's generator is written in its docstring.

The 8 and 25 Gaussians are `GaussianMixture`s (`EIGHT_GAUSSIANS`, `TWENTY_FIVE_GAUSSIANS`) with an exact
`log_prob`; the checkerboard is uniform on `checkerboard_support`, so its density is exactly 1/32 there.

U1-U4 are the unnormalized densities p(z) ~ exp(-U(z)) of Rezende & Mohamed (2015), Table 1, written in
minigen ops so that they can be differentiated (reverse-KL training of a flow, Langevin samplers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..tensor import Tensor, no_grad

Rng = np.random.Generator | int | None


def _rng(rng: Rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Gaussian mixtures: density known exactly
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GaussianMixture:
    """Equal-weight mixture of isotropic Gaussians N(means[k], std^2 I) in 2-D."""
    means: np.ndarray   # (K, 2)
    std: float

    def sample(self, n: int, rng: Rng = None) -> np.ndarray:
        rng = _rng(rng)
        k = rng.integers(len(self.means), size=n)
        return _f32(self.means[k] + self.std * rng.standard_normal((n, 2)))

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log p(x) = logsumexp_k [-|x - mu_k|^2 / (2 std^2)] - log(2 pi std^2) - log K, in float64."""
        sq = ((np.asarray(x, np.float64)[:, None, :] - self.means) ** 2).sum(-1)
        a = -sq / (2 * self.std**2)
        m = a.max(axis=1)
        return m + np.log(np.exp(a - m[:, None]).sum(axis=1)) - math.log(2 * math.pi * self.std**2 * len(self.means))


_angles = np.arange(8) * math.pi / 4
# FFJORD: centers at radius 4 with std 0.5, all divided by 1.414; here by sqrt(2) exactly.
EIGHT_GAUSSIANS = GaussianMixture(2 * math.sqrt(2) * np.stack([np.cos(_angles), np.sin(_angles)], 1),
                                  0.5 / math.sqrt(2))
# WGAN-GP (Gulrajani et al. 2017): centers on the grid {-4, -2, 0, 2, 4}^2 with std 0.05, all divided by
# 2.828; here by 2 sqrt(2) exactly.
_grid = np.arange(-2, 3) * 2.0
TWENTY_FIVE_GAUSSIANS = GaussianMixture(np.stack(np.meshgrid(_grid, _grid, indexing="ij"), -1).reshape(-1, 2)
                                        / (2 * math.sqrt(2)), 0.05 / (2 * math.sqrt(2)))


def eight_gaussians(n: int, rng: Rng = None) -> np.ndarray:
    """`EIGHT_GAUSSIANS`: means 2 sqrt(2) (cos k pi/4, sin k pi/4), k = 0..7, std 0.5 / sqrt(2)."""
    return EIGHT_GAUSSIANS.sample(n, rng)


def twenty_five_gaussians(n: int, rng: Rng = None) -> np.ndarray:
    """`TWENTY_FIVE_GAUSSIANS`: means (2i, 2j) / (2 sqrt(2)), i, j in -2..2, std 0.05 / (2 sqrt(2))."""
    return TWENTY_FIVE_GAUSSIANS.sample(n, rng)


# ---------------------------------------------------------------------------------------------------------
# Checkerboard: uniform on 8 of the 16 squares of [-4, 4)^2
# ---------------------------------------------------------------------------------------------------------

def checkerboard(n: int, rng: Rng = None) -> np.ndarray:
    """FFJORD's checkerboard: x1 = 2 a, x2 = 2 (b - 2 c + (floor(a) mod 2)), a ~ U(-2, 2), b ~ U(0, 1),
    c ~ {0, 1}; i.e. uniform (density 1/32) on `checkerboard_support`."""
    rng = _rng(rng)
    a = rng.uniform(-2, 2, n)
    b = rng.random(n) - 2 * rng.integers(0, 2, n) + np.floor(a) % 2
    return _f32(2 * np.stack([a, b], 1))


def checkerboard_support(x: np.ndarray) -> np.ndarray:
    """True on the checkerboard's support: the 2x2 squares of [-4, 4)^2 with floor(x1/2) + floor(x2/2) even."""
    x = np.asarray(x)
    inside = ((x >= -4) & (x < 4)).all(axis=1)
    return inside & ((np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0)


def checkerboard_log_prob(x: np.ndarray) -> np.ndarray:
    """log(1/32) on `checkerboard_support`, -inf elsewhere (entropy: log 32)."""
    return np.where(checkerboard_support(x), -math.log(32), -np.inf)


# ---------------------------------------------------------------------------------------------------------
# Curves with Gaussian noise
# ---------------------------------------------------------------------------------------------------------

def two_moons(n: int, rng: Rng = None) -> np.ndarray:
    """scikit-learn's make_moons(noise=0.1) scaled as FFJORD's (x 2, shifted by (-1, -0.2)): with t ~ U(0, pi)
    and a fair coin, the point (cos t, sin t) (upper moon) or (1 - cos t, 0.5 - sin t) (lower moon), plus
    N(0, 0.1^2) noise per coordinate, then 2 x + (-1, -0.2)."""
    rng = _rng(rng)
    t, lower = rng.uniform(0, math.pi, n), rng.integers(0, 2, n).astype(bool)
    x = np.where(lower[:, None], np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1),
                 np.stack([np.cos(t), np.sin(t)], 1))
    return _f32(2 * (x + 0.1 * rng.standard_normal((n, 2))) + np.array([-1.0, -0.2]))


def circles(n: int, rng: Rng = None) -> np.ndarray:
    """scikit-learn's make_circles(factor=0.5, noise=0.08) scaled by 3 as FFJORD's: with t ~ U(0, 2 pi) and
    a fair coin, radius 3 or 1.5 times (cos t, sin t), plus N(0, 0.24^2) noise per coordinate."""
    rng = _rng(rng)
    t = rng.uniform(0, 2 * math.pi, n)
    radius = np.where(rng.integers(0, 2, n).astype(bool), 1.5, 3.0)
    return _f32(radius[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + 0.24 * rng.standard_normal((n, 2)))


def spirals(n: int, rng: Rng = None) -> np.ndarray:
    """FFJORD's 2spirals: r = 3 pi sqrt(u), u ~ U(0, 1); the arm s (-r cos r + 0.5 v1, r sin r + 0.5 v2) / 3
    with s = +-1 by a fair coin and v ~ U(0, 1)^2, plus N(0, 0.1^2) noise per coordinate."""
    rng = _rng(rng)
    r = 3 * math.pi * np.sqrt(rng.random(n))
    arm = np.stack([-r * np.cos(r), r * np.sin(r)], 1) + 0.5 * rng.random((n, 2))
    sign = np.where(rng.integers(0, 2, n).astype(bool), -1.0, 1.0)
    return _f32(sign[:, None] * arm / 3 + 0.1 * rng.standard_normal((n, 2)))


def swiss_roll(n: int, rng: Rng = None) -> np.ndarray:
    """scikit-learn's make_swiss_roll(noise=1.0) seen from above, / 5 as FFJORD's: t = 1.5 pi (1 + 2 u),
    u ~ U(0, 1), the point (t cos t, t sin t) plus N(0, 1) noise per coordinate, all divided by 5."""
    rng = _rng(rng)
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    return _f32((np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.standard_normal((n, 2))) / 5)


TOY_DATASETS = {"moons": two_moons, "circles": circles, "8gaussians": eight_gaussians,
                "25gaussians": twenty_five_gaussians, "checkerboard": checkerboard, "spirals": spirals,
                "swissroll": swiss_roll}


def sample_toy(name: str, n: int, rng: Rng = None) -> np.ndarray:
    """`n` points of the toy set `name` (a key of `TOY_DATASETS`), float32 (n, 2)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose from {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, rng)


# ---------------------------------------------------------------------------------------------------------
# Energy densities of Rezende & Mohamed (2015), Table 1: p(z) ~ exp(-U(z))
# ---------------------------------------------------------------------------------------------------------
# Support convention. U1 is integrable on R^2. U2-U4 constrain z2 only and do not decay in z1, so exp(-U)
# is not integrable on R^2; as in the paper's figures (which show [-4, 4]^2) their target density is
# exp(-U) restricted to the strip |z1| <= ENERGY_Z1_MAX = 4, z2 unrestricted (U4's lower branch reaches
# z2 = -4 near z1 = 3, so a box in z2 would cut mass). The functions return U everywhere; the strip enters
# only through `energy_log_partition`.

ENERGY_Z1_MAX = 4.0


def _w1(z1: Tensor) -> Tensor:
    return (math.pi / 2 * z1).sin()                                  # sin(2 pi z1 / 4)


def _w2(z1: Tensor) -> Tensor:
    return 3 * (-0.5 * ((z1 - 1) / 0.6) ** 2).exp()


def _w3(z1: Tensor) -> Tensor:
    return 3 * ((z1 - 1) / 0.3).sigmoid()


def _neg_log_sum_exp(a: Tensor, b: Tensor) -> Tensor:
    """-log(e^a + e^b), computed stably."""
    return -ops.stack([a, b], axis=-1).logsumexp(axis=-1)


def u1(z: Tensor) -> Tensor:
    """U1(z) = 1/2 ((|z| - 2) / 0.4)^2 - log(exp(-1/2 ((z1 - 2)/0.6)^2) + exp(-1/2 ((z1 + 2)/0.6)^2))."""
    z1, z2 = z[:, 0], z[:, 1]
    ring = 0.5 * (((z1**2 + z2**2).sqrt() - 2) / 0.4) ** 2
    return ring + _neg_log_sum_exp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)


def u2(z: Tensor) -> Tensor:
    """U2(z) = 1/2 ((z2 - w1(z)) / 0.4)^2, w1(z) = sin(2 pi z1 / 4)."""
    z1, z2 = z[:, 0], z[:, 1]
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2


def u3(z: Tensor) -> Tensor:
    """U3(z) = -log(exp(-1/2 ((z2 - w1)/0.35)^2) + exp(-1/2 ((z2 - w1 + w2)/0.35)^2)),
    w2(z) = 3 exp(-1/2 ((z1 - 1)/0.6)^2)."""
    z1, z2 = z[:, 0], z[:, 1]
    d = z2 - _w1(z1)
    return _neg_log_sum_exp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + _w2(z1)) / 0.35) ** 2)


def u4(z: Tensor) -> Tensor:
    """U4(z) = -log(exp(-1/2 ((z2 - w1)/0.4)^2) + exp(-1/2 ((z2 - w1 + w3)/0.35)^2)),
    w3(z) = 3 sigmoid((z1 - 1)/0.3)."""
    z1, z2 = z[:, 0], z[:, 1]
    d = z2 - _w1(z1)
    return _neg_log_sum_exp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + _w3(z1)) / 0.35) ** 2)


ENERGIES = {"u1": u1, "u2": u2, "u3": u3, "u4": u4}


def energy_log_partition(u, z2_max: float = 10.0, step: float = 0.01) -> float:
    """log Z = log of the integral of exp(-U) over |z1| <= 4, |z2| <= z2_max (the support convention above;
    z2_max = 10 holds all of the mass to float precision), by the midpoint rule on a grid of `step`."""
    z1 = np.arange(-ENERGY_Z1_MAX + step / 2, ENERGY_Z1_MAX, step)
    z2 = np.arange(-z2_max + step / 2, z2_max, step)
    grid = np.stack(np.meshgrid(z1, z2, indexing="ij"), -1).reshape(-1, 2)
    with no_grad():
        neg_u = -u(Tensor(grid)).numpy()
    m = neg_u.max()
    return float(m + np.log(np.exp(neg_u - m).sum()) + 2 * math.log(step))
