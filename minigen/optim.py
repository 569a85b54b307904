"""Optimizers, learning-rate schedules, gradient and weight clipping, and parameter averaging.

Optimizers follow torch.optim: the same names, the same hyper-parameters and the same update equations, so
that a recipe from a paper or a PyTorch script carries over unchanged. An optimizer updates `p.data` in
place on raw arrays (NumPy or CuPy, whichever the parameter lives on): a step records no graph.

Every `state_dict()` here holds only JSON-able scalars (int, float, bool, str, lists and dicts of them) and
NumPy arrays, so a checkpoint can be written as an .npz (loaded with allow_pickle=False) plus a JSON file.
Loading one and continuing gives the same numbers, bit for bit, as never having stopped.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator

import numpy as np

import kernels.optim

from . import backend
from .tensor import Tensor

# ---------------------------------------------------------------------------------------------------------
# Optimizer base
# ---------------------------------------------------------------------------------------------------------


def _is_array(x) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape")


def _to_numpy(x):
    """A NumPy copy of an array (copied back from the GPU when needed); Python scalars pass through."""
    return np.array(backend.to_device(x, "cpu")) if _is_array(x) else x


class Optimizer:
    """Base of the optimizers: parameter groups, per-parameter state, zero_grad, state dicts.

    `params` is an iterable of tensors, or of dicts `{"params": [...], "lr": ..., ...}` (parameter groups,
    each overriding some of the defaults, as in PyTorch). `self.param_groups` is a list of such dicts; a
    schedule changes a group's "lr" between steps. `self.state[p]` is a dict of arrays (and step counts)
    for parameter p, created on its first update.

    A subclass defines `_update(p, g, state, group)`: update `p.data` in place given the gradient array g.
    """

    def __init__(self, params: Iterable, defaults: dict):
        self.defaults = defaults
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict] = []
        for group in groups:
            unknown = set(group) - set(defaults) - {"params"}
            if unknown:
                raise TypeError(f"{type(self).__name__}: unknown hyper-parameter(s) {sorted(unknown)}")
            self.param_groups.append({**defaults, **group, "params": list(group["params"])})
        seen = [p for g in self.param_groups for p in g["params"]]
        if len({id(p) for p in seen}) != len(seen):
            raise ValueError("some parameters appear in more than one parameter group (or twice in one)")
        for p in seen:
            if not isinstance(p, Tensor) or p.dtype.kind != "f":
                raise TypeError(f"optimizer can only optimize floating tensors, got {type(p).__name__}"
                                + (f" of dtype {p.dtype}" if isinstance(p, Tensor) else ""))
        self.state: dict[Tensor, dict] = {}

    def zero_grad(self) -> None:
        """Forget the gradients (grad = None), so that the next backward starts from nothing."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad.data, self.state.setdefault(p, {}), group)

    def _update(self, p: Tensor, g, state: dict, group: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _l2(p: Tensor, g, weight_decay: float):
        """The gradient of loss + weight_decay/2 ||p||^2: g + weight_decay p (the classic, coupled, weight
        decay of SGD, Adam and RMSprop; a new array, so the parameter's .grad is never modified)."""
        return g + weight_decay * p.data if weight_decay != 0 else g

    def state_dict(self) -> dict:
        """{"param_groups": [hyper-parameters, with "params" as indices], "state": {index: {name: value}}}.

        Parameters are named by their position across the groups, as PyTorch does; arrays are NumPy copies.
        """
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**{k: list(v) if isinstance(v, tuple) else v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {index[id(p)]: {k: _to_numpy(v) for k, v in s.items()} for p, s in self.state.items()}
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state saved by `state_dict()` into an optimizer made over the same
        parameters (in the same order). Arrays go to each parameter's device; "state" keys may be strings
        (as after a trip through JSON)."""
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("load_state_dict: the saved parameter groups do not match this optimizer's")
        params = [p for g in self.param_groups for p in g["params"]]
        for group, saved in zip(self.param_groups, groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if isinstance(v, list) else v
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            xp = backend.get_array_module(p.data)
            self.state[p] = {k: xp.array(v) if isinstance(v, np.ndarray) else v for k, v in s.items()}

    def to(self, device: str) -> Optimizer:
        """Move the per-parameter state (moments, momentum buffers) to `device`, where `Module.to` moved the
        parameters; returns self."""
        for s in self.state.values():
            for k, v in s.items():
                if _is_array(v):
                    s[k] = backend.to_device(v, device)
        return self


# ---------------------------------------------------------------------------------------------------------
# SGD, Adam, AdamW, RMSprop
# ---------------------------------------------------------------------------------------------------------


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's formulation, Sutskever et al. 2013 for Nesterov).

    With g_t the gradient, mu the momentum, tau the dampening, lambda the weight decay and gamma the lr:

        g_t <- g_t + lambda theta_{t-1}                          (if lambda != 0)
        b_t <- g_t  at the first step,  else  mu b_{t-1} + (1 - tau) g_t   (if mu != 0)
        g_t <- g_t + mu b_t  if nesterov,  else  b_t                       (if mu != 0)
        theta_t <- theta_{t-1} - gamma g_t
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum > 0 and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, g, state, group):
        lr, wd, mu, dampening, nesterov = (group[k] for k in ("lr", "weight_decay", "momentum", "dampening",
                                                               "nesterov"))
        first = mu != 0 and "momentum_buffer" not in state
        if first:
            state["momentum_buffer"] = backend.get_array_module(p.data).empty_like(p.data)
        buf = state.get("momentum_buffer")
        if kernels.optim.sgd_update(p.data, g, buf, lr, wd, mu, dampening, nesterov, first):
            return
        g = self._l2(p, g, wd)
        if mu != 0:
            if first:
                buf[...] = g
            else:
                buf *= mu
                buf += (1 - dampening) * g
            g = g + mu * buf if nesterov else buf
        p.data -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1), in PyTorch's arrangement of the bias corrections.

    With gamma the lr, (beta1, beta2) the betas, lambda the weight decay, t the step count from 1:

        g_t <- g_t + lambda theta_{t-1}                  (L2 weight decay, if lambda != 0)
        m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
        v_max <- max(v_max, v_t), used in place of v_t below   (if amsgrad; Reddi et al. 2018)
        theta_t <- theta_{t-1} - (gamma / (1 - beta1^t)) m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

    With `decoupled_weight_decay=True` the weight decay is instead applied to the parameters directly,
    theta_{t-1} <- theta_{t-1} (1 - gamma lambda), before the moments (AdamW; Loshchilov & Hutter 2019).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 decoupled_weight_decay: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, decoupled_weight_decay=decoupled_weight_decay))

    def _update(self, p, g, state, group):
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        xp = backend.get_array_module(p.data)
        if group["decoupled_weight_decay"]:
            p.data *= 1 - lr * wd
        else:
            g = self._l2(p, g, wd)
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step_size, bias2_sqrt = lr / (1 - beta1 ** t), math.sqrt(1 - beta2 ** t)
        if not group["amsgrad"] and kernels.optim.adam_update(p.data, g, m, v, beta1, beta2, step_size,
                                                              bias2_sqrt, group["eps"]):
            return
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        p.data -= step_size * (m / (xp.sqrt(v) / bias2_sqrt + group["eps"]))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2), as torch.optim.AdamW:

        theta_{t-1} <- theta_{t-1} (1 - gamma lambda),  then the Adam step of `Adam` without L2 decay.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True)


class RMSprop(Optimizer):
    """RMSprop (Hinton, Coursera lecture 6e, 2012; centered as in Graves 2013 eq. 38), as torch.optim.RMSprop.

    With alpha the smoothing constant, mu the momentum, gamma the lr, lambda the weight decay:

        g_t <- g_t + lambda theta_{t-1}                          (if lambda != 0)
        v_t <- alpha v_{t-1} + (1 - alpha) g_t^2
        a_t <- alpha a_{t-1} + (1 - alpha) g_t,  v~_t = v_t - a_t^2   (if centered, else v~_t = v_t)
        d_t = g_t / (sqrt(v~_t) + eps)
        b_t <- mu b_{t-1} + d_t,  theta_t <- theta_{t-1} - gamma b_t     (if mu > 0)
        theta_t <- theta_{t-1} - gamma d_t                               (otherwise)
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _update(self, p, g, state, group):
        alpha, mu = group["alpha"], group["momentum"]
        xp = backend.get_array_module(p.data)
        g = self._l2(p, g, group["weight_decay"])
        if not state:
            state["square_avg"] = xp.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = xp.zeros_like(p.data)
            if mu > 0:
                state["momentum_buffer"] = xp.zeros_like(p.data)
        v = state["square_avg"]
        v *= alpha
        v += (1 - alpha) * g * g
        if group["centered"]:
            a = state["grad_avg"]
            a += (1 - alpha) * (g - a)
            v = v - a * a
        d = g / (xp.sqrt(v) + group["eps"])
        if mu > 0:
            buf = state["momentum_buffer"]
            buf *= mu
            buf += d
            d = buf
        p.data -= group["lr"] * d


# ---------------------------------------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------------------------------------


class LRScheduler:
    """Sets each parameter group's lr from a closed form lr_t = f(base_lr, t), t the number of `step()`
    calls so far; call `step()` once per epoch (or per iteration), after `optimizer.step()`, as in PyTorch.

    base_lr is the group's lr when the first schedule was attached to the optimizer (kept in the group as
    "initial_lr", PyTorch's name). Constructing a schedule applies lr_0.
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.last_epoch = -1
        self.step()

    def lr_at(self, base_lr: float, t: int) -> float:
        """The learning rate after t calls to step(), for a group whose base lr is base_lr."""
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_last_lr()):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The lr of each parameter group at the current step."""
        return [self.lr_at(base, self.last_epoch) for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = [float(lr) for lr in state_dict["base_lrs"]]


class StepLR(LRScheduler):
    """lr_t = base_lr gamma^floor(t / step_size): decay by gamma every step_size steps."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        return base_lr * self.gamma ** (t // self.step_size)


class ExponentialLR(LRScheduler):
    """lr_t = base_lr gamma^t."""

    def __init__(self, optimizer: Optimizer, gamma: float):
        self.gamma = gamma
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        return base_lr * self.gamma ** t


class CosineAnnealingLR(LRScheduler):
    """lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2 (SGDR without restarts;
    Loshchilov & Hutter 2017, eq. 5): from base_lr down to eta_min over T_max steps."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 - PyTorch's name
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """Linear warm-up over `warmup_steps` steps, then constant, or then the schedule `after`:

        lr_t = base_lr (t + 1) / warmup_steps          for t < warmup_steps
        lr_t = base_lr,  or  after.lr_at(base_lr, t - warmup_steps)   for t >= warmup_steps

    `after` is a schedule built on the same optimizer; LinearWarmup drives it (step only the warm-up).
    Equivalent to PyTorch's SequentialLR([LinearLR(start_factor=1/warmup_steps, total_iters=warmup_steps - 1),
    after], milestones=[warmup_steps]).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, after: LRScheduler | None = None):
        if warmup_steps < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be at least 1, got {warmup_steps}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("LinearWarmup: `after` must schedule the same optimizer")
        self.warmup_steps, self.after = warmup_steps, after
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        if t < self.warmup_steps:
            return base_lr * (t + 1) / self.warmup_steps
        return base_lr if self.after is None else self.after.lr_at(base_lr, t - self.warmup_steps)


# ---------------------------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------------------------


def _as_list(params: Iterable[Tensor] | Tensor) -> list[Tensor]:
    return [params] if isinstance(params, Tensor) else list(params)


def clip_grad_norm_(params: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients together so that their joint norm is at most max_norm; return that joint norm
    (before clipping), as torch.nn.utils.clip_grad_norm_:

        N = || (||g_1||, ..., ||g_n||) ||_p  (= max_i max |g_i| for p = inf),
        g_i <- g_i min(1, max_norm / (N + 1e-6)).

    Each scaled gradient is a new array (never shared with another parameter or with the caller).
    """
    params = [p for p in _as_list(params) if p.grad is not None]
    if not params:
        return 0.0
    xp = backend.get_array_module(params[0].grad.data)
    norms = xp.stack([xp.linalg.norm(p.grad.data.ravel(), ord=norm_type) for p in params])
    total = float(xp.linalg.norm(norms, ord=norm_type))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            p.grad = Tensor(p.grad.data * p.grad.dtype.type(coef))
    return total


def clip_grad_value_(params: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """g <- clip(g, -clip_value, clip_value) for every gradient (new arrays)."""
    for p in _as_list(params):
        if p.grad is not None:
            p.grad = Tensor(backend.get_array_module(p.grad.data).clip(p.grad.data, -clip_value, clip_value))


def clip_weights_(params: Iterable[Tensor] | Tensor, c: float) -> None:
    """theta <- clip(theta, -c, c) in place: the weight clipping of WGAN (Arjovsky et al. 2017,
    Algorithm 1, line 7) that keeps the critic in a compact set, hence Lipschitz."""
    for p in _as_list(params):
        backend.get_array_module(p.data).clip(p.data, -c, c, out=p.data)


# ---------------------------------------------------------------------------------------------------------
# Exponential moving average of parameters
# ---------------------------------------------------------------------------------------------------------


class EMA:
    """An exponential moving average of parameters (Polyak averaging with exponential weights; used for the
    generators of GANs and the denoisers of diffusion models):

        theta_ema <- decay theta_ema + (1 - decay) theta,   starting from theta_ema = theta at construction.

    `update()` after each optimizer step; evaluate with the averages inside `with ema.average_parameters():`,
    which swaps them into the parameters and puts the trained values back on exit.
    """

    def __init__(self, params: Iterable[Tensor], decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must lie in [0, 1], got {decay}")
        self.params = _as_list(params)
        self.decay = decay
        self.shadow = [p.data.copy() for p in self.params]

    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s += (1 - self.decay) * (p.data - s)

    def copy_to(self, params: Iterable[Tensor] | None = None) -> None:
        """Write the averages into `params` (default: the averaged parameters themselves), in place."""
        params = self.params if params is None else _as_list(params)
        if len(params) != len(self.shadow):
            raise ValueError(f"EMA.copy_to: {len(params)} parameters given for {len(self.shadow)} averages")
        for s, p in zip(self.shadow, params):
            p.data[...] = s

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Within the block the parameters hold their averages; on exit, their own values again."""
        saved = [p.data.copy() for p in self.params]
        self.copy_to()
        try:
            yield
        finally:
            for p, s in zip(self.params, saved):
                p.data[...] = s

    def to(self, device: str) -> EMA:
        """Move the averages to `device`, where `Module.to` moved the parameters; returns self."""
        self.shadow = [backend.to_device(s, device) for s in self.shadow]
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [_to_numpy(s) for s in self.shadow]}

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict["shadow"]) != len(self.params):
            raise ValueError("EMA.load_state_dict: the saved averages do not match these parameters")
        self.decay = float(state_dict["decay"])
        self.shadow = [backend.get_array_module(p.data).array(s, dtype=p.dtype)
                       for p, s in zip(self.params, state_dict["shadow"])]


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "LRScheduler", "StepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearWarmup", "clip_grad_norm_", "clip_grad_value_", "clip_weights_", "EMA"]
