"""kernels/gemm.py: matrix products split over Numba's threads agree with np.matmul, for every way of cutting
them and every operand layout, on MKL and on OpenBLAS; splitting happens only where it is meant to."""
import contextlib
import os
import subprocess
import sys
from unittest import mock

import numba
import numpy as np
import pytest
from hypothesis import given, strategies as st

from kernels import _threads, gemm

LAYOUTS = ("C", "F", "C block", "F block", "strided")


def _laid_out(x: np.ndarray, layout: str) -> np.ndarray:
    """x with the same values in a C-ordered or F-ordered (last two axes swapped in memory) array, in a block
    of a larger one of either order (its matrices' rows and columns a part of the larger ones'), or in a
    strided array."""
    if layout == "C":
        return np.ascontiguousarray(x)
    if layout == "F":
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)
    if layout.endswith("block"):
        big = _laid_out(np.zeros(x.shape[:-2] + (x.shape[-2] + 3, x.shape[-1] + 2), dtype=x.dtype), layout[0])
        big[..., 2:-1, 1:-1] = x
        return big[..., 2:-1, 1:-1]
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


@contextlib.contextmanager
def _split_everything():
    """Every product split, on two threads where Numba has them (one thread still runs each way's loop)."""
    with mock.patch.object(gemm, "_SPLIT_MIN", 0), mock.patch.object(_threads, "shared", lambda: True):
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(1)


@pytest.fixture
def split_everything():
    with _split_everything():
        yield


def _recording_spread(monkeypatch) -> list:
    """The names of the kernels _threads.spread runs from now on."""
    taken, spread = [], _threads.spread
    monkeypatch.setattr(_threads, "spread",
                        lambda kernel, *args: taken.append(kernel.__name__) or spread(kernel, *args))
    return taken


@given(m=st.integers(1, 40), k=st.integers(1, 90), n=st.integers(1, 40), stack=st.sampled_from([None, 1, 3]),
       stacked=st.sampled_from(["both", "a", "b"]), layout_a=st.sampled_from(LAYOUTS),
       layout_b=st.sampled_from(LAYOUTS), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 9))
def test_split_products_equal_numpys(m, k, n, stack, stacked, layout_a, layout_b, dtype, seed):
    rng = np.random.default_rng(seed)
    lead_a = () if stack is None or stacked == "b" else (stack,)
    lead_b = () if stack is None or stacked == "a" else (stack,)
    a = _laid_out(rng.standard_normal(lead_a + (m, k)).astype(dtype), layout_a)
    b = _laid_out(rng.standard_normal(lead_b + (k, n)).astype(dtype), layout_b)
    with _split_everything():
        y = gemm.matmul(a, b)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert y.shape == expected.shape and y.dtype == dtype
    np.testing.assert_allclose(y, expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=(1e-4 if dtype == np.float32 else 1e-11) * np.sqrt(k))


@given(m=st.integers(1, 40), k=st.integers(1, 90), n=st.integers(1, 40), layout_a=st.sampled_from(LAYOUTS[:4]),
       layout_b=st.sampled_from(LAYOUTS[:4]), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 9))
def test_one_blas_call_updates_a_block_in_place(m, k, n, layout_a, layout_b, dtype, seed):
    """_gemm(a, b, c, -1, 1), c -= a @ b on a row-major block of a larger matrix (lu.py's updates): the values
    NumPy gives, the rest of the larger matrix untouched."""
    rng = np.random.default_rng(seed)
    a = _laid_out(rng.standard_normal((m, k)).astype(dtype), layout_a)
    b = _laid_out(rng.standard_normal((k, n)).astype(dtype), layout_b)
    big = rng.standard_normal((m + 3, n + 2)).astype(dtype)
    expected = big.astype(np.float64)
    expected[2:-1, 1:-1] -= a.astype(np.float64) @ b.astype(np.float64)
    gemm._load_blas()
    gemm._gemm(a, b, big[2:-1, 1:-1], -1.0, 1.0)
    np.testing.assert_allclose(big, expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=(1e-4 if dtype == np.float32 else 1e-11) * np.sqrt(k))


@pytest.mark.parametrize("a_shape, a_layout, b_shape, b_layout, way", [
    ((600, 64), "C", (64, 32), "C", "_outer"),         # tall: rows of a (an im2col product)
    ((600, 64), "F", (64, 32), "F", "_outer"),         # ... whatever the layouts
    ((32, 64), "C", (64, 600), "F", "_outer"),         # wide, b = w.T (Linear's x @ w.T)
    ((32, 64), "C", (64, 600), "C", "_outer"),         # ... or b = w (Linear's gradient g @ w)
    ((32, 6000), "C", (6000, 64), "C", "_inner"),      # a long inner axis (a weight gradient)
    ((32, 6000), "F", (6000, 64), "F", "_inner"),
    ((600, 64), "F", (64, 32), "C", "_outer"),         # x^T g with a short inner axis
    ((8, 60, 64), "C", (8, 64, 32), "F", "_stack"),    # a stack of products (Winograd's 36)
    ((8, 60, 64), "F", (64, 32), "C", "_stack"),       # transposed matrices times one, each read in place
    ((8, 60, 64), "C", (64, 32), "C", "_outer"),       # ... but C-ordered ones as one tall product
    ((64, 30, 16), "F", (16, 32), "C", "_outer"),      # ... and small ones copied into one
])
def test_each_layout_takes_its_way(split_everything, monkeypatch, a_shape, a_layout, b_shape, b_layout, way):
    a, b = _laid_out(np.ones(a_shape, np.float32), a_layout), _laid_out(np.ones(b_shape, np.float32), b_layout)
    taken = _recording_spread(monkeypatch)
    np.testing.assert_allclose(gemm.matmul(a, b), np.matmul(a, b))
    assert taken == [way]


def test_blocks_of_c_and_f_arrays_are_read_in_place():
    """BLAS reads a block of a C- or F-ordered matrix through its pointer and leading dimension: no copy. A
    strided, reversed or broadcast view is copied, since BLAS cannot read it."""
    x = np.zeros((3, 7, 9), np.float32)
    for view in (x, x[1], x[:, 2:5], x[..., 1:4], x[1, 2:6, 3:8], np.swapaxes(x, -1, -2)[:, 1:5, 2:4],
                 x[..., :1], x[:, :1]):
        assert gemm._blocks(view) is view
    for view in (x[..., ::2], x[:, ::-1], np.broadcast_to(x[0, :1], (7, 9))):
        copy = gemm._blocks(view)
        assert copy is not view and copy.flags.c_contiguous
        np.testing.assert_array_equal(copy, view)


@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), layouts=st.lists(
    st.sampled_from(LAYOUTS), min_size=4, max_size=4), dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 9))
def test_product_pairs_equal_numpys(m, k, n, layouts, dtype, seed):
    """A layer's two gradient products, g W and g^T x, computed at once: each as np.matmul gives it."""
    rng = np.random.default_rng(seed)
    g, w, x = (rng.standard_normal(shape).astype(dtype) for shape in ((m, n), (n, k), (m, k)))
    operands = [_laid_out(a, layout) for a, layout in zip((g, w, g.T, x), layouts)]
    with _split_everything():
        gx, gw = gemm.matmul_pair(*operands)
    for got, (a, b) in zip((gx, gw), ((g, w), (g.T, x))):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, a.astype(np.float64) @ b.astype(np.float64),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=(1e-4 if dtype == np.float32 else 1e-11) * np.sqrt(m))


def test_a_pair_runs_at_once_only_where_both_products_split(split_everything, monkeypatch):
    taken = _recording_spread(monkeypatch)
    a, b = np.ones((60, 50), np.float32), np.ones((50, 40), np.float32)
    gemm.matmul_pair(a, b, a.T, a)
    assert taken == ["_pair"]
    taken.clear()
    for pair in [(a, b, a.T.astype(np.float64), a.astype(np.float64)),      # two dtypes
                 (a, b, np.ones((2, 50, 60), np.float32), a)]:              # a stack
        for got, want in zip(gemm.matmul_pair(*pair), (np.matmul(*pair[:2]), np.matmul(*pair[2:]))):
            np.testing.assert_array_equal(got, want)
        assert "_pair" not in taken


class _Subclass(np.ndarray):
    pass


def test_small_products_mixed_dtypes_and_other_shapes_stay_numpys(monkeypatch):
    monkeypatch.setattr(_threads, "shared", lambda: True)
    monkeypatch.setattr(_threads, "spread", lambda *args: pytest.fail("split a product it should have left alone"))
    rng = np.random.default_rng(0)
    big32, big64 = rng.standard_normal((256, 256)).astype(np.float32), rng.standard_normal((256, 256))
    for a, b in [(big32[:64, :64], big32[:64, :64]),        # 64^3 multiply-adds: OpenBLAS's one-thread size
                 (big32, big64), (big32.astype(np.int64), big32.astype(np.int64)),
                 (big32.reshape(2, 2, 128, 128), big32.reshape(2, 2, 128, 128)),
                 (big32.view(_Subclass), big32)]:                # e.g. the 'sim' device's arrays: kept their type
        y = gemm.matmul(a, b)
        np.testing.assert_array_equal(y, np.matmul(a, b))
        assert type(y) is type(np.matmul(a, b))


def test_splitting_pins_the_blas_numba_calls_to_one_thread(split_everything):
    """Each thread's np.dot must not start BLAS threads of its own: spread sets them to one at every call, even
    after threadpoolctl raised them."""
    from threadpoolctl import threadpool_limits
    libs = _threads._numba_blas()
    if not libs:
        pytest.skip("no BLAS library apart from NumPy's is loaded for Numba")
    a = np.ones((300, 40), np.float32)
    with threadpool_limits(2):
        gemm.matmul(a, a.T)
        assert [lib.get_num_threads() for lib in libs] == [1] * len(libs)


def test_products_split_only_on_the_openmp_layer_with_threads(monkeypatch):
    monkeypatch.setattr(_threads, "OWN_THREADS", False)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        assert not _threads.shared()
        monkeypatch.setattr(_threads, "OWN_THREADS", True)
        assert _threads.shared() == (numba.get_num_threads() > 1)
    finally:
        numba.set_num_threads(1)
    assert not _threads.shared()


def test_one_thread_products_are_computed_here_only_on_mkl(monkeypatch):
    """On one thread matmul has nothing to split: it computes a large product itself only when its BLAS is MKL,
    faster than NumPy's OpenBLAS; else NumPy does. A pair is two products."""
    taken = _recording_spread(monkeypatch)
    large, small = np.ones((600, 128), np.float32), np.ones((600, 32), np.float32)   # 600 x 128 x 64 = 2.3 x 2^21
    for blas, way in [("mkl", ["_outer"]), ("openblas", [])]:
        monkeypatch.setattr(gemm, "blas", lambda: blas)
        for a in (large, small):
            taken.clear()
            np.testing.assert_array_equal(gemm.matmul(a, a.T[:, :64]), np.matmul(a, a.T[:, :64]))
            assert taken == (way if a is large else [])
        taken.clear()
        for got, want in zip(gemm.matmul_pair(large, large.T, large.T, large), (large @ large.T, large.T @ large)):
            np.testing.assert_array_equal(got, want)
        assert taken == way * 2


def test_the_blas_loaded_is_the_one_chosen():
    chosen = os.environ.get("MINIGEN_BLAS") or ("mkl" if gemm._mkl_library() and gemm._intel_cpu() else "openblas")
    assert gemm.blas() == chosen


def test_a_blas_choice_that_cannot_be_met_says_so(monkeypatch):
    with pytest.raises(ValueError, match="MINIGEN_BLAS='blis'"):
        gemm._blas_functions("blis")
    monkeypatch.setattr(gemm, "_intel_cpu", lambda: False)      # elsewhere (AMD) MKL is chosen only by name
    assert gemm._blas_functions("auto")[0] == "openblas"
    monkeypatch.setattr(gemm, "_mkl_library", lambda: None)
    with pytest.raises(RuntimeError, match=r"MKL was not found: pip install 'minigen\[mkl\]'"):
        gemm._blas_functions("mkl")
    monkeypatch.setattr(gemm, "_intel_cpu", lambda: True)
    assert gemm._blas_functions("auto")[0] == "openblas"


def _python(args: list, **environment) -> subprocess.CompletedProcess:
    """Python run on `args` from the repository root, with these environment variables added (a BLAS is chosen
    once per process)."""
    return subprocess.run([sys.executable, *args], env=dict(os.environ, **environment), capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(gemm._mkl_library() is None, reason="MKL is not installed: the tests above ran on OpenBLAS")
def test_products_on_the_other_blas_too():
    """With MKL installed the tests above ran on one of MKL and OpenBLAS: the product tests run again on the
    other."""
    tests = "equal_numpys or in_place or takes_its_way or chosen"
    other = "openblas" if gemm.blas() == "mkl" else "mkl"
    run = _python(["-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", tests], MINIGEN_BLAS=other)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.skipif(gemm._mkl_library() is None, reason="MKL is not installed")
def test_mkl_takes_its_own_layers_whatever_the_environment_says():
    """MKL_INTERFACE_LAYER=ILP64 would have it read our 32-bit dimensions as 64-bit ones, MKL_THREADING_LAYER=
    INTEL start threads of its own inside each part: gemm sets both layers before its first call."""
    code = ("import numba, numpy as np; from kernels import gemm; numba.set_num_threads(1); "
            "a = np.arange(300 * 200, dtype=np.float32).reshape(300, 200) % 7; b = a.T[:, :150].copy(); "
            "assert gemm.blas() == 'mkl'; np.testing.assert_array_equal(gemm.matmul(a, b), a @ b)")
    run = _python(["-c", code], MKL_INTERFACE_LAYER="ILP64", MKL_THREADING_LAYER="INTEL", MINIGEN_BLAS="mkl")
    assert run.returncode == 0, run.stderr[-3000:]
