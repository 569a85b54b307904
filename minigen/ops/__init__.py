"""All differentiable operations, and the Tensor operators and methods that call them."""
from __future__ import annotations

from ..tensor import Tensor
from . import conv, elementwise, linalg, losses, nn, reduce, shape
from .conv import *  # noqa: F401,F403
from .elementwise import *  # noqa: F401,F403
from .linalg import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403
from .reduce import (argmax, argmin, argsort, cumprod, cumsum, logcumsumexp, logsumexp, max, mean, min,  # noqa: A004
                     norm, prod, sort, std, sum, topk, var, vector_norm)
from .shape import *  # noqa: F401,F403

__all__ = (conv.__all__ + elementwise.__all__ + linalg.__all__ + losses.__all__ + nn.__all__ + shape.__all__
           + ["argmax", "argmin", "argsort", "sort", "topk", "cumprod", "cumsum", "logcumsumexp", "logsumexp", "max",
              "mean", "min", "norm", "prod", "std", "sum", "var", "vector_norm"])


def _swap(f):
    return lambda a, b: f(b, a)


_E, _R, _S = elementwise, reduce, shape
_methods = {
    # operators
    "__add__": _E.add, "__radd__": _swap(_E.add), "__sub__": _E.sub, "__rsub__": _swap(_E.sub),
    "__mul__": _E.mul, "__rmul__": _swap(_E.mul), "__truediv__": _E.div, "__rtruediv__": _swap(_E.div),
    "__pow__": _E.pow, "__rpow__": _swap(_E.pow), "__neg__": _E.neg, "__abs__": _E.abs,
    "__matmul__": linalg.matmul, "__rmatmul__": _swap(linalg.matmul), "__getitem__": _S.getitem,
    "__lt__": _E.less, "__le__": _E.less_equal, "__gt__": _E.greater, "__ge__": _E.greater_equal,
    "__eq__": _E.equal, "__ne__": _E.not_equal,
    # methods, as NumPy's ndarray methods
    "exp": _E.exp, "log": _E.log, "log1p": _E.log1p, "expm1": _E.expm1, "sqrt": _E.sqrt, "abs": _E.abs,
    "sign": _E.sign, "sin": _E.sin, "cos": _E.cos, "tanh": _E.tanh, "sigmoid": _E.sigmoid, "relu": _E.relu,
    "softplus": _E.softplus, "clip": _E.clip, "astype": _E.astype, "pow": _E.pow,
    "sum": _R.sum, "mean": _R.mean, "var": _R.var, "std": _R.std, "max": _R.max, "min": _R.min,
    "prod": _R.prod, "logsumexp": _R.logsumexp, "cumsum": _R.cumsum, "cumprod": _R.cumprod,
    "argmax": _R.argmax, "argmin": _R.argmin, "norm": _R.norm,
    "reshape": _S.reshape, "flatten": _S.flatten, "transpose": _S.transpose, "permute": _S.permute,
    "swapaxes": _S.swapaxes, "squeeze": _S.squeeze, "expand_dims": _S.expand_dims,
    "broadcast_to": _S.broadcast_to, "flip": _S.flip, "repeat": _S.repeat,
    "softmax": nn.softmax, "log_softmax": nn.log_softmax,
}
for _name, _fn in _methods.items():
    setattr(Tensor, _name, _fn)
Tensor.T = property(lambda self: _S.transpose(self))
Tensor.mT = property(lambda self: _S.swapaxes(self, -1, -2))
