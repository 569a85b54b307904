"""Hand-written kernels for the four operations that dominate generative models, on NumPy or CuPy arrays.

    conv2d, conv_transpose2d, conv2d_weight, softmax, log_softmax, softmax_backward,
    log_softmax_backward, slogdet, inv

Every backend module (reference, cpu, cupy_backend, numba_cuda) exposes these same functions with the
same signatures; this package dispatches each call to one of them:

- the array type picks the device: NumPy arrays go to a CPU backend, CuPy arrays to a GPU backend;
- the chosen backend (``set_backend(name)``, or the ``MINIGEN_KERNELS`` environment variable read at
  import) is used for the arrays it works on; arrays of the other kind use the 'auto' choice for their
  device. Names: 'auto' (default: 'cpu' for NumPy arrays, 'cupy' for CuPy arrays), 'reference', 'cpu',
  'cupy', 'numba_cuda'.

The Numba passes beside them (fused activations and arithmetic in fused.py, normalizations in norm.py,
Adam in optim.py, layout copies in layout.py, matrix products split over minigen's threads in gemm.py, through
`matmul`) each fall back to the same formula in array operations;
with the 'reference' backend chosen they all take it (`numba_passes()`), so that 'reference' is plain NumPy
throughout.

``backend_module(name)`` returns one backend's module, for tests and benchmarks. GPU modules are
imported only when chosen or when a CuPy array arrives, so importing kernels never needs CuPy, a GPU or
a CUDA driver. This package never imports minigen.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import os

import numpy as np

from . import _threads  # noqa: F401  (chooses Numba's threading layer before any parallel loop runs)


def _keep_freed_memory() -> bool:
    """Two settings of how a training step gets its temporaries of a few MB, made on import unless
    MINIGEN_MALLOC=default; returns whether the malloc settings were made (glibc only).

    glibc's malloc maps blocks above a threshold that moves with use (128 KB to 32 MB) fresh from the OS and
    unmaps them when freed, and returns the freed top of the heap to the OS: the temporaries are then paid in
    page faults at every step (measured at one thread: a U-Net block step 58 ms, 43 ms with the threshold fixed
    at 32 MB and the top kept). So the threshold is fixed and the heap keeps up to 1 GB of freed memory.

    And NumPy no longer asks for transparent huge pages (madvise) for its arrays of 4 MB and more, as PyTorch's
    allocator does not: on this project's Intel VMs, whenever the kernel had huge pages to give, memory in them
    streamed 3-4x slower (np.exp over 2 M float32, one process, same values: 4.5-5.3 ms reading an array in
    huge pages, 1.2 ms in small ones; sigmoid forward + backward through minigen 1.82x PyTorch's time, 0.92x
    without them: benchmarks/activations)."""
    if os.environ.get("MINIGEN_MALLOC") == "default":
        return False
    np._core.multiarray._set_madvise_hugepage(False)      # NumPy's own setting: any C library
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


MALLOC_TUNED = _keep_freed_memory()

from . import cpu, gemm, reference  # noqa: E402

CPU_BACKENDS = ("reference", "cpu")
GPU_BACKENDS = ("cupy", "numba_cuda")
BACKENDS = ("auto",) + CPU_BACKENDS + GPU_BACKENDS
_MODULES = {"reference": "reference", "cpu": "cpu", "cupy": "cupy_backend", "numba_cuda": "numba_cuda"}
_loaded: dict = {}      # backend name -> its module, once backend_module has imported it
_INSTALL_HINT = "install the GPU extra with `pip install minigen[cuda]` on a machine with an NVIDIA GPU and driver"

_backend = "auto"
_backend_checked = True   # False while a GPU name from MINIGEN_KERNELS awaits its availability check


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


@functools.lru_cache(maxsize=None)
def _gpu_missing(name: str) -> str | None:
    """Why GPU backend `name` cannot run here, or None when it can."""
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # ImportError, or a CUDA driver/runtime error
        return f"kernel backend {name!r} needs CuPy and a CUDA GPU ({type(e).__name__}: {e}); {_INSTALL_HINT}"
    if name == "numba_cuda":
        from numba import cuda
        if not cuda.is_available():
            return f"kernel backend 'numba_cuda' needs numba.cuda to see a GPU; {_INSTALL_HINT}"
    return None


def backend_module(name: str):
    """The module implementing backend `name` ('reference', 'cpu', 'cupy', 'numba_cuda').

    Raises ValueError for unknown names and RuntimeError, saying what is missing, for a GPU backend
    that cannot run on this machine."""
    module = _loaded.get(name)       # every kernel call comes here: a dict lookup, not an import (1.8 us)
    if module is not None:
        return module
    if _validate(name) == "auto":
        raise ValueError("'auto' is a dispatch rule, not a module; name a backend")
    if name in GPU_BACKENDS:
        reason = _gpu_missing(name)
        if reason:
            raise RuntimeError(reason)
    module = _loaded[name] = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return module


def set_backend(name: str) -> None:
    """Choose the backend for the arrays it works on (see the module docstring); 'auto' restores the default."""
    global _backend, _backend_checked
    if _validate(name) in GPU_BACKENDS:
        backend_module(name)
    _backend, _backend_checked = name, True


def get_backend() -> str:
    """The chosen backend name ('auto' unless set)."""
    return _backend


def numba_passes() -> bool:
    """Whether the Numba passes of fused, norm, optim and layout serve NumPy arrays: unless 'reference' is
    chosen."""
    return _backend != "reference"


def available_backends() -> list[str]:
    """Backend names that can run on this machine ('auto' included)."""
    return ["auto", *CPU_BACKENDS, *(n for n in GPU_BACKENDS if _gpu_missing(n) is None)]


def _is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _module_for(a):
    """The backend module for a call whose first array is `a`."""
    if not _backend_checked:   # MINIGEN_KERNELS named a GPU backend: check it on first use, not at import
        set_backend(_backend)
    on_gpu = _is_cupy(a)
    if type(a) is not np.ndarray and isinstance(a, np.ndarray):
        return _OnPlainViews(type(a), backend_module(_backend if _backend in CPU_BACKENDS else "cpu"))
    if _backend in (GPU_BACKENDS if on_gpu else CPU_BACKENDS):
        return backend_module(_backend)
    return backend_module("cupy" if on_gpu else "cpu")


class _OnPlainViews:
    """A CPU backend for arrays of a NumPy subclass (minigen's simulated test device 'sim', whose arrays refuse
    to meet plain ones): each kernel runs on plain views, and its results are viewed back as the subclass."""

    def __init__(self, cls, module):
        self.cls, self.module = cls, module

    def __getattr__(self, name):
        kernel, cls = getattr(self.module, name), self.cls

        def call(*args):
            out = kernel(*(a.view(np.ndarray) if isinstance(a, cls) else a for a in args))
            return tuple(_view(o, cls) for o in out) if isinstance(out, tuple) else out.view(cls)
        return call


def _view(out, cls):
    """A kernel's array output viewed as `cls`; anything else (slogdet's factors) as it is."""
    return out.view(cls) if isinstance(out, np.ndarray) else out


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, saved=None):
    """2-D cross-correlation, PyTorch semantics: x (N, C, H, W), w (O, C/groups, kh, kw) -> (N, O, Ho, Wo).
    A dict `saved` receives what a backend computed from x alone and conv2d_weight of the same x, given the
    same dict, can reuse (the CPU backend's im2col columns or Winograd tiles); backends that keep nothing
    leave it empty."""
    return _module_for(x).conv2d(x, w, b, stride, padding, dilation, groups, saved)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """The adjoint of conv2d in its input: x (N, C, H, W), w (C, O/groups, kh, kw) -> (N, O, Ho, Wo)."""
    return _module_for(x).conv_transpose2d(x, w, b, stride, padding, output_padding, dilation, groups)


def conv2d_weight(x, gy, kernel_size, stride=1, padding=0, dilation=1, groups=1, saved=None):
    """Gradient of sum(conv2d(x, w) * gy) in w: (O, C/groups, kh, kw); `saved` as conv2d filled it."""
    return _module_for(x).conv2d_weight(x, gy, kernel_size, stride, padding, dilation, groups, saved)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along axis, numerically stable; a row of all -inf gives NaN."""
    return _module_for(x).softmax(x, axis)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along axis; a row of all -inf gives NaN."""
    return _module_for(x).log_softmax(x, axis)


def softmax_backward(y, gy, axis=-1):
    """Input gradient of y = softmax(x): y * (gy - sum(gy * y, axis))."""
    return _module_for(y).softmax_backward(y, gy, axis)


def log_softmax_backward(y, gy, axis=-1):
    """Input gradient of y = log_softmax(x): gy - exp(y) * sum(gy, axis)."""
    return _module_for(y).log_softmax_backward(y, gy, axis)


def slogdet(a, keep_factors=False):
    """(sign, log|det a|) of a batch (..., n, n); singular matrices give (0, -inf). With keep_factors, a third
    item: the backend's LU factors of a, for inv(a, factors) (None where it keeps none)."""
    return _module_for(a).slogdet(a, keep_factors)


def inv(a, factors=None):
    """a^-1 of a batch (..., n, n) (slogdet's gradient is inv(a)^T); LinAlgError when singular. `factors`:
    what slogdet(a, keep_factors=True) gave, so that a is not factored twice."""
    return _module_for(a).inv(a, factors)


def matmul(a, b):
    """np.matmul(a, b); large float products of NumPy arrays split over minigen's threads (gemm.py) unless the
    'reference' backend is chosen."""
    return gemm.matmul(a, b) if numba_passes() else np.matmul(a, b)


def matmul_pair(a1, b1, a2, b2) -> tuple:
    """(a1 @ b1, a2 @ b2): on minigen's threads two large products of NumPy matrices run at once, half the
    threads each (gemm.py), unless the 'reference' backend is chosen."""
    return gemm.matmul_pair(a1, b1, a2, b2) if numba_passes() else (np.matmul(a1, b1), np.matmul(a2, b2))


if os.environ.get("MINIGEN_KERNELS"):
    _backend = _validate(os.environ["MINIGEN_KERNELS"].strip())
    _backend_checked = _backend not in GPU_BACKENDS
