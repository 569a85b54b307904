"""Kernel benchmark: every available backend of `kernels` side by side with PyTorch CPU.

minigen's backends and PyTorch run in processes of their own (harness.EngineProcess), at 1 and at 2
threads, and are timed in interleaved rounds of back-to-back calls (harness.measure_processes), so that
load from other jobs hits them alike and no engine's idle threads spin on the other's cores. Shapes: the
DCGAN-on-MNIST layers (batch 64), a U-Net block (batch 32), softmax rows, batched slogdet, matrix products
(minigen's own, kernels/gemm.py, for the 'cpu' backend; NumPy's for 'reference').
'forward' times the op; 'forward+backward' adds what its backward needs: for conv2d the input gradient
(conv_transpose2d) and the weight gradient (conv2d_weight), for conv_transpose2d conv2d and
conv2d_weight, for softmax softmax_backward, for slogdet the gradient inv(A)^T (the backend's `inv`), for a
product y = a w^T the two products of its gradients.
PyTorch runs the same through autograd.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import kernels

from .harness import EngineProcess, measure_processes

# (name, transposed, N, C_in, H, C_out, k, stride, padding)
CONVS = [
    ("dcgan D conv 1->64 28x28 k4s2p1", False, 64, 1, 28, 64, 4, 2, 1),
    ("dcgan D conv 64->128 14x14 k4s2p1", False, 64, 64, 14, 128, 4, 2, 1),
    ("dcgan G convT 128->64 7x7 k4s2p1", True, 64, 128, 7, 64, 4, 2, 1),
    ("dcgan G convT 64->1 14x14 k4s2p1", True, 64, 64, 14, 1, 4, 2, 1),
    ("unet conv 64->64 32x32 k3p1", False, 32, 64, 32, 64, 3, 1, 1),
    ("glow coupling conv 64->4 14x14 k3p1", False, 16, 64, 14, 4, 3, 1, 1),
]
SOFTMAX = [(4096, 1024), (64, 10)]
SLOGDET = [(1024, 8, 8), (64, 32, 32), (512, 512)]
# matrix products (m, k, n): a Linear layer of the MLP VAE (batch 100) and of MADE, and an im2col convolution
# (DCGAN's 64 -> 128 layer: 64 x 7 x 7 rows, 4 x 4 x 64 columns)
MATMUL = [(100, 784, 200), (100, 784, 500), (3136, 1024, 128)]


def _conv_arrays(transposed, n, c, h, o, k, s, p, rng):
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w = rng.standard_normal((c, o, k, k) if transposed else (o, c, k, k), dtype=np.float32) * 0.1
    return x, w


def _conv_fns(mod, transposed, x, w, gy, k, s, p):
    """(forward, forward+backward) closures of one backend module for one layer; forward+backward hands the
    weight gradient what the convolution of the same input saved, as minigen's nodes do."""
    if transposed:
        fwd = lambda: mod.conv_transpose2d(x, w, None, s, p)

        def both():
            saved = {}
            return fwd(), mod.conv2d(gy, w, None, s, p, saved=saved), mod.conv2d_weight(gy, x, k, s, p, saved=saved)
    else:
        h_in, h_out = x.shape[2], gy.shape[2]
        op = h_in - ((h_out - 1) * s - 2 * p + k)
        fwd = lambda: mod.conv2d(x, w, None, s, p)

        def both():
            saved = {}
            y = mod.conv2d(x, w, None, s, p, saved=saved)
            return y, mod.conv_transpose2d(gy, w, None, s, p, op), mod.conv2d_weight(x, gy, k, s, p, saved=saved)
    return fwd, both


def _torch_fns(torch, op, args, gy=None):
    """(forward, forward+backward) for a PyTorch op with autograd; gy the upstream gradient (None for a
    scalar output)."""
    leaves = [torch.from_numpy(a).requires_grad_() for a in args]
    g = None if gy is None else torch.from_numpy(gy)

    def fwd():
        with torch.no_grad():
            return op(*leaves)

    def both():
        for t in leaves:
            t.grad = None
        op(*leaves).backward(g)
    return fwd, both


def _backends():
    """(impl name, backend module, array converter, sync) for every backend of `kernels` that runs here."""
    out = [(name, kernels.backend_module(name), lambda a: a, None) for name in kernels.CPU_BACKENDS]
    for name in kernels.GPU_BACKENDS:
        if name in kernels.available_backends():
            import cupy
            out.append((name, kernels.backend_module(name), cupy.asarray, cupy.cuda.Device().synchronize))
    return out


def _cases(rng, engine: str):
    """(case name, {impl: (forward, forward+backward, sync)}) for every benchmarked shape: the backends of
    `kernels` (engine "minigen") or PyTorch's ops (engine "torch"). The arrays are drawn from `rng` in the
    same order for both engines."""
    torch = __import__("torch") if engine == "torch" else None
    backends = [] if torch else _backends()
    F = torch and torch.nn.functional
    for name, transposed, n, c, h, o, k, s, p in CONVS:
        x, w = _conv_arrays(transposed, n, c, h, o, k, s, p, rng)
        gy = rng.standard_normal(kernels.reference.conv_transpose2d(x, w, None, s, p).shape if transposed
                                 else kernels.reference.conv2d(x, w, None, s, p).shape, dtype=np.float32)
        impls = {i: (*_conv_fns(m, transposed, *map(conv, (x, w, gy)), k, s, p), sync)
                 for i, m, conv, sync in backends}
        if torch:
            op = F.conv_transpose2d if transposed else F.conv2d
            impls["torch"] = (*_torch_fns(torch, lambda a, b, op=op, s=s, p=p: op(a, b, None, s, p), (x, w), gy), None)
        yield name, impls
    for shape in SOFTMAX:
        x, gy = (rng.standard_normal(shape, dtype=np.float32) * 3 for _ in range(2))
        impls = {}
        for i, m, conv, sync in backends:
            xa, ga = conv(x), conv(gy)
            impls[i] = (lambda m=m, xa=xa: m.softmax(xa),
                        lambda m=m, xa=xa, ga=ga: m.softmax_backward(m.softmax(xa), ga), sync)
        if torch:
            impls["torch"] = (*_torch_fns(torch, lambda a: torch.softmax(a, -1), (x,), gy), None)
        yield f"softmax {shape[0]}x{shape[1]}", impls
    for shape in SLOGDET:
        a = (rng.standard_normal(shape) + 3 * np.eye(shape[-1])).astype(np.float32)
        impls = {}
        for i, m, conv, sync in backends:
            aa = conv(a)
            impls[i] = (lambda m=m, aa=aa: m.slogdet(aa), lambda m=m, aa=aa: _slogdet_and_gradient(m, aa), sync)
        if torch:
            impls["torch"] = (*_torch_fns(torch, lambda t: torch.linalg.slogdet(t)[1].sum(), (a,)), None)
        yield "slogdet " + "x".join(map(str, shape)), impls
    for m, k, n in MATMUL:
        a, w, gy = (rng.standard_normal(shape, dtype=np.float32) for shape in ((m, k), (n, k), (m, n)))
        impls = {}
        for i, _, conv, sync in backends:
            product = kernels.gemm.matmul if i == "cpu" else (lambda p, q: p @ q)
            aa, wa, ga = conv(a), conv(w), conv(gy)
            impls[i] = (lambda product=product, aa=aa, wa=wa: product(aa, wa.T),
                        lambda product=product, aa=aa, wa=wa, ga=ga: _linear_and_gradients(product, aa, wa, ga), sync)
        if torch:
            impls["torch"] = (*_torch_fns(torch, lambda p, q: p @ q.T, (a, w), gy), None)
        yield f"matmul {m}x{k} @ ({n}x{k})^T", impls


def _linear_and_gradients(product, a, w, gy):
    """y = a w^T and what its node's backward computes, gy w and gy^T a (minigen.ops.nn.Linear)."""
    return product(a, w.T), product(gy, w), product(gy.T, a)


def _slogdet_and_gradient(m, a):
    """What minigen's slogdet node does forward and backward: the gradient a^-T from the forward's factors."""
    sign, logabs, factors = m.slogdet(a, True)
    return sign, logabs, m.inv(a, factors).swapaxes(-1, -2)


_COMPILE_PROBE = """
import json, time, numpy as np
import kernels.cpu as cpu
calls = {
    "_softmax_rows (softmax, float32)": lambda: cpu.softmax(np.ones((256, 128), np.float32)),
    "_softmax_backward_rows (softmax_backward, float32)":
        lambda: cpu.softmax_backward(np.ones((256, 128), np.float32) / 128, np.ones((256, 128), np.float32)),
    "_slogdet_batch (slogdet, float32)": lambda: cpu.slogdet(np.tile(np.eye(8, dtype=np.float32), (64, 1, 1))),
    "_inv_batch (inv, float32)": lambda: cpu.inv(np.tile(np.eye(8, dtype=np.float32), (64, 1, 1))),
}
out = {}
for name, f in calls.items():
    t0 = time.perf_counter(); f(); t1 = time.perf_counter(); f(); t2 = time.perf_counter()
    out[name] = max(0.0, (t1 - t0) - (t2 - t1))
print(json.dumps(out))
"""


def compile_costs() -> list[dict]:
    """First-call cost of each Numba kernel: cold (empty cache, a fresh process) and from the on-disk cache."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def probe(env):
        out = subprocess.run([sys.executable, "-c", _COMPILE_PROBE], cwd=root, env={**os.environ, **env},
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)
    with tempfile.TemporaryDirectory() as cache:
        cold = probe({"NUMBA_CACHE_DIR": cache})
        warm = probe({"NUMBA_CACHE_DIR": cache})
    return [{"kernel": k, "cold compile s": f"{cold[k]:.2f}", "cached load s": f"{warm[k]:.3f}"} for k in cold]


_LAUNCH_PROBE = """
import json, time, numba, numpy as np
from kernels import _threads, layout
_threads.THREADS_MIN_SIZE = 0          # a parallel launch however small the loop
x, y, out = np.ones((2, 1, 1, 1)), np.empty((2, 1, 1, 1)), {}
for threads in (1, 2):
    numba.set_num_threads(threads)
    layout._to_nhwc(x, y, 0, 0)
    times = []
    for _ in range(1000):
        time.sleep(5e-4)               # the workers go back to sleep, as between the loops of a training step
        t0 = time.perf_counter(); layout._to_nhwc(x, y, 0, 0); times.append(time.perf_counter() - t0)
    out[threads] = np.percentile(times, [50, 90, 99]).tolist()
print(json.dumps(out))
"""


def launch_costs() -> list[dict]:
    """The time of a Numba kernel call over two elements, serial (1 thread) and parallel (2 threads): what waking
    Numba's threads (OpenMP's, or workqueue's) costs, which sets kernels._threads.THREADS_MIN_SIZE."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _LAUNCH_PROBE], cwd=root, capture_output=True, text=True,
                         check=True, env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    return [{"threads": k, **{f"{q} us": f"{t * 1e6:.1f}" for q, t in zip(("median", "p90", "p99"), v)}}
            for k, v in json.loads(out.stdout).items()]


VARIANTS = ("forward", "forward+backward")
THREADS = (1, 2)


def build(engine: str) -> dict:
    """The calls an engine process serves, named "impl|case|variant"; a GPU backend's call synchronizes."""
    fns = {}
    for case, impls in _cases(np.random.default_rng(0), engine):
        for impl, (*pair, sync) in impls.items():
            for variant, fn in zip(VARIANTS, pair):
                fns[f"{impl}|{case}|{variant}"] = fn if sync is None else (lambda fn=fn, sync=sync: (fn(), sync()))
    return fns


def run(quick: bool = False):
    rows = []
    engines = ["minigen"] + (["torch"] if importlib.util.find_spec("torch") else [])   # the peers present
    for threads in THREADS:
        procs = [EngineProcess(build, engine, threads) for engine in engines]
        try:
            calls = {}
            for proc in procs:
                for name in proc.names:
                    impl, case, variant = name.split("|")
                    calls.setdefault((case, variant), {})[impl] = (proc, name)
            for (case, variant), impls in calls.items():
                timings = measure_processes(impls, rounds=2 if quick else 5, burst_s=0.1 if quick else 0.3)
                for impl, summary in timings.items():
                    rows.append({"case": case, "variant": f"{variant}, {threads} thread(s)", "impl": impl,
                                 "threads": threads, **summary})
                    print(f"{case:40s} {variant:17s} {threads} {impl:10s} {summary['seconds'] * 1e3:9.3f} ms",
                          file=sys.stderr)
        finally:
            for proc in procs:
                proc.close()
    return rows, {"Numba first-call cost (compile, then load from cache)": compile_costs(),
                  "Numba launch: a kernel call over two elements (kernels/_threads.py)": launch_costs()}
