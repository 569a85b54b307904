"""GPU benchmark and checks: ``python -m benchmarks gpu`` on a machine with a CUDA GPU, in under 8 minutes.

1. ``pytest -m gpu``: the CUDA kernels against the NumPy reference and every family's smoke test on 'cuda'
   (tests/test_devices.py: a few training steps, an evaluation and samples), each test's outcome and time;
2. the kernels of benchmarks/kernels.py on the GPU (the CuPy RawKernel and Numba CUDA backends) beside the
   libraries: cuDNN through PyTorch on CUDA for the convolutions (PyTorch's own kernel for softmax), and
   cupy.linalg (slogdet, inv) / CuPy array expressions (softmax).

Results go to benchmarks/results/gpu.{json,md}. Without a GPU it says so in one line and exits with status 2.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

import kernels
from minigen import backend

from . import kernels as kernel_bench
from .harness import measure_interleaved

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("torch_cuda", "cupy_lib")      # the ratio columns of the table: ours / the library's
PYTEST_SECONDS = 330                     # the pytest run's share of the 8 minutes


def _pytest(args=("-m", "gpu", "tests"), seconds=PYTEST_SECONDS) -> tuple[list[dict], str]:
    """Run pytest on `args` (the gpu tier) for at most `seconds`; (one row per test: outcome and seconds, the
    summary line)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "gpu.xml"
        log = Path(tmp) / "pytest.log"
        with open(log, "w") as out:
            # SIGINT set back to its default in the child: a process started in the background by a shell inherits
            # it ignored, and Python then never raises KeyboardInterrupt
            run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    f"--junitxml={report}", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            try:
                run.wait(seconds)
                stopped = ""
            except subprocess.TimeoutExpired:
                # Ctrl-C, not a kill: pytest then ends its session and still writes the report of the tests run
                run.send_signal(signal.SIGINT)
                try:
                    run.wait(60)
                except subprocess.TimeoutExpired:   # Ctrl-C unheard within a minute: killed, the report lost
                    run.kill()
                    run.wait()
                stopped = f"; stopped after {seconds} s, the tests not reached are missing below"
        lines = log.read_text().strip().splitlines()
        sys.stderr.write("\n".join(lines[-40:]) + "\n")
        summary = (lines[-1] if lines else "no output") + stopped
        if not report.exists():
            return [], summary
        rows = []
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.get("name") is None:     # the nameless case pytest writes for an interrupted run
                continue
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            detail = next((child.get("message", "") for child in case if child.tag != "system-out"), "")
            rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                         "seconds": f"{float(case.get('time', 0)):.2f}", "detail": detail[:160].replace("|", "/")})
    return rows, summary


def _library_peers(rng):
    """{case name: {impl: (forward, forward+backward, sync)}} for cuDNN (PyTorch on CUDA) and CuPy's library,
    on the shapes of benchmarks/kernels.py."""
    import cupy
    try:
        import torch
        torch = torch if torch.cuda.is_available() else None
    except ImportError:
        torch = None
    F = torch and torch.nn.functional
    sync = cupy.cuda.Device().synchronize
    peers: dict[str, dict] = {}

    def torch_pair(op, arrays, gy):
        leaves = [torch.from_numpy(a).cuda().requires_grad_() for a in arrays]
        g = None if gy is None else torch.from_numpy(gy).cuda()

        def forward():
            with torch.no_grad():
                op(*leaves)

        def both():
            for t in leaves:
                t.grad = None
            op(*leaves).backward(g)
        return forward, both, torch.cuda.synchronize

    for name, transposed, n, c, h, o, k, s, p in kernel_bench.CONVS:
        if torch:
            x, w = kernel_bench._conv_arrays(transposed, n, c, h, o, k, s, p, rng)
            conv = (lambda a, b: F.conv_transpose2d(a, b, None, s, p)) if transposed else \
                (lambda a, b: F.conv2d(a, b, None, s, p))
            gy = rng.standard_normal(tuple(conv(torch.from_numpy(x), torch.from_numpy(w)).shape), dtype=np.float32)
            peers[name] = {"torch_cuda": torch_pair(conv, (x, w), gy)}
    for shape in kernel_bench.SOFTMAX:
        x, gy = (cupy.asarray(rng.standard_normal(shape, dtype=np.float32) * 3) for _ in range(2))

        def softmax(x=x):
            e = cupy.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        def softmax_both(x=x, gy=gy):
            y = softmax(x)
            return y * (gy - (gy * y).sum(axis=-1, keepdims=True))
        case = peers.setdefault(f"softmax {shape[0]}x{shape[1]}", {"cupy_lib": (softmax, softmax_both, sync)})
        if torch:
            xh, gh = cupy.asnumpy(x), cupy.asnumpy(gy)
            case["torch_cuda"] = torch_pair(lambda t: torch.softmax(t, -1), (xh,), gh)
    for shape in kernel_bench.SLOGDET:
        a = cupy.asarray((rng.standard_normal(shape) + 3 * np.eye(shape[-1])).astype(np.float32))
        peers["slogdet " + "x".join(map(str, shape))] = {"cupy_lib": (
            lambda a=a: cupy.linalg.slogdet(a),
            lambda a=a: (cupy.linalg.slogdet(a), cupy.linalg.inv(a).swapaxes(-1, -2)), sync)}
    return peers


def _kernel_rows(repeat: int) -> list[dict]:
    """Our GPU backends beside the libraries, case by case (interleaved rounds, as benchmarks/kernels.py)."""
    rng = np.random.default_rng(0)
    peers = _library_peers(rng)
    rows = []
    for case, impls in kernel_bench._cases(rng):
        impls = {i: fns for i, fns in impls.items() if i in kernels.GPU_BACKENDS} | peers.get(case, {})
        syncs = {impl: sync for impl, (_, _, sync) in impls.items()}
        for k, variant in enumerate(("forward", "forward+backward")):
            timings = measure_interleaved({impl: fns[k] for impl, fns in impls.items()}, repeat, 3, syncs)
            for impl, summary in timings.items():
                rows.append({"case": case, "variant": variant, "impl": impl, **summary})
                print(f"{case:40s} {variant:17s} {impl:10s} {summary['seconds'] * 1e3:9.3f} ms", file=sys.stderr)
    return rows


def _device() -> list[dict]:
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return [{"gpu": props["name"].decode(), "memory GiB": round(props["totalGlobalMem"] / 2**30, 1),
             "CUDA runtime": cupy.cuda.runtime.runtimeGetVersion(), "cupy": cupy.__version__,
             "kernel backends": ", ".join(kernels.available_backends())}]


def run(quick: bool = False):
    try:
        backend.require_cupy()
    except RuntimeError as e:
        print(f"benchmarks gpu: nothing was run: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    began = time.monotonic()
    tests, summary = _pytest()
    print(f"pytest -m gpu: {summary} ({time.monotonic() - began:.0f} s)", file=sys.stderr)
    rows = _kernel_rows(3 if quick else 10)
    total = time.monotonic() - began
    outcomes = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failure", "error", "skipped")}
    return rows, {"Device": _device(),
                  "Run": [{"pytest -m gpu": summary, **outcomes, "total seconds": f"{total:.0f}",
                           "MINIGEN_KERNELS": os.environ.get("MINIGEN_KERNELS", "auto")}],
                  "pytest -m gpu: every test": tests or [{"test": "(none reported)", "outcome": summary}]}
