"""Elementwise operations. Each Function's docstring gives its forward and its backward (the vector-Jacobian
product, with g the gradient of the output); backward is written in Tensor operations, so it is itself
differentiable. Broadcasting is handled by the engine, which sums each gradient back to its input's shape.
Operations that are short compositions of others (logsigmoid, hardtanh, ...) are plain functions: their
derivatives of every order come from their parts. The activations that training steps spend time in are
one node and one fused pass each way (kernels.fused), their backward a node whose own backward is written
in Tensor operations.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from kernels import fused, layout

from ..tensor import Function, Tensor, as_tensor, is_grad_enabled


def _pair(a, b) -> tuple[Tensor, Tensor]:
    """Two operands as tensors; a Python number takes the other operand's dtype (NumPy's rules)."""
    if isinstance(a, Tensor):
        return a, (b if isinstance(b, Tensor) else as_tensor(b, like=a))
    b = as_tensor(b)
    return as_tensor(a, like=b), b


class Scale(Function):
    """y = x * c for a constant array c (a mask, a sign, a share between tied inputs);  gx = g * c.
    The backward of every piecewise-linear op (relu, abs, clip, max, dropout) is one Scale node."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x * (self.c if self.c.dtype == bool else self.c.astype(x.dtype, copy=False))

    def backward(self, g):
        return Scale(self.c)(g)


class LeakyScale(Function):
    """z = g where x > 0, a g elsewhere, for a constant array x and slope a: the backward of leaky_relu, and of
    relu (a = 0), as Scale by their slope in one fused pass without building the slope array;
    gg = gz where x > 0, a gz elsewhere (a LeakyScale again)."""

    def __init__(self, x, a):
        self.x, self.a = x, a

    def forward(self, g):
        return fused.leaky_relu_backward(self.x, g, self.a)

    def backward(self, gz):
        return LeakyScale(self.x, self.a)(gz)


class Tie(Function):
    """z = g, recorded as a function of x too: the gradient of an op whose derivative is piecewise constant
    in x (relu, abs, clip, max, pooling) does not otherwise depend on x, so without this node a second
    derivative in x would find x "unused". Its derivative in x is zero, returned as None, which the engine
    turns into exact zeros for a tensor it reached (PyTorch's and JAX's answer);  gg = gz."""

    def forward(self, g, x):
        return g

    def backward(self, gz):
        return gz, None


def tie(g: Tensor, x: Tensor) -> Tensor:
    """g tied to x (see Tie) when the gradient is being recorded (create_graph); g itself otherwise, so
    that a first-order backward costs nothing more."""
    return Tie()(g, x) if x.requires_grad and is_grad_enabled() else g


# --- arithmetic ------------------------------------------------------------------------------------------


class Add(Function):
    """y = a + b;  ga = g, gb = g."""

    def forward(self, a, b):
        a, b = layout.matched(a, b)
        return a + b

    def backward(self, g):
        return g, g


class Sub(Function):
    """y = a - b;  ga = g, gb = -g."""

    def forward(self, a, b):
        a, b = layout.matched(a, b)
        return a - b

    def backward(self, g):
        return g, (-g if self.needs_grad(1) else None)


class Mul(Function):
    """y = a * b;  ga = g * b, gb = g * a."""

    def forward(self, a, b):
        a, b = layout.matched(a, b)
        return a * b

    def backward(self, g):
        a, b = self.inputs
        return (g * b if a.requires_grad else None), (g * a if b.requires_grad else None)


class Div(Function):
    """y = a / b;  ga = g / b, gb = -g * y / b."""

    def forward(self, a, b):
        a, b = layout.matched(a, b)
        return a / b

    def backward(self, g):
        a, b = self.inputs
        ga = g / b if a.requires_grad else None
        gb = -(ga if ga is not None else g / b) * self.output() if b.requires_grad else None
        return ga, gb


@functools.lru_cache(maxsize=256)
def _constant(c, dtype):
    a = np.array(c, dtype)
    a.flags.writeable = False
    return a


def _operand(c, x):
    """A Python number c as the other operand of an op on x. For a float NumPy array, c as a 0-d array of x's
    dtype (cached): the same value, since NumPy casts a Python number to the array's dtype anyway, but its
    ufuncs take it sooner (x * 1.01 on a (16,) float32 array: 1.2 us, with a 0-d float32 array 0.55). Zero
    stays a Python number: the cache would not tell 0.0 from -0.0."""
    return _constant(c, x.dtype) if type(x) is np.ndarray and x.dtype.kind == "f" and c != 0 else c


class AddScalar(Function):
    """y = x + c for a Python number c (NumPy's rules for Python scalars set the dtype: float32 + 0.1 stays
    float32);  gx = g."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x + _operand(self.c, x)

    def backward(self, g):
        return g


class MulScalar(Function):
    """y = x * c for a Python number c;  gx = g * c."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x * _operand(self.c, x)

    def backward(self, g):
        return MulScalar(self.c)(g)


class Neg(Function):
    """y = -x;  gx = -g."""

    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


class PowScalar(Function):
    """y = x ** p for a constant p;  gx = g * p * x ** (p - 1)."""

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        return x ** self.p

    def backward(self, g):
        if self.p == 2:
            return g * (2 * self.inputs[0])
        return g * (self.p * self.inputs[0] ** (self.p - 1))


class Pow(Function):
    """y = a ** b;  ga = g * b * a ** (b - 1),  gb = g * y * log(a)  (taken as 0 where a <= 0)."""

    def forward(self, a, b):
        return a ** b

    def backward(self, g):
        a, b = self.inputs
        ga = g * b * a ** (b - 1) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            positive = a.data > 0
            safe_a = where(positive, a, 1.0)
            gb = g * where(positive, self.output() * log(safe_a), 0.0)
        return ga, gb


_NUMBER = (int, float)   # exact types: a NumPy scalar (a float subclass) keeps NumPy's typed promotion


def add(a, b) -> Tensor:
    if type(b) in _NUMBER:
        return AddScalar(b)(a)
    if type(a) in _NUMBER:
        return AddScalar(a)(b)
    a, b = _pair(a, b)
    return Add()(a, b)


def sub(a, b) -> Tensor:
    if type(b) in _NUMBER:
        return AddScalar(-b)(a)
    if type(a) in _NUMBER:
        return AddScalar(a)(Neg()(b))
    a, b = _pair(a, b)
    return Sub()(a, b)


def mul(a, b) -> Tensor:
    if type(b) in _NUMBER:
        return MulScalar(b)(a)
    if type(a) in _NUMBER:
        return MulScalar(a)(b)
    a, b = _pair(a, b)
    return Mul()(a, b)


def div(a, b) -> Tensor:
    return Div()(*_pair(a, b))


def neg(x: Tensor) -> Tensor:
    return Neg()(x)


def pow(a, b) -> Tensor:  # noqa: A001 - NumPy's name
    """a ** b; a constant Python exponent takes the cheaper PowScalar path."""
    if isinstance(a, Tensor) and isinstance(b, (int, float)):
        return PowScalar(b)(a)
    return Pow()(*_pair(a, b))


# --- unary functions -------------------------------------------------------------------------------------


class Exp(Function):
    """y = exp(x);  gx = g * y."""

    def forward(self, x):
        return np.exp(x)

    def backward(self, g):
        return g * self.output()


class Log(Function):
    """y = log(x);  gx = g / x."""

    def forward(self, x):
        return np.log(x)

    def backward(self, g):
        return g / self.inputs[0]


class Log1p(Function):
    """y = log(1 + x);  gx = g / (1 + x)."""

    def forward(self, x):
        return np.log1p(x)

    def backward(self, g):
        return g / (self.inputs[0] + 1)


class Expm1(Function):
    """y = exp(x) - 1;  gx = g * (y + 1)."""

    def forward(self, x):
        return np.expm1(x)

    def backward(self, g):
        return g * (self.output() + 1)


class Sqrt(Function):
    """y = sqrt(x);  gx = g / (2 y)."""

    def forward(self, x):
        return np.sqrt(x)

    def backward(self, g):
        return g / (2 * self.output())


class Abs(Function):
    """y = |x|;  gx = g * sign(x)  (0 at x = 0, as PyTorch)."""

    def forward(self, x):
        return np.abs(x)

    def backward(self, g):
        x = self.inputs[0]
        return tie(Scale(np.sign(x.data))(g), x)


class Sin(Function):
    """y = sin(x);  gx = g * cos(x)."""

    def forward(self, x):
        return np.sin(x)

    def backward(self, g):
        return g * cos(self.inputs[0])


class Cos(Function):
    """y = cos(x);  gx = -g * sin(x)."""

    def forward(self, x):
        return np.cos(x)

    def backward(self, g):
        return -g * sin(self.inputs[0])


class Tanh(Function):
    """y = tanh(x);  gx = g * (1 - y^2)."""

    def forward(self, x):
        return fused.tanh(x)

    def backward(self, g):
        return TanhGrad()(self.output(), g)


class TanhGrad(Function):
    """The backward of tanh as one node and one fused pass: z = g (1 - y^2) from y = tanh(x);
    gy = gz * g * (-2 y),  gg = gz (1 - y^2) (a TanhGrad again)."""

    def forward(self, y, g):
        return fused.tanh_backward(y, g)

    def backward(self, gz):
        y, g = self.inputs
        return (gz * g * (-2 * y) if y.requires_grad else None,
                TanhGrad()(y, gz) if g.requires_grad else None)


class Sigmoid(Function):
    """y = 1 / (1 + exp(-x));  gx = g * y (1 - y). The forward is one fused pass (kernels.fused)."""

    def forward(self, x):
        return fused.sigmoid(x)

    def backward(self, g):
        return SigmoidGrad()(self.output(), g)


class SigmoidGrad(Function):
    """The backward of sigmoid as one node and one fused pass: z = g y (1 - y) from y = sigmoid(x);
    gy = gz * g * (1 - 2 y),  gg = gz y (1 - y) (a SigmoidGrad again)."""

    def forward(self, y, g):
        return fused.sigmoid_backward(y, g)

    def backward(self, gz):
        y, g = self.inputs
        return (gz * g * (1 - 2 * y) if y.requires_grad else None,
                SigmoidGrad()(y, gz) if g.requires_grad else None)


class SiLU(Function):
    """y = x s with s = sigmoid(x);  gx = g s (1 + x (1 - s)). One node and one fused pass each way (the U-Net
    runs it on every activation), where x * sigmoid(x) would keep three nodes and their temporaries."""

    def forward(self, x):
        return fused.silu(x)

    def backward(self, g):
        return SiLUGrad()(self.inputs[0], g)


class SiLUGrad(Function):
    """The backward of SiLU as one node: z = g silu'(x);
    gx = gz g silu''(x) with silu'' = s (1 - s) (2 + x (1 - 2 s)),  gg = gz silu'(x) (a SiLUGrad again)."""

    def forward(self, x, g):
        return fused.silu_backward(x, g)

    def backward(self, gz):
        x, g = self.inputs
        gx = None
        if x.requires_grad:
            s = sigmoid(x)
            gx = gz * g * s * (1 - s) * (2 + x * (1 - 2 * s))
        return gx, SiLUGrad()(x, gz) if g.requires_grad else None


class GELU(Function):
    """y = x F(x) with F = Phi, the standard normal CDF, or for approximate='tanh' F(x) = sigmoid(v),
    v = x (K0 + K1 x^2) (Hendrycks & Gimpel 2016's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the same
    function);  gx = g (F + x F'). One node and one fused pass each way (kernels.fused)."""

    def __init__(self, approximate: str):
        self.approximate = approximate

    def forward(self, x):
        return fused.gelu(x, self.approximate)

    def backward(self, g):
        return GELUGrad(self.approximate)(self.inputs[0], g)


class GELUGrad(Function):
    """The backward of GELU as one node: z = g gelu'(x);  gx = gz g gelu''(x),  gg = gz gelu'(x) (a GELUGrad
    again), with gelu'' = phi (2 - x^2) (phi the normal density), or for the tanh form, s = sigmoid(v):
    s (1 - s) (2 v' + x (1 - 2 s) v'^2 + x v'')."""

    def __init__(self, approximate: str):
        self.approximate = approximate

    def forward(self, x, g):
        return fused.gelu_backward(x, g, self.approximate)

    def backward(self, gz):
        x, g = self.inputs
        gx = None
        if x.requires_grad:
            x2 = x * x
            if self.approximate == "tanh":
                k0, k1 = fused.GELU_K0, fused.GELU_K1
                s, v1 = sigmoid(x * (k0 + k1 * x2)), k0 + 3 * k1 * x2
                second = s * (1 - s) * (2 * v1 + x * (1 - 2 * s) * v1 * v1 + 6 * k1 * x2)
            else:
                second = exp(-0.5 * x2) * fused.INV_SQRT_2PI * (2 - x2)
            gx = gz * g * second
        return gx, GELUGrad(self.approximate)(x, gz) if g.requires_grad else None


class ReLU(Function):
    """y = max(x, 0);  gx = g * [x > 0] (a LeakyScale of slope 0)."""

    def forward(self, x):
        return fused.relu(x)

    def backward(self, g):
        x = self.inputs[0]
        return tie(LeakyScale(x.data, 0.0)(g), x)


class LeakyReLU(Function):
    """y = x for x > 0, else a x (a the negative slope);  gx = g * (1 if x > 0 else a) (a LeakyScale).
    The forward is one fused pass (kernels.fused)."""

    def __init__(self, negative_slope):
        self.negative_slope = negative_slope

    def forward(self, x):
        return fused.leaky_relu(x, self.negative_slope)

    def backward(self, g):
        x = self.inputs[0]
        return tie(LeakyScale(x.data, self.negative_slope)(g), x)


class ELU(Function):
    """y = x for x > 0, else alpha (exp(x) - 1);  gx = g elu'(x), elu' = 1 for x > 0, else alpha exp(x) (an
    ELUGrad node). One fused pass each way, where the composition costs seven nodes."""

    def __init__(self, alpha):
        self.alpha = alpha

    def forward(self, x):
        return fused.elu(x, self.alpha)

    def backward(self, g):
        return ELUGrad(self.alpha)(self.inputs[0], g)


class ELUGrad(Function):
    """The backward of ELU as one node: z = g elu'(x);  gx = gz g elu''(x) with elu'' = 0 for x > 0, else
    alpha exp(x) = elu(x) + alpha,  gg = gz elu'(x) (an ELUGrad again)."""

    def __init__(self, alpha):
        self.alpha = alpha

    def forward(self, x, g):
        return fused.elu_backward(x, g, self.alpha)

    def backward(self, gz):
        x, g = self.inputs
        gx = gz * g * where(x.data > 0, 0.0, elu(x, self.alpha) + self.alpha) if x.requires_grad else None
        return gx, ELUGrad(self.alpha)(x, gz) if g.requires_grad else None


class Sign(Function):
    """y = sign(x) (0 at 0);  gx = 0 (returned as None: the engine gives zeros to a tensor it reached)."""

    def forward(self, x):
        return np.sign(x)

    def backward(self, g):
        return None


class Erf(Function):
    """y = erf(x);  gx = g * 2/sqrt(pi) * exp(-x^2)."""

    def forward(self, x):
        return fused.special(x).erf(x).astype(x.dtype, copy=False)

    def backward(self, g):
        x = self.inputs[0]
        return g * (exp(-(x * x)) * (2 / math.sqrt(math.pi)))


class Erfinv(Function):
    """y = erfinv(x) on (-1, 1);  gx = g * sqrt(pi)/2 * exp(y^2) (the inverse of erf's derivative at y)."""

    def forward(self, x):
        return fused.special(x).erfinv(x).astype(x.dtype, copy=False)

    def backward(self, g):
        y = self.output()
        return g * (exp(y * y) * (math.sqrt(math.pi) / 2))


class Lgamma(Function):
    """y = log |Gamma(x)|;  gx = g * digamma(x)."""

    def forward(self, x):
        return fused.special(x).gammaln(x).astype(x.dtype, copy=False)

    def backward(self, g):
        return g * polygamma(0, self.inputs[0])


class Polygamma(Function):
    """y = psi^(n)(x), the n-th derivative of digamma (n = 0: digamma itself), computed for n >= 1 as
    (-1)^(n+1) n! zeta(n + 1, x) (ufuncs, so they run on the array's own device);  gx = g * psi^(n+1)(x)."""

    def __init__(self, n):
        self.n = n

    def forward(self, x):
        special = fused.special(x)
        if self.n == 0:
            return special.digamma(x).astype(x.dtype, copy=False)
        scale = (-1) ** (self.n + 1) * math.factorial(self.n)
        return (scale * special.zeta(self.n + 1.0, x)).astype(x.dtype, copy=False)

    def backward(self, g):
        return g * Polygamma(self.n + 1)(self.inputs[0])


class LogAddExp(Function):
    """y = log(exp(a) + exp(b)), finite for any finite a, b;  ga = g exp(a - y), gb = g exp(b - y)."""

    def forward(self, a, b):
        return np.logaddexp(a, b)

    def backward(self, g):
        a, b = self.inputs
        y = self.output()
        return (g * exp(a - y) if a.requires_grad else None), (g * exp(b - y) if b.requires_grad else None)


class Xlogy(Function):
    """z = x log y, and 0 where x = 0 (even for y = 0: the 0 log 0 = 0 of entropies and KL terms);
    gx = g log y where x != 0 (else 0, as PyTorch), gy = g x / y."""

    def forward(self, x, y):
        return fused.special(x).xlogy(x, y).astype(np.result_type(x, y), copy=False)

    def backward(self, g):
        x, y = self.inputs
        gx = g * Xlogy()(Tensor(x.data != 0), y) if x.requires_grad else None
        gy = g * x / y if y.requires_grad else None
        return gx, gy


class Atan2(Function):
    """z = atan2(y, x), the angle of the point (x, y);  gy = g x / (x^2 + y^2), gx = -g y / (x^2 + y^2)."""

    def forward(self, y, x):
        return np.arctan2(y, x)

    def backward(self, g):
        y, x = self.inputs
        h = g / (x * x + y * y)
        return (h * x if y.requires_grad else None), (-h * y if x.requires_grad else None)


class Softplus(Function):
    """y = log(1 + exp(beta x)) / beta, and y = x where beta x > threshold (PyTorch's convention).

    Computed as max(bx, 0) + log1p(exp(-|bx|)), finite for any x.  gx = g * sigmoid(beta x) (1 past the
    threshold). threshold=None puts the cut-off where it changes nothing: past -log(eps) of the dtype
    (16.6 in float32, 36.0 in float64) log1p(exp(-bx)) < eps is below half an ulp of bx.
    """

    def __init__(self, beta=1.0, threshold=None):
        self.beta, self.threshold = beta, threshold

    def _cutoff(self, dtype) -> float:
        return -math.log(np.finfo(dtype).eps) if self.threshold is None else self.threshold

    def forward(self, x):
        return fused.softplus(x, self.beta, self._cutoff(x.dtype))

    def backward(self, g):
        x = self.inputs[0]
        return SoftplusGrad(self.beta, self._cutoff(x.dtype))(x, g)


class SoftplusGrad(Function):
    """The backward of softplus as one node and one fused pass: z = g s, s = sigmoid(beta x) (1 past the cut-off);
    gx = gz g beta s (1 - s) (0 past it),  gg = gz s (a SoftplusGrad again)."""

    def __init__(self, beta, cutoff):
        self.beta, self.cutoff = beta, cutoff

    def forward(self, x, g):
        return fused.softplus_backward(x, g, self.beta, self.cutoff)

    def backward(self, gz):
        x, g = self.inputs
        gx = None
        if x.requires_grad:
            bx = x * self.beta if self.beta != 1 else x
            s = sigmoid(bx)
            gx = gz * g * where(bx.data > self.cutoff, 0.0, self.beta * s * (1 - s))
        return gx, SoftplusGrad(self.beta, self.cutoff)(x, gz) if g.requires_grad else None


class Clip(Function):
    """y = min(max(x, lo), hi);  gx = g where lo <= x <= hi, else 0."""

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return np.clip(x, self.lo, self.hi)

    def backward(self, g):
        x = self.inputs[0]
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        return tie(Scale((x.data >= lo) & (x.data <= hi))(g), x)


class Maximum(Function):
    """y = max(a, b);  the gradient goes to the larger input, split in half on ties."""

    def forward(self, a, b):
        return np.maximum(a, b)

    def backward(self, g):
        a, b = self.inputs
        share_a = (a.data > b.data) + 0.5 * (a.data == b.data)
        return (tie(Scale(share_a)(g), a) if a.requires_grad else None,
                tie(Scale(1 - share_a)(g), b) if b.requires_grad else None)


class Where(Function):
    """y = a where cond else b (cond a constant boolean array);  ga = g where cond, gb = g elsewhere."""

    def __init__(self, cond):
        self.cond = cond

    def forward(self, a, b):
        return np.where(self.cond, a, b)

    def backward(self, g):
        a, b = self.inputs
        zero = as_tensor(0, like=g)
        return (Where(self.cond)(g, zero) if a.requires_grad else None,
                Where(self.cond)(zero, g) if b.requires_grad else None)


class AsType(Function):
    """y = x cast to `dtype`;  gx = g cast back to x's dtype."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def forward(self, x):
        return x.astype(self.dtype)

    def backward(self, g):
        return AsType(self.inputs[0].dtype)(g)


def exp(x: Tensor) -> Tensor:
    return Exp()(x)


def log(x: Tensor) -> Tensor:
    return Log()(x)


def log1p(x: Tensor) -> Tensor:
    return Log1p()(x)


def expm1(x: Tensor) -> Tensor:
    return Expm1()(x)


def sqrt(x: Tensor) -> Tensor:
    return Sqrt()(x)


def abs(x: Tensor) -> Tensor:  # noqa: A001 - NumPy's name
    return Abs()(x)


def sign(x: Tensor) -> Tensor:
    """sign(x); its derivative is zero wherever it exists (and taken as zero at 0, as PyTorch)."""
    return Sign()(x)


def sin(x: Tensor) -> Tensor:
    return Sin()(x)


def cos(x: Tensor) -> Tensor:
    return Cos()(x)


def tanh(x: Tensor) -> Tensor:
    return Tanh()(x)


def sigmoid(x: Tensor) -> Tensor:
    return Sigmoid()(x)


def relu(x: Tensor) -> Tensor:
    return ReLU()(x)


def erf(x: Tensor) -> Tensor:
    return Erf()(x)


def erfinv(x: Tensor) -> Tensor:
    """The inverse of erf on (-1, 1) (inf at +-1)."""
    return Erfinv()(x)


def lgamma(x: Tensor) -> Tensor:
    """log |Gamma(x)|: the log-normalizers of the Gamma, Beta, Dirichlet and Poisson likelihoods."""
    return Lgamma()(x)


def digamma(x: Tensor) -> Tensor:
    """d/dx log Gamma(x)."""
    return Polygamma(0)(x)


def polygamma(n: int, x: Tensor) -> Tensor:
    """The n-th derivative of digamma (PyTorch's argument order)."""
    return Polygamma(n)(x)


def logaddexp(a, b) -> Tensor:
    """log(exp(a) + exp(b)) without overflow, broadcasting."""
    return LogAddExp()(*_pair(a, b))


def xlogy(x, y) -> Tensor:
    """x log y with 0 where x = 0, broadcasting."""
    return Xlogy()(*_pair(x, y))


def arctan2(y, x) -> Tensor:
    """The angle of (x, y) in (-pi, pi], broadcasting (NumPy's name; atan2 is PyTorch's)."""
    return Atan2()(*_pair(y, x))


atan2 = arctan2


def softplus(x: Tensor, beta: float = 1.0, threshold: float | None = None) -> Tensor:
    """log(1 + exp(beta x)) / beta, exact to the dtype's rounding; a given threshold makes it x past
    beta x > threshold (PyTorch's default is 20)."""
    return Softplus(beta, threshold)(x)


def logsigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) = -softplus(-x), finite for any x."""
    return -softplus(-x)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return LeakyReLU(negative_slope)(x)


def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """x clipped to [min_val, max_val]."""
    return clip(x, min_val, max_val)


def relu6(x: Tensor) -> Tensor:
    """min(max(x, 0), 6)."""
    return clip(x, 0.0, 6.0)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x for x > 0, alpha (exp(x) - 1) otherwise (Clevert et al. 2016)."""
    return ELU(alpha)(x)


def silu(x: Tensor) -> Tensor:
    """x sigmoid(x) (the swish of Ramachandran et al. 2017)."""
    return SiLU()(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x Phi(x) with Phi the standard normal CDF (Hendrycks & Gimpel 2016); 'tanh' uses their approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU(approximate)(x)


def clip(x: Tensor, a_min=None, a_max=None) -> Tensor:
    if a_min is None and a_max is None:
        raise ValueError("clip: give at least one of a_min and a_max")
    return Clip(a_min, a_max)(x)


def maximum(a, b) -> Tensor:
    return Maximum()(*_pair(a, b))


def minimum(a, b) -> Tensor:
    """min(a, b) = -max(-a, -b)."""
    a, b = _pair(a, b)
    return -maximum(-a, -b)


def where(cond, a, b) -> Tensor:
    """a where cond else b. `cond` is a boolean array or tensor; no gradient flows into it."""
    cond = cond.data if isinstance(cond, Tensor) else cond
    a, b = _pair(a, b)
    if cond.dtype != bool:
        raise TypeError(f"where: cond must be boolean, got dtype {cond.dtype}")
    return Where(cond)(a, b)


def astype(x: Tensor, dtype) -> Tensor:
    dtype = np.dtype(dtype)
    return x if dtype == x.dtype else AsType(dtype)(x)


def _compare(op):
    def compare(a, b) -> Tensor:
        a, b = _pair(a, b)
        return Tensor(op(a.data, b.data))
    compare.__name__ = op.__name__
    compare.__doc__ = f"Elementwise `{op.__name__}`, a boolean tensor (no gradient)."
    return compare


equal, not_equal = _compare(np.equal), _compare(np.not_equal)
less, less_equal = _compare(np.less), _compare(np.less_equal)
greater, greater_equal = _compare(np.greater), _compare(np.greater_equal)

__all__ = ["add", "sub", "mul", "div", "neg", "pow", "exp", "log", "log1p", "expm1", "sqrt", "abs", "sign",
           "sin", "cos", "tanh", "sigmoid", "logsigmoid", "relu", "leaky_relu", "hardtanh", "relu6", "elu", "silu",
           "gelu", "softplus", "clip", "maximum", "minimum", "where", "erf", "erfinv", "lgamma", "digamma",
           "polygamma", "logaddexp", "xlogy", "arctan2", "atan2", "astype", "equal", "not_equal", "less",
           "less_equal", "greater", "greater_equal"]
