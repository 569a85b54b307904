"""The one-stochastic-layer VAE of Burda et al. (2016) on binarized MNIST, evaluated by the IWAE bound with
k = 5000 on (part of) the test set.

    MINIGEN_DATA=/work/shared/data python -m benchmarks.vae_mnist --epochs 3 --test-images 500

Model: MLP 784-200-200-50 encoder and mirror decoder, Bernoulli logits (ReLU here where the paper has tanh),
trained by Adam (lr 1e-3) on the ELBO with one sample (k=1), or on IWAE_k with --train-k k. Binarization:
"dynamic" (MNIST grey levels, every pixel redrawn each time a batch is drawn; the test images drawn once
with seed 0), or "fixed" (Larochelle & Murray's binarized MNIST). Paper anchors (dynamic, full training of
3280 epochs): VAE -86.76, IWAE k=5 -85.54, k=50 -84.78; the fixed binarization scores about 2 nats worse.
Appends a row to benchmarks/results/vae_mnist.jsonl and writes the figures beside it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import minigen as mg
from minigen import data
from minigen.models.vae import VAERecipe, save_reconstructions
from minigen.train import save_samples

RESULTS = Path(__file__).parent / "results"


def load(binarization: str):
    """(train images, test images) as float32 (n, 1, 28, 28) and the recipe's `pixels` setting."""
    if binarization == "fixed":
        return (data.load_binarized_mnist(s)[:, None].astype(np.float32) for s in ("train", "test")), "as-is"
    return (data.load_mnist(s)[0][:, None] / np.float32(255) for s in ("train", "test")), "dynamic"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vae_mnist", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--binarization", choices=["dynamic", "fixed"], default="dynamic")
    p.add_argument("--train-k", type=int, default=1, help="1: the VAE's ELBO; k > 1: IWAE training")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--k", type=int, default=5000)
    args = p.parse_args(argv)
    mg.manual_seed(0)
    (train_x, test_x), pixels = load(args.binarization)
    recipe = VAERecipe(train_x.shape[1:], latent=50, hidden=(200, 200), pixels=pixels, samples=args.train_k,
                       iwae=args.train_k > 1, eval_k=args.k, lr=1e-3)
    loader = data.DataLoader(train_x, batch_size=args.batch_size, seed=0)
    steps = round(args.epochs * len(loader))
    start = time.time()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for _ in range(steps):
        loss = recipe.step(next(batches))["loss"]
    train_s = time.time() - start
    start = time.time()
    metrics = recipe.evaluate(data.DataLoader(test_x[:args.test_images], batch_size=100, shuffle=False))
    eval_s = time.time() - start
    command = "MINIGEN_DATA=/work/shared/data python -m benchmarks.vae_mnist " + " ".join(argv or sys.argv[1:])
    row = {"command": command, "binarization": args.binarization, "train_k": args.train_k,
           "epochs": args.epochs, "steps": steps, "batch_size": args.batch_size, "last_train_loss": loss,
           "test_images": args.test_images, "eval_k": args.k, "test_elbo": metrics["elbo"],
           "test_iwae": metrics[f"iwae_{args.k}"], "train_s": round(train_s), "eval_s": round(eval_s),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
    print(json.dumps(row, indent=1))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "vae_mnist.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    x = test_x[:32] if pixels == "as-is" else (test_x[:32] > 0.5).astype(np.float32)
    save_reconstructions(recipe.model, mg.tensor(x), RESULTS / f"vae_mnist_{args.binarization}_reconstructions.png")
    save_samples(recipe.sample(64), RESULTS / f"vae_mnist_{args.binarization}_samples.png")


if __name__ == "__main__":
    main()
