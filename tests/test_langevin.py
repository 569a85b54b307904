"""The Langevin-trained EBM against ground truths: the sampler's stationary mean and covariance on a known
Gaussian energy, negatives detached from the parameters, the replay buffer through a checkpoint and an exact
resume, the modes of the 8 Gaussians covered after a short training run, and the recipe end to end."""
import subprocess
import sys

import numpy as np
import pytest

import minigen as mg
from minigen import data, train
from minigen.models.langevin import LangevinEBMRecipe, contrastive_loss, langevin

SIGMA = np.array([[1.0, 0.6], [0.6, 0.8]])       # eigenvalues 1.51 and 0.29
MU = np.array([1.0, -0.5])


def gaussian_energy(x: mg.Tensor) -> mg.Tensor:
    """E(x) = (x - mu)^T Sigma^-1 (x - mu) / 2, so exp(-E) is N(mu, Sigma)."""
    d = x - mg.tensor(MU)
    return ((d @ mg.tensor(np.linalg.inv(SIGMA))) * d).sum(axis=1) / 2


def _toy_recipe(**options):
    spec, (x, _), (test_x, _) = data.load_dataset("8gaussians")
    return LangevinEBMRecipe(spec, **options), x, test_x


def _parameters(recipe) -> list:
    return [p.data.copy() for p in recipe.E.parameters()]


# --- the sampler ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [1.0, 0.5])
def test_langevin_on_a_gaussian_energy_reaches_its_mean_and_covariance(noise):
    """With noise sigma the chains sample exp(-E / sigma^2) = N(mu, sigma^2 Sigma), up to the step's bias
    Sigma ((I - h Sigma^-1 / 4)^-1 - I) = 1% at h = 0.02, from chains all started at (3, -3)."""
    n = 10000
    x0 = mg.tensor(np.tile([3.0, -3.0], (n, 1)))
    x = langevin(gaussian_energy, x0, steps=1500, step_size=0.02, noise=noise).numpy()
    cov = noise**2 * SIGMA
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(x.mean(0) - MU) < 4 * se_mean)
    assert np.all(np.abs(np.cov(x.T) - cov) < 4 * se_cov + 0.015 * np.abs(cov).max())


def test_langevin_output_is_detached_and_leaves_the_parameters_alone():
    recipe, _, _ = _toy_recipe(hidden=16)
    x = recipe.run_chains(mg.randn(32, 2), steps=3)
    assert x.creator is None and not x.requires_grad
    assert all(p.grad is None for p in recipe.E.parameters())


def test_the_loss_gradient_does_not_flow_through_the_negatives():
    """The step's parameter gradient equals that of the loss with the negatives given as constants: the
    maximum-likelihood gradient mean grad E(x+) - mean grad E(x-) (+ the penalty), without d x- / d theta."""
    recipe, x, _ = _toy_recipe(hidden=16, lr=0.0)
    negatives = []
    run_chains = recipe.run_chains
    recipe.run_chains = lambda start, steps: negatives.append(run_chains(start, steps)) or negatives[-1]
    batch = mg.tensor(x[:64])
    recipe.step((batch,), 1)
    step_grads = [p.grad.numpy().copy() for p in recipe.E.parameters()]
    x_model = mg.tensor(negatives[0].numpy())
    recipe.E.zero_grad()
    contrastive_loss(recipe.E(batch), recipe.E(x_model), recipe.alpha).backward()
    for g, p in zip(step_grads, recipe.E.parameters()):
        np.testing.assert_array_equal(g, p.grad.numpy())
    assert not negatives[0].requires_grad


# --- the replay buffer and resume -------------------------------------------------------------------------


def test_replay_buffer_draws_fresh_noise_with_probability_reinit():
    """From a buffer of zeros, draws are 0 (a past negative) or uniform on the box (fresh noise), fresh with
    probability 5%; stored chains land in their places."""
    recipe, _, _ = _toy_recipe(hidden=16, buffer_size=100)
    recipe.buffer.x[:] = 0
    index, start = recipe.buffer.draw(20000)
    fresh = np.abs(start.numpy()).max(axis=1) > 0
    assert abs(fresh.mean() - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 20000)
    assert np.abs(start.numpy()).max() <= 4.0
    recipe.buffer.store(index[:3], mg.tensor(np.ones((3, 2), np.float32)))
    np.testing.assert_array_equal(recipe.buffer.x[index[:3]], 1.0)


def test_replay_buffer_round_trips_through_a_checkpoint(tmp_path):
    recipe, x, _ = _toy_recipe(hidden=16, buffer_size=64, langevin_steps=2)
    loader = data.DataLoader(x, batch_size=32, seed=0)
    recipe.step(next(iter(loader)), 1)
    train.save_checkpoint(tmp_path, train.training_state(recipe, loader, 1))
    mg.manual_seed(1)
    other, _, _ = _toy_recipe(hidden=16, buffer_size=64, langevin_steps=2)
    assert not np.array_equal(other.buffer.x, recipe.buffer.x)
    train.restore_training_state(other, loader, train.load_checkpoint(tmp_path))
    np.testing.assert_array_equal(other.buffer.x, recipe.buffer.x)


def test_a_resumed_run_equals_an_unstopped_one(tmp_path):
    """6 updates in one go, against 3 updates, a fresh recipe (other seed) restored from the checkpoint, and
    3 more: the same parameters and replay buffer, bit for bit."""
    options = dict(hidden=16, buffer_size=64, langevin_steps=3, sample_steps=2)

    def run(folder, steps, resume, seed=0):
        mg.manual_seed(seed)
        recipe, x, _ = _toy_recipe(**options)
        loader = data.DataLoader(x, batch_size=32, seed=0)
        train.fit(recipe, loader, steps, folder, resume=resume, n_samples=8, progress=False)
        return recipe

    whole = run(tmp_path / "whole", 6, resume=False)
    run(tmp_path / "parts", 3, resume=False)
    resumed = run(tmp_path / "parts", 6, resume=True, seed=1)
    for a, b in zip(_parameters(whole), _parameters(resumed)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.buffer.x, resumed.buffer.x)


# --- training ---------------------------------------------------------------------------------------------


def test_ebm_trained_on_8_gaussians_covers_every_mode():
    """250 updates (seconds): Langevin samples from noise cover all 8 modes, and most of them lie within 3
    standard deviations of a mode (uniform noise on the box would: 44%; the data: 98.9%)."""
    recipe, x, test_x = _toy_recipe(hidden=64)
    batches = train._batches(data.DataLoader(x, batch_size=128, seed=0))
    for t in range(1, 251):
        recipe.step(next(batches), t)
    metrics = recipe.evaluate(data.DataLoader(test_x[:1000], batch_size=500, shuffle=False), n_samples=1000)
    assert metrics["modes"] == 8
    assert metrics["high_quality"] > 0.75


# --- the recipe end to end --------------------------------------------------------------------------------


def test_recipe_on_images_end_to_end():
    spec, (x, _), (test_x, _) = data.load_dataset("digits")
    recipe = LangevinEBMRecipe(spec, width=8, langevin_steps=3, sample_steps=3, buffer_size=100)
    batches = train._batches(data.DataLoader(x, batch_size=32, seed=0))
    for t in range(1, 4):
        metrics = recipe.step(next(batches), t)
    assert set(metrics) == {"loss", "energy_data", "energy_model"}
    evaluated = recipe.evaluate(data.DataLoader(test_x, batch_size=100, shuffle=False), n_samples=16)
    assert set(evaluated) == {"energy_data", "energy_samples", "energy_gap"}
    assert (recipe.step_size, recipe.noise) == (2.0, 0.005)       # the decoupled scales on images
    samples = recipe.sample(5)
    assert samples.shape == (5, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1


def test_recipe_declares_its_options():
    assert set(LangevinEBMRecipe.options()) == {"lr", "hidden", "layers", "langevin_steps", "step_size", "noise",
                                               "buffer_size", "reinit", "alpha", "sample_steps", "width"}


def test_command_trains_the_ebm(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minigen", "train", "ebm", "--steps", "10", "--out", str(tmp_path),
                          "--opt", "hidden=16", "--opt", "sample_steps=5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '"modes"' in out.stdout
    assert (tmp_path / "latest.json").exists()
