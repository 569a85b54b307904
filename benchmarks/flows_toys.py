"""2-D density plots of the toy flows: RealNVP, MAF, Glow-style and FFJORD fitted by maximum likelihood to two
moons, 8 Gaussians and checkerboard (a histogram of the data first), and planar and radial flows fitted by
reverse KL to U1-U4 (the target exp(-U) on the strip |z1| <= 4 first).

    python -m benchmarks.flows_toys --scale 1

Writes one PNG per data set or energy to benchmarks/results/flows/ (each panel the density on a grid, white
at 0, darkest at its maximum) and the numbers (test NLL against the entropy, or E_q[log q + U] against
-log Z) to benchmarks/results/flows_toys.md. `--scale` multiplies every step count (0.1 for a quick look).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

import minigen as mg
from minigen import data, optim
from minigen.models import cnf
from minigen.models import flows as F
from minigen.train import save_picture

RESULTS = Path(__file__).parent / "results"
SIZE = 128                                    # pixels per panel side

POINTS = data.DataSpec("points", (2,), "continuous")
DENSITY_MODELS = {"realnvp": lambda: F.realnvp_2d(64, 8), "maf": lambda: F.maf(2, 64, 8),
                  "glow": lambda: F.glow_2d(64, 8), "ffjord": lambda: cnf.FFJORDRecipe(POINTS)}
DENSITY_STEPS = {"moons": 1000, "8gaussians": 3000, "checkerboard": 4000}
FFJORD_STEPS = {"moons": 500, "8gaussians": 300, "checkerboard": 1500}      # RK4, 4 steps: cheap, rougher
EXTENT = {"moons": 4.0, "8gaussians": 4.5, "checkerboard": 4.0}
# (length K, steps, batch, lr) per fit, as in tests/test_flows.py
ENERGY_FITS = {("planar", "u1"): (16, 1500, 256, 1e-2), ("planar", "u2"): (32, 4000, 256, 1e-2),
               ("planar", "u3"): (32, 4000, 256, 1e-2), ("planar", "u4"): (32, 4000, 256, 1e-2),
               ("radial", "u1"): (32, 2000, 1024, 2e-2), ("radial", "u2"): (32, 2000, 1024, 2e-2),
               ("radial", "u3"): (64, 2000, 1024, 2e-2), ("radial", "u4"): (64, 2000, 1024, 2e-2)}


def grid(extent: float) -> np.ndarray:
    """The SIZE x SIZE cell centres of [-extent, extent]^2, row by row from the top (image order)."""
    c = ((np.arange(SIZE) + 0.5) / SIZE * 2 - 1) * extent
    x1, x2 = np.meshgrid(c, -c)
    return np.stack([x1.ravel(), x2.ravel()], 1).astype(np.float32)


def panel(log_p: np.ndarray) -> np.ndarray:
    """Densities exp(log_p) on the grid as an RGB panel, white at 0 to dark blue at the maximum, in 16
    shades (which keeps the PNGs small)."""
    p = np.nan_to_num(np.exp(log_p - np.nanmax(log_p))).reshape(SIZE, SIZE, 1)
    return (255 - np.round(p * 15) / 15 * np.array([235, 195, 95])).round().astype(np.uint8)


def histogram(x: np.ndarray, extent: float) -> np.ndarray:
    """The log of a SIZE x SIZE histogram of points, in grid order, for `panel`."""
    h = np.histogram2d(-x[:, 1], x[:, 0], bins=SIZE, range=[[-extent, extent]] * 2)[0]
    return np.log(h.ravel() + 1e-12)


def save_row(panels: list, name: str) -> None:
    gap = np.full((SIZE, 4, 3), 255, np.uint8)
    row = np.concatenate([p for q in panels for p in (q, gap)][:-1], axis=1)
    save_picture(row, RESULTS / "flows" / f"{name}.png", zoom=1)


def entropy_of(name: str, x: np.ndarray) -> float:
    """H of the generator: log 32 for the uniform checkerboard, Monte Carlo with the exact density for the 8
    Gaussians, and for two moons the value measured in tests/test_flows.py (200000 points, quadrature)."""
    if name == "checkerboard":
        return math.log(32)
    return -float(data.EIGHT_GAUSSIANS.log_prob(x).mean()) if name == "8gaussians" else 2.395


def fit_density(model: str, name: str, steps: int):
    """Adam with a cosine schedule on fresh batches of 256 (as the tests); returns log p as a function and
    the test NLL on 20000 points."""
    rng = np.random.default_rng(1)
    if model == "ffjord":
        recipe = DENSITY_MODELS[model]()
        schedule = optim.CosineAnnealingLR(recipe.optimizer, steps)
        for t in range(1, steps + 1):
            recipe.step((mg.tensor(data.sample_toy(name, 256, rng)),), t)
            schedule.step()

        def log_p(x):
            return recipe.model.log_prob(mg.tensor(x), **recipe.eval_solver, trace="exact")[0].numpy()
    else:
        flow = DENSITY_MODELS[model]()
        opt = optim.Adam(flow.parameters(), lr=2e-3)
        schedule = optim.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            loss = -flow.log_prob(mg.tensor(data.sample_toy(name, 256, rng))).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()

        def log_p(x):
            return flow.log_prob(mg.tensor(x)).numpy()
    with mg.no_grad():
        nll = -log_p(data.sample_toy(name, 20000, np.random.default_rng(2))).mean()
    return log_p, float(nll)


def fit_energy(kind: str, target: str, length: int, steps: int, batch: int, lr: float):
    """Reverse KL with the annealed energy (none for the unimodal U2) and a cosine schedule, as the tests;
    returns the recipe and its evaluation."""
    recipe = {"planar": F.PlanarRecipe, "radial": F.RadialRecipe}[kind](
        POINTS, target=target, length=length, lr=lr, batch=batch, anneal_steps=1 if target == "u2" else steps // 2)
    schedule = optim.CosineAnnealingLR(recipe.optimizer, steps)
    for t in range(1, steps + 1):
        recipe.step(None, t)
        schedule.step()
    return recipe, recipe.evaluate(None)


def density_rows(scale: float, lines: list) -> None:
    lines += ["| data | model | steps | test NLL | entropy | gap | seconds |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, steps in DENSITY_STEPS.items():
        extent = EXTENT[name]
        x = data.sample_toy(name, 200000, np.random.default_rng(3))
        panels = [panel(histogram(x, extent))]
        entropy = entropy_of(name, x)
        for model in DENSITY_MODELS:
            n = max(1, round(scale * (FFJORD_STEPS if model == "ffjord" else DENSITY_STEPS)[name]))
            start = time.time()
            log_p, nll = fit_density(model, name, n)
            with mg.no_grad():
                panels.append(panel(log_p(grid(extent))))
            lines.append(f"| {name} | {model} | {n} | {nll:.3f} | {entropy:.3f} | {nll - entropy:.3f} "
                         f"| {time.time() - start:.0f} |")
            print(lines[-1], flush=True)
        save_row(panels, f"density_{name}")


def energy_rows(scale: float, lines: list) -> None:
    lines += ["", "| energy | flow | K | steps | batch | E_q[log q + U] | -log Z | gap | seconds |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for target in ("u1", "u2", "u3", "u4"):
        energy = data.ENERGIES[target]
        points = grid(data.ENERGY_Z1_MAX)
        inside = np.clip(points, -data.ENERGY_Z1_MAX + 1e-3, data.ENERGY_Z1_MAX - 1e-3)    # q's open strip
        with mg.no_grad():
            panels = [panel(-energy(mg.tensor(points)).numpy())]
        for kind in ("planar", "radial"):
            length, steps, batch, lr = ENERGY_FITS[kind, target]
            steps = max(1, round(scale * steps))
            start = time.time()
            recipe, m = fit_energy(kind, target, length, steps, batch, lr)
            with mg.no_grad():
                panels.append(panel(recipe.flow.log_prob(mg.tensor(inside)).numpy()))
            lines.append(f"| {target} | {kind} | {length} | {steps} | {batch} | {m['loss']:.3f} ± {m['loss_se']:.3f} "
                         f"| {m['floor']:.3f} | {m['loss'] - m['floor']:.3f} | {time.time() - start:.0f} |")
            print(lines[-1], flush=True)
        save_row(panels, f"energy_{target}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flows_toys", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    p.add_argument("--only", choices=["density", "energy"], help="one half only")
    args = p.parse_args(argv)
    mg.manual_seed(0)
    command = " ".join(["python -m benchmarks.flows_toys"] + (argv or sys.argv[1:]))
    lines = ["# Toy flows: density plots", "", f"`{command}` (one thread); pictures in `flows/`: "
             "`density_<data>.png` is data histogram, RealNVP, MAF, Glow-style, FFJORD; `energy_<U>.png` is "
             "exp(-U) on the strip |z1| <= 4, planar q, radial q.", "",
             "Budgets and settings are those of tests/test_flows.py, but each model here starts from the "
             "random state the previous one left, so its numbers differ from the tests' by the spread over "
             "seeds (Glow-style on checkerboard: 0.12-0.20 nats), except that the Glow-style flow has 8 steps "
             "everywhere (the tests give it 16 on checkerboard). FFJORD is trained with 4 RK4 steps, "
             "cheaper than the slow tests' Dopri5, and evaluated with Dopri5 at 1e-5.", ""]
    if args.only != "energy":
        density_rows(args.scale, lines)
    if args.only != "density":
        energy_rows(args.scale, lines)
    (RESULTS / "flows_toys.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
