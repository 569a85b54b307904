"""DDPM / DDIM (minigen.models.diffusion) against ground truths: the forward process iterated step by step,
the posterior by Gaussian conditioning, the optimal noise predictor of Gaussian data in closed form, DDIM
with eta = 1 against the ancestral step, the discretized decoder summing to one, mode coverage on 8
Gaussians; gradient checks through the U-Net's blocks; the recipe end to end, resumed exactly."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import minigen as mg
from minigen import data, metrics, nn, optim, train
from minigen.testing import swapped_parameters
from minigen.models.diffusion import (DDPMRecipe, Diffusion, MLPDenoiser, ResBlock, SelfAttention, UNet,
                                      beta_schedule, ddim_timesteps, discretized_gaussian_nll)


def int_tensor(values) -> mg.Tensor:
    return mg.Tensor(np.asarray(values, dtype=np.int64))


def alpha_bar(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1 - betas)


# --- schedules and the forward process ---------------------------------------------------------------------


def test_schedules():
    linear = beta_schedule("linear", 1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
    assert beta_schedule("linear", 100)[-1] == pytest.approx(0.2)
    T, s = 50, 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    cosine = beta_schedule("cosine", T)
    np.testing.assert_allclose(alpha_bar(cosine)[:-1], (f / f[0])[1:-1], rtol=1e-12)   # the last is capped
    assert cosine.max() == 0.999 and (cosine > 0).all()
    assert ddim_timesteps(1000, 50)[0] == 1000 and ddim_timesteps(1000, 50)[-1] == 1
    assert len(ddim_timesteps(1000, 50)) == 50 and ddim_timesteps(10, 50) == list(range(10, 0, -1))
    with pytest.raises(ValueError, match="schedule"):
        beta_schedule("quadratic", 10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_closed_form_q_equals_the_iterated_chain(schedule):
    """q(x_t | x_0) (eq. 4) against x_0 pushed through t steps of q(x_t | x_{t-1}) (eq. 2): moments by
    sampling, n = 20000 draws each, within 5 standard errors."""
    T, n = 40, 20000
    betas = beta_schedule(schedule, T)
    diffusion = Diffusion(None, betas)
    x0 = np.array([1.5, -0.5])
    rng = np.random.default_rng(1)
    chain = np.tile(x0, (n, 1))
    for t in range(1, T + 1):
        chain = np.sqrt(1 - betas[t - 1]) * chain + np.sqrt(betas[t - 1]) * rng.standard_normal(chain.shape)
        if t in (1, 5, 20, T):
            closed = diffusion.q_sample(mg.tensor(np.tile(x0, (n, 1))), int_tensor([t] * n),
                                        mg.tensor(rng.standard_normal((n, 2)))).numpy()
            ab = alpha_bar(betas)[t - 1]
            se_mean, se_var = math.sqrt((1 - ab) / n), (1 - ab) * math.sqrt(2 / n)
            for x in (chain, closed):
                np.testing.assert_allclose(x.mean(0), math.sqrt(ab) * x0, atol=5 * se_mean)
                np.testing.assert_allclose(x.var(0), 1 - ab, atol=5 * se_var)
            np.testing.assert_allclose(closed.mean(0), chain.mean(0), atol=5 * math.sqrt(2) * se_mean)


def test_posterior_is_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) (eqs. 6-7) against conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0:
    x_{t-1} = sqrt(ab_{t-1}) x_0 + noise of variance 1 - ab_{t-1}, x_t = sqrt(alpha_t) x_{t-1} + noise of
    variance beta_t."""
    betas = beta_schedule("cosine", 30)
    diffusion = Diffusion(None, betas)
    ab = np.concatenate([[1.0], alpha_bar(betas)])
    x0, x_t = np.array([[0.3, -1.2]]), np.array([[0.7, 0.1]])
    for t in (1, 2, 17, 30):
        a = 1 - betas[t - 1]
        var_prev, cov, var_t = 1 - ab[t - 1], math.sqrt(a) * (1 - ab[t - 1]), 1 - ab[t]
        mean = math.sqrt(ab[t - 1]) * x0 + cov / var_t * (x_t - math.sqrt(ab[t]) * x0)
        mu, beta_tilde = diffusion.posterior(mg.tensor(x0), mg.tensor(x_t), int_tensor([t]))
        np.testing.assert_allclose(mu.numpy(), mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(beta_tilde, [var_prev - cov ** 2 / var_t], rtol=1e-10, atol=1e-15)


# --- DDIM against the ancestral step ----------------------------------------------------------------------


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_with_eta_one_is_the_ancestral_step(clip_x0):
    """With s = t - 1 and eta = 1, DDIM's step (eq. 12, sigma of eq. 16) has the mean and variance of the
    ancestral step with sigma_t^2 = beta_tilde_t exactly (t >= 2; at t = 1 both output the mean), so the two
    samplers draw the same samples from the same noise; with eta = 0 DDIM is deterministic."""
    T = 20
    net = MLPDenoiser(2, hidden=16).to(np.float64)
    diffusion = Diffusion(net, beta_schedule("linear", T), clip_x0=clip_x0, variance="beta_tilde")
    x_t = mg.tensor(np.random.default_rng(0).standard_normal((5, 2)) * 2)
    for t in (1, 2, 7, T):
        tt = int_tensor([t] * 5)
        mean, var = diffusion.p_mean_variance(x_t, tt)
        ddim_mean, ddim_var = diffusion.ddim_mean_variance(x_t, tt, t - 1, eta=1.0)
        np.testing.assert_allclose(ddim_mean.numpy(), mean.numpy(), rtol=1e-12, atol=1e-12)
        if t >= 2:
            np.testing.assert_allclose(ddim_var, var, rtol=1e-12)
        assert np.all(diffusion.ddim_mean_variance(x_t, tt, t - 1, eta=0.0)[1] == 0)
    assert [s for s, _ in diffusion.reverse_chain(2, (2,), ddim_steps=5)] == ddim_timesteps(T, 5)[1:] + [0]
    mg.manual_seed(3)
    ancestral = diffusion.sample(6, (2,))
    mg.manual_seed(3)
    ddim = diffusion.sample(6, (2,), ddim_steps=T, eta=1.0)
    np.testing.assert_allclose(ddim.numpy(), ancestral.numpy(), rtol=1e-10, atol=1e-10)


# --- the optimal noise predictor of Gaussian data ------------------------------------------------------------


class OptimalEps(nn.Module):
    """E[eps | x_t] for x_0 ~ N(0, s^2 I): sqrt(1 - ab_t) x_t / (ab_t s^2 + 1 - ab_t)."""

    def __init__(self, alpha_bar_: np.ndarray, s: float):
        super().__init__()
        self.alpha_bar_, self.s = alpha_bar_, s

    def forward(self, x, t):
        ab = self.alpha_bar_[t.data - 1][:, None]
        return mg.tensor(np.sqrt(1 - ab) / (ab * self.s ** 2 + 1 - ab)) * x


class LinearPerT(nn.Module):
    """eps_theta(x_t, t) = w_t x_t: the family the optimal predictor of Gaussian data lies in."""

    def __init__(self, T: int):
        super().__init__()
        self.w = nn.Parameter(mg.zeros(T + 1))

    def forward(self, x, t):
        return self.w[t.data].reshape(-1, 1) * x


def test_trained_predictor_reaches_the_optimal_l_simple():
    """On N(0, s^2 I) the minimum of L_simple is E_t[ab_t s^2 / (ab_t s^2 + 1 - ab_t)] (the variance of eps
    given x_t). The closed-form predictor attains it (Monte Carlo, within 3%); a per-t linear predictor
    trained by Adam on L_simple gets within 3% of it and learns the optimal slopes; predicting 0 scores 1."""
    T, s, dim = 50, 0.5, 4
    betas = beta_schedule("linear", T)
    ab = alpha_bar(betas)
    optimum = float(np.mean(ab * s ** 2 / (ab * s ** 2 + 1 - ab)))
    x0 = mg.tensor(np.random.default_rng(0).standard_normal((20000, dim)) * s)
    with mg.no_grad():
        assert Diffusion(OptimalEps(ab, s), betas).loss(x0).item() == pytest.approx(optimum, rel=0.03)
    model = Diffusion(LinearPerT(T), betas)
    opt = optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = model.loss(mg.randn(512, dim) * s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with mg.no_grad():
        trained = model.loss(x0).item()
    assert optimum < 0.5 < 1
    assert trained == pytest.approx(optimum, rel=0.03)
    slopes = np.sqrt(1 - ab) / (ab * s ** 2 + 1 - ab)
    np.testing.assert_allclose(model.net.w.numpy()[1:], slopes, atol=0.15)


# --- the bound ---------------------------------------------------------------------------------------------


def test_discretized_decoder_sums_to_one_over_the_levels():
    levels = 5
    grid = np.linspace(-1, 1, levels)
    for mu, sigma in ((0.1, 0.3), (-0.9, 0.05), (3.0, 1.0)):
        nll = discretized_gaussian_nll(mg.tensor(grid), mg.tensor(np.full(levels, mu)),
                                       mg.tensor(np.full(levels, sigma)), levels)
        assert np.exp(-nll.numpy()).sum() == pytest.approx(1.0, abs=1e-9)


def gaussian_data_bound(betas: np.ndarray, s: float, variance: str) -> float:
    """The expected bound (eq. 5) per dimension for x_0 ~ N(0, s^2) and the optimal predictor, in closed form.
    x_0_hat is then E[x_0 | x_t], whose error has variance V_t = s^2 (1 - ab_t) / (ab_t s^2 + 1 - ab_t), so
    E L_{t-1} = 1/2 (log(sigma_t^2 / beta_tilde_t) + (beta_tilde_t + c_t^2 V_t) / sigma_t^2 - 1) with c_t the
    posterior mean's coefficient of x_0; E L_0 = 1/2 log(2 pi sigma_1^2) + V_1 / (2 sigma_1^2) (at t = 1 the
    posterior mean is x_0_hat); E L_T = 1/2 (ab_T s^2 + 1 - ab_T - 1 - log(1 - ab_T))."""
    ab = np.concatenate([[1.0], alpha_bar(betas)])
    t = np.arange(2, len(betas) + 1)
    beta = betas[t - 1]
    beta_tilde = (1 - ab[t - 1]) / (1 - ab[t]) * beta
    v = s ** 2 * (1 - ab) / (ab * s ** 2 + 1 - ab)
    c = np.sqrt(ab[t - 1]) * beta / (1 - ab[t])
    sigma2 = beta if variance == "beta" else beta_tilde
    kl = 0.5 * (np.log(sigma2 / beta_tilde) + (beta_tilde + c ** 2 * v[t]) / sigma2 - 1)
    decoder = 0.5 * np.log(2 * np.pi * beta_tilde[0]) + v[1] / (2 * beta_tilde[0])
    prior = 0.5 * (ab[-1] * s ** 2 - ab[-1] - np.log(1 - ab[-1]))
    return float(prior + kl.sum() + decoder)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_bound_on_gaussian_data_with_the_optimal_predictor(variance):
    """For x_0 ~ N(0, s^2 I) and the optimal noise predictor the expected bound is known in closed form
    (`gaussian_data_bound`): the code's Monte Carlo bound agrees with it (the full sum and the estimate from
    sampled terms), and it lies above the exact negative log-density, by little with sigma_t^2 = beta_t."""
    T, s, dim, n = 200, 0.5, 2, 4000
    betas = beta_schedule("linear", T)
    diffusion = Diffusion(OptimalEps(alpha_bar(betas), s), betas, variance=variance)
    x0 = mg.tensor(np.random.default_rng(0).standard_normal((n, dim)) * s)
    with mg.no_grad():
        full_sum = diffusion.bound(x0)
        sampled = diffusion.bound(x0, terms=4)
    expected = dim * gaussian_data_bound(betas, s, variance)
    exact = dim * (0.5 * math.log(2 * math.pi * s ** 2) + 0.5)
    assert full_sum.mean() == pytest.approx(expected, abs=4 * full_sum.std() / math.sqrt(n))
    assert sampled.mean() == pytest.approx(expected, abs=4 * sampled.std() / math.sqrt(n))
    assert exact < expected < exact + (0.06 if variance == "beta" else 1.0) * dim


# --- the U-Net --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, channels, attention", [((1, 28, 28), (8, 16, 16), True),
                                                        ((3, 8, 8), (8, 16), False)])
def test_unet_output_shape(shape, channels, attention):
    net = UNet(shape[0], channels, attention, groups=4)
    x = mg.randn(2, *shape)
    assert net(x, int_tensor([1, 999])).shape == (2, *shape)


def test_gradcheck_unet_blocks():
    """Float64 gradients of a ResBlock (input and time embedding), self-attention and a whole tiny U-Net
    (input and every parameter), against finite differences."""
    mg.manual_seed(0)
    block = ResBlock(4, 6, 5, groups=2).to(np.float64)
    x = mg.randn(2, 4, 3, 3, dtype="float64", requires_grad=True)
    t_emb = mg.randn(2, 5, dtype="float64", requires_grad=True)
    assert mg.gradcheck(lambda x, e: block(x, e), [x, t_emb])
    attention = SelfAttention(4, groups=2).to(np.float64)
    assert mg.gradcheck(attention, [x])
    unet = UNet(1, (4, 4), attention=True, groups=2).to(np.float64)
    y = mg.randn(2, 1, 4, 4, dtype="float64", requires_grad=True)

    def out(y, *params):
        with swapped_parameters(unet, params):
            return unet(y, int_tensor([3, 40]))
    assert mg.gradcheck(out, [y, *unet.parameters()])


# --- the recipe ---------------------------------------------------------------------------------------------


def fit_recipe(spec, train_x, steps, **options) -> DDPMRecipe:
    recipe = DDPMRecipe(spec, **options)
    loader = data.DataLoader(train_x, batch_size=256, seed=0)
    batches = train._batches(loader)
    for t in range(1, steps + 1):
        recipe.step(next(batches), t)
    return recipe


def test_eight_gaussians_modes_covered_quick():
    """A short CI version: a small MLP denoiser, T = 100, 1500 steps; DDIM samples cover all 8 modes."""
    spec, (train_x, _), _ = data.load_dataset("8gaussians")
    recipe = fit_recipe(spec, train_x, 1500, T=100, lr=2e-3, hidden=64, ema=0.99, ddim_steps=20)
    stats = metrics.mode_statistics(recipe.sample(1000), data.EIGHT_GAUSSIANS.means, data.EIGHT_GAUSSIANS.std)
    assert stats["modes"] == 8 and stats["high_quality"] > 0.6, stats


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_eight_gaussians_modes_covered(sampler):
    """Longer training (T = 1000, 4000 steps): both samplers cover all 8 modes with mostly good samples."""
    spec, (train_x, _), _ = data.load_dataset("8gaussians")
    recipe = fit_recipe(spec, train_x, 4000, lr=1e-3, sampler=sampler)
    stats = metrics.mode_statistics(recipe.sample(1000), data.EIGHT_GAUSSIANS.means, data.EIGHT_GAUSSIANS.std)
    assert stats["modes"] == 8 and stats["high_quality"] > 0.9, stats


@pytest.mark.parametrize("dataset, options", [
    ("digits", {"channels": 8, "T": 20, "bound_terms": 2}),
    ("binarized-digits", {"channels": 8, "T": 20, "attention": False, "sampler": "ancestral"}),
    ("moons", {"hidden": 16, "T": 20, "schedule": "cosine", "bound_terms": 0}),
])
def test_recipe_runs_through_fit_and_resumes_exactly(tmp_path, dataset, options):
    """Each recipe through the training loop: metrics, samples in range, and a run stopped at step 2 and
    resumed ends bit-identical to one never stopped, EMA weights included."""
    def run(folder, steps, resume=False):
        mg.manual_seed(0)
        spec, (train_x, _), (test_x, _) = data.load_dataset(dataset)
        recipe = DDPMRecipe(spec, **options)
        loader = data.DataLoader(train_x[:64], batch_size=16, seed=0)
        evaluated = train.fit(recipe, loader, steps, folder, eval_loader=data.DataLoader(
            test_x[:20], batch_size=20, shuffle=False), eval_every=2, sample_every=4, checkpoint_every=2,
            resume=resume, n_samples=4, progress=False)
        return recipe, spec, evaluated

    recipe, spec, evaluated = run(tmp_path / "straight", 4)
    assert set(evaluated) >= {"nll", "bits_per_dim", "loss", "train_loss"}
    assert np.isfinite(evaluated["bits_per_dim"]) and evaluated["bits_per_dim"] > 0
    samples = recipe.sample(3)
    assert samples.shape == (3, *spec.shape) and np.isfinite(samples).all()
    if spec.is_image:
        assert samples.min() >= 0 and samples.max() <= 1
    ema, model = recipe.ema.state_dict(), recipe.model.state_dict()
    assert any(not np.array_equal(ema[k], model[k]) for k in model)

    run(tmp_path / "resumed", 2)
    resumed, _, _ = run(tmp_path / "resumed", 4, resume=True)
    for name, module in recipe.modules().items():
        other = resumed.modules()[name].state_dict()
        for k, v in module.state_dict().items():
            np.testing.assert_array_equal(other[k], v, err_msg=f"{name}.{k}")


def test_recipe_rejects_bad_options():
    spec = data.load_dataset("8gaussians")[0]
    with pytest.raises(ValueError, match="net"):
        DDPMRecipe(spec, net="unet")
    with pytest.raises(ValueError, match="sampler"):
        DDPMRecipe(spec, sampler="euler")
    with pytest.raises(ValueError, match="eta"):
        DDPMRecipe(spec, eta=1.5)
    assert {"T", "schedule", "lr", "ema", "sampler", "ddim_steps", "eta", "net"} <= set(DDPMRecipe.options())


def test_minigen_train_ddpm_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "minigen", "train", "ddpm", "--dataset", "8gaussians", "--steps", "4",
                        "--out", str(tmp_path / "run"), "--opt", "T=10", "--opt", "hidden=16"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"bits_per_dim"' in r.stdout and (tmp_path / "run" / "samples" / "step-00000004.png").exists()
