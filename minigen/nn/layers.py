"""Layers: Linear, convolutions, normalizations, dropout, embedding, reshaping, activations, and the masked
layers of autoregressive models (MADE's MaskedLinear, PixelCNN's MaskedConv2d). Names, arguments, parameter
shapes and default initializations are PyTorch's, so weights copy across by state_dict.
"""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor, ones, tensor, zeros
from . import functional as F
from . import init
from .module import Module, Parameter, Sequential


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _parameter(*shape: int) -> Parameter:
    return Parameter(zeros(shape))


def _reset_weight_and_bias(weight: Parameter, bias: Parameter | None) -> None:
    """PyTorch's default for Linear and convolutions: W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform_ with a = sqrt(5) gives exactly that bound for W)."""
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = init.calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(bias, -bound, bound)


# --- affine layers ----------------------------------------------------------------------------------------


class Linear(Module):
    """y = x W^T + b, with W of shape (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _parameter(out_features, in_features)
        self.bias = _parameter(out_features) if bias else None
        _reset_weight_and_bias(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _ConvNd(Module):
    """The geometry and parameters shared by Conv2d and ConvTranspose2d."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 weight_shape):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.weight = _parameter(*weight_shape, *self.kernel_size)
        self.bias = _parameter(out_channels) if bias else None
        _reset_weight_and_bias(self.weight, self.bias)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        defaults = dict(padding=(0, 0), output_padding=(0, 0), dilation=(1, 1), groups=1)
        for name, default in defaults.items():
            if getattr(self, name, default) != default:
                s += f", {name}={getattr(self, name)}"
        return s + ("" if self.bias is not None else ", bias=False")


class Conv2d(_ConvNd):
    """2-D cross-correlation of (N, in_channels, H, W) with a weight (out_channels, in_channels / groups, kh,
    kw), plus a bias per output channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         (out_channels, in_channels // groups))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """The adjoint of Conv2d in its input ("deconvolution"), upsampling by `stride`: weight (in_channels,
    out_channels / groups, kh, kw); H_out = (H - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         (in_channels, out_channels // groups))
        self.output_padding = _pair(output_padding)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


# --- masked layers of autoregressive models -----------------------------------------------------------------


class MaskedLinear(Linear):
    """y = x (M * W)^T + b with a fixed binary mask M (out_features, in_features): MADE (Germain et al. 2015)
    zeroes the connections that would let output d see inputs d, d+1, ... Set M with `set_mask`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", ones(out_features, in_features))

    def set_mask(self, mask) -> None:
        """Copy `mask` (0/1, shape (out_features, in_features)) into the mask buffer."""
        mask = tensor(mask, dtype=self.mask.dtype, device=self.mask.device)
        if mask.shape != self.mask.shape:
            raise ValueError(f"mask of shape {mask.shape} for a weight of shape {self.mask.shape}")
        self.mask.data[...] = mask.data

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedConv2d(Conv2d):
    """A Conv2d whose kernel sees only the pixels before the centre in raster order (PixelCNN, van den Oord
    et al. 2016): rows above the centre, and the centre row left of it. Mask 'A' (first layer) also hides the
    centre pixel, so an output never sees its own input; mask 'B' (later layers) lets it through, since there
    the centre holds features of pixels already allowed. Arguments after `mask_type` are Conv2d's."""

    def __init__(self, mask_type: str, *args, **kwargs):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        super().__init__(*args, **kwargs)
        self.mask_type = mask_type
        kh, kw = self.kernel_size
        mask = np.ones((kh, kw))
        mask[kh // 2, kw // 2 + (mask_type == "B"):] = 0
        mask[kh // 2 + 1:] = 0
        self.register_buffer("mask", tensor(mask, dtype=self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return f"{self.mask_type!r}, {super().extra_repr()}"


# --- normalization ------------------------------------------------------------------------------------------


class _BatchNorm(Module):
    """y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias per channel (axis 1), E and Var over the batch and
    every other axis (Ioffe & Szegedy 2015).

    Training uses the batch's statistics and updates running ones, r <- (1 - momentum) r + momentum s (with
    the unbiased batch variance; momentum=None: the plain average of all batches so far); eval uses the
    running ones. track_running_stats=False uses batch statistics in both modes.
    """

    input_ndims: tuple[int, ...]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(ones(num_features)) if affine else None
        self.bias = Parameter(zeros(num_features)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features))
            self.register_buffer("running_var", ones(num_features))
            self.register_buffer("num_batches_tracked", tensor(0))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in self.input_ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects input of "
                             f"{' or '.join(map(str, self.input_ndims))} dimensions with {self.num_features} "
                             f"channels on axis 1, got shape {x.shape}")
        if not self.track_running_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.data += 1
            if momentum is None:
                momentum = 1.0 / int(self.num_batches_tracked.data)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            momentum, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs."""
    input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) inputs."""
    input_ndims = (4,)


class LayerNorm(Module):
    """y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias, E and Var over the last dimensions, those of
    `normalized_shape` (Ba et al. 2016): each example normalized on its own, the same in training and eval."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.weight = Parameter(ones(self.normalized_shape)) if elementwise_affine else None
        self.bias = Parameter(zeros(self.normalized_shape)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """Channels split into `num_groups` groups; each example's group normalized over its channels and
    positions, then weight and bias per channel (Wu & He 2018). One group is LayerNorm over (C, H, W), C
    groups is InstanceNorm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = Parameter(ones(num_channels)) if affine else None
        self.bias = Parameter(zeros(num_channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm with {self.num_channels} channels got an input of shape {x.shape}")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


# --- dropout, embedding, reshaping ---------------------------------------------------------------------------


class Dropout(Module):
    """In training, zero each element with probability p and scale the rest by 1 / (1 - p); in eval, the
    identity."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Embedding(Module):
    """A table of `num_embeddings` learned vectors, looked up by integer index: weight[indices]; weight ~
    N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = init.normal_(_parameter(num_embeddings, embedding_dim))

    def forward(self, indices) -> Tensor:
        return F.embedding(indices, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Upsample(Module):
    """Nearest-neighbour resampling of (N, C, *spatial) to `size` or by `scale_factor` (F.interpolate)."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest"):
        super().__init__()
        if mode != "nearest":
            raise NotImplementedError(f"Upsample supports mode='nearest' only, got {mode!r}")
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample: give exactly one of size and scale_factor")
        self.size, self.scale_factor, self.mode = size, scale_factor, mode

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, self.size, self.scale_factor, self.mode)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"


class Flatten(Module):
    """Merge axes start_dim..end_dim into one: (N, C, H, W) -> (N, C H W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# --- activations ---------------------------------------------------------------------------------------------


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class LeakyReLU(Module):
    """x for x > 0, negative_slope x otherwise."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    """x for x > 0, alpha (exp(x) - 1) otherwise."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SiLU(Module):
    """x sigmoid(x)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class GELU(Module):
    """x Phi(x), Phi the standard normal CDF ('tanh': its tanh approximation)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class Softplus(Module):
    """log(1 + exp(beta x)) / beta, and x where beta x > threshold (None: exact to the dtype's rounding)."""

    def __init__(self, beta: float = 1.0, threshold: float | None = None):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


def mlp(sizes: list[int], activation=ReLU, final_activation: bool = False) -> Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... -> sizes[-1] with `activation()` (a Module class or any
    callable making one) between them, and after the last only if `final_activation`."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation())
    return Sequential(*layers)
