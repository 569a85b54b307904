"""Variational autoencoders: the VAE (Kingma & Welling 2014), the conditional VAE (Sohn et al. 2015), the
hierarchical VAE with NVAE's residual normal posterior (Vahdat & Kautz 2020), and their evaluation by the
ELBO and the importance-weighted bound (Burda et al. 2016).

One model serves all three. An encoder network maps x to features h; L stochastic layers z_1 .. z_L are
drawn top-down, each from
    prior      p(z_l | z_<l)    = N(mu_p, sigma_p^2),       p(z_1) = N(0, I)
    posterior  q(z_l | x, z_<l) = N(mu_p + d_mu, sigma_p^2 exp(d_log_var)),   (d_mu, d_log_var) = f_l(h, z_<l)
so that with L = 1 the posterior is the VAE's q(z|x) = N(mu(x), diag exp(log_var(x))). The decoder maps
z = (z_1, .., z_L) to the parameters of p(x|z): Bernoulli logits, or the mean of a Gaussian whose variance is
fixed or learned (one scalar, as probabilistic PCA's sigma^2). A conditional model feeds the one-hot label y
to the posterior heads and to the decoder. Encoder and decoder are MLPs or convolutional nets.

For one example and K samples z^(k) ~ q(z|x), the log-weights log w_k = log p(x|z^(k)) + log p(z^(k)) -
log q(z^(k)|x) give both bounds:
    ELBO   = 1/K sum_k log p(x|z^(k)) - KL(q || p)          (Kingma & Welling 2014, eq. 10; KL per layer)
    IWAE_K = log 1/K sum_k w_k  <=  log p(x)                (Burda et al. 2016, eq. 8)
and ELBO <= IWAE_1 <= IWAE_K, non-decreasing in K in expectation.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .. import backend, nn, optim
from ..data.transforms import binarize
from ..distributions import normal_log_prob
from ..metrics import likelihood_metrics
from ..nn import functional as F
from ..ops import broadcast_to, concatenate, exp, logsumexp, one_hot, sigmoid, split, stack
from ..tensor import Tensor, no_grad, randn_like, tensor, zeros
from ..train import Recipe, save_samples


def log_normal(x: Tensor, mu, log_var) -> Tensor:
    """log N(x; mu, diag exp(log_var)) summed over the last axis."""
    return normal_log_prob(x, mu, log_var).sum(axis=-1)


def reparameterize(mu: Tensor, log_var: Tensor) -> Tensor:
    """z = mu + sigma * eps, sigma = exp(log_var / 2), eps ~ N(0, I) (Kingma & Welling 2014, sec. 2.4)."""
    return mu + exp(0.5 * log_var) * randn_like(mu)


def residual_normal_kl(d_mu: Tensor, d_log_var: Tensor, log_var_p) -> Tensor:
    """KL(N(mu_p + d_mu, sigma_p^2 exp(d_log_var)) || N(mu_p, sigma_p^2)) summed over the last axis:
    1/2 (d_mu^2 / sigma_p^2 + exp(d_log_var) - 1 - d_log_var)  (Vahdat & Kautz 2020, eq. 2). With the
    standard normal prior this is the VAE's 1/2 (mu^2 + sigma^2 - 1 - log sigma^2) (Kingma & Welling, app. B).
    The KL depends on the means only through their difference, so F.kl_normal takes d_mu against 0."""
    return F.kl_normal(d_mu, log_var_p + d_log_var, 0.0, log_var_p).sum(axis=-1)


# --- networks --------------------------------------------------------------------------------------------


class Unflatten(nn.Module):
    """(N, prod(shape)) -> (N, *shape)."""

    def __init__(self, shape: tuple):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape((len(x.data),) + self.shape)


def mlp_nets(data_shape: tuple, hidden: tuple) -> tuple[nn.Module, nn.Module, int]:
    """(encoder x -> h, decoder body, their width): Linear + ReLU layers D -> hidden[0] -> .. -> hidden[-1],
    and the mirror image back to D (no hidden layers: both linear)."""
    sizes = [math.prod(data_shape), *hidden]
    encoder = nn.Sequential(nn.Flatten(), *nn.mlp(sizes, final_activation=True))
    decoder = nn.Sequential(*([nn.ReLU()] if hidden else []), *nn.mlp(sizes[::-1]), Unflatten(data_shape))
    return encoder, decoder, sizes[-1]


def conv_nets(data_shape: tuple, hidden: tuple) -> tuple[nn.Module, nn.Module, int]:
    """(encoder, decoder body, width) with one stride-2 4x4 convolution per entry of `hidden` (channels),
    and transposed convolutions back; H and W must be divisible by 2^len(hidden)."""
    c, height, width = data_shape
    scale = 2 ** len(hidden)
    if height % scale or width % scale:
        raise ValueError(f"conv nets with {len(hidden)} stride-2 layers need H, W divisible by {scale}, "
                         f"got {data_shape}")
    channels = [c, *hidden]
    encoder, decoder = [], []
    for a, b in zip(channels, channels[1:]):
        encoder += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
    for a, b in zip(channels[::-1], channels[-2::-1]):
        decoder += [nn.ReLU(), nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)]
    bottom = (hidden[-1], height // scale, width // scale)
    return (nn.Sequential(*encoder, nn.Flatten()), nn.Sequential(decoder[0], Unflatten(bottom), *decoder[1:]),
            math.prod(bottom))


NETS = {"mlp": mlp_nets, "conv": conv_nets}


# --- the model -------------------------------------------------------------------------------------------


class VAE(nn.Module):
    """A VAE with `layers` stochastic layers of `latent` units each (layers > 1: hierarchical, top-down),
    conditioned on one of `classes` labels when classes > 0. likelihood: "bernoulli" (decoder gives
    logits) or "gaussian" (decoder gives the mean; log-variance `x_log_var`, learned when None)."""

    def __init__(self, data_shape: tuple, latent: int = 16, layers: int = 1, arch: str = "mlp",
                 hidden: tuple = (256, 256), likelihood: str = "bernoulli", x_log_var: float | None = None,
                 classes: int = 0, prior_hidden: int = 64):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if arch not in NETS:
            raise ValueError(f"arch must be one of {list(NETS)}, got {arch!r}")
        self.data_shape, self.latent, self.classes, self.likelihood = tuple(data_shape), latent, classes, likelihood
        self.encoder, decoder_body, width = NETS[arch](self.data_shape, tuple(hidden))
        self.posteriors = nn.ModuleList([nn.Linear(width + classes + l * latent, 2 * latent) for l in range(layers)])
        self.priors = nn.ModuleList([nn.Sequential(nn.Linear(l * latent, prior_hidden), nn.ReLU(),
                                                   nn.Linear(prior_hidden, 2 * latent)) for l in range(1, layers)])
        self.decoder = nn.Sequential(nn.Linear(layers * latent + classes, width), decoder_body)
        if likelihood == "gaussian":
            if x_log_var is None:
                self.x_log_var = nn.Parameter(np.zeros((), np.float32))
            else:
                self.register_buffer("x_log_var", Tensor(np.float32(x_log_var)))

    def label(self, y) -> Tensor | None:
        """One-hot labels as floats (None for an unconditional model)."""
        if not self.classes:
            return None
        if y is None:
            raise ValueError(f"this VAE is conditioned on {self.classes} classes: pass the labels y")
        weight = self.decoder[0].weight
        y = backend.to_device(y.data if isinstance(y, Tensor) else np.asarray(y), weight.device)
        return one_hot(y, self.classes, dtype=weight.dtype)

    def top_down(self, n: int, h: Tensor | None = None, y: Tensor | None = None, draw: bool = True):
        """z = (z_1, .., z_L) for n rows, with log p(z) - log q(z|x) (n,) and the closed-form KL of each layer
        (L, n) (Vahdat & Kautz 2020, eq. 2).
        Given encoder features h, z comes from the posterior; without, from the prior (the ratio and the KL
        are then zero). draw=False takes each layer's mean instead of a sample."""
        like = self.posteriors[0].weight
        zs, log_ratio, kls = [], 0.0, []
        for l, posterior in enumerate(self.posteriors):
            if l == 0:
                mu_p = log_var_p = zeros(n, self.latent, dtype=like.dtype, device=like.device)
            else:
                mu_p, log_var_p = split(self.priors[l - 1](concatenate(zs, axis=1)), 2, axis=1)
            if h is None:
                mu, log_var = mu_p, log_var_p
            else:
                d_mu, d_log_var = split(posterior(concatenate([h] + ([y] if y is not None else []) + zs, axis=1)),
                                        2, axis=1)
                mu, log_var = mu_p + d_mu, log_var_p + d_log_var
                kls.append(residual_normal_kl(d_mu, d_log_var, log_var_p))
            z = reparameterize(mu, log_var) if draw else mu
            if h is not None:
                log_ratio = log_ratio + log_normal(z, mu_p, log_var_p) - log_normal(z, mu, log_var)
            zs.append(z)
        return concatenate(zs, axis=1), log_ratio, stack(kls) if kls else None

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The decoder's output (logits or Gaussian mean), shaped like the data."""
        return self.decoder(concatenate([z, y], axis=1) if y is not None else z)

    def mean(self, out: Tensor) -> Tensor:
        """E[x | z] from the decoder's output."""
        return sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_px(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) summed over the last axis: Bernoulli from logits, or Gaussian."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, broadcast_to(x, out.shape), reduction="none").sum(axis=-1)
        return log_normal(x, out, self.x_log_var)

    def log_weights(self, x: Tensor, y=None, k: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """For K = k samples z ~ q(z|x) per example: log p(x|z) and log p(z) - log q(z|x), each (K, B), and
        the KL of each layer (L, K, B)."""
        b = len(x.data)
        h = self.encoder(x)
        h = broadcast_to(h, (k,) + h.shape).reshape(k * b, -1)
        y = self.label(y)
        y = broadcast_to(y, (k,) + y.shape).reshape(k * b, -1) if y is not None else None
        z, log_ratio, kl = self.top_down(k * b, h, y)
        out = self.decode(z, y).reshape(k, b, -1)
        return self.log_px(x.reshape(b, -1), out), log_ratio.reshape(k, b), kl.reshape(-1, k, b)

    def elbo(self, x: Tensor, y=None, samples: int = 1, beta: float = 1.0) -> Tensor:
        """Per example: 1/L sum_l log p(x|z_l) - beta KL(q(z|x) || p(z))  (Kingma & Welling 2014, eq. 10;
        beta < 1 during KL warm-up, beta != 1 for the beta-VAE)."""
        log_px, _, kl = self.log_weights(x, y, samples)
        return (log_px - beta * kl.sum(axis=0)).mean(axis=0)

    def iwae(self, x: Tensor, y=None, k: int = 1) -> Tensor:
        """Per example: log 1/k sum_i p(x, z_i) / q(z_i|x)  (Burda et al. 2016, eq. 8)."""
        log_px, log_ratio, _ = self.log_weights(x, y, k)
        return logsumexp(log_px + log_ratio, axis=0) - math.log(k)

    def log_likelihood(self, x: Tensor, y=None, k: int = 5000, rows: int = 50000) -> np.ndarray:
        """The IWAE_k estimate of log p(x) per example, in nats: the k samples drawn in chunks of at most
        `rows` (samples x examples) and combined by a running logsumexp, so memory does not grow with k."""
        b = len(x.data)
        chunk = max(1, rows // b)
        total = np.full(b, -np.inf)
        with no_grad():
            for start in range(0, k, chunk):
                log_px, log_ratio, _ = self.log_weights(x, y, min(chunk, k - start))
                total = np.logaddexp(total, backend.to_device(logsumexp(log_px + log_ratio, axis=0).data, "cpu"))
        return total - math.log(k)

    def sample(self, n: int, y=None) -> Tensor:
        """E[x | z] for z from the prior (top-down), with labels y for a conditional model."""
        z, _, _ = self.top_down(n)
        return self.mean(self.decode(z, self.label(y)))


# --- training --------------------------------------------------------------------------------------------


def prepare_pixels(x: Tensor, pixels: str, rng, levels: int = 256) -> Tensor:
    """The data a model sees: "dynamic": each pixel a fresh Bernoulli draw with its intensity as probability
    (Burda et al. 2016); "threshold": x >= 1/2; "dequantize": (grey level + u) / levels, u ~ U[0, 1);
    "as-is". `rng` draws the noise (any NumPy or CuPy generator)."""
    xp = backend.get_array_module(x.data)
    if pixels == "as-is":
        return x
    if pixels == "threshold":
        return Tensor(binarize(x.data).astype(x.dtype, copy=False))
    u = backend.to_device(rng.random(x.shape), x.device).astype(x.dtype)
    if pixels == "dynamic":
        return Tensor((u < x.data).astype(x.dtype))
    if pixels == "dequantize":
        return Tensor((xp.rint(x.data * (levels - 1)) + u) / levels)
    raise ValueError(f"pixels must be 'dynamic', 'threshold', 'dequantize' or 'as-is', got {pixels!r}")


class VAERecipe(Recipe):
    """`minigen train vae`: Adam on the negative ELBO (samples=L reparameterized draws per example, KL
    weight beta reached linearly over `warmup` steps), or on the IWAE bound with k = samples when iwae=True.
    `pixels` says how images are binarized ("dynamic": resampled every time a batch is drawn; "threshold";
    the fixed binarized-MNIST dataset is already binary: "as-is") or dequantized (levels grey levels);
    the test set is binarized / dequantized once with a fixed seed. Evaluation: ELBO, the KL of each layer
    (kl_1 the top), IWAE_{eval_k} and the NLL -IWAE in nats per example, and bits/dim for dequantized data.
    Options: latent, layers, arch ("mlp", "conv"), hidden, likelihood, x_log_var, samples, iwae, beta, warmup,
    pixels, eval_k, lr."""

    name = "vae"
    default_epochs = 100

    def __init__(self, spec, latent: int = 16, layers: int = 1, arch: str = "mlp", hidden: tuple = (256, 256),
                 likelihood: str = "bernoulli", x_log_var: float | None = None, samples: int = 1,
                 iwae: bool = False, beta: float = 1.0, warmup: int = 0, pixels: str | None = None,
                 eval_k: int = 100, lr: float = 1e-3):
        self.spec = spec
        classes = spec.classes if self.needs_labels else 0
        self.model = VAE(spec.shape, latent, layers, arch, hidden, likelihood, x_log_var, classes)
        self.optimizer = optim.Adam(self.model.parameters(), lr=lr)
        binary = likelihood == "bernoulli" and spec.kind == "levels"
        self.pixels = pixels or ("dynamic" if binary else "as-is")
        self.samples, self.iwae, self.beta, self.warmup, self.eval_k = samples, iwae, beta, warmup, eval_k

    def modules(self) -> dict:
        return {"model": self.model}

    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer}

    def _split(self, batch):
        """(x, y): the labels only for a conditional model."""
        return batch[0], (batch[1] if self.model.classes else None)

    def step(self, batch, t: int) -> dict:
        x, y = self._split(batch)
        x = prepare_pixels(x, self.pixels, backend.generator(x.device), self.spec.levels)
        self.model.train()
        beta_t = self.beta * min(1.0, t / self.warmup) if self.warmup else self.beta
        bound = self.model.iwae(x, y, self.samples) if self.iwae else self.model.elbo(x, y, self.samples, beta_t)
        loss = -bound.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "beta": beta_t}

    def evaluate(self, loader) -> dict:
        self.model.eval()
        rng = np.random.default_rng(0)          # one fixed binarization / dequantization of the test set
        terms, log_p = [], []
        for batch in loader:
            x, y = self._split(batch)
            x = prepare_pixels(x, self.pixels, rng, self.spec.levels)
            with no_grad():
                log_px, _, kl = self.model.log_weights(x, y)      # one sample: log p(x|z) and each layer's KL
                terms.append(backend.to_device(concatenate([log_px, kl[:, 0]]).data, "cpu"))
            log_p.append(self.model.log_likelihood(x, y, self.eval_k))
        terms, nll = np.concatenate(terms, axis=1).mean(axis=1), float(-np.concatenate(log_p).mean())
        metrics = {"elbo": float(terms[0] - terms[1:].sum()), f"iwae_{self.eval_k}": -nll}
        metrics.update({f"kl_{l + 1}": float(kl) for l, kl in enumerate(terms[1:])})
        # a density of dequantized levels bounds their probability; binarized pixels are the data modelled
        return {**metrics, **likelihood_metrics(nll, self.spec, density=self.pixels == "dequantize")}

    def sample(self, n: int) -> np.ndarray:
        self.model.eval()
        with no_grad():
            y = np.arange(n) % self.model.classes if self.model.classes else None
            return self.model.sample(n, y).numpy().clip(0, 1)


class CVAERecipe(VAERecipe):
    """`minigen train cvae`: the VAE conditioned on the label (the dataset's classes); samples cycle
    through the classes."""

    name = "cvae"
    needs_labels = True


class HVAERecipe(VAERecipe):
    """`minigen train hvae`: the VAE with `layers` (default 2) stochastic layers, top-down prior and
    residual normal posterior."""

    name = "hvae"

    def __init__(self, spec, layers: int = 2, **options):
        super().__init__(spec, layers=layers, **options)


# --- pictures --------------------------------------------------------------------------------------------


def encode_mean(model: VAE, x: Tensor, y=None) -> Tensor:
    """The posterior means of all layers' z for x (top-down, each layer at its upper layers' means)."""
    return model.top_down(len(x.data), model.encoder(x), model.label(y), draw=False)[0]


def save_reconstructions(model: VAE, x: Tensor, path, y=None) -> None:
    """Inputs beside their reconstructions E[x | z = posterior mean]: pairs (x_i, x_hat_i) in a square grid,
    whose rows hold whole pairs when len(x) is 2 m^2 (8, 18, 32, ...)."""
    with no_grad():
        x_hat = model.mean(model.decode(encode_mean(model, x, y), model.label(y)))
    save_samples(np.stack([x.numpy(), x_hat.numpy()], axis=1).reshape((-1,) + x.shape[1:]), path)


def save_manifold(model: VAE, path, n: int = 20, y=None) -> None:
    """Kingma & Welling's Figure 4: for a 2-D latent, E[x | z] over an n x n grid of z whose coordinates are
    the standard normal's quantiles of evenly spaced probabilities in (0, 1)."""
    if model.latent * len(model.posteriors) != 2:
        raise ValueError("the latent manifold picture needs a model with a 2-D latent space")
    q = np.array([NormalDist().inv_cdf(p) for p in (np.arange(n) + 0.5) / n])
    z = np.stack(np.meshgrid(q, q[::-1]), axis=-1).reshape(-1, 2).astype(backend.get_default_dtype())
    with no_grad():
        z = tensor(z, device=model.decoder[0].weight.device)
        x = model.mean(model.decode(z, model.label(None if y is None else np.full(n * n, y))))
    save_samples(x.numpy(), path)


def save_interpolations(model: VAE, x_a: Tensor, x_b: Tensor, path) -> None:
    """One row per pair (x_a[i], x_b[i]): E[x | z] along the line between their posterior means, with as
    many steps as pairs (a square grid)."""
    n = len(x_a.data)
    t = np.linspace(0, 1, n, dtype=backend.get_default_dtype())[None, :, None]
    with no_grad():
        z_a, z_b = encode_mean(model, x_a).numpy()[:, None], encode_mean(model, x_b).numpy()[:, None]
        z = tensor(((1 - t) * z_a + t * z_b).reshape(n * n, -1), device=x_a.device)
        save_samples(model.mean(model.decode(z)).numpy(), path)


def save_class_samples(model: VAE, path) -> None:
    """A conditional model's samples, one row per class (classes x classes images)."""
    c = model.classes
    with no_grad():
        save_samples(model.sample(c * c, np.repeat(np.arange(c), c)).numpy().clip(0, 1), path)
