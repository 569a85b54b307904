"""Where arrays live: the array module (NumPy or CuPy), devices, the default dtype and random generators.

Everything above this file works on `xp`, the array module of the arrays at hand, so the same code runs on
the CPU (NumPy) and on a GPU (CuPy). Importing minigen never needs CuPy, a GPU or a CUDA driver: CuPy is
imported on first use of the 'cuda' device only.

Devices: 'cpu', 'cuda', and 'sim', a simulated second device for tests on machines without a GPU. A 'sim'
array is a NumPy array that refuses to meet a plain NumPy array in an operation, as a CuPy array refuses
a NumPy one: a recipe that runs on 'sim' makes its noise, masks and chains on the data's device.
"""
from __future__ import annotations

import contextlib
import types

import numpy as np

_cupy = None          # the cupy module once imported, False when it cannot be
_default_dtype = np.dtype(np.float32)
_cupy_error = ""     # why cupy could not be used
_generators: dict[str, object] = {}
DEVICES = ("cpu", "cuda", "sim")


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
            "e.g. `pip install -e \".[cuda]\"` (cupy-cuda12x) from the minigen checkout, on a machine with an NVIDIA GPU.")
    return cp


def get_array_module(x):
    """numpy for NumPy arrays and Python scalars, cupy for CuPy arrays, `sim` for 'sim' arrays."""
    if type(x) is np.ndarray:
        return np
    if isinstance(x, SimArray):
        return sim
    return np if not _cupy else _cupy.get_array_module(x)


def device_of_module(xp) -> str:
    """The device whose arrays the array module `xp` makes."""
    return "cpu" if xp is np else "sim" if xp is sim else "cuda"


def device_of(array) -> str:
    return device_of_module(get_array_module(array))


def check_device(device: str | None) -> str:
    if device is None:
        return "cpu"
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda' (or 'sim', the simulated test "
                         "device)")
    return device


def to_device(array, device: str):
    """Copy `array` to `device`; no copy when it is already there."""
    device = check_device(device)
    if device == "cpu":
        return array if get_array_module(array) is np else array.get()
    if device == "sim":
        return array if isinstance(array, SimArray) else sim.array(to_device(array, "cpu"))
    return require_cupy().asarray(array)


def array_module(device: str):
    device = check_device(device)
    return np if device == "cpu" else sim if device == "sim" else require_cupy()


# --- the simulated device 'sim' ----------------------------------------------------------------------------


class DeviceMismatchError(TypeError):
    """An operation met arrays of two devices (CuPy raises a TypeError there too)."""


class SimArray(np.ndarray):
    """An array on the simulated device 'sim': a NumPy array whose operations refuse plain NumPy arrays.

    Every ufunc and NumPy function on a SimArray checks its array arguments: a plain ndarray of one or more
    dimensions among them raises DeviceMismatchError naming the function (0-d arrays and scalars pass, as
    they do with CuPy); otherwise it runs on plain views and its array results come back as SimArrays.
    One mistake it cannot see: `np.asarray(a)` of a SimArray quietly gives a plain array (CuPy raises);
    that array is caught only where it meets a 'sim' one. Kernels run on plain views (see kernels/).
    """

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        name = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        if out is not None:
            kwargs["out"] = _plain(out, name)
        result = getattr(ufunc, method)(*_plain(inputs, name), **kwargs)
        return (out[0] if len(out) == 1 else out) if out is not None else _on_sim(result)

    def __array_function__(self, func, types, args, kwargs):
        return _call_on_sim(func, f"numpy.{func.__name__}", args, kwargs)

    def get(self) -> np.ndarray:
        """A NumPy copy on the CPU (CuPy's name)."""
        return self.view(np.ndarray).copy()


def _plain(obj, name: str):
    """`obj` (an argument, or a tuple / list / dict of them) with SimArrays as plain views; a plain array of
    one or more dimensions raises DeviceMismatchError."""
    if isinstance(obj, SimArray):
        return obj.view(np.ndarray)
    if isinstance(obj, np.ndarray) and obj.ndim > 0:
        raise DeviceMismatchError(
            f"{name} got a NumPy array of shape {obj.shape} (on the CPU) together with arrays on device 'sim': "
            "make arrays on the data's device (backend.array_module(device), mg.zeros(..., device=), the array "
            "module of x.data), not with numpy, and move modules and their state there")
    if isinstance(obj, (tuple, list)):
        return type(obj)(_plain(v, name) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v, name) for k, v in obj.items()}
    return obj


def _on_sim(obj):
    """Plain arrays and NumPy scalars in a result (or a tuple / list of results) as SimArrays (CuPy gives 0-d
    arrays where NumPy gives scalars)."""
    if type(obj) is np.ndarray or isinstance(obj, np.generic):
        return np.asarray(obj).view(SimArray)
    if isinstance(obj, (tuple, list)):
        items = [_on_sim(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)     # named tuples too
    return obj


def _call_on_sim(f, name: str, args: tuple, kwargs: dict):
    """f(*args, **kwargs) on plain views of the 'sim' arrays among the arguments (plain arrays refused), its
    array results on 'sim'."""
    result = f(*_plain(args, name), **_plain(kwargs, name))
    out = kwargs.get("out")
    return out if isinstance(out, SimArray) else _on_sim(result)


class _SimModule:
    """The array module of device 'sim', standing for CuPy: numpy's names, whose functions refuse plain
    arrays and return SimArrays (zeros, arange, exp, linalg.norm, ...); `array` / `asarray` copy a NumPy
    array onto the device, as cupy's do."""

    ndarray = SimArray

    def __init__(self, namespace=np):
        self._namespace = namespace

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._namespace, name)
        if isinstance(value, types.ModuleType):
            value = _SimModule(value)
        elif callable(value) and not isinstance(value, (type, np.ufunc)):   # ufuncs dispatch by themselves
            value = _sim_function(value, f"{self._namespace.__name__}.{name}")
        self.__dict__[name] = value       # looked up once
        return value

    @staticmethod
    def array(a, dtype=None, copy: bool = True) -> SimArray:
        """`a` on 'sim' (from a SimArray, a NumPy array or nested lists): a copy, except from a SimArray with
        copy=False."""
        if isinstance(a, SimArray):
            return np.array(a.view(np.ndarray), dtype=dtype, copy=copy).view(SimArray)
        return np.array(a, dtype=dtype).view(SimArray)

    @staticmethod
    def asarray(a, dtype=None) -> SimArray:
        """`a` itself when already on 'sim' with that dtype, else a copy on 'sim'."""
        return a.astype(dtype or a.dtype, copy=False) if isinstance(a, SimArray) else sim.array(a, dtype)


def _sim_function(f, name: str):
    """numpy function `f` as the 'sim' module's: plain array arguments refused, array results on 'sim'."""
    def on_sim(*args, **kwargs):
        return _call_on_sim(f, name, args, kwargs)
    on_sim.__name__ = on_sim.__qualname__ = f.__name__
    return on_sim


sim = _SimModule()


class _SimGenerator:
    """The random generator of 'sim': NumPy's Generator limited to the methods CuPy's Generator has, with
    its draws on 'sim' (`generator('sim')`). Seeded like the others, its stream differs from the CPU's, as
    CuPy's does (the same draws on two devices would make, say, a first sample equal a parameter)."""

    METHODS = ("random", "uniform", "integers", "standard_normal", "standard_exponential", "exponential",
               "standard_gamma", "gamma", "beta", "binomial", "chisquare", "dirichlet", "f", "geometric",
               "hypergeometric", "logseries", "poisson", "power")

    def __init__(self, seed):
        self._numpy = np.random.default_rng(None if seed is None else [seed, 1])    # a stream of its own

    def __getattr__(self, name: str):
        if name not in self.METHODS:
            raise AttributeError(f"CuPy's random Generator has no {name!r} (it has {', '.join(self.METHODS)}), "
                                 "so neither has the one of device 'sim'")
        return _sim_function(getattr(self._numpy, name), f"generator('sim').{name}")


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
        device = check_device(device)
        gen = (np.random.default_rng(seed) if device == "cpu" else _SimGenerator(seed) if device == "sim" else
               require_cupy().random.default_rng(seed))
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
