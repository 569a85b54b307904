"""Denoising diffusion probabilistic models (DDPM, Ho et al. 2020), with the cosine schedule of Nichol &
Dhariwal (2021) and DDIM sampling (Song et al. 2021).

The forward process adds Gaussian noise in T steps, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
(eq. 2). With alpha_t = 1 - beta_t and alpha_bar_t = prod_{s <= t} alpha_s (alpha_bar_0 = 1):

    q(x_t | x_0)          = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                       (eq. 4)
    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)                                       (eqs. 6-7)
        mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                       + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

A network eps_theta(x_t, t) predicts the noise in x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps and
is trained on L_simple = E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2 (eq. 14; here a mean over
dimensions). The reverse process p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) takes the posterior mean
at the predicted x_0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t), which is eq. 11's
mu_theta, and one of Ho et al.'s two fixed variances (sec. 3.2): sigma_t^2 = beta_t (the default: close to
the true reverse variance when the data spread far more than the noise, hence the tighter bound) or
beta_tilde_t (the one DDIM with eta = 1 reproduces). On x_0 ~ N(0, 0.25) with the best possible predictor
the expected bound exceeds the exact negative log-density by 0.05 nats a dimension with beta_t and by 0.90
with beta_tilde_t (T = 200, linear schedule; closed form in tests/test_diffusion.py).
The decoder at t = 1, where beta_tilde_1 = 0, uses beta_tilde_2. On images (in [-1, 1]) x_0_hat is clipped
to [-1, 1], in sampling and in the bound alike.

Ancestral sampling runs p_theta from x_T ~ N(0, I) down to x_0 (Algorithm 2, no noise in the last step).
DDIM jumps from t to an earlier s of a shorter sequence (Song et al. 2021, eq. 12):

    x_s = sqrt(alpha_bar_s) x_0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_theta + sigma z,
    sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)    (eq. 16)

deterministic for eta = 0, and with s = t - 1 and eta = 1 the ancestral step itself.

Evaluation: the variational bound (eq. 5) on -log p(x_0), in nats per example,

    L = KL(q(x_T | x_0) || N(0, I)) + sum_{t=2}^T KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
        - log p_theta(x_0 | x_1).

Which scale it is on: images in [0, 1] with L grey levels are modelled as x_0 = 2 x - 1 in [-1, 1]. The KL
terms do not change under that affine map (applied to both of their arguments), and the decoder
p_theta(x_0 | x_1) is discretized (eq. 13): N(mu_theta(x_1, 1), sigma_1^2) integrated over each grey level's
bin of width 2 / (L - 1), the outer bins reaching to -inf and +inf. So L bounds -log P(grey levels) directly,
a probability of the discrete pixels, and is reported with `likelihood_metrics(..., density=False)` (no
dequantization offset). For real vectors (the 2-D toys, not rescaled) the decoder is the Gaussian density
of x_0 and L bounds the negative log-density.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .. import backend, nn, optim
from ..distributions import Normal
from ..metrics import likelihood_metrics
from ..nn import functional as F
from ..ops import clip, concatenate, erf, kl_normal, log, maximum, split
from ..tensor import Tensor, full, no_grad, randint, randn, randn_like
from ..train import Recipe

SCHEDULES = ("linear", "cosine")
VARIANCES = ("beta", "beta_tilde")


def beta_schedule(name: str, T: int) -> np.ndarray:  # noqa: N803 - the papers' T
    """beta_1 .. beta_T in float64.

    'linear': Ho et al.'s 1e-4 .. 0.02 over T = 1000, both ends scaled by 1000 / T for other T (Nichol &
    Dhariwal 2021, sec. 3.2); 'cosine': alpha_bar_t = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2),
    s = 0.008 (Nichol & Dhariwal 2021, eq. 17). Both capped at 0.999, so that no step destroys all signal.
    """
    if name == "linear":
        betas = np.linspace(1e-4, 0.02, T) * (1000 / T)
    elif name == "cosine":
        s = 0.008
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - f[1:] / f[:-1]
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    return np.minimum(betas, 0.999)


def ddim_timesteps(T: int, steps: int) -> list[int]:  # noqa: N803
    """An evenly spaced decreasing subsequence of 1..T with `steps` members (fewer if they round together),
    starting at T: the tau of DDIM (Song et al. 2021, sec. 4.2)."""
    return sorted({int(round(t)) for t in np.linspace(1, T, min(steps, T))}, reverse=True)


def discretized_gaussian_nll(x: Tensor, mu: Tensor, sigma: Tensor, levels: int) -> Tensor:
    """-log of the probability N(mu, sigma^2) gives the bin of x, elementwise, for x on `levels` grey levels
    spaced 2 / (levels - 1) apart in [-1, 1]: bins [x - delta, x + delta] with delta = 1 / (levels - 1), the
    lowest reaching down to -inf and the highest up to +inf (Ho et al. 2020, eq. 13). In float64, with the
    probability floored at 1e-12 as Ho et al. do."""
    x, mu, sigma = x.astype(np.float64), mu.astype(np.float64), sigma.astype(np.float64)
    xp = backend.get_array_module(x.data)
    delta = 1.0 / (levels - 1)
    upper = Tensor(xp.where(x.data > 1 - delta, np.inf, x.data + delta))
    lower = Tensor(xp.where(x.data < -1 + delta, -np.inf, x.data - delta))
    cdf = lambda v: 0.5 * (1 + erf((v - mu) / (sigma * math.sqrt(2))))  # noqa: E731 - Phi((v - mu) / sigma)
    return -log(maximum(cdf(upper) - cdf(lower), 1e-12))


# --- the diffusion process -------------------------------------------------------------------------------


class Diffusion(nn.Module):
    """The forward process of a beta schedule and the reverse process around a noise predictor
    `net(x_t, t)` (t an integer Tensor (n,) in 1..T): L_simple, the variational bound, both samplers.

    beta_t and alpha_bar_t are float64 buffers indexed by t = 0 .. T (beta_0 = 0, alpha_bar_0 = 1), so that
    they move with the module and every coefficient is computed in float64 before it meets the data.
    `levels`: the number of grey levels of discrete data in [-1, 1] (the discretized decoder, eq. 13), None
    for real vectors. `clip_x0`: clip the predicted x_0 to [-1, 1] (images). `variance`: sigma_t^2 of the
    reverse process, 'beta' or 'beta_tilde' (see `reverse_variance`)."""

    def __init__(self, net: nn.Module, betas: np.ndarray, levels: int | None = None, clip_x0: bool = False,
                 variance: str = "beta"):
        super().__init__()
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.net, self.levels, self.clip_x0, self.variance = net, levels, clip_x0, variance
        self.T = len(betas)
        betas = np.concatenate([[0.0], np.asarray(betas, np.float64)])
        self.register_buffer("beta", Tensor(betas))
        self.register_buffer("alpha_bar", Tensor(np.cumprod(1 - betas)))

    def coef(self, values, x: Tensor) -> Tensor:
        """Per-example float64 coefficients (n,) as a constant Tensor in x's dtype, shaped (n, 1, ..) to
        broadcast against x."""
        return Tensor(values.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)))

    def schedule(self, t: Tensor) -> tuple:
        """(beta_t, alpha_bar_t, alpha_bar_{t-1}) at the integer times t, float64 arrays (n,)."""
        return self.beta.data[t.data], self.alpha_bar.data[t.data], self.alpha_bar.data[t.data - 1]

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a draw from q(x_t | x_0) (eq. 4)."""
        _, ab, _ = self.schedule(t)
        return self.coef(ab ** 0.5, x0) * x0 + self.coef((1 - ab) ** 0.5, x0) * eps

    def beta_tilde(self, t: Tensor):
        """beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (eq. 7), float64 (n,)."""
        beta, ab, ab_prev = self.schedule(t)
        return (1 - ab_prev) / (1 - ab) * beta

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, np.ndarray]:
        """(mu_tilde_t, beta_tilde_t) of q(x_{t-1} | x_t, x_0) (eqs. 6-7); beta_tilde_t float64 (n,)."""
        beta, ab, ab_prev = self.schedule(t)
        mu = self.coef(ab_prev ** 0.5 * beta / (1 - ab), x0) * x0 \
            + self.coef((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab), x0) * x_t
        return mu, self.beta_tilde(t)

    def reverse_variance(self, t: Tensor):
        """sigma_t^2 of p_theta(x_{t-1} | x_t), float64 (n,): beta_t ('beta') or beta_tilde_t ('beta_tilde'),
        Ho et al.'s two fixed choices (sec. 3.2); at t = 1, where beta_tilde_1 = 0, the decoder's variance is
        beta_tilde_2 for both, as in Ho et al.'s code."""
        first = t.data == 1
        beta_tilde = self.beta_tilde(Tensor(t.data + first))
        if self.variance == "beta_tilde":
            return beta_tilde
        return backend.get_array_module(first).where(first, beta_tilde, self.beta.data[t.data])

    def predict(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x_0_hat, eps_hat): the network's noise and the x_0 it implies, eq. 4 solved for x_0. With clip_x0
        x_0_hat is clipped to [-1, 1] and eps_hat recomputed from it, so that both samplers stay consistent."""
        _, ab, _ = self.schedule(t)
        a, b = self.coef(ab ** 0.5, x_t), self.coef((1 - ab) ** 0.5, x_t)
        eps = self.net(x_t, t)
        x0 = (x_t - b * eps) / a
        if self.clip_x0:
            x0 = clip(x0, -1.0, 1.0)
            eps = (x_t - a * x0) / b
        return x0, eps

    def p_mean_variance(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, np.ndarray]:
        """(mu_theta, sigma_t^2) of the ancestral step p_theta(x_{t-1} | x_t): the posterior mean at x_0_hat
        (equal to eq. 11 without clipping) and the fixed variance."""
        x0, _ = self.predict(x_t, t)
        mu, _ = self.posterior(x0, x_t, t)
        return mu, self.reverse_variance(t)

    def ddim_mean_variance(self, x_t: Tensor, t: Tensor, s: int, eta: float) -> tuple[Tensor, np.ndarray]:
        """(mean, sigma^2) of the DDIM step from t to s < t (Song et al. 2021, eqs. 12 and 16), 0 <= eta <= 1."""
        x0, eps = self.predict(x_t, t)
        _, ab, _ = self.schedule(t)
        ab_s = self.alpha_bar.data[s]
        var = eta ** 2 * (1 - ab_s) / (1 - ab) * (1 - ab / ab_s)
        xp = backend.get_array_module(var)
        mean = float(ab_s) ** 0.5 * x0 + self.coef(xp.maximum(1 - ab_s - var, 0) ** 0.5, x_t) * eps
        return mean, var

    def loss(self, x0: Tensor) -> Tensor:
        """L_simple (eq. 14), averaged over the batch and the dimensions, at t ~ U{1..T}, eps ~ N(0, I)."""
        t = randint(1, self.T + 1, (len(x0),), device=x0.device)
        eps = randn_like(x0)
        return ((eps - self.net(self.q_sample(x0, t, eps), t)) ** 2).mean()

    def reverse_chain(self, n: int, shape: tuple, ddim_steps: int | None = None,
                      eta: float = 0.0) -> Iterator[tuple[int, Tensor]]:
        """(s, x_s) after each step of the reverse process from x_T ~ N(0, I), ending at s = 0: ancestral
        (Algorithm 2) when ddim_steps is None, else DDIM over `ddim_timesteps(T, ddim_steps)` with this eta.
        No noise enters the last step, to x_0."""
        ts = list(range(self.T, 0, -1)) if ddim_steps is None else ddim_timesteps(self.T, ddim_steps)
        x = randn((n,) + tuple(shape), device=self.beta.device)
        for t, s in zip(ts, ts[1:] + [0]):
            tt = full(n, t, dtype=np.int64, device=x.device)
            mean, var = (self.p_mean_variance(x, tt) if ddim_steps is None
                         else self.ddim_mean_variance(x, tt, s, eta))
            x = mean + self.coef(var ** 0.5, x) * randn_like(x) if s > 0 else mean
            yield s, x

    def sample(self, n: int, shape: tuple, ddim_steps: int | None = None, eta: float = 0.0) -> Tensor:
        """n samples x_0: the end of `reverse_chain`."""
        for _, x in self.reverse_chain(n, shape, ddim_steps, eta):
            pass
        return x

    # -- the variational bound ------------------------------------------------------------------------------

    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example."""
        ab = self.alpha_bar.data[self.T]
        return kl_normal(float(ab) ** 0.5 * x0, float(math.log(1 - ab))).reshape(len(x0), -1).sum(axis=1)

    def kl_term(self, x0: Tensor, t: Tensor) -> Tensor:
        """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) per example, x_t ~ q(x_t | x_0), t >= 2."""
        x_t = self.q_sample(x0, t, randn_like(x0))
        mu_q, var_q = self.posterior(x0, x_t, t)
        mu_p, var_p = self.p_mean_variance(x_t, t)
        kl = kl_normal(mu_q, self.coef(np.log(var_q), x0), mu_p, self.coef(np.log(var_p), x0))
        return kl.reshape(len(x0), -1).sum(axis=1)

    def decoder_nll(self, x0: Tensor) -> Tensor:
        """L_0 = -log p_theta(x_0 | x_1) per example, x_1 ~ q(x_1 | x_0): the Gaussian density for real
        vectors, the discretized Gaussian of eq. 13 for grey levels."""
        t = full(len(x0), 1, dtype=np.int64, device=x0.device)
        mu, var = self.p_mean_variance(self.q_sample(x0, t, randn_like(x0)), t)
        sigma = self.coef(var ** 0.5, x0)
        nll = (-Normal(mu, sigma).log_prob(x0) if self.levels is None
               else discretized_gaussian_nll(x0, mu, sigma, self.levels))
        return nll.reshape(len(x0), -1).sum(axis=1)

    def bound(self, x0: Tensor, terms: int = 0) -> np.ndarray:
        """The variational bound L (eq. 5) per example, float64 (n,). terms = 0 sums all T - 1 KL terms;
        terms = k > 0 estimates their sum without bias from k times t ~ U{2..T} per example, scaled by
        (T - 1) / k (cheaper, the same in expectation)."""
        n = len(x0)
        total = self.prior_kl(x0).data.astype(np.float64) + self.decoder_nll(x0).data.astype(np.float64)
        if terms:
            draws = [randint(2, self.T + 1, (n,), device=x0.device) for _ in range(terms)]
            weight = (self.T - 1) / terms
        else:
            draws = [full(n, t, dtype=np.int64, device=x0.device) for t in range(2, self.T + 1)]
            weight = 1.0
        for t in draws:
            total = total + weight * self.kl_term(x0, t).data.astype(np.float64)
        return backend.to_device(total, "cpu")


# --- noise predictors eps_theta(x_t, t) ------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, dtype) -> Tensor:
    """The sinusoidal embedding of integer times t (n,) as (n, dim) constants (sin(t w_i), cos(t w_i)),
    w_i = 10000^(-i / (dim / 2)), i < dim / 2: the Transformer's position encoding (Vaswani et al. 2017,
    sec. 3.5), which Ho et al. use for t."""
    xp = backend.get_array_module(t.data)
    half = dim // 2
    angles = t.data[:, None] * xp.exp(-math.log(10000) * xp.arange(half) / half)[None]
    return Tensor(xp.concatenate([xp.sin(angles), xp.cos(angles)], axis=1).astype(dtype))


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for vectors: an MLP with SiLU units on x_t beside the embedding of t."""

    def __init__(self, dim: int, hidden: int = 128, layers: int = 3, embedding: int = 32):
        super().__init__()
        self.embedding = embedding
        self.mlp = nn.mlp([dim + embedding] + [hidden] * layers + [dim], activation=nn.SiLU)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mlp(concatenate([x, timestep_embedding(t, self.embedding, x.dtype)], axis=1))


class ResBlock(nn.Module):
    """The U-Net's residual block (Ho et al. 2020, app. B, after Wide ResNets): GroupNorm, SiLU, 3x3 conv;
    plus the time embedding projected to one bias per channel; GroupNorm, SiLU, 3x3 conv; plus the input
    (through a 1x1 conv where the channel count changes)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.t_proj(F.silu(t_emb)).reshape(len(h), -1, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class SelfAttention(nn.Module):
    """Single-head self-attention over the H W positions, added to the input: with q, k, v 1x1 convolutions
    of the normalized x, out_i = sum_j softmax_j(q_i . k_j / sqrt(C)) v_j (Vaswani et al. 2017, eq. 1)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = (t.swapaxes(1, 2) for t in split(self.qkv(self.norm(x)).reshape(n, 3 * c, h * w), 3, axis=1))
        out = F.scaled_dot_product_attention(q, k, v)       # (n, h w, c), its products BLAS's
        return x + self.proj(out.swapaxes(1, 2).reshape(n, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, t) for images (C, H, W): a small U-Net after Ho et al. (2020, app. B).

    Level i (of len(channels)) works at resolution H / 2^i with channels[i] channels: on the way down one
    ResBlock, whose output is kept for the skip connection, then a 3x3 convolution of stride 2; in the
    middle ResBlock, self-attention (if `attention`), ResBlock; on the way up one ResBlock on the upsampled
    features concatenated with the level's skip, then a 4x4 transposed convolution of stride 2. The time t
    enters every ResBlock through its sinusoidal embedding and a two-layer MLP. H and W must be divisible by
    2^(len(channels) - 1).
    """

    def __init__(self, in_channels: int, channels: tuple = (32, 64), attention: bool = True, groups: int = 8):
        super().__init__()
        self.t_dim = channels[0]
        t_hidden = 4 * channels[0]
        self.t_mlp = nn.mlp([self.t_dim, t_hidden, t_hidden], activation=nn.SiLU)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        last = len(channels) - 1
        down, up, c = [], [], channels[0]
        for i, c_i in enumerate(channels):
            down.append(ResBlock(c, c_i, t_hidden, groups))
            c = c_i
        self.down = nn.ModuleList(down)
        self.downsample = nn.ModuleList([nn.Conv2d(c_i, c_i, 3, stride=2, padding=1) for c_i in channels[:-1]])
        self.mid1 = ResBlock(c, c, t_hidden, groups)
        self.attention = SelfAttention(c, groups) if attention else None
        self.mid2 = ResBlock(c, c, t_hidden, groups)
        for i in range(last, -1, -1):
            up.append(ResBlock(c + channels[i], channels[i], t_hidden, groups))
            c = channels[i]
        self.up = nn.ModuleList(up)
        self.upsample = nn.ModuleList([nn.ConvTranspose2d(c_i, c_i, 4, stride=2, padding=1)
                                       for c_i in channels[:0:-1]])
        self.norm_out = nn.GroupNorm(groups, c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t_emb = self.t_mlp(timestep_embedding(t, self.t_dim, x.dtype))
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, t_emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid1(h, t_emb)
        if self.attention is not None:
            h = self.attention(h)
        h = self.mid2(h, t_emb)
        for i, block in enumerate(self.up):
            h = block(concatenate([h, skips.pop()], axis=1), t_emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --- the recipe ------------------------------------------------------------------------------------------


class DDPMRecipe(Recipe):
    """`minigen train ddpm`: a DDPM trained on L_simple, evaluated by the variational bound, sampled
    ancestrally or by DDIM, all with an exponential moving average of the weights.

    Options: net ('mlp' | 'unet'; 'auto' picks the U-Net for images), T, schedule ('linear' | 'cosine'),
    hidden (MLP width), channels (the U-Net's widths: channels * 2^i at level i of `depth`), attention,
    ema (the decay), sampler ('ddim' | 'ancestral'), ddim_steps, eta, variance ('beta' | 'beta_tilde', the
    reverse process's sigma_t^2), bound_terms (KL terms drawn per example in the evaluation's bound; 0 sums
    all T). The default sampler is deterministic DDIM in 50 steps: ancestral sampling evaluates the network
    T = 1000 times a sample, minutes on a CPU for a U-Net.

    The EMA is a second `Diffusion` module (its parameters frozen), used for evaluation and sampling and
    updated as theta_ema <- d theta_ema + (1 - d) theta after each step with d = min(ema, (1 + t) / (10 + t))
    (the warm-up of TensorFlow's ExponentialMovingAverage, so that short runs average recent weights, not the
    initial ones). It is a module rather than `optim.EMA` because the loop saves, restores and moves modules
    to spec.device: `optim.EMA` keeps its averages in arrays made where the parameters were at construction
    (the CPU), outside the checkpoint.
    """

    name = "ddpm"
    default_dataset = "digits"
    default_epochs = 100.0          # ~1200 updates of batch 128: recognizable 8x8 digits in minutes of CPU
    kinds = ("binary", "levels", "continuous")

    def __init__(self, spec, lr: float = 1e-3, net: str = "auto", T: int = 1000,  # noqa: N803 - the papers' T
                 schedule: str = "linear", hidden: int = 128, channels: int = 16, depth: int = 2,
                 attention: bool = True, ema: float = 0.999, sampler: str = "ddim", ddim_steps: int = 50,
                 eta: float = 0.0, variance: str = "beta", bound_terms: int = 16):
        if net == "auto":
            net = "unet" if spec.is_image else "mlp"
        if net not in ("mlp", "unet") or (net == "unet" and not spec.is_image):
            raise ValueError(f"net must be 'mlp' or (for images) 'unet', got {net!r}")
        if sampler not in ("ancestral", "ddim"):
            raise ValueError(f"sampler must be 'ancestral' or 'ddim', got {sampler!r}")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.spec, self.ema_decay, self.bound_terms = spec, ema, bound_terms
        self.ddim_steps = ddim_steps if sampler == "ddim" else None
        self.eta = eta

        def build() -> Diffusion:
            if net == "unet":
                eps_net = UNet(spec.shape[0], tuple(channels * 2 ** i for i in range(depth)), attention)
            else:
                eps_net = MLPDenoiser(spec.dim, hidden)
            levels = None if spec.kind == "continuous" else spec.levels
            return Diffusion(eps_net, beta_schedule(schedule, T), levels, spec.is_image, variance)

        self.model, self.ema = build(), build()
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.opt = optim.Adam(self.model.parameters(), lr=lr)

    def modules(self) -> dict:
        return {"model": self.model, "ema": self.ema}

    def optimizers(self) -> dict:
        return {"opt": self.opt}

    def to_model(self, x: Tensor) -> Tensor:
        """Data as the model sees it: images from [0, 1] to [-1, 1], vectors as they are."""
        return 2 * x - 1 if self.spec.is_image else x

    def step(self, batch, t: int) -> dict:
        loss = self.model.loss(self.to_model(batch[0]))
        self.opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(self.model.parameters(), 1.0)      # Ho et al. 2020, app. B
        self.opt.step()
        decay = min(self.ema_decay, (1 + t) / (10 + t))
        for p_ema, p in zip(self.ema.parameters(), self.model.parameters()):
            p_ema.data += (1 - decay) * (p.data - p_ema.data)
        return {"loss": loss.item()}

    @no_grad()
    def evaluate(self, loader) -> dict:
        """The bound in nats per example and bits/dim, and L_simple, of the EMA model on held-out data."""
        nll, loss, n = 0.0, 0.0, 0
        for batch in loader:
            x0 = self.to_model(batch[0])
            nll += float(self.ema.bound(x0, self.bound_terms).sum())
            loss += self.ema.loss(x0).item() * len(x0)
            n += len(x0)
        return {**likelihood_metrics(nll / n, self.spec, density=False), "loss": loss / n}

    @no_grad()
    def sample(self, n: int) -> np.ndarray:
        x = self.ema.sample(n, self.spec.shape, self.ddim_steps, self.eta).numpy()
        return np.clip((x + 1) / 2, 0, 1) if self.spec.is_image else x
