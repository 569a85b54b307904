"""The single-threaded sgemm that kernels/gemm.py calls, on the products of the training steps: MKL's against
OpenBLAS's (SciPy's, the one gemm.py falls back to) and PyTorch's torch.mm, all in one process on one thread,
called in interleaved rounds. gemm.py chooses MKL on Intel CPUs and OpenBLAS elsewhere by these figures.

Each library is called as gemm.py calls it: Fortran's sgemm through ctypes, row-major c = a @ b computed as
column-major c^T = b^T a^T. Before timing, each product is checked against a float64 product.

    python -m benchmarks blas [--quick]
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

import numpy as np

if not __package__:   # run as a script: make `benchmarks` and `kernels` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import measure_interleaved  # noqa: E402
from kernels import gemm  # noqa: E402

PEERS = ("openblas", "torch")
# (m, k, n) of c = a @ b: MLP layers (VAE 784-200, a 784 -> 512 layer at batch 128), a stack entry of the
# Winograd convolutions, im2col convolutions and their weight gradients (DCGAN 64 -> 128, a 3x3 64-channel conv
# on 28x28 at batch 16), and a square product
PRODUCTS = [(100, 784, 200), (128, 784, 512), (448, 64, 64), (3136, 1024, 128), (3136, 512, 64), (12544, 576, 64),
            (64, 12544, 576), (512, 512, 512)]
_SGEMM = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)


def sgemms() -> dict:
    """{library: sgemm as a ctypes function} for the libraries found here (OpenBLAS always, MKL where installed)."""
    found = {}
    for choice in ("mkl", "openblas"):
        try:
            provider, sgemm, _ = gemm._blas_functions(choice)
        except RuntimeError:        # no MKL
            continue
        found[provider] = _SGEMM(sgemm)
    return found


def product(sgemm, a, b, c):
    """A call that sets c = a @ b (row-major float32) by one sgemm."""
    (m, k), n = a.shape, b.shape[1]
    flag = ctypes.c_char(b"N")
    dims = [ctypes.c_int(v) for v in (n, m, k)]
    one, zero = ctypes.c_float(1), ctypes.c_float(0)
    a, b, c = (x.ctypes.data_as(ctypes.c_void_p) for x in (a, b, c))     # pointers that keep their arrays
    args = [ctypes.byref(flag), ctypes.byref(flag), *map(ctypes.byref, dims), ctypes.byref(one), b,
            ctypes.byref(dims[0]), a, ctypes.byref(dims[2]), ctypes.byref(zero), c, ctypes.byref(dims[0])]
    return lambda: sgemm(*args)


def run(quick: bool = False):
    from threadpoolctl import threadpool_limits
    calls_of = sgemms()
    torch = importlib.import_module("torch") if importlib.util.find_spec("torch") else None
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(1):
        if torch is not None:
            torch.set_num_threads(1)
        for m, k, n in PRODUCTS:
            a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
            want = a.astype(np.float64) @ b
            out = {name: np.empty((m, n), np.float32) for name in calls_of}
            fns = {name: product(sgemm, a, b, out[name]) for name, sgemm in calls_of.items()}
            if torch is not None:
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)
                fns["torch"] = lambda: torch.mm(ta, tb)
            for name, fn in fns.items():
                got = fn().numpy() if name == "torch" else (fn(), out[name])[1]
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=name)
            repeat = max(5, min(200, int(4e9 / (2 * m * k * n)))) // (4 if quick else 1)
            for name, t in measure_interleaved(fns, repeat=max(3, repeat)).items():
                rows.append({"case": f"{m} x {k} x {n} float32", "variant": "1 thread", "impl": name, **t})
    return rows, {}


if __name__ == "__main__":
    from benchmarks.__main__ import main
    main(["blas", *sys.argv[1:]])
