"""Whole training steps of the generative families, as a user would run them: minigen against PyTorch CPU.

Each workload is written once, over an engine namespace (`nn`, `F`, `optim`, `grad`, `tensor`), and built
in both engines; minigen's initial weights are copied into the PyTorch twin, and every input (data, the
VAE's eps, the GANs' noise, the interpolation weights of the gradient penalty) is a fixed NumPy array
shared by both. The workloads:

- MLP VAE 784-200-200-50 (Gaussian latent, Bernoulli decoder on logits), batch 100: the negative ELBO
  (BCE-with-logits reconstruction + analytic KL, one reparameterized sample), Adam(1e-3).
- DCGAN width 32 at 28x28, batch 64: the layers of minigen.models.gan's DCGANGenerator / DCGANDiscriminator
  (transposed convs + BatchNorm + ReLU, strided convs + BatchNorm + LeakyReLU(0.2)); one D step, then one
  G step on the non-saturating loss, Adam(2e-4, betas (0.5, 0.999)). Its "loss" is D's plus G's.
- WGAN-GP critic step, same networks without BatchNorm in the critic, batch 64: the Wasserstein loss plus
  10 (||grad_x f(x_hat)|| - 1)^2, a double backward through the convolutions, Adam(1e-4, betas (0, 0.9)).
- A PixelCNN-sized stack of 8 plain 3x3 convolutions of 64 channels with ReLU, 28x28, batch 16: the
  Bernoulli NLL of a binary batch, Adam(1e-3).
- A U-Net residual block (GroupNorm(8), SiLU, 3x3 conv, twice), 64 channels, 16x16, batch 32: squared error
  to a fixed target, Adam(2e-4).
- MADE 784-500-784 (masked linear layers, one ordering), batch 100: the Bernoulli NLL, Adam(1e-3).
- An LSTM, and a GRU, over the rows of a binary 28x28 image (28 steps of 28 pixels, 128 hidden units, a linear map
  to the next row's logits), batch 64: the Bernoulli NLL, Adam(1e-3); PyTorch's are its nn.LSTM and nn.GRU.
- Glow, K = 4 steps (ActNorm, invertible 1x1 conv, affine coupling with a 3-conv net of width 64) on a
  squeezed MNIST-sized batch (16, 4, 14, 14): the NLL under a N(0, I) prior, Adam(1e-3).

Protocol (harness.compare_training_steps): each engine runs in a process of its own, with 1 or 2 threads (BLAS,
Numba and PyTorch's intra-op pool alike); two consecutive steps of each engine must give the same losses,
then the steps are timed interleaved, one step of each engine per round (medians and interquartile spread).

    python -m benchmarks training_steps [--quick]
    python benchmarks/training_steps.py [--quick]
"""
from __future__ import annotations

import os
import re
import sys
from types import SimpleNamespace

import numpy as np

if not __package__:   # run as a script: make `benchmarks` and `minigen` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigen as mg  # noqa: E402
from benchmarks.harness import compare_training_steps, grads_of, training_step  # noqa: E402

THREADS = (1, 2)
LATENT, WIDTH = 64, 32      # the GANs' noise size and conv width


def engine(name: str) -> SimpleNamespace:
    """minigen or PyTorch under one set of names."""
    if name == "minigen":
        return SimpleNamespace(nn=mg.nn, F=mg.nn.functional, optim=mg.optim, grad=mg.grad, tensor=mg.tensor,
                               cat=mg.concatenate, slogdet=mg.slogdet)
    import torch
    return SimpleNamespace(nn=torch.nn, F=torch.nn.functional, optim=torch.optim, grad=torch.autograd.grad,
                           tensor=torch.from_numpy, cat=torch.cat, slogdet=torch.linalg.slogdet)


def fixed(e, shape: tuple, seed: int, kind: str = "normal"):
    """A fixed float32 array in engine e, the same in both engines: N(0, 1), U[0, 1) or 0/1 pixels."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) if kind == "normal" else rng.random(shape)
    return e.tensor((a < 0.5 if kind == "binary" else a).astype(np.float32))


def adam(e, module, lr: float, betas=(0.9, 0.999)):
    return e.optim.Adam(module.parameters(), lr=lr, betas=betas)


def bernoulli_nll(e, logits, x):
    """-log p(x | logits) per example, summed over pixels, averaged over the batch."""
    return e.F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)


# --- the workloads: each returns (all its modules in one, a closure doing one step and returning a float) ---


def vae(e):
    """Negative ELBO, Kingma & Welling 2014 eq. 10 (closed-form KL, one sample z = mu + sigma eps)."""
    nn = e.nn
    encoder = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 100))
    decoder = nn.Sequential(nn.Linear(50, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 784))
    net = nn.Sequential(encoder, decoder)
    x, eps = fixed(e, (100, 784), 0, "binary"), fixed(e, (100, 50), 1)

    def loss():
        h = encoder(x)
        mu, log_var = h[:, :50], h[:, 50:]
        z = mu + (0.5 * log_var).exp() * eps
        kl = -0.5 * (1 + log_var - mu ** 2 - log_var.exp()).sum() / len(x)
        return bernoulli_nll(e, decoder(z), x) + kl
    return net, training_step(loss, adam(e, net, 1e-3))


def gan_nets(e, critic_batch_norm: bool):
    """(G, D): the DCGAN pair of minigen.models.gan at 28x28; G takes z as (n, LATENT, 1, 1)."""
    nn = e.nn
    G = nn.Sequential(
        nn.ConvTranspose2d(LATENT, 2 * WIDTH, 7), nn.BatchNorm2d(2 * WIDTH), nn.ReLU(),
        nn.ConvTranspose2d(2 * WIDTH, WIDTH, 4, stride=2, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU(),
        nn.ConvTranspose2d(WIDTH, 1, 4, stride=2, padding=1), nn.Tanh())
    norm = [nn.BatchNorm2d(2 * WIDTH)] if critic_batch_norm else []
    D = nn.Sequential(
        nn.Conv2d(1, WIDTH, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(WIDTH, 2 * WIDTH, 4, stride=2, padding=1), *norm, nn.LeakyReLU(0.2),
        nn.Conv2d(2 * WIDTH, 1, 7))
    return G, D


def gan_batch(e) -> tuple:
    """Data in [-1, 1] (binary pixels), and two noise batches."""
    return (fixed(e, (64, 1, 28, 28), 0, "binary") * 2 - 1, fixed(e, (64, LATENT, 1, 1), 1),
            fixed(e, (64, LATENT, 1, 1), 2))


def dcgan(e):
    """D ascends log D(x) + log(1 - D(G(z))) (Goodfellow et al. 2014 eq. 1), then G descends -log D(G(z)),
    with log sigmoid(a) = -softplus(-a)."""
    G, D = gan_nets(e, critic_batch_norm=True)
    x, z, z_g = gan_batch(e)
    d_step = training_step(lambda: e.F.softplus(-D(x)).mean() + e.F.softplus(D(G(z).detach())).mean(),
                           adam(e, D, 2e-4, (0.5, 0.999)))
    g_step = training_step(lambda: e.F.softplus(-D(G(z_g))).mean(), adam(e, G, 2e-4, (0.5, 0.999)))
    return e.nn.ModuleDict({"G": G, "D": D}), lambda: d_step() + g_step()


def wgan_gp(e):
    """The critic's loss E f(G(z)) - E f(x) + 10 E (||grad f(x_hat)||_2 - 1)^2, x_hat = eps x + (1 - eps) G(z)
    (Gulrajani et al. 2017, Algorithm 1 lines 4-7), as minigen.models.gan.gradient_penalty."""
    G, D = gan_nets(e, critic_batch_norm=False)
    x, z, _ = gan_batch(e)
    eps = fixed(e, (64, 1, 1, 1), 3, "uniform")

    def loss():
        x_fake = G(z).detach()
        x_hat = (eps * x + (1 - eps) * x_fake).requires_grad_()
        g, = e.grad(D(x_hat).sum(), x_hat, create_graph=True)
        penalty = ((((g * g).sum((1, 2, 3)) + 1e-12).sqrt() - 1) ** 2).mean()
        return D(x_fake).mean() - D(x).mean() + 10 * penalty
    return e.nn.ModuleDict({"G": G, "D": D}), training_step(loss, adam(e, D, 1e-4, (0.0, 0.9)))


def conv_stack(e):
    """8 convolutions 3x3 (1 -> 64 -> ... -> 64 -> 1) with ReLU between: a PixelCNN's compute, unmasked."""
    nn = e.nn
    hidden = [m for _ in range(6) for m in (nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))]
    net = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), *hidden, nn.ReLU(), nn.Conv2d(64, 1, 3, padding=1))
    x = fixed(e, (16, 1, 28, 28), 0, "binary")
    return net, training_step(lambda: bernoulli_nll(e, net(x), x), adam(e, net, 1e-3))


def unet_block(e):
    """x + conv(silu(norm(conv(silu(norm(x)))))), the residual block of a DDPM U-Net without its time input."""
    nn = e.nn
    net = nn.Sequential(nn.GroupNorm(8, 64), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1),
                        nn.GroupNorm(8, 64), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1))
    x, target = fixed(e, (32, 64, 16, 16), 0), fixed(e, (32, 64, 16, 16), 1)
    return net, training_step(lambda: ((x + net(x) - target) ** 2).mean(), adam(e, net, 2e-4))


def made(e):
    """MADE (Germain et al. 2015): hidden unit k of degree m_k sees inputs d <= m_k (eq. 12), output d sees
    hidden units with m_k < d (eq. 13); the natural pixel order."""
    nn = e.nn
    m = np.random.default_rng(0).integers(1, 784, 500)
    d = np.arange(1, 785)
    masks = [e.tensor(mask.astype(np.float32)) for mask in (m[:, None] >= d, d[:, None] > m)]
    net = nn.ModuleList([nn.Linear(784, 500), nn.Linear(500, 784)])
    x = fixed(e, (100, 784), 0, "binary")

    def loss():
        h = x
        for i, (layer, mask) in enumerate(zip(net, masks)):
            h = e.F.linear(h if i == 0 else e.F.relu(h), layer.weight * mask, layer.bias)
        return bernoulli_nll(e, h, x)
    return net, training_step(loss, adam(e, net, 1e-3))


def row_rnn(e, cell: str):
    """Each row of a binary image predicted from the rows above it: h_t = RNN(x_1..x_t) (an LSTM or a GRU),
    logits of x_{t+1} = W h_t + b, the first row from a zero row (the row-by-row factorization behind PixelRNN,
    van den Oord et al. 2016, with one recurrent layer over whole rows)."""
    nn = e.nn
    net = nn.ModuleDict({"rnn": getattr(nn, cell)(28, 128), "out": nn.Linear(128, 28)})
    x = fixed(e, (28, 64, 28), 0, "binary")                         # (rows, batch, pixels)
    x_in = e.cat([x[:1] * 0, x[:-1]], 0)

    def loss():
        logits = net["out"](net["rnn"](x_in)[0])
        return e.F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[1]   # per image
    return net, training_step(loss, adam(e, net, 1e-3))


def glow(e):
    """Glow (Kingma & Dhariwal 2018, sec. 3 and Table 1), K = 4 steps on x of shape (16, 4, 14, 14): ActNorm
    y = s x + b, log-det h w sum log|s|; invertible 1x1 conv y = W x, log-det h w log|det W|, W a random rotation
    at the start; affine coupling (x_a, x_b) -> (x_a, (x_b + t) s) with (log s_raw, t) = NN(x_a) and
    s = sigmoid(log s_raw + 2) (as in their code), log-det sum log s. Loss: the NLL -(log N(z; 0, I) + log-det)
    per example (the change of variables of their sec. 2), averaged over the batch."""
    nn, F = e.nn, e.F
    n, c, h, w = 16, 4, 14, 14
    rng = np.random.default_rng(4)

    class FlowStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(e.tensor(np.ones((1, c, 1, 1), np.float32)))
            self.shift = nn.Parameter(e.tensor(np.zeros((1, c, 1, 1), np.float32)))
            self.weight = nn.Parameter(e.tensor(np.linalg.qr(rng.standard_normal((c, c)))[0].astype(np.float32)))
            self.coupling = nn.Sequential(nn.Conv2d(c // 2, 64, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, c, 3, padding=1))

        def forward(self, x):
            """(y, log|det dy/dx| per example)"""
            x = F.conv2d(self.scale * x + self.shift, self.weight.reshape(c, c, 1, 1))
            x_a, x_b = x[:, :c // 2], x[:, c // 2:]
            out = self.coupling(x_a)
            s = (out[:, :c // 2] + 2).sigmoid()
            log_det = h * w * (self.scale.abs().log().sum() + e.slogdet(self.weight)[1]) + s.log().sum((1, 2, 3))
            return e.cat([x_a, (x_b + out[:, c // 2:]) * s], 1), log_det

    net = nn.ModuleList([FlowStep() for _ in range(4)])
    x = fixed(e, (n, c, h, w), 0, "uniform") - 0.5

    def loss():
        z, log_det = x, 0
        for step in net:
            z, step_log_det = step(z)
            log_det = log_det + step_log_det
        log_prior = -0.5 * (z * z).sum((1, 2, 3)) - 0.5 * c * h * w * float(np.log(2 * np.pi))
        return -(log_prior + log_det).mean()
    return net, training_step(loss, adam(e, net, 1e-3))


WORKLOADS = {
    "mlp vae 784-200-200-50, batch 100": vae,
    "dcgan width 32, 28x28, batch 64 (D step + G step)": dcgan,
    "wgan-gp critic step, width 32, 28x28, batch 64": wgan_gp,
    "8 convs 3x3x64, 28x28, batch 16": conv_stack,
    "u-net block 64 ch, 16x16, batch 32": unet_block,
    "made 784-500-784, batch 100": made,
    "glow K=4, width 64, 4x14x14, batch 16": glow,
    "row lstm 28x28, 128 hidden, batch 64": lambda e: row_rnn(e, "LSTM"),
    "row gru 28x28, 128 hidden, batch 64": lambda e: row_rnn(e, "GRU"),
}


def torch_name(key: str) -> str:
    """PyTorch's name of a minigen parameter: nn.LSTM and nn.GRU name layer l's weights weight_ih_l{l}, where
    minigen's stack of cells has cells.{l}.weight_ih."""
    return re.sub(r"cells\.(\d+)\.(\w+)$", r"\2_l\1", key)


def build(name: str, case: str, state: dict | None) -> dict:
    """The calls an engine process serves (harness.compare_training_steps): workload `case` built in engine
    `name`, from minigen's seed, or loaded with `state` (minigen's initial weights)."""
    e = engine(name)
    mg.manual_seed(0)
    net, step = WORKLOADS[case](e)
    if state is not None:
        net.load_state_dict({torch_name(k): e.tensor(v) for k, v in state.items()})
    ours = {torch_name(k): k for k in state or ()}     # the PyTorch twin's gradients under minigen's names
    grads = grads_of(net)
    return {"step": step, "state": lambda: {k: np.array(v) for k, v in net.state_dict().items()},
            "size": lambda: {"parameters": sum(p.numpy().size for p in net.parameters())},
            "grads": lambda: {ours.get(k, k): g for k, g in grads().items()}}


def spread_table(rows: list[dict]) -> list[dict]:
    """Per case and thread count: each engine's median ms and spread ((q75 - q25) / median), and the ratio."""
    by = {(r["case"], r["threads"], r["impl"]): r for r in rows}
    table = []
    for case, threads in dict.fromkeys((r["case"], r["threads"]) for r in rows):
        m, t = by[case, threads, "minigen"], by[case, threads, "torch"]
        table.append({"case": case, "threads": threads,
                      "minigen ms": f"{m['seconds'] * 1e3:.3g}", "minigen spread": f"{m['spread']:.2f}",
                      "torch ms": f"{t['seconds'] * 1e3:.3g}", "torch spread": f"{t['spread']:.2f}",
                      "minigen / torch": f"{m['seconds'] / t['seconds']:.2f}"})
    return table


# The gradient check's tolerance (harness.compare_training_steps), where the default 5e-3 of each gradient's largest
# entry is too tight. DCGAN's G gradients are taken after D's first Adam update, about lr * sign(g): the signs of
# D's near-zero gradients are float32 rounding, and flip D's weights by 2 lr. Against the same step in float64,
# float32 G.0.weight gradients are off by 9.5e-3 of their largest entry: minigen's with im2col's convolutions and
# with Winograd's, and PyTorch's (each against its own float64 step; AMD EPYC Zen 4). Winograd's measured 5.5e-3
# from PyTorch's, where im2col's happened to stay within 5e-3.
TOLERANCE = {"dcgan width 32, 28x28, batch 64 (D step + G step)": 2e-2}


def run(quick: bool = False) -> tuple[list[dict], dict]:
    rows, checks = [], []
    for threads in THREADS:
        for case in WORKLOADS:
            r, check = compare_training_steps(build, case, f"{threads} thread(s)", threads, quick, case,
                                              tolerance=TOLERANCE.get(case, 5e-3))
            rows += r
            checks += [{"case": case, "threads": threads, **c} for c in check["check"]]
    return rows, {"timings: median ms and spread (interquartile range / median)": spread_table(rows),
                  "check: two consecutive steps from the same weights": checks}


if __name__ == "__main__":
    from benchmarks.__main__ import main
    main(["training_steps", *sys.argv[1:]])
