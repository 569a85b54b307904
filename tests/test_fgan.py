"""The f-GAN trainer: its critic reaches the divergence it estimates (F -> D_f at the optimum, generator
frozen), the generator moves towards the data under both generator losses (sign conventions), the
single-step method takes both gradients at the same point (Algorithm 1), and the recipe end to end, through
the `minigen` command too."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import minigen as mg
from minigen import data, train
from minigen.divergences import divergence
from minigen.models.fgan import FGANRecipe, variational_objective

POINTS = data.DataSpec("gaussian", (2,), "continuous")
MU = np.array([1.0, 0.5])                       # the data: N(MU, I); the frozen generator: N(0, I)


def _gaussian_data(n: int, seed: int) -> np.ndarray:
    return (MU + np.random.default_rng(seed).standard_normal((n, 2))).astype(np.float32)


def _divergence_by_quadrature(name: str) -> float:
    """D_f(N(MU, I) || N(0, I)) = E_Q f(p/q): p/q = exp(|MU| s - |MU|^2 / 2) depends on x only through
    s = MU.x / |MU| ~ N(0, 1) under Q, so D_f is a 1-D integral (trapezoid rule on [-12, 12])."""
    s, norm = np.linspace(-12, 12, 48_001), np.linalg.norm(MU)
    density = np.exp(-s * s / 2) / math.sqrt(2 * math.pi)
    f_of_ratio = divergence(name).f(mg.tensor(np.exp(norm * s - norm ** 2 / 2))).numpy()
    return float(np.trapezoid(density * f_of_ratio, s))


def _recipe_with_identity_generator(name: str, **options) -> FGANRecipe:
    """An f-GAN whose affine generator is x = z, i.e. Q = N(0, I)."""
    mg.manual_seed(0)
    recipe = FGANRecipe(POINTS, divergence=name, generator_layers=0, **options)
    linear = recipe.G[0]
    linear.weight.data[...] = np.eye(2, dtype=np.float32)
    linear.bias.data[...] = 0.0
    return recipe


def _freeze(optimizer) -> None:
    for group in optimizer.param_groups:
        group["lr"] = 0.0


def _run(recipe, x: np.ndarray, steps: int, batch_size: int = 256):
    batches = train._batches(data.DataLoader(x, batch_size=batch_size, seed=0))
    for t in range(1, steps + 1):
        metrics = recipe.step(next(batches), t)
    return metrics


def _objective(recipe, x: np.ndarray, n: int = 20_000) -> float:
    with mg.no_grad():
        return variational_objective(recipe.critic(mg.tensor(x[:n])), recipe.critic(recipe.G(recipe.noise(n))),
                                     recipe.div).item()


@pytest.mark.parametrize("name", ["kl", "reverse-kl", "hellinger", "js", "gan"])
def test_trained_critic_attains_the_divergence(name):
    """With Q = N(0, I) frozen and P = N(MU, I), the critic's optimum g_f(V) = f'(p/q) is a function of the
    linear log-ratio MU.x - |MU|^2/2; trained by the recipe's own steps, its bound F (on held-out samples)
    comes within 0.04 of D_f."""
    recipe = _recipe_with_identity_generator(name, hidden=32, lr=3e-3)
    _freeze(recipe.opt_G)
    x = _gaussian_data(20_000, seed=0)
    _run(recipe, x, steps=500)
    F = _objective(recipe, _gaussian_data(20_000, seed=1))
    assert F == pytest.approx(_divergence_by_quadrature(name), abs=0.04)


@pytest.mark.parametrize("generator_loss", ["saddle", "alternative"])
@pytest.mark.parametrize("name", ["kl", "reverse-kl"])
def test_generator_moves_towards_the_data(name, generator_loss):
    """After the critic has learnt (generator frozen), generator steps against the frozen critic move the
    generator's mean b from 0 towards MU: the generator descends F."""
    recipe = _recipe_with_identity_generator(name, hidden=32, lr=3e-3, generator_loss=generator_loss)
    _freeze(recipe.opt_G)
    x = _gaussian_data(20_000, seed=0)
    _run(recipe, x, steps=300)
    recipe.opt_G.param_groups[0]["lr"] = 1e-2
    _freeze(recipe.opt_V)
    _run(recipe, x, steps=20)
    b = recipe.G[0].bias.numpy()
    assert b @ MU > 0.1 * MU @ MU


def _params(recipe) -> list[np.ndarray]:
    return [p.numpy().copy() for m in (recipe.V, recipe.G) for p in m.parameters()]


@pytest.mark.parametrize("updates", ["single", "alternating"])
def test_single_step_takes_both_gradients_at_the_same_point(updates):
    """Algorithm 1: omega ascends F and theta descends the generator loss, both gradients at (theta_t,
    omega_t). Adam's first step is lr * sign(gradient), so each parameter's change is checked against the
    gradients taken by hand at the starting point with the same noise: exact for "single"; for "alternating"
    the generator's gradient is taken after the critic's step, so some signs differ."""
    spec, (x, _), _ = data.load_dataset("8gaussians")
    recipe = FGANRecipe(spec, hidden=16, updates=updates, lr=1e-3)
    batch = (mg.tensor(x[:64]),)
    V_params, G_params = list(recipe.V.parameters()), list(recipe.G.parameters())
    before = _params(recipe)
    mg.manual_seed(5)
    v_fake = recipe.critic(recipe.G(recipe.noise(64)))
    F = variational_objective(recipe.critic(batch[0]), v_fake, recipe.div)
    g_V = mg.grad(-F, V_params, retain_graph=True)
    g_G = mg.grad(recipe.generator_loss(v_fake, recipe.div), G_params)
    mg.manual_seed(5)
    recipe.step(batch, 1)
    changes = [(a - b) for a, b in zip(_params(recipe), before)]
    expected = [-np.sign(g.numpy()) * 1e-3 for g in (*g_V, *g_G)]
    n_V = len(V_params)
    for change, e, g in zip(changes[:n_V], expected[:n_V], g_V):
        np.testing.assert_allclose(change[np.abs(g.numpy()) > 1e-4], e[np.abs(g.numpy()) > 1e-4], rtol=1e-2)
    agree = [np.allclose(c[np.abs(g.numpy()) > 1e-4], e[np.abs(g.numpy()) > 1e-4], rtol=1e-2)
             for c, e, g in zip(changes[n_V:], expected[n_V:], g_G)]
    assert all(agree) if updates == "single" else not all(agree)


@pytest.mark.parametrize("updates", ["single", "alternating"])
@pytest.mark.parametrize("name", ["pearson", "tv", "gan"])
def test_recipe_end_to_end(name, updates):
    spec, (x, _), (x_test, _) = data.load_dataset("8gaussians")
    mg.manual_seed(0)
    recipe = FGANRecipe(spec, divergence=name, updates=updates, hidden=16)
    metrics = _run(recipe, x, steps=5, batch_size=64)
    assert set(metrics) == {"objective", "generator_loss"} and all(map(math.isfinite, metrics.values()))
    evaluated = recipe.evaluate(data.DataLoader(x_test, batch_size=500, shuffle=False))
    assert {"test_objective", "modes", "high_quality"} <= set(evaluated)
    samples = recipe.sample(10)
    assert samples.shape == (10, 2) and np.isfinite(samples).all()


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="choose one of"):
        FGANRecipe(POINTS, divergence="wasserstein")
    with pytest.raises(ValueError, match="updates must be one of"):
        FGANRecipe(POINTS, updates="simultaneous")
    with pytest.raises(ValueError, match="generator_loss must be one of"):
        FGANRecipe(POINTS, generator_loss="minimax")


def test_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-m", "minigen", "train", "fgan", "--opt", "divergence=reverse-kl",
                           "--opt", "hidden=16", "--steps", "10", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "metrics.jsonl").exists()
