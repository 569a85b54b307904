"""DCGAN, WGAN and WGAN-GP on MNIST or Fashion-MNIST for a budget of critic steps (or epochs of them), scored
against the test set with the project's MNIST classifier (FCD and the IS analogue, see `minigen.metrics`); plus
the 2-D pictures (8 Gaussians under a non-saturating GAN and WGAN-GP, simultaneous GDA on x y).

    MINIGEN_DATA=/work/shared/data python -m benchmarks.gan_mnist --dataset mnist --families dcgan --epochs 5

The classifier has seen only digits: on Fashion-MNIST its features and class probabilities are a weak proxy
(FCD still compares feature statistics with the test set's; the IS analogue measures how confidently clothes
are read as digits, not sample quality). Compare every row with the real-vs-real row of the same dataset and n.

Writes benchmarks/results/gan_<dataset>.json (updated per family, so families can be run one at a time) and
pictures under benchmarks/results/gan_<dataset>/: per family the final samples, a fixed-noise grid (one row
per epoch, or per quarter of a run in steps) and the loss curves.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import minigen as mg
from minigen import data
from minigen.data import EIGHT_GAUSSIANS, TWENTY_FIVE_GAUSSIANS
from minigen.metrics import image_metrics, load_classifier, mode_statistics
from minigen.models.gan import (DCGANRecipe, GANRecipe, WGANGPRecipe, WGANRecipe, save_line_plot,
                                simultaneous_gda)
from minigen.train import save_samples

RESULTS = Path(__file__).parent / "results"
FAMILIES = {"dcgan": DCGANRecipe, "wgan": WGANRecipe, "wgan-gp": WGANGPRecipe}


def train(recipe, loader, steps: int, every: int, fixed: int = 8) -> tuple[list, list]:
    """Run `steps` recipe steps; returns (metrics per step, fixed-noise samples at the start and every
    `every` steps)."""
    z = mg.tensor(np.random.default_rng(123).standard_normal((fixed, recipe.latent)), dtype=np.float32)
    history, rows, batches = [], [recipe.generate(z)], iter(())
    for step in range(1, steps + 1):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        history.append(recipe.step(batch, step))
        if step % every == 0:
            rows.append(recipe.generate(z))
    return history, rows


def pictures(name: str, recipe, history: list, rows: list, out: Path) -> None:
    save_samples(recipe.sample(64), out / f"{name}-samples.png")
    save_samples(np.concatenate(rows), out / f"{name}-fixed-noise.png", nrow=len(rows[0]))
    steps = np.arange(1, len(history) + 1)
    save_line_plot({k: (steps, [h[k] for h in history]) for k in ("d_loss", "g_loss")}, out / f"{name}-losses.png")


POINTS = data.DataSpec("points", (2,), "continuous")
MIXTURES = {"8gaussians": (data.eight_gaussians, EIGHT_GAUSSIANS, 1),
            "25gaussians": (data.twenty_five_gaussians, TWENTY_FIVE_GAUSSIANS, 2)}


def toys(out: Path) -> dict:
    """8 and 25 Gaussians with the settings of tests/test_gan.py (25: twice the steps), and the x y game."""
    path = simultaneous_gda(1.0, 0.0, lr=0.1, steps=150)
    save_line_plot({"(x_t, y_t)": (path[:, 0], path[:, 1])}, out / "xy-simultaneous-gda.png", square=True)
    results = {"xy_distance_start_end": [float(np.hypot(*path[0])), float(np.hypot(*path[-1]))]}
    for mixture, (draw, spec, longer) in MIXTURES.items():
        reference = draw(2000, 1)
        loader = data.DataLoader(draw(20000, 0), batch_size=256, seed=0)
        for name, recipe, steps in (("gan", GANRecipe(POINTS, lr=1e-3, hidden=64), 600),
                                    ("wgan-gp", WGANGPRecipe(POINTS, lr=1e-3, beta1=0.5, penalty=0.1), 1000)):
            history, _ = train(recipe, loader, steps * longer, every=steps * longer)
            samples = recipe.sample(2000)
            save_samples(samples, out / f"{name}-{mixture}.png", reference=reference)
            results[f"{name}-{mixture}"] = {"steps": steps * longer, **mode_statistics(samples, spec.means, spec.std)}
    return results


DATASETS = {"mnist": data.load_mnist, "fashion": data.load_fashion_mnist}


def load_images(dataset: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) images (n, 1, 28, 28) in [0, 1]."""
    return tuple(DATASETS[dataset](split, data_dir=data_dir)[0][:, None].astype(np.float32) / 255
                 for split in ("train", "test"))


def run_family(name: str, args, train_x: np.ndarray, reference: np.ndarray, classifier, out: Path) -> dict:
    """Train one family for --epochs (or --steps) critic steps; its pictures, CPU time and scores."""
    mg.manual_seed(0)
    recipe = FAMILIES[name]((1, 28, 28), width=args.width)
    loader = data.DataLoader(train_x, batch_size=args.batch_size, seed=0, drop_last=True)
    steps = args.epochs * len(loader) if args.epochs else args.steps
    start = time.process_time()
    history, rows = train(recipe, loader, steps, every=len(loader) if args.epochs else max(steps // 4, 1))
    seconds = time.process_time() - start
    pictures(name, recipe, history, rows, out)
    return {"epochs": round(steps / len(loader), 2), "critic_steps": steps,
            "generator_steps": steps // recipe.n_critic, "width": args.width, "batch_size": args.batch_size,
            "cpu_minutes": round(seconds / 60, 1), "n_eval": args.n_eval,
            **image_metrics(recipe.sample(args.n_eval), reference, classifier)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=list(DATASETS))
    p.add_argument("--steps", type=int, default=300, help="critic steps per family (one batch each)")
    p.add_argument("--epochs", type=int, help="critic steps as passes over the training set (overrides --steps)")
    p.add_argument("--width", type=int, default=32, help="conv channels (64 in DCGAN)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=2000, help="samples and test images for FCD / IS")
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--skip-toys", action="store_true", help="keep the 2-D results of an earlier run")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for gan_<dataset>.json and pictures")
    p.add_argument("--data-dir")
    args = p.parse_args()

    out = args.results / f"gan_{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    path = args.results / f"gan_{args.dataset}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    train_x, test_x = load_images(args.dataset, args.data_dir)
    classifier = load_classifier()
    reference = test_x[:args.n_eval]
    results["real_train_vs_test"] = {"n_eval": args.n_eval, **image_metrics(train_x[:args.n_eval], reference,
                                                                            classifier)}
    print("real", results["real_train_vs_test"], flush=True)
    for name in args.families:
        results[name] = run_family(name, args, train_x, reference, classifier, out)
        print(name, results[name], flush=True)
    if not args.skip_toys:
        results["toys"] = toys(out)
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
