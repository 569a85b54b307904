"""Neural-network building blocks, as torch.nn: `Module` and `Parameter` (module.py), layers (layers.py,
recurrent.py), initializations (`minigen.nn.init`) and the stateless operations (`minigen.nn.functional`)."""
from . import functional, init  # noqa: F401
from .layers import (ELU, GELU, BatchNorm1d, BatchNorm2d, Conv2d, ConvTranspose2d, Dropout, Embedding,  # noqa: F401
                     Flatten, GroupNorm, LayerNorm, LeakyReLU, Linear, MaskedConv2d, MaskedLinear, ReLU, Sigmoid,
                     SiLU, Softplus, Tanh, Upsample, mlp)
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential  # noqa: F401
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: F401
