"""One DDPM training step of the U-Net at the MNIST size, minigen against the same network in PyTorch CPU.

The network is `minigen.models.diffusion.UNet(1, (32, 64, 128), attention=True)` (levels at 28x28, 14x14 and
7x7, self-attention at 7x7), rebuilt module by module in PyTorch under the same parameter names, and loaded
with minigen's initial weights. A step: x_t from a fixed batch of 64 images, times and noise (eq. 4), the
L_simple loss, backward, and an Adam update (lr 2e-4). Before timing, both engines' losses are compared on
two consecutive steps from the same weights (the second depends on the first step's gradients and update).

Each engine runs in a process of its own; timings are interleaved (harness.compare_training_steps: each
engine once per round), so load from other
processes falls on both alike; the medians and their ratio are reported, with the load average at the
start. Both engines run with the same number of threads (`run(threads=1)`: BLAS, Numba and PyTorch's
intra-op pool).

    python -m benchmarks unet_step [--quick]
    python benchmarks/unet_step.py [--quick]
"""
from __future__ import annotations

import os
import sys

import numpy as np

if not __package__:   # run as a script: make `benchmarks` and `minigen` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigen as mg  # noqa: E402
from benchmarks.harness import compare_training_steps, grads_of, training_step  # noqa: E402
from minigen.models.diffusion import UNet, beta_schedule  # noqa: E402

CHANNELS = (32, 64, 128)
BATCH, T, LR = 64, 1000, 2e-4


def problem(seed: int = 0) -> dict:
    """A batch x_0 in [-1, 1], times t and noise eps, and the schedule's sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)."""
    rng = np.random.default_rng(seed)
    alpha_bar = np.cumprod(1 - beta_schedule("linear", T))
    t = rng.integers(1, T + 1, BATCH)
    return {"x0": rng.uniform(-1, 1, (BATCH, 1, 28, 28)).astype(np.float32), "t": t,
            "eps": rng.standard_normal((BATCH, 1, 28, 28)).astype(np.float32),
            "a": np.sqrt(alpha_bar[t - 1]).astype(np.float32).reshape(-1, 1, 1, 1),
            "b": np.sqrt(1 - alpha_bar[t - 1]).astype(np.float32).reshape(-1, 1, 1, 1)}


def minigen_step(net: UNet, p: dict):
    """A closure doing one training step in minigen; returns the loss."""
    opt = mg.optim.Adam(net.parameters(), lr=LR)
    x_t = mg.tensor(p["a"] * p["x0"] + p["b"] * p["eps"])
    t, eps = mg.Tensor(p["t"]), mg.tensor(p["eps"])
    return training_step(lambda: ((eps - net(x_t, t)) ** 2).mean(), opt)


def torch_step(state: dict, p: dict):
    """The same network and step in PyTorch, loaded with minigen's weights: its "step" and "grads" calls."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def embedding(t, dim):
        half = dim // 2
        angles = t[:, None].double() * torch.exp(-np.log(10000) * torch.arange(half, dtype=torch.float64) / half)
        return torch.cat([angles.sin(), angles.cos()], 1).float()

    class ResBlock(nn.Module):
        def __init__(self, c_in, c_out, t_dim):
            super().__init__()
            self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
            self.t_proj = nn.Linear(t_dim, c_out)
            self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
            self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

        def forward(self, x, e):
            h = self.conv1(F.silu(self.norm1(x))) + self.t_proj(F.silu(e))[:, :, None, None]
            h = self.conv2(F.silu(self.norm2(h)))
            return h + (x if self.skip is None else self.skip(x))

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm, self.qkv, self.proj = nn.GroupNorm(8, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

        def forward(self, x):
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm(x)).reshape(n, 3 * c, h * w).chunk(3, 1)
            a = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / c ** 0.5, -1)
            return x + self.proj(torch.einsum("nij,ncj->nci", a, v).reshape(n, c, h, w))

    class TorchUNet(nn.Module):
        def __init__(self, channels):
            super().__init__()
            c0, th = channels[0], 4 * channels[0]
            self.t_mlp = nn.Sequential(nn.Linear(c0, th), nn.SiLU(), nn.Linear(th, th))
            self.conv_in = nn.Conv2d(1, c0, 3, padding=1)
            self.down = nn.ModuleList([ResBlock(a, b, th) for a, b in zip((c0,) + channels[:-1], channels)])
            self.downsample = nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels[:-1]])
            c = channels[-1]
            self.mid1, self.attention, self.mid2 = ResBlock(c, c, th), Attention(c), ResBlock(c, c, th)
            ins = (c,) + channels[:0:-1]
            self.up = nn.ModuleList([ResBlock(a + b, b, th) for a, b in zip(ins, channels[::-1])])
            self.upsample = nn.ModuleList([nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)
                                           for c in channels[:0:-1]])
            self.norm_out, self.conv_out = nn.GroupNorm(8, c0), nn.Conv2d(c0, 1, 3, padding=1)

        def forward(self, x, t):
            e = self.t_mlp(embedding(t, self.conv_in.out_channels))
            h, skips = self.conv_in(x), []
            for i, block in enumerate(self.down):
                h = block(h, e)
                skips.append(h)
                if i < len(self.downsample):
                    h = self.downsample[i](h)
            h = self.mid2(self.attention(self.mid1(h, e)), e)
            for i, block in enumerate(self.up):
                h = block(torch.cat([h, skips.pop()], 1), e)
                if i < len(self.upsample):
                    h = self.upsample[i](h)
            return self.conv_out(F.silu(self.norm_out(h)))

    net = TorchUNet(CHANNELS)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x_t = torch.from_numpy(p["a"] * p["x0"] + p["b"] * p["eps"])
    t, eps = torch.from_numpy(p["t"]), torch.from_numpy(p["eps"])
    return {"step": training_step(lambda: ((eps - net(x_t, t)) ** 2).mean(), opt), "grads": grads_of(net)}


def build(engine: str, state: dict | None) -> dict:
    """The calls an engine process serves (harness.compare_training_steps): minigen's network from its seed,
    or PyTorch's twin loaded with minigen's initial weights `state`."""
    p = problem()
    if engine == "torch":
        return torch_step(state, p)
    mg.manual_seed(0)
    net = UNet(1, CHANNELS, attention=True)
    return {"step": minigen_step(net, p), "grads": grads_of(net),
            "state": lambda: {k: np.array(v) for k, v in net.state_dict().items()},
            "size": lambda: {"parameters": sum(v.size for v in net.state_dict().values())}}


def run(quick: bool = False, threads: int = 1) -> tuple[list[dict], dict]:
    variant = f"batch {BATCH}, channels {CHANNELS}, {threads} thread(s)"
    return compare_training_steps(build, "unet training step (28x28)", variant, threads, quick)


if __name__ == "__main__":
    from benchmarks.__main__ import main
    main(["unet_step", *sys.argv[1:]])
