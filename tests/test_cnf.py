"""Continuous flows (minigen/models/cnf.py) against ground truths: the matrix exponential for the solvers,
the exact trace for Hutchinson's estimator, autodiff for OT-Flow's closed forms, finite differences through
the solver, and the entropy of the generating distribution for trained FFJORD models."""
import math

import numpy as np
import pytest
import scipy.linalg

import minigen as mg
from minigen.testing import swapped_parameters
from minigen.cli import main
from minigen.models import cnf, recipe_class
from minigen.train import fit


# --- solvers ---------------------------------------------------------------------------------------------

POINTS = mg.data.DataSpec("points", (2,), "continuous")
A = np.array([[-0.3, 2.0, 0.0], [-2.0, -0.3, 0.5], [0.0, -0.5, -0.1]])


def _linear(t, y):
    return (y[0] @ mg.tensor(A.T),)


def _solve_linear(y0, t1, **solver):
    (y,), counts = cnf.odeint(_linear, (mg.tensor(y0),), 0.0, t1, **solver)
    return y.numpy(), counts


def test_rk4_matches_the_matrix_exponential_with_fourth_order_convergence():
    y0 = np.random.default_rng(0).standard_normal((4, 3))
    exact = y0 @ scipy.linalg.expm(2.0 * A).T
    errors = [np.abs(_solve_linear(y0, 2.0, method="rk4", steps=n)[0] - exact).max() for n in (20, 40, 80)]
    assert errors[-1] < 1e-6
    for coarse, fine in zip(errors, errors[1:]):
        assert 12 < coarse / fine < 20          # halving h divides the error by ~2^4
    back, counts = cnf.odeint(_linear, (mg.tensor(exact),), 2.0, 0.0, method="rk4", steps=80)
    np.testing.assert_allclose(back[0].numpy(), y0, atol=1e-5)
    assert counts == {"steps": 80, "rejected": 0, "nfe": 320}


def test_dopri5_meets_its_tolerance_and_takes_fewer_steps_when_looser():
    y0 = np.random.default_rng(1).standard_normal((4, 3))
    exact = y0 @ scipy.linalg.expm(5.0 * A).T
    steps = []
    for tol in (1e-9, 1e-6, 1e-3):
        y, counts = _solve_linear(y0, 5.0, method="dopri5", rtol=tol, atol=tol)
        assert np.abs(y - exact).max() < 10 * tol * max(1.0, np.abs(exact).max())
        assert counts["nfe"] == 6 * (counts["steps"] + counts["rejected"]) + 1     # first same as last
        steps.append(counts["steps"])
    assert steps[0] > steps[1] > steps[2]


def test_dopri5_rejects_steps_that_are_too_long():
    """y' = -50 y + cos t, y(0) = 1: y = (50 cos t + sin t) / 2501 + (1 - 50/2501) exp(-50 t). Steps that
    grow past the stability limit are rejected and the answer is still right."""
    (y,), counts = cnf.odeint(lambda t, y: (y[0] * -50.0 + math.cos(t),), (mg.tensor(np.ones(1)),), 0.0, 1.0,
                              method="dopri5", rtol=1e-6, atol=1e-6)
    exact = (50 * math.cos(1) + math.sin(1)) / 2501 + (1 - 50 / 2501) * math.exp(-50)
    assert abs(y.item() - exact) < 1e-5
    assert counts["rejected"] > 0


# --- the trace of the Jacobian ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(kind):
    """Per point, the means of eps^T J eps and |eps^T J|^2 over many probes are within 3 standard errors of
    tr J and |J|_F^2 (J = df/dz)."""
    net = cnf.ODENet(3, hidden=16, layers=3).to(np.float64)
    z = mg.tensor(np.random.default_rng(2).standard_normal((4, 3)), requires_grad=True)
    exact = cnf.exact_trace(net(z, 0.4), z, create_graph=False)
    probes = 4000
    zs = mg.tensor(np.repeat(z.numpy(), probes, axis=0), requires_grad=True)
    eps = cnf.probe(zs.shape, kind, np.float64)
    estimates = cnf.hutchinson_trace(eps)(net(zs, 0.4), zs, create_graph=False)
    for truth, estimate in zip(exact, estimates):
        estimate = estimate.numpy().reshape(4, probes)
        standard_error = estimate.std(axis=1, ddof=1) / math.sqrt(probes)
        assert (np.abs(estimate.mean(axis=1) - truth.numpy()) < 3 * standard_error).all()
        assert (standard_error > 0).all()


def test_exact_trace_and_frobenius_norm_of_the_autodiff_jacobian():
    net = cnf.ODENet(3, hidden=16, layers=3).to(np.float64)
    z = mg.tensor(np.random.default_rng(3).standard_normal((2, 3)), requires_grad=True)
    f = net(z, 0.7)
    jacobian = np.stack([mg.grad(f[:, i].sum(), z, retain_graph=True)[0].numpy() for i in range(3)], 1)
    trace, frobenius = cnf.exact_trace(f, z, create_graph=False)
    np.testing.assert_allclose(trace.numpy(), np.trace(jacobian, axis1=1, axis2=2), rtol=1e-12)
    np.testing.assert_allclose(frobenius.numpy(), (jacobian ** 2).sum(axis=(1, 2)), rtol=1e-12)


# --- OT-Flow -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_otflow_closed_forms_equal_autodiff(layers):
    """grad_s Phi and tr grad_x^2 Phi in closed form against grad and grad-of-grad of Phi itself."""
    phi = cnf.Potential(3, width=8, layers=layers).to(np.float64)
    x = mg.tensor(np.random.default_rng(4).standard_normal((5, 3)), requires_grad=True)
    gradient, laplacian = phi.gradient_and_laplacian(x, 0.3)
    (grad_x,) = mg.grad(phi(x, 0.3).sum(), x, create_graph=True)
    hessian_diagonal = [mg.grad(grad_x[:, i].sum(), x, retain_graph=True)[0].numpy()[:, i] for i in range(3)]
    np.testing.assert_allclose(gradient.numpy()[:, :3], grad_x.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(laplacian.numpy(), np.sum(hessian_diagonal, axis=0), rtol=1e-10, atol=1e-12)
    h = 1e-6
    dphi_dt = (phi(x, 0.3 + h).numpy() - phi(x, 0.3 - h).numpy()) / (2 * h)
    np.testing.assert_allclose(gradient.numpy()[:, 3], dphi_dt, rtol=1e-6, atol=1e-8)


def test_otflow_loss_has_its_regularizers_and_decreases():
    mg.manual_seed(0)
    recipe = recipe_class("otflow")(POINTS, width=16)
    x = mg.tensor(mg.data.eight_gaussians(256, 0))
    first = recipe.step((x,), 1)
    for t in range(2, 17):
        last = recipe.step((x,), t)
    assert first["transport"] >= 0 and first["hjb"] >= 0
    assert last["loss"] < first["loss"] - 0.5


# --- gradients through the solver ------------------------------------------------------------------------


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_gradcheck_log_density_through_rk4(trace):
    """d log p(x) / d parameters through a 3-step RK4 solve (discretize-then-optimize), float64; the
    Hutchinson probe is redrawn from the same seed at every evaluation so that the function is fixed."""
    model = cnf.FFJORD(2, hidden=6, layers=3, trace=trace).to(np.float64)
    params = list(model.parameters())
    x = mg.tensor(np.random.default_rng(5).standard_normal((3, 2)))

    def log_p(*tensors):
        with swapped_parameters(model, tensors):
            mg.manual_seed(7)
            return model.log_prob(x, method="rk4", steps=3)[0]

    assert mg.gradcheck(log_p, params, n_directions=5)


# --- density estimation: test NLL against the entropy of the generating distribution ----------------------


def _moons_log_prob(x, nodes=2000):
    """two_moons' density: 2 (point on a moon, t ~ U(0, pi)) + (-1, -0.2) + N(0, 0.2^2 I), averaged over t by
    the midpoint rule (node spacing 2 pi / nodes, far below the noise's 0.2)."""
    t = (np.arange(nodes) + 0.5) * math.pi / nodes
    moons = np.concatenate([np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)])
    a = -((np.asarray(x, np.float64)[:, None] - (2 * moons + [-1.0, -0.2])) ** 2).sum(-1) / (2 * 0.2**2)
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).mean(axis=1)) - math.log(2 * math.pi * 0.2**2)


def _entropy(name: str) -> float:
    """H = -E log p(x): Monte Carlo over 20000 fresh points with the known log-density (standard error
    < 0.01 nats), log 32 for the uniform checkerboard."""
    if name == "checkerboard":
        return math.log(32)
    x = mg.data.sample_toy(name, 20000, np.random.default_rng(123))
    log_p = mg.data.EIGHT_GAUSSIANS.log_prob(x) if name == "8gaussians" else _moons_log_prob(x)
    return float(-log_p.mean())


def _train(name: str, steps: int, tmp_path, family: str = "ffjord", **options):
    """A continuous flow trained by the shared loop on 20000 points; the recipe evaluates 2000 held-out points
    (Dopri5, rtol = atol = 1e-5, exact trace)."""
    rng = np.random.default_rng(0)
    train, test = mg.data.sample_toy(name, 20000, rng), mg.data.sample_toy(name, 2000, rng)
    recipe = recipe_class(family)(POINTS, **options)
    metrics = fit(recipe, mg.data.DataLoader(train, batch_size=256, seed=0), steps, tmp_path,
                  eval_loader=mg.data.DataLoader(test, batch_size=1000, shuffle=False), eval_every=steps,
                  sample_every=steps, checkpoint_every=steps, progress=False)
    return recipe, metrics


def test_ffjord_on_eight_gaussians_reaches_the_entropy_and_integrates_to_one(tmp_path):
    recipe, metrics = _train("8gaussians", 200, tmp_path)
    entropy = _entropy("8gaussians")
    print(f"8gaussians: test NLL {metrics['nll']:.3f}, entropy {entropy:.3f}")
    assert metrics["nll"] < entropy + 0.15, (metrics, entropy)
    grid = np.stack(np.meshgrid(*[np.arange(-5, 5, 0.125) + 0.0625] * 2), -1).reshape(-1, 2).astype(np.float32)
    with mg.no_grad():
        log_p, _ = recipe.model.log_prob(mg.tensor(grid), method="dopri5", rtol=1e-5, atol=1e-5)
    assert abs(np.exp(log_p.numpy()).sum() * 0.125**2 - 1) < 0.03       # midpoint rule over [-5, 5]^2
    assert (tmp_path / "samples" / "step-00000200.png").exists()


@pytest.mark.slow
def test_ffjord_on_two_moons_reaches_the_entropy(tmp_path):
    """Trained with Dopri5 (rtol = atol = 1e-3): with 4 fixed RK4 steps two moons learns, after ~500 steps, to
    exploit the discretization (train NLL below the entropy while the test NLL rises). 3-5 minutes on 2 cores."""
    _, metrics = _train("moons", 500, tmp_path, train_method="dopri5", train_tol=1e-3)
    entropy = _entropy("moons")
    print(f"moons: test NLL {metrics['nll']:.3f}, entropy {entropy:.3f}")
    assert metrics["nll"] < entropy + 0.15, (metrics, entropy)


@pytest.mark.slow
def test_ffjord_on_checkerboard_reaches_the_entropy(tmp_path):
    """The hardest of the three: trained with Dopri5 (rtol = atol = 1e-3) for 5000 steps, 12-20 minutes on 2
    cores. Measured test NLL: 3.731 after 1000 steps, 3.652 after 2400, 3.596 after 5000, and between 3.585
    and 3.618 from 4700 to 5300 (log 32 = 3.466, the bar 3.616): the margin is thin."""
    _, metrics = _train("checkerboard", 5000, tmp_path, train_method="dopri5", train_tol=1e-3)
    print(f"checkerboard: test NLL {metrics['nll']:.3f}, entropy {math.log(32):.3f}")
    assert metrics["nll"] < math.log(32) + 0.15, metrics


@pytest.mark.slow
def test_otflow_on_eight_gaussians_reaches_the_entropy(tmp_path):
    """OT-Flow with its transport and HJB penalties, 8 RK4 steps; ~2 minutes on 2 cores."""
    _, metrics = _train("8gaussians", 300, tmp_path, family="otflow")
    entropy = _entropy("8gaussians")
    print(f"otflow 8gaussians: test NLL {metrics['nll']:.3f}, entropy {entropy:.3f}")
    assert metrics["nll"] < entropy + 0.15, (metrics, entropy)


@pytest.mark.parametrize("family, options", [("ffjord", []), ("ffjord", ["--opt", "trace=hutchinson"]),
                                             ("otflow", [])])
def test_the_command_trains_evaluates_and_samples(family, options, tmp_path, capsys):
    out = tmp_path / family
    assert main(["train", family, "--dataset", "8gaussians", "--steps", "3", "--out", str(out), *options]) == 0
    assert main(["eval", str(out)]) == 0
    evaluated = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"nll"' in evaluated and '"nfe"' in evaluated
    assert main(["sample", str(out), "-n", "16"]) == 0


def test_ffjord_on_images_reports_the_discrete_nll_in_bits_per_dim():
    """Images: dequantized pixels y, u = logit(y) flattened; -log P(k) <= -(log p(u) + log|du/dy|) + D log 256."""
    from minigen import backend
    from minigen.data import dequantize, logit_transform
    from minigen.models.cnf import FFJORDRecipe
    x = np.random.default_rng(0).integers(0, 256, (6, 1, 4, 4)) / np.float32(255)
    recipe = FFJORDRecipe(mg.data.DataSpec("tiny", (1, 4, 4), "levels", levels=256), hidden=8, eval_tol=1e-3)
    assert recipe.model.trace == "hutchinson" and recipe.log_prob_options == {"trace": "hutchinson"}
    recipe.log_prob_options = {"trace": "exact"}      # so that dequantization is the only random draw
    mg.manual_seed(1)
    metrics = recipe.evaluate([(mg.tensor(x),)])
    mg.manual_seed(1)
    u, log_det = logit_transform(dequantize(x, rng=backend.generator("cpu")))
    with mg.no_grad():
        log_p, _ = recipe.model.log_prob(mg.tensor(u.data.reshape(6, 16)), trace="exact", **recipe.eval_solver)
    nll = -(log_p.data + log_det.data - 16 * np.log(256)).mean()
    assert np.isclose(metrics["nll"], nll, rtol=1e-6)
    assert np.isclose(metrics["bits_per_dim"], nll / (16 * np.log(2)))
    assert np.isfinite(recipe.step((mg.tensor(x),), 1)["nll"])
    samples = recipe.sample(3)
    assert samples.shape == (3, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 1
    recipe.temperature = 0.0                          # every sample from z = 0: one image
    assert np.ptp(recipe.sample(3), axis=0).max() == 0
