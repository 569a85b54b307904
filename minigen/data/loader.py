"""DataLoader: batches of minigen Tensors from in-memory NumPy arrays, reshuffled every epoch from its own
seeded generator, with a small JSON-able state so that a run resumes mid-epoch exactly.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np

from .. import backend
from ..tensor import Tensor
from . import transforms


class DataLoader:
    """Iterate over `arrays` (equal first dimension) in batches, as tuples of Tensors.

    Every epoch draws from the loader's generator a permutation of the examples (when `shuffle`) and a key;
    batch i of the epoch is `arrays[k][order[i*batch_size:(i+1)*batch_size]]` (fancy indexing, no Python loop
    over examples). `transform` is applied to the first array's batch (the data; labels stay as they are),
    with `rng=` a generator seeded by (key, i) when it takes one, so random transforms (dequantization,
    dynamic binarization) are fresh every epoch and still reproducible. The batch then moves to `device`.

    Iteration continues where the previous one stopped: breaking out mid-epoch and iterating again resumes
    the same epoch; a full pass ends it. `state_dict()` (epoch, position, the generator's state at the start
    of the epoch) and `load_state_dict()` resume a run exactly. `seed=None` takes a seed from minigen's CPU
    generator, so `minigen.manual_seed` makes the order reproducible too.
    """

    def __init__(self, *arrays: np.ndarray, batch_size: int, shuffle: bool = True, seed: int | None = None,
                 drop_last: bool = False, device: str = "cpu", transform: Callable | None = None):
        if not arrays or len({len(a) for a in arrays}) != 1:
            raise ValueError(f"DataLoader needs arrays of equal length, got lengths {[len(a) for a in arrays]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.arrays, self.batch_size, self.shuffle, self.drop_last = arrays, batch_size, shuffle, drop_last
        self.device, self.transform = backend.check_device(device), transform
        if seed is None:
            seed = int(backend.generator("cpu").integers(2**63))
        self._epoch, self._position = 0, 0
        self._epoch_state = np.random.default_rng(seed).bit_generator.state

    @property
    def num_examples(self) -> int:
        return len(self.arrays[0])

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        """The number of batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def _plan(self) -> tuple[np.ndarray | None, int, dict]:
        """This epoch's order (None: natural order), key, and the generator's state for the next epoch."""
        rng = np.random.default_rng()
        rng.bit_generator.state = self._epoch_state
        order = rng.permutation(self.num_examples) if self.shuffle else None
        key = int(rng.integers(2**63))
        return order, key, rng.bit_generator.state

    def _next_epoch(self, next_state: dict) -> None:
        self._epoch, self._position, self._epoch_state = self._epoch + 1, 0, next_state

    def _batch(self, order: np.ndarray | None, key: int, i: int) -> tuple[Tensor, ...]:
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        index = slice(lo, hi) if order is None else order[lo:hi]
        batch = [a[index] for a in self.arrays]
        if self.transform is not None:
            batch[0] = transforms.apply(self.transform, batch[0], np.random.default_rng([key, i]))
        return tuple(Tensor(backend.to_device(b, self.device)) for b in batch)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order, key, next_state = self._plan()
        if 0 < len(self) <= self._position:   # the state was saved after the epoch's last batch
            self._next_epoch(next_state)
            order, key, next_state = self._plan()
        while self._position < len(self):
            i = self._position
            self._position += 1           # counted before it is handed out: a state saved now excludes it
            yield self._batch(order, key, i)
        self._next_epoch(next_state)

    def state_dict(self) -> dict:
        """JSON-able state: epoch, batches consumed in it, and the generator's state at the epoch's start."""
        return {"epoch": self._epoch, "position": self._position, "rng_state": self._epoch_state,
                "num_examples": self.num_examples, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`: the next batch is the one that followed when the state was saved."""
        for name in ("num_examples", "batch_size"):
            if state[name] != getattr(self, name):
                raise ValueError(f"state was saved with {name}={state[name]}, this loader has "
                                 f"{getattr(self, name)}")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        self._epoch_state = state["rng_state"]
