"""Parameter and Module: the bookkeeping every layer and model shares, as in PyTorch.

A `Module` finds its parameters and sub-modules by watching attribute assignment: `self.weight =
Parameter(...)` registers a parameter, `self.encoder = Linear(...)` a sub-module, and `register_buffer`
declares state that is saved but not trained (BatchNorm's running statistics). From that registry come
`parameters()` for the optimizer, `state_dict()` / `load_state_dict()` for checkpoints, `train()` / `eval()`
and `to(device)`, all walking the tree of modules.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from .. import backend
from ..tensor import Tensor, tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad=True unless told otherwise)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        elif not hasattr(data, "dtype"):
            data = tensor(data).data
        super().__init__(data, requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict(strict=False)` could not match."""
    missing_keys: list[str]
    unexpected_keys: list[str]


def _to_numpy(value) -> np.ndarray:
    """A state_dict entry (NumPy or CuPy array, Tensor, nested list) as a NumPy array."""
    return np.asarray(backend.to_device(value.data if isinstance(value, Tensor) else value, "cpu"))


def _check_module(container: Module, module) -> None:
    if not isinstance(module, Module):
        raise TypeError(f"{type(container).__name__} holds Modules, got {type(module).__name__}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Module:
    """Base class of layers and models: subclasses call `super().__init__()`, assign their parameters and
    sub-modules as attributes, and define `forward`; calling the module calls `forward`."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        self.training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- registration -------------------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:            # before Module.__init__ ran
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {type(value).__name__} {name!r} before Module.__init__(): "
                                     f"call super().__init__() first in {type(self).__name__}.__init__")
            object.__setattr__(self, name, value)
        elif isinstance(value, Parameter):
            self._register(self._parameters, name, value)
        elif isinstance(value, Module):
            self._register(self._modules, name, value)
        elif name in self._parameters or name in self._modules:
            registry = self._parameters if name in self._parameters else self._modules
            if value is not None:
                kind = "parameter" if registry is self._parameters else "module"
                raise TypeError(f"cannot assign {type(value).__name__} to {kind} {name!r} of {type(self).__name__} "
                                f"(a {kind.capitalize()} or None expected)")
            registry[name] = None
        elif name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r} (a Tensor or None expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _register(self, registry: dict, name: str, value) -> None:
        """Put `value` in `registry` under `name`, removing `name` from everywhere else."""
        self.__dict__.pop(name, None)
        for other in (self._parameters, self._buffers, self._modules):
            if other is not registry:
                other.pop(name, None)
        registry[name] = value

    def __getattr__(self, name: str):
        # called only when ordinary lookup fails: look in the registries
        for registry in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(registry)
            if entries is None:
                raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (did its __init__ "
                                     "call super().__init__()?)")
            if name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: Tensor | None) -> None:
        """Declare state that is not trained but is saved in state_dict and moved by `to` (running means)."""
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"buffer {name!r} must be a Tensor or None, got {type(value).__name__}")
        self._register(self._buffers, name, value)

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        """`self.name = value`, also for value None (an absent parameter, e.g. a layer without bias)."""
        if value is not None and not isinstance(value, Parameter):
            raise TypeError(f"parameter {name!r} must be a Parameter or None, got {type(value).__name__}")
        self._register(self._parameters, name, value)

    # -- walking the tree ---------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", remove_duplicate: bool = True,
                      _seen: set | None = None) -> Iterator[tuple[str, Module]]:
        """(name, module) for this module and all below it, parents before children ('' names self)."""
        seen = set() if _seen is None else _seen
        if remove_duplicate:
            if id(self) in seen:
                return
            seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(_join(prefix, name), remove_duplicate, seen)

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return ((name, m) for name, m in self._modules.items() if m is not None)

    def children(self) -> Iterator[Module]:
        return (m for _, m in self.named_children())

    def _named_members(self, registry: str, recurse: bool) -> Iterator[tuple[str, Tensor]]:
        """(dotted name, tensor) of one registry over the tree; a tensor shared by two modules comes once."""
        seen = set()
        for prefix, module in self.named_modules() if recurse else [("", self)]:
            for name, value in getattr(module, registry).items():
                if value is not None and id(value) not in seen:
                    seen.add(id(value))
                    yield _join(prefix, name), value

    def named_parameters(self, recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        return self._named_members("_parameters", recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters(recurse))

    def named_buffers(self, recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
        return self._named_members("_buffers", recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        return (b for _, b in self.named_buffers(recurse))

    def apply(self, fn) -> Module:
        """Call fn(module) on every module below this one and then on this one (e.g. to initialize)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # -- modes and gradients ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set `.training` on this module and every module below it (Dropout, BatchNorm behave by it)."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, flag: bool = True) -> Module:
        """Freeze (False) or unfreeze every parameter, e.g. the critic during a GAN's generator step."""
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # -- state ----------------------------------------------------------------------------------------------
    def _state_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Every parameter and buffer under its dotted name, in PyTorch's state_dict order (per module: its
        parameters, its buffers, then its children)."""
        for prefix, module in self.named_modules(remove_duplicate=False):
            for registry in (module._parameters, module._buffers):
                for name, value in registry.items():
                    if value is not None:
                        yield _join(prefix, name), value

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers by dotted name, as NumPy arrays on the CPU (copies)."""
        return OrderedDict((name, np.array(t.numpy(), copy=True)) for name, t in self._state_tensors())

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (NumPy, CuPy or Tensors) into the parameters and buffers of the same names.

        Shapes must match. With strict=True, keys missing from `state_dict` and keys the module does not have
        are errors too; all the problems are reported in one message. Returns the missing and unexpected keys.
        """
        own = OrderedDict(self._state_tensors())
        given = {k: _to_numpy(v) for k, v in state_dict.items()}
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        mismatched = [f"{k}: the checkpoint has shape {v.shape}, the module {own[k].shape}"
                      for k, v in given.items() if k in own and v.shape != own[k].shape]
        problems = ([f"size mismatch for {m}" for m in mismatched]
                    + ([f"missing keys: {', '.join(missing)}"] if strict and missing else [])
                    + ([f"unexpected keys: {', '.join(unexpected)}"] if strict and unexpected else []))
        if problems:
            raise RuntimeError(f"error(s) in loading state_dict for {type(self).__name__}:\n  "
                               + "\n  ".join(problems))
        for name, t in own.items():
            if name in given:
                t.data = backend.to_device(np.array(given[name], dtype=t.dtype, copy=True), t.device)
        return IncompatibleKeys(missing, unexpected)

    def to(self, device_or_dtype) -> Module:
        """Move every parameter and buffer (and gradient) to a device ('cpu', 'cuda', 'sim'), or cast the
        floating ones to a dtype, in place; returns self."""
        if isinstance(device_or_dtype, str) and device_or_dtype in backend.DEVICES:
            convert = lambda a: backend.to_device(a, device_or_dtype)  # noqa: E731
        else:
            dtype = np.dtype(device_or_dtype)
            convert = lambda a: a.astype(dtype) if a.dtype.kind == "f" else a  # noqa: E731
        for t in list(self.parameters()) + list(self.buffers()):
            t.data = convert(t.data)
            if t.grad is not None:
                t.grad = Tensor(convert(t.grad.data))
        return self

    # -- printing -------------------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The arguments shown inside the parentheses of repr (subclasses override)."""
        return ""

    def __repr__(self):
        lines = self.extra_repr().splitlines()
        lines += [f"({name}): {repr(m)}" for name, m in self.named_children()]
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        body = "\n".join("  " + line for text in lines for line in text.splitlines())
        return f"{type(self).__name__}(\n{body}\n)"


class ModuleList(Module):
    """Modules held in a list, registered under the names '0', '1', ... (for a loop over layers)."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        _check_module(self, module)
        setattr(self, str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(list(self._modules.values())[index])
        return list(self._modules.values())[index]

    def __setitem__(self, index: int, module: Module) -> None:
        setattr(self, list(self._modules)[index], module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(ModuleList):
    """A ModuleList whose forward feeds each module's output to the next: Sequential(Linear(2, 8), ReLU()).
    Also Sequential(OrderedDict(name=module, ...)) to name the steps."""

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], dict):
            super().__init__()
            for name, m in modules[0].items():
                _check_module(self, m)
                setattr(self, name, m)
        else:
            super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x


class ModuleDict(Module):
    """Modules held in a dict, registered under their keys."""

    def __init__(self, modules: dict[str, Module] | None = None):
        super().__init__()
        for name, m in (modules or {}).items():
            self[name] = m

    def __getitem__(self, name: str) -> Module:
        return self._modules[name]

    def __setitem__(self, name: str, module: Module) -> None:
        _check_module(self, module)
        setattr(self, name, module)

    def __contains__(self, name: str) -> bool:
        return name in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()
