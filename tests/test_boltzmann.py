"""The Boltzmann families against ground truths: partition functions by brute force over every joint state
and by quadrature, the fully visible BM's gradient against finite differences of its exact log-likelihood and
its Gibbs sampler against its exact distribution, AIS against exact log Z (RBM trained on the binarized
digits, Gaussian RBM, DBM), the RBM's exact test NLL against the independent Bernoulli model, the DBN and DBM
bounds below their exact log-likelihoods, and each recipe end to end (resume, command line, pictures)."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minigen as mg
from minigen import data, train
from minigen.models.boltzmann import (DBM, RBM, BMRecipe, BoltzmannMachine, DBMRecipe, DBNRecipe,
                                      RBMRecipe, ais, ais_betas, base_rate, log_mean_exp, save_filters,
                                      save_reconstructions)

pytest.importorskip("sklearn", reason="scikit-learn (the test extra) gives the 8x8 digits")


def _all_states(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def _random(model, rng, scale=1.0):
    """`model` in float64 with N(0, scale^2) parameters (a symmetric, zero-diagonal W for the BM)."""
    model.to(np.float64)
    for p in model.parameters():
        p.data = scale * rng.standard_normal(p.data.shape)
    if isinstance(model, BoltzmannMachine):
        W = (model.W.data + model.W.data.T) / 2
        np.fill_diagonal(W, 0)
        model.W.data = W
    return model


def _train(recipe, x, steps, batch_size=100):
    batches = train._batches(data.DataLoader(x, batch_size=batch_size, seed=0))
    for t in range(1, steps + 1):
        recipe.step(next(batches), t)
    return recipe


@pytest.fixture(scope="module")
def digits():
    """(spec, train rows (1000, 64), test rows (447, 64)) of the binarized digits."""
    spec, (train_x, _), (test_x, _) = data.load_dataset("binarized-digits")
    return spec, train_x, test_x


@pytest.fixture(scope="module")
def small_rbm(digits):
    """An RBM with 12 hidden units, CD-1 for 1500 updates on the binarized digits, in float64."""
    mg.manual_seed(0)
    spec, train_x, _ = digits
    return _train(RBMRecipe(spec, hidden=12), train_x, 1500).model.to(np.float64)


# --- partition functions by brute force ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 10), (11, 7)])
def test_rbm_log_Z_enumerating_either_layer_equals_the_sum_over_every_joint_state(shape):
    rbm = _random(RBM(*shape), np.random.default_rng(0))
    v, h = _all_states(shape[0]), _all_states(shape[1])
    neg_energy = v @ rbm.W.data @ h.T + (v @ rbm.b.data)[:, None] + h @ rbm.c.data
    assert np.isclose(rbm.log_Z_exact(), np.log(np.exp(neg_energy).sum()), rtol=0, atol=1e-10)
    assert np.allclose(-rbm.free_energy(v), np.log(np.exp(neg_energy).sum(1)))


def test_gaussian_rbm_log_Z_equals_quadrature():
    """D = 2 Gaussian visible units: the closed form over h against a Riemann sum on a fine grid."""
    rbm = _random(RBM(2, 3, gaussian_visible=True), np.random.default_rng(1), scale=0.7)
    grid = np.linspace(-14, 14, 1401)
    v = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    quadrature = np.log(np.exp(-rbm.free_energy(v)).sum() * (grid[1] - grid[0]) ** 2)
    assert np.isclose(rbm.log_Z_exact(), quadrature, rtol=0, atol=1e-8)


def test_dbm_log_Z_and_log_prob_equal_brute_force():
    dbm = _random(DBM(6, (5, 4)), np.random.default_rng(2))
    v, h1, h2 = _all_states(6), _all_states(5), _all_states(4)
    neg_energy = (np.einsum("vi,ij,aj->va", v, dbm.W1.data, h1)[:, :, None]
                  + np.einsum("aj,jk,bk->ab", h1, dbm.W2.data, h2)[None]
                  + (v @ dbm.b.data)[:, None, None] + (h1 @ dbm.c1.data)[None, :, None] + (h2 @ dbm.c2.data))
    log_Z = np.log(np.exp(neg_energy).sum())
    assert np.isclose(dbm.log_Z_exact(), log_Z, rtol=0, atol=1e-10)
    assert np.allclose(dbm.log_prob_exact(v, log_Z), np.log(np.exp(neg_energy).sum((1, 2))) - log_Z)


# --- the fully visible Boltzmann machine --------------------------------------------------------------------


def test_bm_gradient_equals_finite_differences_of_its_exact_log_likelihood():
    """d/d eps of the average exact log-likelihood, w_ij = w_ji moved together, or b_i, against the data
    minus model statistics (central differences, float64)."""
    rng = np.random.default_rng(3)
    bm = _random(BoltzmannMachine(6), rng)
    x = (rng.random((40, 6)) < 0.4).astype(np.float64)
    dW, db = bm.gradient(x)

    def derivative(param, direction, eps=1e-6):
        """Central difference of the average exact log-likelihood along `direction` of `param`."""
        values = []
        for sign in (1, -1):
            param.data = param.data + sign * eps * direction
            values.append(float(bm.log_p_star(x).mean()) - bm.log_Z_exact())
            param.data = param.data - sign * eps * direction
        return (values[0] - values[1]) / (2 * eps)

    for i, j in itertools.combinations(range(6), 2):
        pair = np.zeros((6, 6))
        pair[i, j] = pair[j, i] = 1
        assert np.isclose(derivative(bm.W, pair), dW[i, j], rtol=1e-6, atol=1e-8)
    for i in range(6):
        assert np.isclose(derivative(bm.b, np.eye(6)[i]), db[i], rtol=1e-6, atol=1e-8)
    assert np.all(np.diag(dW) == 0) and np.allclose(dW, dW.T)


def test_bm_gibbs_chains_reach_the_exact_distribution():
    """20,000 chains after 30 sweeps: the frequency of each of the 2^4 states within 4 standard errors of
    its exact probability."""
    mg.manual_seed(0)
    bm = _random(BoltzmannMachine(4), np.random.default_rng(4))
    p = np.exp(bm.log_p_star(_all_states(4)) - bm.log_Z_exact())
    x = bm.sample(20_000, 30)
    counts = np.bincount((x * 2 ** np.arange(3, -1, -1)).sum(1).astype(int), minlength=16) / len(x)
    assert np.all(np.abs(counts - p) < 4 * np.sqrt(p * (1 - p) / len(x)) + 1e-4)


def test_bm_ais_agrees_with_enumeration():
    mg.manual_seed(0)
    bm = _random(BoltzmannMachine(12), np.random.default_rng(5), scale=0.5)
    log_Z, se = ais(bm, np.zeros(12), ais_betas(2000), 100)
    assert abs(log_Z - bm.log_Z_exact()) < max(0.05, 4 * se)


# --- RBM: AIS against the exact log Z, the exact test NLL ---------------------------------------------------


def test_ais_log_Z_of_a_trained_rbm_within_0_05_nats_of_exact(small_rbm, digits):
    """Base rate from the training means, 5,000 betas, 100 runs."""
    mg.manual_seed(0)
    _, train_x, _ = digits
    b_A = base_rate(train_x.reshape(len(train_x), -1).mean(0).astype(np.float64))
    log_Z, se = ais(small_rbm, b_A, ais_betas(5000), 100)
    exact = small_rbm.log_Z_exact()
    print(f"RBM(64, 12) on binarized digits: log Z exact {exact:.4f}, AIS {log_Z:.4f} ± {se:.4f}")
    assert abs(log_Z - exact) < 0.05 and se < 0.05


def test_exact_test_nll_of_the_rbm_beats_independent_bernoulli(small_rbm, digits):
    """Independent Bernoulli pixels with Laplace-smoothed training means against the RBM's exact NLL."""
    _, train_x, test_x = digits
    train_v, test_v = (x.reshape(len(x), -1).astype(np.float64) for x in (train_x, test_x))
    p = (train_v.sum(0) + 1) / (len(train_v) + 2)
    independent = -(test_v * np.log(p) + (1 - test_v) * np.log1p(-p)).sum(1).mean()
    rbm_nll = float(small_rbm.free_energy(test_v).mean()) + small_rbm.log_Z_exact()
    print(f"test NLL: RBM(64, 12) exact {rbm_nll:.3f} nats, independent Bernoulli {independent:.3f} nats")
    assert rbm_nll < independent - 3


def test_gaussian_rbm_ais_agrees_with_enumeration():
    mg.manual_seed(0)
    rbm = _random(RBM(5, 8, gaussian_visible=True), np.random.default_rng(6), scale=0.5)
    log_Z, se = ais(rbm, np.zeros(5), ais_betas(2000), 100)
    assert abs(log_Z - rbm.log_Z_exact()) < max(0.05, 4 * se)


def test_log_mean_exp_and_its_standard_error():
    rng = np.random.default_rng(7)
    log_w = rng.normal(size=100_000) * 0.5
    estimate, se = log_mean_exp(log_w)
    assert np.isclose(estimate, np.log(np.exp(log_w).mean()))
    assert abs(estimate - 0.125) < 4 * se and 0 < se < 0.01       # E exp(N(0, 1/4)) = exp(1/8)


def test_long_gibbs_chains_give_the_exact_model_statistics():
    """The negative phase of contrastive_divergence with 20,000 chains run 100 steps from noise: data minus
    model equals data minus the exact model statistics (sum over all v of p(v) v p(h | v)^T) within 0.01."""
    mg.manual_seed(0)
    rbm = _random(RBM(6, 4), np.random.default_rng(8))
    v = _all_states(6)
    p = np.exp(-rbm.free_energy(v) - rbm.log_Z_exact())
    data_v = v[:5]
    noise = (np.random.default_rng(9).random((20_000, 6)) < 0.5).astype(np.float64)
    (dW, db, dc), _ = rbm.contrastive_divergence(data_v, noise, 100)
    ph = rbm.hidden_probs(v)
    exact_dW = data_v.T @ rbm.hidden_probs(data_v) / 5 - (v * p[:, None]).T @ ph
    assert np.abs(dW - exact_dW).max() < 0.01
    assert np.abs(db - (data_v.mean(0) - p @ v)).max() < 0.01
    assert np.abs(dc - (rbm.hidden_probs(data_v).mean(0) - p @ ph)).max() < 0.01


# --- DBN and DBM --------------------------------------------------------------------------------------------


def test_dbn_bound_is_below_its_exact_log_likelihood(digits):
    """A DBN (64, 10, 8) trained greedily (400 updates a layer): the bound with E_q exact over the 2^10
    h1 states, per example, <= log p(v) by enumeration; the Monte Carlo bound estimates it."""
    mg.manual_seed(0)
    spec, train_x, test_x = digits
    dbn = _train(DBNRecipe(spec, hidden=(10, 8), layer_steps=400), train_x, 800).model.to(np.float64)
    v = test_x.reshape(len(test_x), -1).astype(np.float64)
    log_Z2 = dbn.rbm2.log_Z_exact()
    h1 = _all_states(10)[:, None, :]
    q = np.exp(dbn.log_q(h1, v))
    exact_bound = (q * (dbn.log_joint(v, h1, log_Z2) - dbn.log_q(h1, v))).sum(0)
    log_p = dbn.log_prob_exact(v, log_Z2)
    assert np.allclose(q.sum(0), 1)
    assert np.all(exact_bound <= log_p + 1e-9)
    mg.manual_seed(1)
    monte_carlo = dbn.lower_bound(v, log_Z2, 200)
    print(f"DBN(64, 10, 8): test log p {log_p.mean():.3f}, bound {exact_bound.mean():.3f} "
          f"(Monte Carlo {monte_carlo.mean():.3f})")
    assert abs(monte_carlo.mean() - exact_bound.mean()) < 0.1 and exact_bound.mean() < log_p.mean()


def test_dbm_ais_agrees_with_enumeration_and_its_bound_is_below_log_p(digits):
    """A DBM (64, 12, 8) trained 500 updates: AIS over h1 (5,000 betas, 100 runs) against enumeration of the
    2^12 h1 states; the mean-field bound <= the exact log p(v) for every test image."""
    mg.manual_seed(0)
    spec, train_x, test_x = digits
    dbm = _train(DBMRecipe(spec, hidden=(12, 8)), train_x, 500).model.to(np.float64)
    v = test_x.reshape(len(test_x), -1).astype(np.float64)
    mg.manual_seed(0)
    log_Z, se = ais(dbm, base_rate(train_x.reshape(len(train_x), -1).mean(0).astype(np.float64)),
                    ais_betas(5000), 100)
    exact = dbm.log_Z_exact()
    print(f"DBM(64, 12, 8): log Z exact {exact:.4f}, AIS {log_Z:.4f} ± {se:.4f}")
    assert abs(log_Z - exact) < max(0.05, 4 * se)
    assert np.all(dbm.lower_bound(v, exact, 10) <= dbm.log_prob_exact(v, exact) + 1e-9)


# --- the recipes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, options", [(BMRecipe, {}), (RBMRecipe, {"hidden": 16, "persistent": True}),
                                          (DBNRecipe, {"hidden": (12, 8), "layer_steps": 3}),
                                          (DBMRecipe, {"hidden": (16, 8)})])
def test_recipe_end_to_end(cls, options, digits):
    """A few updates on the binarized digits, evaluate (AIS with its standard error, exact where a layer is
    small), samples of the data's shape in [0, 1]."""
    mg.manual_seed(0)
    spec, train_x, test_x = digits
    recipe = _train(cls(spec, ais_betas=100, ais_runs=20, sample_steps=10, **options), train_x, 6)
    metrics = recipe.evaluate(data.DataLoader(test_x, batch_size=200, shuffle=False))
    assert {"nll", "bits_per_dim", "nll_se", "log_Z", "log_Z_se"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["nll"] > 0
    assert ("nll_exact" in metrics) == (cls is not BMRecipe)
    samples = recipe.sample(5)
    assert samples.shape == (5, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1


def test_gaussian_rbm_recipe_on_grey_levels_reports_a_discrete_nll():
    """On the 17-level digits: dequantized density plus D log 17, so bits/dim = nll / (64 log 2)."""
    mg.manual_seed(0)
    spec, (train_x, _), (test_x, _) = data.load_dataset("digits")
    recipe = _train(RBMRecipe(spec, hidden=8, ais_betas=100, ais_runs=20, sample_steps=5), train_x, 5)
    metrics = recipe.evaluate(data.DataLoader(test_x, batch_size=300, shuffle=False))
    assert np.isclose(metrics["bits_per_dim"], metrics["nll"] / (64 * np.log(2)))
    assert "nll_exact" in metrics and abs(metrics["nll"] - metrics["nll_exact"]) < 4 * metrics["nll_se"] + 0.1
    assert recipe.sample(3).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("cls, options", [(RBMRecipe, {"hidden": 16, "persistent": True}),
                                          (DBMRecipe, {"hidden": (16, 8)})])
def test_persistent_chains_resume_exactly(cls, options, digits, tmp_path):
    """6 updates straight against 3, a checkpoint, a fresh recipe and 3 more: the same parameters."""
    spec, train_x, test_x = digits

    def run(steps, folder, resume=False):
        mg.manual_seed(0)
        recipe = cls(spec, ais_betas=20, ais_runs=5, sample_steps=2, **options)
        loader = data.DataLoader(train_x, batch_size=50, seed=0)
        train.fit(recipe, loader, steps, folder, resume=resume, progress=False, n_samples=4)
        return [p.data.copy() for m in recipe.modules().values() for p in m.parameters()]

    straight = run(6, tmp_path / "a")
    run(3, tmp_path / "b")
    resumed = run(6, tmp_path / "b", resume=True)
    assert all(np.array_equal(a, b) for a, b in zip(straight, resumed))


def test_filters_and_reconstructions_pictures(small_rbm, digits, tmp_path):
    _, _, test_x = digits
    save_filters(small_rbm, (1, 8, 8), tmp_path / "filters.png")
    save_reconstructions(small_rbm, test_x[:8].reshape(8, -1).astype(np.float64), (1, 8, 8),
                         tmp_path / "reconstructions.png")
    filters, recon = (np.asarray(Image.open(tmp_path / f)) for f in ("filters.png", "reconstructions.png"))
    zoom = 256 // 42                        # 12 filters in a 4 x 3 grid, 16 pictures in 4 x 4, of 10 pixels
    assert filters.shape == (32 * zoom, 42 * zoom) and recon.shape == (42 * zoom, 42 * zoom)


def test_command_line_trains_and_evaluates_an_rbm(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-m", "minigen", "train", "rbm", "--steps", "8", "--out", str(out),
                    "--opt", "hidden=12", "--opt", "ais_betas=50"], check=True, capture_output=True, env=env)
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["step"] == 8 and np.isfinite(metrics["nll_exact"])
