"""Generative adversarial networks: a generator G maps noise z ~ N(0, I) to samples, a discriminator (or
critic) D tells them from data, and the two are trained against each other by alternating gradient steps.

- GAN (Goodfellow et al. 2014, eq. 1): min_G max_D V(D, G) = E_x log D(x) + E_z log(1 - D(G(z))), with
  D(x) = sigmoid(a(x)) for the logit a. The generator either minimizes the game's own term
  E_z log(1 - D(G(z))) ("minimax"), whose gradient vanishes when D rejects the samples (D(G(z)) -> 0,
  early in training), or maximizes E_z log D(G(z)) ("non-saturating", section 3 of the paper), whose
  gradient does not.
- DCGAN (Radford et al. 2016): the same game with a transposed-convolution + BatchNorm + ReLU generator,
  a strided-convolution + LeakyReLU(0.2) discriminator, and Adam(lr 2e-4, beta1 0.5).
- WGAN (Arjovsky et al. 2017, Algorithm 1): a critic f without sigmoid maximizes E_x f(x) - E_z f(G(z)),
  an estimate of the Wasserstein-1 distance when f is 1-Lipschitz, kept (roughly) so by clipping its
  weights to [-c, c]; n_critic critic updates per generator update; RMSprop.
- WGAN-GP (Gulrajani et al. 2017, Algorithm 1): the Lipschitz constraint as a penalty
  lambda (||grad_x f(x_hat)||_2 - 1)^2 on interpolates x_hat = eps x + (1 - eps) G(z); the penalty's
  gradient with respect to the critic's parameters is a gradient of a gradient (`minigen.grad` with
  create_graph=True), through the convolutions; Adam(lr 1e-4, betas (0, 0.9)); no BatchNorm in the critic.

One `step()` serves every variant: it is one critic update on a batch of data, followed by a generator
update every n_critic-th step; the variants differ only in their two losses (and WGAN's clipping).
Images are scaled to [-1, 1] for the tanh generator and back to [0, 1] for `sample`. `simultaneous_gda`
is the two-player toy V(x, y) = x y, on which simultaneous gradient descent-ascent circles outwards.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .. import nn, optim
from ..data import EIGHT_GAUSSIANS, TWENTY_FIVE_GAUSSIANS
from ..metrics import CLASSIFIER_WEIGHTS, image_metrics, load_classifier, mode_statistics
from ..ops import mean, softplus, sqrt, sum as sum_
from ..tensor import Tensor, grad, no_grad, rand, randn, tensor
from ..train import Recipe

# --- networks ----------------------------------------------------------------------------------------------


def leaky_relu() -> nn.Module:
    """LeakyReLU(0.2), the activation of both networks (Radford et al. 2016)."""
    return nn.LeakyReLU(0.2)


class DCGANGenerator(nn.Module):
    """z (n, latent) -> images (n, 1, H, H) in [-1, 1], H = 28 or 8: a transposed convolution from 1x1 to
    (H/4)x(H/4), then two that double the size (kernel 4, stride 2), BatchNorm + ReLU between, tanh out."""

    def __init__(self, latent: int, size: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent, 2 * width, size // 4), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.reshape(len(z), -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """images (n, 1, H, H) -> one score each (a logit, or the critic's value): two strided convolutions
    (kernel 4, stride 2) with LeakyReLU(0.2), BatchNorm on the second when asked, then a convolution over
    the remaining (H/4)x(H/4)."""

    def __init__(self, size: int, width: int = 64, batch_norm: bool = True):
        super().__init__()
        norm = [nn.BatchNorm2d(2 * width)] if batch_norm else []
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), *norm, nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, size // 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).reshape(len(x))


class MLPDiscriminator(nn.Module):
    """points (n, d) -> one score each."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.mlp([dim, hidden, hidden, hidden, 1], leaky_relu)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).reshape(len(x))


def build_networks(data_shape: tuple, latent: int, hidden: int, width: int,
                   critic_batch_norm: bool) -> tuple[nn.Module, nn.Module]:
    """(G, D): MLPs for points (d,), the DCGAN pair for square one-channel images (1, H, H) with H = 28 or 8."""
    if len(data_shape) == 1:
        return (nn.mlp([latent, hidden, hidden, hidden, data_shape[0]], leaky_relu),
                MLPDiscriminator(data_shape[0], hidden))
    if len(data_shape) == 3 and data_shape[0] == 1 and data_shape[1] == data_shape[2] and data_shape[1] % 4 == 0:
        size = data_shape[1]
        return DCGANGenerator(latent, size, width), DCGANDiscriminator(size, width, critic_batch_norm)
    raise ValueError(f"GANs here take 2-D points (d,) or square one-channel images (1, H, H) with H a "
                     f"multiple of 4, got data of shape {data_shape}")


# --- the losses, as the papers write them ------------------------------------------------------------------
# a = D's logit (D(x) = sigmoid(a)); log sigmoid(a) = -softplus(-a), log(1 - sigmoid(a)) = -softplus(a).


def discriminator_loss(a_real: Tensor, a_fake: Tensor) -> Tensor:
    """-V(D, G) = -(E_x log D(x) + E_z log(1 - D(G(z)))), Goodfellow et al. 2014 eq. 1 (D ascends V)."""
    return mean(softplus(-a_real)) + mean(softplus(a_fake))


def generator_loss_minimax(a_fake: Tensor) -> Tensor:
    """E_z log(1 - D(G(z))), the game's own term; d/da = -sigmoid(a) -> 0 as D(G(z)) -> 0."""
    return -mean(softplus(a_fake))


def generator_loss_non_saturating(a_fake: Tensor) -> Tensor:
    """-E_z log D(G(z)); d/da = -(1 - sigmoid(a)) -> -1 as D(G(z)) -> 0."""
    return mean(softplus(-a_fake))


GENERATOR_LOSSES = {"minimax": generator_loss_minimax, "non-saturating": generator_loss_non_saturating}


def critic_loss(f_real: Tensor, f_fake: Tensor) -> Tensor:
    """-(E_x f(x) - E_z f(G(z))), Arjovsky et al. 2017 Algorithm 1 (the critic ascends the difference)."""
    return mean(f_fake) - mean(f_real)


def wasserstein_generator_loss(f_fake: Tensor) -> Tensor:
    """-E_z f(G(z)), Arjovsky et al. 2017 Algorithm 1 line 10."""
    return -mean(f_fake)


def gradient_penalty(critic, x: Tensor, x_fake: Tensor, eps: Tensor | None = None) -> Tensor:
    """E (||grad_x_hat f(x_hat)||_2 - 1)^2 with x_hat = eps x + (1 - eps) x_fake, eps ~ U[0, 1] per example
    (Gulrajani et al. 2017, Algorithm 1 lines 6-7). The gradient is taken with create_graph=True, so the
    penalty is differentiable in the critic's parameters."""
    if eps is None:
        eps = rand(len(x), *([1] * (x.ndim - 1)), dtype=x.dtype, device=x.device)
    x_hat = (eps * x.detach() + (1 - eps) * x_fake.detach()).requires_grad_()
    g, = grad(sum_(critic(x_hat)), x_hat, create_graph=True)
    norm = sqrt(sum_(g * g, axis=tuple(range(1, g.ndim))) + 1e-12)    # + 1e-12: sqrt's gradient at 0
    return mean((norm - 1) ** 2)


# --- training: one step structure for every variant --------------------------------------------------------


class GANRecipe(Recipe):
    """`minigen train gan`: the GAN game with MLPs on 2-D data (DCGAN networks on images), Adam.
    Options: generator_loss ("non-saturating" or "minimax"), latent, hidden (MLP width), width (conv
    channels), lr, beta1, beta2, n_critic."""

    name = "gan"
    default_dataset = "8gaussians"
    default_epochs = 20
    critic_batch_norm = True
    betas = (0.5, 0.999)

    def __init__(self, spec, generator_loss: str = "non-saturating", latent: int | None = None, hidden: int = 128,
                 width: int = 64, lr: float = 2e-4, beta1: float | None = None, beta2: float | None = None,
                 n_critic: int = 1):
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {', '.join(GENERATOR_LOSSES)}, got {generator_loss!r}")
        self.spec = spec
        self.images = spec.is_image
        self.latent = latent or (64 if self.images else 2)
        self.G, self.D = build_networks(spec.shape, self.latent, hidden, width, self.critic_batch_norm)
        self.generator_loss_fn = GENERATOR_LOSSES[generator_loss]
        self.n_critic = n_critic
        betas = (self.betas[0] if beta1 is None else beta1, self.betas[1] if beta2 is None else beta2)
        self.opt_G, self.opt_D = (self.make_optimizer(m.parameters(), lr, betas) for m in (self.G, self.D))
        self.last_g_loss = 0.0

    def make_optimizer(self, params, lr: float, betas: tuple) -> optim.Optimizer:
        return optim.Adam(params, lr=lr, betas=betas)

    def modules(self) -> dict:
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict:
        return {"G": self.opt_G, "D": self.opt_D}

    def extra_state(self) -> dict:
        return {"last_g_loss": self.last_g_loss}     # what the steps between generator updates report

    def load_extra_state(self, state: dict) -> None:
        self.last_g_loss = float(state.get("last_g_loss", 0.0))

    # the two losses: overridden by the Wasserstein variants
    def d_loss(self, x: Tensor, x_fake: Tensor) -> tuple[Tensor, dict]:
        """(the discriminator's loss, float metrics)."""
        loss = discriminator_loss(self.D(x), self.D(x_fake))
        return loss, {"d_loss": loss.item()}

    def g_loss(self, x_fake: Tensor) -> Tensor:
        return self.generator_loss_fn(self.D(x_fake))

    def after_d_step(self) -> None:
        """Anything the critic's update is followed by (WGAN's weight clipping)."""

    def to_model_units(self, x):
        """Images from [0, 1] to the tanh range [-1, 1]; points as they are."""
        return x * 2 - 1 if self.images else x

    def noise(self, n: int) -> Tensor:
        return randn(n, self.latent, device=self.spec.device)

    def step(self, batch, t: int) -> dict:
        x = self.to_model_units(batch[0])
        self.G.train()
        self.D.train()
        # 1. the discriminator / critic: one ascent step on its objective, G held fixed
        with no_grad():
            x_fake = self.G(self.noise(len(x)))
        loss_d, metrics = self.d_loss(x, x_fake)
        self.opt_D.zero_grad()
        loss_d.backward()
        self.opt_D.step()
        self.after_d_step()
        # 2. the generator, after every n_critic critic steps: one descent step through D, whose
        #    parameters receive gradients here too but are not stepped (zero_grad above clears them)
        if t % self.n_critic == 0:
            loss_g = self.g_loss(self.G(self.noise(len(x))))
            self.opt_G.zero_grad()
            loss_g.backward()
            self.opt_G.step()
            self.last_g_loss = loss_g.item()
        return {**metrics, "g_loss": self.last_g_loss}

    def generate(self, z: Tensor) -> np.ndarray:
        """G(z) in data units ([0, 1] for images), BatchNorm on its running statistics."""
        self.G.eval()
        with no_grad():
            x = self.G(z).numpy()
        return (x + 1) / 2 if self.images else x

    def sample(self, n: int) -> np.ndarray:
        return self.generate(self.noise(n))

    def evaluate(self, loader, n_samples: int = 2000) -> dict:
        """Held-out discriminator loss; on the 8 / 25 Gaussians modes covered and high-quality fraction; on
        28x28 images FCD (against up to 2000 held-out images) and the IS analogue of n_samples samples."""
        self.D.eval()
        held_out = np.concatenate([b[0].numpy() for b in loader])
        with no_grad():
            x, x_fake = (self.to_model_units(tensor(a, device=self.spec.device))
                         for a in (held_out[:n_samples], self.sample(n_samples)))
            loss_d, metrics = self.d_loss(x, x_fake[:len(x)])
        metrics = {f"test_{k}": v for k, v in metrics.items()}
        if not self.images:
            for name, mixture in (("8gaussians", EIGHT_GAUSSIANS), ("25gaussians", TWENTY_FIVE_GAUSSIANS)):
                if mode_statistics(held_out, mixture.means, mixture.std)["high_quality"] > 0.9:
                    stats = mode_statistics(self.sample(n_samples), mixture.means, mixture.std)
                    metrics.update({f"{name}_{k}": v for k, v in stats.items()})
        elif self.spec.shape[1:] == (28, 28) and CLASSIFIER_WEIGHTS.exists():
            metrics.update(image_metrics(self.sample(n_samples), held_out[:2000], load_classifier()))
        return metrics


class DCGANRecipe(GANRecipe):
    """`minigen train dcgan`: the GAN recipe with its default on MNIST (DCGAN networks for images)."""

    name = "dcgan"
    default_dataset = "mnist"
    default_epochs = 5


class WGANRecipe(GANRecipe):
    """`minigen train wgan`: critic without sigmoid, weights clipped to [-clip, clip] after each critic step,
    n_critic = 5, RMSprop(lr 5e-5) (Arjovsky et al. 2017, Algorithm 1). Options: clip, n_critic, lr, latent,
    hidden, width."""

    name = "wgan"

    def __init__(self, spec, lr: float = 5e-5, n_critic: int = 5, clip: float = 0.01, **options):
        super().__init__(spec, lr=lr, n_critic=n_critic, **options)
        self.clip = clip

    def make_optimizer(self, params, lr: float, betas: tuple) -> optim.Optimizer:
        return optim.RMSprop(params, lr=lr)

    def d_loss(self, x: Tensor, x_fake: Tensor) -> tuple[Tensor, dict]:
        loss = critic_loss(self.D(x), self.D(x_fake))
        return loss, {"d_loss": loss.item(), "wasserstein": -loss.item()}

    def g_loss(self, x_fake: Tensor) -> Tensor:
        return wasserstein_generator_loss(self.D(x_fake))

    def after_d_step(self) -> None:
        optim.clip_weights_(self.D.parameters(), self.clip)


class WGANGPRecipe(WGANRecipe):
    """`minigen train wgan-gp`: the WGAN critic loss plus lambda (||grad f(x_hat)|| - 1)^2 instead of
    clipping, no BatchNorm in the critic, n_critic = 5, Adam(lr 1e-4, betas (0, 0.9)) (Gulrajani et al. 2017,
    Algorithm 1). Options: penalty (lambda), n_critic, lr, beta1, beta2, latent, hidden, width."""

    name = "wgan-gp"
    critic_batch_norm = False
    betas = (0.0, 0.9)

    def __init__(self, spec, lr: float = 1e-4, penalty: float = 10.0, **options):
        super().__init__(spec, lr=lr, **options)
        self.penalty = penalty

    def make_optimizer(self, params, lr: float, betas: tuple) -> optim.Optimizer:
        return optim.Adam(params, lr=lr, betas=betas)

    def d_loss(self, x: Tensor, x_fake: Tensor) -> tuple[Tensor, dict]:
        wasserstein_loss, metrics = super().d_loss(x, x_fake)
        if not self.D.training:                       # evaluation: the Wasserstein estimate alone
            return wasserstein_loss, metrics
        gp = gradient_penalty(self.D, x, x_fake)
        loss = wasserstein_loss + self.penalty * gp
        return loss, {**metrics, "d_loss": loss.item(), "gradient_penalty": gp.item()}

    def after_d_step(self) -> None:
        """No clipping: the penalty keeps the critic close to 1-Lipschitz."""


# --- the two-player toy V(x, y) = x y ----------------------------------------------------------------------


def simultaneous_gda(x0: float = 1.0, y0: float = 0.0, lr: float = 0.1, steps: int = 200) -> np.ndarray:
    """Iterates (steps + 1, 2) of simultaneous gradient descent-ascent on min_x max_y V(x, y) = x y:
    x <- x - lr dV/dx = x - lr y, y <- y + lr dV/dy = y + lr x, both from the same (x, y). The update is
    a rotation scaled by sqrt(1 + lr^2): the iterates circle the equilibrium (0, 0) and drift away from it."""
    x, y = tensor(x0, dtype=np.float64, requires_grad=True), tensor(y0, dtype=np.float64, requires_grad=True)
    path = [(x0, y0)]
    for _ in range(steps):
        dx, dy = grad(x * y, [x, y])
        x = (x - lr * dx).detach().requires_grad_()
        y = (y + lr * dy).detach().requires_grad_()
        path.append((x.item(), y.item()))
    return np.array(path)


# --- pictures ----------------------------------------------------------------------------------------------

_COLORS = [(20, 60, 160), (200, 60, 20), (30, 140, 60), (140, 40, 160)]


def save_line_plot(series: dict, path, size: int = 320, square: bool = False) -> None:
    """A PNG of curves {label: (xs, ys)} in distinct colors with their labels and value ranges written in the
    corner (Pillow only). square=True uses one scale on both axes (trajectories in the plane)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    xs = np.concatenate([np.asarray(v[0], float) for v in series.values()])
    ys = np.concatenate([np.asarray(v[1], float) for v in series.values()])
    lo, hi = np.array([xs.min(), ys.min()]), np.array([xs.max(), ys.max()])
    if square:
        lo, hi = np.full(2, min(lo)), np.full(2, max(hi))
    span = np.where(hi > lo, hi - lo, 1.0)
    margin = 24
    for i, (label, (sx, sy)) in enumerate(series.items()):
        px = margin + (np.asarray(sx, float) - lo[0]) / span[0] * (size - 2 * margin)
        py = size - margin - (np.asarray(sy, float) - lo[1]) / span[1] * (size - 2 * margin)
        color = _COLORS[i % len(_COLORS)]
        draw.line(list(zip(px.tolist(), py.tolist())), fill=color, width=1)
        draw.text((4, 4 + 11 * i), f"{label}: [{np.min(sy):.3g}, {np.max(sy):.3g}]", fill=color)
    draw.text((4, size - 14), f"x: [{lo[0]:.3g}, {hi[0]:.3g}]", fill=(0, 0, 0))
    image.save(path)

