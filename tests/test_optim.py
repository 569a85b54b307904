"""minigen.optim: optimizers against updates written out from the papers' equations and against torch.optim,
state dicts through .npz + JSON, schedules against their closed forms, clipping, EMA."""
import io
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen as mg
from minigen import optim

try:
    import torch
except ImportError:  # the comparisons with PyTorch are skipped without it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

# A small quadratic: loss = 1/2 sum A (p - c)^2 over two parameters, gradient A (p - c).
A = [np.array([[1.0, 3.0], [0.5, 2.0]]), np.array([4.0, 0.2, 1.5])]
C = [np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([-1.0, 2.0, 0.0])]
P0 = [np.array([[0.3, 0.1], [-0.7, 1.2]]), np.array([0.5, -0.4, 2.0])]


def make_params(dtype="float64"):
    return [mg.tensor(p, dtype=dtype, requires_grad=True) for p in P0]


def quadratic_step(params, opt):
    opt.zero_grad()
    loss = sum(((mg.tensor(a, dtype=p.dtype) * (p - mg.tensor(c, dtype=p.dtype)) ** 2).sum() * 0.5
                for p, a, c in zip(params, A, C)))
    loss.backward()
    opt.step()


def run(make_opt, steps, dtype="float64"):
    params = make_params(dtype)
    opt = make_opt(params)
    for _ in range(steps):
        quadratic_step(params, opt)
    return [p.numpy() for p in params]


# ---------------------------------------------------------------------------------------------------------
# Updates written out by hand from the equations, three steps on one parameter with given gradients
# ---------------------------------------------------------------------------------------------------------

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.3, -0.2]), np.array([-0.4, 0.8, 1.0])]
THETA0 = np.array([1.0, -2.0, 0.5])


def apply_grads(opt_cls, **kw):
    p = mg.tensor(THETA0, requires_grad=True)
    opt = opt_cls([p], **kw)
    for g in GRADS:
        p.grad = mg.tensor(g)
        opt.step()
        assert p.creator is None
    return p.numpy()


def test_sgd_momentum_by_hand():
    lr, mu, tau, lam = 0.1, 0.9, 0.2, 0.01
    theta = THETA0.copy()
    b = None
    for g in GRADS:
        g = g + lam * theta
        b = g.copy() if b is None else mu * b + (1 - tau) * g
        theta = theta - lr * b
    got = apply_grads(optim.SGD, lr=lr, momentum=mu, dampening=tau, weight_decay=lam)
    np.testing.assert_allclose(got, theta, rtol=1e-14)


def test_sgd_nesterov_by_hand():
    lr, mu = 0.1, 0.9
    g1, g2, g3 = GRADS
    b1 = g1
    t1 = THETA0 - lr * (g1 + mu * b1)
    b2 = mu * b1 + g2
    t2 = t1 - lr * (g2 + mu * b2)
    b3 = mu * b2 + g3
    t3 = t2 - lr * (g3 + mu * b3)
    np.testing.assert_allclose(apply_grads(optim.SGD, lr=lr, momentum=mu, nesterov=True), t3, rtol=1e-14)


def test_plain_sgd_by_hand():
    expected = THETA0 - 0.1 * sum(GRADS)
    np.testing.assert_allclose(apply_grads(optim.SGD, lr=0.1), expected, rtol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_by_hand(decoupled):
    """Kingma & Ba 2015, Algorithm 1 with bias-corrected moments m_hat, v_hat; AdamW (Loshchilov & Hutter
    2019, Algorithm 2) multiplies theta by (1 - lr lambda) first instead of adding lambda theta to g."""
    lr, b1, b2, eps, lam = 0.01, 0.8, 0.95, 1e-6, 0.1
    theta, m, v = THETA0.copy(), 0.0, 0.0
    for t, g in enumerate(GRADS, start=1):
        if decoupled:
            theta = theta * (1 - lr * lam)
        else:
            g = g + lam * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    cls = optim.AdamW if decoupled else optim.Adam
    got = apply_grads(cls, lr=lr, betas=(b1, b2), eps=eps, weight_decay=lam)
    np.testing.assert_allclose(got, theta, rtol=1e-13)


def test_amsgrad_by_hand():
    lr, b1, b2, eps = 0.01, 0.9, 0.5, 1e-8
    theta, m, v, v_max = THETA0.copy(), 0.0, 0.0, 0.0
    for t, g in enumerate(GRADS, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        v_max = np.maximum(v_max, v)
        theta = theta - lr / (1 - b1 ** t) * m / (np.sqrt(v_max / (1 - b2 ** t)) + eps)
    got = apply_grads(optim.Adam, lr=lr, betas=(b1, b2), eps=eps, amsgrad=True)
    np.testing.assert_allclose(got, theta, rtol=1e-13)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_rmsprop_by_hand(centered, mu):
    lr, alpha, eps, lam = 0.01, 0.9, 1e-8, 0.05
    theta, v, a, b = THETA0.copy(), 0.0, 0.0, 0.0
    for g in GRADS:
        g = g + lam * theta
        v = alpha * v + (1 - alpha) * g ** 2
        a = alpha * a + (1 - alpha) * g
        d = g / (np.sqrt(v - a ** 2 if centered else v) + eps)
        b = mu * b + d
        theta = theta - lr * (b if mu > 0 else d)
    got = apply_grads(optim.RMSprop, lr=lr, alpha=alpha, eps=eps, weight_decay=lam, momentum=mu,
                      centered=centered)
    np.testing.assert_allclose(got, theta, rtol=1e-13)


def test_step_leaves_gradients_alone_and_skips_params_without_grad():
    p, q = mg.tensor(THETA0, requires_grad=True), mg.tensor(THETA0, requires_grad=True)
    opt = optim.SGD([p, q], lr=0.1, momentum=0.9)
    p.grad = mg.tensor(GRADS[0])
    opt.step()
    opt.step()
    np.testing.assert_array_equal(p.grad.numpy(), GRADS[0])
    np.testing.assert_array_equal(q.numpy(), THETA0)
    opt.zero_grad()
    assert p.grad is None and q.grad is None


# ---------------------------------------------------------------------------------------------------------
# Against torch.optim over ten steps of the quadratic
# ---------------------------------------------------------------------------------------------------------

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.1)),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.05)),
    ("AdamW", dict(lr=0.05, betas=(0.5, 0.99), weight_decay=0.3, amsgrad=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.8, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5)),
]


def torch_run(name, kw, steps, groups=None):
    params = [torch.tensor(p, requires_grad=True) for p in P0]
    spec = params if groups is None else [{**g, "params": [params[i]]} for i, g in enumerate(groups)]
    opt = getattr(torch.optim, name)(spec, **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum((torch.tensor(a) * (p - torch.tensor(c)) ** 2).sum() * 0.5 for p, a, c in zip(params, A, C))
        loss.backward()
        opt.step()
    return [p.detach().numpy() for p in params]


@needs_torch
@pytest.mark.parametrize("name,kw", CONFIGS)
def test_against_torch(name, kw):
    ours = run(lambda ps: getattr(optim, name)(ps, **kw), 10)
    for o, t in zip(ours, torch_run(name, kw, 10)):
        np.testing.assert_allclose(o, t, rtol=1e-12, atol=1e-14)


@needs_torch
def test_parameter_groups_against_torch():
    groups = [{"lr": 0.01, "betas": (0.5, 0.6)}, {"weight_decay": 0.2}]
    ours = run(lambda ps: optim.Adam([{**g, "params": [p]} for g, p in zip(groups, ps)], lr=0.1), 10)
    for o, t in zip(ours, torch_run("Adam", dict(lr=0.1), 10, groups)):
        np.testing.assert_allclose(o, t, rtol=1e-12, atol=1e-14)


def test_float32_parameters_stay_float32():
    for name, kw in CONFIGS:
        out = run(lambda ps: getattr(optim, name)(ps, **kw), 3, dtype="float32")
        assert all(o.dtype == np.float32 for o in out), name


def test_bad_arguments():
    p = mg.tensor(THETA0, requires_grad=True)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(ValueError, match="more than one"):
        optim.Adam([p, p])
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        optim.SGD([{"params": [p], "betas": (0.9, 0.9)}])


# ---------------------------------------------------------------------------------------------------------
# State dicts: through .npz (no pickle) + JSON, and resuming is bit-for-bit
# ---------------------------------------------------------------------------------------------------------


def through_npz_and_json(state):
    """Write `state` as a checkpoint would: arrays into an .npz, everything else into JSON; read it back."""
    arrays = {}

    def split(x, path):
        if isinstance(x, np.ndarray):
            arrays[path] = x
            return {"__array__": path}
        if isinstance(x, dict):
            return {str(k): split(v, f"{path}/{k}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [split(v, f"{path}/{i}") for i, v in enumerate(x)]
        assert x is None or type(x) in (int, float, bool, str), f"{path}: {type(x).__name__} is not JSON-able"
        return x

    text = json.dumps(split(state, ""))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    loaded = np.load(buf, allow_pickle=False)

    def join(x):
        if isinstance(x, dict):
            return loaded[x["__array__"]] if set(x) == {"__array__"} else {k: join(v) for k, v in x.items()}
        return [join(v) for v in x] if isinstance(x, list) else x

    return join(json.loads(text))


@pytest.mark.parametrize("name,kw", CONFIGS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resume_from_state_dict_is_bit_for_bit(name, kw, dtype):
    def make(ps):
        groups = [{"params": [ps[0]], "lr": kw["lr"] / 2}, {"params": [ps[1]]}]
        return getattr(optim, name)(groups, **kw)

    def schedule(opt):
        return optim.LinearWarmup(opt, 3, after=optim.CosineAnnealingLR(opt, T_max=8))

    params = make_params(dtype)
    opt = make(params)
    sched = schedule(opt)
    for _ in range(10):
        quadratic_step(params, opt)
        sched.step()
    straight = [p.numpy() for p in params]

    params = make_params(dtype)
    opt = make(params)
    sched = schedule(opt)
    for _ in range(4):
        quadratic_step(params, opt)
        sched.step()
    saved = through_npz_and_json({"params": [p.numpy() for p in params], "optim": opt.state_dict(),
                                  "sched": sched.state_dict()})
    quadratic_step(params, opt)   # moves on after saving: the saved copy must not change

    params = [mg.tensor(p, requires_grad=True) for p in saved["params"]]
    opt = make(params)
    sched = schedule(opt)
    opt.load_state_dict(saved["optim"])
    sched.load_state_dict(saved["sched"])
    for _ in range(6):
        quadratic_step(params, opt)
        sched.step()
    for s, r in zip(straight, params):
        assert r.dtype == s.dtype
        np.testing.assert_array_equal(r.numpy(), s)


# ---------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------


def lr_sequence(make_sched, steps=25, lr=0.5):
    opt = optim.SGD([mg.tensor(THETA0, requires_grad=True)], lr=lr)
    sched = make_sched(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        assert sched.get_last_lr() == [lrs[-1]]
        sched.step()
    return lrs


def test_schedules_closed_forms():
    t = np.arange(25)
    np.testing.assert_allclose(lr_sequence(lambda o: optim.StepLR(o, 7, gamma=0.5)), 0.5 * 0.5 ** (t // 7))
    np.testing.assert_allclose(lr_sequence(lambda o: optim.ExponentialLR(o, 0.9)), 0.5 * 0.9 ** t)
    np.testing.assert_allclose(lr_sequence(lambda o: optim.CosineAnnealingLR(o, 10, eta_min=0.1)),
                               0.1 + 0.4 * (1 + np.cos(np.pi * t / 10)) / 2)
    np.testing.assert_allclose(lr_sequence(lambda o: optim.LinearWarmup(o, 4)),
                               0.5 * np.minimum(1, (t + 1) / 4))
    warm_cos = lr_sequence(lambda o: optim.LinearWarmup(o, 5, after=optim.CosineAnnealingLR(o, 20)))
    np.testing.assert_allclose(warm_cos, np.where(t < 5, 0.5 * (t + 1) / 5,
                                                  0.25 * (1 + np.cos(np.pi * (t - 5) / 20))))


@needs_torch
def test_schedules_against_torch():
    def torch_lrs(make, steps=25):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        sched = make(opt)
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    S = torch.optim.lr_scheduler
    pairs = [
        (lambda o: optim.StepLR(o, 7, gamma=0.5), lambda o: S.StepLR(o, 7, gamma=0.5)),
        (lambda o: optim.ExponentialLR(o, 0.9), lambda o: S.ExponentialLR(o, 0.9)),
        (lambda o: optim.CosineAnnealingLR(o, 10, 0.1), lambda o: S.CosineAnnealingLR(o, 10, 0.1)),
        (lambda o: optim.LinearWarmup(o, 5, after=optim.ExponentialLR(o, 0.8)),
         lambda o: S.SequentialLR(o, [S.LinearLR(o, 1 / 5, total_iters=4), S.ExponentialLR(o, 0.8)], [5])),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(lr_sequence(ours), torch_lrs(theirs), rtol=1e-10)


def test_scheduler_state_dict():
    opt = optim.SGD([mg.tensor(THETA0, requires_grad=True)], lr=1.0)
    sched = optim.StepLR(opt, 2)
    for _ in range(5):
        sched.step()
    fresh = optim.StepLR(optim.SGD([mg.tensor(THETA0, requires_grad=True)], lr=1.0), 2)
    fresh.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    fresh.step()
    sched.step()
    assert fresh.get_last_lr() == sched.get_last_lr() == [pytest.approx(1e-3)]


# ---------------------------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------------------------


def with_grads(grads):
    params = []
    for g in grads:
        p = mg.tensor(np.zeros_like(g), requires_grad=True)
        p.grad = mg.tensor(g)
        params.append(p)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm(norm_type):
    grads = [np.array([3.0, -4.0]), np.array([[1.0, 2.0], [-2.0, 0.5]])]
    flat = np.concatenate([g.ravel() for g in grads])
    expected = np.linalg.norm(flat, ord=norm_type)
    params = with_grads(grads)
    total = optim.clip_grad_norm_(params, 1.5, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(expected, rel=1e-12)
    clipped = np.concatenate([p.grad.numpy().ravel() for p in params])
    np.testing.assert_allclose(clipped, flat * 1.5 / (expected + 1e-6), rtol=1e-12)
    # under the bound: untouched
    params = with_grads(grads)
    assert optim.clip_grad_norm_(params, 100.0, norm_type) == pytest.approx(expected)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.numpy(), g)


def test_clip_grad_norm_never_scales_a_shared_gradient_twice():
    g = mg.tensor(np.array([3.0, 4.0]))
    p, q = mg.tensor(np.zeros(2), requires_grad=True), mg.tensor(np.zeros(2), requires_grad=True)
    p.grad = q.grad = g
    total = optim.clip_grad_norm_([p, q], 1.0)
    assert total == pytest.approx(np.sqrt(50))
    np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy())
    np.testing.assert_allclose(p.grad.numpy(), [3 / np.sqrt(50), 4 / np.sqrt(50)], rtol=1e-6)
    np.testing.assert_array_equal(g.numpy(), [3.0, 4.0])     # the caller's tensor is left alone
    assert p.grad.data is not q.grad.data


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=8), st.floats(0.01, 10))
def test_clip_grad_norm_bound(values, max_norm):
    params = with_grads([np.array(values)])
    total = optim.clip_grad_norm_(params, max_norm)
    after = np.linalg.norm(params[0].grad.numpy())
    assert after <= max_norm * (1 + 1e-9)
    assert after == pytest.approx(min(total, max_norm), rel=1e-5, abs=1e-6)


@needs_torch
def test_clip_grad_norm_against_torch():
    grads = [np.array([3.0, -4.0, 0.1]), np.array([[1.0, 2.0], [-2.0, 0.5]])]
    tp = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(tp, grads):
        p.grad = torch.tensor(g)
    t_total = torch.nn.utils.clip_grad_norm_(tp, 2.0)
    params = with_grads(grads)
    assert optim.clip_grad_norm_(params, 2.0) == pytest.approx(float(t_total), rel=1e-14)
    for p, t in zip(params, tp):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-14)


def test_clip_grad_value_and_weights():
    params = with_grads([np.array([-3.0, 0.2, 5.0])])
    optim.clip_grad_value_(params, 1.0)
    np.testing.assert_array_equal(params[0].grad.numpy(), [-1.0, 0.2, 1.0])
    w = mg.tensor(np.array([[-0.5, 0.001], [0.02, -0.003]]), requires_grad=True)
    data = w.data
    optim.clip_weights_([w], 0.01)
    assert w.data is data                                   # in place
    np.testing.assert_array_equal(w.numpy(), [[-0.01, 0.001], [0.01, -0.003]])


# ---------------------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------------------


def test_ema_formula_swap_and_state_dict():
    p = mg.tensor(THETA0, requires_grad=True)
    ema = optim.EMA([p], decay=0.9)
    expected = THETA0.copy()
    for g in GRADS:
        p.data -= g
        ema.update()
        expected = 0.9 * expected + 0.1 * p.numpy()
    np.testing.assert_allclose(ema.shadow[0], expected, rtol=1e-14)
    trained = p.numpy()
    with ema.average_parameters():
        np.testing.assert_allclose(p.numpy(), expected, rtol=1e-14)
    np.testing.assert_array_equal(p.numpy(), trained)

    target = mg.tensor(np.zeros(3))
    ema.copy_to([target])
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-14)

    restored = optim.EMA([p], decay=0.5)
    restored.load_state_dict(through_npz_and_json(ema.state_dict()))
    ema.update()
    restored.update()
    np.testing.assert_array_equal(restored.shadow[0], ema.shadow[0])


def test_ema_restores_parameters_after_an_exception():
    p = mg.tensor(THETA0, requires_grad=True)
    ema = optim.EMA([p], decay=0.5)
    p.data += 1
    ema.update()
    with pytest.raises(RuntimeError), ema.average_parameters():
        raise RuntimeError
    np.testing.assert_array_equal(p.numpy(), THETA0 + 1)


# ---------------------------------------------------------------------------------------------------------
# CuPy arrays
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not mg.cuda_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("name,kw", CONFIGS)
def test_on_gpu_as_on_cpu(name, kw):
    def steps(device):
        p = mg.tensor(THETA0, requires_grad=True, device=device)
        opt = getattr(optim, name)([p], **kw)
        ema = optim.EMA([p], decay=0.5)
        for g in GRADS:
            p.grad = mg.tensor(g, device=device)
            total = optim.clip_grad_norm_([p], 1.0)
            opt.step()
            ema.update()
        optim.clip_weights_([p], 0.5)
        state = opt.state_dict()["state"][0]
        assert all(isinstance(v, (int, np.ndarray)) for v in state.values())
        return p.numpy(), ema.state_dict()["shadow"][0], total

    for a, b in zip(steps("cuda"), steps("cpu")):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_pass_adam_kernel_matches_the_array_formulas(dtype):
    from kernels.optim import adam_update
    rng = np.random.default_rng(0)
    p, g, m, v = (rng.standard_normal((300, 70)).astype(dtype) for _ in range(4))
    v = np.abs(v)
    ours = [a.copy() for a in (p, m, v)]
    assert adam_update(ours[0], g, ours[1], ours[2], 0.9, 0.999, 1e-3 / (1 - 0.9 ** 3), np.sqrt(1 - 0.999 ** 3), 1e-8)
    m += (1 - 0.9) * (g - m)
    v *= 0.999
    v += (1 - 0.999) * g * g
    p -= (1e-3 / (1 - 0.9 ** 3)) * (m / (np.sqrt(v) / np.sqrt(1 - 0.999 ** 3) + 1e-8))
    for a, b in zip(ours, (p, m, v)):
        np.testing.assert_allclose(a, b, rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)
    # refused (the caller then uses the array formulas): a strided parameter, mixed dtypes
    assert not adam_update(p.T, g.T, m.T, v.T, 0.9, 0.999, 1e-3, 1.0, 1e-8)
    assert not adam_update(p, g.astype(np.float16), m, v, 0.9, 0.999, 1e-3, 1.0, 1e-8)


def test_one_pass_sgd_kernel_refuses_what_it_does_not_serve():
    """kernels.optim.sgd_update leaves to the array formulas (returns False, touching nothing) a strided
    parameter or buffer and mixed dtypes."""
    from kernels.optim import sgd_update
    p, g = np.ones((30, 20)), np.ones((30, 20))
    assert not sgd_update(p.T, g.T, None, 0.1, 0.0, 0.0, 0.0, False, False)
    assert not sgd_update(p, g.astype(np.float32), None, 0.1, 0.0, 0.0, 0.0, False, False)
    assert not sgd_update(p, g, np.ones((20, 30)).T, 0.1, 0.0, 0.9, 0.0, False, False)
    assert (p == 1).all()
    assert sgd_update(p, g, None, 0.1, 0.0, 0.0, 0.0, False, False) and np.allclose(p, 0.9)


KERNEL_CONFIGS = [("Adam", "adam_update", dict(lr=1e-2)),
                  ("SGD", "sgd_update", dict(lr=0.1)),
                  ("SGD", "sgd_update", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
                  ("SGD", "sgd_update", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kernel,kw", KERNEL_CONFIGS)
def test_optimizers_take_their_kernel_and_agree_with_their_own_array_formulas(dtype, name, kernel, kw):
    """Adam and SGD through their one-pass kernels (kernels.optim, spied: each runs and accepts) and through
    their array formulas (the kernel refusing), three steps from the same start."""
    from unittest import mock

    import kernels.optim
    real, taken = getattr(kernels.optim, kernel), []

    def spy(*args):
        taken.append(real(*args))
        return taken[-1]

    def steps(update) -> np.ndarray:
        rng = np.random.default_rng(1)
        w = mg.tensor(rng.standard_normal((40, 30)).astype(dtype), requires_grad=True)
        opt = getattr(optim, name)([w], **kw)
        with mock.patch.object(kernels.optim, kernel, update):
            for _ in range(3):
                opt.zero_grad()
                (w * w * mg.tensor(rng.standard_normal((40, 30)).astype(dtype))).sum().backward()
                opt.step()
        return w.numpy()
    np.testing.assert_allclose(steps(spy), steps(lambda *args: False), rtol=8 * np.finfo(dtype).eps,
                               atol=8 * np.finfo(dtype).eps)
    assert taken == [True] * 3
