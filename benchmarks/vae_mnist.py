"""The one-stochastic-layer VAE of Burda et al. (2016) on binarized MNIST, evaluated by the IWAE bound with
k = 5000 on (part of) the test set.

    MINIGEN_DATA=/work/shared/data python -m benchmarks.vae_mnist --minutes 50 --test-images 2000

Model: MLP 784-200-200-50 encoder and mirror decoder, Bernoulli logits (ReLU here where the paper has tanh),
trained by Adam (lr 1e-3) on the ELBO with one sample (k=1), or on IWAE_k with --train-k k. Binarization:
"dynamic" (grey levels, every pixel redrawn each time a batch is drawn; the test images drawn once
with seed 0), or "fixed" (Larochelle & Murray's binarized MNIST). Paper anchors (dynamic, full training of
3280 epochs): VAE -86.76, IWAE k=5 -85.54, k=50 -84.78; the fixed binarization scores about 2 nats worse.
--arch conv swaps in the convolutional encoder / decoder (32, 64 channels), also on --dataset fashion-mnist;
--model cvae conditions on the label, --model hvae stacks two stochastic layers (--latent units each).
Training runs for --epochs, or until --minutes of this process's CPU time are spent (the step that crosses
the budget is the last). Appends a row to benchmarks/results/vae_mnist.jsonl and writes the figures beside it:
reconstructions, prior samples, interpolations between test images, the latent manifold for --latent 2 and
one row of samples per class for the CVAE.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

import minigen as mg
from minigen import data
from minigen.models.vae import (CVAERecipe, HVAERecipe, VAERecipe, save_class_samples, save_interpolations,
                                 save_manifold, save_reconstructions)
from minigen.train import save_samples

from .harness import append_row, train_and_evaluate

RESULTS = Path(__file__).parent / "results"
HIDDEN = {"mlp": (200, 200), "conv": (32, 64)}      # units, or channels of the stride-2 convolutions
RECIPES = {"vae": VAERecipe, "cvae": CVAERecipe, "hvae": HVAERecipe}


def load(dataset: str, binarization: str):
    """(spec, (train images, labels), (test images, labels)) with images float32 (n, 1, 28, 28), and the
    recipe's `pixels` setting; the fixed binarization has no labels: (images,) alone."""
    if binarization == "fixed":
        spec, (train_x, _), (test_x, _) = data.load_dataset("binarized-mnist")
        return spec, [(train_x,), (test_x,)], "as-is"
    spec, train, test = data.load_dataset(dataset)
    return spec, [train, test], "dynamic"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vae_mnist", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=float, help="default: 3 without --minutes, else no limit")
    p.add_argument("--minutes", type=float, default=math.inf, help="training budget in process CPU minutes")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--model", choices=list(RECIPES), default="vae")
    p.add_argument("--arch", choices=list(HIDDEN), default="mlp")
    p.add_argument("--latent", type=int, default=50, help="units of z (of each layer for hvae)")
    p.add_argument("--binarization", choices=["dynamic", "fixed"], default="dynamic")
    p.add_argument("--train-k", type=int, default=1, help="1: the VAE's ELBO; k > 1: IWAE training")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--run-dir", help="checkpoint the trained model here before evaluating; if it holds one "
                                     "already, evaluate that instead of training")
    args = p.parse_args(argv)
    if args.binarization == "fixed" and args.dataset != "mnist":
        p.error("the fixed binarization exists for MNIST only")
    if args.binarization == "fixed" and args.model == "cvae":
        p.error("the fixed binarization has no labels for the cvae")
    epochs = args.epochs or (3 if args.minutes == math.inf else math.inf)
    mg.manual_seed(0)
    spec, (train, test), pixels = load(args.dataset, args.binarization)
    recipe = RECIPES[args.model](spec, latent=args.latent, arch=args.arch, hidden=HIDDEN[args.arch],
                                 pixels=pixels, samples=args.train_k, iwae=args.train_k > 1, eval_k=args.k, lr=1e-3)
    loader = data.DataLoader(*train, batch_size=args.batch_size, seed=0)     # labels are read by the cvae only
    test = [a[:args.test_images] for a in test]
    test_loader = data.DataLoader(*test, batch_size=100, shuffle=False)
    steps, last, metrics, seconds = train_and_evaluate(recipe, loader, test_loader, epochs * len(loader),
                                                       args.minutes, args.run_dir)
    append_row("vae_mnist", argv or sys.argv[1:], {
        "dataset": args.dataset, "model": args.model, "arch": args.arch, "latent": args.latent,
        "binarization": args.binarization, "train_k": args.train_k,
        "epochs": round(steps / len(loader), 2), "steps": steps, "batch_size": args.batch_size,
        "last_train_loss": last["loss"], "test_images": len(test[0]), "eval_k": args.k,
        "test_elbo": metrics["elbo"], "test_iwae": metrics[f"iwae_{args.k}"],
        **{f"test_{k}": v for k, v in metrics.items() if k.startswith("kl_")}, **seconds})
    x = mg.tensor(test[0][:32] if pixels == "as-is" else (test[0][:32] > 0.5).astype(np.float32))
    y = test[1][:32] if args.model == "cvae" else None
    name = "" if args.model == "vae" else f"_{args.model}"
    stem = f"vae{name}_{args.dataset}_{args.arch}_{args.binarization}_k{args.train_k}"
    stem += "" if args.latent == 50 else f"_z{args.latent}"
    save_reconstructions(recipe.model, x, RESULTS / f"{stem}_reconstructions.png", y)
    save_samples(recipe.sample(64), RESULTS / f"{stem}_samples.png")
    if args.model != "cvae":                          # 8 pairs of test images, 8 steps each
        save_interpolations(recipe.model, x[0:16:2], x[1:16:2], RESULTS / f"{stem}_interpolations.png")
    else:
        save_class_samples(recipe.model, RESULTS / f"{stem}_classes.png")
    if args.latent * len(recipe.model.posteriors) == 2:           # the cvae's for one digit, a 3
        save_manifold(recipe.model, RESULTS / f"{stem}_manifold.png", y=3 if args.model == "cvae" else None)


if __name__ == "__main__":
    main()
