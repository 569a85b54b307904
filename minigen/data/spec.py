"""DataSpec: what a model family is told about its data, so that it never has to guess from a shape.

    spec = DataSpec("digits", shape=(1, 8, 8), kind="levels", levels=17, classes=10)
    spec.dim            # 64 numbers an example
    spec.is_image       # True: (C, H, W)

Batches hold float32 values: images in [0, 1] (grey level k stored as k / (L - 1); binary pixels 0 or 1),
2-D points as they are. `kind` says which discrete scale, if any, the likelihoods are reported on:

- "binary":     pixels in {0, 1}; a Bernoulli likelihood is already a probability;
- "levels":     L grey levels (17 on the 8x8 digits, 256 on MNIST); a density on [0, 1]^D is turned into a
                probability of the grey levels by `metrics.discrete_nll` (dequantization, Theis et al. 2016);
- "continuous": real vectors (the 2-D toys); NLLs are densities in nats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

KINDS = ("binary", "levels", "continuous")


@dataclass(frozen=True)
class DataSpec:
    name: str
    shape: tuple                # one example: (C, H, W) for images, (D,) for vectors
    kind: str                   # one of KINDS
    levels: int | None = None   # L for kind "levels", 2 for "binary", None for "continuous"
    classes: int = 0            # label classes; 0 when the dataset has no labels
    device: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind not in KINDS:
            raise ValueError(f"DataSpec kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "binary" and self.levels is None:
            object.__setattr__(self, "levels", 2)
        if self.kind == "levels" and (self.levels is None or self.levels < 2):
            raise ValueError(f"DataSpec of kind 'levels' needs levels >= 2, got {self.levels}")

    @property
    def dim(self) -> int:
        """Numbers per example (D in bits/dim)."""
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def has_labels(self) -> bool:
        return self.classes > 0

    def on(self, device: str) -> DataSpec:
        """The same data on another device."""
        return replace(self, device=device)
