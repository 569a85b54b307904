"""LU with partial pivoting for large matrices: slogdet and inv, recursive so that most flops are BLAS GEMMs.

NumPy's bundled LAPACK is slow on one thread here (512x512 float32: slogdet 8 ms, inv 24 ms, where a
512x512 GEMM takes 1.8 ms), so we factor ourselves: LAPACK's recursive getrf2 (Toledo 1997; Golub & Van
Loan, Matrix Computations 4th ed., 3.2.11 and 3.4) splits the columns in halves, factors the left half,
solves for the top-right block and updates the bottom-right block with one GEMM (NumPy's `@`), then
factors the bottom-right block. Below _NB columns a Numba kernel factors the panel.

Storage: a C-ordered array `t` holding M in column-major order, i.e. t = M^T. Column c of M is the
contiguous row t[c], so the panel's pivot searches and updates run down contiguous memory, as LAPACK's
do. For slogdet we factor M = a^T (det a^T = det a) with no copy but a's own; for inv, M = a^T too:
the inverse of M in column-major order is, read in C order, inv(M)^T = inv(a).

In t's C-order terms, M = P^T L U reads a = U^T L^T P = Lc Uc P with Lc = U^T the lower triangle of t
(with its diagonal) and Uc = L^T the unit upper triangle of t (strictly above the diagonal).
"""
from __future__ import annotations

import numba
import numpy as np

_NB = 32   # panel width handled by Numba: best at n = 512 float32 (16: 1.3x the time, 64: 1.1x, 128: 1.6x)
_jit = numba.njit(cache=True, fastmath={"contract"})


# ----------------------------------------------------------------------------------------- Numba leaves

@_jit
def _argmax_abs(x):
    """The first index of max |x|, eight running maxima so that the compares do not wait on each other."""
    lanes = np.zeros(8, x.dtype)
    n8 = x.shape[0] - x.shape[0] % 8
    for r in range(0, n8, 8):
        for i in range(8):
            v = abs(x[r + i])
            lanes[i] = v if v > lanes[i] else lanes[i]
    big = lanes.max()
    for r in range(n8, x.shape[0]):
        big = max(big, abs(x[r]))
    for r in range(x.shape[0]):
        if abs(x[r]) == big:
            return r
    return 0           # a column of NaNs: no pivot search can help, the NaNs spread to det and inverse


@_jit
def _swap(x, y):
    for c in range(x.shape[0]):
        x[c], y[c] = y[c], x[c]


@_jit
def _apply_previous(t, j, k):
    """Left-looking step for panel column k (the row t[k] from entry j): apply the Gauss transforms of
    columns j..k-1, i.e. forward-substitute the unit lower L[j:k, j:k] into u = M[j:k, k], then
    M[k:, k] -= L[k:, j:k] @ u (four columns at a time, to load and store M[k:, k] a quarter as often)."""
    col = t[k]
    for i in range(j, k):
        ci, li = col[i + 1:k], t[i, i + 1:k]
        for r in range(ci.shape[0]):
            ci[r] -= col[i] * li[r]
    below = t[k, k:]
    i = j
    while i + 4 <= k:
        f0, f1, f2, f3 = col[i], col[i + 1], col[i + 2], col[i + 3]
        l0, l1, l2, l3 = t[i, k:], t[i + 1, k:], t[i + 2, k:], t[i + 3, k:]
        for r in range(below.shape[0]):
            below[r] -= f0 * l0[r] + f1 * l1[r] + f2 * l2[r] + f3 * l3[r]
        i += 4
    for i in range(i, k):
        f, li = col[i], t[i, k:]
        for r in range(below.shape[0]):
            below[r] -= f * li[r]


@_jit
def _panel(t, perm, j, w):
    """Factor the panel M[j:, j:j+w] in place, left-looking (getf2's partial pivoting, one column at a
    time), and apply its row swaps to every other column of M. Returns the number of swaps."""
    n = t.shape[0]
    piv = np.empty(w, np.int64)
    for k in range(j, j + w):
        _apply_previous(t, j, k)
        p = piv[k - j] = k + _argmax_abs(t[k, k:])
        for c in range(j, j + w):
            t[c, k], t[c, p] = t[c, p], t[c, k]
        perm[k], perm[p] = perm[p], perm[k]
        if t[k, k] != 0:          # a zero pivot (all-zero column) leaves the column as it is, as getf2 does
            below = t[k, k + 1:]
            inv = 1 / t[k, k]
            for r in range(below.shape[0]):
                below[r] *= inv
    for c in range(n):            # laswp: the panel's swaps in each other column, one column at a time
        if c < j or c >= j + w:
            for k in range(j, j + w):
                p = piv[k - j]
                t[c, k], t[c, p] = t[c, p], t[c, k]
    return np.sum(piv != np.arange(j, j + w))


@_jit
def _unit_upper_inverse(t, j, h):
    """U^-1 for U the unit upper triangle of t[j:j+h, j:j+h], by back substitution, row by row."""
    x = np.eye(h, dtype=t.dtype)
    for i in range(h - 2, -1, -1):
        for k in range(i + 1, h):
            f = t[j + i, j + k]
            xi, xk = x[i, k:], x[k, k:]
            for c in range(xi.shape[0]):
                xi[c] -= f * xk[c]
    return x


@_jit
def _lower_inverse(t, j, h):
    """L^-1 for L the lower triangle of t[j:j+h, j:j+h] (with its diagonal), by forward substitution."""
    x = np.zeros((h, h), t.dtype)
    for i in range(h):
        x[i, i] = 1
        for k in range(i):
            f = t[j + i, j + k]
            xi, xk = x[i, :k + 1], x[k, :k + 1]
            for c in range(xi.shape[0]):
                xi[c] -= f * xk[c]
        d = 1 / t[j + i, j + i]
        for c in range(i + 1):
            x[i, c] *= d
    return x


# ------------------------------------------------------------------------------ recursions (GEMM between)

def _solve_unit_upper(t, j, h, b):
    """b @= U^-1 in place (b has h columns), U the unit upper triangle of t[j:j+h, j:j+h]: with
    U = [U11 U12; 0 U22], X1 = B1 U11^-1, X2 = (B2 - X1 U12) U22^-1; small blocks by GEMM with U^-1."""
    if h <= _NB:
        b[...] = b @ _unit_upper_inverse(t, j, h)
        return
    g = h // 2
    _solve_unit_upper(t, j, g, b[:, :g])
    b[:, g:] -= b[:, :g] @ t[j:j + g, j + g:j + h]
    _solve_unit_upper(t, j + g, h - g, b[:, g:])


def _solve_lower(t, j, h, b):
    """b @= L^-1 in place (b has h columns), L the lower triangle of t[j:j+h, j:j+h]: with
    L = [L11 0; L21 L22], X2 = B2 L22^-1, X1 = (B1 - X2 L21) L11^-1; small blocks by GEMM with L^-1."""
    if h <= _NB:
        b[...] = b @ _lower_inverse(t, j, h)
        return
    g = h // 2
    _solve_lower(t, j + g, h - g, b[:, g:])
    b[:, :g] -= b[:, g:] @ t[j + g:j + h, j:j + g]
    _solve_lower(t, j, g, b[:, :g])


def _getrf(t, perm, j, w):
    """Factor columns j:j+w of M (rows j: of it), getrf2's recursion; returns the number of row swaps.
    In M's terms: [A11 A12; A21 A22] -> factor [A11; A21], A12 <- L11^-1 A12, A22 -= A21 A12."""
    if w <= _NB:
        return _panel(t, perm, j, w)
    h = w // 2
    swaps = _getrf(t, perm, j, h)
    _solve_unit_upper(t, j, h, t[j + h:j + w, j:j + h])                      # A12^T <- A12^T L11^-T
    t[j + h:j + w, j + h:] -= t[j + h:j + w, j:j + h] @ t[j:j + h, j + h:]  # A22^T -= A12^T A21^T
    return swaps + _getrf(t, perm, j + h, w - h)


def lu(a):
    """(t, perm, swaps) for one square matrix a: t (a copy, C order) holds a = Lc Uc P as described above,
    P the column permutation a[:, perm] = Lc Uc, made of `swaps` transpositions."""
    t = np.array(a, order="C")
    perm = np.arange(len(t))
    return t, perm, _getrf(t, perm, 0, len(t))


def slogdet(a):
    """(sign, log|det a|) of one square matrix, log|det| summed in float64; singular: (0, -inf)."""
    t, _, swaps = lu(a)
    d = np.diagonal(t)
    if not np.all(d):
        return 0.0, -np.inf
    return (-1.0) ** (swaps + np.count_nonzero(d < 0)), np.sum(np.log(np.abs(d.astype(np.float64))))


def inv(a):
    """a^-1 of one square matrix, or None when a pivot is zero: a = Lc Uc P, so a^-1 = P^T Uc^-1 Lc^-1."""
    t, perm, _ = lu(a)
    n = len(t)
    if not np.all(np.diagonal(t)):
        return None
    x = np.eye(n, dtype=t.dtype)
    _solve_unit_upper(t, 0, n, x)
    _solve_lower(t, 0, n, x)
    out = np.empty_like(x)
    out[perm] = x
    return out
