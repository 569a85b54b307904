"""The autodiff engine: Tensor, Function, the tape, backward() and grad().

A `Tensor` wraps one array (NumPy or CuPy). Every operation on tensors is a `Function`: its `forward`
works on raw arrays, its `backward` is written in Tensor operations. When gradients are recorded, calling a
Function links its output tensors to it (`tensor.creator`) and the Function to its inputs, which builds the
graph. `backward()` / `grad()` walk that graph from the outputs back to the inputs in reverse topological
order, calling each Function's `backward` with the gradients of its outputs.

Because `backward` is made of Tensor operations, running it while gradients are recorded
(`create_graph=True`) builds the graph of the gradient itself: grad-of-grad for free (WGAN-GP, Hessian-vector
products, Hutchinson trace estimates). With `create_graph=False` it runs under `no_grad`, where an operation
is one array call and one small wrapper. A tensor the outputs were computed from always gets a gradient,
zeros included (relu's second derivative), as in PyTorch and JAX; only one never used is "unused".

Memory: a Function holds its inputs (it needs them for backward) and only weak references to its outputs,
so tensor -> function -> tensor chains point one way and free as soon as the last tensor goes.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import heapq
import itertools
import operator
import weakref
from typing import Sequence

import numpy as np

from . import backend

# ---------------------------------------------------------------------------------------------------------
# Modes: recording gradients, anomaly detection
# ---------------------------------------------------------------------------------------------------------


class _Mode:
    grad_enabled = True
    detect_anomaly = False
    in_backward_of = None     # under detect_anomaly: the Function whose backward is running


class _GradMode(contextlib.ContextDecorator):
    """Sets whether operations are recorded; usable as `with` block and as a decorator."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev = _Mode.grad_enabled
        _Mode.grad_enabled = self.enabled

    def __exit__(self, *exc):
        _Mode.grad_enabled = self.prev


def no_grad() -> _GradMode:
    """Operations inside are not recorded (no graph, no memory held for backward)."""
    return _GradMode(False)


def enable_grad() -> _GradMode:
    """Record operations again, e.g. inside a `no_grad` block."""
    return _GradMode(True)


def is_grad_enabled() -> bool:
    return _Mode.grad_enabled


@contextlib.contextmanager
def detect_anomaly():
    """Raise as soon as an operation's forward or backward turns finite inputs into NaN or inf, naming it."""
    prev = _Mode.detect_anomaly
    _Mode.detect_anomaly = True
    try:
        yield
    finally:
        _Mode.detect_anomaly = prev


def _all_finite(arrays) -> bool:
    return all(a is None or a.dtype.kind not in "fc" or bool(backend.get_array_module(a).isfinite(a).all())
               for a in arrays)


# ---------------------------------------------------------------------------------------------------------
# Tensor
# ---------------------------------------------------------------------------------------------------------


class Tensor:
    """An array with an optional gradient and the Function that made it."""

    __slots__ = ("data", "grad", "requires_grad", "creator", "index", "__weakref__")
    __array_ufunc__ = None   # make `ndarray * Tensor` call Tensor.__rmul__ instead of NumPy looping over it

    def __init__(self, data, requires_grad: bool = False):
        if requires_grad and data.dtype.kind not in "fc":
            raise TypeError(f"only floating tensors can require gradients, got dtype {data.dtype}")
        self.data = data
        self.grad: Tensor | None = None
        self.requires_grad = requires_grad
        self.creator: Function | None = None
        self.index = 0           # which output of `creator` this tensor is

    # -- array attributes -------------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self.creator is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        grad = ", requires_grad=True" if self.requires_grad else ""
        dtype = "" if self.dtype == backend.get_default_dtype() else f", dtype={self.dtype}"
        device = ", device='cuda'" if self.device == "cuda" else ""
        return f"tensor({body}{dtype}{device}{grad})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when needed)."""
        return backend.to_device(self.data, "cpu")

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def item(self):
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def __bool__(self):
        return bool(self.data)

    def __float__(self):
        return float(self.data)

    def __int__(self):
        return int(self.data)

    __hash__ = object.__hash__   # `==` is elementwise, so hash by identity

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and self.dtype.kind not in "fc":
            raise TypeError(f"only floating tensors can require gradients, got dtype {self.dtype}")
        self.requires_grad = flag
        return self

    def to(self, device_or_dtype) -> Tensor:
        """`.to('cpu'|'cuda')` moves the data, `.to(dtype)` casts; both are differentiable."""
        if isinstance(device_or_dtype, str) and device_or_dtype in backend.DEVICES:
            return self if device_or_dtype == self.device else ToDevice(device_or_dtype)(self)
        return self.astype(device_or_dtype)

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    # -- backward -----------------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires grad.

        `grad` is the gradient of some scalar with respect to self; it may be left out only when self
        has a single element.
        """
        grads = _walk([self], [grad], None, retain_graph or create_graph, create_graph)
        given = {id(grad.data if isinstance(grad, Tensor) else grad)}   # a leaf's .grad must not alias it
        for leaf, g in grads.items():
            g = _zeros_like(leaf) if g is None else _own_copy(g, given)
            leaf.grad = g if leaf.grad is None else leaf.grad + g


# Tensor operators and methods are attached in minigen/ops/__init__.py, right beside the operations.


def _wrap(data, creator: Function | None = None) -> Tensor:
    """A tensor around `data`: one that needs no gradient (the fast path of every operation), or the output
    of `creator` (Function.__call__ when it records)."""
    t = Tensor.__new__(Tensor)
    t.data = data
    t.grad = None
    t.requires_grad = creator is not None
    t.creator = creator
    t.index = 0
    return t


# ---------------------------------------------------------------------------------------------------------
# Function
# ---------------------------------------------------------------------------------------------------------


class Function:
    """One operation in the graph.

    Subclasses define `forward(*arrays) -> array or tuple of arrays` and
    `backward(*grad_outputs) -> Tensor or tuple (one per input, None where no gradient flows)`.
    Inside `backward`, `self.inputs` are the input tensors and `self.output(i)` the i-th output tensor.
    A gradient whose shape differs from its input's (broadcasting) is summed back by the engine.
    `self.needs_grad(i)` says whether input i wants a gradient, to skip work.
    """

    inputs: tuple[Tensor, ...] | None = None
    outputs: tuple = ()

    def __call__(self, *inputs: Tensor):
        # the hot path of every operation: kept to plain loops and attribute reads
        n = len(inputs)
        ys = (self.forward(inputs[0].data) if n == 1 else self.forward(inputs[0].data, inputs[1].data) if n == 2
              else self.forward(*[x.data for x in inputs]))
        multi = type(ys) is tuple
        if _Mode.detect_anomaly:
            self._check_finite([x.data for x in inputs], ys if multi else (ys,), "forward")
        if _Mode.grad_enabled:
            for x in inputs:
                if x.requires_grad:
                    node = self if self.inputs is None else copy.copy(self)   # called twice: two nodes
                    # link the outputs to the node and the node to its inputs (one output written out here)
                    node.number = next(_counter)
                    node.inputs = inputs
                    if multi:
                        return node._link_outputs(ys)
                    out = _wrap(ys, node)
                    node.outputs = (weakref.ref(out),)
                    return out
        return tuple(map(_wrap, ys)) if multi else _wrap(ys)

    def _link_outputs(self, ys: tuple) -> tuple[Tensor, ...]:
        """The output tensors of a function of several outputs, linked to it (the float ones differentiable)."""
        outs = tuple(_wrap(y) for y in ys)
        for i, out in enumerate(outs):
            out.requires_grad = out.dtype.kind in "fc"
            out.creator = self
            out.index = i
        self.outputs = tuple(weakref.ref(o) for o in outs)
        self.output_meta = [(y.shape, y.dtype) for y in ys]
        return outs

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, *gys):
        raise NotImplementedError

    def output(self, i: int = 0) -> Tensor:
        out = self.outputs[i]()
        if out is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs output {i}, which no longer exists")
        return out

    def needs_grad(self, i: int) -> bool:
        return self.inputs[i].requires_grad

    def _check_finite(self, inputs, outputs, phase):
        if _all_finite(inputs) and not _all_finite(outputs):
            culprit = _Mode.in_backward_of
            where = (f"{type(culprit).__name__} produced NaN or inf in its backward (at its "
                     f"{type(self).__name__} step)" if culprit is not None and culprit is not self else
                     f"{type(self).__name__} produced NaN or inf in its {phase}")
            raise FloatingPointError(f"detect_anomaly: {where}, from finite "
                                     f"{'inputs' if phase == 'forward' else 'output gradients'}")

    def __repr__(self):
        return f"<{type(self).__name__}>"


# ---------------------------------------------------------------------------------------------------------
# Walking the graph
# ---------------------------------------------------------------------------------------------------------


def _topological_order(roots: list[Function], floor: int = -1) -> list[Function]:
    """Functions reachable from `roots`, each after every function that consumes its outputs: grad() needs
    them all before its walk, to prune it to the functions that lead to a target.

    A function is always created after the functions that made its inputs, so sorting by creation number,
    newest first, is a topological order: no depth-first search, no recursion limit. Functions numbered
    below `floor` are not walked: grad() sets it to the oldest target's creator, since nothing made
    before a target can lie between it and the outputs (a CNF's vector-Jacobian product at one solver
    step never walks the solve before it).
    """
    roots = [f for f in roots if f.number >= floor]
    seen, stack = set(roots), list(roots)
    while stack:
        f = stack.pop()
        _check_alive(f)
        for x in f.inputs:
            c = x.creator
            if c is not None and c not in seen and c.number >= floor:
                seen.add(c)
                stack.append(c)
    return sorted(seen, key=_creation_number, reverse=True)


def _check_alive(f: Function) -> None:
    if f.inputs is None:
        raise RuntimeError(
            f"trying to backward through the graph a second time (at {type(f).__name__}): its saved "
            "tensors were freed by the first backward. Pass retain_graph=True to the first backward() "
            "or grad() if you need to go through it again.")


_creation_number = operator.attrgetter("number")
_counter = itertools.count()


def _initial_grad(out: Tensor, g) -> Tensor:
    if g is None:
        if out.size != 1:
            raise RuntimeError(
                f"grad can be implicitly created only for outputs with one element; this output has shape "
                f"{out.shape}: pass the gradient of the output (grad / grad_outputs) explicitly")
        return _wrap(backend.get_array_module(out.data).ones_like(out.data))
    g = g if isinstance(g, Tensor) else _wrap(backend.get_array_module(out.data).asarray(g, dtype=out.dtype))
    if g.shape != out.shape:
        raise ValueError(f"gradient of shape {g.shape} given for an output of shape {out.shape}")
    return g


def _walk(outputs, grad_outputs, targets, retain_graph, create_graph) -> dict:
    """The engine behind Tensor.backward and grad: propagate the output gradients back through the graph.

    Returns {tensor: gradient} for every leaf reached and, when `targets` ({id: tensor}) is given, for
    every target reached; the walk is then pruned to the functions that lead to a target. A gradient of
    None marks a tensor reached only through zero derivatives (a backward returned None for it, e.g.
    relu's gradient in relu's input): the front ends turn it into exact zeros, as PyTorch and JAX give.

    Functions are taken newest first from a heap of those that have received a gradient: every consumer of
    a function's outputs was made after it, so when it comes out of the heap all its gradients are in. No
    topological sort of the whole graph first: on a 50-step tanh chain the backward takes 0.96 of the time.
    """
    for out in outputs:
        if not out.requires_grad:
            raise RuntimeError("element of outputs does not require grad and has no grad_fn: it was not "
                               "computed from a tensor with requires_grad=True (or was computed under no_grad)")
    pending: dict[Function, list] = {}      # gradients of each function's outputs, summed so far
    ready: list[tuple[int, Function]] = []  # heap of (-creation number, function), one entry per key of pending
    grads: dict[Tensor, Tensor | None] = {}
    arrived = zip(outputs, [_initial_grad(out, g) for out, g in zip(outputs, grad_outputs)])
    needed = None
    if targets is not None:
        floor = -1 if any(x.creator is None for x in targets.values()) else \
            min(x.creator.number for x in targets.values())
        order = _topological_order([out.creator for out in outputs if out.creator is not None], floor)
        needed = _functions_leading_to(order, targets)
    done = []
    pop, push = heapq.heappop, heapq.heappush
    with _GradMode(create_graph):
        while True:
            # add each gradient that arrived to its tensor's: in `grads` for a leaf, else in its creator's slot,
            # the creator entering the heap with its first (inlined: the hot loop of every backward)
            for x, gx in arrived:
                if not x.requires_grad:
                    continue
                if gx is not None and gx.data.shape != x.data.shape:
                    gx = sum_to(gx, x.data.shape)
                c = x.creator
                if c is None:
                    grads[x] = _sum_grads(grads.get(x), gx)
                    continue
                slot = pending.get(c)
                if slot is None:
                    slot = pending[c] = [None] * len(c.outputs)
                    push(ready, (-c.number, c))
                i = x.index
                slot[i] = gx if slot[i] is None else _sum_grads(slot[i], gx)
            if not ready:
                break
            f = pop(ready)[1]
            gys = pending.pop(f)
            arrived = ()
            if targets is not None:
                _collect_targets(f, gys, targets, grads)
                if f not in needed:       # e.g. made before the oldest target: its graph may be freed
                    continue
            inputs = f.inputs
            if inputs is None:
                _check_alive(f)
            done.append(f)
            if len(gys) > 1:
                gys = _fill_missing(f, gys)
            if gys is None or gys[0] is None:          # f reached only through zero derivatives
                gxs = (None,) * len(inputs)
            else:
                gxs = _checked_backward(f, gys) if _Mode.detect_anomaly else f.backward(*gys)
                if type(gxs) is not tuple:
                    gxs = (gxs,)
            arrived = zip(inputs, gxs)
    if not retain_graph:    # freed only now: a backward may need an output that only a consumer held
        for f in done:
            f.inputs = None
    return grads


def _sum_grads(old: Tensor | None, g: Tensor | None) -> Tensor | None:
    """The gradient gathered so far plus one more; None stands for a zero derivative."""
    return g if old is None else old if g is None else old + g


def _collect_targets(f: Function, gys: list, targets: dict, grads: dict) -> None:
    """grad() asked for some outputs of f: their gradients are complete now that f is reached."""
    for ref, g in zip(f.outputs, gys):
        out = ref()
        if out is not None and id(out) in targets:
            grads[out] = g


def _checked_backward(f: Function, gys: list):
    """f.backward under detect_anomaly: any NaN or inf it makes from finite gradients is blamed on f."""
    _Mode.in_backward_of = f
    try:
        gxs = f.backward(*gys)
    finally:
        _Mode.in_backward_of = None
    outs = gxs if isinstance(gxs, tuple) else (gxs,)
    f._check_finite([g.data for g in gys if g is not None], [g.data for g in outs if g is not None], "backward")
    return gxs


def _own_copy(g: Tensor, given: set) -> Tensor:
    """`g`, or a copy of it when its array may be shared (with another leaf's grad, or a caller's array)."""
    if id(g.data) in given or not getattr(g.data, "flags", None) or not g.data.flags.owndata:
        g = Tensor(backend.get_array_module(g.data).array(g.data)) if g.creator is None else g + 0
    given.add(id(g.data))
    return g


def _zeros_like(x: Tensor) -> Tensor:
    return _wrap(backend.get_array_module(x.data).zeros_like(x.data))


def _functions_leading_to(order: list[Function], targets: dict) -> set:
    """The functions from which some target tensor can be reached going backward (the rest is pruned)."""
    needed = set()
    for f in reversed(order):          # producers before consumers
        if any(id(x) in targets or x.creator in needed for x in f.inputs):
            needed.add(f)
    return needed


def _fill_missing(f: Function, gys: list) -> list:
    """Zeros for outputs of a multi-output function that received no gradient (None if none did)."""
    if all(g is not None for g in gys):
        return gys
    if all(g is None for g in gys):
        return None
    xp = backend.get_array_module(f.inputs[0].data)
    return [g if g is not None else _wrap(xp.zeros(*f.output_meta[i])) for i, g in enumerate(gys)]


_UNUSED = object()


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool = False) -> list[Tensor | None]:
    """Gradients of `outputs` with respect to `inputs`, returned rather than accumulated into `.grad`.

    outputs, inputs: a tensor or a sequence of tensors. grad_outputs: the gradient of some scalar with
    respect to each output (may be left out for single-element outputs). With `create_graph=True` the
    returned gradients are themselves part of a graph and can be differentiated again. An input the outputs
    were computed from gets its gradient, zeros included (the second derivative of relu); one they were not
    computed from is an error, or None with `allow_unused=True`.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    for x in inputs:
        if not isinstance(x, Tensor) or not x.requires_grad:
            raise RuntimeError("grad() asked for the gradient of a tensor that does not require grad; "
                               "create it with requires_grad=True")
    if retain_graph is None:
        retain_graph = create_graph
    grads = _walk(outputs, list(grad_outputs), {id(x): x for x in inputs}, retain_graph, create_graph)
    result = []
    for x in inputs:
        g = grads.get(x, _UNUSED)
        if g is _UNUSED and not allow_unused:
            raise RuntimeError("one of the differentiated tensors appears not to have been used in the "
                               "graph; pass allow_unused=True if this is what you want")
        result.append(None if g is _UNUSED else _zeros_like(x) if g is None else g)
    return result


# ---------------------------------------------------------------------------------------------------------
# Engine operations: broadcasting and moving between devices
# ---------------------------------------------------------------------------------------------------------


class BroadcastTo(Function):
    """y = x broadcast to `shape`;  gx = g summed over the broadcast axes (sum_to)."""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        try:
            return np.broadcast_to(x, self.shape)
        except ValueError:
            raise ValueError(f"cannot broadcast a tensor of shape {x.shape} to shape {self.shape}") from None

    def backward(self, g):
        return sum_to(g, self.inputs[0].shape)


class SumTo(Function):
    """y = x summed over the axes that broadcasting to x's shape would have added: the adjoint of
    broadcast_to, and how the engine brings every gradient back to its input's shape;
    gx = g broadcast back to x's shape."""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        lead = x.ndim - len(self.shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(self.shape)
                                          if n == 1 and x.shape[lead + i] != 1)
        y = x.sum(axis=axes, keepdims=True) if axes else x
        if y.shape[lead:] != self.shape:
            raise ValueError(f"a gradient of shape {x.shape} cannot be summed to its input's shape {self.shape}: "
                             "the backward of the op that produced it returned a wrong shape")
        return y.reshape(self.shape) if lead else y

    def backward(self, g):
        return broadcast_to(g, self.inputs[0].shape)


def broadcast_to(x: Tensor, shape) -> Tensor:
    shape = tuple(shape)
    return x if x.shape == shape else BroadcastTo(shape)(x)


def sum_to(x: Tensor, shape) -> Tensor:
    """Sum x down to `shape`, undoing a broadcast from `shape` to x's shape."""
    shape = tuple(shape)
    return x if x.shape == shape else SumTo(shape)(x)


class ToDevice(Function):
    """y = x copied to `device`;  gx = g copied back."""

    def __init__(self, device):
        self.device = device

    def forward(self, x):
        return backend.to_device(x, self.device)

    def backward(self, g):
        return ToDevice(self.inputs[0].device)(g)


# ---------------------------------------------------------------------------------------------------------
# Making tensors
# ---------------------------------------------------------------------------------------------------------


def _infer_dtype(data, dtype):
    if dtype is not None:
        return np.dtype(dtype)
    if isinstance(data, (bool, np.bool_)):
        return None
    if isinstance(data, float) or (isinstance(data, (list, tuple)) and _has_float(data)):
        return backend.get_default_dtype()
    return None


def _has_float(seq) -> bool:
    return any(isinstance(v, float) or (isinstance(v, (list, tuple)) and _has_float(v)) for v in seq)


def tensor(data, dtype=None, requires_grad: bool = False, device: str | None = None) -> Tensor:
    """A new leaf tensor from a Python number, nested lists, or a NumPy / CuPy array (copied).

    Python floats become the default dtype (float32); arrays keep theirs.
    """
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.array_module(device) if device is not None else backend.get_array_module(data)
    try:
        arr = xp.array(data, dtype=_infer_dtype(data, dtype))
    except (ValueError, TypeError):     # ragged lists, or values NumPy cannot convert to `dtype`
        arr = None
    if arr is None or arr.dtype.kind not in "biufc":
        text = repr(data)
        raise TypeError("tensor: data must be numbers or booleans (a number, an array, or lists nested to a "
                        f"regular shape); got {type(data).__name__} {text[:40]}{'...' if len(text) > 40 else ''}")
    return Tensor(arr, requires_grad=requires_grad)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """`x` itself when it is a tensor; a constant tensor otherwise (Python scalars take `like`'s dtype
    following NumPy's rules for Python scalars: int * float32 stays float32, float * int64 is float64)."""
    if isinstance(x, Tensor):
        return x
    if like is not None and type(x) in (float, int, bool):
        data = like.data
        dtype = data.dtype if data.dtype.kind == "f" else _scalar_dtype(data.dtype, type(x))
        # a 0-d array: NumPy's ufuncs take it faster than a NumPy or Python scalar
        return _wrap(np.array(x, dtype) if type(data) is np.ndarray else dtype.type(x))
    if like is not None:
        return _wrap(backend.get_array_module(like.data).asarray(x))
    return tensor(x)


@functools.lru_cache(maxsize=None)
def _scalar_dtype(dtype: np.dtype, kind: type) -> np.dtype:
    """The dtype NumPy 2 gives `array(dtype) op python_scalar`: it depends on the scalar's type only."""
    return np.result_type(dtype, kind(0))


def _creation(name: str, fill, what: str):
    """Make a public constructor (zeros, ones, ...) from an array-module function."""
    def make(*shape, dtype=None, requires_grad: bool = False, device: str | None = None):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        xp = backend.array_module(device or "cpu")
        data = fill(xp, shape, np.dtype(dtype or backend.get_default_dtype()))
        return Tensor(data, requires_grad=requires_grad)
    make.__name__ = make.__qualname__ = name
    make.__doc__ = (f"{name}(*shape, dtype=None, requires_grad=False, device=None): a tensor of {what} "
                    "(the default float dtype unless `dtype`); shape as ints or one tuple.")
    return make


zeros = _creation("zeros", lambda xp, shape, dtype: xp.zeros(shape, dtype), "zeros")
ones = _creation("ones", lambda xp, shape, dtype: xp.ones(shape, dtype), "ones")
empty = _creation("empty", lambda xp, shape, dtype: xp.empty(shape, dtype), "uninitialized values")
randn = _creation("randn", lambda xp, shape, dtype: backend.generator(_dev(xp)).standard_normal(shape).astype(dtype),
                  "standard normal draws from minigen's generator")
rand = _creation("rand", lambda xp, shape, dtype: backend.generator(_dev(xp)).random(shape).astype(dtype),
                 "uniform [0, 1) draws from minigen's generator")


def _dev(xp) -> str:
    return backend.device_of_module(xp)


def _like(maker):
    def make_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
        return maker(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad, device=t.device)
    make_like.__name__ = maker.__name__ + "_like"
    make_like.__doc__ = f"A tensor like `t` (shape, dtype, device) made by `{maker.__name__}`."
    return make_like


zeros_like, ones_like, randn_like, rand_like = _like(zeros), _like(ones), _like(randn), _like(rand)


def full(shape, fill_value, dtype=None, requires_grad: bool = False, device: str | None = None) -> Tensor:
    """A tensor of `shape` filled with `fill_value` (the default float dtype unless `dtype`)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    data = backend.array_module(device or "cpu").full(shape, fill_value, np.dtype(dtype or backend.get_default_dtype()))
    return Tensor(data, requires_grad=requires_grad)


def full_like(t: Tensor, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    return full(t.shape, fill_value, dtype=dtype or t.dtype, requires_grad=requires_grad, device=t.device)


def randint(low: int, high: int, shape: Sequence[int], device: str | None = None) -> Tensor:
    return Tensor(backend.generator(device or "cpu").integers(low, high, size=tuple(shape)))


def arange(start, stop=None, step=1, dtype=None, device: str | None = None) -> Tensor:
    """Like numpy.arange; floats give the default dtype, ints int64."""
    if stop is None:
        start, stop = 0, start
    if dtype is None and any(isinstance(v, float) for v in (start, stop, step)):
        dtype = backend.get_default_dtype()
    return Tensor(backend.array_module(device or "cpu").arange(start, stop, step, dtype=dtype))


def linspace(start, stop, num: int, dtype=None, device: str | None = None) -> Tensor:
    return Tensor(backend.array_module(device or "cpu").linspace(
        start, stop, num, dtype=dtype or backend.get_default_dtype()))


def eye(n: int, m: int | None = None, dtype=None, device: str | None = None) -> Tensor:
    return Tensor(backend.array_module(device or "cpu").eye(n, m, dtype=dtype or backend.get_default_dtype()))
