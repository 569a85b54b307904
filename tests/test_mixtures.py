"""Mixtures by EM against ground truths: the log-likelihood never decreases at any iteration, EM recovers the
parameters of a known mixture, an 8-component GMM on the 8 Gaussians reaches the data's entropy (Monte Carlo
from the true density), samples have the mixture's moments, and the recipes end to end (a full-batch step
with kappa = 0 is exactly one classic EM iteration)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import minigen as mg
from minigen import backend, data
from minigen.models.mixtures import (BernoulliMixture, BernoulliMixtureRecipe, GaussianMixture, GMMRecipe,
                                     kmeans_pp)

pytest.importorskip("sklearn", reason="scikit-learn (the test extra) gives the 8x8 digits")

MEANS = np.array([[0.0, 0.0], [4.0, 1.0], [-2.0, 4.0]])
COVS = np.array([[[1.0, 0.5], [0.5, 0.8]], [[0.3, 0.0], [0.0, 1.5]], [[0.6, -0.4], [-0.4, 0.9]]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
P = np.array([[0.9] * 5 + [0.1] * 5, [0.1] * 5 + [0.9] * 5, [0.9, 0.1] * 5])


def _gaussian_mixture_data(n, rng):
    k = rng.choice(3, size=n, p=WEIGHTS)
    L = np.linalg.cholesky(COVS)
    return MEANS[k] + np.einsum("nij,nj->ni", L[k], rng.standard_normal((n, 2)))


def _bernoulli_mixture_data(n, rng):
    k = rng.choice(3, size=n, p=WEIGHTS)
    return (rng.random((n, 10)) < P[k]).astype(np.float64)


def _binary_digits():
    spec, (train_x, _), (test_x, _) = data.load_dataset("binarized-digits")
    flat = (a.reshape(len(a), -1).astype(np.float64) for a in (train_x, test_x))
    return (spec, *flat)


@pytest.mark.parametrize("make", [lambda: GaussianMixture(2, 5, "full", reg=0.0),
                                  lambda: GaussianMixture(2, 5, "diag", reg=0.0),
                                  lambda: BernoulliMixture(64, 10, min_prob=1e-3)],
                         ids=["gmm-full", "gmm-diag", "bernoulli"])
def test_em_log_likelihood_never_decreases(make):
    """Each EM iteration increases the log-likelihood or leaves it (Bishop sec. 9.4), checked at all 60."""
    mg.manual_seed(0)
    model = make()
    x = (_gaussian_mixture_data(3000, np.random.default_rng(0)) if model.dim == 2 else _binary_digits()[1])
    trace = np.array(model.fit(x, 60))
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:])), np.diff(trace).min()
    assert trace[-1] > trace[0]


def _match(found_means, true_means):
    """The index of the found component nearest to each true one (a permutation, checked)."""
    index = np.array([np.argmin(((found_means - m) ** 2).sum(1)) for m in true_means])
    assert len(set(index.tolist())) == len(true_means)
    return index


def test_em_recovers_a_known_gaussian_mixture():
    mg.manual_seed(0)
    model = GaussianMixture(2, 3, "full", reg=0.0)
    model.fit(_gaussian_mixture_data(10000, np.random.default_rng(1)), 100)
    k = _match(model.mu.numpy(), MEANS)
    np.testing.assert_allclose(np.exp(model.log_pi.numpy()[k]), WEIGHTS, atol=0.02)
    np.testing.assert_allclose(model.mu.numpy()[k], MEANS, atol=0.06)
    np.testing.assert_allclose(model.cov.numpy()[k], COVS, atol=0.08)


def test_em_recovers_a_known_bernoulli_mixture():
    mg.manual_seed(0)
    model = BernoulliMixture(10, 3, min_prob=1e-3)
    model.fit(_bernoulli_mixture_data(20000, np.random.default_rng(2)), 200)
    k = _match(model.p.numpy(), P)
    np.testing.assert_allclose(np.exp(model.log_pi.numpy()[k]), WEIGHTS, atol=0.02)
    np.testing.assert_allclose(model.p.numpy()[k], P, atol=0.03)


def test_gmm_on_eight_gaussians_reaches_the_data_entropy():
    """Test NLL of an 8-component full GMM (best of 5 starts) within 0.03 nats of the entropy H = -E log p(x),
    estimated by Monte Carlo (200k draws) from the true mixture density."""
    rng = np.random.default_rng(0)
    truth = data.EIGHT_GAUSSIANS
    entropy = -truth.log_prob(truth.sample(200_000, rng)).mean()
    mg.manual_seed(0)
    model = GaussianMixture(2, 8, "full", reg=1e-6)
    model.fit(truth.sample(5000, rng).astype(np.float64), 100, restarts=5)
    nll = -model.log_prob(truth.sample(20000, rng).astype(np.float64)).mean()
    print(f"8 Gaussians: GMM test NLL {nll:.4f}, data entropy {entropy:.4f}")
    assert abs(nll - entropy) < 0.03


def test_samples_have_the_mixtures_moments():
    """Ancestral samples of a known GMM: mean sum_k pi_k mu_k and covariance sum_k pi_k (Sigma_k + mu_k mu_k^T)
    - mean mean^T; of a Bernoulli mixture: pixel means sum_k pi_k p_k."""
    mg.manual_seed(0)
    gmm = GaussianMixture(2, 3, "full")
    gmm._set(log_pi=np.log(WEIGHTS), mu=MEANS, cov=COVS)
    x = gmm.sample(200_000)
    mean = WEIGHTS @ MEANS
    cov = np.einsum("k,kij->ij", WEIGHTS, COVS + MEANS[:, :, None] * MEANS[:, None, :]) - np.outer(mean, mean)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.05)
    bmm = BernoulliMixture(10, 3)
    bmm._set(log_pi=np.log(WEIGHTS), p=P)
    np.testing.assert_allclose(bmm.sample(200_000).mean(0), WEIGHTS @ P, atol=0.01)


def test_kmeans_pp_picks_distinct_data_points():
    x = _gaussian_mixture_data(500, np.random.default_rng(3))
    mg.manual_seed(0)
    centres = kmeans_pp(x, 8, backend.generator("cpu"))
    assert all(np.any(np.all(x == c, axis=1)) for c in centres)
    assert len(np.unique(centres, axis=0)) == 8


def test_full_batch_step_with_kappa_zero_is_one_em_iteration():
    spec, (train_x, _), _ = data.load_dataset("8gaussians")
    x = train_x[:2000]
    mg.manual_seed(0)
    recipe = GMMRecipe(spec, components=8, kappa=0.0)
    recipe.step((mg.tensor(x),), 1)
    mg.manual_seed(0)
    model = GaussianMixture(2, 8, "full", reg=1e-6)
    model.fit(x, 1)
    for name in ("log_pi", "mu", "cov"):
        np.testing.assert_allclose(getattr(recipe.model, name).numpy(), getattr(model, name).numpy(), rtol=1e-10)


def test_gmm_recipe_end_to_end():
    spec, (train_x, _), (test_x, _) = data.load_dataset("8gaussians")
    mg.manual_seed(0)
    recipe = GMMRecipe(spec)
    loader = data.DataLoader(train_x, batch_size=256, seed=0)
    for t, batch in zip(range(1, 41), loader):
        metrics = recipe.step(batch, t)
    assert np.isfinite(metrics["log_likelihood"])
    result = recipe.evaluate(data.DataLoader(test_x, batch_size=500, shuffle=False))
    assert result["nll"] < 3.0                          # entropy 2.83; one Gaussian alone: 3.7
    assert recipe.sample(16).shape == (16, 2)
    state = recipe.extra_state()
    recipe.load_extra_state(state)
    assert set(recipe.stats) == {"N", "S1", "S2"}


def test_bernoulli_mixture_recipe_end_to_end():
    spec, (images, _), (test_images, _) = data.load_dataset("binarized-digits")
    mg.manual_seed(0)
    recipe = BernoulliMixtureRecipe(spec)
    for t, batch in zip(range(1, 31), data.DataLoader(images, batch_size=100, seed=0)):
        recipe.step(batch, t)
    nll = recipe.evaluate(data.DataLoader(test_images, batch_size=500, shuffle=False))["nll"]
    _, train_x, test_x = _binary_digits()
    p = train_x.mean(0).clip(1e-3, 1 - 1e-3)
    independent = -(test_x @ np.log(p) + (1 - test_x) @ np.log1p(-p)).mean()
    assert nll < independent - 2
    samples = recipe.sample(8)
    assert samples.shape == (8, 1, 8, 8) and set(np.unique(samples)) <= {0.0, 1.0}


def test_command_trains_a_gmm(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    run = subprocess.run([sys.executable, "-m", "minigen", "train", "gmm", "--steps", "5", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "metrics.jsonl").exists()
