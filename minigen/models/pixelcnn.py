"""Autoregressive image models with masked convolutions and row recurrences: PixelCNN, gated PixelCNN and
PixelRNN's Row LSTM.

Each models a one-channel image of H x W pixels by the chain rule in raster order (van den Oord et al. 2016a,
eq. 1):
    log p(x) = sum_{i=1}^{H W} log p(x_i | x_1, ..., x_{i-1}),
each conditional a Bernoulli (binary pixels, one logit) or a categorical over the L grey levels (L logits,
softmax), read off one output position of a network whose receptive field holds only earlier pixels. The
whole log-likelihood is one forward pass, and it is exact: NLL in nats, bits/dim from it.

- PixelCNN (van den Oord et al. 2016a, sec. 3.5 and fig. 5): a 7x7 convolution with mask A (the centre pixel
  hidden), residual blocks around a 3x3 mask-B convolution. Stacked masked convolutions leave a blind spot
  up and to the right of each pixel (2016b, fig. 1): some earlier pixels are never seen.
- Gated PixelCNN (van den Oord et al. 2016b, sec. 2.1-2.3, fig. 2): a vertical stack (every row above) and a
  horizontal stack (the current row to the left) that together see every earlier pixel, gated units
  y = tanh(W_f * x + V_f^T h) . sigmoid(W_g * x + V_g^T h) (eq. 4; h a one-hot class, so V^T h is a learned
  bias per class: class-conditional sampling).
- Row LSTM (van den Oord et al. 2016a, sec. 3.1): rows processed top to bottom by an LSTM whose state is a
  whole row; input-to-state a 1x3 mask-B convolution along the row, state-to-state a 1xk convolution of the
  previous row's state. Its receptive field is a triangle above the pixel (not the whole past).

Sampling is pixel by pixel; each model says how it avoids recomputing what cannot change (`row_logits`).
Images must have one channel (the grey-level digits and MNIST): the masks here order pixels, not colours.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .. import backend, nn
from ..distributions import Bernoulli, Categorical
from ..nn import functional as F
from ..ops import concatenate, sigmoid, split, tanh
from ..tensor import Tensor, no_grad, zeros
from .autoregressive import AutoregressiveRecipe


def shift_down(x: Tensor) -> Tensor:
    """x (N, C, H, W) moved down one row: row i holds row i - 1, row 0 is zeros. Feeding the vertical stack
    to the horizontal one through this shift is what keeps a pixel from seeing its own row through it."""
    return F.pad(x[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))    # cropped first: the padded map is dense


def output_head(channels: int, out_channels: int) -> nn.Sequential:
    """ReLU, 1x1 convolution, ReLU, 1x1 convolution to the logits (2016a, fig. 5 and table 4)."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                         nn.Conv2d(channels, out_channels, 1))


def window(x: np.ndarray, i: int, reach: int) -> Tensor:
    """Rows max(0, i - reach) .. i of images x: all a network that looks at most `reach` rows up needs to
    give row i exactly (masked convolutions never look down, so the missing rows below do not matter)."""
    return Tensor(x[:, :, max(0, i - reach):i + 1])


def draw_pixel(logits: Tensor, levels: int) -> np.ndarray:
    """One pixel of each image drawn from its conditional, as a value in [0, 1]: logits (N, 1) for a
    Bernoulli, (N, L) for L grey levels (level k returned as k / (L - 1))."""
    if levels == 2:
        return Bernoulli(logits=logits[:, 0]).sample().data
    return Categorical(logits).sample().data / (levels - 1)


class AutoregressiveImageModel(nn.Module):
    """The likelihood and sampler shared by the three networks: a subclass gives `forward(x, y) -> logits`
    (N, K, H, W) (K = 1 for binary pixels, L for L grey levels; y class labels or None) and
    `row_logits(x, y)`, which yields, row after row, a function giving that row's logits (N, K, 1, W) from the
    images x as sampled so far."""

    def __init__(self, shape: tuple, levels: int):
        super().__init__()
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"these autoregressive models take one-channel images (1, H, W), got {shape}")
        self.shape, self.levels = tuple(shape), levels
        self.out_channels = 1 if levels == 2 else levels

    def row_logits(self, x: np.ndarray, y) -> Iterator[Callable[[], Tensor]]:
        raise NotImplementedError

    def log_prob(self, x: Tensor, y=None) -> Tensor:
        """log p(x) per image, in nats: the sum of the conditionals' log-probabilities (2016a, eq. 1)."""
        logits = self(x, y)
        if self.levels == 2:
            log_p = Bernoulli(logits=logits).log_prob(x)
        else:
            k = backend.get_array_module(x.data).rint(x.data * (self.levels - 1)).astype(np.int64)
            log_p = Categorical(logits.transpose((0, 2, 3, 1))).log_prob(k[:, 0])
        return log_p.reshape(len(x), -1).sum(axis=1)

    @no_grad()
    def sample(self, n: int, y=None) -> np.ndarray:
        """n images (n, 1, H, W) in [0, 1], drawn pixel by pixel in raster order; y: n class labels (an
        integer array on the model's device) for a class-conditional model."""
        weight = next(iter(self.parameters()))
        xp = backend.get_array_module(weight.data)
        x = xp.zeros((n, *self.shape), dtype=weight.dtype)
        for i, logits_of_row in enumerate(self.row_logits(x, y)):
            for j in range(self.shape[2]):
                x[:, 0, i, j] = draw_pixel(logits_of_row()[:, :, 0, j], self.levels)
        return x


# --- PixelCNN ----------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """h -> h + conv1x1(ReLU(maskB3x3(ReLU(conv1x1(ReLU(h)))))), halving the channels inside (2016a, fig. 5)."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        half = channels // 2
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, half, 1), nn.ReLU(),
                                  nn.MaskedConv2d("B", half, half, kernel, padding=kernel // 2), nn.ReLU(),
                                  nn.Conv2d(half, channels, 1))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class PixelCNN(AutoregressiveImageModel):
    """A 7x7 mask-A convolution, `layers` residual blocks with 3x3 mask-B convolutions, the output head."""

    def __init__(self, shape: tuple, levels: int, channels: int = 64, layers: int = 5, first_kernel: int = 7):
        super().__init__(shape, levels)
        self.first = nn.MaskedConv2d("A", shape[0], channels, first_kernel, padding=first_kernel // 2)
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(layers)])
        self.head = output_head(channels, self.out_channels)
        self.reach = first_kernel // 2 + layers       # rows above a pixel its logits can depend on

    def forward(self, x: Tensor, y=None) -> Tensor:
        return self.head(self.blocks(self.first(x)))

    def row_logits(self, x: np.ndarray, y) -> Iterator[Callable[[], Tensor]]:
        """Row i from a pass over rows i - reach .. i only (see `window`): no cache, but each pass covers
        at most reach + 1 rows, not the whole image."""
        for i in range(self.shape[1]):
            yield lambda i=i: self(window(x, i, self.reach))[:, :, -1:]


# --- gated PixelCNN ----------------------------------------------------------------------------------------


class GatedLayer(nn.Module):
    """One layer of both stacks (2016b, fig. 2), p channels each. The vertical convolution's kernel is
    (k//2 + 1) x k over rows i - k//2 .. i (its padded output cut to the first H rows); the horizontal one is
    1 x k with mask A (first layer: columns j - k//2 .. j - 1) or B (.. j). The vertical stack's
    pre-activations reach the horizontal stack through a 1x1 convolution, shifted down a row; the horizontal
    stack is residual after the first layer. With `classes` > 0 each stack gets a learned bias per class."""

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool, classes: int = 0):
        super().__init__()
        self.first = first
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (kernel // 2 + 1, kernel), padding=kernel // 2)
        self.h_conv = nn.MaskedConv2d("A" if first else "B", in_channels, 2 * channels, (1, kernel),
                                      padding=(0, kernel // 2))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.v_class = self._class_bias(classes, 2 * channels)
        self.h_class = self._class_bias(classes, 2 * channels)

    @staticmethod
    def _class_bias(classes: int, channels: int) -> nn.Embedding | None:
        """V^T h of eq. 4 for a one-hot h: one vector per class, starting at zero (an unconditional model)."""
        if not classes:
            return None
        embedding = nn.Embedding(classes, channels)
        nn.init.zeros_(embedding.weight)
        return embedding

    @staticmethod
    def _plus_bias(a: Tensor, embedding: nn.Embedding | None, y) -> Tensor:
        """a plus the class's bias; a itself, not a copy plus 0, in an unconditional model."""
        return a if embedding is None else a + embedding(y).reshape(len(y), -1, 1, 1)

    def vertical(self, v: Tensor, y=None) -> tuple[Tensor, Tensor]:
        """(the next vertical stack, this layer's input to the horizontal stack)."""
        v_pre = self.v_conv(v)[:, :, :v.shape[2]]
        return F.gated_tanh(self._plus_bias(v_pre, self.v_class, y)), self.v_to_h(shift_down(v_pre))

    def horizontal(self, h: Tensor, link: Tensor, y=None) -> Tensor:
        h_new = self.h_out(F.gated_tanh(self._plus_bias(self.h_conv(h) + link, self.h_class, y)))
        return h_new if self.first else h + h_new


class GatedPixelCNN(AutoregressiveImageModel):
    """A first gated layer with k = first_kernel, then `layers` - 1 gated layers with k = kernel, the output
    head on the horizontal stack. With first_kernel 7, kernel 3 and 5 layers the field covers every earlier
    pixel of an 8x8 image; each further layer widens it by one row up and one column each way."""

    def __init__(self, shape: tuple, levels: int, channels: int = 64, layers: int = 5, kernel: int = 3,
                 first_kernel: int = 7, classes: int = 0):
        super().__init__(shape, levels)
        self.classes = classes
        self.layers = nn.ModuleList([GatedLayer(shape[0], channels, first_kernel, True, classes)] +
                                    [GatedLayer(channels, channels, kernel, False, classes)
                                     for _ in range(layers - 1)])
        self.head = output_head(channels, self.out_channels)

    def links(self, x: Tensor, y=None) -> list[Tensor]:
        """The vertical stack's input to each layer of the horizontal stack; row i depends on rows < i."""
        v, links = x, []
        for layer in self.layers:
            v, link = layer.vertical(v, y)
            links.append(link)
        return links

    def horizontal(self, x: Tensor, links: list[Tensor], y=None) -> Tensor:
        h = x
        for layer, link in zip(self.layers, links):
            h = layer.horizontal(h, link, y)
        return self.head(h)

    def forward(self, x: Tensor, y=None) -> Tensor:
        return self.horizontal(x, self.links(x, y), y)

    def row_logits(self, x: np.ndarray, y) -> Iterator[Callable[[], Tensor]]:
        """The cache: row i's links depend on rows < i only, so the vertical stack runs once a row (over rows
        0 .. i), and each pixel of the row runs the horizontal stack on that one row."""
        for i in range(self.shape[1]):
            links = [link[:, :, i:i + 1] for link in self.links(Tensor(x[:, :, :i + 1]), y)]
            yield lambda i=i, links=links: self.horizontal(window(x, i, 0), links, y)


# --- PixelRNN: Row LSTM ------------------------------------------------------------------------------------


class RowLSTM(nn.Module):
    """One Row LSTM layer (2016a, eq. 3), its state a whole row (N, hidden, 1, W):
        [o, f, i, g] = [sigma, sigma, sigma, tanh](K_ss * h_{r-1} + K_is * x_r),
        c_r = f . c_{r-1} + i . g,    h_r = o . tanh(c_r),
    K_is a 1x3 mask-B convolution of row r of the input (computed for the whole map at once), K_ss a 1xk
    convolution of the previous row's state."""

    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = nn.MaskedConv2d("B", channels, 4 * hidden, (1, 3), padding=(0, 1))
        self.state_to_state = nn.Conv2d(hidden, 4 * hidden, (1, kernel), padding=(0, kernel // 2))

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = zeros(len(x), self.hidden, 1, x.shape[3], dtype=x.dtype, device=x.device)
        return h, h

    def step(self, a_is: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """(h_r, c_r) from row r's input-to-state term a_is and the previous row's (h, c)."""
        o, f, i, g = split(a_is + self.state_to_state(h), 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        return sigmoid(o) * tanh(c), c

    def forward(self, x: Tensor) -> Tensor:
        a_is, (h, c), rows = self.input_to_state(x), self.initial_state(x), []
        for r in range(x.shape[2]):
            h, c = self.step(a_is[:, :, r:r + 1], h, c)
            rows.append(h)
        return concatenate(rows, axis=2)


class RowLSTMNet(AutoregressiveImageModel):
    """PixelRNN with Row LSTM layers (2016a, table 1): a 7x7 mask-A convolution, `layers` residual Row LSTM
    layers, the output head."""

    def __init__(self, shape: tuple, levels: int, channels: int = 64, layers: int = 2, kernel: int = 3,
                 first_kernel: int = 7):
        super().__init__(shape, levels)
        self.first = nn.MaskedConv2d("A", shape[0], channels, first_kernel, padding=first_kernel // 2)
        self.reach = first_kernel // 2
        self.rnns = nn.ModuleList([RowLSTM(channels, channels, kernel) for _ in range(layers)])
        self.head = output_head(channels, self.out_channels)

    def forward(self, x: Tensor, y=None) -> Tensor:
        h = self.first(x)
        for rnn in self.rnns:
            h = h + rnn(h)
        return self.head(h)

    def _row(self, x: np.ndarray, r: int, states: list) -> tuple[Tensor, list]:
        """Row r's logits and each layer's (h_r, c_r), from the layers' states of row r - 1."""
        h_in, new_states = self.first(window(x, r, self.reach))[:, :, -1:], []
        for rnn, (h, c) in zip(self.rnns, states):
            h, c = rnn.step(rnn.input_to_state(h_in), h, c)
            h_in = h_in + h
            new_states.append((h, c))
        return self.head(h_in), new_states

    def row_logits(self, x: np.ndarray, y) -> Iterator[Callable[[], Tensor]]:
        """The cache: each layer's (h, c) of the previous row; a pixel recomputes only the current row
        (the first convolution on its last reach + 1 rows, then one LSTM step a layer), and once the row is
        drawn one more such pass stores its states."""
        start = Tensor(x[:, :, :1])
        states = [rnn.initial_state(start) for rnn in self.rnns]
        for r in range(self.shape[1]):
            yield lambda r=r, states=states: self._row(x, r, states)[0]
            states = self._row(x, r, states)[1]


# --- recipes -----------------------------------------------------------------------------------------------


class _ImageRecipe(AutoregressiveRecipe):
    """autoregressive.py's recipe (Adam on the exact NLL in nats per image; the test NLL and bits per
    dimension of the discrete pixels) for models of whole images (n, 1, H, W), given the labels when the
    family is class-conditional."""

    default_epochs = 30

    def optimizers(self) -> dict:
        """The Adam optimizer under the name these families' checkpoints have always given it."""
        return {"optimizer": self.optimizer}

    def inputs(self, batch) -> tuple:
        return batch[0], batch[1].data if self.needs_labels else None

    def loss(self, batch, t: int) -> Tensor:
        return -self.model.log_prob(*self.inputs(batch)).mean()

    def sample(self, n: int) -> np.ndarray:
        """n images; a class-conditional model draws them for the classes 0, 1, 2, ... in turn."""
        y = backend.array_module(self.spec.device).arange(n) % self.spec.classes if self.needs_labels else None
        return backend.to_device(self.model.sample(n, y), "cpu").astype(np.float32)


class PixelCNNRecipe(_ImageRecipe):
    """`minigen train pixelcnn`: PixelCNN with masks A and B and residual blocks."""

    name = "pixelcnn"

    def __init__(self, spec, channels: int = 64, layers: int = 5, lr: float = 1e-3):
        super().__init__(spec, PixelCNN(spec.shape, spec.levels, channels, layers), lr)


class GatedPixelCNNRecipe(_ImageRecipe):
    """`minigen train gated-pixelcnn`: gated PixelCNN, vertical and horizontal stacks (no blind spot)."""

    name = "gated-pixelcnn"

    def __init__(self, spec, channels: int = 64, layers: int = 5, kernel: int = 3, lr: float = 1e-3):
        super().__init__(spec, GatedPixelCNN(spec.shape, spec.levels, channels, layers, kernel,
                                             classes=spec.classes if self.needs_labels else 0), lr)


class ConditionalGatedPixelCNNRecipe(GatedPixelCNNRecipe):
    """`minigen train gated-pixelcnn-cond`: the gated PixelCNN given the class (a learned bias per class in
    every gate, 2016b eq. 4), trained on (image, label) batches; samples cycle through the classes."""

    name = "gated-pixelcnn-cond"
    needs_labels = True


class PixelRNNRecipe(_ImageRecipe):
    """`minigen train pixelrnn`: PixelRNN with Row LSTM layers."""

    name = "pixelrnn"

    def __init__(self, spec, channels: int = 64, layers: int = 2, lr: float = 1e-3):
        super().__init__(spec, RowLSTMNet(spec.shape, spec.levels, channels, layers), lr)
