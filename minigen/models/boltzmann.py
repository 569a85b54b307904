"""Boltzmann machines: the fully visible BM, the RBM (binary and Gaussian visible units), the DBN and the
DBM, trained by their data-minus-model statistics and evaluated by annealed importance sampling.

Every model here is an energy E over binary (or, for a Gaussian RBM's visible layer, real) units with
p(x) = exp(-E(x)) / Z. The gradient of the average log-likelihood of the data is a difference of two
expectations, "data minus model":

    d log p / d theta = < -dE/d theta >_data - < -dE/d theta >_model,

the first with the hidden units drawn (or mean-field approximated) given the data, the second under the
model, approximated by Gibbs chains: restarted at the data for k steps (contrastive divergence, CD-k,
Hinton 2002) or kept running across updates (persistent CD, Tieleman 2008). It is not the gradient of any
loss computed here, so the recipes hand it to an SGD optimizer as `.grad = -(data - model)` (for momentum and
weight decay) instead of back-propagating.

Z is a sum over 2^units states. It is computed exactly by enumeration where one layer has at most
`ENUMERABLE` units (the other summed out analytically), and otherwise estimated by annealed importance
sampling (AIS, Neal 2001; Salakhutdinov & Murray 2008) from a "base-rate" model whose visible biases match
the data's means. All arithmetic is on raw arrays of the parameters' array module (NumPy or CuPy); random
numbers come from `backend.generator` of the parameters' device, and every Gibbs chain is a batch of chains.
"""
from __future__ import annotations

import copy
import math
from typing import Iterator

import numpy as np

from .. import backend, nn, optim
from ..data import dequantize_batch
from ..distributions import LOG_2PI
from ..metrics import likelihood_metrics
from ..tensor import Tensor
from ..train import Recipe, save_samples

ENUMERABLE = 20            # the most binary units summed over exhaustively (2^20 states, in chunks)


# --- array helpers ------------------------------------------------------------------------------------------


def sigmoid(a):
    """1 / (1 + exp(-a)), written with tanh so that no exp overflows."""
    return 0.5 * (1 + backend.get_array_module(a).tanh(0.5 * a))


def softplus(a):
    """log(1 + exp(a)), exact for any a."""
    return backend.get_array_module(a).logaddexp(0, a)


def logsumexp(a, axis: int = 0):
    """log sum exp(a) along `axis`, shifted by the maximum."""
    xp = backend.get_array_module(a)
    m = a.max(axis=axis, keepdims=True)
    return (m + xp.log(xp.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def bernoulli(p):
    """Binary draws with probabilities p, from minigen's generator of p's device."""
    u = backend.generator(backend.device_of(p)).random(p.shape, dtype=p.dtype)
    return (u < p).astype(p.dtype)


def coin_flips(shape: tuple, like):
    """Fair binary draws of `shape`, of like's dtype and on its device: where chains start from noise."""
    return bernoulli(backend.get_array_module(like).full(shape, 0.5, like.dtype))


def gaussian(mean):
    """Draws from N(mean, I), from minigen's generator of mean's device."""
    return mean + backend.generator(backend.device_of(mean)).standard_normal(mean.shape, dtype=mean.dtype)


def entropy(mu):
    """The entropy in nats of independent Bernoulli units with means mu, summed over the last axis."""
    xp = backend.get_array_module(mu)
    eps = float(xp.finfo(mu.dtype).eps)
    mu = xp.clip(mu, eps, 1 - eps)
    return -(mu * xp.log(mu) + (1 - mu) * xp.log1p(-mu)).sum(axis=-1)


def binary_states(n: int, xp, dtype, chunk: int = 1 << 14) -> Iterator:
    """All 2^n binary vectors as rows, in blocks of at most `chunk` rows."""
    bits = xp.arange(n)
    for start in range(0, 2 ** n, chunk):
        index = xp.arange(start, min(start + chunk, 2 ** n))
        yield ((index[:, None] >> bits) & 1).astype(dtype)


def log_sum_states(log_f, n: int, xp, dtype, chunk: int = 1 << 14):
    """log sum_{s in {0,1}^n} exp(log_f(s)), where log_f maps a block of states (S, n) to (S, ...)."""
    if n > ENUMERABLE:
        raise ValueError(f"enumerating 2^{n} states is too many; exact sums stop at {ENUMERABLE} units")
    return logsumexp(xp.stack([logsumexp(log_f(s), 0) for s in binary_states(n, xp, dtype, chunk)]), 0)


def _anneal(a, beta: float, a_A):
    """beta a + (1 - beta) a_A: a natural parameter of the target mixed geometrically with the base's."""
    return a if beta == 1 else beta * a + (1 - beta) * a_A


def base_rate(mean, gaussian_visible: bool = False):
    """The base model's visible parameters from data means: the means themselves for Gaussian units, the
    log-odds of the (clipped) means for binary ones (Salakhutdinov & Murray 2008)."""
    if gaussian_visible:
        return mean
    xp = backend.get_array_module(mean)
    p = xp.clip(mean, 1e-3, 1 - 1e-3)
    return xp.log(p) - xp.log1p(-p)


def log_mean_exp(log_w) -> tuple[float, float]:
    """log mean exp(log_w) and its standard error by the delta method: sd(w) / (sqrt(R) mean(w))."""
    xp = backend.get_array_module(log_w)
    m = log_w.max()
    w = xp.exp(log_w - m)
    return float(m + xp.log(w.mean())), float(w.std(ddof=1) / (math.sqrt(len(w)) * w.mean()))


# --- annealed importance sampling ---------------------------------------------------------------------------


def ais_betas(n: int) -> list[float]:
    """n + 1 inverse temperatures 0 = beta_0 < ... < beta_n = 1 spaced as Salakhutdinov & Murray's 14,500
    (500 in [0, 0.5), 4,000 in [0.5, 0.9), 10,000 in [0.9, 1]), scaled to n."""
    n1, n2 = max(1, round(n * 500 / 14500)), max(1, round(n * 4000 / 14500))
    return np.concatenate([np.linspace(0, 0.5, n1, endpoint=False), np.linspace(0.5, 0.9, n2, endpoint=False),
                           np.linspace(0.9, 1, n - n1 - n2 + 1)]).tolist()


def ais(model, b_A, betas: list[float], runs: int) -> tuple[float, float]:
    """(log Z, its standard error) by annealed importance sampling (Neal 2001), in float64.

    `model` gives log p*_beta(x), the unnormalized log-probability of its AIS state x under the geometric
    path p_beta ∝ p_A^(1 - beta) p_model^beta from the base-rate model with visible parameters b_A
    (Salakhutdinov & Murray 2008); a Gibbs `transition(x, beta, b_A)` leaving p_beta invariant;
    `base_sample` and `base_log_Z` of p_0. With x_1 ~ p_0 and x_{k+1} ~ T_k(x_k), each run's weight
    w = prod_k p*_k(x_k) / p*_{k-1}(x_k) has E[w] = Z / Z_0, so log Z ~ log Z_0 + log mean w. All runs are
    one batch of chains."""
    model = copy.deepcopy(model).to(np.float64)
    b_A = b_A.astype(np.float64)
    x = model.base_sample(b_A, runs)
    log_w = backend.get_array_module(b_A).zeros(runs)
    for beta_prev, beta in zip(betas[:-1], betas[1:]):
        log_w += model.log_p_star(x, beta, b_A) - model.log_p_star(x, beta_prev, b_A)
        x = model.transition(x, beta, b_A)
    log_mean, se = log_mean_exp(log_w)
    return model.base_log_Z(b_A) + log_mean, se


# --- fully visible Boltzmann machine ------------------------------------------------------------------------


class BoltzmannMachine(nn.Module):
    """p(x) = exp(x^T W x / 2 + b^T x) / Z on x in {0, 1}^D, with W symmetric and zero on the diagonal.

    Each pair i < j has one weight w_ij = w_ji; d log p(x) / d w_ij = x_i x_j and d / d b_i = x_i, so the
    gradient of the average log-likelihood is <x_i x_j>_data - <x_i x_j>_model and <x_i>_data - <x_i>_model
    (Ackley, Hinton & Sejnowski 1985). The model statistics are exact by enumeration for D <= ENUMERABLE.
    The AIS state is x itself."""

    def __init__(self, dim: int):
        super().__init__()
        self.W = nn.Parameter(np.zeros((dim, dim), backend.get_default_dtype()))
        self.b = nn.Parameter(np.zeros(dim, backend.get_default_dtype()))

    def log_p_star(self, x, beta: float = 1.0, b_A=None):
        """beta (x^T W x / 2 + b^T x) + (1 - beta) b_A^T x, per row of x."""
        return 0.5 * beta * ((x @ self.W.data) * x).sum(-1) + x @ _anneal(self.b.data, beta, b_A)

    def transition(self, x, beta: float = 1.0, b_A=None):
        """One Gibbs sweep, unit by unit: x_i ~ Bernoulli(sigmoid(b_i + sum_j w_ij x_j)) at inverse
        temperature beta."""
        x = x.copy()
        for i in range(x.shape[1]):
            b_A_i = None if b_A is None else b_A[i]
            x[:, i] = bernoulli(sigmoid(_anneal(x @ self.W.data[:, i] + self.b.data[i], beta, b_A_i)))
        return x

    def base_sample(self, b_A, n: int):
        return bernoulli(sigmoid(b_A) * backend.get_array_module(b_A).ones((n, 1)))

    def base_log_Z(self, b_A) -> float:
        return float(softplus(b_A).sum())

    def log_Z_exact(self) -> float:
        xp = backend.get_array_module(self.W.data)
        return float(log_sum_states(self.log_p_star, len(self.b.data), xp, self.W.data.dtype))

    def enumerable(self) -> bool:
        return len(self.b.data) <= ENUMERABLE

    def model_statistics(self) -> tuple:
        """(<x x^T>, <x>) under the model, exactly, by enumerating all 2^D states."""
        W = self.W.data
        xp, dim = backend.get_array_module(W), len(W)
        log_Z = self.log_Z_exact()
        xx, x_mean = xp.zeros_like(W), xp.zeros_like(self.b.data)
        for s in binary_states(dim, xp, W.dtype):
            p = xp.exp(self.log_p_star(s) - log_Z)
            xx += s.T @ (p[:, None] * s)
            x_mean += p @ s
        return xx, x_mean

    def gradient(self, x, x_model=None) -> tuple:
        """(dW, db) of the average log-likelihood of x: data minus model statistics, the model's exact when
        x_model (samples from Gibbs chains) is None. The diagonal of dW is zero."""
        xx_data, mean_data = x.T @ x / len(x), x.mean(0)
        if x_model is None:
            xx_model, mean_model = self.model_statistics()
        else:
            xx_model, mean_model = x_model.T @ x_model / len(x_model), x_model.mean(0)
        dW = xx_data - xx_model
        backend.get_array_module(dW).fill_diagonal(dW, 0)
        return dW, mean_data - mean_model

    def sample(self, n: int, steps: int):
        """n chains from uniform noise after `steps` Gibbs sweeps."""
        x = coin_flips((n, len(self.b.data)), self.b.data)
        for _ in range(steps):
            x = self.transition(x)
        return x


# --- restricted Boltzmann machine ---------------------------------------------------------------------------


class RBM(nn.Module):
    """A restricted Boltzmann machine: visible v (D), hidden h in {0, 1}^H, weights W (D, H), biases b, c.

        E(v, h) = -v^T W h - b^T v - c^T h                         (binary v)
        E(v, h) = ||v - b||^2 / 2 - v^T W h - c^T h                (Gaussian v with unit variance)

    Given v the hidden units are independent, p(h_j = 1 | v) = sigmoid(c_j + v^T W_:j); given h, v is
    Bernoulli(sigmoid(b + W h)) or N(b + W h, I). Summing h out gives the free energy
    F(v) = -b^T v - sum_j softplus(c_j + v^T W_:j) (with ||v - b||^2 / 2 in place of -b^T v for Gaussian v),
    p(v) = exp(-F(v)) / Z. The AIS state is v."""

    def __init__(self, visible: int, hidden: int, gaussian_visible: bool = False, init_std: float = 0.01):
        super().__init__()
        dtype = backend.get_default_dtype()
        self.W = nn.Parameter((init_std * backend.generator("cpu").standard_normal((visible, hidden))).astype(dtype))
        self.b = nn.Parameter(np.zeros(visible, dtype))
        self.c = nn.Parameter(np.zeros(hidden, dtype))
        self.gaussian_visible = gaussian_visible

    def hidden_probs(self, v, beta: float = 1.0):
        """p(h = 1 | v) at inverse temperature beta."""
        return sigmoid(beta * (v @ self.W.data + self.c.data))

    def visible_mean(self, h, beta: float = 1.0, b_A=None):
        """E[v | h] under p_beta (the base's bias mixed in by (1 - beta))."""
        a = _anneal(h @ self.W.data.T + self.b.data, beta, b_A)
        return a if self.gaussian_visible else sigmoid(a)

    def sample_visible(self, h, beta: float = 1.0, b_A=None):
        mean = self.visible_mean(h, beta, b_A)
        return gaussian(mean) if self.gaussian_visible else bernoulli(mean)

    def transition(self, v, beta: float = 1.0, b_A=None):
        """One Gibbs step v -> h -> v' at inverse temperature beta."""
        return self.sample_visible(bernoulli(self.hidden_probs(v, beta)), beta, b_A)

    def log_p_star(self, v, beta: float = 1.0, b_A=None):
        """log p*_beta(v) = (1 - beta) log p*_A(v) - beta F(v) up to H log 2: the visible terms of base and
        model mixed, and sum_j softplus(beta (c_j + v^T W_:j)) (Salakhutdinov & Murray 2008, with a base
        model that has no weights)."""
        visible = v @ _anneal(self.b.data, beta, b_A)
        if self.gaussian_visible:       # -(1 - beta) ||v - b_A||^2 / 2 - beta ||v - b||^2 / 2
            b2, b_A2 = (self.b.data ** 2).sum(), None if b_A is None else (b_A ** 2).sum()
            visible = visible - 0.5 * (v * v).sum(-1) - 0.5 * _anneal(b2, beta, b_A2)
        return visible + softplus(beta * (v @ self.W.data + self.c.data)).sum(-1)

    def free_energy(self, v):
        """F(v) = -log sum_h exp(-E(v, h)), per row of v."""
        return -self.log_p_star(v)

    def base_sample(self, b_A, n: int):
        mean = b_A * backend.get_array_module(b_A).ones((n, 1))
        return gaussian(mean) if self.gaussian_visible else bernoulli(sigmoid(mean))

    def base_log_Z(self, b_A) -> float:
        """log Z_0 of p*_0: the base's visible normalizer times 2^H (the hidden units, uniform at beta 0)."""
        visible = 0.5 * len(b_A) * LOG_2PI if self.gaussian_visible else float(softplus(b_A).sum())
        return visible + len(self.c.data) * math.log(2)

    def log_Z_exact(self) -> float:
        """log Z by enumerating the smaller layer, the other summed out in closed form:
        Z = sum_h exp(c^T h) prod_i (1 + exp(b_i + W_i: h))                     (binary v)
        Z = sum_h exp(c^T h + (||b + W h||^2 - ||b||^2) / 2) (2 pi)^(D/2)       (Gaussian v)
        or Z = sum_v exp(-F(v)) when there are fewer binary visible than hidden units."""
        W, b, c = self.W.data, self.b.data, self.c.data
        xp, (dim, hidden) = backend.get_array_module(W), W.shape
        if not self.gaussian_visible and dim < hidden:
            return float(log_sum_states(self.log_p_star, dim, xp, W.dtype))

        def log_f(h):
            a = h @ W.T + b
            if self.gaussian_visible:
                return h @ c + 0.5 * ((a * a).sum(-1) - (b * b).sum() + dim * LOG_2PI)
            return h @ c + softplus(a).sum(-1)
        return float(log_sum_states(log_f, hidden, xp, W.dtype))

    def enumerable(self) -> bool:
        """Whether log_Z_exact can sum over the hidden layer, or over a binary visible one."""
        return len(self.c.data) <= ENUMERABLE or (not self.gaussian_visible and len(self.b.data) <= ENUMERABLE)

    def contrastive_divergence(self, v0, v_start, k: int) -> tuple:
        """((dW, db, dc), v_k): the CD-k / PCD estimate of the log-likelihood gradient on the batch v0, with
        the model's statistics from k Gibbs steps started at v_start (v0 itself for CD, the persistent
        chains for PCD). Hidden statistics use p(h | v) rather than samples (Hinton 2010, section 3)."""
        v_k = v_start
        for _ in range(k):
            v_k = self.transition(v_k)
        ph0, phk = self.hidden_probs(v0), self.hidden_probs(v_k)
        dW = v0.T @ ph0 / len(v0) - v_k.T @ phk / len(v_k)
        return (dW, v0.mean(0) - v_k.mean(0), ph0.mean(0) - phk.mean(0)), v_k

    def reconstruct(self, v):
        """E[v | h = p(h | v)]: the mean-field reconstruction, for the reconstruction error and pictures."""
        return self.visible_mean(self.hidden_probs(v))

    def sample(self, n: int, steps: int):
        """Visible means after `steps` Gibbs steps of n chains started from p(v | h = 0)."""
        v = self.sample_visible(backend.get_array_module(self.W.data).zeros((n, len(self.c.data)), self.W.data.dtype))
        for _ in range(steps):
            v = self.transition(v)
        return self.visible_mean(bernoulli(self.hidden_probs(v)))


# --- deep belief net ----------------------------------------------------------------------------------------


class DBN(nn.Module):
    """A two-hidden-layer deep belief net (Hinton, Osindero & Teh 2006): an RBM over (h1, h2) on top of a
    directed sigmoid layer p(v | h1) = Bernoulli(sigmoid(b1 + W1 h1)), trained greedily, one RBM a layer.

    The first RBM's posterior q(h1 | v) = Bernoulli(sigmoid(c1 + v^T W1)) gives the variational bound
        log p(v) >= E_q[log p(v | h1) + log p(h1)] + H(q),  log p(h1) = -F_2(h1) - log Z_2
    (Hinton et al. 2006; Salakhutdinov & Murray 2008), with F_2, Z_2 the top RBM's."""

    def __init__(self, visible: int, hidden: tuple[int, int]):
        super().__init__()
        self.rbm1, self.rbm2 = RBM(visible, hidden[0]), RBM(hidden[0], hidden[1])

    def log_joint(self, v, h1, log_Z2: float):
        """log p(v | h1) + log p(h1) for v (N, D) and h1 (..., N, H1) (broadcast over leading axes)."""
        W1, b1 = self.rbm1.W.data, self.rbm1.b.data
        v_a = (h1 * (v @ W1)).sum(-1) + v @ b1             # v^T a, summed over H1 rather than D
        log_p_v = v_a - softplus(h1 @ W1.T + b1).sum(-1)   # log Bernoulli(v; sigmoid(a)), a = b1 + W1 h1
        return log_p_v - self.rbm2.free_energy(h1) - log_Z2

    def log_q(self, h1, v):
        """log q(h1 | v) under the first RBM's posterior."""
        a = v @ self.rbm1.W.data + self.rbm1.c.data
        return (h1 * a - softplus(a)).sum(-1)

    def lower_bound(self, v, log_Z2: float, samples: int):
        """The variational bound on log p(v) per example, E_q by `samples` draws of h1 ~ q(h1 | v)."""
        q = self.rbm1.hidden_probs(v)
        h1 = bernoulli(q * backend.get_array_module(q).ones((samples, 1, 1)))
        return (self.log_joint(v, h1, log_Z2) - self.log_q(h1, v)).mean(0)

    def log_prob_exact(self, v, log_Z2: float):
        """log p(v) = log sum_h1 p(v | h1) p(h1) by enumerating h1, in blocks of about 2^22 numbers."""
        xp = backend.get_array_module(v)
        return log_sum_states(lambda h1: self.log_joint(v, h1[:, None, :], log_Z2), len(self.rbm1.c.data),
                              xp, v.dtype, chunk=max(1, (1 << 22) // (len(v) * len(self.rbm1.c.data))))

    def sample(self, n: int, steps: int):
        """p(v | h1) means for h1 from `steps` Gibbs steps of the top RBM."""
        h1 = bernoulli(self.rbm2.sample(n, steps))
        return sigmoid(h1 @ self.rbm1.W.data.T + self.rbm1.b.data)


# --- deep Boltzmann machine ---------------------------------------------------------------------------------


class DBM(nn.Module):
    """A two-hidden-layer deep Boltzmann machine (Salakhutdinov & Hinton 2009):

        E(v, h1, h2) = -v^T W1 h1 - h1^T W2 h2 - b^T v - c1^T h1 - c2^T h2.

    Given h1, v and h2 are independent; given (v, h2), h1 is. Summing v and h2 out leaves
        log p*(h1) = c1^T h1 + sum_i softplus(b_i + W1_i: h1) + sum_k softplus(c2_k + h1^T W2_:k),
    which is the AIS state and the enumeration's (S&H 2009, section 4). The posterior p(h1, h2 | v) is
    approximated by a factorial mean-field q (means mu1, mu2), whose bound
        log p(v) >= b^T v + v^T W1 mu1 + mu1^T W2 mu2 + c1^T mu1 + c2^T mu2 + H(mu1) + H(mu2) - log Z
    is both the training signal's positive phase and the reported test bound."""

    def __init__(self, visible: int, hidden: tuple[int, int], init_std: float = 0.01):
        super().__init__()
        dtype, rng = backend.get_default_dtype(), backend.generator("cpu")
        self.W1 = nn.Parameter((init_std * rng.standard_normal((visible, hidden[0]))).astype(dtype))
        self.W2 = nn.Parameter((init_std * rng.standard_normal(hidden)).astype(dtype))
        self.b = nn.Parameter(np.zeros(visible, dtype))
        self.c1 = nn.Parameter(np.zeros(hidden[0], dtype))
        self.c2 = nn.Parameter(np.zeros(hidden[1], dtype))

    def mean_field(self, v, steps: int) -> tuple:
        """(mu1, mu2) after `steps` fixed-point updates mu1 = sigmoid(v W1 + mu2 W2^T + c1),
        mu2 = sigmoid(mu1 W2 + c2), started from the bottom-up pass with mu2 = 0."""
        mu1 = sigmoid(v @ self.W1.data + self.c1.data)
        mu2 = sigmoid(mu1 @ self.W2.data + self.c2.data)
        for _ in range(steps):
            mu1 = sigmoid(v @ self.W1.data + mu2 @ self.W2.data.T + self.c1.data)
            mu2 = sigmoid(mu1 @ self.W2.data + self.c2.data)
        return mu1, mu2

    def lower_bound(self, v, log_Z: float, steps: int):
        """The mean-field bound on log p(v) per example (see the class docstring)."""
        mu1, mu2 = self.mean_field(v, steps)
        neg_energy = (v @ self.b.data + ((v @ self.W1.data) * mu1).sum(-1) + ((mu1 @ self.W2.data) * mu2).sum(-1)
                      + mu1 @ self.c1.data + mu2 @ self.c2.data)
        return neg_energy + entropy(mu1) + entropy(mu2) - log_Z

    def visible_and_top(self, h1, beta: float = 1.0, b_A=None) -> tuple:
        """(v, h2) ~ p_beta(v, h2 | h1)."""
        v = bernoulli(sigmoid(_anneal(h1 @ self.W1.data.T + self.b.data, beta, b_A)))
        h2 = bernoulli(sigmoid(beta * (h1 @ self.W2.data + self.c2.data)))
        return v, h2

    def middle(self, v, h2, beta: float = 1.0):
        """h1 ~ p_beta(h1 | v, h2)."""
        return bernoulli(sigmoid(beta * (v @ self.W1.data + h2 @ self.W2.data.T + self.c1.data)))

    def gibbs(self, h1, k: int) -> tuple:
        """(v, h1, h2) after k alternating steps (v, h2) | h1 then h1 | (v, h2)."""
        for _ in range(k):
            v, h2 = self.visible_and_top(h1)
            h1 = self.middle(v, h2)
        return v, h1, h2

    def transition(self, h1, beta: float = 1.0, b_A=None):
        return self.middle(*self.visible_and_top(h1, beta, b_A), beta)

    def log_p_star(self, h1, beta: float = 1.0, b_A=None):
        """log p*_beta(h1): v and h2 summed out of the path between the base (visible biases b_A, uniform
        hidden units) and the DBM."""
        a = _anneal(h1 @ self.W1.data.T + self.b.data, beta, b_A)
        top = softplus(beta * (h1 @ self.W2.data + self.c2.data)).sum(-1)
        return beta * (h1 @ self.c1.data) + softplus(a).sum(-1) + top

    def base_sample(self, b_A, n: int):
        return coin_flips((n, len(self.c1.data)), b_A)

    def base_log_Z(self, b_A) -> float:
        return float(softplus(b_A).sum()) + (len(self.c1.data) + len(self.c2.data)) * math.log(2)

    def log_Z_exact(self) -> float:
        W1 = self.W1.data
        return float(log_sum_states(self.log_p_star, len(self.c1.data), backend.get_array_module(W1), W1.dtype))

    def enumerable(self) -> bool:
        return len(self.c1.data) <= ENUMERABLE

    def log_prob_exact(self, v, log_Z: float):
        """log p(v) by enumerating h1 (h2 summed out): log sum_h1 exp(b^T v + c1^T h1 + v^T W1 h1
        + sum_k softplus(c2_k + h1^T W2_:k)) - log Z."""
        def log_f(h1):
            top = softplus(h1 @ self.W2.data + self.c2.data).sum(-1)
            return (h1 @ self.W1.data.T) @ v.T + (h1 @ self.c1.data + top)[:, None]
        xp = backend.get_array_module(v)
        return v @ self.b.data + log_sum_states(log_f, len(self.c1.data), xp, v.dtype) - log_Z

    def gradient(self, v, mu: tuple, chains: tuple) -> tuple:
        """(dW1, dW2, db, dc1, dc2): mean-field data statistics minus the persistent chains' statistics
        (S&H 2009, Algorithm 1)."""
        (mu1, mu2), (v_m, h1_m, h2_m) = mu, chains
        n, m = len(v), len(v_m)
        return (v.T @ mu1 / n - v_m.T @ h1_m / m, mu1.T @ mu2 / n - h1_m.T @ h2_m / m,
                v.mean(0) - v_m.mean(0), mu1.mean(0) - h1_m.mean(0), mu2.mean(0) - h2_m.mean(0))

    def sample(self, n: int, steps: int):
        """p(v | h1) means after `steps` Gibbs steps from uniform h1."""
        _, h1, _ = self.gibbs(coin_flips((n, len(self.c1.data)), self.W1.data), steps)
        return sigmoid(h1 @ self.W1.data.T + self.b.data)


# --- pictures -----------------------------------------------------------------------------------------------


def save_filters(rbm: RBM, shape: tuple, path, count: int = 64) -> None:
    """The first `count` columns of W as images of `shape`, each stretched to [0, 1] (Hinton 2010, section 15)."""
    W = backend.to_device(rbm.W.data, "cpu").T[:count]
    low, high = W.min(1, keepdims=True), W.max(1, keepdims=True)
    save_samples(((W - low) / (high - low + 1e-12)).reshape((-1,) + tuple(shape)), path)


def save_reconstructions(rbm: RBM, v, shape: tuple, path) -> None:
    """Rows of inputs v (on the RBM's scale, (n, D)) above their mean-field reconstructions."""
    pictures = [backend.to_device(a, "cpu").reshape((-1,) + tuple(shape)) for a in (v, rbm.reconstruct(v))]
    save_samples(np.clip(np.concatenate(pictures), 0, 1), path)


# --- recipes ------------------------------------------------------------------------------------------------


def _ascend(optimizer: optim.Optimizer, params: list, grads: tuple) -> None:
    """One optimizer step up the log-likelihood: each parameter's .grad is minus its estimated gradient."""
    for p, g in zip(params, grads):
        p.grad = Tensor(-g)
    optimizer.step()


def _sgd(weights: list, biases: list, lr: float, momentum: float, weight_decay: float) -> optim.SGD:
    """SGD with momentum, the weight decay on weights only (Hinton 2010, sections 9-10)."""
    return optim.SGD([{"params": weights, "weight_decay": weight_decay}, {"params": biases}], lr=lr,
                     momentum=momentum)


class _BoltzmannRecipe(Recipe):
    """What the Boltzmann families share: SGD with momentum and weight decay on data-minus-model gradients,
    persistent chains kept in `extra_state` (an exact resume), evaluation by exact enumeration or AIS, and
    sampling by long Gibbs chains."""

    default_dataset = "binarized-digits"
    default_epochs = 300.0
    kinds = ("binary",)

    def __init__(self, spec, k: int, persistent: bool, ais_betas: int, ais_runs: int, sample_steps: int):
        self.spec, self.k, self.persistent = spec, k, persistent
        self.ais_betas, self.ais_runs, self.sample_steps = ais_betas, ais_runs, sample_steps
        self.chains: dict = {}

    def _visible(self, batch):
        """The batch as rows (n, D) on its device."""
        x = batch[0].data
        return x.reshape(len(x), -1)

    @staticmethod
    def _start_at_base_rate(b: nn.Parameter, v, gaussian_visible: bool = False) -> None:
        """Visible biases set to the base rate of the first batch v, the independent-units fit: without it the
        biases of always-off pixels creep from 0, and chains started at p(v | h = 0) sit in a grey mode of
        noise (Hinton 2010, section 8)."""
        b.data = base_rate(v.mean(0), gaussian_visible).astype(b.data.dtype)

    def _chain_start(self, name: str, start):
        """Where the negative phase starts: the persistent chain `name` (begun at `start`), or `start`."""
        return self.chains.setdefault(name, start) if self.persistent else start

    def _keep(self, name: str, state) -> None:
        if self.persistent:
            self.chains[name] = state

    def extra_state(self) -> dict:
        return {"chains": {k: backend.to_device(v, "cpu") for k, v in self.chains.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.chains = {k: backend.to_device(v, self.spec.device) for k, v in state.get("chains", {}).items()}

    def _all(self, loader):
        """Every batch of `loader` (one pass) as rows on the data's device."""
        rows = [self._visible(b) for b in loader]
        return backend.get_array_module(rows[0]).concatenate(rows)

    def _log_Z(self, model, data_mean, gaussian_visible: bool = False) -> dict:
        """{"log_Z", "log_Z_se"} by AIS from the base rate of `data_mean`, and "log_Z_exact" when the model
        can be enumerated."""
        log_Z, se = ais(model, base_rate(data_mean, gaussian_visible), ais_betas(self.ais_betas), self.ais_runs)
        found = {"log_Z": log_Z, "log_Z_se": se}
        if model.enumerable():
            found["log_Z_exact"] = model.log_Z_exact()
        return found

    def _report(self, log_p_estimate, log_Z: dict, log_p_exact=None, density: bool = False) -> dict:
        """likelihood_metrics of the AIS estimate with its standard error (that of log Z), beside the exact
        NLL where there is one."""
        report = {**likelihood_metrics(-float(log_p_estimate.mean()), self.spec, density=density),
                  "nll_se": log_Z["log_Z_se"], **log_Z}
        if log_p_exact is not None:
            report["nll_exact"] = likelihood_metrics(-float(log_p_exact.mean()), self.spec, density=density)["nll"]
        return report

    def _images(self, v) -> np.ndarray:
        return np.clip(backend.to_device(v, "cpu").reshape((len(v),) + self.spec.shape), 0, 1).astype(np.float32)


class BMRecipe(_BoltzmannRecipe):
    """`minigen train bm`: a fully visible Boltzmann machine. Model statistics are exact by enumeration
    when D <= 20, else from Gibbs chains (k sweeps; persistent by default). Evaluation: the AIS NLL ± its
    standard error, and the exact NLL when D <= 20."""

    name = "bm"

    def __init__(self, spec, lr: float = 0.01, momentum: float = 0.5, weight_decay: float = 1e-4, k: int = 1,
                 persistent: bool = True, ais_betas: int = 500, ais_runs: int = 100, sample_steps: int = 200):
        super().__init__(spec, k, persistent, ais_betas, ais_runs, sample_steps)
        self.model = BoltzmannMachine(spec.dim)
        self.optimizer = _sgd([self.model.W], [self.model.b], lr, momentum, weight_decay)

    def modules(self) -> dict:
        return {"bm": self.model}

    def optimizers(self) -> dict:
        return {"sgd": self.optimizer}

    def step(self, batch, t: int) -> dict:
        x = self._visible(batch)
        if t == 1:
            self._start_at_base_rate(self.model.b, x)
        x_model = None
        if self.spec.dim > ENUMERABLE:
            x_model = self._chain_start("x", x)
            for _ in range(self.k):
                x_model = self.model.transition(x_model)
            self._keep("x", x_model)
        dW, db = self.model.gradient(x, x_model)
        _ascend(self.optimizer, [self.model.W, self.model.b], (dW, db))
        return {"grad_norm": float((dW * dW).sum() + (db * db).sum()) ** 0.5}

    def evaluate(self, loader) -> dict:
        x = self._all(loader)
        log_Z = self._log_Z(self.model, x.mean(0))
        log_p_star = self.model.log_p_star(x)
        exact = log_p_star - log_Z["log_Z_exact"] if "log_Z_exact" in log_Z else None
        return self._report(log_p_star - log_Z["log_Z"], log_Z, exact)

    def sample(self, n: int) -> np.ndarray:
        return self._images(self.model.sample(n, self.sample_steps))


class RBMRecipe(_BoltzmannRecipe):
    """`minigen train rbm`: an RBM trained by CD-k (persistent=true: PCD). Binary visible units on binary
    data; on grey levels or real vectors Gaussian visible units of standard deviation `sigma` (data units,
    v = x / sigma; grey levels dequantized). Evaluation: AIS test NLL ± its standard error, and the exact
    NLL when a layer has at most 20 units."""

    name = "rbm"
    kinds = ("binary", "levels", "continuous")

    def __init__(self, spec, hidden: int = 64, sigma: float = 0.25, lr: float = 0.1, momentum: float = 0.5,
                 weight_decay: float = 1e-4, k: int = 1, persistent: bool = False, ais_betas: int = 500,
                 ais_runs: int = 100, sample_steps: int = 1000):
        super().__init__(spec, k, persistent, ais_betas, ais_runs, sample_steps)
        self.gaussian_visible, self.sigma = spec.kind != "binary", sigma
        self.model = RBM(spec.dim, hidden, self.gaussian_visible)
        self.optimizer = _sgd([self.model.W], [self.model.b, self.model.c], lr, momentum, weight_decay)

    def modules(self) -> dict:
        return {"rbm": self.model}

    def optimizers(self) -> dict:
        return {"sgd": self.optimizer}

    def _visible(self, batch):
        """Binary pixels as they are; other data dequantized (grey levels) and divided by sigma."""
        if not self.gaussian_visible:
            return super()._visible(batch)
        x = dequantize_batch(batch[0], self.spec.levels) if self.spec.kind == "levels" else batch[0]
        return super()._visible((x,)) / self.sigma

    def step(self, batch, t: int) -> dict:
        v = self._visible(batch)
        if t == 1:
            self._start_at_base_rate(self.model.b, v, self.gaussian_visible)
        grads, v_k = self.model.contrastive_divergence(v, self._chain_start("v", v), self.k)
        self._keep("v", v_k)
        _ascend(self.optimizer, [self.model.W, self.model.b, self.model.c], grads)
        error = self.model.reconstruct(v) - v
        return {"recon_error": float((error * error).sum(-1).mean())}

    def evaluate(self, loader) -> dict:
        """Per-example -log p(x) = F(v) + log Z (+ D log sigma, the density's change of scale from v to x)."""
        v = self._all(loader)
        log_Z = self._log_Z(self.model, v.mean(0), self.gaussian_visible)
        scale = self.spec.dim * math.log(self.sigma) if self.gaussian_visible else 0.0
        log_p_star = self.model.log_p_star(v) - scale
        exact = log_p_star - log_Z["log_Z_exact"] if "log_Z_exact" in log_Z else None
        return self._report(log_p_star - log_Z["log_Z"], log_Z, exact, density=self.gaussian_visible)

    def sample(self, n: int) -> np.ndarray:
        v = self.model.sample(n, self.sample_steps)
        return self._images(v * self.sigma if self.gaussian_visible else v)


class DBNRecipe(_BoltzmannRecipe):
    """`minigen train dbn`: a two-hidden-layer DBN trained greedily: updates 1..layer_steps train the
    first RBM by CD-k (PCD if persistent) on the data, later ones the top RBM on h1 ~ q(h1 | v). Evaluation:
    the variational bound with the top RBM's log Z by AIS (E_q over `bound_samples` draws of h1), and the
    exact log-likelihood when h1 has at most 20 units."""

    name = "dbn"

    def __init__(self, spec, hidden: tuple = (64, 64), layer_steps: int = 1000, bound_samples: int = 10,
                 lr: float = 0.1, momentum: float = 0.5, weight_decay: float = 1e-4, k: int = 1,
                 persistent: bool = False, ais_betas: int = 500, ais_runs: int = 100, sample_steps: int = 1000):
        super().__init__(spec, k, persistent, ais_betas, ais_runs, sample_steps)
        self.layer_steps, self.bound_samples = layer_steps, bound_samples
        self.model = DBN(spec.dim, tuple(hidden))
        self.layers = {name: (rbm, _sgd([rbm.W], [rbm.b, rbm.c], lr, momentum, weight_decay))
                       for name, rbm in (("rbm1", self.model.rbm1), ("rbm2", self.model.rbm2))}

    def modules(self) -> dict:
        return {"dbn": self.model}

    def optimizers(self) -> dict:
        return {name: opt for name, (_, opt) in self.layers.items()}

    def step(self, batch, t: int) -> dict:
        v = self._visible(batch)
        name = "rbm1" if t <= self.layer_steps else "rbm2"
        if name == "rbm2":
            v = bernoulli(self.model.rbm1.hidden_probs(v))
        rbm, optimizer = self.layers[name]
        if t in (1, self.layer_steps + 1):
            self._start_at_base_rate(rbm.b, v)
        grads, v_k = rbm.contrastive_divergence(v, self._chain_start(name, v), self.k)
        self._keep(name, v_k)
        _ascend(optimizer, [rbm.W, rbm.b, rbm.c], grads)
        error = rbm.reconstruct(v) - v
        return {"layer": float(name == "rbm2") + 1, "recon_error": float((error * error).sum(-1).mean())}

    def evaluate(self, loader) -> dict:
        v = self._all(loader)
        log_Z = self._log_Z(self.model.rbm2, self.model.rbm1.hidden_probs(v).mean(0))
        bound = self.model.lower_bound(v, log_Z["log_Z"], self.bound_samples)
        exact = None
        if len(self.model.rbm1.c.data) <= ENUMERABLE:      # then the top RBM is enumerable too
            exact = self.model.log_prob_exact(v, log_Z["log_Z_exact"])
        return self._report(bound, log_Z, exact)

    def sample(self, n: int) -> np.ndarray:
        return self._images(self.model.sample(n, self.sample_steps))


class DBMRecipe(_BoltzmannRecipe):
    """`minigen train dbm`: a two-hidden-layer DBM trained as Salakhutdinov & Hinton (2009): mean-field
    positive phase (`mean_field_steps` updates), persistent Gibbs chains (k steps an update) for the negative
    phase, no greedy pretraining. Evaluation: the mean-field bound with log Z by AIS over h1 (v and h2 summed
    out), and the exact log-likelihood when h1 has at most 20 units."""

    name = "dbm"

    def __init__(self, spec, hidden: tuple = (64, 64), mean_field_steps: int = 10, lr: float = 0.005,
                 momentum: float = 0.9, weight_decay: float = 1e-4, k: int = 1, ais_betas: int = 500,
                 ais_runs: int = 100, sample_steps: int = 1000):
        super().__init__(spec, k, True, ais_betas, ais_runs, sample_steps)
        self.mean_field_steps = mean_field_steps
        self.model = DBM(spec.dim, tuple(hidden))
        m = self.model
        self.params = [m.W1, m.W2, m.b, m.c1, m.c2]
        self.optimizer = _sgd([m.W1, m.W2], [m.b, m.c1, m.c2], lr, momentum, weight_decay)

    def modules(self) -> dict:
        return {"dbm": self.model}

    def optimizers(self) -> dict:
        return {"sgd": self.optimizer}

    def step(self, batch, t: int) -> dict:
        v = self._visible(batch)
        if t == 1:
            self._start_at_base_rate(self.model.b, v)
        mu = self.model.mean_field(v, self.mean_field_steps)
        chains = self.model.gibbs(self._chain_start("h1", bernoulli(mu[0])), self.k)
        self._keep("h1", chains[1])
        _ascend(self.optimizer, self.params, self.model.gradient(v, mu, chains))
        return {"mean_h1": float(mu[0].mean()), "mean_h2": float(mu[1].mean())}

    def evaluate(self, loader) -> dict:
        v = self._all(loader)
        log_Z = self._log_Z(self.model, v.mean(0))
        bound = self.model.lower_bound(v, log_Z["log_Z"], self.mean_field_steps)
        exact = self.model.log_prob_exact(v, log_Z["log_Z_exact"]) if "log_Z_exact" in log_Z else None
        return self._report(bound, log_Z, exact)

    def sample(self, n: int) -> np.ndarray:
        return self._images(self.model.sample(n, self.sample_steps))
