"""RealNVP, Glow, MAF and FFJORD on MNIST for a budget of CPU minutes, scored by test bits/dim.

    MINIGEN_DATA=/work/shared/data python -m benchmarks.flows_mnist realnvp --minutes 10 --test-images 2000

The models are the `minigen train realnvp|glow|maf|ffjord --dataset mnist` recipes with their default options:
pixels dequantized uniformly on 256 levels, then the logit transform, both log-Jacobians counted, so that
bits/dim = (-log p(y) + D log 256) / (D log 2) bounds the discrete NLL (one dequantization draw per test
image). Published anchors (full training on GPUs): RealNVP 1.06, Glow 1.05, FFJORD 0.99 bits/dim.
Appends a row to benchmarks/results/flows_mnist.jsonl and writes sample grids at temperatures 0.7 and 1.0
to benchmarks/results/flows/.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


import minigen as mg
from minigen import data
from minigen.models import recipe_class
from minigen.train import save_samples

from .harness import append_row, train_and_evaluate

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flows_mnist", description=__doc__.split("\n\n")[0])
    p.add_argument("family", choices=["realnvp", "glow", "maf", "ffjord"])
    p.add_argument("--minutes", type=float, default=10, help="training budget in process CPU minutes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--hidden", type=int, help="hidden units / channels of the networks (default: the recipe's)")
    p.add_argument("--lr", type=float, help="Adam's learning rate (default: the recipe's)")
    args = p.parse_args(argv)
    mg.manual_seed(0)
    spec, (train_x, _), (test_x, _) = data.load_dataset("mnist")
    options = {k: v for k, v in (("hidden", args.hidden), ("lr", args.lr)) if v is not None}
    recipe = recipe_class(args.family)(spec, **options)
    loader = data.DataLoader(train_x, batch_size=args.batch_size, seed=0)
    test_loader = data.DataLoader(test_x[:args.test_images], batch_size=250, shuffle=False)
    steps, last, metrics, seconds = train_and_evaluate(recipe, loader, test_loader, math.inf, args.minutes)
    append_row("flows_mnist", argv or sys.argv[1:], {
        "family": args.family, **options, "epochs": round(steps / len(loader), 2), "steps": steps,
        "batch_size": args.batch_size, "last_train_nll": last["nll"], "test_images": args.test_images,
        "test_nll": metrics["nll"], "test_bits_per_dim": metrics["bits_per_dim"], **seconds})
    for temperature in (0.7, 1.0):
        recipe.temperature = temperature
        name = f"{args.family}{args.hidden or ''}_mnist_T{temperature}.png"
        save_samples(recipe.sample(64), RESULTS / "flows" / name)


if __name__ == "__main__":
    main()
