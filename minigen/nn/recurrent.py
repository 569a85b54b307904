"""Recurrent layers: one step (RNNCell, LSTMCell, GRUCell) and the loop over a sequence and a stack of layers
(RNN, LSTM, GRU). Gate equations, parameter names, shapes and layouts are PyTorch's: weight_ih holds the
gates' input weights stacked along axis 0 (LSTM: i, f, g, o; GRU: r, z, n), weight_hh their hidden-state
weights, every parameter initialized from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).
"""
from __future__ import annotations

import math

from ..ops import stack, tanh
from ..ops.nn import recurrence
from ..tensor import Tensor, zeros
from . import functional as F
from . import init
from .module import Module, ModuleList, Parameter


class _RNNCellBase(Module):
    """The parameters of a cell with `num_gates` gates, and the two affine maps every cell starts from. A cell's
    `step(a, hx)` takes the input's map a = W_ih x + b_ih already made: over a sequence (_RNNBase) it is one
    product for every step at once, leaving one product per step, W_hh h + b_hh (PyTorch's loop does the same)."""

    num_gates: int

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        gates = self.num_gates * hidden_size
        self.weight_ih = Parameter(zeros(gates, input_size))
        self.weight_hh = Parameter(zeros(gates, hidden_size))
        self.bias_ih = Parameter(zeros(gates)) if bias else None
        self.bias_hh = Parameter(zeros(gates)) if bias else None
        bound = 1 / math.sqrt(hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def forward(self, input: Tensor, hx=None):
        return self.step(self.input_map(input), hx)

    def input_map(self, x: Tensor) -> Tensor:
        """W_ih x + b_ih, all gates side by side on the last axis; x (..., input_size)."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def _hidden_map(self, h: Tensor) -> Tensor:
        """W_hh h + b_hh, all gates side by side on axis 1."""
        return F.linear(h, self.weight_hh, self.bias_hh)

    def sequence(self, a: Tensor, hx=None):
        """Every step over a sequence, from the input's map at every step a (T, N, G): (h at every step
        (T, N, hidden_size), the last state)."""
        return recurrence(self.step, a, hx)

    def _zeros(self, x: Tensor) -> Tensor:
        return zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class RNNCell(_RNNCellBase):
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu). Input (N, input_size), h (N, hidden_size),
    zeros when None."""

    num_gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity

    def step(self, a: Tensor, hx: Tensor | None = None) -> Tensor:
        z = a + self._hidden_map(self._zeros(a) if hx is None else hx)
        return tanh(z) if self.nonlinearity == "tanh" else F.relu(z)


class LSTMCell(_RNNCellBase):
    """Long short-term memory (Hochreiter & Schmidhuber 1997), with the forget gate of Gers et al. 2000:

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)      input gate
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)      forget gate
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)         candidate cell
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)      output gate
        c' = f * c + i * g,    h' = o * tanh(c')

    hx = (h, c), zeros when None; returns (h', c').
    """

    num_gates = 4

    def step(self, a: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        h, c = (self._zeros(a), self._zeros(a)) if hx is None else hx
        return F.lstm_cell_update(a + self._hidden_map(h), c)

    def sequence(self, a: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        """The whole sequence as one node each way (F.lstm_layer)."""
        h, c = F.lstm_layer(a, self.weight_hh, self.bias_hh, *(hx or ()))
        return h, (h[-1], c)


class GRUCell(_RNNCellBase):
    """Gated recurrent unit (Cho et al. 2014), PyTorch's variant (the reset gate applied after W_hn):

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      reset gate
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)      update gate
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   candidate
        h' = (1 - z) * n + z * h
    """

    num_gates = 3

    def step(self, a: Tensor, hx: Tensor | None = None) -> Tensor:
        h = self._zeros(a) if hx is None else hx
        return F.gru_cell_update(a, self._hidden_map(h), h)

    def sequence(self, a: Tensor, hx: Tensor | None = None):
        """The whole sequence as one node each way (F.gru_layer)."""
        h = F.gru_layer(a, self.weight_hh, self.bias_hh, hx)
        return h, h[-1]


class _RNNBase(Module):
    """A stack of `num_layers` cells run over a sequence: layer l reads the outputs of layer l - 1.

    input (T, N, input_size), or (N, T, input_size) with batch_first; hx the initial state of every layer,
    (num_layers, N, hidden_size) (LSTM: a pair (h0, c0) of those), zeros when None. Returns (output, state):
    the last layer's h at every step (T, N, hidden_size) (batch first if asked), and every layer's final
    state shaped as hx.
    """

    cell: type

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, **cell_options):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first
        self.cells = ModuleList(self.cell(input_size if layer == 0 else hidden_size, hidden_size, bias,
                                          **cell_options) for layer in range(num_layers))

    def forward(self, input: Tensor, hx=None):
        x = input.swapaxes(0, 1) if self.batch_first else input
        finals = []
        for layer, cell in enumerate(self.cells):
            x, state = cell.sequence(cell.input_map(x), None if hx is None else _select_layer(hx, layer))
            finals.append(state)
        state = tuple(map(stack, zip(*finals))) if isinstance(finals[0], tuple) else stack(finals)
        return (x.swapaxes(0, 1) if self.batch_first else x), state

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}")


def _select_layer(hx, layer: int):
    """Layer `layer`'s part of a stacked state (a tensor, or a tuple of them)."""
    return tuple(h[layer] for h in hx) if isinstance(hx, tuple) else hx[layer]


class RNN(_RNNBase):
    """Elman RNN layers of RNNCell (h' = tanh(W_ih x + b_ih + W_hh h + b_hh))."""

    cell = RNNCell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, nonlinearity=nonlinearity)


class LSTM(_RNNBase):
    """LSTM layers of LSTMCell; the state is the pair (h, c)."""

    cell = LSTMCell


class GRU(_RNNBase):
    """GRU layers of GRUCell."""

    cell = GRUCell
