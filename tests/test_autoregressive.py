"""The autoregressive family against ground truths: every model sums to 1 over all 2^16 binary 4x4 images
(and all 3^6 three-level 2x3 images), every conditional depends on the earlier pixels only and (where the model
means to) on all of them, MADE's mask paths, NADE's O(DH) cumulative sum against the naive O(D^2 H) sum, the
cached samplers against full recomputation and against exact probabilities, and on the binarized digits every
model beats the independent Bernoulli and the Bernoulli mixture (a ladder of test NLLs)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from ar_truths import all_images, assert_autoregressive, assert_normalized

import minigen as mg
from minigen import data, train
from minigen.models.autoregressive import (FVSBN, MADE, NADE, Autoregressive, FVSBNRecipe, MADERecipe, MarkovMLP,
                                           MarkovMLPRecipe, NADERecipe, PixelSequenceRNN, RNNRecipe, made_mask)
from minigen.models.mixtures import BernoulliMixture
from minigen.testing import swapped_parameters

pytest.importorskip("sklearn", reason="scikit-learn (the test extra) gives the 8x8 digits")

MODELS = {
    "fvsbn": lambda D, L: FVSBN(D, L),
    "markov-mlp": lambda D, L: MarkovMLP(D, L, window=3, hidden=16),
    "rnn": lambda D, L: PixelSequenceRNN(D, L, "rnn", hidden=8),
    "lstm": lambda D, L: PixelSequenceRNN(D, L, "lstm", hidden=8),
    "lstm-2-layers": lambda D, L: PixelSequenceRNN(D, L, "lstm", hidden=8, layers=2),
    "gru": lambda D, L: PixelSequenceRNN(D, L, "gru", hidden=8),
    "nade": lambda D, L: NADE(D, L, hidden=16),
    "made": lambda D, L: MADE(D, L, hidden=128, layers=2),
    "made-ensemble": lambda D, L: MADE(D, L, hidden=32, layers=2, masks=3),
}


def _model(name, D=16, L=2):
    """A small untrained model in float64 with its weights scaled up, so that its conditionals vary."""
    mg.manual_seed(0)
    model = MODELS[name](D, L).to(np.float64)
    for p in model.parameters():
        p.data *= 3
    return model


def _log_prob(model):
    def log_prob(x):
        with mg.no_grad():
            return model.log_prob(mg.tensor(x.reshape(len(x), -1))).numpy()
    return log_prob


def _logits(model):
    def conditionals(x):
        with mg.no_grad():
            return model.logits(mg.tensor(x.reshape(len(x), -1))).numpy()
    return conditionals


# --- ground truths on small images -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name in MODELS if name != "lstm-2-layers"])   # the stack: below
def test_sums_to_one_over_all_binary_4x4_images(name):
    assert_normalized(_log_prob(_model(name)), (1, 4, 4))


@pytest.mark.parametrize("name", MODELS)
def test_sums_to_one_over_all_three_level_images(name):
    """Categorical outputs: L = 3 grey levels on 2x3 images, 3^6 = 729 images."""
    assert_normalized(_log_prob(_model(name, D=6, L=3)), (1, 2, 3), levels=3)


@pytest.mark.parametrize("name", ["fvsbn", "rnn", "lstm", "lstm-2-layers", "gru", "nade", "made"])
def test_conditionals_see_exactly_the_earlier_pixels(name):
    assert_autoregressive(_logits(_model(name)), (1, 4, 4), full_context=True)


def test_markov_window_sees_exactly_the_window():
    dep = assert_autoregressive(_logits(_model("markov-mlp")), (1, 4, 4))
    i, j = np.indices((16, 16))
    np.testing.assert_array_equal(dep, (j < i) & (j >= i - 3))


def test_made_mask_sets_are_autoregressive_in_their_orders():
    """Each of the K mask sets: perturbations move only later conditionals in that set's order, and the
    number of paths through the masks from input j to output i (the product of the masks) is zero unless j
    comes before i. Random hidden degrees may leave some earlier pixels unconnected (Germain et al. accept
    this); the raster-order set with evenly spread degrees connects every one."""
    model = _model("made-ensemble")
    orders = []
    for k in range(model.masks):
        model.use_mask(k)
        orders.append(model.order.tolist())
        assert_autoregressive(_logits(model), (1, 4, 4), order=model.order)
        position = np.argsort(model.order)
        assert not np.any((_mask_paths(model) > 0) & (position[None, :] >= position[:, None]))
    assert len({tuple(o) for o in orders}) == model.masks
    i, j = np.indices((16, 16))
    np.testing.assert_array_equal(_mask_paths(_model("made")) > 0, j < i)


def _mask_paths(model):
    """(D, D): the number of paths from input j to output i through MADE's masks."""
    paths = model.net[0].mask.numpy()
    for layer in model.net[1:]:
        paths = layer.mask.numpy() @ paths
    return paths


def test_made_mask_is_strict_only_at_the_output():
    d_in, d_out = np.array([1, 2, 3]), np.array([1, 2, 3])
    np.testing.assert_array_equal(made_mask(d_in, d_out, strict=True), np.tril(np.ones((3, 3)), -1))
    np.testing.assert_array_equal(made_mask(d_in, d_out, strict=False), np.tril(np.ones((3, 3))))


def test_nade_cumulative_sum_equals_the_naive_sum():
    """logits_d = b_d + V_d sigmoid(c + sum_{j<d} W_j x_j), each d computed on its own."""
    model = _model("nade")
    x = np.random.default_rng(0).integers(0, 2, (5, 16)).astype(np.float64)
    W, c, V, b = (p.numpy() for p in (model.W, model.c, model.V, model.b))
    naive = np.stack([(1 / (1 + np.exp(-(c + x[:, :d] @ W[:, :d].T)))) @ V[d] + b[d] for d in range(16)], 1)
    np.testing.assert_allclose(_logits(model)(x), naive[..., 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["nade", "gru"])
def test_log_prob_gradients(name):
    model = _model(name, D=5)
    x = mg.tensor(np.random.default_rng(0).integers(0, 2, (3, 5)).astype(np.float64))
    params = [p for p in model.parameters()]

    def log_prob(*tensors):
        with swapped_parameters(model, tensors):
            return model.log_prob(x)

    assert mg.gradcheck(log_prob, params)


@pytest.mark.parametrize("name", ["rnn", "lstm-2-layers", "nade"])
def test_cached_sampler_draws_what_full_recomputation_draws(name):
    """With the same random stream, the sampler that carries its state (the RNN's hidden states, NADE's running
    activation) draws the images that the generic one-full-pass-per-pixel sampler draws."""
    model = _model(name, D=6, L=3)
    mg.manual_seed(3)
    cached = model.sample(50).numpy()
    mg.manual_seed(3)
    np.testing.assert_array_equal(cached, Autoregressive.sample(model, 50).numpy())
    assert set(np.unique(cached)) <= {0.0, 0.5, 1.0}


@pytest.mark.parametrize("name", MODELS)
def test_sample_frequencies_match_the_probabilities(name):
    """20000 samples of 2x2 binary images: each image's frequency within 5 standard errors of p(x)."""
    model = _model(name, D=4)
    mg.manual_seed(1)
    samples = model.sample(20000).numpy()
    images = all_images((4,))
    p = np.exp(_log_prob(model)(images))
    counts = (samples[:, None, :] == images[None]).all(axis=2).sum(axis=0)
    n = len(samples)
    assert np.all(np.abs(counts / n - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-3), (counts / n, p)


# --- recipes ---------------------------------------------------------------------------------------------


RECIPES = {"fvsbn": (FVSBNRecipe, {}), "markov-mlp": (MarkovMLPRecipe, {}), "rnn": (RNNRecipe, {"cell": "rnn"}),
           "lstm": (RNNRecipe, {"cell": "lstm"}), "gru": (RNNRecipe, {"cell": "gru"}), "nade": (NADERecipe, {}),
           "made": (MADERecipe, {}), "made-8-masks": (MADERecipe, {"masks": 8})}


@pytest.mark.parametrize("dataset", ["binarized-digits", "digits"])
@pytest.mark.parametrize("name", ["fvsbn", "markov-mlp", "gru", "nade", "made-8-masks"])
def test_recipe_end_to_end(name, dataset):
    spec, (train_x, _), (test_x, _) = data.load_dataset(dataset)
    cls, options = RECIPES[name]
    mg.manual_seed(0)
    recipe = cls(spec, hidden=16, **options) if name != "fvsbn" else cls(spec)
    for t, batch in zip(range(1, 4), data.DataLoader(train_x, batch_size=32, seed=0)):
        assert np.isfinite(recipe.step(batch, t)["nll"])
    result = recipe.evaluate(data.DataLoader(test_x[:64], batch_size=32, shuffle=False))
    assert 0 < result["nll"] <= 64 * np.log(spec.levels) * 1.5
    assert np.isclose(result["bits_per_dim"], result["nll"] / (64 * np.log(2)))
    samples = recipe.sample(4)
    assert samples.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(np.round(samples * (spec.levels - 1)), samples * (spec.levels - 1))


def test_made_cycles_its_mask_sets_in_training():
    spec, (train_x, _), _ = data.load_dataset("binarized-digits")
    recipe = MADERecipe(spec, hidden=16, masks=3)
    batch = (mg.tensor(train_x[:8]),)
    used = []
    for t in range(1, 7):
        recipe.step(batch, t)
        used.append(recipe.model.current)
    assert used == [0, 1, 2, 0, 1, 2]


def test_command_trains_fvsbn(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    run = subprocess.run([sys.executable, "-m", "minigen", "train", "fvsbn", "--steps", "5", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "metrics.jsonl").exists()


# --- the ladder on binarized digits ----------------------------------------------------------------------


def _baselines():
    """Test NLLs (nats) of the independent Bernoulli (the training pixel means, kept in [1e-3, 1 - 1e-3]) and
    of a 20-component Bernoulli mixture (EM, 100 iterations), fitted on the 1000 training images."""
    _, (train_x, _), (test_x, _) = data.load_dataset("binarized-digits")
    x, x_test = (a.reshape(len(a), -1).astype(np.float64) for a in (train_x, test_x))
    p = x.mean(0).clip(1e-3, 1 - 1e-3)
    independent = -(x_test @ np.log(p) + (1 - x_test) @ np.log1p(-p)).mean()
    mg.manual_seed(0)
    mixture = BernoulliMixture(64, 20)
    mixture.fit(x, 100)
    return {"independent Bernoulli": independent, "Bernoulli mixture (K=20)": -mixture.log_prob(x_test).mean()}


LADDER_STEPS = {"fvsbn": 1000, "markov-mlp": 600, "rnn": 400, "lstm": 400, "gru": 400, "nade": 1000, "made": 1000,
                "made-8-masks": 3000}


def _train_and_evaluate(name, steps, every=50):
    """Train family `name` with its defaults on the 1000 training images (batch 100) for up to `steps`
    updates; every `every` updates evaluate on the 350 validation images, and return the test NLL at the best
    validation NLL (early stopping: the models overfit 1000 images)."""
    spec, (train_x, _), (test_x, _) = data.load_dataset("binarized-digits")
    valid_x = data.load_binarized_digits("valid")[0][:, None]
    cls, options = RECIPES[name]
    mg.manual_seed(0)
    recipe = cls(spec, **options)
    batches = train._batches(data.DataLoader(train_x, batch_size=100, seed=0))
    best_valid, test_nll = np.inf, None
    for t in range(1, steps + 1):
        recipe.step(next(batches), t)
        if t % every == 0:
            valid, test = (recipe.evaluate(data.DataLoader(x, batch_size=500, shuffle=False))["nll"]
                           for x in (valid_x, test_x))
            if valid < best_valid:
                best_valid, test_nll = valid, test
    return test_nll


@pytest.mark.slow
@pytest.mark.parametrize("name", LADDER_STEPS)
def test_every_model_beats_the_bernoulli_baselines_on_binarized_digits(name):
    """One rung of the ladder: the model's test NLL (nats, 447 test images, early-stopped on validation) is
    printed beside the baselines' and must beat both."""
    baselines = _baselines()
    nll = _train_and_evaluate(name, LADDER_STEPS[name])
    print(f"\ntest NLL on binarized-digits (nats): {name} {nll:.2f}; "
          + ", ".join(f"{k} {v:.2f}" for k, v in baselines.items()))
    assert nll < min(baselines.values())


def test_fvsbn_beats_the_bernoulli_baselines_on_binarized_digits():
    """The fast rung of the ladder (300 updates, under a second)."""
    baselines = _baselines()
    assert _train_and_evaluate("fvsbn", 300, every=300) < min(baselines.values())
