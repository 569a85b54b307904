"""PyTorch as the oracle: values, first and second derivatives of minigen's ops against torch's, in float64.

The second order is the Hessian-vector product: with v, w random, d/dx <w, d/dx <v, f(x)>> for every input
x. For the piecewise-linear ops (relu, leaky_relu, abs, hardtanh, clip, relu6, max_pool2d, avg_pool2d) that
is an exact zero in both engines, where minigen used to raise "not used in the graph". Skipped without torch
(`pip install torch`; CI installs the CPU wheel).
"""
import numpy as np
import pytest

import minigen as mg
import minigen.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _draw(shape, rng, low=-2.0, high=2.0, avoid=()):
    """Values in [low, high], at least 0.05 from each kink in `avoid`."""
    x = rng.uniform(low, high, size=shape)
    for a in avoid:
        x = np.where(np.abs(x - a) < 0.05, a + 0.1, x)
    return x


# name: (minigen fn, torch fn, input shapes, (low, high), kinks to avoid)
EYE3, T_EYE3 = 3 * np.eye(3), 3 * torch.eye(3, dtype=torch.float64)    # keeps the matrices well conditioned

PIECEWISE_LINEAR = {
    "relu": (mg.relu, torch.relu, [(3, 4)], (-2, 2), (0,)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2), [(3, 4)], (-2, 2), (0,)),
    "abs": (mg.abs, torch.abs, [(3, 4)], (-2, 2), (0,)),
    "hardtanh": (F.hardtanh, TF.hardtanh, [(3, 4)], (-2, 2), (-1, 1)),
    "clip": (lambda x: mg.clip(x, -0.5, 1.0), lambda x: torch.clamp(x, -0.5, 1.0), [(3, 4)], (-2, 2), (-0.5, 1)),
    "relu6": (F.relu6, TF.relu6, [(3, 4)], (-3, 8), (0, 6)),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2, 1, 1), lambda x: TF.max_pool2d(x, 2, 1, 1), [(2, 2, 5, 4)],
                   (-2, 2), ()),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2, 2, 1), lambda x: TF.avg_pool2d(x, 2, 2, 1), [(2, 2, 5, 4)],
                   (-2, 2), ()),
}

SMOOTH = {
    "exp": (mg.exp, torch.exp, [(3, 4)], (-2, 2), ()),
    "log": (mg.log, torch.log, [(3, 4)], (0.2, 3), ()),
    "tanh": (mg.tanh, torch.tanh, [(3, 4)], (-2, 2), ()),
    "sigmoid": (mg.sigmoid, torch.sigmoid, [(3, 4)], (-3, 3), ()),
    "softplus": (mg.softplus, TF.softplus, [(3, 4)], (-3, 3), ()),
    "elu": (F.elu, TF.elu, [(3, 4)], (-2, 2), (0,)),
    "gelu": (F.gelu, TF.gelu, [(3, 4)], (-2, 2), ()),
    "silu": (F.silu, TF.silu, [(3, 4)], (-2, 2), ()),
    "erf": (mg.erf, torch.erf, [(3, 4)], (-2, 2), ()),
    "softmax": (lambda x: mg.softmax(x, 1), lambda x: torch.softmax(x, 1), [(3, 4)], (-2, 2), ()),
    "log_softmax": (lambda x: mg.log_softmax(x, 0), lambda x: torch.log_softmax(x, 0), [(3, 4)], (-2, 2), ()),
    "logsumexp": (lambda x: mg.logsumexp(x, 1), lambda x: torch.logsumexp(x, 1), [(3, 4)], (-2, 2), ()),
    "mul": (lambda a, b: a * b, torch.mul, [(3, 4), (4,)], (-2, 2), ()),
    "div": (lambda a, b: a / b, torch.div, [(3, 4), (3, 1)], (0.5, 2), ()),
    "pow": (lambda a, b: a ** b, torch.pow, [(3, 4), (4,)], (0.5, 2), ()),
    "matmul": (lambda a, b: a @ b, torch.matmul, [(2, 3, 4), (4, 2)], (-2, 2), ()),
    "conv2d": (lambda x, w: F.conv2d(x, w, stride=2, padding=1), lambda x, w: TF.conv2d(x, w, stride=2, padding=1),
               [(2, 2, 5, 5), (3, 2, 3, 3)], (-2, 2), ()),
    "conv_transpose2d": (lambda x, w: F.conv_transpose2d(x, w, stride=2),
                         lambda x, w: TF.conv_transpose2d(x, w, stride=2), [(2, 2, 3, 3), (2, 3, 2, 2)], (-2, 2), ()),
    "inv": (lambda a: mg.inv(a + EYE3), lambda a: torch.linalg.inv(a + T_EYE3), [(3, 3)], (-1, 1), ()),
    "logdet": (lambda a: mg.slogdet(a + EYE3)[1], lambda a: torch.linalg.slogdet(a + T_EYE3)[1], [(2, 3, 3)],
               (-1, 1), ()),
    "binary_cross_entropy_with_logits": (
        lambda x, t: F.binary_cross_entropy_with_logits(x, t), lambda x, t: TF.binary_cross_entropy_with_logits(x, t),
        [(3, 4), (3, 4)], (-2, 2), ()),
}


def _compare(case, seed=0, reached=False):
    """Values (to 1e-10), gradients and Hessian-vector products (to 1e-8: torch's trigamma and SciPy's differ
    at 5e-10) against torch. reached: every input must be reachable from the gradients' graph (no
    allow_unused), as the piecewise-linear ops' inputs now are."""
    fn, tfn, shapes, (low, high), avoid = case
    rng = np.random.default_rng(seed)
    arrays = [_draw(s, rng, low, high, avoid) for s in shapes]
    xs = [mg.tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, ty = fn(*xs), tfn(*ts)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    v = rng.standard_normal(y.shape)
    gs = mg.grad(y, xs, mg.tensor(v), create_graph=True)
    tgs = torch.autograd.grad(ty, ts, torch.tensor(v), create_graph=True)
    for g, tg in zip(gs, tgs):
        np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), rtol=1e-8, atol=1e-12)
    w = [rng.standard_normal(g.shape) for g in gs]
    # a gradient that is constant in every input has no graph (torch.clamp's, or any linear op's): its
    # derivatives are zeros
    live = [(g, wi) for g, wi in zip(gs, w) if g.requires_grad]
    assert live or not reached
    hs = mg.grad([g for g, _ in live], xs, [mg.tensor(wi) for _, wi in live], allow_unused=not reached) \
        if live else [None] * len(xs)
    tlive = [(g, wi) for g, wi in zip(tgs, w) if g.requires_grad]
    ths = torch.autograd.grad([g for g, _ in tlive], ts, [torch.tensor(wi) for _, wi in tlive], allow_unused=True,
                              materialize_grads=True) if tlive else [torch.zeros(t.shape) for t in ts]
    hs = [np.zeros(x.shape) if h is None else h.numpy() for x, h in zip(xs, hs)]
    for h, th in zip(hs, ths):
        np.testing.assert_allclose(h, th.numpy(force=True), rtol=1e-8, atol=1e-12)
    return hs


@pytest.mark.parametrize("name", sorted(PIECEWISE_LINEAR))
def test_piecewise_linear_second_derivatives_are_zeros_as_in_torch(name):
    hs = _compare(PIECEWISE_LINEAR[name], reached=True)
    assert all(np.array_equal(h, np.zeros(h.shape)) for h in hs)


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_smooth_ops_to_second_order(name):
    _compare(SMOOTH[name])


def test_sign_has_a_zero_first_derivative_as_in_torch():
    x = mg.tensor([-1.5, 0.0, 2.0], dtype="float64", requires_grad=True)
    t = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    g, = mg.grad(mg.sign(x).sum(), [x])
    tg, = torch.autograd.grad(torch.sign(t).sum(), [t])
    np.testing.assert_array_equal(g.numpy(), tg.numpy())


def test_hessian_of_a_relu_network_in_its_input_as_in_torch():
    """The Laplacian / gradient-penalty pattern: differentiate a ReLU network's input gradient again, in the
    input (zeros: the network is piecewise linear) and in the weights (not zero)."""
    rng = np.random.default_rng(1)
    x, w1, w2 = rng.standard_normal((5, 3)), rng.standard_normal((3, 8)), rng.standard_normal((8, 1))

    def penalty(lib, x, w1, w2):
        relu = mg.relu if lib is mg else torch.relu
        grad = mg.grad if lib is mg else torch.autograd.grad
        out = (relu(x @ w1) @ w2).sum()
        g, = grad(out, [x], create_graph=True)
        return (g * g).sum()

    xs = [mg.tensor(a, requires_grad=True) for a in (x, w1, w2)]
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w1, w2)]
    ours = mg.grad(penalty(mg, *xs), xs)
    theirs = torch.autograd.grad(penalty(torch, *ts), ts)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10)
    assert not ours[0].numpy().any() and ours[1].numpy().any()


# nn.functional against torch.nn.functional, values and first and second derivatives (issue 13, point 4)
FUNCTIONAL = {
    **{f"pad_{mode}": (lambda x, m=mode: F.pad(x, (1, 2, 2, 0), mode=m),
                       lambda x, m=mode: TF.pad(x, (1, 2, 2, 0), mode=m), [(2, 2, 3, 4)], (-2, 2), ())
       for mode in ("constant", "reflect", "replicate", "circular")},
    "pad_value": (lambda x: F.pad(x, (1, 1), value=2.5), lambda x: TF.pad(x, (1, 1), value=2.5), [(3, 4)], (-2, 2), ()),
    "interpolate_size": (lambda x: F.interpolate(x, (5, 7)), lambda x: TF.interpolate(x, (5, 7)), [(1, 2, 3, 4)],
                         (-2, 2), ()),
    "interpolate_scale": (lambda x: F.interpolate(x, scale_factor=1.5), lambda x: TF.interpolate(x, scale_factor=1.5),
                          [(1, 2, 3, 4)], (-2, 2), ()),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (4,), w, b), lambda x, w, b: TF.layer_norm(x, (4,), w, b),
                   [(3, 4), (4,), (4,)], (-2, 2), ()),
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b), lambda x, w, b: TF.group_norm(x, 2, w, b),
                   [(2, 4, 3), (4,), (4,)], (-2, 2), ()),
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                         lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True),
                         [(4, 3, 2), (3,), (3,)], (-2, 2), ()),
    "embedding": (lambda w: F.embedding(mg.tensor([[0, 3], [3, 1]]), w),
                  lambda w: TF.embedding(torch.tensor([[0, 3], [3, 1]]), w), [(4, 3)], (-2, 2), ()),
    "gaussian_nll_below_eps": (lambda x, v: F.gaussian_nll_loss(x, mg.zeros_like(x), v, eps=0.1),
                               lambda x, v: TF.gaussian_nll_loss(x, torch.zeros_like(x), v, eps=0.1),
                               [(3, 4), (3, 4)], (0.01, 0.3), ()),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_functional_forms_to_second_order(name):
    _compare(FUNCTIONAL[name])


def test_batch_norm_running_statistics_as_in_torch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3, 2))
    mean, var = mg.zeros(3, dtype="float64"), mg.ones(3, dtype="float64")
    t_mean, t_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for _ in range(2):
        F.batch_norm(mg.tensor(x), mean, var, training=True, momentum=0.3)
        TF.batch_norm(torch.tensor(x), t_mean, t_var, training=True, momentum=0.3)
    np.testing.assert_allclose(mean.numpy(), t_mean.numpy())
    np.testing.assert_allclose(var.numpy(), t_var.numpy())
    np.testing.assert_allclose(F.batch_norm(mg.tensor(x), mean, var).numpy(),
                               TF.batch_norm(torch.tensor(x), t_mean, t_var).numpy())


def _spd(lib):
    eye = np.eye(3) if lib is mg else torch.eye(3, dtype=torch.float64)
    return lambda a: a @ a.mT + eye


# the ops added for issue 13 point 7, against torch to second order
NEW_OPS = {
    "logaddexp": (mg.logaddexp, torch.logaddexp, [(3, 4), (4,)], (-2, 2), ()),
    "lgamma": (mg.lgamma, torch.lgamma, [(3, 4)], (0.3, 4), ()),
    "digamma": (mg.digamma, torch.digamma, [(3, 4)], (0.3, 4), ()),
    "erfinv": (mg.erfinv, torch.erfinv, [(3, 4)], (-0.9, 0.9), ()),
    "xlogy": (mg.xlogy, torch.xlogy, [(3, 4), (3, 4)], (0.2, 2), ()),
    "atan2": (mg.atan2, torch.atan2, [(3, 4), (3, 4)], (0.2, 2), ()),
    "cumprod": (lambda x: mg.cumprod(x, 1), lambda x: torch.cumprod(x, 1), [(3, 4)], (-2, 2), ()),
    "logcumsumexp": (lambda x: mg.logcumsumexp(x, 0), lambda x: torch.logcumsumexp(x, 0), [(3, 4)], (-2, 2), ()),
    "vector_norm": (lambda x: mg.vector_norm(x, 2, 1), lambda x: torch.linalg.vector_norm(x, 2, 1), [(3, 4)],
                    (-2, 2), ()),
    "vector_norm_3": (lambda x: mg.vector_norm(x, 3), lambda x: torch.linalg.vector_norm(x, 3), [(3, 4)], (-2, 2),
                      (0,)),
    "tril": (lambda x: mg.tril(x, -1) ** 2, lambda x: torch.tril(x, -1) ** 2, [(2, 3, 4)], (-2, 2), ()),
    "triu": (lambda x: mg.triu(x, 1) ** 2, lambda x: torch.triu(x, 1) ** 2, [(2, 3, 4)], (-2, 2), ()),
    "diagonal": (lambda x: mg.diagonal(x, 1, 1, 2) ** 2, lambda x: torch.diagonal(x, 1, 1, 2) ** 2, [(2, 3, 4)],
                 (-2, 2), ()),
    "roll": (lambda x: mg.roll(x, (1, -2), (0, 1)) ** 2, lambda x: torch.roll(x, (1, -2), (0, 1)) ** 2, [(3, 4)],
             (-2, 2), ()),
    "scatter_add": (lambda x, s: mg.scatter_add(x, 1, IDX, s) ** 2,
                    lambda x, s: torch.scatter_add(x, 1, torch.tensor(IDX), s) ** 2, [(3, 4), (3, 5)], (-2, 2), ()),
    "index_add": (lambda x, s: mg.index_add(x, 0, [2, 0, 2], s) ** 2,
                  lambda x, s: torch.index_add(x, 0, torch.tensor([2, 0, 2]), s) ** 2, [(3, 4), (3, 4)], (-2, 2), ()),
    "sort": (lambda x: mg.sort(x, 1)[0] ** 2, lambda x: torch.sort(x, 1)[0] ** 2, [(3, 4)], (-2, 2), ()),
    "topk": (lambda x: mg.topk(x, 2, 0)[0] ** 2, lambda x: torch.topk(x, 2, 0)[0] ** 2, [(3, 4)], (-2, 2), ()),
    "pixel_shuffle": (lambda x: F.pixel_shuffle(x, 2) ** 2, lambda x: TF.pixel_shuffle(x, 2) ** 2, [(1, 8, 2, 3)],
                      (-2, 2), ()),
    "pixel_unshuffle": (lambda x: F.pixel_unshuffle(x, 2) ** 2, lambda x: TF.pixel_unshuffle(x, 2) ** 2,
                        [(1, 2, 4, 6)], (-2, 2), ()),
    "cholesky": (lambda a: mg.cholesky(_spd(mg)(a)), lambda a: torch.linalg.cholesky(_spd(torch)(a)), [(2, 3, 3)],
                 (-1, 1), ()),
    "qr": (lambda a: mg.concatenate(mg.qr(a + EYE_TALL), -2), lambda a: torch.cat(torch.linalg.qr(a + T_EYE_TALL), -2),
           [(2, 5, 3)], (-1, 1), ()),
    "conv1d": (lambda x, w: F.conv1d(x, w, stride=2, padding=1), lambda x, w: TF.conv1d(x, w, stride=2, padding=1),
               [(2, 2, 7), (3, 2, 3)], (-2, 2), ()),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)) ** 2,
                            lambda x: TF.adaptive_avg_pool2d(x, (3, 2)) ** 2, [(1, 2, 5, 4)], (-2, 2), ()),
    "scaled_dot_product_attention": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True), [(2, 4, 3), (2, 4, 3), (2, 4, 2)],
        (-2, 2), ()),
    "nll_loss": (lambda x: F.nll_loss(mg.log_softmax(x, 1), LABELS, W5),
                 lambda x: TF.nll_loss(torch.log_softmax(x, 1), torch.tensor(LABELS), torch.tensor(W5)), [(4, 5)],
                 (-2, 2), ()),
    "cross_entropy": (lambda x: F.cross_entropy(x, LABELS), lambda x: TF.cross_entropy(x, torch.tensor(LABELS)),
                      [(4, 5)], (-2, 2), ()),
    "cross_entropy_sum_2d": (lambda x: F.cross_entropy(x, LABELS_2D, reduction="sum"),
                             lambda x: TF.cross_entropy(x, torch.tensor(LABELS_2D), reduction="sum"), [(2, 5, 2, 1)],
                             (-2, 2), ()),
    "cross_entropy_ignore": (lambda x: F.cross_entropy(x, LABELS, ignore_index=1),
                             lambda x: TF.cross_entropy(x, torch.tensor(LABELS), ignore_index=1), [(4, 5)],
                             (-2, 2), ()),
    "l1_loss": (lambda x, t: F.l1_loss(x, t), lambda x, t: TF.l1_loss(x, t), [(3, 4), (3, 4)], (-2, 2), ()),
    "smooth_l1_loss": (lambda x, t: F.smooth_l1_loss(x, t, beta=0.5), lambda x, t: TF.smooth_l1_loss(x, t, beta=0.5),
                       [(3, 4), (3, 4)], (-2, 2), ()),
    "kl_div": (lambda x, t: F.kl_div(x, t, reduction="batchmean"), lambda x, t: TF.kl_div(x, t, reduction="batchmean"),
               [(3, 4), (3, 4)], (0.1, 1), ()),
}
IDX = np.array([[0, 3, 3, 1, 2], [1, 1, 0, 2, 3], [3, 2, 1, 0, 0]])
LABELS, W5 = np.array([0, 4, 1, 1]), np.array([1.0, 0.5, 2.0, 1.5, 0.7])
LABELS_2D = np.array([[[3], [0]], [[4], [4]]])
EYE_TALL, T_EYE_TALL = 3 * np.eye(5, 3), 3 * torch.eye(5, 3, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(NEW_OPS))
def test_new_ops_to_second_order(name):
    _compare(NEW_OPS[name])


def test_nn_functional_takes_pytorchs_positional_arguments():
    """Every name that torch.nn.functional also has: each positional parameter sits where PyTorch's has the
    same one (minigen's `axis` for PyTorch's `dim`); the rest is keyword-only."""
    import inspect
    alias = {"axis": "dim", "x": "input", "indices": "input"}
    checked = 0
    for name in sorted(n for n in dir(F) if not n.startswith("_") and hasattr(TF, n)):
        try:
            theirs = list(inspect.signature(getattr(TF, name)).parameters)
        except (TypeError, ValueError):        # a builtin without a signature
            continue
        if theirs[:1] == ["args"]:             # a dispatcher (max_pool2d)
            continue
        ours = [alias.get(p.name, p.name) for p in inspect.signature(getattr(F, name)).parameters.values()
                if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert ours == theirs[:len(ours)], (name, ours, theirs)
        checked += 1
    assert checked >= 25
