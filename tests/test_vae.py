"""The VAE family against ground truths: closed-form KL against Monte Carlo, the reparameterized sampler's
moments, ELBO <= IWAE_k non-decreasing in k, a linear Gaussian VAE against probabilistic PCA in closed form,
a Bernoulli VAE against the independent-pixel model, gradcheck of the bounds, and the recipes end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest

import minigen as mg
from minigen.testing import swapped_parameters
from minigen import data, optim, train
from minigen.models.gaussian import Gaussian
from minigen.models.vae import (VAE, CVAERecipe, HVAERecipe, VAERecipe, log_normal, reparameterize,
                                residual_normal_kl, save_class_samples, save_interpolations, save_manifold,
                                save_reconstructions)

pytest.importorskip("sklearn", reason="scikit-learn (the test extra) gives the 8x8 digits")


BINARY = data.DataSpec("binary digits", (1, 8, 8), "binary", classes=10)
DIGITS = data.DataSpec("digits", (1, 8, 8), "levels", levels=17, classes=10)


def _binary_digits():
    """8x8 digits binarized at grey level 8 of 0..16 (x >= 1/2): 1497 training, 300 test images, labels."""
    x, y = data.load_digits()
    x = (x >= 0.5).astype(np.float32)[:, None]
    return x[300:], y[300:], x[:300], y[:300]


def _train(recipe, x, y, steps, batch_size=100):
    loader = data.DataLoader(x, y, batch_size=batch_size, seed=0)
    batches = train._batches(loader)
    for t in range(1, steps + 1):
        recipe.step(next(batches), t)
    return recipe


@pytest.fixture(scope="module")
def bernoulli_vae():
    """An MLP VAE trained for 250 steps on the binarized digits (fixed threshold binarization)."""
    mg.manual_seed(0)
    train_x, train_y, _, _ = _binary_digits()
    return _train(VAERecipe(BINARY, latent=8, hidden=(128, 128), pixels="as-is", lr=3e-3),
                  train_x, train_y, 250).model


# --- the pieces --------------------------------------------------------------------------------------------


def test_reparameterized_samples_have_mean_mu_and_std_exp_half_log_var():
    mg.manual_seed(0)
    n = 200_000
    mu, log_var = np.array([1.0, -2.0, 0.5]), np.array([-2.0, 0.0, 1.5])    # std 0.37, 1, 2.12
    z = reparameterize(mg.tensor(np.tile(mu, (n, 1))), mg.tensor(np.tile(log_var, (n, 1)))).numpy()
    std = np.exp(0.5 * log_var)
    assert np.all(np.abs(z.mean(0) - mu) < 4 * std / np.sqrt(n))
    assert np.all(np.abs(z.std(0) - std) < 4 * std / np.sqrt(2 * n))


@pytest.mark.parametrize("standard_prior", [True, False])
def test_closed_form_kl_equals_monte_carlo(standard_prior):
    """KL(q || p) = E_q[log q(z) - log p(z)]: the residual-normal closed form (with p = N(0, I) the VAE's)
    against the Monte Carlo mean over 200k draws, within 4 standard errors."""
    rng = np.random.default_rng(1)
    mu_p, log_var_p = (np.zeros(4), np.zeros(4)) if standard_prior else (rng.normal(size=4), rng.normal(size=4))
    d_mu, d_log_var = rng.normal(size=4), rng.normal(size=4)
    kl = residual_normal_kl(mg.tensor(d_mu), mg.tensor(d_log_var), mg.tensor(log_var_p)).item()
    mu_q, log_var_q = mg.tensor(mu_p + d_mu), mg.tensor(log_var_p + d_log_var)
    mg.manual_seed(0)
    z = reparameterize(mu_q * mg.ones(200_000, 1), log_var_q * mg.ones(200_000, 1))
    gap = (log_normal(z, mu_q, log_var_q) - log_normal(z, mg.tensor(mu_p), mg.tensor(log_var_p))).numpy()
    assert abs(gap.mean() - kl) < 4 * gap.std() / np.sqrt(len(gap))
    assert np.isclose(kl, mg.nn.functional.kl_normal(mu_q, log_var_q, mu_p, log_var_p).sum().item())


def test_hierarchical_kl_is_the_mean_log_ratio():
    """In a 3-layer model the per-layer KLs, at the sampled upper layers, average to E_q[log q - log p]."""
    mg.manual_seed(0)
    model = VAE((1, 8, 8), latent=3, layers=3, hidden=(32,))
    x = mg.tensor(_binary_digits()[0][:4])
    with mg.no_grad():
        _, log_ratio, kl = model.log_weights(x, k=20_000)
    gap, kl = -log_ratio.numpy(), kl.sum(axis=0).numpy()
    assert np.all(np.abs(gap.mean(0) - kl.mean(0)) < 4 * (gap - kl).std(0) / np.sqrt(len(gap)))


def test_iwae_chunks_give_the_same_estimate_as_one_pass():
    """The chunked evaluation draws the same noise stream as one pass: equal estimates, bounded memory."""
    model = VAE((1, 8, 8), latent=4, hidden=(16,))
    x = mg.tensor(_binary_digits()[0][:5])
    estimates = []
    for rows in (5 * 300, 5 * 7):
        mg.manual_seed(0)
        estimates.append(model.log_likelihood(x, k=300, rows=rows))
    np.testing.assert_allclose(estimates[0], estimates[1], rtol=1e-5)


# --- bounds on a trained model ------------------------------------------------------------------------------


def test_elbo_below_iwae_which_grows_with_k(bernoulli_vae):
    """ELBO = E IWAE_1 <= IWAE_5 <= IWAE_50 <= IWAE_500 in expectation: paired differences over the 300 test
    images never significantly negative, and ELBO within noise of IWAE_1."""
    _, _, test_x, _ = _binary_digits()
    x = mg.tensor(test_x)
    mg.manual_seed(0)
    with mg.no_grad():
        elbo = np.mean([bernoulli_vae.elbo(x).numpy() for _ in range(20)], axis=0)
    iwae = [bernoulli_vae.log_likelihood(x, k=k) for k in (1, 5, 50, 500)]
    d = iwae[0] - elbo
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(len(d))            # IWAE_1 estimates the ELBO without bias
    for lower, upper in zip(iwae, iwae[1:]):
        d = upper - lower
        assert d.mean() > -3 * d.std() / np.sqrt(len(d))            # never significantly decreasing
    assert np.all(np.mean(iwae, axis=1)[1:] > elbo.mean())
    assert iwae[-1].mean() > elbo.mean() + 0.3


def test_bernoulli_vae_beats_independent_pixels(bernoulli_vae):
    """IWAE_1000 NLL on the 300 held-out binarized digits below the NLL of independent Bernoulli pixels
    fitted to the training set (24.5 nats; the VAE: about 21)."""
    train_x, _, test_x, _ = _binary_digits()
    p = train_x.mean(0).clip(1e-3, 1 - 1e-3)
    independent_nll = -(test_x * np.log(p) + (1 - test_x) * np.log(1 - p)).sum((1, 2, 3)).mean()
    mg.manual_seed(0)
    vae_nll = -bernoulli_vae.log_likelihood(mg.tensor(test_x), k=1000).mean()
    assert vae_nll < independent_nll - 2, (vae_nll, independent_nll)


def test_linear_gaussian_vae_reaches_probabilistic_pca():
    """A linear Gaussian VAE (linear encoder for mu and log_var, linear decoder, one learned scalar noise
    variance, latent 8) on the 1797 digits dequantized once (17 levels), trained from a random start by
    full-batch Adam (lr 0.05, cosine to 0, 300 steps), reaches the maximum likelihood of probabilistic PCA
    with 8 components (closed form) within 1 nat per example: its ELBO at the optimum is tight (Lucas et
    al. 2019). The ELBO (50 samples) must not exceed it either: ELBO <= log p <= the PPCA maximum."""
    x, _ = data.load_digits()
    x = data.dequantize(x, np.random.default_rng(0), levels=17)[:, None]
    ppca = Gaussian(64, components=8)
    ppca.accumulate(x.reshape(len(x), -1))
    ppca_log_likelihood = ppca.log_prob(x.reshape(len(x), -1)).mean()
    mg.manual_seed(0)
    model = VAE((1, 8, 8), latent=8, hidden=(), likelihood="gaussian")
    optimizer = optim.Adam(model.parameters(), lr=0.05)
    schedule = optim.CosineAnnealingLR(optimizer, 300)
    xs = mg.tensor(x)
    for _ in range(300):
        loss = -model.elbo(xs).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with mg.no_grad():
        elbo = model.elbo(xs, samples=50).mean().item()
    assert ppca_log_likelihood - 1 < elbo < ppca_log_likelihood + 0.05, (elbo, ppca_log_likelihood)


# --- gradients ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, likelihood", [("mlp", "gaussian"), ("conv", "bernoulli")])
def test_gradcheck_bounds_wrt_parameters(arch, likelihood):
    """float64 gradcheck of the ELBO (2 samples) and IWAE_3 of a tiny conditional 2-layer model, the noise
    fixed by reseeding."""
    mg.manual_seed(0)
    model = VAE((1, 4, 4), latent=2, layers=2, arch=arch, hidden=(3,), likelihood=likelihood, classes=3,
                prior_hidden=4).to(np.float64)
    params = list(model.parameters())
    x = mg.tensor(np.random.default_rng(0).random((2, 1, 4, 4)).round(), dtype=np.float64)
    y = np.array([0, 2])

    def bounds(*tensors):
        with swapped_parameters(model, tensors):
            mg.manual_seed(1)
            return model.elbo(x, y, samples=2), model.iwae(x, y, k=3)

    assert mg.gradcheck(bounds, params)


# --- recipes, pictures, the command ------------------------------------------------------------------------


@pytest.mark.parametrize("cls, options", [
    (VAERecipe, {"warmup": 4}),
    (VAERecipe, {"arch": "conv", "hidden": [8, 16], "iwae": True, "samples": 3}),
    (CVAERecipe, {}),
    (HVAERecipe, {"latent": 2, "likelihood": "gaussian", "pixels": "dequantize"}),
])
def test_recipes_run_through_fit(tmp_path, cls, options):
    mg.manual_seed(0)
    x, y = data.load_digits()
    x = x[:, None]
    recipe = cls(DIGITS, hidden=options.pop("hidden", [32]), eval_k=20, **options)
    arrays = (x[:256], y[:256]) if cls.needs_labels else (x[:256],)
    metrics = train.fit(recipe, data.DataLoader(*arrays, batch_size=64, seed=0), 6, tmp_path,
                        eval_loader=data.DataLoader(*(a[:100] for a in arrays), batch_size=50, shuffle=False),
                        eval_every=3, sample_every=6, checkpoint_every=6, progress=False)
    d_log_levels = 64 * np.log(17) if recipe.pixels == "dequantize" else 0     # the density of dequantized levels
    assert metrics["elbo"] <= metrics["iwae_20"] + 0.5
    assert metrics["nll"] == pytest.approx(-metrics["iwae_20"] + d_log_levels)
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (64 * np.log(2)))
    assert [k for k in metrics if k.startswith("kl_")] == [f"kl_{l + 1}" for l in range(len(recipe.model.posteriors))]
    assert (tmp_path / "samples" / "step-00000006.png").exists()
    assert metrics["train_beta"] == 1.0 and recipe.extra_state() == {}       # warm-up from the step number t


def _cells(path, size: int = 8, pad: int = 2) -> np.ndarray:
    """A saved picture cut back into its grid of size x size images (rows, columns, size, size), grey levels."""
    from PIL import Image
    picture = np.asarray(Image.open(path), dtype=np.float32) / 255
    width = picture.shape[1]                     # save_samples draws a grid narrower than 256 zoom times bigger
    zoom = next(z for z in range(width, 0, -1) if width % z == 0 and max(1, 256 // (width // z)) == z
                and (width // z - pad) % (size + pad) == 0)
    picture = picture[::zoom, ::zoom]
    rows, cols = ((n - pad) // (size + pad) for n in picture.shape)
    return np.array([[picture[pad + r * (size + pad):][:size, pad + c * (size + pad):][:, :size]
                      for c in range(cols)] for r in range(rows)])


def test_pictures(tmp_path):
    mg.manual_seed(0)
    train_x, train_y, _, _ = _binary_digits()
    recipe = _train(CVAERecipe(BINARY, latent=2, hidden=(32,), pixels="as-is"), train_x, train_y, 3)
    save_manifold(recipe.model, tmp_path / "manifold.png", y=3)
    save_class_samples(recipe.model, tmp_path / "classes.png")
    assert _cells(tmp_path / "manifold.png").shape == (20, 20, 8, 8)
    assert _cells(tmp_path / "classes.png").shape == (10, 10, 8, 8)
    with pytest.raises(ValueError, match="conditioned on 10 classes: pass the labels"):
        save_manifold(recipe.model, tmp_path / "no.png")
    with pytest.raises(ValueError, match="2-D latent"):
        save_manifold(VAE((1, 8, 8), latent=3, hidden=(8,)), tmp_path / "no.png")

    # interpolations run from the reconstruction of x_a[i] to that of x_b[i]; reconstructions sit beside inputs
    model = _train(VAERecipe(BINARY, latent=2, hidden=(64,), pixels="as-is", lr=3e-3),
                   train_x, train_y, 200).model
    x = mg.tensor(train_x[:32])
    save_reconstructions(model, x, tmp_path / "reconstructions.png")
    save_interpolations(model, x[:8], x[8:16], tmp_path / "interp.png")
    pairs = _cells(tmp_path / "reconstructions.png").reshape(32, 2, 8, 8)
    line = _cells(tmp_path / "interp.png")
    assert line.shape == (8, 8, 8, 8)
    np.testing.assert_allclose(pairs[:, 0], train_x[:32, 0], atol=1 / 255)
    np.testing.assert_allclose(line[:, 0], pairs[:8, 1], atol=1 / 255)
    np.testing.assert_allclose(line[:, -1], pairs[8:16, 1], atol=1 / 255)
    assert np.abs(line[:, 0] - line[:, -1]).max() > 0.1


def test_minigen_train_vae_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "minigen", "train", "vae", "--dataset", "digits", "--steps", "4",
                        "--out", str(tmp_path / "run"), "--opt", "hidden=[16]", "--opt", "eval_k=10"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"iwae_10"' in r.stdout and (tmp_path / "run" / "samples" / "step-00000004.png").exists()
