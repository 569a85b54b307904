"""Numba's parallel loops, compiled twice: parallel, and serial for when Numba runs on one thread.

On one thread a parallel loop still hands its work to Numba's worker thread and waits for it; measured at
one thread, that handoff made whole training steps 10-27% slower (DCGAN 81 ms against 64) than the same
loops compiled without `parallel`, where `prange` is a plain `range`. So each kernel is compiled both ways
and every call picks by numba.get_num_threads().

Two pools of threads cannot share two cores. After each matrix product OpenBLAS's worker thread spins on the
second core for 2^28 cycles (~0.1 s) waiting for the next one; OpenMP's threads spin after each parallel loop
too. Under Numba's OpenMP layer beside NumPy's threaded BLAS, minigen's steps at 2 threads took 2.8x (U-Net
block), 4.0x (DCGAN) and 2.3x (8 convs) the time they took on the workqueue layer, whose idle threads sleep;
and under workqueue a parallel loop paid only from 4 M elements, since waking its threads costs 64-115 us on
these virtual machines (the kernel benchmark's launch table) and a loop after a product found the second core
taken by OpenBLAS's spinning worker (512 x 1024 floats, an exp each: 1.5-2.1 ms after a parallel loop, 2.8-3.0
after a 512 x 512 GEMM, as long as serial).

So, on OpenMP (the layer chosen unless the user set NUMBA_THREADING_LAYER, and Numba finds an OpenMP runtime),
minigen's kernels own the threads: every large product minigen computes is split over Numba's threads by
kernels/gemm.py, each part a single-threaded BLAS call, and no OpenBLAS worker is ever woken by minigen; a
launch on OpenMP's spinning threads costs ~3 us (workqueue: 35 us back to back), so loops run in parallel from
32 K elements. Measured in whole training steps at 2 threads against the workqueue layer with NumPy's threaded
BLAS (interleaved engine processes, p25): U-Net block 0.70, 8 convs 0.66, Glow 0.83, DCGAN 0.92, WGAN-GP 0.99,
MLP VAE 1.03, MADE 1.02 of the time. Under workqueue (the user's choice, or no OpenMP runtime) products stay
NumPy's and loops run in parallel from 4 M elements, as before.

Tried before, and dropped: the Winograd convolution's tiles split over two Python threads with OpenBLAS on one
thread (whole steps mixed: any OpenBLAS product at 2 threads elsewhere woke the spinning worker), a thread pool
of Python threads splitting GEMMs (a handoff costs 16 us back to back, 40-73 us after a sleep: steps 1.05-1.50x
slower), and OPENBLAS_THREAD_TIMEOUT=4 (the worker sleeps at once, and every GEMM waits for it to wake: steps
3-11% slower).
"""
from __future__ import annotations

import functools
import importlib
import os
import threading
import types

import numba
import numpy as np
from numba.np.ufunc import parallel as _numba_parallel


# Below this many elements the kernels' callers take the NumPy formulas instead of a Numba kernel, whose call
# costs more than it saves there. (Measured when these kernels ran in parallel at any size, under OpenMP: a
# 128x10 softmax backward inside an MLP step cost 5-15 ms, NumPy's formula 7 us.)
PARALLEL_MIN_SIZE = 1 << 15

# Numba's workqueue threading layer aborts the process ("Concurrent access has been detected") when two Python
# threads launch parallel loops at once: they take turns.
_LAUNCH = threading.Lock()


def _choose_layer() -> str:
    """Numba's threading layer: the user's (NUMBA_THREADING_LAYER), else OpenMP where Numba finds an OpenMP
    runtime, else workqueue."""
    if numba.config.THREADING_LAYER == "default":
        try:
            importlib.import_module("numba.np.ufunc.omppool")   # fails without an OpenMP runtime (libgomp)
            numba.config.THREADING_LAYER = "omp"
        except (ImportError, OSError):
            numba.config.THREADING_LAYER = "workqueue"
    return numba.config.THREADING_LAYER


# On OpenMP, minigen's kernels own the threads: matrix products split over them too (kernels/gemm.py).
OWN_THREADS = _choose_layer() == "omp"

# GNU OpenMP cannot serve a forked child (Numba terminates the child at its first parallel region, "fork()
# called from a process already using GNU OpenMP"): a child of fork() runs minigen's kernels on one thread, as
# PyTorch's DataLoader workers do.
if OWN_THREADS and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: numba.set_num_threads(1))

# A kernel call runs its parallel compilation only when its largest array has this many elements (see above).
THREADS_MIN_SIZE = 1 << 15 if OWN_THREADS else 1 << 22


def num_threads() -> int:
    """numba.get_num_threads(): the calling thread's count, read from Numba's threading layer directly once its
    threads are launched (0.2 us; Numba's own call takes two process-wide locks to see that they are, 0.7-2 us,
    and a matrix product asked it four times)."""
    if _numba_parallel._is_initialized:
        return _numba_parallel._get_num_threads()
    return numba.get_num_threads()


def in_parallel(size: int) -> bool:
    """Whether a kernel call whose largest array has `size` elements runs its parallel compilation."""
    return size >= THREADS_MIN_SIZE and num_threads() > 1


def shared() -> bool:
    """Whether minigen's kernels split work over several threads of their own (OpenMP layer, > 1 thread)."""
    return OWN_THREADS and num_threads() > 1


@functools.lru_cache(maxsize=None)
def _numba_blas() -> tuple:
    """threadpoolctl's controllers of the BLAS libraries that Numba's np.dot may call: every one loaded once
    SciPy's cython_blas is, but NumPy's own (when it is a separate library)."""
    importlib.import_module("scipy.linalg.cython_blas")     # loads the BLAS that Numba's np.dot calls
    from threadpoolctl import ThreadpoolController
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    return tuple(lib for lib in libs if not lib.filepath.startswith(os.path.join(numpy_dir, "numpy")))


def spread(kernel: "_Kernel", *args):
    """kernel's parallel compilation on args (its serial one on one thread), its BLAS calls each on one thread
    (set again at every call, since threadpoolctl's limits elsewhere can have raised it)."""
    for lib in _numba_blas():
        lib.set_num_threads(1)
    if num_threads() == 1:
        return kernel.serial(*args)
    with _LAUNCH:
        return kernel.parallel(*args)


class _Kernel:
    """A Python function compiled with parallel=True and without; calls go to the one the thread count asks for."""

    def __init__(self, fn, options: dict):
        # the serial twin is a copy of the function under its own name, so that Numba's on-disk cache keeps the
        # two compilations apart (its cache index is keyed by the function's name, not by the parallel flag)
        serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        serial.__qualname__ = fn.__qualname__ + "__serial"
        self.parallel = numba.njit(parallel=True, **options)(fn)
        self.serial = numba.njit(**options)(serial)
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        return self.sized(max(a.size for a in args if isinstance(a, np.ndarray)), *args)

    def sized(self, size: int, *args):
        """The call for a caller that knows the size of its largest array: 0.9 us sooner than finding it among
        the arguments, a third of a small activation's call."""
        if not in_parallel(size):
            return self.serial(*args)
        with _LAUNCH:
            return self.parallel(*args)


def parallel(cache: bool = True, **options):
    """Decorator: `fn` as a _Kernel with Numba `options` (e.g. fastmath), cached on disk unless cache=False."""
    return lambda fn: _Kernel(fn, dict(options, cache=cache))
