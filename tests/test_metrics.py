"""Metrics: bits/dim of uniform densities, the Fréchet distance against closed forms, the IS analogue at its extremes, mode statistics on
true mixture samples, and the classifier-based FCD / accuracy on real MNIST (skipped without the data)."""
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from minigen import data
from minigen.data import EIGHT_GAUSSIANS, TWENTY_FIVE_GAUSSIANS
from minigen.metrics import (CLASSIFIER_WEIGHTS, bits_per_dim, classifier_outputs, fcd, frechet_distance,
                             gaussian_statistics, inception_score, load_classifier, mode_statistics)


@pytest.mark.parametrize("dims", [1, 784, 3072])
def test_bits_per_dim_of_uniform_grey_levels_is_eight(dims):
    # uniform over 256 levels: density 1 on [0, 1)^D (nll 0, scaled by 1/256), or 1/256^D on [0, 256)^D
    assert bits_per_dim(0.0, dims, levels=256) == pytest.approx(8)
    assert bits_per_dim(dims * np.log(256), dims) == pytest.approx(8)
    assert bits_per_dim(dims * np.log(2), dims) == pytest.approx(1)      # a fair coin per dimension


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    # commuting covariances: ||mu1 - mu2||^2 + sum_i (s1_i - s2_i)^2 with s the standard deviations
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.3, 2.0, 1.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_for_equal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2, c1, c2 = rng.standard_normal(6), rng.standard_normal(6), _spd(rng, 6), _spd(rng, 6)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-9)
    # from samples, the estimate converges to the closed form
    x1 = rng.multivariate_normal(mu1, c1, 200000)
    x2 = rng.multivariate_normal(mu2, c2, 200000)
    assert frechet_distance(*gaussian_statistics(x1), *gaussian_statistics(x2)) == pytest.approx(expected, rel=0.02)


def test_inception_score_analogue_at_its_extremes():
    k = 10
    assert inception_score(np.eye(k)[np.arange(100) % k]) == pytest.approx(k, rel=1e-9)   # confident, all classes
    assert inception_score(np.tile(np.eye(k)[3], (50, 1))) == pytest.approx(1, rel=1e-9)  # one class
    assert inception_score(np.full((50, k), 1 / k)) == pytest.approx(1, rel=1e-9)          # unsure


@pytest.mark.parametrize("mixture", [EIGHT_GAUSSIANS, TWENTY_FIVE_GAUSSIANS])
def test_mode_statistics_of_true_samples_and_of_collapsed_ones(mixture):
    k = len(mixture.means)
    stats = mode_statistics(mixture.sample(5000, 0), mixture.means, mixture.std)
    assert stats["modes"] == k
    assert stats["high_quality"] == pytest.approx(1 - np.exp(-4.5), abs=0.01)     # P(|N(0, I_2)| <= 3)
    collapsed = mixture.means[2] + mixture.std * np.random.default_rng(1).standard_normal((5000, 2))
    assert mode_statistics(collapsed, mixture.means, mixture.std)["modes"] == 1
    between = (mixture.means[0] + mixture.means[1]) / 2 + np.zeros((100, 2))
    assert mode_statistics(between, mixture.means, mixture.std)["high_quality"] == 0


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _mnist():
    if not CLASSIFIER_WEIGHTS.exists():
        pytest.skip(f"no classifier weights at {CLASSIFIER_WEIGHTS} (examples/train_mnist_classifier.py)")
    try:
        data_dir = os.environ.get("MINIGEN_DATA") or SHARED
        return [data.load_mnist(split, data_dir=data_dir, download=False) for split in ("train", "test")]
    except (data.DataUnavailableError, FileNotFoundError) as e:
        pytest.skip(f"MNIST is not in the data folder (set MINIGEN_DATA): {e}")


def test_classifier_reaches_its_stated_test_accuracy():
    _, (test_x, test_y) = _mnist()
    _, probs = classifier_outputs(test_x / np.float32(255), load_classifier())
    # the committed weights (8 epochs, seed 0) reach 99.05%
    assert (probs.argmax(axis=1) == test_y).mean() >= 0.99


def test_fcd_of_the_test_set_against_the_training_set_is_far_below_noise_and_a_repeated_image():
    (train_x, _), (test_x, _) = _mnist()
    rng = np.random.default_rng(0)
    train, test = (x[rng.choice(len(x), 2000, replace=False)] / np.float32(255) for x in (train_x, test_x))
    classifier = load_classifier()
    real = fcd(test, train, classifier)
    noise = fcd(rng.uniform(size=test.shape).astype(np.float32), train, classifier)
    repeated = fcd(np.repeat(test[:1], len(test), axis=0), train, classifier)
    assert real < 0.05 * min(noise, repeated), (real, noise, repeated)
