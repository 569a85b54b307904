"""The training machinery: checkpoints, exact resume, the NaN guard, the two simplest families, the command."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minigen as mg
from minigen import data, train
from minigen.models.ae import AERecipe
from minigen.models.gaussian import GaussianRecipe

sklearn = pytest.importorskip("sklearn", reason="scikit-learn (the test extra) gives the digits and PCA.score")


DIGITS = data.DataSpec("digits", (1, 8, 8), "levels", levels=17)
CONTINUOUS_DIGITS = data.DataSpec("digits", (1, 8, 8), "continuous")    # the grey levels taken as reals (as PCA does)


def _digits():
    x, _ = data.load_digits()
    return x[:, None]


class _DenoisingAE(AERecipe):
    """An autoencoder fed noisy inputs: its steps draw from minigen's generator, so resuming must restore it."""

    def step(self, batch, t):
        (x,) = batch
        return super().step((x + mg.randn(*x.shape) * 0.1,), t)


def _ae_run(run_dir, steps, resume=False, seed=0):
    mg.manual_seed(seed)
    x = _digits()[:512]
    recipe = _DenoisingAE(DIGITS, hidden=32, latent=4)
    loader = data.DataLoader(x, batch_size=64, seed=seed)
    train.fit(recipe, loader, steps, run_dir, eval_loader=data.DataLoader(x[:128], batch_size=64, shuffle=False),
              eval_every=5, sample_every=7, checkpoint_every=4, resume=resume, progress=False)
    return recipe


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    straight = _ae_run(tmp_path / "a", 20)
    _ae_run(tmp_path / "b", 12)                      # stops at step 12 (checkpoint at 12)
    resumed = _ae_run(tmp_path / "b", 20, resume=True)
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert np.array_equal(p.data, q.data), name
    assert np.array_equal(straight.optimizer.state_dict()["state"][0]["exp_avg"],
                          resumed.optimizer.state_dict()["state"][0]["exp_avg"])
    lines = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [5, 10, 12, 15, 20]    # 12: the end of the first run


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    state = {"step": 1, "w": np.arange(3.0), "nested": {"lr": 0.1, "m": [np.ones(2)]}}
    train.save_checkpoint(tmp_path, state)

    def dies_midway(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(tmp_path, {**state, "step": 2})
    loaded = train.load_checkpoint(tmp_path)
    assert loaded["step"] == 1 and np.array_equal(loaded["w"], np.arange(3.0))
    assert loaded["nested"]["m"][0].tolist() == [1.0, 1.0]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay private (0600)."""
    umask = os.umask(0o022)
    try:
        train.save_checkpoint(tmp_path, {"step": 1, "w": np.zeros(2)})
        train.save_samples(np.zeros((4, 1, 8, 8), np.float32), tmp_path / "samples.png")
    finally:
        os.umask(umask)
    for name in ("ckpt-00000001.npz", "latest.json", "samples.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


class _Exploding(train.Recipe):
    name = "exploding"

    def __init__(self):
        self.layer = mg.nn.Linear(2, 1)

    def modules(self):
        return {"layer": self.layer}

    def step(self, batch, t):
        return {"loss": float("nan") if t == 3 else 1.0}

    def sample(self, n):
        return np.zeros((n, 2))


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    loader = data.DataLoader(np.zeros((8, 2), np.float32), batch_size=4, seed=0)
    with pytest.raises(train.NonFiniteError, match="step 3: loss is nan"):
        train.fit(_Exploding(), loader, 10, tmp_path, checkpoint_every=2, sample_every=100, progress=False)
    assert train.load_checkpoint(tmp_path)["step"] == 2


def test_gaussian_log_likelihood_matches_probabilistic_pca():
    from sklearn.decomposition import PCA
    x = _digits()
    train_x, test_x = x[:1400], x[1400:]
    for k in (5, 20):
        recipe = GaussianRecipe(CONTINUOUS_DIGITS, components=k)
        for t, batch in enumerate(data.DataLoader(train_x, batch_size=256, shuffle=False), 1):
            recipe.step(batch, t)
        ours = -recipe.evaluate(data.DataLoader(test_x, batch_size=500, shuffle=False))["nll"]
        pca = PCA(n_components=k).fit(train_x.reshape(len(train_x), -1))
        # PCA divides the covariance by n - 1 where maximum likelihood divides by n: 0.03 nats here
        assert ours == pytest.approx(pca.score(test_x.reshape(len(test_x), -1)), abs=0.1)
    samples = recipe.sample(2000)
    assert samples.shape == (2000, 1, 8, 8)
    np.testing.assert_allclose(samples.mean(axis=0), train_x.mean(axis=0), atol=0.06)


def test_autoencoder_reconstructs_held_out_digits(tmp_path):
    mg.manual_seed(0)
    x = _digits()
    recipe = AERecipe(DIGITS, hidden=128, latent=16)
    loader = data.DataLoader(x[:1500], batch_size=64, seed=0)
    train.fit(recipe, loader, 1500, tmp_path, progress=False, sample_every=10**9,
              checkpoint_every=10**9, eval_every=10**9)
    result = recipe.evaluate(data.DataLoader(x[1500:], batch_size=500, shuffle=False))
    # predicting every pixel by its mean scores 0.11; a 16-d code keeps the error under a fifth of that
    assert result["mse_per_dim"] < 0.02


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "minigen", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_command_line_end_to_end(tmp_path):
    run = tmp_path / "run"
    r = _cli("train", "gaussian", "--dataset", "digits", "--out", str(run), "--opt", "components=10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["options"] == {"components": 10}
    assert "bits_per_dim" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert list((run / "samples").glob("*.png"))
    r = _cli("sample", str(run), "-n", "16", "-o", str(tmp_path / "s.png"), cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "s.png").exists(), r.stderr
    r = _cli("eval", str(run), cwd=tmp_path)
    assert r.returncode == 0 and "bits_per_dim" in json.loads(r.stdout)
    r = _cli("list", cwd=tmp_path)
    assert "gaussian" in r.stdout and "8gaussians" in r.stdout
    for args, message in [(("train", "nope"), "unknown family 'nope'; choose one of: gaussian, ae"),
                          (("train", "ae", "--dataset", "nope"), "unknown dataset 'nope'; choose one of"),
                          (("eval", str(tmp_path)), "is not a minigen run folder")]:
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_one_nll_convention_across_families():
    """On the 8x8 digits (17 grey levels) every likelihood family reports nats of the discrete levels: a
    density of the dequantized pixels plus D log 17. So all are positive and on one scale; the closed-form
    Gaussian (which reported -0.52 bits/dim on its own scale before) beats the uniform over the levels."""
    from minigen.models import recipe_class
    spec, (train_x, _), (test_x, _) = data.load_dataset("digits")
    options = {"gaussian": {}, "realnvp": {"hidden": 8, "scales": 1}, "vae": {"hidden": [32], "latent": 4,
               "likelihood": "gaussian", "pixels": "dequantize", "eval_k": 4},
               "ffjord": {"hidden": 8, "layers": 1, "eval_tol": 1e-2}}
    test = data.DataLoader(test_x[:40], batch_size=40, shuffle=False)
    for family, opts in options.items():
        recipe = recipe_class(family)(spec, **opts)
        for t, batch in enumerate(data.DataLoader(train_x, batch_size=500, seed=0), 1):
            recipe.step(batch, t)
        metrics = recipe.evaluate(test)
        assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (64 * np.log(2))), family
        assert 0 < metrics["bits_per_dim"] < 2 * np.log2(17), (family, metrics)
        if family == "gaussian":
            assert metrics["bits_per_dim"] < np.log2(17)
