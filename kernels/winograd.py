"""3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016, section 4).

Each 2x2 block of outputs is computed from the 4x4 input tile d under it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A                                    (Lavin & Gray eq. 8)

with the elementwise product * summed over input channels. That sum is a matrix product per position
(xi, nu) of the 4x4 transformed tile: M[xi nu] (tiles x O) = V[xi nu] (tiles x C) @ U[xi nu] (C x O), 16
GEMMs of 16/36 = 0.44 times the multiply-adds of the im2col GEMM, and no 9-fold im2col copy. The transforms
have coefficients 0, +-1 and +-1/2, so float32 loses next to nothing. B^T d B and A^T m A are Numba loops
with the channels innermost (contiguous in the channels-last layouts, so they vectorize), parallel over rows of
tiles. Large maps go through in chunks of rows of tiles, whose transformed tiles stay in cache from one
transform through the GEMMs to the next.
"""
from __future__ import annotations

import numba
import numpy as np

from ._threads import parallel

_CHUNK_BYTES = 1 << 23     # transformed tiles per chunk
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# G g G^T for every 3x3 filter g at once as one GEMM: kron(G, G)[4 i + j, 3 k + l] = G[i, k] G[j, l]
_GG = np.kron(_G, _G)


def tiles(ho: int, wo: int) -> tuple[int, int]:
    """Tiles down and across for an (ho, wo) output: the padded input must have 2 * tiles + 2 rows / columns."""
    return -(-ho // 2), -(-wo // 2)


def _chunks(n: int, th: int, tw: int, channels: int, itemsize: int) -> list[tuple[int, int]]:
    """Ranges of the n * th rows of tiles holding about _CHUNK_BYTES of transformed tiles each (all of them when
    they fit)."""
    rows = max(1, _CHUNK_BYTES // (16 * itemsize * channels * tw))
    return [(r, min(r + rows, n * th)) for r in range(0, n * th, rows)]


def conv3x3(xp, w, ho: int, wo: int):
    """y = conv2d(x, w) for w (O, C, 3, 3), stride 1, from xp: x zero-padded, channels-last, with the
    2 * tiles + 2 rows and columns that `tiles(ho, wo)` asks for. Returns y channels-last, (N, ho, wo, O)."""
    n, _, _, c = xp.shape
    o, (th, tw) = w.shape[0], tiles(ho, wo)
    u = _GG.astype(xp.dtype) @ w.reshape(-1, 9).T.astype(xp.dtype, copy=False)          # G g G^T: (16, O C)
    u = u.reshape(16, o, c).transpose(0, 2, 1)                                           # (16, C, O)
    y = np.empty((n, ho, wo, o), dtype=xp.dtype)
    for r0, r1 in _chunks(n, th, tw, max(c, o), xp.itemsize):
        v = np.empty((16, (r1 - r0) * tw, c), dtype=xp.dtype)
        _input_transform(xp, v, th, tw, r0)
        _output_transform(np.matmul(v, u), y, th, tw, r0)                                # (16, tiles, O)
    return y


def conv3x3_weight(xp, gy, ho: int, wo: int):
    """The weight gradient dw (O, C, 3, 3) of y = conv3x3(xp, w) given gy channels-last (N, ho, wo, O).
    y is linear in U = G g G^T, y = A^T (U * V) A per tile, so dL/dU = V * (A gy A^T) summed over tiles (16
    GEMMs V[xi nu]^T @ (A gy A^T)[xi nu]) and dw = G^T (dL/dU) G."""
    n, _, _, c = xp.shape
    o, (th, tw) = gy.shape[3], tiles(ho, wo)
    s = np.zeros((16, c, o), dtype=xp.dtype)
    for r0, r1 in _chunks(n, th, tw, max(c, o), xp.itemsize):
        v = np.empty((16, (r1 - r0) * tw, c), dtype=xp.dtype)
        _input_transform(xp, v, th, tw, r0)
        z = np.empty((16, (r1 - r0) * tw, o), dtype=xp.dtype)
        _gradient_transform(gy, z, th, tw, r0)
        s += np.matmul(v.transpose(0, 2, 1), z)                                          # (16, C, O)
    dw = _GG.T.astype(xp.dtype) @ s.reshape(16, -1)                                       # G^T s G: (9, C O)
    return np.ascontiguousarray(dw.reshape(3, 3, c, -1).transpose(3, 2, 0, 1))


@parallel()
def _input_transform(xp, v, th, tw, row0):
    """v[4 r + s, tile] = (B^T d B)[r, s] for the tile d at rows 2i.., columns 2j.. (the tiles of the chunk whose
    rows of tiles start at row0), with
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]: rows combined first, then columns."""
    C = xp.shape[3]
    for row in numba.prange(v.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        t = np.empty((4, 4, C), dtype=xp.dtype)
        for j in range(tw):
            tile = row * tw + j
            for s in range(4):
                d0, d1, d2, d3 = xp[n, 2 * i, 2 * j + s], xp[n, 2 * i + 1, 2 * j + s], \
                    xp[n, 2 * i + 2, 2 * j + s], xp[n, 2 * i + 3, 2 * j + s]
                for k in range(C):
                    t[0, s, k] = d0[k] - d2[k]
                    t[1, s, k] = d1[k] + d2[k]
                    t[2, s, k] = d2[k] - d1[k]
                    t[3, s, k] = d1[k] - d3[k]
            for r in range(4):
                for k in range(C):
                    v[4 * r, tile, k] = t[r, 0, k] - t[r, 2, k]
                    v[4 * r + 1, tile, k] = t[r, 1, k] + t[r, 2, k]
                    v[4 * r + 2, tile, k] = t[r, 2, k] - t[r, 1, k]
                    v[4 * r + 3, tile, k] = t[r, 1, k] - t[r, 3, k]


@parallel()
def _output_transform(m, y, th, tw, row0):
    """The 2x2 outputs A^T m A of each tile of the chunk at row0, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], cropped
    to y's size."""
    O, ho, wo = m.shape[2], y.shape[1], y.shape[2]
    for row in numba.prange(m.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        t = np.empty((2, 4, O), dtype=y.dtype)
        for j in range(tw):
            tile = row * tw + j
            for s in range(4):
                m0, m1, m2, m3 = m[s, tile], m[4 + s, tile], m[8 + s, tile], m[12 + s, tile]
                for o in range(O):
                    t[0, s, o] = m0[o] + m1[o] + m2[o]
                    t[1, s, o] = m1[o] - m2[o] - m3[o]
            for a in range(2):
                if 2 * i + a < ho:
                    out = y[n, 2 * i + a]
                    for o in range(O):
                        out[2 * j, o] = t[a, 0, o] + t[a, 1, o] + t[a, 2, o]
                    if 2 * j + 1 < wo:
                        for o in range(O):
                            out[2 * j + 1, o] = t[a, 1, o] - t[a, 2, o] - t[a, 3, o]


@parallel()
def _gradient_transform(gy, z, th, tw, row0):
    """z[4 r + s, tile] = (A e A^T)[r, s] for the 2x2 block e of gy at (2i, 2j) (zero past gy's edge) of the
    chunk at row0, with
    A = [[1, 0], [1, 1], [1, -1], [0, -1]]: the adjoint of the output transform."""
    O, ho, wo = gy.shape[3], gy.shape[1], gy.shape[2]
    for row in numba.prange(z.shape[1] // tw):
        n, i = (row0 + row) // th, (row0 + row) % th
        e = np.zeros((2, 2, O), dtype=gy.dtype)
        t = np.empty((4, 2, O), dtype=gy.dtype)
        for j in range(tw):
            tile = row * tw + j
            for a in range(2):
                for b in range(2):
                    if 2 * i + a < ho and 2 * j + b < wo:
                        e[a, b] = gy[n, 2 * i + a, 2 * j + b]
                    else:
                        e[a, b] = 0
            for b in range(2):
                for o in range(O):
                    t[0, b, o] = e[0, b, o]
                    t[1, b, o] = e[0, b, o] + e[1, b, o]
                    t[2, b, o] = e[0, b, o] - e[1, b, o]
                    t[3, b, o] = -e[1, b, o]
            for r in range(4):
                for o in range(O):
                    z[4 * r, tile, o] = t[r, 0, o]
                    z[4 * r + 1, tile, o] = t[r, 0, o] + t[r, 1, o]
                    z[4 * r + 2, tile, o] = t[r, 0, o] - t[r, 1, o]
                    z[4 * r + 3, tile, o] = -t[r, 1, o]
