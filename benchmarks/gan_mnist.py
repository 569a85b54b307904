"""DCGAN, WGAN and WGAN-GP on MNIST for a fixed budget of critic steps, scored against the test set with the
project's classifier (FCD and the IS analogue, see `minigen.metrics`); plus the 2-D pictures (8 Gaussians
under a non-saturating GAN and WGAN-GP, simultaneous GDA on x y).

    MINIGEN_DATA=/work/shared/data python -m benchmarks.gan_mnist --steps 300 --width 16

Writes benchmarks/results/gan_mnist.json and pictures under benchmarks/results/gan_mnist/: per family the
final samples, a fixed-noise grid (one row per quarter of the run) and the loss curves.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import minigen as mg
from minigen import data
from minigen.data import EIGHT_GAUSSIANS
from minigen.metrics import classifier_outputs, fcd, image_metrics, inception_score, load_classifier, mode_statistics
from minigen.models.gan import (DCGANRecipe, GANRecipe, WGANGPRecipe, WGANRecipe, save_line_plot,
                                simultaneous_gda)
from minigen.train import image_grid, save_samples

RESULTS = Path(__file__).parent / "results"
FAMILIES = {"dcgan": DCGANRecipe, "wgan": WGANRecipe, "wgan-gp": WGANGPRecipe}


def train(recipe, loader, steps: int, snapshots: int = 4, fixed: int = 8) -> tuple[list, list]:
    """Run `steps` recipe steps; returns (metrics per step, fixed-noise samples at each snapshot)."""
    z = mg.tensor(np.random.default_rng(123).standard_normal((fixed, recipe.latent)), dtype=np.float32)
    history, rows, batches = [], [recipe.generate(z)], iter(())
    for step in range(1, steps + 1):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        history.append(recipe.step(batch))
        if step % max(steps // snapshots, 1) == 0:
            rows.append(recipe.generate(z))
    return history, rows


def pictures(name: str, recipe, history: list, rows: list, out: Path) -> None:
    save_samples(recipe.sample(64), out / f"{name}-samples.png")
    grid = image_grid(np.concatenate(rows), nrow=len(rows[0]))
    save_samples(grid.transpose(2, 0, 1)[None] / 255.0, out / f"{name}-fixed-noise.png")
    steps = np.arange(1, len(history) + 1)
    save_line_plot({k: (steps, [h[k] for h in history]) for k in ("d_loss", "g_loss")}, out / f"{name}-losses.png")


def toys(out: Path) -> dict:
    """8 Gaussians with the settings of tests/test_gan.py, and the x y game."""
    path = simultaneous_gda(1.0, 0.0, lr=0.1, steps=150)
    save_line_plot({"(x_t, y_t)": (path[:, 0], path[:, 1])}, out / "xy-simultaneous-gda.png", square=True)
    results = {"xy_distance_start_end": [float(np.hypot(*path[0])), float(np.hypot(*path[-1]))]}
    reference = data.eight_gaussians(2000, 1)
    loader = data.DataLoader(data.eight_gaussians(20000, 0), batch_size=256, seed=0)
    for name, recipe, steps in (("gan-8gaussians", GANRecipe((2,), lr=1e-3, hidden=64), 600),
                                ("wgan-gp-8gaussians", WGANGPRecipe((2,), lr=1e-3, beta1=0.5, penalty=0.1), 1000)):
        history, _ = train(recipe, loader, steps)
        samples = recipe.sample(2000)
        save_samples(samples, out / f"{name}.png", reference=reference)
        results[name] = {"steps": steps, **mode_statistics(samples, EIGHT_GAUSSIANS.means, EIGHT_GAUSSIANS.std)}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="critic steps per family (one batch each)")
    p.add_argument("--width", type=int, default=16, help="conv channels (64 in DCGAN)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=1000, help="samples and test images for FCD / IS")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--data-dir")
    args = p.parse_args()

    out = RESULTS / "gan_mnist"
    out.mkdir(parents=True, exist_ok=True)
    (train_x, _), (test_x, _) = (data.load_mnist(s, data_dir=args.data_dir) for s in ("train", "test"))
    train_x, test_x = (x[:, None].astype(np.float32) / 255 for x in (train_x, test_x))
    classifier = load_classifier()
    reference = test_x[:args.n_eval]
    results = {"config": vars(args),
               "real_train_vs_test": {"fcd": fcd(train_x[:args.n_eval], reference, classifier),
                                      "is": inception_score(classifier_outputs(reference, classifier)[1])}}
    for name in args.families:
        mg.manual_seed(0)
        recipe = FAMILIES[name]((1, 28, 28), width=args.width)
        loader = data.DataLoader(train_x, batch_size=args.batch_size, seed=0)
        start = time.process_time()
        history, rows = train(recipe, loader, args.steps)
        seconds = time.process_time() - start
        pictures(name, recipe, history, rows, out)
        results[name] = {"steps": args.steps, "generator_steps": args.steps // recipe.n_critic,
                         "cpu_seconds": round(seconds, 1), **image_metrics(recipe.sample(args.n_eval), reference,
                                                                           classifier)}
        print(name, results[name], flush=True)
    results["toys"] = toys(out)
    (RESULTS / "gan_mnist.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
