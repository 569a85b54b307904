"""minigen.distributions: log-densities and entropies against SciPy, sample moments, closed-form KL against
Monte Carlo, reparameterized gradients by gradcheck, Independent, and extreme logits."""
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

import minigen as mg
from minigen import distributions as D

N_SAMPLES = 20000

locs = st.floats(-5, 5)
scales = st.floats(0.1, 5)
logits = st.floats(-8, 8)


def f64(*values):
    return [mg.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for v in values]


# ---------------------------------------------------------------------------------------------------------
# log_prob, entropy, mean and stddev against SciPy
# ---------------------------------------------------------------------------------------------------------

LOC_SCALE = [(D.Normal, scipy.stats.norm), (D.Laplace, scipy.stats.laplace),
             (D.Logistic, scipy.stats.logistic)]


@pytest.mark.parametrize("family,reference", LOC_SCALE, ids=lambda x: getattr(x, "__name__", ""))
@given(loc=st.lists(locs, min_size=3, max_size=3), scale=scales,
       x=st.lists(st.floats(-20, 20), min_size=3, max_size=3))
def test_location_scale_against_scipy(family, reference, loc, scale, x):
    d = family(*f64(loc, scale))
    ref = reference(loc=np.array(loc), scale=scale)
    np.testing.assert_allclose(d.log_prob(mg.tensor(np.array(x))).numpy(), ref.logpdf(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d.entropy().numpy(), ref.entropy(), rtol=1e-10)
    np.testing.assert_allclose(d.mean.numpy(), ref.mean(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d.stddev.numpy(), ref.std(), rtol=1e-12)
    assert d.batch_shape == (3,) and d.event_shape == ()


@given(low=locs, width=scales, x=st.lists(st.floats(-10, 10), min_size=4, max_size=4))
def test_uniform_against_scipy(low, width, x):
    d = D.Uniform(*f64(low, low + width))
    ref = scipy.stats.uniform(loc=low, scale=width)
    x = np.array(x + [low])                      # the lower end is inside the support
    lp = d.log_prob(mg.tensor(x)).numpy()
    inside = (x >= low) & (x < low + width)
    np.testing.assert_allclose(lp[inside], ref.logpdf(x[inside]), rtol=1e-10)
    assert np.all(lp[~inside] == -np.inf)
    np.testing.assert_allclose(d.entropy().numpy(), ref.entropy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d.mean.numpy(), ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(d.stddev.numpy(), ref.std(), rtol=1e-12)


@given(l=st.lists(logits, min_size=4, max_size=4), use_probs=st.booleans())
def test_bernoulli_against_scipy(l, use_probs):
    p = scipy.special.expit(np.array(l))
    d = D.Bernoulli(probs=mg.tensor(p)) if use_probs else D.Bernoulli(logits=mg.tensor(np.array(l)))
    for x in (0.0, 1.0):
        np.testing.assert_allclose(d.log_prob(mg.tensor(np.full(4, x))).numpy(),
                                   scipy.stats.bernoulli.logpmf(x, p), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(d.entropy().numpy(), scipy.stats.bernoulli.entropy(p), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(d.mean.numpy(), p, rtol=1e-8)
    np.testing.assert_allclose(d.stddev.numpy(), np.sqrt(p * (1 - p)), rtol=1e-7)


@given(l=st.lists(logits, min_size=5, max_size=5), k=st.integers(0, 4))
def test_categorical_against_scipy(l, k):
    d = D.Categorical(mg.tensor(np.array([l, l[::-1]])))
    p = scipy.special.softmax(np.array([l, l[::-1]]), axis=-1)
    expected = [scipy.stats.multinomial.logpmf(np.eye(5)[k], 1, p[i]) for i in range(2)]
    np.testing.assert_allclose(d.log_prob(np.array(k)).numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d.entropy().numpy(), scipy.stats.entropy(p, axis=-1), rtol=1e-9, atol=1e-12)
    assert d.batch_shape == (2,) and d.event_shape == ()


def test_categorical_log_prob_broadcasts_values_over_the_batch():
    l = np.log(np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))
    d = D.Categorical(mg.tensor(l))
    values = np.array([[0, 2], [1, 1], [2, 0]])             # sample shape (3,) + batch shape (2,)
    np.testing.assert_allclose(d.log_prob(mg.tensor(values)).numpy(), l[[0, 1], values], rtol=1e-12)
    with pytest.raises(TypeError, match="integer"):
        d.log_prob(np.array(1.0))


# ---------------------------------------------------------------------------------------------------------
# Sample moments: within 5 standard errors of the true mean and variance (20000 samples, fixed seed)
# ---------------------------------------------------------------------------------------------------------

CONTINUOUS = [
    lambda: D.Normal(mg.tensor([0.5, -2.0]), mg.tensor([1.5, 0.2])),
    lambda: D.Laplace(mg.tensor([0.5, -2.0]), mg.tensor([1.5, 0.2])),
    lambda: D.Logistic(mg.tensor([0.5, -2.0]), mg.tensor([1.5, 0.2])),
    lambda: D.Uniform(mg.tensor([0.5, -2.0]), mg.tensor([1.5, 3.0])),
    lambda: D.Bernoulli(logits=mg.tensor([0.3, -2.0])),
    lambda: D.Bernoulli(probs=mg.tensor([0.0, 1.0])),
]


@pytest.mark.parametrize("make", CONTINUOUS)
def test_sample_moments(make):
    d = make()
    x = d.sample((N_SAMPLES,))
    assert x.shape == (N_SAMPLES, 2) and x.dtype == np.float32 and not x.requires_grad
    x = x.numpy().astype(np.float64)
    mean, var = d.mean.numpy(), d.variance.numpy()
    assert np.all(np.abs(x.mean(0) - mean) <= 5 * np.sqrt(var / N_SAMPLES) + 1e-6)
    sq = (x - mean) ** 2
    assert np.all(np.abs(sq.mean(0) - var) <= 5 * sq.std(0) / np.sqrt(N_SAMPLES) + 1e-6)


def test_categorical_sample_frequencies():
    p = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    x = D.Categorical(mg.tensor(np.log(p))).sample((N_SAMPLES,))
    assert x.shape == (N_SAMPLES, 2) and x.dtype == np.int64
    freq = (x.numpy()[..., None] == np.arange(3)).mean(0)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / N_SAMPLES))


def test_samples_are_reproducible_and_keep_the_dtype():
    d = D.Normal(mg.tensor(np.zeros(3)), 1.0)
    mg.manual_seed(1)
    a = d.rsample((2,))
    mg.manual_seed(1)
    b = d.rsample((2,))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.dtype == np.float64 and a.shape == (2, 3)


# ---------------------------------------------------------------------------------------------------------
# KL divergence: closed form against a Monte Carlo estimate
# ---------------------------------------------------------------------------------------------------------

KL_PAIRS = [
    (lambda: D.Normal(mg.tensor([0.5, -1.0]), mg.tensor([1.5, 0.3])),
     lambda: D.Normal(mg.tensor([0.0, 1.0]), mg.tensor([1.0, 2.0]))),
    (lambda: D.Bernoulli(logits=mg.tensor([0.3, -2.0])), lambda: D.Bernoulli(probs=mg.tensor([0.6, 0.5]))),
    (lambda: D.Categorical(mg.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])),
     lambda: D.Categorical(mg.tensor([[1.0, 1.0, 0.0], [0.0, -1.0, 0.5]]))),
    (lambda: D.Independent(D.Normal(mg.tensor([[0.5, -1.0, 0.0]]), mg.tensor([[1.5, 0.3, 1.0]])), 1),
     lambda: D.Independent(D.Normal(mg.tensor([[0.0, 1.0, 0.2]]), mg.tensor([[1.0, 2.0, 0.8]])), 1)),
]


@pytest.mark.parametrize("make_p,make_q", KL_PAIRS)
def test_kl_against_monte_carlo(make_p, make_q):
    p, q = make_p(), make_q()
    kl = D.kl_divergence(p, q)
    assert kl.shape == p.batch_shape
    x = p.sample((N_SAMPLES,))
    log_ratio = (p.log_prob(x) - q.log_prob(x)).numpy().astype(np.float64)
    se = log_ratio.std(0) / np.sqrt(N_SAMPLES)
    assert np.all(np.abs(log_ratio.mean(0) - kl.numpy()) <= 5 * se + 1e-5)


def test_kl_of_a_distribution_with_itself_is_zero():
    for make_p, _ in KL_PAIRS:
        p = make_p()
        np.testing.assert_allclose(D.kl_divergence(p, p).numpy(), 0, atol=1e-6)


def test_kl_without_closed_form_is_a_clear_error():
    with pytest.raises(NotImplementedError, match="Normal and Laplace.*Monte Carlo"):
        D.kl_divergence(D.Normal(0.0, 1.0), D.Laplace(0.0, 1.0))
    p = D.Independent(D.Normal(mg.zeros(2, 3), 1.0), 1)
    with pytest.raises(NotImplementedError, match="event shapes"):
        D.kl_divergence(p, D.Independent(D.Normal(mg.zeros(2, 3), 1.0), 2))


# ---------------------------------------------------------------------------------------------------------
# Gradients: rsample, log_prob, entropy and KL all differentiate
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [D.Normal, D.Laplace, D.Logistic, D.Uniform])
def test_rsample_gradcheck(family):
    a, b = f64([0.3, -1.0, 2.0], [1.7, 0.5, 2.5])

    def draw(a, b):
        mg.manual_seed(0)       # the same noise at every evaluation
        return family(a, b).rsample((4,))

    assert mg.gradcheck(draw, [a, b])


def test_independent_rsample_gradcheck():
    loc, scale = f64([[0.3, -1.0], [0.0, 2.0]], [[1.7, 0.5], [0.2, 1.0]])

    def draw(loc, scale):
        mg.manual_seed(0)
        return D.Independent(D.Normal(loc, scale), 1).rsample((3,))

    assert mg.gradcheck(draw, [loc, scale])


def test_log_prob_entropy_and_kl_gradcheck():
    x = mg.tensor(np.array([0.2, -0.7, 1.5]), requires_grad=True)
    for family in (D.Normal, D.Laplace, D.Logistic):
        assert mg.gradcheck(lambda loc, scale, x: family(loc, scale).log_prob(x), f64([0.1, 0.5, -1.0], 1.3) + [x])
        assert mg.gradcheck(lambda scale: family(0.0, scale).entropy(), f64([0.5, 2.0]))
    assert mg.gradcheck(lambda l, t: D.Bernoulli(logits=l).log_prob(t), f64([0.3, -2.0], [0.0, 1.0]))
    assert mg.gradcheck(lambda p: D.Bernoulli(probs=p).entropy(), f64([0.3, 0.9]))
    assert mg.gradcheck(lambda l: D.Categorical(l).log_prob(np.array([2, 0])), f64([[0.1, 0.5, -1.0], [1, 2, 3]]))
    assert mg.gradcheck(lambda a, b: D.kl_divergence(D.Normal(a[0], a[1]), D.Normal(b[0], b[1])),
                        f64([0.3, 1.2], [-0.5, 0.7]))
    assert mg.gradcheck(lambda a, b: D.kl_divergence(D.Bernoulli(logits=a), D.Bernoulli(logits=b)),
                        f64([0.3, -1.2], [-0.5, 0.7]))
    assert mg.gradcheck(lambda a, b: D.kl_divergence(D.Categorical(a), D.Categorical(b)),
                        f64([[0.3, -1.2, 0.0]], [[-0.5, 0.7, 0.1]]))


def test_sample_cuts_the_graph_and_discrete_have_no_rsample():
    (loc,) = f64([0.0, 1.0])
    assert not D.Normal(loc, 1.0).sample().requires_grad
    assert D.Normal(loc, 1.0).rsample().requires_grad
    for d in (D.Bernoulli(logits=loc), D.Categorical(loc)):
        assert not d.has_rsample
        with pytest.raises(NotImplementedError, match="reparameterized"):
            d.rsample()
    with pytest.raises(NotImplementedError, match="mean"):
        _ = D.Categorical(loc).mean


# ---------------------------------------------------------------------------------------------------------
# Independent
# ---------------------------------------------------------------------------------------------------------


def test_independent_shapes_and_sums_over_event_dims():
    loc = mg.tensor(np.arange(24.0).reshape(2, 3, 4) / 10)
    base = D.Normal(loc, 0.5)
    for n in range(4):
        d = D.Independent(base, n)
        assert d.batch_shape == (2, 3, 4)[:3 - n] and d.event_shape == (2, 3, 4)[3 - n:]
        x = d.sample((5,))
        assert x.shape == (5, 2, 3, 4)
        lp = d.log_prob(x)
        assert lp.shape == (5,) + d.batch_shape
        np.testing.assert_allclose(lp.numpy(), base.log_prob(x).numpy().sum(axis=tuple(range(4 - n, 4))),
                                   rtol=1e-5)
        np.testing.assert_allclose(d.entropy().numpy(), base.entropy().numpy().sum(axis=tuple(range(3 - n, 3))),
                                   rtol=1e-5)
    diag = D.Independent(D.Normal(mg.tensor(np.zeros((2, 3))), mg.tensor(np.full((2, 3), 2.0))), 1)
    x = np.array([[0.5, -1.0, 2.0], [0.0, 0.1, 0.2]])
    ref = scipy.stats.multivariate_normal(np.zeros(3), 4 * np.eye(3))
    np.testing.assert_allclose(diag.log_prob(mg.tensor(x)).numpy(), ref.logpdf(x), rtol=1e-12)
    with pytest.raises(ValueError, match="cannot reinterpret"):
        D.Independent(base, 4)


# ---------------------------------------------------------------------------------------------------------
# Extreme logits in float32
# ---------------------------------------------------------------------------------------------------------


def test_extreme_logits_stay_finite_in_float32():
    big = mg.tensor(np.array([1e4, -1e4, 0.0], dtype=np.float32), requires_grad=True)
    b = D.Bernoulli(logits=big)
    other = D.Bernoulli(logits=-big)
    terms = [b.log_prob(mg.tensor(np.array([0.0, 1.0, 1.0], dtype=np.float32))), b.log_prob(mg.ones(3)),
             b.entropy(), D.kl_divergence(b, other), b.stddev]
    c = D.Categorical(mg.stack([big, -big]))
    terms += [c.log_prob(np.array([1, 0])), c.log_prob(np.array([2, 2])), c.entropy(),
              D.kl_divergence(c, D.Categorical(mg.stack([-big, big])))]
    for t in terms:
        assert t.dtype == np.float32
        assert np.all(np.isfinite(t.numpy()))
    np.testing.assert_allclose(terms[0].numpy(), [-1e4, -1e4, -math.log(2)], rtol=1e-6)
    sum(t.sum() for t in terms).backward()
    assert np.all(np.isfinite(big.grad.numpy()))
    assert np.all(np.isfinite(D.Bernoulli(probs=mg.tensor([0.0, 1.0])).log_prob(mg.tensor([1.0, 0.0])).numpy()))


# ---------------------------------------------------------------------------------------------------------
# CuPy arrays
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not mg.cuda_available(), reason="no CUDA GPU")
def test_on_gpu():
    loc = np.array([0.5, -1.0])
    for family in (D.Normal, D.Laplace, D.Logistic, D.Uniform):
        on_gpu, on_cpu = (family(mg.tensor(loc, device=dev), 2.0) for dev in ("cuda", "cpu"))
        x = on_gpu.rsample((1000,))
        assert x.device == "cuda" and x.shape == (1000, 2)
        np.testing.assert_allclose(on_gpu.log_prob(x).numpy(), on_cpu.log_prob(x.numpy()).numpy(), rtol=1e-12)
    l = np.array([[1e4, -1e4, 0.0]], dtype=np.float32)
    c, b = D.Categorical(mg.tensor(l, device="cuda")), D.Bernoulli(logits=mg.tensor(l, device="cuda"))
    assert c.sample((5,)).device == "cuda" and b.sample((5,)).device == "cuda"
    assert np.all(np.isfinite(c.log_prob(np.array([1])).numpy()))
    assert np.all(np.isfinite(D.kl_divergence(b, D.Bernoulli(logits=mg.tensor(-l, device="cuda"))).numpy()))
