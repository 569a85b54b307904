"""A character-level LSTM language model: the autoregressive chain rule p(x) = prod_t p(x_t | x_<t) on text,
the sequence example of the lectures. The text is Python's own documentation as shipped with every Python
(`pydoc_data.topics`, the pages `help()` shows), so nothing is downloaded.

    python examples/char_lstm.py                       # 2000 steps, a few minutes on one core

Training: truncated backpropagation through time on random windows of `--seq` characters, the LSTM's state
started at zero in each window; cross-entropy of the next character. Prints the held-out cross-entropy in
bits per character (the last tenth of the text) beside the unigram baseline (every character drawn from
the training frequencies), then text sampled at temperature 0.8.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import pydoc_data.topics

import minigen as mg
import minigen.nn.functional as F
from minigen import nn, optim


def corpus() -> str:
    return "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int = 32, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        """x (N, T) character indices -> logits (N, T, vocab) of each next character, and the final state."""
        h, state = self.lstm(self.embed(x), state)
        return self.head(h), state


def windows(ids: np.ndarray, n: int, length: int, rng) -> np.ndarray:
    """n random windows of length + 1 characters: inputs [:, :-1], targets [:, 1:]."""
    starts = rng.integers(0, len(ids) - length - 1, n)
    return ids[starts[:, None] + np.arange(length + 1)]


def bits_per_char(model: CharLSTM, ids: np.ndarray, length: int) -> float:
    """Cross-entropy of every character of `ids` given those before it in its window, in bits."""
    chunks = ids[:len(ids) - (len(ids) - 1) % length].astype(np.int64)
    x, y = chunks[:-1].reshape(-1, length), chunks[1:].reshape(-1, length)
    with mg.no_grad():
        logits, _ = model(mg.tensor(x))
        nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mg.tensor(y.reshape(-1))).item()
    return nats / math.log(2)


@mg.no_grad()
def sample(model: CharLSTM, chars: list[str], start: str, n: int, temperature: float, rng) -> str:
    """Characters drawn one at a time from p(x_t | x_<t) ** (1 / temperature), the state carried along."""
    index = {c: i for i, c in enumerate(chars)}
    logits, state = model(mg.tensor(np.array([[index[c] for c in start]])))
    out = list(start)
    for _ in range(n):
        p = F.softmax(logits[0, -1] / temperature, axis=-1).numpy().astype(np.float64)
        out.append(chars[rng.choice(len(chars), p=p / p.sum())])
        logits, state = model(mg.tensor(np.array([[index[out[-1]]]])), state)
    return "".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--chars", type=int, default=200_000, help="use the first this many characters")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    text = corpus()[:args.chars]
    chars = sorted(set(text))
    ids = np.searchsorted(np.array(chars), np.array(list(text)))
    split = len(ids) * 9 // 10
    train, test = ids[:split], ids[split:]
    freq = (np.bincount(train, minlength=len(chars)) + 1) / (len(train) + len(chars))    # add-one smoothing
    unigram = -np.log2(freq[test]).mean()

    mg.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = CharLSTM(len(chars), hidden=args.hidden)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    for step in range(1, args.steps + 1):
        batch = windows(train, args.batch_size, args.seq, rng)
        logits, _ = model(mg.tensor(batch[:, :-1]))
        loss = F.cross_entropy(logits.reshape(-1, len(chars)), mg.tensor(batch[:, 1:].reshape(-1)))
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            print(f"step {step}: train {loss.item() / math.log(2):.3f} bits/char, "
                  f"held-out {bits_per_char(model, test, args.seq):.3f} bits/char (unigram {unigram:.3f})",
                  flush=True)
    print(sample(model, chars, "The ", 300, 0.8, rng))


if __name__ == "__main__":
    main()
