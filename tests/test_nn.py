"""minigen.nn: Module bookkeeping and state_dict, every layer against PyTorch (when installed) and closed forms,
gradient checks through each layer, the autoregressive masks of MADE and PixelCNN, and the initializations."""
import math
import re
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen as mg
from minigen.testing import swapped_parameters
import minigen.nn as nn
from minigen.nn import init

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(mg.ones(1))
        self.body = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
        self.norm = nn.BatchNorm1d(3)
        self.heads = nn.ModuleDict({"mu": nn.Linear(3, 2), "log_var": nn.Linear(3, 2, bias=False)})
        self.register_buffer("steps", mg.zeros(1))

    def forward(self, x):
        h = self.norm(self.body(x)) * self.scale
        return self.heads["mu"](h), self.heads["log_var"](h)


# --- Module bookkeeping --------------------------------------------------------------------------------------


def test_registration_and_order():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale", "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "norm.weight", "norm.bias",
        "heads.mu.weight", "heads.mu.bias", "heads.log_var.weight"]
    assert all(isinstance(p, nn.Parameter) and isinstance(p, mg.Tensor) and p.requires_grad
               for p in net.parameters())
    assert [n for n, _ in net.named_buffers()] == ["steps", "norm.running_mean", "norm.running_var",
                                                   "norm.num_batches_tracked"]
    assert [type(m).__name__ for m in net.modules()] == [
        "Net", "Sequential", "Linear", "ReLU", "Linear", "BatchNorm1d", "ModuleDict", "Linear", "Linear"]
    assert [type(m).__name__ for m in net.children()] == ["Sequential", "BatchNorm1d", "ModuleDict"]
    assert net.heads.log_var.bias is None and "bias" not in dict(net.heads.log_var.named_parameters())
    assert [n for n, _ in net.named_parameters(recurse=False)] == ["scale"]


def test_reassignment_and_errors():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        lin.weight = mg.zeros(2, 2)
    lin.extra = mg.zeros(1)                       # a plain tensor attribute is not a parameter
    assert "extra" not in dict(lin.named_parameters())
    lin.weight = nn.Parameter(mg.ones(2, 2))
    assert lin.weight.numpy().sum() == 4
    del lin.bias
    assert [n for n, _ in lin.named_parameters()] == ["weight"]

    class Forgot(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgot()


def test_shared_parameters_counted_once():
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, nn.Tanh(), lin)
    assert len(list(seq.parameters())) == 2
    assert len(list(seq.modules())) == 3           # Sequential, Linear (once), Tanh
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_train_eval_zero_grad():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    mu, log_var = net(mg.randn(4, 2))
    (mu.sum() + log_var.sum()).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_containers():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    layers.append(nn.ReLU())
    assert len(layers) == 4 and isinstance(layers[-1], nn.ReLU)
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    layers[0] = nn.Tanh()
    assert isinstance(layers[0], nn.Tanh) and len(list(layers.parameters())) == 4
    with pytest.raises(TypeError):
        layers.append(lambda x: x)

    seq = nn.Sequential(OrderedDict(fc=nn.Linear(2, 3), act=nn.Tanh()))
    x = mg.randn(5, 2)
    np.testing.assert_allclose(seq(x).numpy(), np.tanh(seq.fc(x).numpy()), rtol=1e-6)
    assert [n for n, _ in seq.named_parameters()] == ["fc.weight", "fc.bias"]
    assert isinstance(seq[1], nn.Tanh) and len(seq) == 2

    heads = nn.ModuleDict({"a": nn.Linear(1, 1)})
    heads["b"] = nn.Linear(1, 2)
    assert list(heads) == ["a", "b"] and "b" in heads and len(heads) == 2
    assert [k for k, _ in heads.items()] == ["a", "b"]


def test_apply_and_to_dtype():
    net = Net()
    net.apply(lambda m: init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert all(not m.weight.numpy().any() for m in net.modules() if isinstance(m, nn.Linear))
    net.to(np.float64)
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net.norm.running_mean.dtype == np.float64 and net.norm.num_batches_tracked.dtype == np.int64
    assert net.to("cpu") is net and net.scale.device == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not mg.cuda_available(), reason="no CUDA GPU")
def test_to_cuda_and_back():
    net = Net()
    x = mg.randn(4, 2)
    expected = [o.numpy() for o in net.eval()(x)]
    net.to("cuda")
    assert all(t.device == "cuda" for t in list(net.parameters()) + list(net.buffers()))
    outputs = net(x.to("cuda"))
    for o, e in zip(outputs, expected):
        np.testing.assert_allclose(o.numpy(), e, rtol=1e-5, atol=1e-6)
    assert all(isinstance(v, np.ndarray) for v in net.state_dict().values())
    net.to("cpu")
    assert all(t.device == "cpu" for t in net.parameters())


# --- state_dict ----------------------------------------------------------------------------------------------


def test_state_dict_is_a_copy_on_the_cpu():
    net = Net()
    state = net.state_dict()
    assert list(state)[:3] == ["scale", "steps", "body.0.weight"]
    assert all(type(v) is np.ndarray for v in state.values())
    state["scale"][...] = 5
    assert net.scale.numpy()[0] == 1


def test_state_dict_round_trip_with_buffers():
    mg.manual_seed(1)
    a = Net()
    for _ in range(3):
        a(mg.randn(8, 2))                          # moves BatchNorm's running statistics
    mg.manual_seed(2)
    b = Net()
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb, err_msg=k)
    assert int(b.norm.num_batches_tracked.item()) == 3
    x = mg.randn(4, 2)
    for oa, ob in zip(a.eval()(x), b.eval()(x)):
        np.testing.assert_array_equal(oa.numpy(), ob.numpy())


def test_load_state_dict_errors_list_every_problem():
    net = Net()
    state = net.state_dict()
    del state["body.0.bias"], state["norm.running_var"]
    state["body.9.weight"] = np.zeros(3)
    state["heads.mu.weight"] = np.zeros((5, 3))
    with pytest.raises(RuntimeError) as error:
        net.load_state_dict(state)
    message = str(error.value)
    for expected in ["missing keys: body.0.bias, norm.running_var", "unexpected keys: body.9.weight",
                     "size mismatch for heads.mu.weight: the checkpoint has shape (5, 3), the module (2, 3)"]:
        assert expected in message

    del state["heads.mu.weight"]
    state["scale"] = mg.full((1,), fill_value=3.0)         # Tensors are accepted too
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["body.0.bias", "norm.running_var", "heads.mu.weight"]
    assert result.unexpected_keys == ["body.9.weight"]
    assert net.scale.numpy()[0] == 3.0
    state["norm.weight"] = np.zeros(4)
    with pytest.raises(RuntimeError, match="size mismatch for norm.weight"):
        net.load_state_dict(state, strict=False)  # shapes must match even when not strict


def test_repr():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.LeakyReLU(0.2),
                          nn.Sequential(nn.Flatten(), nn.Linear(8, 2, bias=False)), nn.Dropout(0.1))
    assert repr(model) == """\
Sequential(
  (0): Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (1): LeakyReLU(negative_slope=0.2)
  (2): Sequential(
    (0): Flatten(start_dim=1, end_dim=-1)
    (1): Linear(in_features=8, out_features=2, bias=False)
  )
  (3): Dropout(p=0.1)
)"""
    assert repr(nn.LSTM(3, 4, batch_first=True)).splitlines()[:3] == [
        "LSTM(", "  3, 4, num_layers=1, batch_first=True", "  (cells): ModuleList("]
    assert repr(nn.MaskedConv2d("A", 1, 2, 5)).startswith("MaskedConv2d('A', 1, 2, kernel_size=(5, 5)")
    assert repr(nn.Parameter(mg.zeros(2))).startswith("Parameter containing:\ntensor(")


# --- layers against PyTorch -----------------------------------------------------------------------------------


def _flat(outputs):
    """Tensors of a nested tuple of outputs, in order."""
    if isinstance(outputs, tuple):
        return [t for o in outputs for t in _flat(o)]
    return [outputs]


def _convert(value, make):
    return tuple(_convert(v, make) for v in value) if isinstance(value, tuple) else make(value)


def _recurrent_name(name: str) -> str:
    """Our stacked layers' `cells.l.weight_ih` is PyTorch's `weight_ih_l{l}`."""
    return re.sub(r"cells\.(\d+)\.(\w+)", r"\2_l\1", name)


def compare_with_torch(ours, theirs, *inputs, rename=lambda name: name, rtol=1e-7):
    """Copy our parameters and buffers into `theirs`, run both in float64 on the same inputs (arrays or tuples
    of arrays), and compare the outputs, then the gradients of <g, outputs> for a random g with respect to
    every floating input and every parameter."""
    ours.to(np.float64)
    theirs.double()
    theirs.load_state_dict({rename(k): torch.from_numpy(v) for k, v in ours.state_dict().items()})
    floating = lambda a: a.dtype.kind == "f"  # noqa: E731
    xs = _convert(inputs, lambda a: mg.Tensor(a.copy(), requires_grad=floating(a)))
    ts = _convert(inputs, lambda a: torch.tensor(a, requires_grad=floating(a)))
    ys, ts_out = _flat(ours(*xs)), _flat(theirs(*ts))
    assert len(ys) == len(ts_out)
    rng = np.random.default_rng(0)
    gs = [rng.standard_normal(y.shape) for y in ys]
    for y, t in zip(ys, ts_out):
        np.testing.assert_allclose(y.numpy(), t.detach().numpy(), rtol=rtol, atol=1e-10)
    sum((y * mg.Tensor(g)).sum() for y, g in zip(ys, gs)).backward()
    sum((t * torch.from_numpy(g)).sum() for t, g in zip(ts_out, gs)).backward()
    for x, t in zip(_flat(xs), _flat(ts)):
        if t.requires_grad:
            np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=1e-10)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), theirs_params[rename(name)].grad.numpy(), rtol=rtol,
                                   atol=1e-10, err_msg=name)


def _randn(*shape):
    return np.random.default_rng(sum(shape)).standard_normal(shape)


# (our layer, PyTorch's, input shapes); each built lazily so that no torch code runs without torch
LAYERS = {
    "linear": (lambda: nn.Linear(3, 4), lambda: torch.nn.Linear(3, 4), [(2, 5, 3)]),
    "linear_no_bias": (lambda: nn.Linear(3, 4, bias=False), lambda: torch.nn.Linear(3, 4, bias=False), [(2, 3)]),
    "conv2d": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1), lambda: torch.nn.Conv2d(2, 4, 3, 2, 1),
               [(2, 2, 5, 5)]),
    "conv2d_groups": (lambda: nn.Conv2d(4, 2, (3, 2), dilation=2, groups=2, bias=False),
                      lambda: torch.nn.Conv2d(4, 2, (3, 2), dilation=2, groups=2, bias=False), [(1, 4, 6, 5)]),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
                         lambda: torch.nn.ConvTranspose2d(4, 2, 3, 2, 1, 1), [(2, 4, 3, 3)]),
    "layer_norm": (lambda: nn.LayerNorm((3, 4)), lambda: torch.nn.LayerNorm((3, 4)), [(2, 5, 3, 4)]),
    "layer_norm_plain": (lambda: nn.LayerNorm(4, elementwise_affine=False),
                         lambda: torch.nn.LayerNorm(4, elementwise_affine=False), [(3, 4)]),
    "batch_norm_plain": (lambda: nn.BatchNorm1d(3, affine=False, track_running_stats=False),
                         lambda: torch.nn.BatchNorm1d(3, affine=False, track_running_stats=False), [(4, 3)]),
    "group_norm": (lambda: nn.GroupNorm(2, 4), lambda: torch.nn.GroupNorm(2, 4), [(3, 4, 2, 3)]),
    "upsample": (lambda: nn.Upsample(scale_factor=2), lambda: torch.nn.Upsample(scale_factor=2), [(1, 2, 2, 3)]),
    "upsample_size": (lambda: nn.Upsample(size=(4, 6)), lambda: torch.nn.Upsample(size=(4, 6)), [(1, 2, 2, 3)]),
    "upsample_fraction": (lambda: nn.Upsample(scale_factor=1.5), lambda: torch.nn.Upsample(scale_factor=1.5),
                          [(1, 2, 3, 5)]),
    "upsample_size_down": (lambda: nn.Upsample(size=(5, 2)), lambda: torch.nn.Upsample(size=(5, 2)), [(1, 2, 3, 5)]),
    "flatten": (lambda: nn.Flatten(), lambda: torch.nn.Flatten(), [(2, 3, 2, 2)]),
    "relu": (lambda: nn.ReLU(), lambda: torch.nn.ReLU(), [(3, 4)]),
    "leaky_relu": (lambda: nn.LeakyReLU(0.1), lambda: torch.nn.LeakyReLU(0.1), [(3, 4)]),
    "elu": (lambda: nn.ELU(0.5), lambda: torch.nn.ELU(0.5), [(3, 4)]),
    "silu": (lambda: nn.SiLU(), lambda: torch.nn.SiLU(), [(3, 4)]),
    "gelu": (lambda: nn.GELU(), lambda: torch.nn.GELU(), [(3, 4)]),
    "gelu_tanh": (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU("tanh"), [(3, 4)]),
    "tanh": (lambda: nn.Tanh(), lambda: torch.nn.Tanh(), [(3, 4)]),
    "sigmoid": (lambda: nn.Sigmoid(), lambda: torch.nn.Sigmoid(), [(3, 4)]),
    "softplus": (lambda: nn.Softplus(2.0, 1.0), lambda: torch.nn.Softplus(2.0, 1.0), [(3, 4)]),
    "rnn_cell": (lambda: nn.RNNCell(3, 4), lambda: torch.nn.RNNCell(3, 4), [(2, 3), (2, 4)]),
    "rnn_cell_relu": (lambda: nn.RNNCell(3, 4, nonlinearity="relu"),
                      lambda: torch.nn.RNNCell(3, 4, nonlinearity="relu"), [(2, 3)]),
    "lstm_cell": (lambda: nn.LSTMCell(3, 4), lambda: torch.nn.LSTMCell(3, 4), [(2, 3), ((2, 4), (2, 4))]),
    "gru_cell": (lambda: nn.GRUCell(3, 4, bias=False), lambda: torch.nn.GRUCell(3, 4, bias=False),
                 [(2, 3), (2, 4)]),
    "rnn": (lambda: nn.RNN(3, 4, num_layers=2), lambda: torch.nn.RNN(3, 4, num_layers=2), [(5, 2, 3)]),
    "lstm": (lambda: nn.LSTM(3, 4, num_layers=2, batch_first=True),
             lambda: torch.nn.LSTM(3, 4, num_layers=2, batch_first=True), [(2, 5, 3), ((2, 2, 4), (2, 2, 4))]),
    "gru": (lambda: nn.GRU(3, 4, batch_first=True), lambda: torch.nn.GRU(3, 4, batch_first=True),
            [(2, 4, 3), (1, 2, 4)]),
}


def _inputs(shapes):
    return [tuple(_randn(*s) for s in shape) if isinstance(shape[0], tuple) else _randn(*shape) for shape in shapes]


@needs_torch
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch(name):
    ours, theirs, shapes = LAYERS[name]
    compare_with_torch(ours(), theirs(), *_inputs(shapes), rename=_recurrent_name)


@needs_torch
@given(batch=st.integers(1, 3), c_in=st.integers(1, 3), c_out=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 1), bias=st.booleans())
def test_convolutions_match_torch(batch, c_in, c_out, k, stride, padding, bias):
    x = _randn(batch, c_in, 4, 4)
    compare_with_torch(nn.Conv2d(c_in, c_out, k, stride, padding, bias=bias),
                       torch.nn.Conv2d(c_in, c_out, k, stride, padding, bias=bias), x)
    compare_with_torch(nn.ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding=stride - 1, bias=bias),
                       torch.nn.ConvTranspose2d(c_in, c_out, k, stride, padding, stride - 1, bias=bias), x)


@needs_torch
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (6, 3)), ("BatchNorm1d", (4, 3, 5)),
                                        ("BatchNorm2d", (2, 3, 4, 4))])
def test_batch_norm_matches_torch(cls, shape, momentum):
    ours, theirs = getattr(nn, cls)(3, momentum=momentum), getattr(torch.nn, cls)(3, momentum=momentum)
    init.normal_(ours.weight)
    init.normal_(ours.bias)
    for step in range(2):                          # training: batch statistics, running ones updated
        compare_with_torch(ours, theirs, _randn(*shape) * 2 + step)
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(theirs, name).numpy(), rtol=1e-7)
    ours.eval(), theirs.eval()                     # eval: the running statistics
    compare_with_torch(ours, theirs, _randn(*shape))


@needs_torch
def test_embedding_and_calculate_gain_match_torch():
    indices = np.array([[0, 4, 4], [2, 1, 0]])
    compare_with_torch(nn.Embedding(5, 3), torch.nn.Embedding(5, 3), indices)
    for nonlinearity, param in [("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None),
                                ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None)]:
        assert init.calculate_gain(nonlinearity, param) == pytest.approx(
            torch.nn.init.calculate_gain(nonlinearity, param))


# --- closed forms (no PyTorch needed) ---------------------------------------------------------------------------


def test_linear_and_norms_closed_forms():
    x = mg.randn(6, 3, dtype="float64")
    lin = nn.Linear(3, 2).to(np.float64)
    np.testing.assert_allclose(lin(x).numpy(), x.numpy() @ lin.weight.numpy().T + lin.bias.numpy())
    bound = 1 / math.sqrt(3)
    assert np.abs(lin.weight.numpy()).max() <= bound and np.abs(lin.bias.numpy()).max() <= bound

    bn = nn.BatchNorm1d(3).to(np.float64)
    y = bn(x * 3 + 1).numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(0), 1, rtol=1e-4)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * (x.numpy() * 3 + 1).mean(0))
    ln = nn.LayerNorm(3).to(np.float64)
    np.testing.assert_allclose(ln(x).numpy().mean(-1), 0, atol=1e-12)
    gn = nn.GroupNorm(1, 3).to(np.float64)
    np.testing.assert_allclose(gn(x.reshape(6, 3, 1)).numpy()[..., 0], ln(x).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(mg.randn(1, 3))
    with pytest.raises(ValueError, match="expects input of 4 dimensions"):
        nn.BatchNorm2d(3)(mg.randn(2, 3))
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        nn.Upsample()


def test_dropout():
    drop = nn.Dropout(0.25)
    x = mg.ones(200, 100)
    y = drop(x).numpy()
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.01     # 20,000 draws: the standard error is 0.003
    mg.manual_seed(3)
    a = drop(x).numpy()
    mg.manual_seed(3)
    np.testing.assert_array_equal(a, drop(x).numpy())
    assert drop.eval()(x) is x and nn.Dropout(0.0)(x) is x


# --- gradient checks through every layer ------------------------------------------------------------------------


def check_layer_gradients(layer, *inputs):
    """gradcheck (float64) of the layer's outputs with respect to its floating inputs and all its parameters."""
    layer.to(np.float64)
    params = list(layer.parameters())
    xs = [mg.Tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]

    def fn(*tensors):
        with swapped_parameters(layer, tensors[len(xs):]):
            return tuple(_flat(layer(*tensors[:len(xs)])))

    assert mg.gradcheck(fn, xs + params)


GRADCHECK_LAYERS = {name: (make, shapes) for name, (make, _, shapes) in LAYERS.items()
                    if name not in ("relu", "leaky_relu", "lstm_cell", "lstm")}   # kinks / tuple inputs: below
GRADCHECK_LAYERS.update({
    "batch_norm_train": (lambda: nn.BatchNorm2d(2), [(3, 2, 2, 2)]),
    "batch_norm_eval": (lambda: nn.BatchNorm1d(2).eval(), [(3, 2)]),
    "masked_linear": (lambda: nn.MaskedLinear(3, 2), [(2, 3)]),
    "masked_conv2d": (lambda: nn.MaskedConv2d("B", 2, 2, 3, padding=1), [(1, 2, 3, 3)]),
    "lstm_cell": (lambda: nn.LSTMCell(2, 3), [(2, 2)]),
    "lstm": (lambda: nn.LSTM(2, 3, num_layers=2), [(3, 2, 2)]),
})


@pytest.mark.parametrize("name", list(GRADCHECK_LAYERS))
def test_layer_gradcheck(name):
    make, shapes = GRADCHECK_LAYERS[name]
    check_layer_gradients(make(), *[_randn(*s) for s in shapes])


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers_at_second_and_third_order_over_a_sequence(cell):
    """Over several steps the gradient arriving at step t was computed from step t's own input: the fused nodes'
    second derivatives must be partial ones in each of their inputs (they were total ones, and freed the graph)."""
    mg.manual_seed(0)
    layer = getattr(nn, cell)(2, 3, num_layers=2)
    layer.to(np.float64)
    weights = mg.tensor(np.cos(np.arange(3 * 2 * 3)).reshape(3, 2, 3))
    f = lambda x: (layer(x)[0] * weights).sum()  # noqa: E731
    x = mg.tensor(_randn(3, 2, 2), requires_grad=True)
    assert mg.gradgradcheck(f, [x])
    assert mg.gradgradcheck(lambda x: mg.grad(f(x), [x], create_graph=True)[0], [x])


def test_gradcheck_piecewise_linear_activations_and_embedding():
    x = _randn(3, 4)
    x[np.abs(x) < 0.1] = 0.5                       # keep away from the kink
    for layer in (nn.ReLU(), nn.LeakyReLU(0.2)):
        check_layer_gradients(layer, x)
    check_layer_gradients(nn.Embedding(4, 2), np.array([0, 3, 3]))


# --- autoregressive masks ------------------------------------------------------------------------------------


def made(n_in: int, hidden: list[int], rng) -> nn.Sequential:
    """MADE (Germain et al. 2015): input d gets degree d (1..D), each hidden unit a degree from the previous
    layer's smallest to D-1 (so that no unit is cut off); a hidden unit sees inputs of degree <= its own, an
    output of degree d sees hidden units of degree < d."""
    degrees = [np.arange(1, n_in + 1)]
    for h in hidden:
        degrees.append(rng.integers(degrees[-1].min(), n_in, size=h))
    layers = []
    for d_in, d_out in zip(degrees, degrees[1:] + [np.arange(1, n_in + 1)]):
        layer = nn.MaskedLinear(len(d_in), len(d_out))
        is_output = len(layers) == 2 * len(hidden)
        layer.set_mask(d_out[:, None] > d_in[None, :] if is_output else d_out[:, None] >= d_in[None, :])
        layers += [layer, nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def jacobian(fn, x: mg.Tensor) -> np.ndarray:
    """d fn(x)_i / d x_j, summed over the batch, row by row through minigen.grad."""
    y = fn(x)
    rows = [mg.grad(y[:, i].sum(), x, retain_graph=True)[0].numpy().sum(0) for i in range(y.shape[1])]
    return np.abs(np.stack(rows))


@given(n_in=st.integers(2, 6), hidden=st.lists(st.integers(4, 10), min_size=1, max_size=2), seed=st.integers(0, 99))
def test_made_is_autoregressive(n_in, hidden, seed):
    net = made(n_in, hidden, np.random.default_rng(seed)).to(np.float64)
    J = jacobian(net, mg.randn(3, n_in, dtype="float64", requires_grad=True))
    assert (J[np.triu_indices(n_in)] == 0).all()   # output i sees only inputs j < i
    assert J[n_in - 1, 0] > 0                      # and does see them (the last output sees the first input)


def test_masked_linear_closed_form():
    layer = nn.MaskedLinear(3, 2)
    mask = np.array([[1, 0, 1], [0, 1, 0]])
    layer.set_mask(mask)
    x = mg.randn(4, 3)
    np.testing.assert_allclose(layer(x).numpy(), x.numpy() @ (layer.weight.numpy() * mask).T + layer.bias.numpy(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mask of shape"):
        layer.set_mask(np.ones((3, 2)))
    assert "mask" in layer.state_dict()


def _receptive_field(net, channels: int, size: int = 7) -> np.ndarray:
    """Where the input influences the centre output pixel (any channel): the support of its gradient."""
    x = mg.randn(1, channels, size, size, dtype="float64", requires_grad=True)
    y = net(x)
    (g,) = mg.grad(y[0, :, size // 2, size // 2].sum(), x)
    return np.abs(g.numpy()[0]).sum(0) > 0


@given(k=st.sampled_from([1, 3, 5]), channels=st.integers(1, 3))
def test_pixelcnn_masks(k, channels):
    c = 3                                          # the centre of a 7 x 7 image
    rows, cols = np.mgrid[:7, :7]
    window = (np.abs(rows - c) <= k // 2) & (np.abs(cols - c) <= k // 2)
    before = (rows < c) | ((rows == c) & (cols < c))
    for mask_type, allowed in [("A", window & before), ("B", window & (before | ((rows == c) & (cols == c))))]:
        layer = nn.MaskedConv2d(mask_type, channels, 2, k, padding=k // 2).to(np.float64)
        np.testing.assert_array_equal(_receptive_field(layer, channels), allowed)
    stack = nn.Sequential(nn.MaskedConv2d("A", channels, 4, k, padding=k // 2), nn.Tanh(),
                          nn.MaskedConv2d("B", 4, 4, k, padding=k // 2)).to(np.float64)
    assert not (_receptive_field(stack, channels) & ~before).any()   # still no pixel at or after the centre


# --- initializations ------------------------------------------------------------------------------------------


def _std_close(w: mg.Tensor, std: float, rel: float = 0.02) -> None:
    # the sample std of n draws has relative standard error ~ 1 / sqrt(2 n) = 0.003 here
    assert w.numpy().std() == pytest.approx(std, rel=rel)


def test_init_statistics():
    w = mg.zeros(200, 300, dtype="float64")
    _std_close(init.kaiming_normal_(w, nonlinearity="relu"), math.sqrt(2 / 300))
    _std_close(init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 200))
    _std_close(init.kaiming_normal_(w, a=0.2, nonlinearity="leaky_relu"), math.sqrt(2 / 1.04 / 300))
    bound = math.sqrt(3) * (5 / 3) / math.sqrt(300)
    init.kaiming_uniform_(w, nonlinearity="tanh")
    assert np.abs(w.numpy()).max() <= bound
    _std_close(w, bound / math.sqrt(3))
    _std_close(init.xavier_normal_(w, gain=2.0), 2 * math.sqrt(2 / 500))
    _std_close(init.xavier_uniform_(w), math.sqrt(2 / 500))
    _std_close(init.normal_(w, 1.0, 0.5), 0.5)
    assert w.numpy().mean() == pytest.approx(1.0, abs=0.01)
    init.uniform_(w, -2, 4)
    assert w.numpy().min() >= -2 and w.numpy().max() <= 4 and w.numpy().mean() == pytest.approx(1.0, abs=0.02)
    assert (init.zeros_(w).numpy() == 0).all() and (init.ones_(w).numpy() == 1).all()
    conv = mg.zeros(64, 16, 3, 3)                 # fan_in = 16 * 9
    _std_close(init.kaiming_normal_(conv), math.sqrt(2 / 144), rel=0.03)
    assert conv.dtype == np.float32
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(mg.zeros(3))


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (3, 2, 2, 2)])
def test_orthogonal(shape):
    w = init.orthogonal_(mg.zeros(*shape, dtype="float64"), gain=2.0)
    q = w.numpy().reshape(shape[0], -1) / 2
    small = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
    np.testing.assert_allclose(small, np.eye(min(q.shape)), atol=1e-12)


def test_init_reproducible_with_manual_seed():
    mg.manual_seed(7)
    a = [p.numpy() for p in nn.LSTM(3, 4).parameters()] + [init.orthogonal_(mg.zeros(3, 3)).numpy()]
    mg.manual_seed(7)
    b = [p.numpy() for p in nn.LSTM(3, 4).parameters()] + [init.orthogonal_(mg.zeros(3, 3)).numpy()]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], a[1][:, :3])
