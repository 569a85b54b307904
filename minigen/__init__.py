"""minigen: a small reverse-mode autodiff engine on NumPy / CuPy, with hand-written kernels and the
classic deep generative models on top.

    import minigen as mg
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()          # x.grad == 2 x
"""
from . import backend, ops
from .backend import cuda_available, get_default_dtype, manual_seed, set_default_dtype
from .gradcheck import GradcheckError, gradcheck, gradgradcheck
from .ops import *  # noqa: F401,F403
from .tensor import (Function, Tensor, arange, as_tensor, detect_anomaly, empty, enable_grad, eye, full,
                     full_like, grad, is_grad_enabled, linspace, no_grad, ones, ones_like, rand, rand_like,
                     randint, randn, randn_like, tensor, zeros, zeros_like)
from . import data, distributions, nn, optim  # noqa: E402  (after ops, which they use)

__version__ = "0.1.0"
