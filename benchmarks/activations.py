"""Activations, forward + backward through each engine's autograd: minigen against PyTorch CPU.

Each activation runs on a float32 (32, 64, 32, 32) tensor, a U-Net block's activation at batch 32 (2 M
elements): y = f(x), then y.backward(g) for a fixed g, the leaf's gradient cleared between calls. minigen's
are its fused Numba passes (kernels/fused.py), one each way. Each engine runs in a process of its own, at 1
and at 2 threads (harness.EngineProcess), timed in interleaved bursts (harness.measure_processes). Before
timing, both engines' input gradients must agree (to 1e-5 of the largest, which float32 GELU's different erf
approximations meet).

    python -m benchmarks activations [--quick]
    python benchmarks/activations.py [--quick]
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

if not __package__:   # run as a script: make `benchmarks` and `minigen` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import EngineProcess, measure_processes  # noqa: E402

SHAPE = (32, 64, 32, 32)
THREADS = (1, 2)


def activations(engine: str) -> dict:
    """{name: f} in the engine's own functions."""
    if engine == "minigen":
        import minigen as top
    else:
        import torch as top
    F = top.nn.functional
    return {"sigmoid": top.sigmoid, "tanh": top.tanh, "silu": F.silu, "softplus": F.softplus, "elu": F.elu,
            "leaky_relu 0.2": lambda x: F.leaky_relu(x, 0.2), "gelu": F.gelu,
            "gelu tanh": lambda x: F.gelu(x, approximate="tanh")}


def build(engine: str) -> dict:
    """One call per activation: forward and backward, returning the input gradient as a NumPy array."""
    rng = np.random.default_rng(0)
    x0 = (rng.standard_normal(SHAPE) * 3).astype(np.float32)
    g0 = rng.standard_normal(SHAPE).astype(np.float32)
    if engine == "minigen":
        import minigen as mg
        x, g = mg.tensor(x0, requires_grad=True), mg.tensor(g0)
    else:
        import torch
        x, g = torch.tensor(x0, requires_grad=True), torch.tensor(g0)   # copies in PyTorch's own memory

    def call(f):
        def fn():
            x.grad = None
            f(x).backward(g)
            return x.grad.numpy()
        return fn
    return {name: call(f) for name, f in activations(engine).items()}


def _check(procs: dict) -> None:
    """Every engine's input gradients agree with the first engine's."""
    (first, reference), *others = procs.items()
    for name in reference.names:
        expected = reference.result(name)
        for engine, proc in others:
            np.testing.assert_allclose(proc.result(name), expected, rtol=0, atol=1e-5 * np.abs(expected).max(),
                                       err_msg=f"{name}: the gradients of {engine} and {first}")


def timings(threads: int, quick: bool, names=None) -> list[dict]:
    """Rows of (activation, engine) at `threads` threads, for the activations `names` (default: all)."""
    engines = ["minigen"] + (["torch"] if importlib.util.find_spec("torch") else [])   # the peers present
    procs = {engine: EngineProcess(build, engine, threads) for engine in engines}
    try:
        _check(procs)
        rows = []
        for name in names or procs["minigen"].names:
            summary = measure_processes({e: (p, name) for e, p in procs.items()}, rounds=2 if quick else 5)
            rows += [{"case": f"{name} {SHAPE} float32", "variant": f"forward+backward, {threads} thread(s)",
                      "threads": threads, "impl": engine, **t} for engine, t in summary.items()]
        return rows
    finally:
        for proc in procs.values():
            proc.close()


def run(quick: bool = False):
    rows = [row for threads in THREADS for row in timings(threads, quick)]
    spreads = [{"case": r["case"], "threads": r["threads"], "engine": r["impl"], "spread": f"{r['spread']:.2f}"}
               for r in rows]
    return rows, {"Spread (interquartile range / median) of each engine's calls": spreads}


if __name__ == "__main__":
    from benchmarks.__main__ import main
    main(["activations", *sys.argv[1:]])
