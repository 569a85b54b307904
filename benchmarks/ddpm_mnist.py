"""DDPM on MNIST (or Fashion-MNIST, or the 8x8 digits) for a budget of CPU minutes: the variational bound in
bits/dim on test images, samples scored with the project's MNIST classifier (FCD and the IS analogue, beside
the real-vs-real row, as benchmarks/gan_mnist.py does for the GANs), a sample grid and a denoising strip.

    MINIGEN_DATA=/work/shared/data python -m benchmarks.ddpm_mnist --minutes 3 --channels 16 --depth 2

Each run appends a row to benchmarks/results/ddpm_mnist.jsonl (with the command that repeats it) and writes
benchmarks/results/ddpm_mnist/<dataset>-samples.png (DDIM, 50 steps) and <dataset>-strip.png (one row per
sample: x_s along the reverse chain, from noise to the sample). The bound is estimated with `bound_terms` KL
terms drawn per image (unbiased; see `Diffusion.bound`). Training and evaluation use one thread, so that CPU
minutes are comparable on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

if not __package__:   # run as a script: make `benchmarks` and `minigen` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigen as mg  # noqa: E402
from benchmarks.harness import append_row, timed, train_and_evaluate  # noqa: E402
from minigen import data  # noqa: E402
from minigen.metrics import image_metrics  # noqa: E402
from minigen.models.diffusion import DDPMRecipe  # noqa: E402
from minigen.train import save_samples  # noqa: E402

OUT = Path(__file__).parent / "results" / "ddpm_mnist"


def denoising_strip(recipe: DDPMRecipe, n: int, columns: int = 10) -> np.ndarray:
    """(n * columns, C, H, W) in [0, 1]: for n samples, x_s at `columns` evenly spaced steps of the reverse
    chain (the recipe's sampler), the last column the samples themselves."""
    chain = [x.numpy() for _, x in recipe.ema.reverse_chain(n, recipe.spec.shape, recipe.ddim_steps, recipe.eta)]
    keep = np.linspace(0, len(chain) - 1, columns).round().astype(int)
    strip = np.stack([chain[k] for k in keep], axis=1)           # (n, columns, C, H, W)
    return np.clip((strip.reshape(-1, *recipe.spec.shape) + 1) / 2, 0, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
    p.add_argument("--minutes", type=float, default=3.0, help="CPU minutes of training")
    p.add_argument("--steps", type=int, default=10 ** 9, help="at most this many updates")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--bound-terms", type=int, default=4)
    p.add_argument("--n-eval", type=int, default=500, help="test images for the bound; samples for FCD / IS")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits
    import numba
    threadpool_limits(1)
    numba.set_num_threads(1)
    mg.manual_seed(0)
    spec, (train_x, _), (test_x, _) = data.load_dataset(args.dataset, data_dir=args.data_dir)
    recipe = DDPMRecipe(spec, lr=args.lr, channels=args.channels, depth=args.depth, attention=not args.no_attention,
                        T=args.T, ema=args.ema, bound_terms=args.bound_terms)
    loader = data.DataLoader(train_x, batch_size=args.batch_size, seed=0)
    test_loader = data.DataLoader(test_x[:args.n_eval], batch_size=250, shuffle=False)
    steps, last, evaluated, seconds = train_and_evaluate(recipe, loader, test_loader, args.steps, args.minutes)
    samples, sample_cpu, _ = timed(recipe.sample, args.n_eval)
    OUT.mkdir(parents=True, exist_ok=True)
    save_samples(samples[:64], OUT / f"{args.dataset}-samples.png")
    save_samples(denoising_strip(recipe, 6), OUT / f"{args.dataset}-strip.png", nrow=10)
    row = {"dataset": args.dataset, "updates": steps, "epochs": round(steps / len(loader), 2),
           "train_loss_last": round(last["loss"], 4), **{k: round(v, 4) for k, v in evaluated.items()},
           "n_eval": args.n_eval, **seconds, "sample_cpu_s": round(sample_cpu),
           "parameters": sum(p.size for p in recipe.model.parameters())}
    if spec.shape == (1, 28, 28):
        row.update({f"{k}_samples": round(v, 3) for k, v in image_metrics(samples, test_x[:args.n_eval]).items()})
        row.update({f"{k}_real_train": round(v, 3)
                    for k, v in image_metrics(train_x[:args.n_eval], test_x[:args.n_eval]).items()})
    append_row("ddpm_mnist", sys.argv[1:] if argv is None else argv, row)


if __name__ == "__main__":
    main()
