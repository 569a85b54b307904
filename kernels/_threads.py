"""Numba's parallel loops, compiled twice: parallel, and serial for when Numba runs on one thread.

On one thread a parallel loop still hands its work to Numba's worker thread and waits for it; measured at
one thread, that handoff made whole training steps 10-27% slower (DCGAN 81 ms against 64) than the same
loops compiled without `parallel`, where `prange` is a plain `range`. So each kernel is compiled both ways
and every call picks by numba.get_num_threads().

On two threads a parallel loop pays only on large arrays: the workqueue's threads sleep between loops, and
waking them (and bringing the main thread back) costs 64-115 us on these virtual machines (the kernel
benchmark's launch table: a loop over two elements, 9-21 us serial), while a loop over a few MB is bound by
memory, which a second core hardly widens. Measured in whole training steps at 2 threads (interleaved engine
processes), running every loop below 4 M elements serially made them 6-19% faster (Glow 0.94, U-Net block
0.85, 8 convs 0.92, DCGAN 0.81, WGAN-GP 0.89 of the time), where a threshold of 1 M elements gained less.
Above it the second thread pays: softmax over 4096 x 1024 floats takes 1.8-2.3 ms parallel, 3.5-3.8 ms serial.

Why a loop of 1-2 ms gains nothing at 2 threads inside a step, when it runs 1.6-1.9x as fast on its own: after
each matrix product OpenBLAS's worker thread spins on the second core, waiting for the next one, for 2^28
cycles (~0.1 s) before it sleeps. A parallel loop over 512 x 1024 floats (an exp per element) took 1.5-2.1 ms
after a parallel one, 2.8-3.0 ms after a 512 x 512 GEMM, as long as the serial loop (3.0 ms). With
OPENBLAS_THREAD_TIMEOUT=4 (read only when NumPy loads OpenBLAS) the worker sleeps at once and the loop after
the GEMM took 1.6-1.8 ms, but every GEMM then waits for its worker to wake. Whole steps at 2 threads
(interleaved engine processes): 3-11% slower (U-Net block, DCGAN, Glow, 8 convs, MLP); with loops from 32-64 K
elements parallel as well, 2-14% slower but for the 8 convs (3-9% faster); on the OpenMP layer the U-Net block
11-24% slower. So neither is set.

Tried too, and dropped: a Winograd convolution's rows of tiles split over two Python threads (nogil kernels)
with OpenBLAS on one thread for the whole convolution. On its own it took 0.6-0.8x the time at 2 threads
(U-Net layer, forward 3.5 against 4.4 ms, weight gradient 3.9 against 6.4), but whole steps came out mixed:
U-Net block 0.85-0.89, Glow 1.04-1.12, 8 convs 1.24-1.35, since any OpenBLAS product at 2 threads elsewhere
in the step (the first and last convolutions of the 8, Glow's 1x1 ones) wakes the spinning worker, which then
takes a core from the two Python threads. (openblas_set_num_threads_local does not help: in the pthreads
builds it sets the global count.) What this points to is a single pool owning every thread: OpenBLAS on one
thread and minigen splitting its own GEMMs too; that would change NumPy's BLAS threads for the whole process.
"""
from __future__ import annotations

import functools
import threading
import types

import numba
import numpy as np


# Below this many elements the kernels' callers take the NumPy formulas instead of a Numba kernel, whose call
# costs more than it saves there. (Measured when these kernels ran in parallel at any size, under OpenMP: a
# 128x10 softmax backward inside an MLP step cost 5-15 ms, NumPy's formula 7 us.)
PARALLEL_MIN_SIZE = 1 << 15

# Numba's workqueue threading layer (kernels/__init__.py) aborts the process ("Concurrent access has been
# detected") when two Python threads launch parallel loops at once: they take turns.
_LAUNCH = threading.Lock()

# A kernel call runs its parallel compilation only when its largest array has this many elements (see above).
THREADS_MIN_SIZE = 1 << 22


class _Kernel:
    """A Python function compiled with parallel=True and without; calls go to the one the thread count asks for."""

    def __init__(self, fn, options: dict):
        # the serial twin is a copy of the function under its own name, so that Numba's on-disk cache keeps the
        # two compilations apart (its cache index is keyed by the function's name, not by the parallel flag)
        serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        serial.__qualname__ = fn.__qualname__ + "__serial"
        self.parallel = numba.njit(parallel=True, cache=True, **options)(fn)
        self.serial = numba.njit(cache=True, **options)(serial)
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        largest = max(a.size for a in args if isinstance(a, np.ndarray))
        if numba.get_num_threads() == 1 or largest < THREADS_MIN_SIZE:
            return self.serial(*args)
        with _LAUNCH:
            return self.parallel(*args)


def parallel(**options):
    """Decorator: `fn` as a _Kernel with Numba `options` (e.g. fastmath)."""
    return lambda fn: _Kernel(fn, options)
