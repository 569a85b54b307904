"""A tour of minigen's autodiff, top to bottom:

1. the gradient of a small function, against the derivative worked out by hand;
2. a Hessian-vector product by double backprop, against the Hessian worked out by hand;
3. a small MLP trained on two moons (generated, no download) with a progress bar, writing its metrics
   (metrics.jsonl) and a picture of what it learned (decision.png) to --out.

    python examples/autodiff_tour.py [--steps 1500] [--out runs/autodiff_tour]
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import minigen as mg
import minigen.nn.functional as F


def gradient_of_a_small_function():
    # f(x, y) = x^2 y + sin(y):  df/dx = 2 x y,  df/dy = x^2 + cos(y)
    x = mg.tensor(1.5, dtype="float64", requires_grad=True)
    y = mg.tensor(-0.5, dtype="float64", requires_grad=True)
    f = x ** 2 * y + mg.sin(y)
    f.backward()
    print("1. f(x, y) = x^2 y + sin(y) at (1.5, -0.5)")
    print(f"   df/dx = {x.grad.item():+.6f}   by hand 2xy       = {2 * 1.5 * -0.5:+.6f}")
    print(f"   df/dy = {y.grad.item():+.6f}   by hand x^2+cos y = {1.5 ** 2 + math.cos(-0.5):+.6f}")


def hessian_vector_product():
    # f(x) = sum(x^3) + x0 x1:  H = diag(6 x) + [[0, 1], [1, 0]] on the first two coordinates
    x = mg.tensor([1.0, -2.0, 0.5], dtype="float64", requires_grad=True)
    v = mg.tensor([0.3, 1.0, -2.0], dtype="float64")
    f = (x ** 3).sum() + x[0] * x[1]
    (g,) = mg.grad(f, [x], create_graph=True)         # the gradient, itself a graph
    (hv,) = mg.grad(g, [x], grad_outputs=v)           # its vector-Jacobian product is H v
    hessian = np.diag(6 * x.numpy()) + np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    print("2. Hessian-vector product of sum(x^3) + x0 x1 by double backprop")
    print(f"   H v  = {np.round(hv.numpy(), 6)}   by hand {hessian @ v.numpy()}")


def two_moons(n: int, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles with Gaussian noise; labels 0 and 1."""
    t = rng.uniform(0, math.pi, size=n)
    label = rng.integers(0, 2, size=n)
    x = np.where(label == 0, np.cos(t), 1 - np.cos(t))
    y = np.where(label == 0, np.sin(t), 0.5 - np.sin(t))
    points = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return points.astype(np.float32), label


def init_mlp(sizes, rng):
    """Weights (in, out) with PyTorch's default uniform(-1/sqrt(in), 1/sqrt(in)) scale, biases the same."""
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(n_in)
        params.append(mg.tensor(rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32), requires_grad=True))
        params.append(mg.tensor(rng.uniform(-bound, bound, n_out).astype(np.float32), requires_grad=True))
    return params


def mlp(params, x):
    for i in range(0, len(params) - 2, 2):
        x = mg.tanh(x @ params[i] + params[i + 1])
    return x @ params[-2] + params[-1]


def accuracy(params, x, labels) -> float:
    with mg.no_grad():
        return float((mlp(params, mg.tensor(x)).numpy().argmax(axis=1) == labels).mean())


def save_decision_picture(params, x, labels, path: Path, size: int = 256):
    """The class probabilities over the plane (red/blue) with the test points on top."""
    lo, hi = x.min(axis=0) - 0.5, x.max(axis=0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], size), np.linspace(hi[1], lo[1], size))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    with mg.no_grad():
        p = mg.softmax(mlp(params, mg.tensor(grid)), axis=1).numpy()[:, 1].reshape(size, size)
    image = np.stack([255 * (1 - p), 128 + 0 * p, 255 * p], axis=-1) * 0.6 + 60
    cols = ((x[:, 0] - lo[0]) / (hi[0] - lo[0]) * (size - 1)).astype(int)
    rows = ((hi[1] - x[:, 1]) / (hi[1] - lo[1]) * (size - 1)).astype(int)
    image[rows, cols] = np.where(labels[:, None] == 1, [0, 0, 255], [255, 0, 0])
    Image.fromarray(image.astype(np.uint8)).save(path)


def train_mlp(steps: int, out: Path, seed: int = 0):
    print(f"3. MLP 2-64-64-2 on two moons, Adam, {steps} steps")
    mg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train = two_moons(2000, 0.1, rng)
    x_test, y_test = two_moons(1000, 0.1, rng)
    params = init_mlp([2, 64, 64, 2], rng)
    # Adam (Kingma & Ba 2015, Algorithm 1), written out; minigen.optim provides it for real models
    lr, beta1, beta2, eps = 3e-3, 0.9, 0.999, 1e-8
    m = [np.zeros_like(p.data) for p in params]
    v = [np.zeros_like(p.data) for p in params]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w") as log, tqdm(range(1, steps + 1), desc="train", unit="step") as bar:
        for t in bar:
            batch = rng.integers(0, len(x_train), size=128)
            loss = F.cross_entropy(mlp(params, mg.tensor(x_train[batch])), mg.tensor(y_train[batch]))
            for p in params:
                p.grad = None
            loss.backward()
            for p, m_i, v_i in zip(params, m, v):
                m_i *= beta1
                m_i += (1 - beta1) * p.grad.data
                v_i *= beta2
                v_i += (1 - beta2) * p.grad.data ** 2
                p.data -= lr * (m_i / (1 - beta1 ** t)) / (np.sqrt(v_i / (1 - beta2 ** t)) + eps)
            if t % 100 == 0 or t == steps:
                record = {"step": t, "loss": loss.item(), "test_accuracy": accuracy(params, x_test, y_test)}
                log.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}", test_acc=f"{record['test_accuracy']:.3f}")
    save_decision_picture(params, x_test, y_test, out / "decision.png")
    acc = accuracy(params, x_test, y_test)
    print(f"   test accuracy {acc:.3f} (two moons with noise 0.1 are separable: expect 0.99 or more)")
    print(f"   wrote {out / 'metrics.jsonl'} and {out / 'decision.png'}")
    return acc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path("runs/autodiff_tour"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gradient_of_a_small_function()
    hessian_vector_product()
    train_mlp(args.steps, args.out, args.seed)


if __name__ == "__main__":
    main()
