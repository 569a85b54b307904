"""Stride-1 convolutions by Winograd's minimal filtering F(4x4, r x r) (Lavin & Gray 2016, sections 4-5): 3x3
layers (r = 3), and the four phases of a 4x4 stride-2 layer, each a 2x2 one (r = 2, cpu.py's _phase_padded).

Each 4x4 block of outputs is computed from the (3 + r) x (3 + r) input tile d under it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A                                    (Lavin & Gray eq. 8)

with the elementwise product * summed over input channels. That sum is a matrix product per position
(xi, nu) of the transformed tile: M[xi nu] (tiles x O) = V[xi nu] (tiles x C) @ U[xi nu] (C x O): for r = 3, 36
GEMMs of 36/144 = 0.25 times the multiply-adds of the im2col GEMM, for r = 2, 25 of 25/64, and no r^2-fold
im2col copy. B^T d B, A^T m A and the gradient's A e A^T are Numba loops with the channels innermost
(contiguous in the channels-last layouts, so they vectorize), parallel over rows of tiles, each r's written out
(_bt, _at, _a; _bt2, _at2, _a2: tests check them against the matrices). The forward goes through in chunks of
rows of tiles, each on one thread from its input transform through its GEMMs to its outputs (_pipeline), its
transformed tiles staying in that core's cache; the weight gradient in chunks of its own.

The matrices come from Toom-Cook interpolation (_toom_cook) at 0, +-1, +-2 and infinity for r = 3 (section 5.2),
at 0, +-1, -2 and infinity for r = 2. F(4x4, 3x3)'s coefficients reach 8 and 1/24, so float32 loses more than the
smaller F(2x2, 3x3) this replaced (coefficients 0, +-1, +-1/2): on a U-Net layer (64 channels, 16x16, batch 32,
unit inputs) the largest float32 error is 7e-6 of the largest output, against 3e-7, for a layer 1.3x (forward)
to 1.7x (weight gradient) faster on one thread. float64 keeps 1e-13. F(4x4, 2x2)'s coefficients reach 8 and
1/2: on DCGAN's 4x4 stride-2 layers (batch 64) its largest float32 error is 2-6e-6 of the largest output.
"""
from __future__ import annotations

import numba
import numpy as np

from . import _threads, gemm
from ._threads import parallel

# Transformed tiles per chunk: half a MB, about what stays in a Zen 4 core's 1 MB L2 beside the chunk's products.
# Measured in one process against 8 MB (all of a DCGAN or U-Net layer's tiles in one chunk), alternating, AMD EPYC
# Zen 4: forward alone 0.67-0.87 of the time on one thread and 0.74-0.92 on two (DCGAN's 32 -> 64, 64 -> 128,
# 128 -> 64, U-Net's 3x3 at 16x16, PixelCNN's at 28x28); whole training steps 0.73-0.96 / 0.80-1.00.
_CHUNK_BYTES = 1 << 19
# The weight gradient's chunks: each adds its T^2 products (C x tiles) @ (tiles x O) into the (T^2, C, O) sum, a
# pass over that sum per chunk; chunks of 1 MB and at least C O / 64 tiles took 0.66-0.85 of one chunk's time on
# the 3x3 layers above, and leave DCGAN's 64 -> 128 and 128 -> 64 (C O = 32 K, 256 tiles) one chunk, where smaller
# ones took 1.1-1.4x (1 MB and 0.5 MB; 3.4x at 2 threads).
_WEIGHT_CHUNK_BYTES = 1 << 20


def _toom_cook(r: int, points) -> tuple:
    """(A^T, G, B^T) of F(4, r), 4 outputs of an r-tap correlation, interpolating at `points` (2 + r numbers)
    and infinity: A^T[k, i] = p_i^k, G[i, j] = p_i^j / prod over l != i of (p_i - p_l), infinity's row and
    column picking the leading coefficients; B^T is then the one matrix with A^T [(G g) * (B^T d)] = g
    correlated with d for every g and d (solved for exactly, as a linear system)."""
    n, p = 3 + r, np.asarray(points, dtype=float)
    at = np.zeros((4, n))
    at[:, :-1] = p ** np.arange(4)[:, None]
    at[-1, -1] = 1
    g = np.zeros((n, r))
    g[:-1] = p[:, None] ** np.arange(r)
    g[:-1] /= np.array([np.prod(pi - np.delete(p, i)) for i, pi in enumerate(p)])[:, None]
    g[-1, -1] = 1
    # row (k, j) of the system: sum over i of at[k, i] g[i, j] bt[i, l] = 1 where l = k + j
    system = np.einsum("ki,ij->kji", at, g).reshape(4 * r, n)
    target = np.zeros((4 * r, n))
    for k in range(4):
        target[k * r + np.arange(r), k + np.arange(r)] = 1
    bt = np.linalg.lstsq(system, target, rcond=None)[0]
    return at, g, np.round(bt, 12) + 0.0


_MATRICES = {3: _toom_cook(3, (0, 1, -1, 2, -2)), 2: _toom_cook(2, (0, 1, -1, -2))}
# G g G^T for every r x r filter g at once as one GEMM: kron(G, G)[T i + j, r k + l] = G[i, k] G[j, l]
_GG = {r: np.kron(g, g) for r, (_, g, _) in _MATRICES.items()}
# typed constants: an int times a float32 would make Numba compute in float64 (and not vectorize)
_2, _4, _5, _8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)


def tiles(ho: int, wo: int) -> tuple[int, int]:
    """Tiles down and across for an (ho, wo) output."""
    return -(-ho // 4), -(-wo // 4)


def padded_size(ho: int, wo: int, r: int = 3) -> tuple[int, int]:
    """Rows and columns of the zero-padded input that conv reads for an (ho, wo) output of an r x r filter:
    whole tiles."""
    th, tw = tiles(ho, wo)
    return 4 * th + r - 1, 4 * tw + r - 1


def _rows(tw: int, tile_bytes: int, budget: int) -> int:
    """Rows of tiles per chunk: about `budget` bytes of tiles of `tile_bytes`, at least one row."""
    return max(1, budget // (tile_bytes * tw))


def conv(xp, w, ho: int, wo: int, keep: bool = False):
    """(y, V): y = conv2d(x, w) for w given as (r, r, C, O) (w[o, c, i, j] at [i, j, c, o]), r = 3 or 2, stride 1,
    from xp: x zero-padded, channels-last, of at least the size `padded_size(ho, wo, r)` asks for; y channels-last,
    (N, ho, wo, O). With `keep`, V is the transformed input tiles B^T d B of every chunk, (T^2, tiles, C), for
    conv_weight; else None (each chunk's tiles are scratch)."""
    n, _, _, c = xp.shape
    r, o, (th, tw) = w.shape[0], w.shape[3], tiles(ho, wo)
    t2 = (3 + r) ** 2                                                                 # positions in a tile
    u = _combine(_GG[r].astype(xp.dtype), w.reshape(r * r, -1).astype(xp.dtype, copy=False))
    u = u.reshape(t2, c, o)                                                           # G g G^T: (T^2, C, O)
    y = np.empty((n, ho, wo, o), dtype=xp.dtype)
    rows = _rows(tw, t2 * max(c, o) * xp.itemsize, _CHUNK_BYTES)
    v = np.empty((t2, n * th * tw if keep else 0, c), dtype=xp.dtype)       # empty when not kept: one type
    gemm._load_blas()
    _threads.spread(_pipeline, xp, u, y, v, th, tw, rows, keep)
    return y, (v if keep else None)


def conv_weight(xp, gy, r: int, ho: int, wo: int, v=None):
    """The weight gradient dw of y = conv(xp, w), as w is given, (r, r, C, O), from gy channels-last (N, ho, wo, O).
    y is linear in U = G g G^T, y = A^T (U * V) A per tile, so dL/dU = V * (A gy A^T) summed over tiles (T^2
    GEMMs V[xi nu]^T @ (A gy A^T)[xi nu]) and dw = G^T (dL/dU) G. V is the one conv kept for the same input
    (xp then unused, None), else transformed here a chunk at a time."""
    n, o, (th, tw), t2 = gy.shape[0], gy.shape[3], tiles(ho, wo), (3 + r) ** 2
    source = xp if v is None else v
    c, dtype = source.shape[-1], source.dtype
    s = None
    tile_bytes = t2 * max(c, o) * dtype.itemsize
    rows = _rows(tw, tile_bytes, max(_WEIGHT_CHUNK_BYTES, c * o // 64 * tile_bytes))
    scratch = np.empty((t2, min(rows, n * th) * tw, c), dtype=dtype) if v is None else None
    for r0 in range(0, n * th, rows):
        r1 = min(r0 + rows, n * th)
        if v is None:
            (_input_transform if r == 3 else _input_transform2)(xp, scratch, th, tw, r0, r1 - r0, 0)
        vc = scratch[:, :(r1 - r0) * tw] if v is None else v[:, r0 * tw:r1 * tw]
        z = np.empty((t2, (r1 - r0) * tw, o), dtype=dtype)
        (_gradient_transform if r == 3 else _gradient_transform2)(gy, z, th, tw, r0)
        product = gemm.matmul(vc.transpose(0, 2, 1), z)                               # (T^2, C, O)
        s = product if s is None else np.add(s, product, out=s)
    return _combine(_GG[r].T.astype(dtype), s.reshape(t2, -1)).reshape(r, r, c, o)                  # G^T s G


@parallel()
def _combine(m, b):
    """m @ b for the small constant matrix m (kron(G, G) or its transpose, T^2 x r^2 or r^2 x T^2, in b's dtype)
    and the wide b (r^2 or T^2 rows of C O weights): each row of the result one pass per nonzero coefficient.
    BLAS took 2.6x the time at DCGAN's 64 -> 128 layer (25 x 4 times 4 x 32768, one thread; 1.8x on two): a
    product of 4 inner terms moves memory more than it multiplies. The same time at smaller layers."""
    out = np.empty((m.shape[0], b.shape[1]), dtype=b.dtype)
    for p in numba.prange(m.shape[0]):
        row = out[p]
        row[:] = 0
        for k in range(m.shape[1]):
            if m[p, k] != 0:
                for j in range(b.shape[1]):
                    row[j] += m[p, k] * b[k, j]
    return out


@numba.njit(inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """B^T d for a column d of 6, B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]."""
    return (_4 * d0 - _5 * d2 + d4, d3 + d4 - _4 * (d1 + d2), _4 * (d1 - d2) + d4 - d3,
            _2 * (d3 - d1) + d4 - d2, _2 * (d1 - d3) + d4 - d2, _4 * d1 - _5 * d3 + d5)


@numba.njit(inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """A^T m for a column m of 6, A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1]]."""
    a, b, c, d = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + a + c, b + _2 * d, a + _4 * c, b + _8 * d + m5


@numba.njit(inline="always")
def _a(e0, e1, e2, e3):
    """A e for a column e of 4: the adjoint of _at."""
    a, b, c, d = e0 + e2, e1 + e3, e0 + _4 * e2, _2 * e1 + _8 * e3
    return e0, a + b, a - b, c + d, c - d, e3


@numba.njit(inline="always")
def _store(local, v, tile):
    """v[:, tile] = local, a tile's 36 transformed rows. Computing them into a small local array and copying
    them out measured 1.7x faster than storing the transform's results straight into v."""
    for p in range(local.shape[0]):
        for k in range(local.shape[1]):
            v[p, tile, k] = local[p, k]


@parallel()
def _input_transform(xp, v, th, tw, row0, rows, first):
    """v[6 r + s, tile] = (B^T d B)[r, s] for the tile d at rows 4i.., columns 4j.. (the tiles of the `rows` rows of
    tiles from row0, stored from v's tile `first`): the columns of d transformed first, then the rows."""
    C = xp.shape[3]
    for row in numba.prange(rows):
        n, i = (row0 + row) // th, (row0 + row) % th
        t = np.empty((6, 6, C), dtype=xp.dtype)
        out = np.empty((36, C), dtype=xp.dtype)
        for j in range(tw):
            for s in range(6):
                d0, d1, d2 = xp[n, 4 * i, 4 * j + s], xp[n, 4 * i + 1, 4 * j + s], xp[n, 4 * i + 2, 4 * j + s]
                d3, d4, d5 = xp[n, 4 * i + 3, 4 * j + s], xp[n, 4 * i + 4, 4 * j + s], xp[n, 4 * i + 5, 4 * j + s]
                for k in range(C):
                    t[0, s, k], t[1, s, k], t[2, s, k], t[3, s, k], t[4, s, k], t[5, s, k] = \
                        _bt(d0[k], d1[k], d2[k], d3[k], d4[k], d5[k])
            for r in range(6):
                for k in range(C):
                    out[6 * r, k], out[6 * r + 1, k], out[6 * r + 2, k], out[6 * r + 3, k], out[6 * r + 4, k], \
                        out[6 * r + 5, k] = _bt(t[r, 0, k], t[r, 1, k], t[r, 2, k], t[r, 3, k], t[r, 4, k], t[r, 5, k])
            _store(out, v, first + row * tw + j)


@parallel()
def _output_transform(m, y, th, tw, row0):
    """The 4x4 outputs A^T m A of each tile of the chunk at row0, cropped to y's size."""
    O = m.shape[2]
    for row in numba.prange(m.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        t = np.empty((4, 6, O), dtype=y.dtype)
        out = np.empty((4, 4, O), dtype=y.dtype)
        for j in range(tw):
            tile = row * tw + j
            for s in range(6):
                m0, m1, m2, m3, m4, m5 = m[s, tile], m[6 + s, tile], m[12 + s, tile], m[18 + s, tile], \
                    m[24 + s, tile], m[30 + s, tile]
                for o in range(O):
                    t[0, s, o], t[1, s, o], t[2, s, o], t[3, s, o] = _at(m0[o], m1[o], m2[o], m3[o], m4[o], m5[o])
            for a in range(4):
                for o in range(O):
                    out[a, 0, o], out[a, 1, o], out[a, 2, o], out[a, 3, o] = \
                        _at(t[a, 0, o], t[a, 1, o], t[a, 2, o], t[a, 3, o], t[a, 4, o], t[a, 5, o])
            _store_block(out, y, n, i, j)


@parallel()
def _gradient_transform(gy, z, th, tw, row0):
    """z[6 r + s, tile] = (A e A^T)[r, s] for the 4x4 block e of gy at (4i, 4j) (zero past gy's edge) of the
    chunk at row0: the adjoint of the output transform."""
    O = gy.shape[3]
    for row in numba.prange(z.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        e = np.empty((4, 4, O), dtype=gy.dtype)
        t = np.empty((6, 4, O), dtype=gy.dtype)
        out = np.empty((36, O), dtype=gy.dtype)
        for j in range(tw):
            _load_block(gy, e, n, i, j)
            for b in range(4):
                for o in range(O):
                    t[0, b, o], t[1, b, o], t[2, b, o], t[3, b, o], t[4, b, o], t[5, b, o] = \
                        _a(e[0, b, o], e[1, b, o], e[2, b, o], e[3, b, o])
            for r in range(6):
                for o in range(O):
                    out[6 * r, o], out[6 * r + 1, o], out[6 * r + 2, o], out[6 * r + 3, o], out[6 * r + 4, o], \
                        out[6 * r + 5, o] = _a(t[r, 0, o], t[r, 1, o], t[r, 2, o], t[r, 3, o])
            _store(out, z, row * tw + j)


@numba.njit(inline="always")
def _store_block(out, y, n, i, j):
    """y[n, 4i + a, 4j + b] = out[a, b], the 4x4 outputs of tile (i, j), those inside y."""
    for a in range(min(4, y.shape[1] - 4 * i)):
        for b in range(min(4, y.shape[2] - 4 * j)):
            for o in range(y.shape[3]):
                y[n, 4 * i + a, 4 * j + b, o] = out[a, b, o]


@numba.njit(inline="always")
def _load_block(gy, e, n, i, j):
    """e[a, b] = gy[n, 4i + a, 4j + b], zero past gy's edge: the adjoint of _store_block."""
    for a in range(4):
        for b in range(4):
            if 4 * i + a < gy.shape[1] and 4 * j + b < gy.shape[2]:
                for o in range(gy.shape[3]):
                    e[a, b, o] = gy[n, 4 * i + a, 4 * j + b, o]
            else:
                e[a, b] = 0


# F(4x4, 2x2): the same three transforms on 5x5 tiles (points 0, +-1, -2 and infinity). Written out like r = 3's:
# reading the coefficients from the matrices instead took 5x the time (input transform of DCGAN's 64 -> 128 layer,
# one thread).

@numba.njit(inline="always")
def _bt2(d0, d1, d2, d3, d4):
    """B^T d for a column d of 5, B^T = [[-2, -1, 2, 1, 0], [0, 2, 3, 1, 0], [0, -2, 1, 1, 0], [0, -1, 0, 1, 0],
    [0, -2, -1, 2, 1]]."""
    s, p = d3 - d1, d2 + d3
    return _2 * (d2 - d0) + s, p + _2 * (d1 + d2), p - _2 * d1, s, _2 * s + d4 - d2


@numba.njit(inline="always")
def _at2(m0, m1, m2, m3, m4):
    """A^T m for a column m of 5, A^T = [[1, 1, 1, 1, 0], [0, 1, -1, -2, 0], [0, 1, 1, 4, 0], [0, 1, -1, -8, 1]]."""
    a, b = m1 + m2, m1 - m2
    return m0 + a + m3, b - _2 * m3, a + _4 * m3, b - _8 * m3 + m4


@numba.njit(inline="always")
def _a2(e0, e1, e2, e3):
    """A e for a column e of 4: the adjoint of _at2."""
    a, b = e0 + e2, e1 + e3
    return e0, a + b, a - b, e0 + _4 * e2 - _2 * e1 - _8 * e3, e3


@parallel()
def _input_transform2(xp, v, th, tw, row0, rows, first):
    """v[5 r + s, tile] = (B^T d B)[r, s] for the 5x5 tile d at rows 4i.., columns 4j.., as _input_transform."""
    C = xp.shape[3]
    for row in numba.prange(rows):
        n, i = (row0 + row) // th, (row0 + row) % th
        t = np.empty((5, 5, C), dtype=xp.dtype)
        out = np.empty((25, C), dtype=xp.dtype)
        for j in range(tw):
            for s in range(5):
                d0, d1, d2 = xp[n, 4 * i, 4 * j + s], xp[n, 4 * i + 1, 4 * j + s], xp[n, 4 * i + 2, 4 * j + s]
                d3, d4 = xp[n, 4 * i + 3, 4 * j + s], xp[n, 4 * i + 4, 4 * j + s]
                for k in range(C):
                    t[0, s, k], t[1, s, k], t[2, s, k], t[3, s, k], t[4, s, k] = _bt2(d0[k], d1[k], d2[k], d3[k], d4[k])
            for r in range(5):
                for k in range(C):
                    out[5 * r, k], out[5 * r + 1, k], out[5 * r + 2, k], out[5 * r + 3, k], out[5 * r + 4, k] = \
                        _bt2(t[r, 0, k], t[r, 1, k], t[r, 2, k], t[r, 3, k], t[r, 4, k])
            _store(out, v, first + row * tw + j)


@parallel()
def _output_transform2(m, y, th, tw, row0):
    """The 4x4 outputs A^T m A of each 5x5 tile of the chunk at row0, cropped to y's size, as _output_transform."""
    O = m.shape[2]
    for row in numba.prange(m.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        t = np.empty((4, 5, O), dtype=y.dtype)
        out = np.empty((4, 4, O), dtype=y.dtype)
        for j in range(tw):
            tile = row * tw + j
            for s in range(5):
                m0, m1, m2, m3, m4 = m[s, tile], m[5 + s, tile], m[10 + s, tile], m[15 + s, tile], m[20 + s, tile]
                for o in range(O):
                    t[0, s, o], t[1, s, o], t[2, s, o], t[3, s, o] = _at2(m0[o], m1[o], m2[o], m3[o], m4[o])
            for a in range(4):
                for o in range(O):
                    out[a, 0, o], out[a, 1, o], out[a, 2, o], out[a, 3, o] = \
                        _at2(t[a, 0, o], t[a, 1, o], t[a, 2, o], t[a, 3, o], t[a, 4, o])
            _store_block(out, y, n, i, j)


@parallel()
def _gradient_transform2(gy, z, th, tw, row0):
    """z[5 r + s, tile] = (A e A^T)[r, s] for the 4x4 block e of gy at (4i, 4j), as _gradient_transform."""
    O = gy.shape[3]
    for row in numba.prange(z.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        e = np.empty((4, 4, O), dtype=gy.dtype)
        t = np.empty((5, 4, O), dtype=gy.dtype)
        out = np.empty((25, O), dtype=gy.dtype)
        for j in range(tw):
            _load_block(gy, e, n, i, j)
            for b in range(4):
                for o in range(O):
                    t[0, b, o], t[1, b, o], t[2, b, o], t[3, b, o], t[4, b, o] = \
                        _a2(e[0, b, o], e[1, b, o], e[2, b, o], e[3, b, o])
            for r in range(5):
                for o in range(O):
                    out[5 * r, o], out[5 * r + 1, o], out[5 * r + 2, o], out[5 * r + 3, o], out[5 * r + 4, o] = \
                        _a2(t[r, 0, o], t[r, 1, o], t[r, 2, o], t[r, 3, o])
            _store(out, z, row * tw + j)


_input_transform_serial, _input_transform2_serial = _input_transform.serial, _input_transform2.serial
_output_transform_serial, _output_transform2_serial = _output_transform.serial, _output_transform2.serial


@parallel(cache=False)      # calls BLAS at addresses known only in this process (gemm.py)
def _pipeline(xp, u, y, v, th, tw, rows, keep):
    """conv's work, a chunk of `rows` rows of tiles per iteration, each chunk on one thread from its input transform
    through its T^2 products (one BLAS call each, u[xi nu] (C x O)) to its outputs: its tiles stay in that core's
    cache (against a loop over chunks, each step split over the threads: 0.91-1.00 of the time on one thread,
    0.76-0.94 on two, forward and transposed, the layers of _CHUNK_BYTES). The tiles go into v from the chunk's
    first tile when `keep`, else into a scratch array of the chunk's: written from an offset into C-ordered arrays,
    as Numba's loops writing into a view (a chunk of v) took 1.7x the time."""
    t2, C, O = u.shape
    n_rows = xp.shape[0] * th
    for chunk in numba.prange((n_rows + rows - 1) // rows):
        r0 = chunk * rows
        r1 = min(r0 + rows, n_rows)
        count = (r1 - r0) * tw                        # tiles in the chunk
        first = r0 * tw if keep else 0
        vc = v if keep else np.empty((t2, count, C), dtype=xp.dtype)
        if t2 == 36:
            _input_transform_serial(xp, vc, th, tw, r0, r1 - r0, first)
        else:
            _input_transform2_serial(xp, vc, th, tw, r0, r1 - r0, first)
        m = np.empty((t2, count, O), dtype=xp.dtype)
        for p in range(t2):
            gemm._gemm(vc[p, first:first + count], u[p], m[p], 1.0, 0.0)
        if t2 == 36:
            _output_transform_serial(m, y, th, tw, r0)
        else:
            _output_transform2_serial(m, y, th, tw, r0)

