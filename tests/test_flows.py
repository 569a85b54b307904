"""Discrete normalizing flows against ground truths: exact inverses and autodiff Jacobians for every
bijector, test NLL of density estimators against the entropy of the generating distribution, reverse-KL
fits against -log Z, an affine flow against the sample mean and covariance, and the recipes end to end.

Cases marked `slow` need more steps than the file's budget; the numbers they reach are in their comments.
"""
import functools
import json
import math

import numpy as np
import pytest

import minigen as mg
from minigen import cli, data, optim
from minigen.models import flows as F


# --- every bijector: inverse and log-determinant ------------------------------------------------------------


def _jacobian_log_det(f, x: np.ndarray) -> np.ndarray:
    """log|det df/dx| per example, the Jacobian built row by row with minigen.grad."""
    x = mg.tensor(x, requires_grad=True)
    y = f(x)
    n, d = len(x), math.prod(x.shape[1:])
    rows = []
    for i in range(d):
        seed = np.zeros((n, d))
        seed[:, i] = 1
        (g,) = mg.grad(y.reshape(n, d), x, mg.tensor(seed), retain_graph=True)
        rows.append(g.numpy().reshape(n, d))
    return np.linalg.slogdet(np.stack(rows, axis=1))[1]


def _perturbed(bijector, rng, scale=0.3):
    """Random parameters away from the identity initializations (zeroed last layers)."""
    for p in bijector.parameters():
        p.data += scale * rng.standard_normal(p.shape)
    return bijector


def _vector_bijectors(d):
    return {
        "planar": F.Planar(d), "radial": F.Radial(d), "scaling": F.Scaling((d,)),
        "scaling_shift": F.Scaling((d,), shift=True), "actnorm": F.ActNorm(d), "linear": F.Invertible1x1Conv(d),
        "linear_lu": F.Invertible1x1Conv(d, lu=True), "reverse": F.Reverse(),
        "additive": F.AdditiveCoupling(F.checkerboard_mask((d,), 0), F.mlp_net(d, 8)),
        "affine": F.AffineCoupling(F.checkerboard_mask((d,), 1), F.mlp_net(d, 8)),
        "maf": F.MAF(d, 8), "iaf": F.IAF(d, 8), "realnvp_2d": F.realnvp_2d(8, 3), "glow_2d": F.glow_2d(8, 2),
    }


def _image_bijectors(shape):
    c = shape[0]
    return {
        "logit": F.LogitTransform(), "squeeze": F.Squeeze(), "actnorm": F.ActNorm(c), "conv1x1": F.Invertible1x1Conv(c),
        "conv1x1_lu": F.Invertible1x1Conv(c, lu=True),
        "checkerboard": F.AffineCoupling(F.checkerboard_mask(shape, 0), F.conv_net(c, 4)),
        "channel": F.AffineCoupling(F.channel_mask(shape, 1), F.conv_net(c, 4)),
        "realnvp": F.realnvp_image(shape, 4, 2), "glow": F.glow_image(shape, 4, 2, 2),
    }


def _check_bijector(b, x, forward_differentiable=True):
    z, log_det = b(mg.tensor(x))
    x_back, log_det_inverse = b.inverse(z)
    np.testing.assert_allclose(x_back.numpy(), x, atol=1e-9)
    np.testing.assert_allclose(log_det_inverse.numpy(), -log_det.numpy(), atol=1e-9)
    np.testing.assert_allclose(b.log_abs_det_jacobian(mg.tensor(x)).numpy(), log_det.numpy(), atol=1e-12)
    if forward_differentiable:
        np.testing.assert_allclose(log_det.numpy(), _jacobian_log_det(lambda t: b(t)[0], x), atol=1e-9)
    np.testing.assert_allclose(log_det_inverse.numpy(), _jacobian_log_det(lambda t: b.inverse(t)[0], z.numpy()),
                               atol=1e-9)


@pytest.fixture
def float64():
    mg.set_default_dtype(np.float64)
    yield
    mg.set_default_dtype(np.float32)


@pytest.mark.parametrize("d", [2, 3, 6])
@pytest.mark.parametrize("name", list(_vector_bijectors(2)))
def test_vector_bijector_inverts_and_log_det_is_the_jacobians(float64, name, d):
    if name.endswith("_2d") and d != 2:
        pytest.skip("a 2-D architecture")
    rng = np.random.default_rng(d)
    b = _perturbed(_vector_bijectors(d)[name], rng)
    # planar's forward is a root finder (no gradient into x): its Jacobian is checked through the inverse
    _check_bijector(b, rng.standard_normal((5, d)), forward_differentiable=name != "planar")


@pytest.mark.parametrize("name", list(_image_bijectors((2, 4, 4))))
def test_image_bijector_inverts_and_log_det_is_the_jacobians(float64, name):
    rng = np.random.default_rng(0)
    b = _perturbed(_image_bijectors((2, 4, 4))[name], rng, scale=0.1)
    _check_bijector(b, rng.uniform(0.05, 0.95, (3, 2, 4, 4)))


def test_strip_squash_and_flatten(float64):
    rng = np.random.default_rng(0)
    _check_bijector(F.StripSquash(4.0), rng.uniform(-3.9, 3.9, (5, 2)))
    x = rng.standard_normal((3, 2, 4, 4))
    z, log_det = F.Flatten((2, 4, 4))(mg.tensor(x))
    assert z.shape == (3, 32) and not log_det.numpy().any()
    np.testing.assert_array_equal(F.Flatten((2, 4, 4)).inverse(z)[0].numpy(), x)


def test_planar_reparameterization_keeps_it_invertible():
    """w^T u_hat >= -1 for any u, w (Rezende & Mohamed 2015, appendix A.1), and the root finder inverts it."""
    b = F.Planar(3)
    b.w.data[...] = [1.0, 2.0, -1.0]
    b.u.data[...] = [-1.0, -1.0, 0.0]            # w^T u = -3: not invertible without the correction
    assert abs(float((b.w * b.u_hat()).sum().item()) - (math.log1p(math.exp(-3)) - 1)) < 1e-6
    z = mg.randn(100, 3) * 3
    x, _ = b.inverse(z)
    np.testing.assert_allclose(b(x)[0].numpy(), z.numpy(), atol=1e-4)


def test_1x1_conv_log_det_is_hw_log_abs_det_w():
    b = F.Invertible1x1Conv(3)
    x = mg.randn(2, 3, 5, 4)
    expected = 5 * 4 * np.linalg.slogdet(b.weight.numpy())[1]
    np.testing.assert_allclose(b(x)[1].numpy(), [expected] * 2, rtol=1e-5)


def test_actnorm_data_dependent_init():
    x = mg.randn(256, 3, 4, 4) * 3 + 2
    z, _ = F.ActNorm(3)(x)
    np.testing.assert_allclose(z.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(z.numpy().std(axis=(0, 2, 3)), 1, atol=1e-3)


def test_temperature_scales_the_base_samples():
    flow = F.Flow([F.Reverse()], F.StandardNormal((2,)))
    assert abs(flow.sample(20000, temperature=0.5).numpy().std() - 0.5) < 0.01


# --- density estimation against the entropy of the generator ---------------------------------------------


def _two_moons_log_prob(x: np.ndarray, m: int = 1000) -> np.ndarray:
    """The exact density of `minigen.data.two_moons`: each moon's curve c(t), t ~ U(0, pi), scaled by 2 and
    shifted, blurred by N(0, 0.2^2 I), p(x) = 1/2 sum_moons 1/pi int N(x; c(t), 0.2^2 I) dt; the integral by
    the midpoint rule on m points per moon (the curve moves 2 pi / m << 0.2 between them)."""
    t = (np.arange(m) + 0.5) * math.pi / m
    curve = np.concatenate([np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)])
    centers, s = 2 * curve + np.array([-1.0, -0.2]), 0.2
    a = -((x[:, None, :] - centers) ** 2).sum(-1) / (2 * s * s)
    top = a.max(1)
    return top + np.log(np.exp(a - top[:, None]).sum(1)) - math.log(2 * math.pi * s * s * 2 * m)


@functools.lru_cache
def _entropy(name: str) -> float:
    """H = -E log p(x) of the generator: Monte Carlo over 20000 fresh points with the exact log-density
    (standard error about 0.005 nats), or log 32 exactly for the uniform checkerboard."""
    if name == "checkerboard":
        return math.log(32)
    x = data.sample_toy(name, 20000, np.random.default_rng(7)).astype(np.float64)
    log_p = _two_moons_log_prob(x) if name == "moons" else data.EIGHT_GAUSSIANS.log_prob(x)
    return float(-log_p.mean())


def test_entropies_of_the_generators():
    """Closed forms where they exist: the 8 well-separated Gaussians, log 8 + log(2 pi e sigma^2)."""
    sigma = 0.5 / math.sqrt(2)
    assert abs(_entropy("8gaussians") - (math.log(8) + math.log(2 * math.pi * math.e * sigma**2))) < 0.02
    assert abs(_entropy("moons") - 2.395) < 0.02            # measured with 200000 points and m = 2000


def _fit_density(flow, name, steps, lr=2e-3, batch=256):
    """Adam with a cosine schedule on fresh batches from the generator; returns the NLL on 20000 test points."""
    rng = np.random.default_rng(1)
    opt = optim.Adam(flow.parameters(), lr=lr)
    schedule = optim.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = -flow.log_prob(mg.tensor(data.sample_toy(name, batch, rng))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    with mg.no_grad():
        return -flow.log_prob(mg.tensor(data.sample_toy(name, 20000, np.random.default_rng(2)))).mean().item()


# The Glow-style flow takes 16 steps on checkerboard: with 8 its gap was 0.152 (seed 0) and spread from 0.13
# to 0.31 over learning rates 1e-3..1e-2 and seeds (affine couplings leave bridges between diagonal squares;
# 6000 steps, a batch of 1024 or hidden 128 no better); with 16, 0.117 and 0.143 for seeds 0 and 1.
MODELS = {"realnvp": lambda name: F.realnvp_2d(64, 8), "maf": lambda name: F.maf(2, 64, 8),
          "glow": lambda name: F.glow_2d(64, 16 if name == "checkerboard" else 8)}
STEPS = {"moons": 1000, "8gaussians": 3000, "checkerboard": 4000}


# Targets not reached yet: measured in the long job, `pytest -m slow`, at these budgets. Planar on U4 (gap to
# -log Z, threshold 0.1, seeds 0 / 1 / 2): 0.136 / 0.140 / 0.057 at 4000 steps, 0.021 / 0.109 at 8000; before the
# activations took their kernels on small arrays (d122358), 0.100 / 0.230 / 0.211: seed 0 passed by 3e-5.
MISSED: dict = {("planar", "u4"): "gap 0.06-0.23 over seeds, threshold 0.1"}


def _xfail_if_missed(request, *key):
    if key in MISSED:
        request.applymarker(pytest.mark.xfail(reason=f"target not reached yet: {MISSED[key]}", strict=False))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", [
    "moons", pytest.param("8gaussians", marks=pytest.mark.slow), pytest.param("checkerboard", marks=pytest.mark.slow)])
def test_density_estimation_reaches_the_entropy(name, model, request):
    _xfail_if_missed(request, name, model)
    nll = _fit_density(MODELS[model](name), name, STEPS[name])
    entropy = _entropy(name)
    print(f"{model} on {name}: test NLL {nll:.3f} nats, entropy {entropy:.3f}")
    assert entropy - 0.02 < nll < entropy + 0.15


# --- reverse KL against -log Z ----------------------------------------------------------------------------


def test_minus_log_z_floors():
    """The floors by quadrature against closed forms: on the strip |z1| <= 4, U2-U4 are Gaussian in z2 about
    curves, so Z = 8 sqrt(2 pi) (sum of their widths); U1's mass outside the box is below float precision."""
    closed = {"u2": 8 * 0.4, "u3": 8 * 2 * 0.35, "u4": 8 * (0.4 + 0.35)}
    for target, width in closed.items():
        assert abs(data.energy_log_partition(data.ENERGIES[target]) - math.log(math.sqrt(2 * math.pi) * width)) < 1e-6
    step = 0.02
    c = np.arange(-8 + step / 2, 8, step)
    with mg.no_grad():
        neg_u = -data.u1(mg.tensor(np.stack(np.meshgrid(c, c), -1).reshape(-1, 2))).numpy()
    log_z_plane = np.log(np.exp(neg_u).sum()) + 2 * math.log(step)          # [-8, 8]^2, the midpoint rule
    assert abs(data.energy_log_partition(data.u1) - log_z_plane) < 1e-6


# Radial layers are local: they need more of them, a wider batch (free here: the cost is per operation) and
# a larger step size than planar layers.
ENERGY_BATCH, ENERGY_LR = {"planar": 256, "radial": 1024}, {"planar": 1e-2, "radial": 2e-2}


@pytest.mark.parametrize("kind,target,length,steps", [
    ("planar", "u1", 16, 1500), pytest.param("planar", "u2", 32, 4000, marks=pytest.mark.slow),
    pytest.param("planar", "u3", 32, 4000, marks=pytest.mark.slow),
    pytest.param("planar", "u4", 32, 4000, marks=pytest.mark.slow),
    pytest.param("radial", "u1", 32, 2000, marks=pytest.mark.slow),
    pytest.param("radial", "u2", 32, 2000, marks=pytest.mark.slow),
    pytest.param("radial", "u3", 64, 2000, marks=pytest.mark.slow),
    pytest.param("radial", "u4", 64, 2000, marks=pytest.mark.slow)])
def test_reverse_kl_reaches_minus_log_z(kind, target, length, steps, request):
    """E_q[log q + U] = KL(q || p) - log Z >= -log Z. Support: U2-U4 are periodic in z1 and do not decay, so
    their target is exp(-U) restricted to the strip |z1| <= 4 (z2 free; see minigen.data.toy), and the
    flow ends in `StripSquash`, so q lives on the same strip; U1 is integrable and q on the plane. log Z is
    the quadrature over that strip. The loss is evaluated on 10^5 samples (standard error ~ 0.002)."""
    _xfail_if_missed(request, kind, target)
    anneal_steps = 1 if target == "u2" else steps // 2         # U2 is unimodal: no annealing needed
    recipe = {"planar": F.PlanarRecipe, "radial": F.RadialRecipe}[kind](
        mg.data.DataSpec("none", (2,), "continuous"), target=target, length=length, lr=ENERGY_LR[kind], batch=ENERGY_BATCH[kind], anneal_steps=anneal_steps)
    schedule = optim.CosineAnnealingLR(recipe.optimizer, steps)
    for t in range(1, steps + 1):
        recipe.step(None, t)
        schedule.step()
    metrics = recipe.evaluate(None)
    print(f"{kind} on {target}: E_q[log q + U] {metrics['loss']:.3f}, -log Z {metrics['floor']:.3f}")
    assert metrics["floor"] - 0.02 < metrics["loss"] < metrics["floor"] + 0.1


# --- an affine flow recovers the Gaussian's moments ---------------------------------------------------------


def test_affine_flow_recovers_mean_and_covariance():
    """z = W x + b (actnorm then an invertible linear map) by maximum likelihood is the Gaussian fit:
    x = W^-1 (z - b) has mean -W^-1 b and covariance W^-1 W^-T equal to the sample mean and covariance."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 3))
    x = (rng.standard_normal((2000, 3)) @ a.T + [1.0, -2.0, 0.5]).astype(np.float32)
    flow = F.Flow([F.ActNorm(3), F.Invertible1x1Conv(3)], F.StandardNormal((3,)))
    opt = optim.Adam(flow.parameters(), lr=0.02)
    for _ in range(600):
        loss = -flow.log_prob(mg.tensor(x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with mg.no_grad():
        mean = flow.inverse(mg.zeros(1, 3))[0].numpy()[0]
        w = flow.inverse(mg.eye(3))[0].numpy() - mean          # rows: W^-1 e_i (the map is affine)
    np.testing.assert_allclose(mean, x.mean(0), atol=2e-3)
    np.testing.assert_allclose(w.T @ w, np.cov(x.T, bias=True), rtol=2e-3, atol=2e-3)


# --- recipes and the command ------------------------------------------------------------------------------


def test_sampling_inverts_density_in_each_family():
    """MAF samples with D sequential passes and IAF evaluates densities with D passes; both agree with the
    one-pass direction."""
    rng = np.random.default_rng(0)
    for flow in (F.maf(3, 8, 2), F.Flow([F.IAF(3, 8), F.Reverse(), F.IAF(3, 8)], F.StandardNormal((3,)))):
        _perturbed(flow, rng)
        x, log_q = flow.sample_with_log_prob(50)
        np.testing.assert_allclose(flow.log_prob(x).numpy(), log_q.numpy(), atol=1e-4)


@pytest.mark.parametrize("family,dataset,options", [
    ("realnvp", "moons", []), ("nice", "8gaussians", []), ("glow", "moons", []), ("maf", "moons", []),
    ("planar", "moons", ["target=u2", "length=4"]), ("iaf", "moons", ["target=u1", "length=2"]),
    ("realnvp", "digits", ["hidden=8"]), ("glow", "digits", ["hidden=8", "steps=2"]), ("maf", "digits", ["hidden=32", "layers=1"])])
def test_command_trains_evaluates_and_samples(tmp_path, family, dataset, options, capsys):
    out = tmp_path / family
    args = ["train", family, "--dataset", dataset, "--steps", "4", "--batch-size", "32", "--out", str(out)]
    assert cli.main(args + [a for o in options for a in ("--opt", o)]) == 0
    assert cli.main(["eval", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(math.isfinite(v) for v in metrics.values())
    if dataset == "digits":
        assert 0 < metrics["bits_per_dim"] < 8
    assert cli.main(["sample", str(out), "-n", "4"]) == 0


@pytest.mark.parametrize("dim,hidden", [(6, 64), (784, 64), (10, 3)])
def test_made_is_autoregressive_and_sees_nearly_all_earlier_inputs(dim, hidden):
    """Output d depends on nothing at or after input d, and on every input up to d - g, g = ceil((D-1)/H):
    with H >= D-1 hidden units on all of 1..d-1; with fewer, all but the last g-1 (paths counted through
    the masks: mask_out @ mask_hidden @ mask_in)."""
    from minigen.models.flows import MADE
    masks = [layer.mask.data.astype(np.float64) for layer in MADE(dim, hidden).layers]
    paths = np.linalg.multi_dot(masks[::-1])
    d, k = np.indices((dim, dim))           # output d + 1 and input k + 1
    g = -(-(dim - 1) // hidden)
    for part in (paths[:dim], paths[dim:]):  # mu, then alpha
        assert (part[k >= d] == 0).all() and (part[k <= d - g] > 0).all()


def test_glow_recipe_keeps_its_scales_apart_from_the_grey_levels():
    """The grey levels come from the data's spec in every image recipe; Glow's L is `scales`."""
    from minigen.models.flows import GlowRecipe
    size = lambda recipe: sum(p.data.size for p in recipe.flow.parameters())
    spec = mg.data.DataSpec("five levels", (1, 8, 8), "levels", levels=5)
    one, two = GlowRecipe(spec, scales=1, steps=2), GlowRecipe(spec, scales=2, steps=2)
    assert "levels" not in GlowRecipe.options() and size(one) < size(two)
