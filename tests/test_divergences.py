"""f-divergences against their definitions: direct sums on discrete distributions, the variational bound
attained at T* = f'(p/q) (discrete, and between Gaussians by Monte Carlo against closed forms), the
Fenchel-Young inequality with equality at t = f'(u), the activations landing in dom f*, and float64
gradchecks of f*, g_f and f*(g_f)."""
import math

import numpy as np
import pytest

import minigen as mg
from minigen.divergences import DIVERGENCES, divergence, f_divergence, variational_bound

NAMES = list(DIVERGENCES)


def _t(x) -> mg.Tensor:
    return mg.tensor(np.asarray(x, dtype=np.float64))


def _discrete_pair(seed: int, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))
    return p, q


def _definition(p: np.ndarray, q: np.ndarray, name: str) -> float:
    """Each divergence as the textbook writes it (not through f)."""
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum(a * np.log(a / b)))    # noqa: E731
    return {"kl": kl(p, q), "reverse-kl": kl(q, p), "pearson": float(np.sum((p - q) ** 2 / q)),
            "hellinger": float(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)), "js": kl(p, m) + kl(q, m),
            "gan": kl(p, m) + kl(q, m) - math.log(4), "tv": float(np.abs(p - q).sum() / 2)}[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discrete_divergence_equals_its_definition(name, seed):
    p, q = _discrete_pair(seed)
    assert f_divergence(p, q, name).item() == pytest.approx(_definition(p, q, name), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_divergence_of_a_distribution_with_itself_is_f_of_one(name):
    p, _ = _discrete_pair(3)
    expected = -math.log(4) if name == "gan" else 0.0
    assert f_divergence(p, p, name).item() == pytest.approx(expected, abs=1e-12)


def test_kl_with_zeros_in_p_and_batched_rows():
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(f_divergence(p, q, "kl").numpy(), [math.log(2), 0.0], atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_variational_bound_is_attained_at_f_prime_of_the_ratio(name, seed):
    """sum_i p_i T_i - sum_i q_i f*(T_i) = D_f at T* = f'(p/q), and below it for a perturbed T."""
    p, q = _discrete_pair(seed)
    d = divergence(name)
    t_star = d.f_prime(_t(p / q)).numpy()
    bound = lambda t: float(np.sum(p * t) - np.sum(q * d.conjugate(_t(t)).numpy()))    # noqa: E731
    assert bound(t_star) == pytest.approx(f_divergence(p, q, name).item(), rel=1e-10, abs=1e-12)
    rng = np.random.default_rng(seed)
    lo, hi = d.domain
    t_other = np.clip(t_star + 0.05 * rng.standard_normal(len(p)), lo + 1e-3, hi - 1e-3)
    assert bound(t_other) <= bound(t_star) + 1e-12


def _normal_log_prob(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return mg.distributions.Normal(_t(mu), _t(sigma)).log_prob(_t(x)).numpy()


def _closed_form(name: str, mu1: float, s1: float, mu2: float, s2: float) -> float:
    """D_f(N(mu1, s1^2) || N(mu2, s2^2)) in closed form."""
    kl = lambda m1, a, m2, b: math.log(b / a) + (a * a + (m1 - m2) ** 2) / (2 * b * b) - 0.5    # noqa: E731
    var = s1 ** 2 + s2 ** 2
    bhattacharyya = math.sqrt(2 * s1 * s2 / var) * math.exp(-(mu1 - mu2) ** 2 / (4 * var))
    return {"kl": kl(mu1, s1, mu2, s2), "reverse-kl": kl(mu2, s2, mu1, s1),
            "hellinger": 2 - 2 * bhattacharyya}[name]


@pytest.mark.parametrize("name", ["kl", "reverse-kl", "hellinger"])
def test_variational_bound_between_gaussians_by_monte_carlo(name):
    """E_P T*(x) - E_Q f*(T*(x)) with T* = f'(p(x)/q(x)), from 200000 samples of each, against the closed
    form (4 standard errors)."""
    (mu1, s1), (mu2, s2), n = (0.3, 0.8), (-0.2, 1.1), 200_000
    rng = np.random.default_rng(0)
    x_p, x_q = mu1 + s1 * rng.standard_normal(n), mu2 + s2 * rng.standard_normal(n)
    d = divergence(name)
    log_ratio = lambda x: _normal_log_prob(x, mu1, s1) - _normal_log_prob(x, mu2, s2)    # noqa: E731
    t_star = lambda x: d.f_prime(_t(np.exp(log_ratio(x))))                                # noqa: E731
    t_p, f_star_q = t_star(x_p).numpy(), d.conjugate(t_star(x_q)).numpy()
    error = math.sqrt(t_p.var() / n + f_star_q.var() / n)
    assert variational_bound(_t(t_p), t_star(x_q), name).item() == pytest.approx(
        _closed_form(name, mu1, s1, mu2, s2), abs=4 * error)


def _points_in_domain(name: str, n: int, rng) -> np.ndarray:
    lo, hi = divergence(name).domain
    lo, hi = max(lo, -4.0), min(hi, 4.0)
    return lo + (hi - lo) * rng.uniform(0.01, 0.99, n)


@pytest.mark.parametrize("name", NAMES)
def test_fenchel_young_inequality_with_equality_at_the_derivative(name):
    rng = np.random.default_rng(0)
    d = divergence(name)
    u, t = rng.uniform(0.05, 5.0, 500), _points_in_domain(name, 500, rng)
    gap = d.f(_t(u)).numpy() + d.conjugate(_t(t)).numpy() - u * t
    assert gap.min() >= -1e-12
    u = u[np.abs(u - 1) > 1e-3]                 # TV's f' jumps at u = 1
    t_u = d.f_prime(_t(u))
    np.testing.assert_allclose(d.f(_t(u)).numpy() + d.conjugate(t_u).numpy(), u * t_u.numpy(), atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_activation_maps_into_the_conjugate_domain_and_composes_stably(name):
    """g_f(v) lies in dom f*, f*(g_f(v)) equals `conjugate_of_activation` where the naive composition is
    finite, and the stable form stays finite for |v| up to 1e3."""
    d = divergence(name)
    v = np.linspace(-8, 8, 161)
    g = d.activation(_t(v)).numpy()
    lo, hi = d.domain
    assert np.all((g >= lo) & (g <= hi))
    np.testing.assert_allclose(d.conjugate(_t(g)).numpy(), d.conjugate_of_activation(_t(v)).numpy(),
                               rtol=1e-9, atol=1e-9)
    wide = np.array([-1e3, -50.0, 50.0, 1e3]) if d.name not in ("kl", "hellinger") else np.array([-1e3, -50.0])
    assert np.all(np.isfinite(d.conjugate_of_activation(_t(wide)).numpy()))


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_conjugate_and_activation(name):
    d = divergence(name)
    rng = np.random.default_rng(1)
    t = mg.tensor(_points_in_domain(name, 7, rng), requires_grad=True)
    v = mg.tensor(rng.uniform(-3, 3, 7), requires_grad=True)
    mg.gradcheck(d.conjugate, [t])
    mg.gradcheck(d.activation, [v])
    mg.gradcheck(d.conjugate_of_activation, [v])


@pytest.mark.parametrize("name", NAMES)
def test_gradient_of_the_divergence_in_p(name):
    p, q = _discrete_pair(4)
    mg.gradcheck(lambda a: f_divergence(a, q, name), [mg.tensor(p, requires_grad=True)])


def test_unknown_name_is_a_one_line_error():
    with pytest.raises(ValueError, match="choose one of: kl, reverse-kl"):
        divergence("wasserstein")
