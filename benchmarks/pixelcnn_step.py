"""One training step of the gated PixelCNN at the MNIST size, minigen against the same network in PyTorch CPU.

The network is `minigen.models.pixelcnn.GatedPixelCNN((1, 28, 28), 2, channels=64, layers=5)` (the
`gated-pixelcnn` family's defaults: a 7-wide first layer, 3-wide after, Bernoulli outputs), rebuilt in
PyTorch under the same parameter and buffer names and loaded with minigen's initial weights. A step: the
exact NLL of a fixed batch of 16 random binary 28x28 images, backward, and an Adam update (lr 1e-3). Before
timing, both engines' losses are compared on two consecutive steps from the same weights.

Each engine runs in a process of its own; timings are interleaved (harness.compare_training_steps: each
engine once per round), so load from other
processes falls on both alike; the medians and their ratio are reported, with the load average at the start.
Both engines run with the same number of threads (BLAS, Numba and PyTorch's intra-op pool).

    python -m benchmarks pixelcnn_step [--quick]
    python benchmarks/pixelcnn_step.py [--quick]
"""
from __future__ import annotations

import os
import sys

import numpy as np

if not __package__:   # run as a script: make `benchmarks` and `minigen` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigen as mg  # noqa: E402
from benchmarks.harness import compare_training_steps, grads_of, training_step  # noqa: E402
from minigen.models.pixelcnn import GatedPixelCNN  # noqa: E402

SHAPE, BATCH, CHANNELS, LAYERS, KERNEL, FIRST_KERNEL, LR = (1, 28, 28), 16, 64, 5, 3, 7, 1e-3


def batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (BATCH, *SHAPE)).astype(np.float32)


def minigen_step(net: GatedPixelCNN, x: np.ndarray):
    """A closure doing one training step in minigen; returns the loss (nats per image)."""
    opt = mg.optim.Adam(net.parameters(), lr=LR)
    x = mg.tensor(x)
    return training_step(lambda: -net.log_prob(x).mean(), opt)


def torch_step(state: dict, x: np.ndarray):
    """The same network and step in PyTorch, loaded with minigen's weights: its "step" and "grads" calls."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def gate(a):
        a_f, a_g = a.chunk(2, 1)
        return torch.tanh(a_f) * torch.sigmoid(a_g)

    class MaskedConv2d(nn.Conv2d):
        def __init__(self, mask_type, c_in, c_out, kernel, padding):
            super().__init__(c_in, c_out, kernel, padding=padding)
            kh, kw = self.kernel_size
            mask = torch.ones(kh, kw)
            mask[kh // 2, kw // 2 + (mask_type == "B"):] = 0
            mask[kh // 2 + 1:] = 0
            self.register_buffer("mask", mask)

        def forward(self, x):
            return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    class GatedLayer(nn.Module):
        def __init__(self, c_in, c, k, first):
            super().__init__()
            self.first = first
            self.v_conv = nn.Conv2d(c_in, 2 * c, (k // 2 + 1, k), padding=k // 2)
            self.h_conv = MaskedConv2d("A" if first else "B", c_in, 2 * c, (1, k), padding=(0, k // 2))
            self.v_to_h, self.h_out = nn.Conv2d(2 * c, 2 * c, 1), nn.Conv2d(c, c, 1)

        def forward(self, v, h):
            v_pre = self.v_conv(v)[:, :, :v.shape[2]]
            link = self.v_to_h(F.pad(v_pre, (0, 0, 1, 0))[:, :, :v.shape[2]])
            h_new = self.h_out(gate(self.h_conv(h) + link))
            return gate(v_pre), h_new if self.first else h + h_new

    class TorchGatedPixelCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([GatedLayer(1, CHANNELS, FIRST_KERNEL, True)] +
                                        [GatedLayer(CHANNELS, CHANNELS, KERNEL, False) for _ in range(LAYERS - 1)])
            self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(CHANNELS, CHANNELS, 1), nn.ReLU(),
                                      nn.Conv2d(CHANNELS, 1, 1))

        def log_prob(self, x):
            v, h = x, x
            for layer in self.layers:
                v, h = layer(v, h)
            logits = self.head(h)
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))

    net = TorchGatedPixelCNN()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x = torch.from_numpy(x)
    return {"step": training_step(lambda: -net.log_prob(x).mean(), opt), "grads": grads_of(net)}


def build(engine: str, state: dict | None) -> dict:
    """The calls an engine process serves (harness.compare_training_steps): minigen's network from its seed,
    or PyTorch's twin loaded with minigen's initial weights `state`."""
    x = batch()
    if engine == "torch":
        return torch_step(state, x)
    mg.manual_seed(0)
    net = GatedPixelCNN(SHAPE, 2, CHANNELS, LAYERS, KERNEL, FIRST_KERNEL)
    return {"step": minigen_step(net, x), "grads": grads_of(net),
            "state": lambda: {k: np.array(v) for k, v in net.state_dict().items()},
            "size": lambda: {"parameters and masks": sum(v.size for v in net.state_dict().values())}}


def run(quick: bool = False, threads: int = 1) -> tuple[list[dict], dict]:
    variant = f"batch {BATCH}, {CHANNELS} channels, {LAYERS} layers, {threads} thread(s)"
    return compare_training_steps(build, "gated pixelcnn training step (28x28)", variant, threads, quick)


if __name__ == "__main__":
    from benchmarks.__main__ import main
    main(["pixelcnn_step", *sys.argv[1:]])
