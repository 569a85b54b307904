"""The plain VAE (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"): model, loss and training loop in
one file, to read beside PyTorch's examples/vae/main.py. On scikit-learn's 8x8 digits, binarized (no download).

    python examples/vae_minimal.py                  # 20 epochs, about 2 s on one core

Prints the test loss (the negative ELBO with one z per image, nats per example) after every epoch and saves a
grid of decoded samples from the prior to `--out`. `minigen.models.vae` is the full family (NVAE's
parameterization, IWAE bound).
"""
from __future__ import annotations

import argparse

import minigen as mg
import minigen.nn.functional as F
from minigen import nn, optim
from minigen.data import DataLoader, load_binarized_digits
from minigen.train import save_samples


class VAE(nn.Module):
    def __init__(self, x_dim: int = 64, h_dim: int = 128, z_dim: int = 8):
        super().__init__()
        self.encoder = nn.mlp([x_dim, h_dim], final_activation=True)
        self.to_mu, self.to_log_var = nn.Linear(h_dim, z_dim), nn.Linear(h_dim, z_dim)
        self.decoder = nn.mlp([z_dim, h_dim, x_dim])       # Bernoulli logits, appendix C.1

    def encode(self, x: mg.Tensor) -> tuple[mg.Tensor, mg.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_log_var(h)           # q(z|x) = N(mu, diag exp(log_var)), eq. 9

    def forward(self, x: mg.Tensor) -> tuple[mg.Tensor, mg.Tensor, mg.Tensor]:
        mu, log_var = self.encode(x)
        eps = mg.randn_like(mu)
        z = mu + mg.exp(log_var / 2) * eps                 # reparameterization, section 2.4
        return self.decoder(z), mu, log_var


def loss_function(x_hat: mg.Tensor, x: mg.Tensor, mu: mg.Tensor, log_var: mg.Tensor) -> mg.Tensor:
    """The negative ELBO, eq. 10: -log p(x|z) for one z, plus KL(q(z|x) || N(0, I)) in closed form,
    summed over pixels and latents per example, averaged over the batch."""
    reconstruction = F.binary_cross_entropy_with_logits(x_hat, x, reduction="sum")
    kl = 0.5 * (mu * mu + mg.exp(log_var) - 1 - log_var).sum()     # KL, appendix B
    return (reconstruction + kl) / x.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="vae_minimal_samples.png", help="where to save the sample grid")
    args = p.parse_args()

    mg.manual_seed(args.seed)
    train_x, test_x = (load_binarized_digits(split)[0].reshape(-1, 64) for split in ("train", "test"))
    loader = DataLoader(train_x, batch_size=args.batch_size, seed=args.seed)
    model = VAE()
    optimizer = optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for (x,) in loader:
            x_hat, mu, log_var = model(x)
            loss = loss_function(x_hat, x, mu, log_var)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with mg.no_grad():
            x = mg.tensor(test_x)
            x_hat, mu, log_var = model(x)
            test_loss = loss_function(x_hat, x, mu, log_var).item()
        print(f"epoch {epoch}: test loss {test_loss:.2f} nats", flush=True)

    with mg.no_grad():
        z = mg.randn(64, 8)                                # z ~ p(z) = N(0, I)
        samples = model.decoder(z).sigmoid().numpy()       # Bernoulli means, drawn as grey levels
    save_samples(samples.reshape(-1, 8, 8), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
