"""Numba's fast-math flags for the kernels' reductions, and exp, expm1, log1p and the normal CDF in float32
arithmetic that LLVM vectorizes: this Numba has no SVML, so math.exp is a scalar libm call and a loop calling
it does not vectorize (softmax over 4096x1024 float32: 8.4 ms with math.exp, 5.4 ms for NumPy's AVX-512 exp,
1.7 ms with `exp` below). float64 keeps libm's. Used by the softmax kernels (cpu.py), the fused activations
(fused.py) and the normalizations (norm.py).
"""
from __future__ import annotations

import math

import numba
import numpy as np
import scipy.special
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from ._threads import parallel

FASTMATH = {"reassoc", "nsz", "arcp", "contract"}  # reorder sums (so they vectorize); keep inf and NaN
parallel_fastmath = parallel(fastmath=FASTMATH)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the 32 bits of an int32 as a float32 (an LLVM bitcast, free)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the function this is called in with 512-bit vectors where the CPU has them.

    On AVX-512 CPUs LLVM prefers 256-bit vectors (its tuning "prefer-256-bit", against the clock drop of wide
    instructions on the first AVX-512 chips), so a Numba loop gets ymm registers by default. The function
    attribute "prefer-vector-width"="512" lifts that for one function; LLVM inlines the helpers it calls into
    it first. Call it inside a prange loop's body, which Numba compiles as a function of its own. It emits no
    instructions. Used where the loops compute more than they move: softmax's forward (cpu.py), the fused
    activations (fused.py: sigmoid, SiLU, ELU, softplus and GELU took 0.65-0.8 of their time with it over 2 M
    float32, one thread); bound by memory (leaky ReLU, tanh's backward), a loop gains nothing from it.
    llvmlite's attribute set takes LLVM's keyword attributes only, so the string attribute is added past its
    check; without AVX-512 the widest legal vector stays the limit."""
    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def always_inline(typingctx):
    """Mark the function this is called in for inlining into its callers (LLVM's alwaysinline), whatever its
    size: a call inside a loop keeps the loop scalar, and LLVM declines to inline one as long as normal_cdf_pdf
    (float32 GELU over 2 M elements: 16 ms as a call, 2.3 ms inlined). It emits no instructions."""
    def codegen(context, builder, signature, args):
        builder.function.attributes.add("alwaysinline")
        return context.get_dummy_value()
    return types.none(), codegen


_F32 = np.float32
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.4426950408889634), _F32(0.693359375), _F32(-2.1219444e-4)
INV_FACTORIAL = tuple(_F32(1 / math.factorial(k)) for k in range(8))
_ATANH_SERIES = tuple(_F32(2 / (2 * k + 1)) for k in range(7))     # 2 atanh(t) = sum of 2 t^(2k+1) / (2k+1)


def _float32_form(numpy_fn, libm_fn):
    """Decorator: a function that Numba compiles as the decorated float32 formula for float32 arguments and as
    libm_fn for others (in Python it is numpy_fn)."""
    def decorate(formula):
        def fn(y):
            return numpy_fn(y)

        @overload(fn)
        def _overload(y):
            return formula if y == types.float32 else (lambda y: libm_fn(y))
        fn.__name__, fn.__doc__ = formula.__name__, formula.__doc__
        return fn
    return decorate


@_float32_form(np.exp, math.exp)
def exp(y):
    """exp(y) for y <= 0.

    exp(y) = 2^n exp(r) with n = round(y / ln 2) and r = y - n ln 2, |r| <= ln(2)/2; ln 2 is split in a short
    high part (n * _LN2_HI exact) and a low part so that r keeps float32 precision (Cody-Waite). exp(r) by its
    Taylor polynomial to r^7 (error < 1e-8 on |r| <= 0.35); 2^n by writing n + 127 into the exponent bits,
    where n = -127 writes the bits of 0.0: results below 2^-126 are flushed to 0. Written with selects, no
    branches, so that it vectorizes; NaN compares false and stays NaN."""
    y = _F32(-104) if y < _F32(-104) else y  # exp(-inf) = 0
    n = np.floor(y * _LOG2E + _F32(0.5))
    r = y - n * _LN2_HI - n * _LN2_LO
    c = INV_FACTORIAL
    p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * (c[6] + r * c[7]))))))
    n = _F32(-127) if n < _F32(-127) else n
    return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@_float32_form(np.expm1, math.expm1)
def expm1(y):
    """exp(y) - 1 for y <= 0.

    Near 0, where exp(y) - 1 cancels, the Taylor polynomial of exp without its constant term (error < 2e-8
    relative on |y| <= ln(2)/2); beyond, exp(y) - 1 >= 0.29 in size loses nothing. A select, no branch, so that
    it vectorizes; NaN fails the comparison and takes exp(NaN) - 1 = NaN."""
    c = INV_FACTORIAL
    p = y * (c[1] + y * (c[2] + y * (c[3] + y * (c[4] + y * (c[5] + y * (c[6] + y * c[7]))))))
    return p if y > np.float32(-0.34657359) else exp(y) - np.float32(1)


@_float32_form(np.log1p, math.log1p)
def log1p(y):
    """log(1 + y) for 0 <= y <= 1 (softplus's log1p(exp(-|x|))).

    log(1 + y) = 2 atanh(t) with t = y / (2 + y) <= 1/3, by the series to t^13: the first term left out is
    t^14 / 15 < 1.5e-8 of the sum, and t is one division away from y, so nothing cancels at any y. A
    polynomial and a division, no branch, so that it vectorizes; NaN stays NaN."""
    t = y / (_F32(2) + y)
    t2, c = t * t, _ATANH_SERIES
    return t * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * (c[3] + t2 * (c[4] + t2 * (c[5] + t2 * c[6]))))))


# Polynomial coefficients for normal_cdf_pdf, fitted in float64 by least squares on Chebyshev nodes, reweighted
# toward the smallest largest relative error (Lawson's iteration): Phi(x) - 1/2 = x P(x^2) on |x| < 3/2 (relative
# error 1.2e-9), and Mills' ratio R(x) = Phi(-x) / phi(x) = t Q(t), t = 1 / (1 + x/2), on x >= 3/2 (4.7e-8).
_NDTR_SPLIT = _F32(1.5)
_NDTR_CORE = tuple(map(_F32, (0.398942279, -0.066490335, 0.0099732413, -0.00118648847, 0.000114356373,
                              -8.71829723e-06, 4.1155501e-07)))
_MILLS = tuple(map(_F32, (0.500000019, 0.499994682, 0.375241252, 0.120919216, -0.123607646, -0.411106483,
                          0.124518372, 0.472012668, -0.318666584)))
INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@numba.njit(cache=True)
def _normal_libm(y):
    return 0.5 * math.erfc(-y * math.sqrt(0.5)), math.exp(-0.5 * y * y) * INV_SQRT_2PI


@_float32_form(lambda y: (scipy.special.ndtr(y), np.exp(-0.5 * y * y) * INV_SQRT_2PI), _normal_libm)
def normal_cdf_pdf(y):
    """(Phi(y), phi(y)): the standard normal CDF, to a few float32 ulps times the condition number 1 + y^2 of its
    tails, and the density exp(-y^2 / 2) / sqrt(2 pi), which it computes on the way (GELU's backward needs both).

    Near 0 the odd polynomial 1/2 + y P(y^2); beyond |y| = 3/2 the tail q = Phi(-|y|) = phi(y) R(|y|) from
    Mills' ratio, and Phi(y) = q for y < 0, 1 - q for y > 0, so that the far left tail keeps its relative
    precision down to the smallest normal float (1/2 (1 + erf) cancels there). phi is the only exp; the
    rounding of y^2 in it gives the condition number. Selects, no branches: it vectorizes; NaN takes the tail
    and stays NaN, +-inf gives 1 and 0."""
    always_inline()
    a, u = abs(y), y * y
    c = _NDTR_CORE
    core = _F32(0.5) + y * (c[0] + u * (c[1] + u * (c[2] + u * (c[3] + u * (c[4] + u * (c[5] + u * c[6]))))))
    t, m = _F32(1) / (_F32(1) + _F32(0.5) * a), _MILLS
    r = t * (m[0] + t * (m[1] + t * (m[2] + t * (m[3] + t * (m[4] + t * (m[5] + t * (m[6] + t * (m[7]
                                                                                            + t * m[8]))))))))
    pdf = exp(-_F32(0.5) * u) * _F32(INV_SQRT_2PI)
    q = pdf * r
    return (core if a < _NDTR_SPLIT else (_F32(1) - q if y > 0 else q)), pdf
