"""Checks of the CUDA kernels (kernels/cuda/*.cu, kernels/cupy_backend.py, kernels/numba_cuda.py).

Three layers, so that a machine without a GPU still checks most of the code:
- the numba.cuda kernels run under Numba's CUDA simulator (a subprocess: tests/cudasim_check.py);
- ``nvcc``: every .cu file compiles with NVRTC (or nvcc) for sm_80 and sm_90 without register spills or a
  local-memory stack frame, and every numba.cuda kernel compiles to PTX with ``numba.cuda.compile_ptx``;
- ``gpu``: both CUDA backends against kernels.reference on a real device.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from kernels import cupy_backend, reference

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("sm_80", "sm_90")
DTYPES = (np.float32, np.float64)

# Every entry point the array-level API launches: (family, name without the dtype suffix, its arguments as
# the number of arrays then the number of int32 scalars).
ENTRY_POINTS = (
    [("softmax", "softmax", 2, 2), ("softmax", "log_softmax", 2, 2),
     ("softmax", "softmax_backward", 3, 2), ("softmax", "log_softmax_backward", 3, 2)]
    + [("conv", f"{op}_{alg}", 4, 17) for op in ("conv2d", "conv_transpose2d", "conv2d_weight")
       for alg in ("gemm", "naive")]
    + [("slogdet", "slogdet_small", 3, 2), ("slogdet", "slogdet_large", 3, 1)]
)


def test_modules_import_without_cupy_or_gpu():
    code = "import sys; sys.modules['cupy'] = None; import kernels.cupy_backend, kernels.numba_cuda"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_numba_cuda_kernels_under_simulator(cudasim_outcome):
    run = cudasim_outcome       # tests/cudasim_check.py, started beside the suite (conftest.py)
    print(run.stdout[-4000:], run.stderr[-4000:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]


# ------------------------------------------------------------------------------------------ compile checks

def _nvrtc_compile(source: str, name: str, arch: str) -> str:
    """Compile with NVRTC through cuda-bindings (the cuda-bindings + nvidia-cuda-nvrtc wheels); the log."""
    from cuda.bindings import nvrtc

    def ok(result):
        err, *rest = result
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
        return rest[0] if rest else None

    prog = ok(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []))
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-Xptxas", b"-v"]
    compiled, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    log = b" " * ok(nvrtc.nvrtcGetProgramLogSize(prog))
    ok(nvrtc.nvrtcGetProgramLog(prog, log))
    nvrtc.nvrtcDestroyProgram(prog)
    log = log.decode(errors="replace").rstrip("\x00 ")
    assert compiled == nvrtc.nvrtcResult.NVRTC_SUCCESS, log
    return log


def _nvcc_compile(source: str, name: str, arch: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(source)
        run = subprocess.run([shutil.which("nvcc"), "-cubin", f"-arch={arch}", "-std=c++17", "-Xptxas", "-v",
                              "-o", str(path.with_suffix(".cubin")), str(path)],
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stderr


def _compiler():
    try:
        from cuda.bindings import nvrtc

        if nvrtc.nvrtcVersion()[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return _nvrtc_compile
    except Exception as e:  # no wheel, or no libnvrtc to load
        reason = f"NVRTC through cuda-bindings unavailable ({type(e).__name__}: {e})"
    else:
        reason = "NVRTC through cuda-bindings unavailable"
    if shutil.which("nvcc"):
        return _nvcc_compile
    pytest.skip(f"{reason}, and no nvcc on PATH: pip install -e \".[test]\"")


def ptxas_usage(log: str) -> dict[str, dict[str, int]]:
    """Per entry point, from ptxas -v: registers, stack frame, spill stores and loads (bytes)."""
    usage = {}
    for block in re.split(r"Compiling entry function '", log)[1:]:
        name = block.split("'", 1)[0]
        figure = lambda pattern: int(m.group(1)) if (m := re.search(pattern, block)) else 0  # noqa: E731
        usage[name] = {"registers": figure(r"Used (\d+) registers"), "stack": figure(r"(\d+) bytes stack frame"),
                       "spill_stores": figure(r"(\d+) bytes spill stores"),
                       "spill_loads": figure(r"(\d+) bytes spill loads")}
    return usage


@pytest.mark.nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", sorted(cupy_backend.FAMILIES))
def test_cuda_source_compiles_without_spills(family, arch):
    usage = ptxas_usage(_compiler()(cupy_backend.cuda_source(family), cupy_backend.FAMILIES[family], arch))
    expected = {f"{name}_{sfx}" for fam, name, *_ in ENTRY_POINTS if fam == family for sfx in ("f32", "f64")}
    assert expected <= set(usage), f"entry points missing from the cubin: {expected - set(usage)}"
    for name, figures in sorted(usage.items()):
        print(f"{arch} {name}: {figures}")
    bad = {name: f for name, f in usage.items() if f["stack"] or f["spill_stores"] or f["spill_loads"]}
    assert not bad, f"register spills or local-memory stack: {bad}"


def test_cuda_source_inlines_common_helpers():
    for family in cupy_backend.FAMILIES:
        assert '#include "common.cu"' not in cupy_backend.cuda_source(family)


@pytest.fixture
def compile_ptx(monkeypatch):
    """numba.cuda.compile_ptx for sm_80, usable without a GPU.

    compile_ptx itself needs only libNVVM, but the ``cuda.jit(device=True)`` functions a kernel calls are
    compiled for "the current device" when the kernel is typed; with no device, that device is faked here.
    """
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compile_ptx needs the real numba.cuda target, not the simulator")
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("needs numba-cuda (the built-in numba.cuda target is deprecated and fails on device "
                    "functions here): pip install -e \".[test]\"")
    import numba.cuda.dispatcher
    from numba import cuda

    try:
        cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(8, 0))
    except Exception as e:
        pytest.skip(f"numba.cuda.compile_ptx unavailable (needs libNVVM): {type(e).__name__}: {e}")
    if not cuda.is_available():
        sm80 = type("FakeDevice", (), {"compute_capability": (8, 0)})()
        monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device", lambda: sm80)
    return lambda fn, signature: cuda.compile_ptx(fn, signature, cc=(8, 0))[0]


@pytest.mark.nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("family,name,arrays,scalars", ENTRY_POINTS, ids=[e[1] for e in ENTRY_POINTS])
def test_numba_kernel_compiles_to_ptx(compile_ptx, family, name, arrays, scalars, dtype):
    import numba

    from kernels import numba_cuda

    signature = (numba.from_dtype(np.dtype(dtype))[::1],) * arrays + (numba.int32,) * scalars
    ptx = compile_ptx(numba_cuda.kernel(name, dtype).py_func, signature)
    assert ".entry" in ptx


# ------------------------------------------------------------------------------------------------ on a GPU

def _gpu_backends():
    """(id, module) for each CUDA backend that can run here; empty without a GPU."""
    backends = []
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            backends.append(pytest.param(cupy_backend, id="cupy"))
    except Exception:
        return []
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        try:
            from numba import cuda

            if cuda.is_available():
                from kernels import numba_cuda

                backends.append(pytest.param(numba_cuda, id="numba_cuda"))
        except Exception:
            pass
    return backends


GPU_BACKENDS = _gpu_backends() or [pytest.param(None, id="no-gpu", marks=pytest.mark.skip("no CUDA GPU"))]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def _on_gpu(backend, fn, *arrays, **kwargs):
    """Call backend.fn on device copies of the NumPy arrays; the result(s) back on the host."""
    import cupy

    out = getattr(backend, fn)(*[cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays], **kwargs)
    return tuple(cupy.asnumpy(o) for o in out) if isinstance(out, tuple) else cupy.asnumpy(out)


CONV_CASES = [  # x shape, w shape (conv2d layout), stride, padding, dilation, groups
    ((2, 3, 17, 19), (5, 3, 3, 3), 1, 1, 1, 1),
    ((3, 8, 30, 30), (70, 8, 5, 5), 2, 2, 1, 1),        # more than one 64x64 tile of outputs and channels
    ((2, 6, 16, 12), (9, 2, 3, 2), (2, 1), (1, 0), (1, 2), 3),
    ((4, 64, 14, 14), (128, 64, 3, 3), 1, 1, 1, 1),     # long K: split-K in the weight gradient
    ((2, 8, 9, 9), (8, 1, 3, 3), 1, 1, 1, 8),           # depthwise
]


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["gemm", "naive"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"x{c[0]}w{c[1]}")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_convolutions_match_reference(backend, case, dtype, algorithm):
    xs, ws, s, p, d, g = case
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(shape).astype(dtype) for shape in (xs, ws, ws[:1]))
    y = reference.conv2d(x, w, b, s, p, d, g)
    np.testing.assert_allclose(_on_gpu(backend, "conv2d", x, w, b, s, p, d, g, algorithm=algorithm), y,
                               **TOL[dtype])
    gy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(
        _on_gpu(backend, "conv2d_weight", x, gy, ws[2:], s, p, d, g, algorithm=algorithm),
        reference.conv2d_weight(x, gy, ws[2:], s, p, d, g), **TOL[dtype])
    base = reference.conv_transpose2d(gy, w, None, s, p, 0, d, g).shape[2:]
    op = (xs[2] - base[0], xs[3] - base[1])  # the output padding that gives back x's size
    gx = _on_gpu(backend, "conv_transpose2d", gy, w, None, s, p, op, d, g, algorithm=algorithm)
    np.testing.assert_allclose(gx, reference.conv_transpose2d(gy, w, None, s, p, op, d, g), **TOL[dtype])
    # adjointness: <conv2d(x), gy> = <x, conv_transpose2d(gy)>
    rtol = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(np.vdot(y - b[:, None, None], gy), np.vdot(x, gx), rtol=rtol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [((64, 10), -1), ((3, 5000), -1), ((4, 7, 33), 1), ((1000, 1024), 0)])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_softmax_family_matches_reference(backend, shape, axis, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    for fn in ("softmax", "log_softmax"):
        y = getattr(reference, fn)(x, axis)
        np.testing.assert_allclose(_on_gpu(backend, fn, x, axis=axis), y, **TOL[dtype])
        np.testing.assert_allclose(_on_gpu(backend, f"{fn}_backward", y, gy, axis=axis),
                                   getattr(reference, f"{fn}_backward")(y, gy, axis), **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("n", [40, 3000])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_softmax_extreme_logits_float32(backend, n):
    rng = np.random.default_rng(2)
    x = (rng.choice([-1e4, 1e4], size=(6, n)) + rng.standard_normal((6, n))).astype(np.float32)
    x[1, ::2] = -np.inf
    x[2, 1:] = -np.inf
    y = _on_gpu(backend, "softmax", x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(y, reference.softmax(x), rtol=1e-4, atol=1e-6)
    ly = _on_gpu(backend, "log_softmax", x)
    np.testing.assert_allclose(ly[np.isfinite(x)], reference.log_softmax(x)[np.isfinite(x)], rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1000, 2, 2), (7, 1, 1), (3, 4, 9, 9), (50, 32, 32), (2, 33, 33), (1, 300, 300)],
                         ids=str)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_slogdet_matches_reference(backend, shape, dtype):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1, *shape[-2:])
    flat[0, -1] = 0  # a singular matrix: sign 0, log|det| -inf
    sign, logabs = _on_gpu(backend, "slogdet", a)
    want_sign, want_logabs = reference.slogdet(a)
    np.testing.assert_array_equal(sign, want_sign)
    tol = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(logabs, want_logabs, rtol=tol, atol=tol)
