"""Operations that move, copy or select elements: reshape, transpose, broadcasting, joining, splitting,
flipping, padding, repeating, rolling, triangles and diagonals, indexing and scatter-adding. Their backward
passes route the gradient back to where each element came from (summing where one element went to several
places), which are again such operations.
"""
from __future__ import annotations

import numpy as np

from kernels import layout

from .. import backend
from ..tensor import Function, Tensor, as_tensor, broadcast_to, sum_to
from .elementwise import where


def normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    """`axis` (int, tuple or None) as a sorted tuple of non-negative axes, or one clear error: for an axis
    out of range, a repeated axis, or any axis of a 0-d tensor (which has none; None and () are fine)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool) or not -ndim <= a < ndim:
            hint = " (a 0-d tensor has no axes: use axis=None)" if ndim == 0 else ""
            raise ValueError(f"axis {a!r} is out of bounds for a tensor of {ndim} dimension(s){hint}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis}")
    return tuple(sorted(out))


def _shape_arg(shape) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


class Reshape(Function):
    """y = x with a new shape;  gx = g reshaped to x's shape."""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        try:
            if type(x) is np.ndarray and not x.flags.c_contiguous:   # a copy, unless a view serves
                try:
                    return x.reshape(self.shape, copy=False)
                except ValueError:
                    return layout.contiguous(x).reshape(self.shape)
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) into shape "
                             f"{self.shape}") from None

    def backward(self, g):
        return reshape(g, self.inputs[0].shape)


class Transpose(Function):
    """y = x with its axes permuted by `axes`;  gx = g permuted by the inverse permutation."""

    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, g):
        return Transpose(tuple(np.argsort(self.axes)))(g)


class Concatenate(Function):
    """y = the inputs joined along `axis`;  each input's gradient is its slice of g."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        return np.concatenate(xs, axis=self.axis)

    def backward(self, g):
        bounds = np.cumsum([0] + [x.shape[self.axis] for x in self.inputs])
        lead = (slice(None),) * self.axis
        return tuple(g[lead + (slice(int(a), int(b)),)] if x.requires_grad else None
                     for x, a, b in zip(self.inputs, bounds[:-1], bounds[1:]))


class Split(Function):
    """ys = x cut along `axis` at `bounds`;  gx = the gradients of the pieces joined back (zeros for pieces
    that received none)."""

    def __init__(self, bounds, axis):
        self.bounds, self.axis = bounds, axis

    def forward(self, x):
        return tuple(np.split(x, self.bounds, axis=self.axis))

    def backward(self, *gs):
        return concatenate(gs, self.axis)


class Flip(Function):
    """y = x reversed along `axes`;  gx = g reversed the same way."""

    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        return np.flip(x, self.axes)

    def backward(self, g):
        return Flip(self.axes)(g)


class Pad(Function):
    """y = x surrounded by `value` (`pad_width` as numpy.pad);  gx = the interior of g. y keeps x's layout (a
    channels-last map stays one, where numpy.pad's C-ordered copy would transpose it, and the next
    elementwise op or 1x1 convolution would copy it back)."""

    def __init__(self, pad_width, value):
        self.pad_width, self.value = pad_width, value

    def _interior(self, shape) -> tuple:
        return tuple(slice(before, n - after) for (before, after), n in zip(self.pad_width, shape))

    def forward(self, x):
        shape = tuple(n + before + after for n, (before, after) in zip(x.shape, self.pad_width))
        y = backend.get_array_module(x).empty_like(x, shape=shape)       # order 'K': x's order of strides
        y[self._interior(shape)] = x
        for axis, (before, after) in enumerate(self.pad_width):
            lead = (slice(None),) * axis
            y[lead + (slice(0, before),)] = self.value
            y[lead + (slice(shape[axis] - after, shape[axis]),)] = self.value
        return y

    def backward(self, g):
        return g[self._interior(g.shape)]


class GetItem(Function):
    """y = x[index] (ints, slices, None, Ellipsis, integer arrays, boolean masks);
    gx = zeros of x's shape with g added at `index` (a scatter-add: repeated indices accumulate)."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        return x[self.index]

    def backward(self, g):
        return ScatterAdd(self.index, self.inputs[0].shape)(g)


class ScatterAdd(Function):
    """y = zeros(shape) with x added at `index`: the adjoint of indexing;  gx = g[index]."""

    def __init__(self, index, shape):
        self.index, self.shape = index, shape

    def forward(self, x):
        xp = backend.get_array_module(x)
        # in x's layout where it has as many axes (a crop's gradient: a channels-last map stays one)
        y = xp.zeros_like(x, shape=self.shape) if x.ndim == len(self.shape) else xp.zeros(self.shape, x.dtype)
        if _is_basic(self.index):
            y[self.index] = x              # basic indexing selects each element at most once
        else:
            xp.add.at(y, self.index, x)
        return y

    def backward(self, g):
        return GetItem(self.index)(g)


def _is_basic(index) -> bool:
    """True for indexing by ints, slices, None and Ellipsis only (no element can be selected twice)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


def _index_arrays(index, x: Tensor):
    """An index with its tensors replaced by their arrays, and its lists and NumPy arrays (fancy indexing)
    by arrays on x's device."""
    xp = backend.get_array_module(x.data)

    def one(p):
        if isinstance(p, Tensor):
            return p.data
        if isinstance(p, (list, np.ndarray)):
            return xp.asarray(p)
        return p
    return tuple(one(p) for p in index) if isinstance(index, tuple) else one(index)


# --- public functions ------------------------------------------------------------------------------------


def reshape(x: Tensor, *shape) -> Tensor:
    shape = _shape_arg(shape)
    return x if shape == x.shape else Reshape(shape)(x)


def flatten(x: Tensor, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes start_axis..end_axis into one (PyTorch's flatten)."""
    start, end = start_axis % max(x.ndim, 1), end_axis % max(x.ndim, 1)
    return reshape(x, x.shape[:start] + (-1,) + x.shape[end + 1:])


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute axes (reverse them when `axes` is None), as numpy.transpose."""
    axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(int(a) % x.ndim for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"axes {axes} are not a permutation of the {x.ndim} axes of a tensor of shape {x.shape}")
    return Transpose(axes)(x)


def permute(x: Tensor, *axes) -> Tensor:
    return transpose(x, _shape_arg(axes))


def swapaxes(x: Tensor, axis1: int, axis2: int) -> Tensor:
    axes = list(range(x.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


def moveaxis(x: Tensor, source, destination) -> Tensor:
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    src, dst = [a % x.ndim for a in src], [a % x.ndim for a in dst]
    order = [a for a in range(x.ndim) if a not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return x if order == list(range(x.ndim)) else Transpose(tuple(order))(x)


def squeeze(x: Tensor, axis=None) -> Tensor:
    if axis is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    axes = {a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis)}
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of length {x.shape[a]} (shape {x.shape})")
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if i not in axes))


def expand_dims(x: Tensor, axis) -> Tensor:
    return reshape(x, np.expand_dims(np.broadcast_to(0, x.shape), axis).shape)


def concatenate(tensors, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate needs at least one tensor")
    ndim = tensors[0].ndim
    axis = axis % max(ndim, 1)
    for t in tensors:
        if t.ndim != ndim or t.shape[:axis] + t.shape[axis + 1:] != tensors[0].shape[:axis] + tensors[0].shape[axis + 1:]:
            raise ValueError("concatenate: all shapes must match except along axis "
                             f"{axis}; got {[t.shape for t in tensors]}")
    return Concatenate(axis)(*tensors)


def stack(tensors, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    if len({t.shape for t in tensors}) > 1:
        raise ValueError(f"stack: all tensors must have the same shape; got {[t.shape for t in tensors]}")
    return concatenate([expand_dims(t, axis) for t in tensors], axis % (tensors[0].ndim + 1))


def split(x: Tensor, indices_or_sections, axis: int = 0) -> tuple[Tensor, ...]:
    """numpy.split: an int number of equal sections, or the indices where to cut."""
    axis = axis % x.ndim
    n = x.shape[axis]
    if isinstance(indices_or_sections, int):
        if n % indices_or_sections:
            raise ValueError(f"split: axis {axis} of length {n} does not divide into {indices_or_sections} "
                             "equal sections")
        step = n // indices_or_sections
        bounds = list(range(step, n, step))
    else:
        bounds = [int(i) for i in indices_or_sections]
    return Split(bounds, axis)(x)


def flip(x: Tensor, axis=None) -> Tensor:
    return Flip(normalize_axes(axis, x.ndim))(x)


def pad(x: Tensor, pad_width, value: float = 0.0) -> Tensor:
    """Constant padding; pad_width as numpy.pad (an int, a (before, after) pair, or one pair per axis)."""
    widths = np.broadcast_to(np.asarray(pad_width, dtype=int), (x.ndim, 2))
    return Pad(tuple((int(a), int(b)) for a, b in widths), value)(x)


def repeat(x: Tensor, repeats: int, axis: int | None = None) -> Tensor:
    """numpy.repeat with an int count: each element repeated `repeats` times along `axis` (flattened when
    None). Built from a broadcast, so the gradient sums the copies."""
    if not isinstance(repeats, (int, np.integer)):
        raise TypeError("repeat: only an int number of repeats is supported")
    if axis is None:
        x, axis = reshape(x, -1), 0
    axis = axis % x.ndim
    expanded = expand_dims(x, axis + 1)
    shape = x.shape[:axis + 1] + (repeats,) + x.shape[axis + 1:]
    return reshape(broadcast_to(expanded, shape), x.shape[:axis] + (x.shape[axis] * repeats,) + x.shape[axis + 1:])


def tile(x: Tensor, reps) -> Tensor:
    """numpy.tile: the whole tensor repeated `reps` times along each axis. Each axis of length d becomes a
    pair (r, d) broadcast from (1, d), then merged to r*d."""
    reps = (reps,) if isinstance(reps, int) else tuple(reps)
    ndim = max(x.ndim, len(reps))
    reps = (1,) * (ndim - len(reps)) + reps
    shape = (1,) * (ndim - x.ndim) + x.shape
    interleaved = reshape(x, [v for d in shape for v in (1, d)])
    big = broadcast_to(interleaved, [v for r, d in zip(reps, shape) for v in (r, d)])
    return reshape(big, [r * d for r, d in zip(reps, shape)])


def getitem(x: Tensor, index) -> Tensor:
    return GetItem(_index_arrays(index, x))(x)


def take_along_axis(x: Tensor, indices, axis: int) -> Tensor:
    """numpy.take_along_axis, as indexing with the full index tuple (so its gradient is a scatter-add)."""
    idx = _index_arrays(indices, x)
    axis = axis % x.ndim
    if idx.ndim != x.ndim:
        raise ValueError(f"take_along_axis: indices of {idx.ndim} dimensions for a tensor of {x.ndim}")
    return GetItem(_along(idx, axis, x.shape, backend.get_array_module(x.data)))(x)


def _triangle(x: Tensor, keep) -> Tensor:
    if x.ndim < 2:
        raise ValueError(f"tril / triu: expected at least 2 dimensions, got shape {x.shape}")
    return where(keep, x, 0.0)


def tril(x: Tensor, k: int = 0) -> Tensor:
    """x with the entries above the k-th diagonal of the last two axes zeroed (numpy.tril)."""
    xp = backend.get_array_module(x.data)
    return _triangle(x, xp.tri(*x.shape[-2:], k=k, dtype=bool))


def triu(x: Tensor, k: int = 0) -> Tensor:
    """x with the entries below the k-th diagonal of the last two axes zeroed (numpy.triu)."""
    xp = backend.get_array_module(x.data)
    return _triangle(x, ~xp.tri(*x.shape[-2:], k=k - 1, dtype=bool))


def diagonal(x: Tensor, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """numpy.diagonal: the diagonal of axes (axis1, axis2), offset above it when positive, as a new last axis."""
    x = moveaxis(x, (axis1, axis2), (-2, -1))
    n, m = x.shape[-2:]
    start_row, start_col = max(-offset, 0), max(offset, 0)
    length = max(min(n - start_row, m - start_col), 0)
    xp = backend.get_array_module(x.data)
    steps = xp.arange(length)
    return GetItem((Ellipsis, start_row + steps, start_col + steps))(x)


def roll(x: Tensor, shift, axis=None) -> Tensor:
    """numpy.roll: elements shifted by `shift` along `axis` (of the flattened tensor when None), those
    falling off the end coming back at the start; the gradient rolls back."""
    if axis is None:
        return reshape(roll(reshape(x, -1), shift, 0), x.shape)
    shifts, axes = (shift, axis) if isinstance(axis, (tuple, list)) else ((shift,), (axis,))
    xp = backend.get_array_module(x.data)
    for s, a in zip(shifts, axes):
        a = a % x.ndim
        source = (xp.arange(x.shape[a]) - s) % x.shape[a]
        x = GetItem((slice(None),) * a + (source,))(x)
    return x


def _along(index, axis: int, shape: tuple, xp) -> tuple:
    """The full index tuple that picks, at each position of `index`'s shape, element index[...] along
    `axis` and the position itself along every other axis (take_along_axis, scatter_add)."""
    return tuple(index if a == axis else xp.arange(n).reshape([-1 if b == a else 1 for b in range(len(shape))])
                 for a, n in enumerate(shape))


def scatter_add(x: Tensor, axis: int, index, src: Tensor) -> Tensor:
    """PyTorch's scatter_add: x with src[i] added at index[i] along `axis` (the other coordinates of i kept),
    repeated indices accumulating; index and src have x's number of dimensions, index no larger than src.
    gx = g, gsrc = g gathered at index."""
    idx = _index_arrays(index, x)
    axis = axis % x.ndim
    src = as_tensor(src, like=x)
    picked = src[tuple(slice(0, n) for n in idx.shape)]
    return x + ScatterAdd(_along(idx, axis, idx.shape, backend.get_array_module(x.data)), x.shape)(picked)


def index_add(x: Tensor, axis: int, index, source: Tensor) -> Tensor:
    """PyTorch's index_add: x with the slice source[..., i, ...] added at x[..., index[i], ...] along `axis`,
    repeated indices accumulating.  gx = g, gsource = g[..., index, ...]."""
    idx = _index_arrays(index, x)
    axis = axis % x.ndim
    return x + ScatterAdd((slice(None),) * axis + (idx,), x.shape)(as_tensor(source, like=x))


def one_hot(indices, num_classes: int = -1, dtype=np.int64) -> Tensor:
    """Integer labels (...,) to one-hot vectors (..., num_classes) (int64 like PyTorch unless `dtype`)."""
    idx = indices.data if isinstance(indices, Tensor) else backend.get_array_module(indices).asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"one_hot: indices must be integers, got dtype {idx.dtype}")
    if num_classes < 0:
        num_classes = int(idx.max()) + 1
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes}), got range [{idx.min()}, {idx.max()}]")
    xp = backend.get_array_module(idx)
    return Tensor((idx[..., None] == xp.arange(num_classes)).astype(dtype))


__all__ = ["reshape", "flatten", "transpose", "permute", "swapaxes", "moveaxis", "squeeze", "expand_dims",
           "broadcast_to", "sum_to", "concatenate", "stack", "split", "flip", "pad", "repeat", "tile",
           "getitem", "take_along_axis", "one_hot", "tril", "triu", "diagonal", "roll", "scatter_add", "index_add"]

