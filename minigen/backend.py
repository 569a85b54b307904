"""Where arrays live: the array module (NumPy or CuPy), devices, the default dtype and random generators.

Everything above this file works on `xp`, the array module of the arrays at hand, so the same code runs on
the CPU (NumPy) and on a GPU (CuPy). Importing minigen never needs CuPy, a GPU or a CUDA driver: CuPy is
imported on first use of the 'cuda' device only.
"""
from __future__ import annotations

import contextlib

import numpy as np

_cupy = None          # the cupy module once imported, False when it cannot be
_default_dtype = np.dtype(np.float32)
_cupy_error = ""     # why cupy could not be used
_generators: dict[str, object] = {}


def _import_cupy():
    global _cupy, _cupy_error
    if _cupy is None:
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
            _cupy = cupy
        except Exception as e:  # ImportError, or CUDA driver/runtime errors
            _cupy = False
            _cupy_error = f"{type(e).__name__}: {e}"
    return _cupy



def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return bool(_import_cupy())


def require_cupy():
    """The cupy module, or a clear error saying what is missing and how to get it."""
    cp = _import_cupy()
    if not cp:
        raise RuntimeError(
            "device 'cuda' needs CuPy and a CUDA GPU, and they are not usable here "
            f"({_cupy_error or 'cupy not installed'}). Install CuPy for your CUDA version, "
            "e.g. `pip install minigen[cuda]` (cupy-cuda12x), on a machine with an NVIDIA GPU.")
    return cp


def get_array_module(x):
    """numpy for NumPy arrays and Python scalars, cupy for CuPy arrays."""
    if type(x) is np.ndarray or _cupy is None or _cupy is False:
        return np
    return _cupy.get_array_module(x)


def device_of(array) -> str:
    return "cpu" if get_array_module(array) is np else "cuda"


def check_device(device: str | None) -> str:
    if device is None:
        return "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    return device


def to_device(array, device: str):
    """Copy `array` to `device` ('cpu' or 'cuda'); no copy when it is already there."""
    device = check_device(device)
    if device == "cpu":
        return array if get_array_module(array) is np else array.get()
    cp = require_cupy()
    return cp.asarray(array)


def array_module(device: str):
    return np if check_device(device) == "cpu" else require_cupy()


def get_default_dtype() -> np.dtype:
    return _default_dtype


def set_default_dtype(dtype) -> None:
    """Floating dtype of tensors made from Python floats (float32 unless set)."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"default dtype must be a floating type, got {dtype}")
    _default_dtype = dtype


def manual_seed(seed: int) -> None:
    """Seed every random generator minigen uses (CPU, and GPU when present), for reproducible runs."""
    _generators.clear()
    _generators["cpu"] = np.random.default_rng(seed)
    if _cupy:
        _generators["cuda"] = _cupy.random.default_rng(seed)
    _generators["seed"] = seed


def generator(device: str = "cpu"):
    """The random generator of `device` (numpy / cupy `Generator`)."""
    gen = _generators.get(device)
    if gen is None:
        seed = _generators.get("seed")
        gen = np.random.default_rng(seed) if device == "cpu" else require_cupy().random.default_rng(seed)
        _generators[device] = gen
    return gen


@contextlib.contextmanager
def fork_rng(seed: int):
    """Inside, minigen's generators are fresh ones seeded with `seed`; afterwards the previous ones are back,
    untouched. Evaluation and sampling run in one, so they never shift the training run's random stream
    (and samples at different steps share their noise)."""
    saved = dict(_generators)
    _generators.clear()
    _generators["seed"] = seed
    try:
        yield
    finally:
        _generators.clear()
        _generators.update(saved)


def get_rng_state() -> dict:
    """The CPU generator's state, as plain JSON-able data (for checkpoints)."""
    return generator("cpu").bit_generator.state


def set_rng_state(state: dict) -> None:
    generator("cpu").bit_generator.state = state
