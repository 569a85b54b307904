"""Autoregressive models of discrete images: the chain rule p(x) = prod_d p(x_d | x_<d), each conditional a
Bernoulli (binary pixels) or a categorical over the L grey levels, so log p(x) is exact and the NLL is
reported in nats on the data's own discrete scale.

The models differ only in how the logits of the D conditionals are computed from the earlier pixels:

- FVSBN, the fully visible sigmoid belief network (Frey 1998): a logistic (softmax) regression on all earlier
  pixels, O(D^2) weights;
- MarkovMLP: one MLP shared by all pixels on a window of the w previous pixels (the lecture's example),
  plus a one-hot of the pixel's position;
- PixelSequenceRNN: an RNN, LSTM or GRU (`minigen.nn.recurrent`) run over the raster sequence, reading
  x_{d-1} (and d's position) at step d;
- NADE (Larochelle & Murray 2011): one hidden layer whose weights are shared between the conditionals, all
  D hidden vectors in O(DH) by a cumulative sum;
- MADE (Germain et al. 2015): an MLP whose weight masks cut every path from x_j to the output of x_d unless
  j comes before d; optionally trained over K orders and connectivities and evaluated as their ensemble.

`logits(x)` computes all conditionals in one parallel pass over a full image (teacher forcing); `sample`
runs them in order, drawing one pixel at a time (with the RNN's hidden state and NADE's running activation
carried from pixel to pixel instead of recomputed). Pixels enter the networks as their values in [0, 1].
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, nn, optim
from ..data.spec import DataSpec
from ..distributions import Bernoulli, Categorical
from ..metrics import likelihood_metrics
from ..nn import init
from ..ops import concatenate, cumsum, logsumexp, matmul, pad, sigmoid, stack
from ..tensor import Tensor, no_grad, zeros
from ..train import Recipe


def made_mask(in_degrees: np.ndarray, out_degrees: np.ndarray, strict: bool) -> np.ndarray:
    """The MADE connectivity (Germain et al. 2015, eq. 12-13) between units of the given degrees, a 0/1
    array (out, in): a hidden unit of degree m sees inputs of degree <= m; an output of degree d (strict)
    sees only units of degree < d, so that output d never depends on inputs d, d+1, ..."""
    out, inp = out_degrees[:, None], in_degrees[None, :]
    return ((out > inp) if strict else (out >= inp)).astype(np.float32)


def positions(x: Tensor) -> Tensor:
    """The one-hot position of every pixel, (n, D, D) for x (n, D): tells a network shared across pixels
    which conditional it is computing."""
    xp = backend.get_array_module(x.data)
    n, D = x.shape
    return Tensor(xp.broadcast_to(xp.eye(D, dtype=x.dtype), (n, D, D)))


class Autoregressive(nn.Module):
    """The chain rule around a model's conditionals: log p(x), the training loss and the sequential sampler.

    A subclass gives `logits(x)` for x (n, D) in [0, 1]: (n, D) Bernoulli logits for binary pixels, (n, D, L)
    categorical logits for L grey levels, the logits of pixel d computed from the pixels before d in `order`.
    """

    def __init__(self, dim: int, levels: int):
        super().__init__()
        self.dim, self.levels = dim, levels
        self.outputs = 1 if levels == 2 else levels          # logits per pixel

    @property
    def order(self) -> np.ndarray:
        """The generation order: order[k] is the k-th pixel drawn (raster order unless overridden)."""
        return np.arange(self.dim)

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def per_pixel(self, a: Tensor) -> Tensor:
        """Logits laid out pixel-major, (n, D * outputs) or (n, D, outputs), as (n, D) or (n, D, L)."""
        return a.reshape(len(a), self.dim) if self.levels == 2 else a.reshape(len(a), self.dim, self.levels)

    def pixel_logits(self, a: Tensor) -> Tensor:
        """The logits of one pixel of n images, (n, outputs), as (n,) or (n, L)."""
        return a.reshape(len(a)) if self.levels == 2 else a

    def conditional(self, logits: Tensor):
        """p(x_d | x_<d) from its logits: Bernoulli, or categorical over the L levels."""
        return Bernoulli(logits=logits) if self.levels == 2 else Categorical(logits)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = sum_d log p(x_d | x_<d) in nats, (n,)."""
        value = x if self.levels == 2 else Tensor((x.data * (self.levels - 1)).round().astype(np.int64))
        return self.conditional(self.logits(x)).log_prob(value).sum(axis=1)

    def loss(self, x: Tensor, t: int) -> Tensor:
        """The training loss of update t: the mean NLL of the batch."""
        return -self.log_prob(x).mean()

    def draw(self, logits: Tensor) -> Tensor:
        """Pixel values in [0, 1] drawn from the conditionals with these logits (grey level k as k/(L-1))."""
        x_d = self.conditional(logits).sample()
        return x_d if self.levels == 2 else Tensor(x_d.data.astype(logits.dtype) / (self.levels - 1))

    def empty(self, n: int) -> Tensor:
        """n blank images (n, D), of the parameters' dtype and device."""
        p = next(iter(self.parameters()))
        return zeros(n, self.dim, dtype=p.dtype, device=p.device)

    @no_grad()
    def sample(self, n: int) -> Tensor:
        """Ancestral sampling in `order`: one full pass of `logits` per pixel (models with a cache override
        this with a loop that carries their state)."""
        x = self.empty(n)
        for d in self.order:
            x.data[:, d] = self.draw(self.logits(x)[:, d]).data
        return x


class FVSBN(Autoregressive):
    """Fully visible sigmoid belief network (Frey 1998; Gan et al. 2015): logit_d = b_d + sum_{j<d} W_dj x_j,
    a logistic regression per pixel (a softmax regression with L levels). One masked linear layer: MADE
    without hidden units."""

    def __init__(self, dim: int, levels: int = 2):
        super().__init__(dim, levels)
        self.linear = nn.MaskedLinear(dim, dim * self.outputs)
        degrees = np.arange(1, dim + 1)
        self.linear.set_mask(made_mask(degrees, np.repeat(degrees, self.outputs), strict=True))

    def logits(self, x: Tensor) -> Tensor:
        return self.per_pixel(self.linear(x))


class MarkovMLP(Autoregressive):
    """A Markov-window model: p(x_d | x_<d) = p(x_d | x_{d-w}, ..., x_{d-1}), one MLP shared by all pixels
    reading the w previous pixels (zeros before the first) and a one-hot of d, so that it may still learn
    each position's own marginal."""

    def __init__(self, dim: int, levels: int = 2, window: int = 16, hidden: int = 64):
        super().__init__(dim, levels)
        self.window = window
        self.net = nn.mlp([window + dim, hidden, hidden, self.outputs])

    def logits(self, x: Tensor) -> Tensor:
        n, D, w = len(x), self.dim, self.window
        padded = pad(x, ((0, 0), (w, 0)))
        context = stack([padded[:, k:k + D] for k in range(w)], axis=2)        # (n, D, w): x_{d-w} .. x_{d-1}
        inputs = concatenate([context, positions(x)], axis=2)
        return self.per_pixel(self.net(inputs.reshape(n * D, w + D)).reshape(n, D, self.outputs))


class PixelSequenceRNN(Autoregressive):
    """An RNN over the pixels in raster order: h_d = cell(h_{d-1}, [x_{d-1}, onehot(d)]) with x_{-1} = 0, and
    logits_d = V h_d + b, so h_d summarizes exactly x_<d. cell: 'rnn' (tanh), 'lstm' or 'gru'."""

    cells = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

    def __init__(self, dim: int, levels: int = 2, cell: str = "lstm", hidden: int = 64, layers: int = 1):
        if cell not in self.cells:
            raise ValueError(f"cell must be one of {', '.join(self.cells)}, got {cell!r}")
        super().__init__(dim, levels)
        self.rnn = self.cells[cell](1 + dim, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, self.outputs)

    def logits(self, x: Tensor) -> Tensor:
        previous = pad(x, ((0, 0), (1, 0)))[:, :self.dim, None]                   # x_{d-1} at step d
        h, _ = self.rnn(concatenate([previous, positions(x)], axis=2))
        return self.per_pixel(self.out(h))

    @no_grad()
    def sample(self, n: int) -> Tensor:
        """One cell step per pixel, the hidden state of every layer carried from pixel to pixel."""
        x = self.empty(n)
        where = positions(x)
        states = [None] * len(self.rnn.cells)
        previous = x[:, :1]
        for d in range(self.dim):
            h = concatenate([previous, where[:, d]], axis=1)
            for layer, cell in enumerate(self.rnn.cells):
                states[layer] = cell(h, states[layer])
                h = states[layer][0] if isinstance(states[layer], tuple) else states[layer]
            previous = self.draw(self.pixel_logits(self.out(h)))
            x.data[:, d] = previous.data
            previous = previous.reshape(n, 1)
        return x


class NADE(Autoregressive):
    """Neural autoregressive distribution estimator (Larochelle & Murray 2011):

        h_d = sigmoid(c + W_{:, <d} x_<d),     logits_d = b_d + V_d h_d          (eq. 5-6)

    W (H, D) and c are shared by all conditionals, so a_d = c + W_{:, <d} x_<d grows by W_{:, d} x_d from one
    pixel to the next: all D hidden vectors cost O(DH), here as a cumulative sum over d (training) and a
    running activation (sampling). V is (D, H, outputs), b (D, outputs)."""

    def __init__(self, dim: int, levels: int = 2, hidden: int = 64):
        super().__init__(dim, levels)
        self.W = nn.Parameter(zeros(hidden, dim))
        self.c = nn.Parameter(zeros(hidden))
        self.V = nn.Parameter(zeros(dim, hidden, self.outputs))
        self.b = nn.Parameter(zeros(dim, self.outputs))
        init.uniform_(self.W, -1 / math.sqrt(dim), 1 / math.sqrt(dim))
        init.uniform_(self.V, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))

    def logits(self, x: Tensor) -> Tensor:
        step = x.T[:-1, :, None] * self.W.T[:-1, None]                          # (D-1, n, H): W_{:, j} x_j
        a = self.c + cumsum(pad(step, ((1, 0), (0, 0), (0, 0))), axis=0)        # a_d: exclusive sum over j < d
        h = sigmoid(a)                                                          # (D, n, H), pixel-major
        return self.per_pixel(matmul(h, self.V).swapaxes(0, 1) + self.b)

    @no_grad()
    def sample(self, n: int) -> Tensor:
        x = self.empty(n)
        a = self.c * Tensor(backend.get_array_module(x.data).ones((n, 1), dtype=x.dtype))
        for d in range(self.dim):
            x_d = self.draw(self.pixel_logits(sigmoid(a) @ self.V[d] + self.b[d]))
            x.data[:, d] = x_d.data
            a = a + x_d.reshape(n, 1) * self.W[:, d]
        return x


class MADE(Autoregressive):
    """Masked autoencoder for distribution estimation (Germain et al. 2015) as a density model: an MLP
    D -> H -> ... -> H -> D x outputs whose masks (`made_mask`) make output d a function of the pixels before
    d in an order. Mask set 0 is the raster order with hidden degrees spread evenly over 1..D-1 (as
    `flows.MADE`); with masks = K > 1 every set k is a random order and random hidden degrees, m ~ U{min of
    the previous layer's degrees, D-1} (sec. 4-5), drawn from a NumPy generator seeded with k. Training
    cycles through the K sets (order- and connectivity-agnostic training); `log_prob` is the ensemble,
    log (1/K) sum_k p_k(x), itself a normalized density (a mixture of K autoregressive models)."""

    def __init__(self, dim: int, levels: int = 2, hidden: int = 256, layers: int = 2, masks: int = 1):
        super().__init__(dim, levels)
        self.hidden, self.masks = hidden, masks
        sizes = [dim] + [hidden] * layers + [dim * self.outputs]
        self.net = nn.ModuleList(nn.MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.use_mask(0)

    def mask_set(self, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(order, [degrees of the inputs, of each hidden layer]) of mask set k."""
        D, H = self.dim, self.hidden
        layers = len(self.net) - 1
        if self.masks == 1:
            return np.arange(D), [np.arange(1, D + 1)] + [np.arange(H) * max(D - 1, 1) // H + 1] * layers
        rng = np.random.default_rng(k)
        order = rng.permutation(D)
        degrees = [np.empty(D, dtype=np.int64)]
        degrees[0][order] = np.arange(1, D + 1)
        for _ in range(layers):
            degrees.append(rng.integers(min(degrees[-1].min(), D - 1), D, size=H))
        return order, degrees

    def use_mask(self, k: int) -> None:
        """Set the layers' masks to mask set k (always rebuilt: a checkpoint's mask buffers may hold any set)."""
        self._order, degrees = self.mask_set(k)
        for layer, d_in, d_out in zip(self.net[:-1], degrees, degrees[1:]):
            layer.set_mask(made_mask(d_in, d_out, strict=False))
        self.net[-1].set_mask(made_mask(degrees[-1], np.repeat(degrees[0], self.outputs), strict=True))
        self.current = k

    @property
    def order(self) -> np.ndarray:
        return self._order

    def logits(self, x: Tensor) -> Tensor:
        """The logits under the current mask set."""
        h = x
        for layer in self.net[:-1]:
            h = layer(h).relu()
        return self.per_pixel(self.net[-1](h))

    def loss(self, x: Tensor, t: int) -> Tensor:
        """The NLL under mask set (t - 1) mod K: one order and connectivity per update."""
        self.use_mask((t - 1) % self.masks)
        return -super().log_prob(x).mean()

    def log_prob(self, x: Tensor) -> Tensor:
        """The ensemble log (1/K) sum_k p_k(x) over the K mask sets (Germain et al. 2015, sec. 5)."""
        terms = []
        for k in range(self.masks):
            self.use_mask(k)
            terms.append(super().log_prob(x))
        return logsumexp(stack(terms), axis=0) - math.log(self.masks)

    @no_grad()
    def sample(self, n: int) -> Tensor:
        """From the ensemble: each image picks a mask set uniformly, then is drawn in that set's order."""
        x = self.empty(n)
        u = backend.to_device(backend.generator(x.device).random(n), "cpu")
        k = np.floor(u * self.masks).astype(np.int64)
        for mask in np.unique(k):
            self.use_mask(int(mask))
            rows = backend.to_device(np.flatnonzero(k == mask), x.device)
            x.data[rows] = super().sample(len(rows)).data
        return x


class AutoregressiveRecipe(Recipe):
    """What every autoregressive family shares: Adam on the NLL, the exact test NLL (nats per image and
    bits/dim on the pixels' own scale), sequential samples. A family is its model; `inputs` says what the
    model takes of a batch and `loss` its training loss (the image models of pixelcnn.py derive from this)."""

    default_dataset = "binarized-digits"
    default_epochs = 20.0
    kinds = ("binary", "levels")

    def __init__(self, spec: DataSpec, model: Autoregressive, lr: float):
        self.spec, self.model = spec, model
        self.optimizer = optim.Adam(model.parameters(), lr=lr)

    def modules(self) -> dict:
        return {"model": self.model}

    def optimizers(self) -> dict:
        return {"adam": self.optimizer}

    def inputs(self, batch) -> tuple:
        """The model's arguments for a batch: the images as pixel sequences (n, D)."""
        return (batch[0].reshape(len(batch[0]), self.spec.dim),)

    def loss(self, batch, t: int) -> Tensor:
        """The loss of update t: the model's own (MADE's changes its mask set from update to update)."""
        return self.model.loss(*self.inputs(batch), t)

    def step(self, batch, t: int) -> dict:
        loss = self.loss(batch, t)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"nll": loss.item()}

    def evaluate(self, loader) -> dict:
        total, count = 0.0, 0
        with no_grad():
            for batch in loader:
                total -= self.model.log_prob(*self.inputs(batch)).sum().item()
                count += len(batch[0])
        return likelihood_metrics(total / count, self.spec, density=False)

    def sample(self, n: int) -> np.ndarray:
        return self.model.sample(n).numpy().reshape((n,) + self.spec.shape).astype(np.float32)


class FVSBNRecipe(AutoregressiveRecipe):
    """`minigen train fvsbn`: fully visible sigmoid belief network."""

    name = "fvsbn"

    def __init__(self, spec: DataSpec, lr: float = 1e-2):
        super().__init__(spec, FVSBN(spec.dim, spec.levels), lr)


class MarkovMLPRecipe(AutoregressiveRecipe):
    """`minigen train markov-mlp`: an MLP on the `window` previous pixels."""

    name = "markov-mlp"

    def __init__(self, spec: DataSpec, lr: float = 3e-3, window: int = 16, hidden: int = 64):
        super().__init__(spec, MarkovMLP(spec.dim, spec.levels, window, hidden), lr)


class RNNRecipe(AutoregressiveRecipe):
    """`minigen train rnn`: an RNN / LSTM / GRU (cell=rnn|lstm|gru) over the pixel sequence."""

    name = "rnn"

    def __init__(self, spec: DataSpec, lr: float = 1e-2, cell: str = "lstm", hidden: int = 64, layers: int = 1):
        super().__init__(spec, PixelSequenceRNN(spec.dim, spec.levels, cell, hidden, layers), lr)


class NADERecipe(AutoregressiveRecipe):
    """`minigen train nade`: NADE with `hidden` units."""

    name = "nade"

    def __init__(self, spec: DataSpec, lr: float = 1e-2, hidden: int = 64):
        super().__init__(spec, NADE(spec.dim, spec.levels, hidden), lr)


class MADERecipe(AutoregressiveRecipe):
    """`minigen train made`: MADE; masks=K > 1 trains over K random orders and connectivities and evaluates
    their ensemble."""

    name = "made"

    def __init__(self, spec: DataSpec, lr: float = 3e-3, hidden: int = 256, layers: int = 2, masks: int = 1):
        super().__init__(spec, MADE(spec.dim, spec.levels, hidden, layers, masks), lr)
