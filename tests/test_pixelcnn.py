"""PixelCNN, gated PixelCNN and PixelRNN (Row LSTM) against ground truths: p(x) sums to one over every 4x4
binary image (and every 3x3 image of 3 grey levels); no conditional moves when a later pixel changes; the
gated PixelCNN sees every earlier pixel while the plain PixelCNN has a blind spot; the cached samplers draw
exactly what a full forward pass per pixel draws; each family beats the independent Bernoulli on the
binarized digits; gradcheck of the new pieces; the recipes and the command end to end."""
import subprocess
import sys

import numpy as np
import pytest
from ar_truths import assert_autoregressive, assert_normalized, dependencies

import minigen as mg
from minigen import data, nn, train
from minigen.models.pixelcnn import (ConditionalGatedPixelCNNRecipe, GatedPixelCNN, GatedPixelCNNRecipe,
                                     PixelCNN, PixelCNNRecipe, PixelRNNRecipe, RowLSTMNet, draw_pixel,
                                     shift_down)

pytest.importorskip("sklearn", reason="scikit-learn (the test extra) gives the 8x8 digits")

CLASSES = 3
TOL = 1e-12     # a dependency is any change at all: far pixels reach an untrained float64 net at ~1e-8


def _model(kind: str, shape=(1, 4, 4), levels: int = 2, channels: int = 4, layers: int = 2):
    """A small float64 model of `kind`; the conditional one with random (non-zero) class biases."""
    if kind == "pixelcnn":
        model = PixelCNN(shape, levels, channels, layers)
    elif kind == "rowlstm":
        model = RowLSTMNet(shape, levels, channels, layers)
    else:
        model = GatedPixelCNN(shape, levels, channels, layers, classes=CLASSES if kind == "gated-cond" else 0)
        for name, p in model.named_parameters():
            if "_class" in name:
                nn.init.normal_(p)
    return model.to(np.float64)


def _labels(model, n: int, label: int = 1):
    return np.full(n, label) if getattr(model, "classes", 0) else None


def _log_prob(model):
    def log_prob(x):
        with mg.no_grad():
            return model.log_prob(mg.tensor(x), _labels(model, len(x))).numpy()
    return log_prob


def _conditionals(model):
    """(n, D, K): the logits of every pixel's conditional, by flat pixel index."""
    def conditionals(x):
        with mg.no_grad():
            logits = model(mg.tensor(x), _labels(model, len(x))).numpy()
        return logits.reshape(len(x), logits.shape[1], -1).transpose(0, 2, 1)
    return conditionals


KINDS = ["pixelcnn", "gated", "gated-cond", "rowlstm"]


# --- the pieces --------------------------------------------------------------------------------------------


def test_shift_down_gradcheck():
    x = mg.tensor(np.random.default_rng(0).normal(size=(2, 4, 3, 5)), requires_grad=True)
    assert mg.gradcheck(shift_down, [x])
    shifted = shift_down(x).numpy()
    assert np.all(shifted[:, :, 0] == 0) and np.array_equal(shifted[:, :, 1:], x.numpy()[:, :, :-1])


def test_models_take_one_channel_images_only():
    with pytest.raises(ValueError, match="one-channel"):
        PixelCNN((3, 8, 8), 2)


# --- ground truths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, levels", [((1, 4, 4), 2), ((1, 3, 3), 3)])
def test_probabilities_sum_to_one(kind, shape, levels):
    """Sum of p(x) over all 2^16 binary 4x4 images (3^9 three-level 3x3 images) is 1 to 1e-6."""
    assert_normalized(_log_prob(_model(kind, shape, levels)), shape, levels=levels)


@pytest.mark.parametrize("kind", KINDS)
def test_conditionals_depend_on_earlier_pixels_only(kind):
    assert_autoregressive(_conditionals(_model(kind, (1, 8, 8), channels=16)), (1, 8, 8), tol=TOL)


@pytest.mark.parametrize("kind", ["gated", "gated-cond"])
def test_gated_pixelcnn_sees_every_earlier_pixel(kind):
    """No blind spot (2016b, fig. 1): with the default 7x7 first layer and 5 layers every conditional of an
    8x8 image moves with every earlier pixel (dependencies counted by perturbation)."""
    assert_autoregressive(_conditionals(_model(kind, (1, 8, 8), channels=16, layers=5)), (1, 8, 8),
                          full_context=True, tol=TOL)


@pytest.mark.parametrize("kind", ["pixelcnn", "rowlstm"])
def test_pixelcnn_and_row_lstm_miss_earlier_pixels(kind):
    """Stacked masked convolutions have a blind spot up and to the right, and the Row LSTM a triangular field:
    pixel (7, 0) of an 8x8 image never sees pixel (6, 4), one row up and four columns right, which the gated
    PixelCNN does see."""
    dep = dependencies(_conditionals(_model(kind, (1, 8, 8), channels=16, layers=5)), (1, 8, 8), tol=TOL)
    gated = dependencies(_conditionals(_model("gated", (1, 8, 8), channels=16, layers=5)), (1, 8, 8), tol=TOL)
    assert not dep[7 * 8 + 0, 6 * 8 + 4] and gated[7 * 8 + 0, 6 * 8 + 4]
    earlier = np.tril(np.ones((64, 64), dtype=bool), -1)
    assert (earlier & ~dep).sum() > 0 and (earlier & ~gated).sum() == 0


def test_class_bias_moves_every_conditional():
    """The class-conditional gated PixelCNN's conditionals change with the label (its class biases are
    random here), and p(x | y) is normalized for each y (the sum test above uses y = 1)."""
    model = _model("gated-cond", (1, 4, 4))
    x = mg.tensor(np.random.default_rng(0).integers(0, 2, size=(3, 1, 4, 4)).astype(np.float64))
    with mg.no_grad():
        a, b = model(x, np.zeros(3, int)).numpy(), model(x, np.full(3, 2)).numpy()
    assert np.all(np.abs(a - b) > 1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("levels", [2, 4])
def test_cached_sampler_draws_what_full_passes_draw(kind, levels):
    """The sampler's caches (rows above only, one row a pixel, the LSTM state) change nothing: with the same
    random stream it draws the same images as one full forward pass per pixel."""
    shape, n = (1, 5, 6), 6
    model = _model(kind, shape, levels)
    y = np.arange(n) % CLASSES if getattr(model, "classes", 0) else None
    mg.manual_seed(3)
    cached = model.sample(n, y)
    mg.manual_seed(3)
    x = np.zeros((n, *shape))
    with mg.no_grad():
        for i in range(shape[1]):
            for j in range(shape[2]):
                x[:, 0, i, j] = draw_pixel(model(mg.tensor(x), y)[:, :, i, j], levels)
    assert np.array_equal(cached, x)
    assert set(np.unique(x * (levels - 1))) <= set(range(levels))


# --- training ----------------------------------------------------------------------------------------------


def _independent_bernoulli_nll(train_x, test_x) -> float:
    """Test NLL (nats per image) of independent pixels, p_d the training frequency (add-one smoothed)."""
    p = (train_x.sum(0) + 1) / (len(train_x) + 2)
    return float(-(test_x * np.log(p) + (1 - test_x) * np.log(1 - p)).reshape(len(test_x), -1).sum(1).mean())


def _fit(cls, spec, train_arrays, steps: int, **options):
    recipe = cls(spec, **options)
    batches = train._batches(data.DataLoader(*train_arrays, batch_size=100, seed=0))
    for t in range(1, steps + 1):
        recipe.step(next(batches), t)
    return recipe


def _arrays(cls, x, y):
    return (x, y) if cls.needs_labels else (x,)


FITS = [(cls, dict(channels=16, layers=2, lr=1e-2))
        for cls in (PixelCNNRecipe, GatedPixelCNNRecipe, ConditionalGatedPixelCNNRecipe, PixelRNNRecipe)]


def _check_beats_independent(cls, options, steps):
    spec, (train_x, train_y), (test_x, test_y) = data.load_dataset("binarized-digits")
    recipe = _fit(cls, spec, _arrays(cls, train_x, train_y), steps, **options)
    metrics = recipe.evaluate(data.DataLoader(*_arrays(cls, test_x, test_y), batch_size=500, shuffle=False))
    baseline = _independent_bernoulli_nll(train_x, test_x)
    print(f"{cls.name} {options} {steps} steps: test NLL {metrics['nll']:.3f} nats "
          f"(independent Bernoulli {baseline:.3f})")
    assert metrics["nll"] < baseline - 1.0
    assert np.isclose(metrics["bits_per_dim"], metrics["nll"] / (64 * np.log(2)))
    return metrics


@pytest.mark.parametrize("cls, options", FITS, ids=[c.name for c, _ in FITS])
def test_short_training_beats_independent_bernoulli(cls, options):
    _check_beats_independent(cls, options, steps=80)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [cls for cls, _ in FITS], ids=[c.name for c, _ in FITS])
def test_training_beats_independent_bernoulli(cls):
    _check_beats_independent(cls, dict(channels=32, layers=4, lr=3e-3), steps=600)


# --- recipes end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PixelCNNRecipe, GatedPixelCNNRecipe, ConditionalGatedPixelCNNRecipe,
                                 PixelRNNRecipe], ids=lambda c: c.name)
def test_recipe_on_seventeen_grey_levels(cls):
    """On "digits" (L = 17): steps give finite losses, evaluation the NLL of the grey levels and bits/dim,
    samples lie on the 17 levels."""
    spec, (train_x, train_y), (test_x, test_y) = data.load_dataset("digits")
    recipe = _fit(cls, spec, _arrays(cls, train_x, train_y), 2, channels=8, layers=2)
    metrics = recipe.evaluate(data.DataLoader(*_arrays(cls, test_x[:50], test_y[:50]), batch_size=25,
                                              shuffle=False))
    assert set(metrics) == {"nll", "bits_per_dim"} and 0 < metrics["nll"] < 64 * np.log(17) * 1.5
    samples = recipe.sample(10)
    assert samples.shape == (10, 1, 8, 8) and samples.dtype == np.float32
    assert np.allclose(samples * 16, np.round(samples * 16), atol=1e-4) and 0 <= samples.min() <= samples.max() <= 1


def test_recipe_options_and_labels():
    assert GatedPixelCNNRecipe.options() == {"channels": 64, "layers": 5, "kernel": 3, "lr": 1e-3}
    assert ConditionalGatedPixelCNNRecipe.needs_labels and not GatedPixelCNNRecipe.needs_labels
    spec, _, _ = data.load_dataset("binarized-digits")
    assert ConditionalGatedPixelCNNRecipe(spec, channels=8, layers=2).model.classes == 10
    assert GatedPixelCNNRecipe(spec, channels=8, layers=2).model.classes == 0


def test_command_trains_and_samples(tmp_path):
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "minigen", "train", "gated-pixelcnn-cond", "--steps", "2", "--out",
                    str(out), "--opt", "channels=8", "--opt", "layers=2"], check=True, capture_output=True)
    assert (out / "samples" / "step-00000002.png").exists()
    assert "nll" in (out / "metrics.jsonl").read_text()
