"""A plain MLP autoencoder: an encoder z = f(x) to a small code, a decoder x_hat = g(z) back, both trained to
make x_hat close to x. For data in [0, 1] (images) the decoder gives logits and the loss is the binary
cross-entropy sum over pixels; otherwise it is the squared error. It has no prior over z, so to sample
we draw z from a diagonal Gaussian fitted to the codes of the training batches (a running mean and
variance) and decode: a picture of why the VAE adds a prior.
"""
from __future__ import annotations

import numpy as np

from .. import nn, optim
from ..nn import functional as F
from ..ops import mean, sigmoid, sum as sum_, var
from ..tensor import Tensor, no_grad, randn
from ..train import Recipe


class Autoencoder(nn.Module):
    def __init__(self, dim: int, hidden: int = 256, latent: int = 16, code_momentum: float = 0.01):
        super().__init__()
        self.encoder = nn.mlp([dim, hidden, hidden, latent])
        self.decoder = nn.mlp([latent, hidden, hidden, dim])
        self.code_momentum = code_momentum
        self.register_buffer("code_mean", Tensor(np.zeros(latent, np.float32)))
        self.register_buffer("code_var", Tensor(np.ones(latent, np.float32)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z, decoder output) for a batch of flat x."""
        z = self.encoder(x)
        return z, self.decoder(z)

    def track_codes(self, z: Tensor) -> None:
        """Running mean and variance of the codes, for sampling."""
        m = self.code_momentum
        with no_grad():
            self.code_mean.data = (1 - m) * self.code_mean.data + m * mean(z, axis=0).data
            self.code_var.data = (1 - m) * self.code_var.data + m * var(z, axis=0).data


class AERecipe(Recipe):
    """`minigen train ae`: Adam on the reconstruction loss; evaluation reports the mean squared error per
    pixel (and the loss) on held-out data. Options: hidden, latent, lr."""

    name = "ae"
    default_epochs = 250

    def __init__(self, spec, hidden: int = 256, latent: int = 16, lr: float = 1e-3, binary_loss: bool = True):
        self.spec = spec
        self.binary_loss = binary_loss          # data in [0, 1]: Bernoulli cross-entropy on logits
        self.model = Autoencoder(spec.dim, hidden, latent)
        self.optimizer = optim.Adam(self.model.parameters(), lr=lr)

    def modules(self) -> dict:
        return {"model": self.model}

    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer}

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(loss summed over dimensions and averaged over the batch, reconstruction x_hat)."""
        z, out = self.model(x)
        if self.binary_loss:
            nll = F.binary_cross_entropy_with_logits(out, x, reduction="sum")
            return nll * (1.0 / len(x)), sigmoid(out)
        return F.mse_loss(out, x, reduction="sum") * (1.0 / len(x)), out

    def step(self, batch, t: int) -> dict:
        x = batch[0].reshape(len(batch[0]), -1)
        self.model.train()
        loss, _ = self.loss(x)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.model.track_codes(self.model.encoder(x.detach()))
        return {"loss": loss.item()}

    def evaluate(self, loader) -> dict:
        self.model.eval()
        total_loss, total_se, n = 0.0, 0.0, 0
        with no_grad():
            for batch in loader:
                x = batch[0].reshape(len(batch[0]), -1)
                loss, x_hat = self.loss(x)
                total_loss += loss.item() * len(x)
                total_se += sum_((x_hat - x) ** 2).item()
                n += len(x)
        return {"loss": total_loss / n, "mse_per_dim": total_se / (n * self.spec.dim)}

    def sample(self, n: int) -> np.ndarray:
        self.model.eval()
        with no_grad():
            z = randn(n, len(self.model.code_mean.data), device=self.spec.device) * self.model.code_var ** 0.5 \
                + self.model.code_mean
            out = self.model.decoder(z)
            x = sigmoid(out) if self.binary_loss else out
        return x.numpy().reshape((n,) + self.spec.shape)
