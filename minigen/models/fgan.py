"""f-GAN (Nowozin, Cseke & Tomioka 2016): a generator Q_theta trained to minimize an f-divergence
D_f(P || Q_theta) of its choice (`minigen.divergences`) through the variational bound, estimated by a critic
T = g_f(V_omega) with V_omega any real-valued network and g_f the divergence's output activation:

    F(theta, omega) = E_{x~P} g_f(V_omega(x)) - E_{x~Q_theta} f*(g_f(V_omega(x)))       (eq. 6 with eq. 7)

The critic ascends F; at its optimum g_f(V) = f'(p/q) and F = D_f(P || Q_theta) (eq. 4). The generator
descends F ("saddle": only the second term depends on theta), or ascends E_{x~Q_theta} g_f(V(x)) instead
("alternative", section 3.2; for the GAN divergence it is Goodfellow et al.'s non-saturating loss).

Updates: "single" is the paper's single-step gradient method (Algorithm 1): both gradients taken at the same
(theta, omega) on one minibatch, then both parameters stepped; "alternating" steps the critic first and then
the generator against the updated critic, as GANs usually are trained.

Which way the divergence pulls: forward KL, E_P log(p / q), is infinite where q = 0 < p, so Q_theta must
cover every mode of P; reverse KL, E_Q log(q / p), is infinite where p = 0 < q, so Q_theta is pushed off
the space between modes and may settle on a few. `generator_layers=0` makes the generator affine, x = W z + b,
so Q_theta is the Gaussian N(b, W W^T): the textbook picture of one Gaussian fitted to a mixture.
"""
from __future__ import annotations

import numpy as np

from .. import divergences, nn, optim
from ..data import EIGHT_GAUSSIANS, TWENTY_FIVE_GAUSSIANS
from ..divergences import FDivergence
from ..metrics import mode_statistics
from ..ops import mean
from ..tensor import Tensor, grad, no_grad, randn, tensor
from ..train import Recipe
from .gan import leaky_relu

MIXTURES = {"8gaussians": EIGHT_GAUSSIANS, "25gaussians": TWENTY_FIVE_GAUSSIANS}
UPDATES = ("alternating", "single")


def variational_objective(v_real: Tensor, v_fake: Tensor, div: FDivergence) -> Tensor:
    """F = E_P g_f(V(x)) - E_Q f*(g_f(V(x))) (eq. 6) from the critic's outputs V on data and on samples: a
    lower bound on D_f(P || Q), equal to it at the optimal critic."""
    return mean(div.activation(v_real)) - mean(div.conjugate_of_activation(v_fake))


def saddle_generator_loss(v_fake: Tensor, div: FDivergence) -> Tensor:
    """-E_Q f*(g_f(V(x))): the part of F that depends on theta (the generator descends F)."""
    return -mean(div.conjugate_of_activation(v_fake))


def alternative_generator_loss(v_fake: Tensor, div: FDivergence) -> Tensor:
    """-E_Q g_f(V(x)): the generator ascends the critic's output itself (section 3.2)."""
    return -mean(div.activation(v_fake))


GENERATOR_LOSSES = {"saddle": saddle_generator_loss, "alternative": alternative_generator_loss}


def _set_gradients(params: list, loss: Tensor, retain_graph: bool = False) -> None:
    """p.grad = d loss / d p for each p in params, nothing else touched (the optimizer then steps on it)."""
    for p, g in zip(params, grad(loss, params, retain_graph=retain_graph)):
        p.grad = g


class FGANRecipe(Recipe):
    """`minigen train fgan --opt divergence=kl`: an MLP generator and an MLP critic V on 2-D data, trained on
    the variational bound of the chosen f-divergence (kl, reverse-kl, js, gan, pearson, hellinger, tv), Adam.
    Options: divergence, updates ("alternating" or the paper's "single"-step method), generator_loss
    ("saddle" or "alternative"), latent, hidden, generator_layers (0: an affine, Gaussian generator), lr,
    beta1."""

    name = "fgan"
    default_dataset = "8gaussians"
    default_epochs = 20
    kinds = ("continuous",)

    def __init__(self, spec, divergence: str = "kl", updates: str = "alternating", generator_loss: str = "saddle",
                 latent: int = 2, hidden: int = 64, generator_layers: int = 2, lr: float = 1e-3,
                 beta1: float = 0.5):
        if updates not in UPDATES:
            raise ValueError(f"updates must be one of {', '.join(UPDATES)}, got {updates!r}")
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {', '.join(GENERATOR_LOSSES)}, "
                             f"got {generator_loss!r}")
        self.spec, self.updates, self.latent = spec, updates, latent
        self.div = divergences.divergence(divergence)
        self.generator_loss = GENERATOR_LOSSES[generator_loss]
        self.G = nn.mlp([latent] + [hidden] * generator_layers + [spec.dim], leaky_relu)
        self.V = nn.mlp([spec.dim, hidden, hidden, 1], leaky_relu)
        self.opt_G, self.opt_V = (optim.Adam(m.parameters(), lr=lr, betas=(beta1, 0.999))
                                  for m in (self.G, self.V))

    def modules(self) -> dict:
        return {"G": self.G, "V": self.V}

    def optimizers(self) -> dict:
        return {"G": self.opt_G, "V": self.opt_V}

    def noise(self, n: int) -> Tensor:
        return randn(n, self.latent, device=self.spec.device)

    def critic(self, x: Tensor) -> Tensor:
        """V(x), one real number a point (T(x) = g_f(V(x)) is the variational function)."""
        return self.V(x).reshape(len(x))

    def step(self, batch, t: int) -> dict:
        x = batch[0]
        V_params, G_params = list(self.V.parameters()), list(self.G.parameters())
        if self.updates == "single":
            # Algorithm 1: both gradients at (theta_t, omega_t), then omega ascends F and theta descends it
            v_fake = self.critic(self.G(self.noise(len(x))))
            F = variational_objective(self.critic(x), v_fake, self.div)
            loss_G = self.generator_loss(v_fake, self.div)
            _set_gradients(V_params, -F, retain_graph=True)
            _set_gradients(G_params, loss_G)
            self.opt_V.step()
            self.opt_G.step()
        else:
            with no_grad():
                x_fake = self.G(self.noise(len(x)))
            F = variational_objective(self.critic(x), self.critic(x_fake), self.div)
            _set_gradients(V_params, -F)
            self.opt_V.step()
            loss_G = self.generator_loss(self.critic(self.G(self.noise(len(x)))), self.div)
            _set_gradients(G_params, loss_G)
            self.opt_G.step()
        return {"objective": F.item(), "generator_loss": loss_G.item()}

    def sample(self, n: int) -> np.ndarray:
        with no_grad():
            return self.G(self.noise(n)).numpy()

    def evaluate(self, loader, n_samples: int = 2000) -> dict:
        """The bound F on held-out data against n_samples samples (the critic's estimate of D_f(P || Q));
        on the 8 / 25 Gaussians the modes covered and the fraction of high-quality samples."""
        held_out = np.concatenate([b[0].numpy() for b in loader])[:n_samples]
        samples = self.sample(n_samples)
        with no_grad():
            x, x_fake = (tensor(a, device=self.spec.device) for a in (held_out, samples))
            F = variational_objective(self.critic(x), self.critic(x_fake), self.div)
        metrics = {"test_objective": F.item()}
        mixture = MIXTURES.get(self.spec.name)
        if mixture is not None:
            metrics.update(mode_statistics(samples, mixture.means, mixture.std))
        return metrics
