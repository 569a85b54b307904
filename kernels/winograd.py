"""3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016, sections 4-5).

Each 4x4 block of outputs is computed from the 6x6 input tile d under it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A                                    (Lavin & Gray eq. 8)

with the elementwise product * summed over input channels. That sum is a matrix product per position
(xi, nu) of the 6x6 transformed tile: M[xi nu] (tiles x O) = V[xi nu] (tiles x C) @ U[xi nu] (C x O), 36
GEMMs of 36/144 = 0.25 times the multiply-adds of the im2col GEMM, and no 9-fold im2col copy. B^T d B, A^T m A
and the gradient's A e A^T are Numba loops with the channels innermost (contiguous in the channels-last
layouts, so they vectorize), parallel over rows of tiles. Large maps go through in chunks of rows of tiles,
whose transformed tiles stay in cache from one transform through the GEMMs to the next.

The matrices interpolate at 0, +-1, +-2 and infinity (section 5.2). Their coefficients reach 8 and 1/24, so
float32 loses more than the smaller F(2x2, 3x3) this replaced (coefficients 0, +-1, +-1/2): on a U-Net layer
(64 channels, 16x16, batch 32, unit inputs) the largest float32 error is 7e-6 of the largest output, against
3e-7, for a layer 1.3x (forward) to 1.7x (weight gradient) faster on one thread. float64 keeps 1e-13.
"""
from __future__ import annotations

import numba
import numpy as np

from . import gemm
from ._threads import parallel

_CHUNK_BYTES = 1 << 23     # transformed tiles per chunk
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
# G g G^T for every 3x3 filter g at once as one GEMM: kron(G, G)[6 i + j, 3 k + l] = G[i, k] G[j, l]
_GG = np.kron(_G, _G)
# typed constants: an int times a float32 would make Numba compute in float64 (and not vectorize)
_2, _4, _5, _8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)


def tiles(ho: int, wo: int) -> tuple[int, int]:
    """Tiles down and across for an (ho, wo) output."""
    return -(-ho // 4), -(-wo // 4)


def padded_size(ho: int, wo: int) -> tuple[int, int]:
    """Rows and columns of the zero-padded input that conv3x3 reads for an (ho, wo) output: whole tiles."""
    th, tw = tiles(ho, wo)
    return 4 * th + 2, 4 * tw + 2


def _chunks(n: int, th: int, tw: int, channels: int, itemsize: int) -> list[tuple[int, int]]:
    """Ranges of the n * th rows of tiles holding about _CHUNK_BYTES of transformed tiles each (all of them when
    they fit)."""
    rows = max(1, _CHUNK_BYTES // (36 * itemsize * channels * tw))
    return [(r, min(r + rows, n * th)) for r in range(0, n * th, rows)]


def conv3x3(xp, w, ho: int, wo: int, kept: list | None = None):
    """y = conv2d(x, w) for w (O, C, 3, 3), stride 1, from xp: x zero-padded, channels-last, of the size
    `padded_size(ho, wo)` asks for. Returns y channels-last, (N, ho, wo, O). The transformed input tiles B^T d B
    of each chunk are appended to the list `kept`, if given, for conv3x3_weight."""
    n, _, _, c = xp.shape
    o, (th, tw) = w.shape[0], tiles(ho, wo)
    u = gemm.matmul(_GG.astype(xp.dtype), w.reshape(-1, 9).T.astype(xp.dtype, copy=False))   # G g G^T: (36, O C)
    u = u.reshape(36, o, c).transpose(0, 2, 1)                                           # (36, C, O)
    y = np.empty((n, ho, wo, o), dtype=xp.dtype)
    for r0, r1 in _chunks(n, th, tw, max(c, o), xp.itemsize):
        v = _transformed_input(xp, th, tw, r0, r1)
        _output_transform(gemm.matmul(v, u), y, th, tw, r0)                              # (36, tiles, O)
        if kept is not None:
            kept.append(v)
    return y


def conv3x3_weight(xp, gy, ho: int, wo: int, kept: list | None = None):
    """The weight gradient dw (O, C, 3, 3) of y = conv3x3(xp, w) given gy channels-last (N, ho, wo, O).
    y is linear in U = G g G^T, y = A^T (U * V) A per tile, so dL/dU = V * (A gy A^T) summed over tiles (36
    GEMMs V[xi nu]^T @ (A gy A^T)[xi nu]) and dw = G^T (dL/dU) G. V is taken from `kept` when conv3x3 filled
    it for the same input, xp then unused (None)."""
    first = kept[0] if kept else xp
    n, c, dtype = gy.shape[0], first.shape[-1], first.dtype
    o, (th, tw) = gy.shape[3], tiles(ho, wo)
    s = np.zeros((36, c, o), dtype=dtype)
    for i, (r0, r1) in enumerate(_chunks(n, th, tw, max(c, o), dtype.itemsize)):
        v = kept[i] if kept else _transformed_input(xp, th, tw, r0, r1)
        z = np.empty((36, (r1 - r0) * tw, o), dtype=dtype)
        _gradient_transform(gy, z, th, tw, r0)
        s += gemm.matmul(v.transpose(0, 2, 1), z)                                        # (36, C, O)
    dw = gemm.matmul(_GG.T.astype(dtype), s.reshape(36, -1))                             # G^T s G: (9, C O)
    return np.ascontiguousarray(dw.reshape(3, 3, c, -1).transpose(3, 2, 0, 1))


def _transformed_input(xp, th: int, tw: int, r0: int, r1: int):
    """V = B^T d B for the tiles d of rows of tiles r0..r1: (36, tiles, C)."""
    v = np.empty((36, (r1 - r0) * tw, xp.shape[3]), dtype=xp.dtype)
    _input_transform(xp, v, th, tw, r0)
    return v


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
def _input_transform(xp, v, th, tw, row0):
    """v[6 r + s, tile] = (B^T d B)[r, s] for the tile d at rows 4i.., columns 4j.. (the tiles of the chunk whose
    rows of tiles start at row0): the columns of d transformed first, then the rows."""
    C = xp.shape[3]
    for row in numba.prange(v.shape[1] // tw):
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
            _store(out, v, row * tw + j)


@parallel()
def _output_transform(m, y, th, tw, row0):
    """The 4x4 outputs A^T m A of each tile of the chunk at row0, cropped to y's size."""
    O, ho, wo = m.shape[2], y.shape[1], y.shape[2]
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
            for a in range(min(4, ho - 4 * i)):
                for b in range(min(4, wo - 4 * j)):
                    for o in range(O):
                        y[n, 4 * i + a, 4 * j + b, o] = out[a, b, o]


@parallel()
def _gradient_transform(gy, z, th, tw, row0):
    """z[6 r + s, tile] = (A e A^T)[r, s] for the 4x4 block e of gy at (4i, 4j) (zero past gy's edge) of the
    chunk at row0: the adjoint of the output transform."""
    O, ho, wo = gy.shape[3], gy.shape[1], gy.shape[2]
    for row in numba.prange(z.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        e = np.zeros((4, 4, O), dtype=gy.dtype)
        t = np.empty((6, 4, O), dtype=gy.dtype)
        out = np.empty((36, O), dtype=gy.dtype)
        for j in range(tw):
            for a in range(4):
                for b in range(4):
                    if 4 * i + a < ho and 4 * j + b < wo:
                        for o in range(O):
                            e[a, b, o] = gy[n, 4 * i + a, 4 * j + b, o]
                    else:
                        e[a, b] = 0
            for b in range(4):
                for o in range(O):
                    t[0, b, o], t[1, b, o], t[2, b, o], t[3, b, o], t[4, b, o], t[5, b, o] = \
                        _a(e[0, b, o], e[1, b, o], e[2, b, o], e[3, b, o])
            for r in range(6):
                for o in range(O):
                    out[6 * r, o], out[6 * r + 1, o], out[6 * r + 2, o], out[6 * r + 3, o], out[6 * r + 4, o], \
                        out[6 * r + 5, o] = _a(t[r, 0, o], t[r, 1, o], t[r, 2, o], t[r, 3, o])
            _store(out, z, row * tw + j)
