"""A neural energy-based model trained by maximum likelihood with short-run Langevin negatives.

The model is a density p_theta(x) = exp(-E_theta(x)) / Z_theta with E_theta a network (an MLP on points, a
small conv net on images, both with smooth SiLU units so that grad_x E is smooth) and Z_theta intractable.
The gradient of the negative log-likelihood is

    grad_theta -log p_theta(x) = grad_theta E_theta(x) - E_{x~ ~ p_theta}[grad_theta E_theta(x~)]

(the data term pushes the energy of data down, the model term pushes the energy of the model's own samples
up; Hinton 2002, Du & Mordatch 2019). Training minimizes its surrogate

    L = mean E(x+) - mean E(x-) + alpha mean(E(x+)^2 + E(x-)^2)

with x+ a data batch and x- samples held fixed (detached: no gradient flows through the sampler), plus the
small L2 energy penalty of Du & Mordatch, which keeps the energies near 0.

The negatives x- come from K steps of the unadjusted Langevin algorithm on E,

    x_{k+1} = x_k - (h / 2) grad_x E(x_k) + sigma sqrt(h) eps_k,      eps_k ~ N(0, I),

with step size h and noise scale sigma. With sigma = 1 this is Langevin dynamics, whose stationary law
tends to exp(-E) as h -> 0; sigma < 1 is the decoupled step / noise scale common in practice on images (a
gradient step far larger than the noise), which samples roughly exp(-E / sigma^2), a colder model.
The chains start from a replay buffer (Du & Mordatch 2019): each negative is a past negative
drawn from the buffer, or with probability `reinit` (5%) fresh uniform noise, and is written back after its K
steps, so that short chains continue each other across updates (persistent chains, Tieleman 2008; the
short-run view of Nijkamp et al. 2019). `sample(n)` runs longer chains from uniform noise.

There is no likelihood to report (log Z is not computed): evaluation gives the mean energy of held-out data
and of Langevin samples, their gap, and on the 8 / 25 Gaussians the modes the samples cover.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import backend, nn, optim
from ..data import EIGHT_GAUSSIANS, TWENTY_FIVE_GAUSSIANS
from ..metrics import mode_statistics
from ..ops import clip, mean
from ..tensor import Tensor, enable_grad, grad, no_grad, randn_like
from ..train import Recipe

POINT_BOX = 4.0     # 2-D toy sets lie within [-4, 4]^2: the range of the uniform noise and of the chains
LANGEVIN_SCALES = {"points": (0.01, 1.0), "images": (2.0, 0.005)}   # default (step_size h, noise sigma)
MIXTURES = {"8gaussians": EIGHT_GAUSSIANS, "25gaussians": TWENTY_FIVE_GAUSSIANS}


def langevin(energy: Callable[[Tensor], Tensor], x: Tensor, steps: int, step_size: float, noise: float = 1.0,
             bounds: tuple[float, float] | None = None) -> Tensor:
    """`steps` Langevin updates x <- x - (h / 2) grad_x E(x) + sigma sqrt(h) eps of every chain (rows of x)
    at once, with h = step_size and sigma = noise; each step clipped to `bounds` when given. `energy` maps a
    batch to one energy per example. Returns the final states, detached."""
    scale = noise * math.sqrt(step_size)
    with enable_grad():
        for _ in range(steps):
            x = x.detach().requires_grad_()
            g, = grad(energy(x).sum(), [x])
            with no_grad():
                x = x - (step_size / 2) * g + scale * randn_like(x)
                if bounds is not None:
                    x = clip(x, *bounds)
    return x.detach()


class Energy(nn.Module):
    """E_theta(x), one real number per example: a network `net` whose output (n, 1) is read as (n,)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).reshape(len(x))


def energy_network(spec, hidden: int, layers: int, width: int) -> Energy:
    """For vectors an MLP with `layers` hidden layers of `hidden` SiLU units; for images (C, H, W) a 3x3
    convolution and two strided 4x4 ones (width, 2 width, 2 width channels, each halving H and W) with SiLU
    units, then a linear map to one number. Smooth units make grad_x E, the Langevin drift, continuous."""
    if not spec.is_image:
        return Energy(nn.mlp([spec.dim] + [hidden] * layers + [1], activation=nn.SiLU))
    c, h, w = spec.shape
    return Energy(nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.SiLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), 1)))


def contrastive_loss(e_data: Tensor, e_model: Tensor, alpha: float) -> Tensor:
    """mean E(x+) - mean E(x-) + alpha mean(E(x+)^2 + E(x-)^2): its theta-gradient is the maximum-likelihood
    gradient (module docstring) plus that of the L2 energy penalty."""
    return mean(e_data) - mean(e_model) + alpha * (mean(e_data ** 2) + mean(e_model ** 2))


class ReplayBuffer:
    """Past Langevin negatives, the starting points of new chains. `x` holds `size` examples on `device`;
    `draw(n)` picks n of them at random, each replaced by fresh uniform noise on [low, high] with
    probability `reinit`; `store` writes the chains' end points back in their places."""

    def __init__(self, size: int, shape: tuple, low: float, high: float, reinit: float, device: str):
        self.shape, self.low, self.high, self.reinit, self.device = shape, low, high, reinit, device
        self.x = self.noise(size)

    def noise(self, n: int):
        """n uniform draws on [low, high]^shape, an array on the buffer's device."""
        u = backend.generator(self.device).random((n,) + self.shape, dtype=np.float32)
        return self.low + (self.high - self.low) * u

    def draw(self, n: int) -> tuple:
        """(indices, start points as a Tensor)."""
        gen, xp = backend.generator(self.device), backend.array_module(self.device)
        index = gen.integers(0, len(self.x), size=n)
        fresh = gen.random(n) < self.reinit
        start = xp.where(fresh.reshape((n,) + (1,) * len(self.shape)), self.noise(n), self.x[index])
        return index, Tensor(start)

    def store(self, index, x: Tensor) -> None:
        self.x[index] = x.data


class LangevinEBMRecipe(Recipe):
    """`minigen train ebm`: the energy network trained by maximum likelihood with replay-buffer Langevin
    negatives (module docstring), Adam(lr, betas (0, 0.999)) as Du & Mordatch. Options: hidden, layers (the
    MLP on vectors), width (the conv net on images), langevin_steps (K a training step), step_size (h),
    noise (sigma), buffer_size, reinit, alpha (L2 energy penalty), sample_steps (Langevin steps from noise in
    `sample`), lr. Unset, step_size and noise are Langevin's own on points (h = 0.01, sigma = 1) and the
    decoupled scales on images (h = 2, sigma = 0.005: a drift of grad_x E, a noise of 0.007 a step), where
    sigma = 1 would add noise of the order of the pixel range at every step."""

    name = "ebm"
    default_dataset = "8gaussians"
    default_epochs = 10
    kinds = ("continuous", "levels")

    def __init__(self, spec, lr: float = 3e-3, hidden: int = 128, layers: int = 3, langevin_steps: int = 20,
                 step_size: float | None = None, noise: float | None = None, buffer_size: int = 10000,
                 reinit: float = 0.05, alpha: float = 0.01, sample_steps: int = 200, width: int = 32):
        self.spec = spec
        self.E = energy_network(spec, hidden, layers, width)
        self.opt = optim.Adam(self.E.parameters(), lr=lr, betas=(0.0, 0.999))
        self.bounds = (0.0, 1.0) if spec.is_image else (-POINT_BOX, POINT_BOX)
        self.buffer = ReplayBuffer(buffer_size, spec.shape, *self.bounds, reinit, spec.device)
        self.langevin_steps, self.sample_steps = langevin_steps, sample_steps
        h, sigma = LANGEVIN_SCALES["images" if spec.is_image else "points"]
        self.step_size = h if step_size is None else step_size
        self.noise = sigma if noise is None else noise
        self.alpha = alpha

    def modules(self) -> dict:
        return {"E": self.E}

    def optimizers(self) -> dict:
        return {"E": self.opt}

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.x}

    def load_extra_state(self, state: dict) -> None:
        if "buffer" in state:
            self.buffer.x = backend.to_device(state["buffer"], self.spec.device)

    def run_chains(self, x: Tensor, steps: int) -> Tensor:
        """`steps` Langevin steps on the model's energy from x."""
        return langevin(self.E, x, steps, self.step_size, self.noise, self.bounds)

    def step(self, batch, t: int) -> dict:
        x = batch[0]
        index, start = self.buffer.draw(len(x))
        x_model = self.run_chains(start, self.langevin_steps)
        self.buffer.store(index, x_model)
        e_data, e_model = self.E(x), self.E(x_model)
        loss = contrastive_loss(e_data, e_model, self.alpha)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "energy_data": mean(e_data).item(), "energy_model": mean(e_model).item()}

    def langevin_samples(self, n: int) -> Tensor:
        """n chains of sample_steps Langevin steps from uniform noise, on the data's device."""
        return self.run_chains(Tensor(self.buffer.noise(n)), self.sample_steps)

    def sample(self, n: int) -> np.ndarray:
        return backend.to_device(self.langevin_samples(n).data, "cpu")

    def evaluate(self, loader, n_samples: int = 2000) -> dict:
        """Mean energy of the held-out data and of n_samples Langevin samples from noise, the gap between
        them (0 when the sampler matches the model on the data), and on the 8 / 25 Gaussians the modes the
        samples cover and their high-quality fraction (`metrics.mode_statistics`). No likelihood: log Z is
        not computed."""
        x_model = self.langevin_samples(n_samples)
        with no_grad():
            e_data = sum(self.E(b[0]).sum().item() for b in loader) / loader.num_examples
            e_model = mean(self.E(x_model)).item()
        metrics = {"energy_data": e_data, "energy_samples": e_model, "energy_gap": e_data - e_model}
        if self.spec.name in MIXTURES:
            mixture = MIXTURES[self.spec.name]
            samples = backend.to_device(x_model.data, "cpu")
            metrics.update(mode_statistics(samples, mixture.means, mixture.std))
        return metrics
