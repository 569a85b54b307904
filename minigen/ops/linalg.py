"""Linear algebra: matmul, einsum, inv, solve, triangular solve, slogdet / logdet / det, trace, cholesky, qr.

Matrices are the last two axes; leading axes are batch axes that broadcast, as in NumPy. The gradients
(Giles 2008, "An extended collection of matrix derivative results"):
    C = A B:             gA = G B^T,                gB = A^T G
    X = A^-1 B (solve):  gB = A^-T G,               gA = -gB X^T
    Y = A^-1:            gA = -Y^T G Y^T
    l = log|det A|:      gA = g A^-T, taken from a solve, never from det (which under/overflows)
"""
from __future__ import annotations

import numpy as np

import kernels

from .. import backend
from ..tensor import Function, Tensor, as_tensor
from .elementwise import exp
from .shape import broadcast_to, expand_dims, reshape, sum_to, swapaxes, tril, triu


def _mT(x: Tensor) -> Tensor:
    return swapaxes(x, -1, -2)


class MatMul(Function):
    """C = A @ B with NumPy's rules for 1-D operands (a vector is a row on the left, a column on the right).
    gA = G B^T, gB = A^T G, computed on the 2-D promoted shapes and reshaped back; both at once (ProductGrads)
    when B is a matrix and A and B both want theirs."""

    def forward(self, a, b):
        return kernels.matmul(a, b)

    def backward(self, g):
        a, b = self.inputs
        if a.ndim >= 2 and b.ndim == 2 and a.requires_grad and b.requires_grad:
            return ProductGrads(w_transposed=False)(g, a, b)
        a2 = reshape(a, (1, -1)) if a.ndim == 1 else a
        b2 = reshape(b, (-1, 1)) if b.ndim == 1 else b
        g2 = reshape(g, np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1]))
        ga = reshape(sum_to(matmul(g2, _mT(b2)), a2.shape), a.shape) if a.requires_grad else None
        gb = reshape(sum_to(matmul(_mT(a2), g2), b2.shape), b.shape) if b.requires_grad else None
        return ga, gb


def matmul(a, b) -> Tensor:
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least one dimension, got shapes {a.shape} and {b.shape}")
    k_a, k_b = a.shape[-1], b.shape[-2] if b.ndim > 1 else b.shape[0]
    if k_a != k_b:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match: the last axis of the first "
                         f"({k_a}) must equal the {'second-to-' if b.ndim > 1 else ''}last of the second ({k_b})")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch axes of shapes {a.shape} and {b.shape} do not broadcast") from None
    return MatMul()(a, b)


def weight_grad(g: Tensor, x: Tensor) -> Tensor:
    """g^T x summed over all leading axes: (out, in) from g (..., out) and x (..., in)."""
    return matmul(swapaxes(reshape(g, (-1, g.shape[-1])), 0, 1), reshape(x, (-1, x.shape[-1])))


class ProductGrads(Function):
    """The two gradients of y = x V, x (..., in), as one node, when x and V both want one: gx = g V^T and
    gV = x^T g (over all leading axes), the two products at once (kernels.matmul_pair: at two threads, one
    whole product on each). The matrix input w is V itself (matmul), or V^T (w_transposed: Linear's W, whose
    gradient g^T x then comes out contiguous in W's layout, as Adam's one-pass kernel takes it). Its backward,
    from the gradients ggx and ggV of its outputs:  g' = ggx V + x ggV,  x' = g ggV^T,  V' = ggx^T g."""

    def __init__(self, w_transposed: bool):
        self.w_transposed = w_transposed

    def forward(self, g, x, w):
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        if self.w_transposed:
            gx, gw = kernels.matmul_pair(g2, w, g2.T, x2)
        else:
            gx, gw = kernels.matmul_pair(g2, w.T, x2.T, g2)
        return gx.reshape(x.shape), gw

    def backward(self, ggx, ggw):
        g, x, w = self.inputs
        v, ggv = (_mT(w), _mT(ggw)) if self.w_transposed else (w, ggw)
        gw = (weight_grad(g, ggx) if self.w_transposed else weight_grad(ggx, g)) if w.requires_grad else None
        return (matmul(ggx, v) + matmul(x, ggv) if g.requires_grad else None,
                matmul(g, _mT(ggv)) if x.requires_grad else None,
                gw)


class Einsum(Function):
    """y = einsum(spec, *xs). The gradient of operand k is again an einsum: of g with the other operands,
    producing operand k's indices; indices found only in operand k were summed out of y, so its gradient
    is broadcast along them."""

    def __init__(self, inputs_spec, output_spec):
        self.inputs_spec, self.output_spec = inputs_spec, output_spec

    def forward(self, *xs):
        return np.einsum(",".join(self.inputs_spec) + "->" + self.output_spec, *xs, optimize=len(xs) > 2)

    def backward(self, g):
        grads = []
        for k, x in enumerate(self.inputs):
            if not x.requires_grad:
                grads.append(None)
                continue
            others = [s for j, s in enumerate(self.inputs_spec) if j != k]
            elsewhere = set(self.output_spec).union(*others)
            target = self.inputs_spec[k]
            reachable = "".join(c for c in target if c in elsewhere)
            gk = einsum(",".join([self.output_spec] + others) + "->" + reachable,
                        g, *[t for j, t in enumerate(self.inputs) if j != k])
            if reachable != target:   # broadcast along the indices only operand k had
                gk = broadcast_to(reshape(gk, [x.shape[i] if c in elsewhere else 1 for i, c in enumerate(target)]),
                                  x.shape)
            grads.append(gk)
        return tuple(grads)


def einsum(spec: str, *operands) -> Tensor:
    """numpy.einsum with an explicit output ('ij,jk->ik'); each operand's indices distinct."""
    operands = [as_tensor(t) for t in operands]
    spec = spec.replace(" ", "")
    if "->" not in spec or "." in spec:
        raise ValueError(f"einsum: write the output explicitly and without '...', e.g. 'ij,jk->ik'; got {spec!r}")
    lhs, out = spec.split("->")
    ins = lhs.split(",")
    if len(ins) != len(operands):
        raise ValueError(f"einsum: {spec!r} names {len(ins)} operands, {len(operands)} given")
    for s, t in zip(ins, operands):
        if len(s) != t.ndim or len(set(s)) != len(s):
            raise ValueError(f"einsum: operand indices {s!r} must be distinct and match its shape {t.shape}")
    return Einsum(ins, out)(*operands)


class Inv(Function):
    """Y = A^-1;  gA = -Y^T G Y^T. `factors`: A's LU factors from the slogdet kernel, when at hand."""

    def __init__(self, factors=None):
        self.factors = factors

    def forward(self, a):
        return kernels.inv(a, self.factors)

    def backward(self, g):
        yT = _mT(self.output())
        return -matmul(matmul(yT, g), yT)


class Solve(Function):
    """X = A^-1 B (B a matrix or, when 1-D, a vector);  gB = A^-T G, gA = -gB X^T."""

    def forward(self, a, b):
        return np.linalg.solve(a, b)

    def backward(self, g):
        a, b = self.inputs
        gb = solve(_mT(a), g)
        if not a.requires_grad:
            return None, gb
        x = self.output()
        if b.ndim == 1:
            ga = -expand_dims(gb, -1) * expand_dims(x, -2)
        else:
            ga = -matmul(gb, _mT(x))
        return ga, (gb if b.requires_grad else None)


class SolveTriangular(Function):
    """X = T^-1 B where T is the lower (or upper) triangle of A;  gB = T^-T G, gA = tri(-gB X^T)."""

    def __init__(self, lower):
        self.lower = lower

    def forward(self, a, b):
        return _solve_triangular_array(a, b, self.lower)

    def backward(self, g):
        a, b = self.inputs
        gb = SolveTriangular(not self.lower)(_mT(a), g)
        if not a.requires_grad:
            return None, gb
        ga = -matmul(gb, _mT(self.output()))
        xp = backend.get_array_module(a.data)
        n = a.shape[-1]
        mask = xp.tril(xp.ones((n, n), dtype=bool)) if self.lower else xp.triu(xp.ones((n, n), dtype=bool))
        return ga * Tensor(mask.astype(a.dtype)), (gb if b.requires_grad else None)


def _solve_triangular_array(a, b, lower):
    """Batched triangular solve. SciPy's solve_triangular is not batched, so batched inputs go through a
    general solve on the masked triangle (same result, O(n^3))."""
    xp = backend.get_array_module(a)
    tri = xp.tril(a) if lower else xp.triu(a)
    if a.ndim == 2 and xp is np:
        import scipy.linalg
        return scipy.linalg.solve_triangular(tri, b, lower=lower).astype(np.result_type(a, b), copy=False)
    return xp.linalg.solve(tri, b)


class SlogDet(Function):
    """(sign, l) with l = log|det A| (batched, the LU kernel; sign carries no gradient);
    gA = g A^-T, the inverse from the forward's LU factors (a solve against I), never from det."""

    def forward(self, a):
        sign, logabsdet, self.factors = kernels.slogdet(a, keep_factors=True)
        return sign, logabsdet

    def backward(self, g_sign, g_logabsdet):
        a_inv = Inv(self.factors)(self.inputs[0])
        return reshape(g_logabsdet, g_logabsdet.shape + (1, 1)) * _mT(a_inv)


class Trace(Function):
    """t = sum of the diagonal of the last two axes;  gA = g I."""

    def forward(self, a):
        return np.trace(a, axis1=-2, axis2=-1)

    def backward(self, g):
        a = self.inputs[0]
        xp = backend.get_array_module(a.data)
        eye = Tensor(xp.eye(a.shape[-2], a.shape[-1], dtype=a.dtype))
        return reshape(g, g.shape + (1, 1)) * eye


def _phi(x: Tensor) -> Tensor:
    """The lower triangle of x with its diagonal halved (Murray 2016's Phi)."""
    return tril(x) - 0.5 * tril(triu(x))


class Cholesky(Function):
    """L = cholesky(A), lower, A = L L^T symmetric positive definite (only A's lower triangle is read);
    gA = 0.5 (S + S^T) with S = L^-T Phi(L^T G) L^-1 (Murray 2016, eq. 10, symmetrized)."""

    def forward(self, a):
        return np.linalg.cholesky(a)

    def backward(self, g):
        lower = self.output()
        p_linv = _mT(SolveTriangular(False)(_mT(lower), _mT(_phi(matmul(_mT(lower), g)))))   # Phi(L^T G) L^-1
        s = SolveTriangular(False)(_mT(lower), p_linv)
        return 0.5 * (s + _mT(s))


class QR(Function):
    """[Q; R] = qr(A) stacked along the row axis (one output, so that either factor keeps both alive for the
    backward), reduced, for A (..., m, n) with m >= n and R invertible. With M = R gR^T - gQ^T Q,
    gA = (gQ + Q copyltu(M)) R^-T, copyltu(M) the symmetric matrix with M's lower triangle (Walter &
    Lehmann 2018; Liao et al. 2019, eq. 5)."""

    def forward(self, a):
        q, r = np.linalg.qr(a, mode="reduced")
        return np.concatenate((q, r), axis=-2)

    def backward(self, g):
        m = self.inputs[0].shape[-2]
        q, r = _split_rows(self.output(), m)
        g_q, g_r = _split_rows(g, m)
        mm = matmul(r, _mT(g_r)) - matmul(_mT(g_q), q)
        sym = tril(mm, -1) + _mT(tril(mm, -1)) + tril(triu(mm))
        return _mT(SolveTriangular(False)(r, _mT(g_q + matmul(q, sym))))          # (gQ + Q sym) R^-T


def _split_rows(x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    return x[..., :m, :], x[..., m:, :]


def _square(name: str, a: Tensor) -> Tensor:
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name}: expected square matrices in the last two axes, got shape {a.shape}")
    return a


def inv(a: Tensor) -> Tensor:
    return Inv()(_square("inv", a))


def solve(a: Tensor, b) -> Tensor:
    """A^-1 b, as numpy.linalg.solve (NumPy 2: b is a vector only when 1-D, else a stack of matrices)."""
    a, b = _square("solve", a), as_tensor(b)
    n_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if n_b != a.shape[-1]:
        raise ValueError(f"solve: A of shape {a.shape} and b of shape {b.shape} do not match")
    return Solve()(a, b)


def solve_triangular(a: Tensor, b, lower: bool = False) -> Tensor:
    """T^-1 b with T the lower or upper triangle of a (the other triangle is ignored), as SciPy's."""
    a, b = _square("solve_triangular", a), as_tensor(b)
    return SolveTriangular(lower)(a, b)


def slogdet(a: Tensor) -> tuple[Tensor, Tensor]:
    """(sign, log|det a|), batched over leading axes."""
    sign, logabsdet = SlogDet()(_square("slogdet", a))
    sign.requires_grad = False
    return sign, logabsdet


def logdet(a: Tensor) -> Tensor:
    """log det a: NaN where det a < 0, -inf where a is singular (PyTorch's convention)."""
    sign, logabsdet = slogdet(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        return logabsdet + Tensor(np.log(sign.data))


def det(a: Tensor) -> Tensor:
    """det a = sign * exp(log|det a|); its gradient det(a) a^-T comes through slogdet's solve."""
    sign, logabsdet = slogdet(a)
    return sign * exp(logabsdet)


def cholesky(a: Tensor) -> Tensor:
    """The lower Cholesky factor L of a symmetric positive-definite a = L L^T, batched."""
    return Cholesky()(_square("cholesky", a))


def qr(a: Tensor) -> tuple[Tensor, Tensor]:
    """(Q, R) with a = Q R, Q (..., m, n) orthonormal columns and R (..., n, n) upper triangular (NumPy's
    'reduced' mode); differentiable for m >= n and a of full column rank."""
    if a.ndim < 2 or a.shape[-2] < a.shape[-1]:
        raise ValueError(f"qr: expected matrices (..., m, n) with m >= n, got shape {a.shape}")
    return _split_rows(QR()(a), a.shape[-2])


def trace(a: Tensor) -> Tensor:
    if a.ndim < 2:
        raise ValueError(f"trace: expected at least 2 dimensions, got shape {a.shape}")
    return Trace()(a)


__all__ = ["matmul", "einsum", "inv", "solve", "solve_triangular", "slogdet", "logdet", "det", "trace", "cholesky",
           "qr"]
