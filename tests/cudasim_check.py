"""Run every numba.cuda kernel under Numba's CUDA simulator on small inputs and compare with kernels.reference.

    python tests/cudasim_check.py            # exit status 0 when every check passes

The simulator must be switched on before Numba is imported, so this runs as its own process (started by
tests/test_kernels_cuda.py). Inputs are small: the simulator runs each CUDA thread as a Python thread.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kernels import numba_cuda as nc  # noqa: E402
from kernels import reference as ref  # noqa: E402

assert nc.SIMULATOR, "numba.cuda was imported before NUMBA_ENABLE_CUDASIM was set"
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
failures = []


def check(name, got, want, dtype):
    for g, w in zip(got, want) if isinstance(want, tuple) else [(got, want)]:
        g = np.asarray(g)
        ok = g.shape == np.shape(w) and g.dtype == dtype and np.allclose(g, w, equal_nan=True, **TOL[dtype])
        if not ok:
            failures.append(name)
            err = np.max(np.abs(g - w)) if g.shape == np.shape(w) else "shape"
            print(f"FAIL {name}: max error {err}, shapes {g.shape} {np.shape(w)}, dtype {g.dtype}", flush=True)
            return
    print(f"ok   {name}", flush=True)


def conv_checks(rng, dtype, algorithm):
    cases = [  # (x shape, w shape, stride, padding, dilation, groups)
        ((2, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1),
        ((1, 4, 7, 7), (6, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    ]
    for xs, ws, s, p, d, g in cases:
        x, w, b = (rng.standard_normal(shape).astype(dtype) for shape in (xs, ws, ws[:1]))
        tag = f"{algorithm} {np.dtype(dtype).name} x{xs} w{ws} s{s} p{p} d{d} g{g}"
        y = ref.conv2d(x, w, b, s, p, d, g)
        check(f"conv2d {tag}", nc.conv2d(x, w, b, s, p, d, g, algorithm=algorithm), y, dtype)
        gy = rng.standard_normal(y.shape).astype(dtype)
        check(f"conv2d_weight {tag}", nc.conv2d_weight(x, gy, ws[2:], s, p, d, g, algorithm=algorithm),
              ref.conv2d_weight(x, gy, ws[2:], s, p, d, g), dtype)
        # conv_transpose2d with w as a (C_in, O/groups, kh, kw) weight: the adjoint of the conv above
        base = ref.conv_transpose2d(gy, w, None, s, p, 0, d, g).shape[2:]
        op = (xs[2] - base[0], xs[3] - base[1])
        check(f"conv_transpose2d {tag}", nc.conv_transpose2d(gy, w, None, s, p, op, d, g, algorithm=algorithm),
              ref.conv_transpose2d(gy, w, None, s, p, op, d, g), dtype)


def softmax_checks(rng, dtype):
    x = rng.standard_normal((3, 5, 7)).astype(dtype) * 3
    x[0, 0, :3] = -np.inf
    long_rows = rng.standard_normal((1, 1030)).astype(dtype)  # > 1024: one block per row
    big = (rng.standard_normal((4, 40)) * 1e4).astype(dtype)
    for name, data, axis in [("short", x, -1), ("axis1", x, 1), ("long", long_rows, -1), ("1e4", big, -1)]:
        y, ly = ref.softmax(data, axis), ref.log_softmax(data, axis)
        check(f"softmax {name} {np.dtype(dtype).name}", nc.softmax(data, axis), y, dtype)
        check(f"log_softmax {name} {np.dtype(dtype).name}", nc.log_softmax(data, axis), ly, dtype)
        gy = rng.standard_normal(data.shape).astype(dtype)
        check(f"softmax_backward {name} {np.dtype(dtype).name}", nc.softmax_backward(y, gy, axis),
              ref.softmax_backward(y, gy, axis), dtype)
        check(f"log_softmax_backward {name} {np.dtype(dtype).name}", nc.log_softmax_backward(ly, gy, axis),
              ref.log_softmax_backward(ly, gy, axis), dtype)


def slogdet_checks(rng, dtype):
    small = rng.standard_normal((5, 6, 6)).astype(dtype)
    small[1, 3] = 0  # singular: the zero row stays exactly zero, so its pivot is 0: sign 0, log|det| -inf
    small[2] = np.eye(6)[[1, 0, 2, 3, 5, 4]] * 3  # two swaps
    large = rng.standard_normal((1, 33, 33)).astype(dtype)  # > 32: one block per matrix, in global memory
    for name, a in [("small", small), ("large", large)][:2 if dtype == np.float64 else 1]:
        check(f"slogdet {name} {np.dtype(dtype).name}", nc.slogdet(a), ref.slogdet(a), dtype)


def main():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        softmax_checks(rng, dtype)
        slogdet_checks(rng, dtype)
        conv_checks(rng, dtype, "gemm")
    conv_checks(rng, np.float64, "naive")
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
