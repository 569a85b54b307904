"""LU with partial pivoting for large matrices: slogdet and inv, blocked so that most flops are BLAS GEMMs.

NumPy's bundled LAPACK is slow on one thread here (512x512 float32: slogdet 8 ms, inv 24 ms, where a
512x512 GEMM takes 1.8 ms), so we factor ourselves, right-looking a panel of _NB columns at a time (getrf;
Golub & Van Loan, Matrix Computations 4th ed., 3.4.9): a Numba kernel factors the panel with partial pivoting,
then the columns right of it take its row swaps, a triangular solve for their block row (U12 = L11^-1 A12)
and one GEMM for the rest (A22 -= L21 U12, kernels/gemm.py's BLAS call with beta = 1: no temporary, MKL where
present). On several threads the next panel is factored while the other threads update the columns after it
(a look-ahead of one panel, _lookahead), so that the panels, a quarter to a third of the time and each too
narrow to split, overlap the GEMMs. The inverse solves L U x = P e for the columns e of the identity, a block of
columns per thread, in blocks of _NB rows (_inverse). These replaced a recursion after LAPACK's getrf2 (Toledo
1997), which halved the columns down to one panel and updated with fewer, larger GEMMs, and an inverse by
recursive blocks of L^-1 and U^-1. On AMD EPYC Zen 4, OpenBLAS, in one process, alternating, against the
recursion: the LU 0.83-0.98 of its time on one thread (n = 96-1024, float32 and float64; 1.02-1.05 at n =
2048) and 0.61-0.86 on two (n = 192-2048), where the recursion's panels left the second thread idle (in two of
six processes on two threads, one dtype took 1.1-1.65x at some sizes instead; the next process did not). Then, with
the substitutions four rows a pass (_subtract), against the look-ahead LU and the recursive inverse: the LU
0.90-1.04, the inverse from the factors 0.37-0.92 on one thread and 0.40-1.02 on two (n = 96-1024), slogdet with
its gradient's inverse 0.54-0.93 and 0.58-0.98.

Storage: the matrix itself, C-ordered, a = P^T L U overwritten by L (unit lower) and U. Row swaps then move
contiguous runs; the panel (a strided column block) is copied transposed into a small buffer, where its
pivot searches and column updates run down contiguous memory, and copied back. slogdet and inv both take
the factors, so that slogdet's gradient (a^-T) reuses the forward's instead of factoring again. (Skipping
the swaps that only keep L's finished columns in order, which slogdet alone could do, saved nothing
measurable: 0.97-1.11x the time at n = 256-1024. Factoring a^T instead, whose column-major storage is a's own
buffer, spares the panel's transposed copies, a third of its time; but the row swaps and the forward
substitution then move single scattered elements: 1.7x the whole LU's time at n = 512, not kept.)
"""
from __future__ import annotations

import numba
import numpy as np

from . import _threads, gemm

_NB = 32   # panel width: 64 took 1.3-1.5x the time at n = 192-512 on 2 threads (16 was slower in the recursion too)
_PANEL_COLUMNS = 5   # _lookahead's balance: a panel takes about as long as updating 5 times its width of columns
_PARALLEL_MIN_N = 256   # from 8 panels: at n = 96 two threads took 1.18-1.25x one thread's time, at 192 as long
_jit = numba.njit(cache=True, fastmath={"contract"})


# ----------------------------------------------------------------------------------------- Numba leaves

@_jit
def _first_max(bits, mask):
    """The first index of max (bits & mask): two passes, the first a vectorized max."""
    big = bits.dtype.type(0)
    for r in range(bits.shape[0]):
        v = bits.dtype.type(bits[r] & mask)
        big = v if v > big else big
    for r in range(bits.shape[0]):
        if bits.dtype.type(bits[r] & mask) == big:
            return r
    return 0


@_jit
def _argmax_abs(x):
    """The first index of max |x| (x contiguous): |x| compared as the integer of its bits with the sign bit
    cleared, which orders finite floats and infinities as their values, and which LLVM vectorizes where it
    leaves a float max scalar (0.87 of the panel's time). A NaN ranks above infinity; it spreads to det and
    inverse whichever row is taken."""
    if x.itemsize == 4:
        return _first_max(x.view(np.int32), np.int32(0x7FFFFFFF))
    return _first_max(x.view(np.int64), np.int64(0x7FFFFFFFFFFFFFFF))


@_jit
def _apply_previous(t, k, rows):
    """Left-looking step for panel column k (the row t[k], t the transposed panel): apply the Gauss
    transforms of columns 0..k-1, i.e. forward-substitute the unit lower L[:k, :k] into u = M[:k, k], then
    M[k:, k] -= L[k:, :k] @ u (four columns at a time, to load and store M[k:, k] a quarter as often)."""
    col = t[k]
    for i in range(k):
        ci, li = col[i + 1:k], t[i, i + 1:k]
        for r in range(ci.shape[0]):
            ci[r] -= col[i] * li[r]
    below = t[k, k:rows]
    i = 0
    while i + 4 <= k:
        f0, f1, f2, f3 = col[i], col[i + 1], col[i + 2], col[i + 3]
        l0, l1, l2, l3 = t[i, k:rows], t[i + 1, k:rows], t[i + 2, k:rows], t[i + 3, k:rows]
        for r in range(below.shape[0]):
            below[r] -= f0 * l0[r] + f1 * l1[r] + f2 * l2[r] + f3 * l3[r]
        i += 4
    for i in range(i, k):
        f, li = col[i], t[i, k:rows]
        for r in range(below.shape[0]):
            below[r] -= f * li[r]


@_jit
def _panel(m, piv, j, w):
    """Factor the panel M[j:, j:j+w] in place, left-looking (getf2's partial pivoting, one column at a
    time) in a transposed copy; piv[k] = the row swapped with row k, swapped inside the panel only."""
    rows = m.shape[0] - j
    t = np.empty((w, rows + 16), m.dtype)     # t[:, :rows]; rows 4 KiB apart would share cache sets
    for r in range(rows):
        mr = m[j + r, j:j + w]
        for c in range(w):
            t[c, r] = mr[c]
    for k in range(w):
        _apply_previous(t, k, rows)
        p = k + _argmax_abs(t[k, k:rows])
        piv[j + k] = j + p
        for c in range(w):
            t[c, k], t[c, p] = t[c, p], t[c, k]
        if t[k, k] != 0:          # a zero pivot (all-zero column) leaves the column as it is, as getf2 does
            below = t[k, k + 1:rows]
            inv = 1 / t[k, k]
            for r in range(below.shape[0]):
                below[r] *= inv
    for r in range(rows):
        mr = m[j + r, j:j + w]
        for c in range(w):
            mr[c] = t[c, r]


@_jit
def _swap_rows(m, piv, k0, k1, c0, c1):
    """laswp: rows k <-> piv[k] for k = k0..k1-1 in turn, within columns c0:c1."""
    for k in range(k0, k1):
        p = piv[k]
        if p != k:
            x, y = m[k, c0:c1], m[p, c0:c1]
            for c in range(c1 - c0):
                x[c], y[c] = y[c], x[c]


@_jit
def _unswap_columns(x, piv):
    """x <- x P for P the row swaps k <-> piv[k] in turn: (x P)[:, d] = x[:, src[d]], gathered a row at a
    time through a copy of the row (NumPy's out[:, perm] = x: 4x the time at n = 512)."""
    n = x.shape[1]
    src = np.arange(n)
    for k in range(len(piv) - 1, -1, -1):
        p = piv[k]
        src[k], src[p] = src[p], src[k]
    row = np.empty(n, x.dtype)
    for i in range(x.shape[0]):
        xi = x[i]
        row[:] = xi
        for d in range(n):
            xi[d] = row[src[d]]


@_jit
def _forward_substitute(m, j, h, b, c0, c1):
    """B <- L^-1 B in place for B = b[j:j+h, c0:c1], L the unit lower triangle of m[j:j+h, j:j+h]: row i of the
    result is B[i] - sum over k < i of L[i, k] X[k], runs along b's contiguous rows (_subtract). b is m itself
    (the LU's block row) or the inverse being solved for, C-ordered either way."""
    for i in range(j + 1, j + h):
        _subtract(b, i, m[i], j, i, c0, c1)


@_jit
def _back_substitute(m, j, h, b, c0, c1):
    """B <- U^-1 B in place for B = b[j:j+h, c0:c1], U the upper triangle of m[j:j+h, j:j+h] (with its
    diagonal)."""
    for i in range(j + h - 1, j - 1, -1):
        _subtract(b, i, m[i], i + 1, j + h, c0, c1)
        bi, d = b[i, c0:c1], 1 / m[i, i]
        for c in range(c1 - c0):
            bi[c] *= d


@_jit
def _subtract(b, i, f, k0, k1, c0, c1):
    """b[i, c0:c1] -= sum over k in k0:k1 of f[k] b[k, c0:c1], four rows k a pass over b[i], a quarter of its
    loads and stores: with a row a pass, _inverse took 1.02-1.15 of the time of the recursive inverse it
    replaced, with four 0.81-0.97 (float32, n = 256-1024, one thread, both reading its block as strided views;
    C-ordered rows then took it to 0.63-0.92); the LU's time moved 0.90-1.04."""
    bi = b[i, c0:c1]
    k = k0
    while k + 4 <= k1:
        f0, f1, f2, f3 = f[k], f[k + 1], f[k + 2], f[k + 3]
        x0, x1, x2, x3 = b[k, c0:c1], b[k + 1, c0:c1], b[k + 2, c0:c1], b[k + 3, c0:c1]
        for c in range(c1 - c0):
            bi[c] -= f0 * x0[c] + f1 * x1[c] + f2 * x2[c] + f3 * x3[c]
        k += 4
    for k in range(k, k1):
        fk, xk = f[k], b[k, c0:c1]
        for c in range(c1 - c0):
            bi[c] -= fk * xk[c]


# ------------------------------------------------------------------------------------ the factorization

@numba.njit
def _update(m, piv, k, w, c0, c1):
    """Bring columns c0:c1 past panel k:k+w (factored): its row swaps, U12 <- L11^-1 A12 on its rows, and
    A22 -= L21 U12 below them, by one BLAS call (gemm._gemm, beta = 1)."""
    if c1 <= c0:
        return
    _swap_rows(m, piv, k, k + w, c0, c1)
    _forward_substitute(m, k, w, m, c0, c1)
    if k + w < m.shape[0]:
        gemm._gemm(m[k + w:, k:k + w], m[k:k + w, c0:c1], m[k + w:, c0:c1], -1.0, 1.0)


@_threads.parallel(cache=False)
def _lookahead(m, piv, nb, panel_columns):
    """Factor m in place, a panel of nb columns at a time: getrf's loop with a look-ahead of one panel. At step
    k, with panel k factored, thread 0 updates the next panel's columns by panel k and factors it, while the
    other threads update the columns after it. Thread 0 also takes a share of those, so that its work matches
    the others' when a panel counts as `panel_columns` times its width in updated columns. Each panel's row
    swaps reach the columns left of it at the end, in panel order, as getrf's do. One thread does it all."""
    n = m.shape[0]
    parts = numba.get_num_threads()
    _panel(m, piv, 0, min(nb, n))
    for k in range(0, n - nb, nb):
        j = k + nb                                    # the next panel, j:j + w
        w = min(nb, n - j)
        rest = n - j - w
        own = max(0, (rest - (parts - 1) * (panel_columns + 1) * w) // parts)    # thread 0's share of rest
        for p in numba.prange(parts):
            if p == 0:
                _update(m, piv, k, nb, j, j + w)
                _panel(m, piv, j, w)
                _update(m, piv, k, nb, j + w, j + w + own)
            else:
                c0, c1 = gemm._block(p - 1, parts - 1, rest - own)
                _update(m, piv, k, nb, j + w + own + c0, j + w + own + c1)
    for k in range(nb, n, nb):
        _swap_rows(m, piv, k, min(k + nb, n), 0, k)


def lu(a):
    """(m, piv) for one square matrix a: m (a copy, C order, rows padded) holds L (strictly below the
    diagonal, unit diagonal implied) and U of a = P^T L U, P the row swaps k <-> piv[k] for k = 0, 1, ...
    in turn."""
    n = a.shape[-1]
    m = np.empty((n, n + 16), a.dtype)   # m[:, :n]: rows 4 KiB apart (n = 1024 float32) share cache sets;
    m[:, :n] = a                         # the whole C-ordered m keeps Numba's row slices contiguous
    piv = np.arange(n)
    _run(_lookahead, n, m, piv, _NB, _PANEL_COLUMNS)
    return m[:, :n], piv


def _run(kernel, n, *args):
    """kernel(*args) for an n x n matrix: on minigen's threads (_threads.shared) from _PARALLEL_MIN_N, else its
    serial compilation on this thread; the BLAS its GEMMs call loaded first."""
    gemm._load_blas()
    if _threads.shared() and n >= _PARALLEL_MIN_N:
        _threads.spread(kernel, *args)
    else:
        kernel.serial(*args)


@_threads.parallel(cache=False)
def _inverse(m, x, nb, bounds):
    """x = U^-1 L^-1 from the factors in m, columns bounds[p]:bounds[p + 1] on thread p: each thread solves for
    its own columns of the identity, L y = e then U x = y in place, in blocks of nb rows (a triangular solve in
    Numba, then one GEMM for the rows past it). Column c of L^-1 is zero above row c, so its forward sweep starts
    there and each block of rows carries only the columns that are nonzero in it."""
    n = m.shape[0]
    for p in numba.prange(len(bounds) - 1):
        c0, c1 = bounds[p], bounds[p + 1]
        x[:, c0:c1] = 0
        for c in range(c0, c1):
            x[c, c] = 1
        for k in range(c0, n, nb):                      # x <- L^-1 x, top down
            h = min(nb, n - k)
            last = min(c1, k + h)                       # columns from last on are zero in rows < k + h
            _forward_substitute(m, k, h, x, c0, last)
            if k + h < n:
                gemm._gemm(m[k + h:, k:k + h], x[k:k + h, c0:last], x[k + h:, c0:last], -1.0, 1.0)
        for k in range((n - 1) // nb * nb, -1, -nb):     # x <- U^-1 x, bottom up
            h = min(nb, n - k)
            _back_substitute(m, k, h, x, c0, c1)
            if k > 0:
                gemm._gemm(m[:k, k:k + h], x[k:k + h, c0:c1], x[:k, c0:c1], -1.0, 1.0)


def _column_bounds(n, parts):
    """parts + 1 column bounds that give each thread of _inverse about as many multiply-adds: column c costs
    (n - c)^2 / 2 for L and n^2 / 2 for U."""
    cost = np.cumsum((n - np.arange(n)) ** 2 / 2 + n * n / 2)
    return np.concatenate([[0], np.searchsorted(cost, cost[-1] * np.arange(1, parts) / parts), [n]])


def inv(a, factors=None):
    """a^-1 of one square matrix, or None when a pivot is zero: P a = L U, so a^-1 = U^-1 L^-1 P, solved for in
    a block of columns per thread (on one thread, the blocks in turn). `factors`: lu(a), when at hand (slogdet's
    gradient: the forward's)."""
    m, piv = lu(a) if factors is None else factors
    n = len(m)
    if not np.all(np.diagonal(m)):
        return None
    x = np.empty((n, n), m.dtype)
    _run(_inverse, n, m, x, _NB, _column_bounds(n, numba.get_num_threads()))
    _unswap_columns(x, piv)
    return x


def slogdet(a, factors=None):
    """(sign, log|det a|) of one square matrix, log|det| summed in float64; singular: (0, -inf).
    `factors`: lu(a), when at hand."""
    m, piv = lu(a) if factors is None else factors
    d = np.diagonal(m)
    if not np.all(d):
        return 0.0, -np.inf
    swaps = np.count_nonzero(piv != np.arange(len(m)))
    return (-1.0) ** (swaps + np.count_nonzero(d < 0)), np.sum(np.log(np.abs(d.astype(np.float64))))
