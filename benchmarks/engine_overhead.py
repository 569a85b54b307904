"""Engine overhead: minigen against PyTorch CPU, the pure-Python engines DeZero, HIPS autograd and MyGrad, and
a floor: the least engine of this kind (_Node, a micrograd on arrays, written here), to tell the price of
minigen's features from the price of Python.

Two cases, each forward + backward written by hand with every engine's own tensors:

- chain: 50 steps of ``y = tanh(y * 1.01 + 0.1)`` on a float32 array of shape (16,) and on a 0-d one,
  then ``y.sum().backward()``: 151 tiny operations, so the time is the per-operation cost of the engine
  (wrapping, recording the graph, walking it back), not arithmetic. Also reported in microseconds per op.
- mlp: one training step of an MLP 784-512-512-10 (ReLU), batch 128, float32: forward, cross-entropy
  with integer labels, backward, and the SGD update (lr 0.01) in place: by the engine's own optimizer for
  minigen (optim.SGD) and PyTorch (torch.optim.SGD), as their users would write it; by hand on the arrays for
  DeZero (whose optimizers take a Model), HIPS autograd and MyGrad (which have none).

Each engine runs in a process of its own, at 1 and at 2 threads (harness.EngineProcess; its thread count
set for BLAS, Numba and PyTorch alike), and is timed in interleaved bursts of back-to-back calls
(harness.measure_processes); medians and the interquartile spread are reported. Before timing, every
engine's results are checked against the reference (PyTorch when present, else minigen): the chain's input
gradient, and the MLP loss of two consecutive steps from the same initial weights and batch (the second loss
depends on the first step's gradients). A peer that cannot be imported is listed as absent.

    python -m benchmarks engine_overhead [--quick]
    python benchmarks/engine_overhead.py [--quick]
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

if not __package__:   # run as a script: make `benchmarks` and `minigen` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigen as mg  # noqa: E402
from benchmarks.harness import EngineProcess, measure_processes  # noqa: E402

STEPS = 50                       # chain length; each step is 3 ops (mul, add, tanh), plus the final sum
CHAIN_OPS = 3 * STEPS + 1
CHAIN_SHAPES = [(16,), ()]
SIZES = (784, 512, 512, 10)
BATCH = 128
LR = 0.01
ENGINES = ("minigen", "torch", "floor", "dezero", "autograd", "mygrad")
PEERS = ("torch", "floor")       # the ratio columns: every engine to PyTorch, and to the floor


def _problem(seed: int = 0):
    """Initial MLP weights (W as (in, out), PyTorch's default uniform bound), a batch and its labels."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        bound = 1.0 / np.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, (fan_out,)).astype(np.float32))
    x = rng.random((BATCH, SIZES[0]), dtype=np.float32)
    labels = rng.integers(0, SIZES[-1], BATCH)
    return params, x, labels


# --- one builder per engine: chain(x0) -> fn returning the input gradient; mlp(params, x, labels) -> step
# --- returning the loss. Each builder copies its arrays, so every engine starts from the same numbers.


def _minigen():
    def chain(x0):
        def fn():
            x = mg.tensor(x0, requires_grad=True)
            y = x
            for _ in range(STEPS):
                y = mg.tanh(y * 1.01 + 0.1)
            y.sum().backward()
            return x.grad.data
        return fn

    def mlp(params, x, labels):
        ps = [mg.tensor(p, requires_grad=True) for p in params]
        x, labels = mg.Tensor(x), mg.Tensor(labels)
        opt = mg.optim.SGD(ps, lr=LR)

        def step():
            h = x
            for w, b in zip(ps[0:-2:2], ps[1:-2:2]):
                h = mg.relu(h @ w + b)
            loss = mg.nn.functional.cross_entropy(h @ ps[-2] + ps[-1], labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.item()
        return step
    return chain, mlp, mg.__version__, ""


def _torch():
    import torch
    import torch.nn.functional as F

    def chain(x0):
        def fn():
            x = torch.tensor(x0, requires_grad=True)
            y = x
            for _ in range(STEPS):
                y = torch.tanh(y * 1.01 + 0.1)
            y.sum().backward()
            return x.grad.numpy()
        return fn

    def mlp(params, x, labels):
        ps = [torch.tensor(p, requires_grad=True) for p in params]
        x, labels = torch.from_numpy(x.copy()), torch.from_numpy(labels.copy())
        opt = torch.optim.SGD(ps, lr=LR)

        def step():
            h = x
            for w, b in zip(ps[0:-2:2], ps[1:-2:2]):
                h = torch.relu(h @ w + b)
            loss = F.cross_entropy(h @ ps[-2] + ps[-1], labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.item()
        return step
    return chain, mlp, torch.__version__, f"torch.get_num_threads() = {torch.get_num_threads()}"


def _dezero():
    np.int = int   # DeZero 0.0.13 still uses np.int, removed in NumPy 2; restore the alias before importing it
    import dezero
    import dezero.functions as F
    from dezero import Variable

    a, c = np.float32(1.01), np.float32(0.1)   # DeZero lifts Python floats to float64 0-d arrays

    def chain(x0):
        def fn():
            x = Variable(x0.copy())
            y = x
            for _ in range(STEPS):
                y = F.tanh(y * a + c)
            F.sum(y).backward()
            return x.grad.data
        return fn

    def mlp(params, x, labels):
        ps = [Variable(p.copy()) for p in params]
        x = x.copy()

        def step():
            h = x
            for w, b in zip(ps[0:-2:2], ps[1:-2:2]):
                h = F.relu(F.matmul(h, w) + b)
            loss = F.softmax_cross_entropy(F.matmul(h, ps[-2]) + ps[-1], labels)
            loss.backward()
            for p in ps:
                p.data -= LR * p.grad.data
                p.cleargrad()
            return float(loss.data)
        return step
    note = ("np.int = int set for NumPy 2; its gradients come out float64 (backward lifts Python ints to int64 "
            "arrays, which promote float32 under NumPy 2)")
    return chain, mlp, getattr(dezero, "__version__", "0.0.13"), note


def _autograd():
    import autograd
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    def chain_loss(x):
        y = x
        for _ in range(STEPS):
            y = anp.tanh(y * 1.01 + 0.1)
        return anp.sum(y)
    chain_grad = autograd.grad(chain_loss)

    def chain(x0):
        return lambda: chain_grad(x0)

    def mlp_loss(ps, x, labels):
        h = x
        for w, b in zip(ps[0:-2:2], ps[1:-2:2]):
            h = anp.maximum(h @ w + b, 0.0)
        logits = h @ ps[-2] + ps[-1]
        log_p = logits - logsumexp(logits, axis=1, keepdims=True)
        return -anp.mean(log_p[anp.arange(len(labels)), labels])
    mlp_value_and_grad = autograd.value_and_grad(mlp_loss)

    def mlp(params, x, labels):
        ps = [p.copy() for p in params]

        def step():
            loss, grads = mlp_value_and_grad(ps, x, labels)
            for p, g in zip(ps, grads):
                p -= LR * g
            return float(loss)
        return step
    return chain, mlp, _version("autograd"), "functional: grad / value_and_grad built once"


def _mygrad():
    import mygrad
    from mygrad.nnet.activations import relu
    from mygrad.nnet.losses import softmax_crossentropy

    def chain(x0):
        def fn():
            x = mygrad.tensor(x0)
            y = x
            for _ in range(STEPS):
                y = mygrad.tanh(y * 1.01 + 0.1)
            y.sum().backward()
            return x.grad
        return fn

    def mlp(params, x, labels):
        ps = [mygrad.tensor(p) for p in params]

        def step():
            h = x
            for w, b in zip(ps[0:-2:2], ps[1:-2:2]):
                h = relu(h @ w + b)
            loss = softmax_crossentropy(h @ ps[-2] + ps[-1], labels)
            loss.backward()
            for p in ps:
                p.data -= LR * p.grad
            return loss.item()
        return step
    return chain, mlp, mygrad.__version__, "memory guarding left on (its default)"


class _Node:
    """The floor: the least a define-by-run engine on NumPy does per operation, micrograd's engine.py on
    arrays. A node holds its array, its parents and a closure for its vector-Jacobian product; backward orders
    the graph by depth-first search and calls the closures. No double backward (the closures work on arrays),
    no broadcasting rules, no checks, no dtype care, no freeing of the graph: what is left is what any such
    engine pays, so minigen / floor is the price of minigen's features and floor / torch a bound on any
    engine of this kind written in Python."""

    __slots__ = ("data", "grad", "parents", "vjp")

    def __init__(self, data, parents=(), vjp=None):
        self.data, self.grad, self.parents, self.vjp = data, None, parents, vjp

    def backward(self):
        order, seen, stack = [], set(), [(self, False)]
        while stack:                             # post-order: a node after everything it was computed from
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack += [(p, False) for p in node.parents]
        self.grad = np.ones_like(self.data)
        for node in reversed(order):
            if node.vjp is not None:
                for p, g in zip(node.parents, node.vjp(node.grad)):
                    p.grad = g if p.grad is None else p.grad + g


def _floor():
    def scale(x, c):
        return _Node(x.data * c, (x,), lambda g: (g * c,))

    def shift(x, c):
        return _Node(x.data + c, (x,), lambda g: (g,))

    def tanh(x):
        y = np.tanh(x.data)
        return _Node(y, (x,), lambda g: (g * (1 - y * y),))

    def total(x):
        return _Node(x.data.sum(), (x,), lambda g: (np.broadcast_to(g, x.data.shape),))

    def affine(h, w, b):
        return _Node(h.data @ w.data + b.data, (h, w, b), lambda g: (g @ w.data.T, h.data.T @ g, g.sum(0)))

    def relu(x):
        return _Node(np.maximum(x.data, 0), (x,), lambda g: (g * (x.data > 0),))

    def cross_entropy(logits, labels):
        z = logits.data - logits.data.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        rows = np.arange(len(labels))

        def vjp(g):
            p = np.exp(log_p)
            p[rows, labels] -= 1
            return (p * (g / len(labels)),)
        return _Node(-log_p[rows, labels].mean(), (logits,), vjp)

    def chain(x0):
        def fn():
            x = _Node(x0)
            y = x
            for _ in range(STEPS):
                y = tanh(shift(scale(y, 1.01), 0.1))
            total(y).backward()
            return x.grad
        return fn

    def mlp(params, x, labels):
        ps = [_Node(p.copy()) for p in params]
        x = _Node(x)

        def step():
            h = x
            for w, b in zip(ps[0:-2:2], ps[1:-2:2]):
                h = relu(affine(h, w, b))
            loss = cross_entropy(affine(h, ps[-2], ps[-1]), labels)
            loss.backward()
            for p in ps:
                p.data -= LR * p.grad
                p.grad = None
            return float(loss.data)
        return step
    return chain, mlp, "", "the least a define-by-run engine does per op (_Node): a bound, not a library"


def _version(package: str) -> str:
    from importlib import metadata
    return metadata.version(package)


_BUILDERS = {"minigen": _minigen, "torch": _torch, "floor": _floor, "dezero": _dezero, "autograd": _autograd,
             "mygrad": _mygrad}


def _git_state() -> str:
    """The commit the minigen under test comes from, '+dirty' when minigen/ has uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(mg.__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "minigen"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


THREADS = (1, 2)
MLP_CASE = f"MLP {'-'.join(map(str, SIZES))} batch {BATCH} float32"


def _chain_case(shape: tuple) -> str:
    return f"tanh chain x{STEPS}, shape {shape}"


def build(name: str) -> dict:
    """The calls an engine process serves: "info" (version, notes), one chain per shape (returning the input
    gradient) and the MLP step (returning the loss), all from the same seeded arrays in every engine; an
    engine that cannot be imported serves only "absent" (the reason)."""
    try:
        chain, mlp, version, note = _BUILDERS[name]()
    except ImportError as e:
        reason = str(e)
        return {"absent": lambda: reason}
    rng = np.random.default_rng(1)
    calls = {_chain_case(shape): chain(rng.standard_normal(shape).astype(np.float32)) for shape in CHAIN_SHAPES}
    return {**calls, MLP_CASE: mlp(*_problem()), "info": lambda: (version, note)}


def _check(procs: dict, reference: str) -> dict:
    """Every engine's chain gradients and first two MLP losses against the reference engine's; returns the
    losses {engine: (step 1, step 2)}."""
    for case in map(_chain_case, CHAIN_SHAPES):
        want = np.asarray(procs[reference].result(case))
        for name, proc in procs.items():
            got = np.asarray(proc.result(case))
            assert np.allclose(got, want, rtol=1e-3, atol=0), f"{case}: {name} gives gradient {got}, {reference} {want}"
    losses = {name: (proc.result(MLP_CASE), proc.result(MLP_CASE)) for name, proc in procs.items()}
    for name, pair in losses.items():
        assert np.allclose(pair, losses[reference], rtol=1e-4), \
            f"mlp: {name} gives losses {pair} in its first two steps, {reference} {losses[reference]}"
    return losses


def _timings(threads: int, quick: bool, status: dict, engines=ENGINES) -> list[dict]:
    """One row per (case, engine) at `threads` threads; fills `status` with each engine's version and notes."""
    procs = {}
    try:
        for name in engines:
            proc = EngineProcess(build, name, threads)
            if "absent" in proc.names:
                status[name] = {"engine": name, "version": "", "status": f"absent ({proc.result('absent')})", "notes": ""}
                proc.close()
                continue
            procs[name] = proc
            version, note = proc.result("info")
            status[name] = {"engine": name, "version": version, "status": "ok", "notes": note}
        losses = _check(procs, "torch" if "torch" in procs else "minigen")
        for name, pair in losses.items():
            status[name]["notes"] += ("; " if status[name]["notes"] else "") + "MLP losses of steps 1, 2: %.6f, %.6f" % pair
        rows = []
        for case in [*map(_chain_case, CHAIN_SHAPES), MLP_CASE]:
            timings = measure_processes({name: (proc, case) for name, proc in procs.items()}, rounds=2 if quick else 6)
            variant = ("fwd+CE+bwd+SGD step" if case == MLP_CASE else "forward+backward") + f", {threads} thread(s)"
            rows += [{"case": case, "variant": variant, "threads": threads, "impl": name, **t}
                     for name, t in timings.items()]
        return rows
    finally:
        for proc in procs.values():
            proc.close()


def run(quick: bool = False):
    rows, status = [], {}
    for threads in THREADS:
        rows += _timings(threads, quick, status)
    status["minigen"]["notes"] = f"git {_git_state()}; " + status["minigen"]["notes"]
    per_op = [{"case": r["case"], "threads": r["threads"], "engine": r["impl"],
               "us/op": f"{r['seconds'] / CHAIN_OPS * 1e6:.2f}", "spread": f"{r['spread']:.2f}"}
              for r in rows if r["case"] != MLP_CASE]
    return rows, {f"Chain: microseconds per op ({CHAIN_OPS} ops: {STEPS} x (mul, add, tanh) + sum) and spread "
                  "(interquartile range / median)": per_op, "Engines": list(status.values())}


if __name__ == "__main__":
    from benchmarks.__main__ import main
    main(["engine_overhead", *sys.argv[1:]])
