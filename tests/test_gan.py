"""GANs: the gradient penalty against its closed form and gradcheck, the saturation of the minimax generator
loss, mode coverage on 8 Gaussians, the oscillation of simultaneous GDA on x y, and the recipes in the loop."""
import numpy as np
import pytest

import minigen as mg
from minigen import cli, data, optim
from minigen.data import EIGHT_GAUSSIANS
from minigen.metrics import mode_statistics
from minigen.models.gan import (DCGANRecipe, GANRecipe, WGANGPRecipe, WGANRecipe, generator_loss_minimax,
                                generator_loss_non_saturating, gradient_penalty, simultaneous_gda)


def test_gradient_penalty_of_a_linear_critic_has_its_closed_form_gradient():
    # f(x) = w.x: grad_x f = w for every x_hat, so the penalty is (||w|| - 1)^2, d/dw = 2 (||w|| - 1) w / ||w||
    rng = np.random.default_rng(0)
    w = mg.tensor(rng.standard_normal(5), dtype=np.float64, requires_grad=True)
    x, x_fake = (mg.tensor(rng.standard_normal((7, 5)), dtype=np.float64) for _ in range(2))
    gp = gradient_penalty(lambda h: h @ w, x, x_fake)
    norm = np.linalg.norm(w.numpy())
    np.testing.assert_allclose(gp.item(), (norm - 1) ** 2, rtol=1e-9)
    gw, = mg.grad(gp, w)
    np.testing.assert_allclose(gw.numpy(), 2 * (norm - 1) * w.numpy() / norm, rtol=1e-9)


def test_gradient_penalty_through_a_conv_critic_passes_gradcheck():
    rng = np.random.default_rng(1)
    x, x_fake = (mg.tensor(rng.standard_normal((3, 1, 6, 6)), dtype=np.float64) for _ in range(2))
    eps = mg.tensor(rng.uniform(size=(3, 1, 1, 1)), dtype=np.float64)
    w1 = mg.tensor(0.5 * rng.standard_normal((2, 1, 3, 3)), dtype=np.float64, requires_grad=True)
    b1 = mg.tensor(0.1 * rng.standard_normal(2), dtype=np.float64, requires_grad=True)
    w2 = mg.tensor(0.5 * rng.standard_normal((1, 2, 2, 2)), dtype=np.float64, requires_grad=True)

    def penalty(w1, b1, w2):
        def critic(h):
            h = mg.tanh(mg.conv2d(h, w1, b1, stride=2, padding=1))        # (3, 2, 3, 3)
            return mg.conv2d(h, w2, stride=1).sum(axis=(1, 2, 3))         # (3,)
        return gradient_penalty(critic, x, x_fake, eps)

    assert mg.gradcheck(penalty, [w1, b1, w2], mode="full")


@pytest.mark.parametrize("a", [-30.0, -10.0, -3.0, 0.0, 2.0])
def test_generator_losses_have_their_gradients_and_the_minimax_one_saturates(a):
    # d/da of E log(1 - sigmoid(a)) is -sigmoid(a); of -E log sigmoid(a) it is -(1 - sigmoid(a))
    logits = mg.tensor(np.full(4, a), dtype=np.float64, requires_grad=True)
    sig = 1 / (1 + np.exp(-a))
    g_mm, = mg.grad(generator_loss_minimax(logits), logits)
    g_ns, = mg.grad(generator_loss_non_saturating(logits), logits)
    np.testing.assert_allclose(g_mm.numpy(), -sig / 4, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(g_ns.numpy(), -(1 - sig) / 4, rtol=1e-9)
    if a <= -10:                     # D(G(z)) -> 0: the minimax gradient vanishes, the non-saturating does not
        assert abs(g_mm.numpy()[0]) < 1e-4 * abs(g_ns.numpy()[0])
        np.testing.assert_allclose(g_ns.numpy(), -0.25, rtol=1e-4)


POINTS = data.DataSpec("8gaussians", (2,), "continuous")


def _train_on_eight_gaussians(recipe, steps):
    loader = data.DataLoader(data.eight_gaussians(20000, 0), batch_size=256, seed=0)
    batches = iter(())
    for t in range(1, steps + 1):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        recipe.step(batch, t)
    return mode_statistics(recipe.sample(2000), EIGHT_GAUSSIANS.means, EIGHT_GAUSSIANS.std)


def test_non_saturating_gan_covers_the_eight_gaussians():
    stats = _train_on_eight_gaussians(GANRecipe(POINTS, lr=1e-3, hidden=64), 600)
    assert stats["modes"] == 8 and stats["high_quality"] > 0.8, stats


@pytest.mark.slow
def test_wgan_gp_covers_the_eight_gaussians():
    # slow: ~20 s of CPU with OMP_NUM_THREADS=1, several minutes when BLAS threads contend on 2 busy cores.
    # lambda = 0.1, as Gulrajani et al.'s code uses for its toy sets (gan_toy.py); 1000 critic steps = 200 of G
    recipe = WGANGPRecipe(POINTS, lr=1e-3, beta1=0.5, penalty=0.1, hidden=128)
    stats = _train_on_eight_gaussians(recipe, 1000)
    assert stats["modes"] == 8 and stats["high_quality"] > 0.7, stats


def test_simultaneous_gda_on_xy_circles_away_from_the_equilibrium():
    lr = 0.1
    path = simultaneous_gda(1.0, 0.5, lr=lr, steps=300)
    radius = np.linalg.norm(path, axis=1)
    assert np.all(np.diff(radius) >= 0)
    # each step multiplies the distance to (0, 0) by sqrt(1 + lr^2)
    np.testing.assert_allclose(radius, radius[0] * (1 + lr**2) ** (np.arange(301) / 2), rtol=1e-9)
    angle = np.unwrap(np.arctan2(path[:, 1], path[:, 0]))
    assert angle[-1] - angle[0] > 2 * np.pi                  # it goes round, at least once


def test_wgan_clips_the_critic_and_updates_the_generator_every_n_critic_steps():
    recipe = WGANRecipe(POINTS, hidden=16, n_critic=3, clip=0.01)
    batch = (mg.tensor(data.eight_gaussians(64, 0)),)
    g_before = [p.numpy().copy() for p in recipe.G.parameters()]
    for k in range(1, 4):
        metrics = recipe.step(batch, k)
        assert all(np.abs(p.numpy()).max() <= 0.01 for p in recipe.D.parameters())
        unchanged = all(np.array_equal(a, p.numpy()) for a, p in zip(g_before, recipe.G.parameters()))
        assert unchanged == (k < 3)
    assert set(metrics) == {"d_loss", "wasserstein", "g_loss"}
    assert isinstance(recipe.opt_D, optim.RMSprop)


@pytest.mark.parametrize("cls", [DCGANRecipe, WGANRecipe, WGANGPRecipe])
@pytest.mark.parametrize("size", [8, 28])
def test_dcgan_networks_train_on_images(cls, size):
    recipe = cls(data.DataSpec("images", (1, size, size), "levels", levels=256), width=8, latent=16, n_critic=1)
    x = mg.tensor(np.random.default_rng(0).uniform(size=(6, 1, size, size)), dtype=np.float32)
    metrics = recipe.step((x,), 1)
    assert all(np.isfinite(v) for v in metrics.values())
    samples = recipe.sample(5)
    assert samples.shape == (5, 1, size, size) and samples.min() >= 0 and samples.max() <= 1
    assert any(type(m).__name__ == "BatchNorm2d" for m in recipe.D.modules()) == (cls is not WGANGPRecipe)


def test_wgan_gp_trains_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "wgan-gp", "--dataset", "8gaussians", "--steps", "10", "--out", str(out),
                     "--opt", "hidden=16"]) == 0
    assert (out / "samples").exists() and (out / "metrics.jsonl").exists()
    assert cli.main(["train", "gan", "--dataset", "8gaussians", "--steps", "4", "--out", str(out), "--overwrite",
                     "--opt", "generator_loss=minimax", "--opt", "hidden=16"]) == 0
