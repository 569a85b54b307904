"""The engine: graph walking, accumulation, retain/create graph, modes, errors, memory."""
import gc

import numpy as np
import pytest

import minigen as mg
import minigen.nn.functional as F


def f64(a, requires_grad=True):
    return mg.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = f64([1.0, -2.0, 3.0])
    y = (x * x + x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad.data, 2 * x.data + 1)
    z = (x * 3).sum()
    z.backward()              # .grad accumulates across backward calls, as in PyTorch
    np.testing.assert_allclose(x.grad.data, 2 * x.data + 4)


def test_diamond_graph_and_multiple_outputs():
    x = f64([0.5, 1.5])
    a, b = mg.split(x * 2, 2)
    y = (mg.exp(a) * b + a).sum()
    ga, = mg.grad(y, [x])
    np.testing.assert_allclose(ga.data, [2 * (np.exp(1.0) * 3.0 + 1), 2 * np.exp(1.0)])


def test_retain_graph_and_freed_graph_error():
    x = f64([1.0, 2.0])
    y = mg.tanh(x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.data, 2 * (1 - np.tanh(x.data) ** 2))
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        y.backward()


def test_tanh_derivatives_to_third_order_match_closed_forms():
    x = f64(np.linspace(-2, 2, 7))
    t = np.tanh(x.data)
    s = 1 - t ** 2
    d1, = mg.grad(mg.tanh(x).sum(), [x], create_graph=True)
    d2, = mg.grad(d1.sum(), [x], create_graph=True)
    d3, = mg.grad(d2.sum(), [x])
    np.testing.assert_allclose(d1.data, s)
    np.testing.assert_allclose(d2.data, -2 * t * s)
    np.testing.assert_allclose(d3.data, -2 * s * (1 - 3 * t ** 2))


def test_hessian_vector_product_by_double_backprop():
    x, v = f64([1.0, -2.0, 0.5]), np.array([0.3, 1.0, -2.0])
    g, = mg.grad((x ** 3).sum() + (x[0] * x[1]), [x], create_graph=True)
    hv, = mg.grad(g, [x], grad_outputs=mg.tensor(v))
    hessian = np.diag(6 * x.data) + np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(hv.data, hessian @ v)


def test_grad_of_intermediate_tensors_and_allow_unused():
    x = f64([1.0, 2.0])
    h = x * 3
    unused = f64([1.0])
    y = (h * h).sum()
    gh, gx, gu = mg.grad(y, [h, x, unused], allow_unused=True)
    np.testing.assert_allclose(gh.data, 2 * h.data)
    np.testing.assert_allclose(gx.data, 18 * x.data)
    assert gu is None
    with pytest.raises(RuntimeError, match="allow_unused=True"):
        mg.grad((x * 2).sum(), [x, unused])


def _spy(calls: list):
    """An identity Function that records each call of its backward in `calls`."""
    class Spy(mg.Function):
        def forward(self, a):
            return a * 1.0

        def backward(self, g):
            calls.append(1)
            return g
    return Spy


def test_grad_leaves_dot_grad_alone_and_only_walks_what_it_needs():
    calls = []
    Spy = _spy(calls)

    w, x = f64([2.0]), f64([3.0])
    y = (Spy()(w) * x).sum()
    gx, = mg.grad(y, [x])
    np.testing.assert_allclose(gx.data, [2.0])
    assert w.grad is None and x.grad is None
    assert calls == []      # nothing leads from Spy to x, so its backward never ran


def test_no_grad_and_enable_grad():
    x = f64([1.0])
    with mg.no_grad():
        y = x * 2
        with mg.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.creator is None
    assert z.requires_grad

    @mg.no_grad()
    def doubled(t):
        return t * 2
    assert not doubled(x).requires_grad
    assert mg.is_grad_enabled()


def test_detach_cuts_the_graph():
    x = f64([2.0])
    y = x.detach() * x
    y.backward()
    np.testing.assert_allclose(x.grad.data, [2.0])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:divide by zero:RuntimeWarning")
def test_detect_anomaly_names_the_op_forward_and_backward():
    with mg.detect_anomaly():
        with pytest.raises(FloatingPointError, match="Log produced NaN or inf in its forward"):
            mg.log(f64([-1.0, 1.0]))
        y = mg.sqrt(f64([0.0, 4.0])).sum()
        with pytest.raises(FloatingPointError, match="Sqrt produced NaN or inf in its backward"):
            y.backward()
    with np.errstate(all="ignore"):
        mg.log(f64([-1.0]))     # without the mode: NaN quietly, as NumPy


def test_a_100000_deep_chain_needs_no_recursion():
    x = mg.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.sum().backward()
    assert x.grad.item() == 1.0


def test_leaf_gradients_never_alias_each_other_or_the_given_gradient():
    a, b = f64([1.0, 2.0]), f64([3.0, 4.0])
    g = mg.tensor(np.ones(2))
    (a + b).backward(g)
    assert not np.shares_memory(a.grad.data, b.grad.data)
    assert not np.shares_memory(a.grad.data, g.data)
    c = f64([[1.0, 2.0]])
    d = mg.reshape(c, (2,))
    d.backward(g)
    assert not np.shares_memory(c.grad.data, g.data)


def test_broadcast_gradients_are_summed_to_each_input_shape():
    a, b = f64(np.ones((3, 1))), f64(np.ones((4,)))
    (a * b).sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (4,)
    np.testing.assert_allclose(a.grad.data, 4.0)
    np.testing.assert_allclose(b.grad.data, 3.0)


def test_dtypes():
    assert mg.tensor([1.0, 2.0]).dtype == np.float32
    assert mg.zeros(2, 3).dtype == np.float32
    assert mg.tensor(np.zeros(2)).dtype == np.float64
    assert mg.tensor([1, 2]).dtype == np.int64
    assert mg.tensor([1.0], dtype="float64").dtype == np.float64
    with pytest.raises(TypeError, match="only floating tensors can require gradients"):
        mg.tensor([1, 2], requires_grad=True)
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    assert not (x > 1).requires_grad and (x > 1).dtype == bool


def test_errors_are_clear():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="only for outputs with one element.*shape \\(2,\\)"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.grad((x * 2).sum(), [mg.tensor([1.0])])
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.tensor([1.0]).sum().backward()
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\) given for an output of shape \(2,\)"):
        (x * 2).backward(mg.ones(3))
    with pytest.raises(ValueError, match=r"cannot reshape a tensor of shape \(2,\)"):
        x.reshape(3)


@pytest.mark.skipif(mg.cuda_available(), reason="checks the message shown where there is no GPU")
def test_cuda_without_gpu_says_what_is_missing():
    with pytest.raises(RuntimeError, match="needs CuPy and a CUDA GPU.*pip install"):
        mg.tensor([1.0]).to("cuda")


def test_seeding_makes_cpu_runs_reproducible():
    mg.manual_seed(123)
    a = mg.randn(5).numpy(), F.dropout(mg.ones(10)).numpy()
    mg.manual_seed(123)
    b = mg.randn(5).numpy(), F.dropout(mg.ones(10)).numpy()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_tensor_basics():
    x = mg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert x.shape == (2, 2) and x.ndim == 2 and x.size == 4 and x.device == "cpu" and len(x) == 2
    assert x[1, 0].item() == 3.0
    assert "requires_grad=True" in repr(x)
    np.testing.assert_array_equal(np.asarray(x), x.numpy())
    np.testing.assert_array_equal((np.ones(2) * x).numpy(), x.numpy())   # ndarray on the left defers to Tensor
    assert x.to("cpu") is x and x.to("float64").dtype == np.float64


def _live_graph_objects():
    gc.collect()  # type(o), not isinstance: isinstance on a dead weakref.proxy (Numba leaves some) raises
    return sum(issubclass(type(o), (mg.Tensor, mg.Function)) for o in gc.get_objects())


def test_training_memory_stays_flat():
    rng = np.random.default_rng(0)
    params = [mg.tensor(rng.standard_normal((4, 16)) * 0.3, requires_grad=True), mg.zeros(16, requires_grad=True),
              mg.tensor(rng.standard_normal((16, 3)) * 0.3, requires_grad=True), mg.zeros(3, requires_grad=True)]
    x, labels = mg.tensor(rng.standard_normal((32, 4)).astype(np.float32)), mg.tensor(rng.integers(0, 3, 32))

    def step():
        w1, b1, w2, b2 = params
        loss = F.cross_entropy(mg.relu(x @ w1 + b1) @ w2 + b2, labels)
        for p in params:
            p.grad = None
        loss.backward()
        with mg.no_grad():
            for p in params:
                p.data -= 0.1 * p.grad.data
        return loss.item()

    first = step()
    for _ in range(100):
        step()
    count = _live_graph_objects()
    for _ in range(900):
        last = step()
    assert _live_graph_objects() == count
    assert last < first


def test_grad_with_respect_to_an_intermediate_never_walks_the_graph_before_it():
    calls = []
    Spy = _spy(calls)

    x = f64([1.0, 2.0])
    h = Spy()(x) * 3                 # made before the target: must not be visited by grad(y, [z])
    z = h * 2
    y = (z * z).sum()
    gz, = mg.grad(y, [z], retain_graph=True)
    np.testing.assert_allclose(gz.data, 2 * z.data)
    assert calls == []
    gx, = mg.grad(y, [x])            # a leaf target: everything is walked
    np.testing.assert_allclose(gx.data, 72 * x.data)
    assert calls == [1]


def test_grad_with_respect_to_an_intermediate_ignores_a_freed_graph_before_it():
    """A tensor from a graph an earlier backward freed may feed the outputs: grad() with respect to a later
    target never needs its creator, so it must not complain that the graph was freed."""
    x = f64([1.0, 2.0])
    w = x * 2
    w.sum().backward()               # frees w's creator
    z = (x * 3) * 1
    gz, = mg.grad((z * w).sum(), [z])
    np.testing.assert_allclose(gz.data, w.data)
    with pytest.raises(RuntimeError, match="second time"):
        mg.grad((z * w).sum(), [x])  # through w's creator: freed


def test_second_derivatives_of_piecewise_linear_ops_are_zeros_not_unused():
    """An input the forward used is reachable from its gradient's graph: relu's second derivative is an
    exact zero (PyTorch's and JAX's answer); an input never used stays an error, or None with allow_unused."""
    x, unused = f64([-1.0, 0.5, 2.0]), f64([1.0])
    g, = mg.grad((mg.relu(x) * x).sum(), [x], create_graph=True)     # 2x on x > 0, 0 elsewhere
    h, other = mg.grad(g.sum(), [x, unused], allow_unused=True)
    np.testing.assert_array_equal(h.data, [0.0, 2.0, 2.0])
    assert other is None
    g, = mg.grad(mg.relu(x).sum(), [x], create_graph=True)
    h, = mg.grad(g.sum(), [x])
    np.testing.assert_array_equal(h.data, [0.0, 0.0, 0.0])
    g, = mg.grad(mg.abs(x).sum(), [x], create_graph=True)
    g.sum().backward()                       # .backward() fills zeros too, as PyTorch
    np.testing.assert_array_equal(x.grad.data, [0.0, 0.0, 0.0])
    g, = mg.grad(mg.abs(x).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="allow_unused=True"):
        mg.grad(g.sum(), [x, unused])


def test_first_order_backward_records_no_extra_node(monkeypatch):
    """The fast path: tying a gradient to its input (for second derivatives) happens only under create_graph."""
    from minigen.ops.elementwise import Tie
    calls = []
    monkeypatch.setattr(Tie, "forward", lambda self, g, x: calls.append(1) or g)
    x = f64([-1.0, 2.0])
    (mg.relu(x) * mg.abs(x)).sum().backward()
    mg.grad(mg.clip(x, -0.5, 0.5).sum(), [x])
    assert not calls
    mg.grad(mg.relu(x).sum(), [x], create_graph=True)
    assert calls == [1]


def test_an_intermediate_reached_only_through_zero_derivatives_gets_zeros():
    x = f64([-1.0, 2.0])
    h = x * 3
    g, = mg.grad(mg.relu(h).sum(), [h], create_graph=True)
    gh, gx = mg.grad(g.sum(), [h, x])
    np.testing.assert_array_equal(gh.data, [0.0, 0.0])
    np.testing.assert_array_equal(gx.data, [0.0, 0.0])
