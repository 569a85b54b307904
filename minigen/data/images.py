"""Image datasets as NumPy arrays: scikit-learn's 8x8 digits, MNIST, Fashion-MNIST, the fixed binarized
MNIST of Larochelle & Murray (2011), and a dynamically binarized MNIST.

Files are found in (or downloaded into) the data directory, see `minigen.data.download`. Images keep the
dtype they are stored in: uint8 (n, 28, 28), grey levels 0..255 for MNIST and Fashion-MNIST and 0 / 1 for
binarized MNIST; labels are int64 (n,). `transforms.to_unit`, `dequantize`, ... turn a batch into float32.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .download import fetch
from .loader import DataLoader
from .transforms import binarize_stochastic

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _read(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array: magic 0x0000 08 <ndim>, ndim big-endian uint32 sizes, then the data."""
    raw = _read(path)
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#010x})")
    ndim = magic & 0xFF
    shape = tuple(np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != np.prod(shape):
        raise ValueError(f"{path}: header says shape {shape}, found {data.size} bytes of data")
    return data.reshape(shape).copy()


def read_amat(path: Path) -> np.ndarray:
    """A binarized-MNIST .amat file: one image per line, 784 digits 0/1 separated by single spaces."""
    raw = np.frombuffer(_read(path), np.uint8)
    line = 2 * 784
    rows = raw.reshape(-1, line) if raw.size % line == 0 else None
    if rows is None or not ((rows[:, 1:-1:2] == ord(" ")).all() and (rows[:, -1] == ord("\n")).all()):
        raise ValueError(f"{path}: not a binarized-MNIST .amat file (lines of 784 space-separated 0/1)")
    pixels = rows[:, ::2] - ord("0")
    if pixels.max(initial=0) > 1:
        raise ValueError(f"{path}: pixel values other than 0 and 1")
    return pixels.reshape(-1, 28, 28)


def _idx_pair(folder: str, split: str, data_dir, base_url, download) -> tuple[np.ndarray, np.ndarray]:
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = f"{folder}/{_IDX_PREFIX[split]}"
    images, labels = fetch([f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"],
                           data_dir, base_url, download)
    return read_idx(images), read_idx(labels).astype(np.int64)


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, base_url: str | None = None,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST `split` ('train': 60000, 'test': 10000): images uint8 (n, 28, 28) in 0..255, labels int64 (n,)."""
    return _idx_pair("mnist", split, data_dir, base_url, download)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       base_url: str | None = None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` ('train': 60000, 'test': 10000): images uint8 (n, 28, 28) in 0..255, labels
    int64 (n,) indexing `FASHION_MNIST_CLASSES`."""
    return _idx_pair("fashion-mnist", split, data_dir, base_url, download)


def load_binarized_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                         base_url: str | None = None, download: bool = True) -> np.ndarray:
    """The fixed binarized MNIST of Larochelle & Murray (2011), the standard set for NLL comparisons:
    `split` 'train' (50000), 'valid' (10000) or 'test' (10000); images uint8 (n, 28, 28) in {0, 1}, no
    labels. Read from `binarized_mnist_<split>.amat` or its gzip-compressed copy `.amat.gz`."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    path, = fetch([f"binarized-mnist/binarized_mnist_{split}.amat"], data_dir, base_url, download)
    return read_amat(path)


def dynamically_binarized_mnist(batch_size: int, split: str = "train", seed: int | None = None,
                                shuffle: bool = True, drop_last: bool = False, device: str = "cpu",
                                data_dir: str | os.PathLike | None = None, base_url: str | None = None,
                                download: bool = True) -> DataLoader:
    """MNIST binarized afresh every epoch: each pixel a Bernoulli draw with its intensity / 255 as
    probability. A DataLoader of (x float32 (b, 28, 28) in {0, 1}, labels int64 (b,)) batches, reproducible
    from `seed` and resumable with its state_dict."""
    images, labels = load_mnist(split, data_dir, base_url, download)
    return DataLoader(images, labels, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                      device=device, transform=binarize_stochastic)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 images, no download): images float32 (1797, 8, 8) in [0, 1] (the
    17 grey levels 0..16 divided by 16; `dequantize(x, rng, levels=17)`), labels int64 (1797,)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn, an optional dependency: pip install scikit-learn") from e
    digits = sklearn_digits()
    return (digits.images / 16).astype(np.float32), digits.target.astype(np.int64)
