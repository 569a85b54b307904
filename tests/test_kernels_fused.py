"""The fused elementwise kernels (kernels/fused.py): the Numba path (large NumPy arrays) against float64
references, on ordinary values, at +-1e4 (no NaN, exact limits) and on NaN; the small-array formula path
gives the same values."""
import numpy as np
import pytest
import scipy.special

from kernels import fused
from kernels.cpu import _PARALLEL_MIN_SIZE


def _silu_grad(x):
    s = scipy.special.expit(x)
    return s * (1 + x * (1 - s))


CASES = {
    "sigmoid": (fused.sigmoid, scipy.special.expit),
    "silu": (fused.silu, lambda x: x * scipy.special.expit(x)),
    "silu_backward": (lambda x: fused.silu_backward(x, np.full_like(x, 0.5)), lambda x: 0.5 * _silu_grad(x)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CASES)
def test_numba_path_matches_float64_reference(name, dtype):
    fn, ref = CASES[name]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(_PARALLEL_MIN_SIZE + 7) * 8).astype(dtype)
    x[:6] = [-1e4, 1e4, -100.0, 100.0, 0.0, -0.0]
    y = fn(x)
    assert y.dtype == dtype and y.shape == x.shape and np.isfinite(y).all()
    expected = ref(x.astype(np.float64))
    # relative to the value, or for silu' (which cancels to 0 near x = -1.28) to the size of its terms
    tol, scale = 8 * np.finfo(dtype).eps, np.abs(expected) + (np.abs(x) if name == "silu_backward" else 0)
    assert (np.abs(y - expected) <= tol * scale + np.finfo(dtype).tiny).all()
    assert (np.abs(fn(x[:100]) - y[:100]) <= 2 * tol * scale[:100] + np.finfo(dtype).tiny).all()   # formula path


@pytest.mark.parametrize("name", CASES)
def test_nan_stays_nan_and_layout_is_kept(name):
    fn, _ = CASES[name]
    x = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)
    x[3, 5] = np.nan
    y = fn(x.T)                                     # a non-contiguous input
    assert y.shape == (1024, 64) and np.isnan(y[5, 3]) and np.isnan(y).sum() == 1
    np.testing.assert_array_equal(np.isnan(fn(x)), np.isnan(x))
