"""Every family on a second device: a few training steps, an evaluation and samples through the command's own
path (`cli.build`, then `train.fit`), on the simulated device 'sim' here and on 'cuda' where a GPU is.

'sim' (minigen.backend.SimArray) is NumPy whose arrays refuse to meet plain NumPy arrays, as CuPy's do: a
recipe that makes noise, masks or chains with `np.` instead of on the data's device fails here, on a CPU,
with an error naming the NumPy function. The families come from `minigen.models.FAMILIES`, so a new family
is checked as soon as it is registered.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import minigen as mg
import minigen.nn.functional as F
from minigen import backend, cli, data, nn, optim, train
from minigen.backend import DeviceMismatchError, SimArray, sim
from minigen.models import FAMILIES, recipe_class

STEPS = 2

# Small sizes so that each family takes a second or two; options a family does not declare are left out.
TINY = {
    "ae": dict(hidden=16, latent=4),
    "vae": dict(hidden=(16,), latent=4, eval_k=2),
    "cvae": dict(hidden=(16,), latent=4, eval_k=2),
    "hvae": dict(hidden=(16,), latent=4, eval_k=2),
    "nice": dict(hidden=16, couplings=2),
    "realnvp": dict(hidden=8, couplings=2),
    "glow": dict(hidden=8, steps=2),
    "maf": dict(hidden=16, layers=2),
    "planar": dict(length=4, batch=16),
    "radial": dict(length=4, batch=16),
    "iaf": dict(length=4, batch=16),
    "ffjord": dict(hidden=16, layers=2, train_steps=2, eval_tol=1e-2),
    "otflow": dict(width=8, layers=2, train_steps=2, eval_tol=1e-2),
    "gan": dict(hidden=16, width=16),
    "dcgan": dict(hidden=8, width=8),
    "wgan": dict(hidden=16, width=16, n_critic=1),
    "wgan-gp": dict(hidden=16, width=16, n_critic=1),
    "fgan": dict(hidden=16),
    "bm": dict(ais_betas=10, ais_runs=4, sample_steps=5),
    "rbm": dict(hidden=8, ais_betas=10, ais_runs=4, sample_steps=5),
    "dbn": dict(hidden=(8, 8), layer_steps=1, bound_samples=2, ais_betas=10, ais_runs=4, sample_steps=5),
    "dbm": dict(hidden=(8, 8), mean_field_steps=2, ais_betas=10, ais_runs=4, sample_steps=5),
    "ebm": dict(hidden=16, layers=2, langevin_steps=2, buffer_size=64, sample_steps=2),
    "ddpm": dict(T=10, hidden=16, channels=8, depth=1, attention=False, ddim_steps=2, bound_terms=2),
    "gmm": dict(components=2),
    "bernoulli-mixture": dict(components=2),
    "markov-mlp": dict(window=4, hidden=8),
    "rnn": dict(hidden=8),
    "nade": dict(hidden=8),
    "made": dict(hidden=8),
    "pixelcnn": dict(channels=8, layers=2),
    "gated-pixelcnn": dict(channels=8, layers=2),
    "gated-pixelcnn-cond": dict(channels=8, layers=2),
    "pixelrnn": dict(channels=8, layers=1),
}
# Image families also run on images (Squeeze, convolutions); MNIST-sized defaults on the 8x8 digits.
DATASET = {"realnvp": "digits", "glow": "digits", "dcgan": "digits"}
# Families that do not pass yet, with the error they raise (strict: a fix makes the test say so).
XFAIL: dict[str, str] = {}


def _config(family: str, device: str) -> dict:
    cls = recipe_class(family)
    declared = cls.options()
    return {"family": family, "dataset": DATASET.get(family, cls.default_dataset), "batch_size": 16,
            "lr": None, "device": device, "seed": 0, "data_dir": None, "steps": STEPS,
            "options": {k: v for k, v in TINY.get(family, {}).items() if k in declared}}


def _small(loader, device: str) -> data.DataLoader:
    """The first 32 held-out examples, in batches of 16."""
    return data.DataLoader(*(a[:32] for a in loader.arrays), batch_size=16, shuffle=False, device=device)


def _states_on(recipe, device: str) -> None:
    """Every parameter, buffer and optimizer state array of the recipe is on `device`."""
    for name, module in recipe.modules().items():
        for pname, t in list(module.named_parameters()) + list(module.named_buffers()):
            assert t.device == device, f"{name}.{pname} is on {t.device}, not {device}"
    for name, opt in recipe.optimizers().items():
        for s in opt.state.values():
            for k, v in s.items():
                assert not hasattr(v, "shape") or backend.device_of(v) == device, f"optimizer {name}: {k}"


def _train_sample_evaluate(family: str, device: str, run_dir) -> None:
    """A few steps through the command's path, then the held-out evaluation and samples, all on `device`."""
    recipe, loader, test_loader, _ = cli.build(_config(family, device))
    metrics = train.fit(recipe, loader, STEPS, run_dir, eval_loader=_small(test_loader, device), n_samples=4,
                        progress=False)
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    _states_on(recipe, device)
    samples = recipe.sample(3)
    assert type(samples) is np.ndarray, f"sample() gave a {type(samples).__name__}, not a NumPy array"
    assert len(samples) == 3 and np.isfinite(samples).all()


def _families():
    return [pytest.param(f, marks=[pytest.mark.xfail(strict=True, reason=XFAIL[f])] if f in XFAIL else [])
            for f in FAMILIES]


@pytest.mark.parametrize("device", ["sim", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("family", _families())
def test_family_trains_samples_and_evaluates_on_device(family, device, tmp_path):
    if device == "cuda" and not backend.cuda_available():
        pytest.skip("no CUDA GPU")
    _train_sample_evaluate(family, device, tmp_path)


def test_the_family_check_catches_an_array_made_on_the_cpu(monkeypatch, tmp_path):
    """The test of the test: NICE with its base samples drawn on the CPU (the StandardNormal.sample of issue 14)."""
    from minigen.models import flows
    monkeypatch.setattr(flows.StandardNormal, "sample",
                        lambda self, n, temperature=1.0, device="cpu": mg.randn(n, *self.event_shape) * temperature)
    with pytest.raises(DeviceMismatchError, match="numpy.multiply got a NumPy array"):
        _train_sample_evaluate("nice", "sim", tmp_path)


def test_checkpoint_saved_on_one_device_loads_on_another(tmp_path):
    """A run trained on 'sim' resumes on the CPU and back: parameters and Adam's moments follow the run."""
    config = _config("vae", "sim")
    recipe, loader, _, _ = cli.build(config)
    train.fit(recipe, loader, STEPS, tmp_path, n_samples=4, progress=False)
    for steps, device in enumerate(("cpu", "sim"), start=STEPS + 1):
        saved = recipe.model.state_dict()
        recipe, loader, _, _ = cli.build({**config, "device": device})
        train.restore_training_state(recipe, loader, train.load_checkpoint(tmp_path))
        _states_on(recipe, device)
        for name, value in recipe.model.state_dict().items():
            np.testing.assert_array_equal(value, saved[name])
        assert type(recipe.sample(2)) is np.ndarray
        train.fit(recipe, loader, steps, tmp_path, resume=True, n_samples=2, progress=False)   # one more step
        _states_on(recipe, device)


def test_fit_moves_modules_and_optimizer_state_to_the_loaders_device(tmp_path):
    recipe, loader, _, _ = cli.build(_config("vae", "cpu"))
    train.fit(recipe, loader, 1, tmp_path / "cpu", n_samples=2, progress=False)     # Adam's moments on the CPU
    loader = data.DataLoader(*loader.arrays, batch_size=16, device="sim")
    train.fit(recipe, loader, 2, tmp_path / "sim", n_samples=2, progress=False)
    _states_on(recipe, "sim")


# --- the simulated device itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("mix", [
    lambda a, b: a + b,
    lambda a, b: b * a,
    lambda a, b: np.matmul(a, b),
    lambda a, b: np.concatenate([a, b]),
    lambda a, b: np.where(a > 0, a, b),
    lambda a, b: sim.maximum(a, b),
    lambda a, b: sim.stack([b, b]),
    lambda a, b: a.__iadd__(b),
], ids=["add", "radd", "matmul", "concatenate", "where", "sim.maximum", "sim.stack", "iadd"])
def test_sim_arrays_refuse_to_meet_numpy_arrays(mix):
    with pytest.raises(DeviceMismatchError, match="NumPy array of shape \\(2, 2\\).*device 'sim'"):
        mix(sim.ones((2, 2)), np.ones((2, 2)))


def test_sim_arrays_take_scalars_and_stay_on_sim():
    a = sim.arange(6.0).reshape(2, 3)
    for result in (a + 1.0, a * np.float32(2), a - np.array(1.0), np.exp(a), a.sum(), a.T @ a, a[0],
                   np.linalg.eigh(a @ a.T).eigenvectors, sim.zeros(3), sim.full((2,), 7), sim.asarray([1, 2])):
        assert type(result) is SimArray
    assert a.sum().item() == 15.0 and float(a.max()) == 5.0
    assert backend.device_of(a) == "sim" and backend.get_array_module(a) is sim


def test_sim_moves_copy_like_a_second_memory():
    x = np.arange(3.0)
    on_sim = backend.to_device(x, "sim")
    x[0] = 9.0
    back = backend.to_device(on_sim, "cpu")
    assert type(on_sim) is SimArray and type(back) is np.ndarray and back[0] == 0.0
    assert backend.to_device(on_sim, "sim") is on_sim


def test_sim_generator_has_cupys_methods_only_and_is_seeded():
    mg.manual_seed(3)
    first = backend.generator("sim").standard_normal((2, 3), dtype=np.float32)
    mg.manual_seed(3)
    assert type(first) is SimArray and first.dtype == np.float32
    np.testing.assert_array_equal(first, backend.generator("sim").standard_normal((2, 3), dtype=np.float32))
    assert not np.array_equal(first.get(), backend.generator("cpu").standard_normal((2, 3)).astype(np.float32))
    with pytest.raises(AttributeError, match="CuPy's random Generator has no 'permutation'"):
        backend.generator("sim").permutation(3)


def test_tensors_modules_and_loaders_on_sim():
    x = mg.tensor([[1.0, -2.0]], device="sim", requires_grad=True)
    net = nn.mlp([2, 4, 1]).to("sim")
    assert all(type(p.data) is SimArray for p in net.parameters())
    y = net(x).to("cpu")                             # ToDevice: the gradient goes back to 'sim'
    y.sum().backward()
    assert y.device == "cpu" and x.grad.device == "sim" and net[0].weight.grad.device == "sim"
    assert mg.randn(2, device="sim").device == "sim" and mg.zeros_like(x).device == "sim"
    (batch,) = next(iter(data.DataLoader(np.ones((4, 2), np.float32), batch_size=2, device="sim")))
    assert batch.device == "sim"


def test_kernels_run_on_sim_arrays():
    x = mg.randn(2, 1, 5, 5, device="sim", requires_grad=True)
    conv = nn.Conv2d(1, 3, 3, padding=1).to("sim")
    y = F.log_softmax(conv(x).reshape(2, -1), axis=1)
    _, logabsdet = mg.slogdet(mg.randn(2, 3, 3, device="sim") + mg.eye(3, device="sim") * 3)
    (y.sum() + logabsdet.sum()).backward()
    assert all(type(t.data) is SimArray for t in (y, logabsdet, x.grad, conv.weight.grad))


def test_a_recipe_allocating_with_numpy_fails_on_sim_only():
    """What the family test catches: noise made with NumPy works on the CPU and fails on the second device."""
    def step(device):
        x = mg.randn(4, 2, device=device)
        return x + mg.tensor(np.random.default_rng(0).standard_normal((4, 2)), dtype=np.float32)
    assert step("cpu").shape == (4, 2)
    with pytest.raises(DeviceMismatchError, match="numpy.add got a NumPy array of shape \\(4, 2\\)"):
        step("sim")


def test_optimizer_state_moves_with_to():
    w = nn.Parameter(np.ones(3, np.float32))
    opt = optim.Adam([w])
    w.grad = mg.ones(3)
    opt.step()
    w.data = backend.to_device(w.data, "sim")
    assert opt.to("sim") is opt and type(opt.state[w]["exp_avg"]) is SimArray
    w.grad = mg.ones(3, device="sim")
    opt.step()
    assert type(w.data) is SimArray and opt.state[w]["step"] == 2


def test_parameter_averages_move_with_to():
    w = nn.Parameter(np.ones(3, np.float32))
    ema = optim.EMA([w], decay=0.5)
    w.data = backend.to_device(w.data * 3, "sim")
    ema.to("sim").update()
    assert type(ema.shadow[0]) is SimArray and ema.shadow[0].tolist() == [2.0, 2.0, 2.0]
