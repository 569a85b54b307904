"""The datasets the `minigen` command trains on, each loaded with its `DataSpec`.

    spec, (train_x, train_y), (test_x, test_y) = load_dataset("binarized-digits")

Images come as float32 (n, 1, H, W) in [0, 1] with int64 labels (None where a dataset has none), 2-D toys as
float32 (n, 2).
"""
from __future__ import annotations

import numpy as np

from .download import FILES, fetch
from .images import load_binarized_mnist, load_digits, load_fashion_mnist, load_mnist
from .spec import DataSpec
from .toy import TOY_DATASETS, sample_toy
from .transforms import binarize

IMAGE_DATASETS = {
    "digits": "scikit-learn's 8x8 digits, 17 grey levels (no download)",
    "binarized-digits": "the 8x8 digits binarized at grey level >= 8; train 1000 / valid 350 / test 447 (no download)",
    "mnist": "MNIST, 256 grey levels",
    "fashion-mnist": "Fashion-MNIST, 256 grey levels",
    "binarized-mnist": "the fixed binarized MNIST of Larochelle & Murray (2011)",
}
BINARIZED_DIGITS_SPLITS = {"train": slice(0, 1000), "valid": slice(1000, 1350), "test": slice(1350, None)}


def dataset_names() -> list[str]:
    return list(IMAGE_DATASETS) + list(TOY_DATASETS)


def load_binarized_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits binarized at grey level >= 8 of 0..16, in scikit-learn's order: 'train' the first 1000
    images, 'valid' the next 350, 'test' the last 447. Images float32 (n, 8, 8) in {0, 1}, labels int64."""
    if split not in BINARIZED_DIGITS_SPLITS:
        raise ValueError(f"split must be one of {', '.join(BINARIZED_DIGITS_SPLITS)}, got {split!r}")
    x, y = load_digits()
    keep = BINARIZED_DIGITS_SPLITS[split]
    return binarize(x[keep]), y[keep]


def _require(folder: str, data_dir) -> None:
    """Fetch (or find and verify) all of a dataset's train and test files first, so that a missing-data
    error lists every file at once."""
    fetch([k for k in FILES if k.startswith(folder + "/") and "valid" not in k], data_dir)


def load_dataset(name: str, seed: int = 0, data_dir: str | None = None, device: str = "cpu"):
    """(spec, (train_x, train_y), (test_x, test_y)) of dataset `name` (see `dataset_names()`)."""
    if name in ("mnist", "fashion-mnist", "binarized-mnist"):
        _require(name, data_dir)
    if name == "digits":
        x, y = load_digits()
        order = np.random.default_rng(0).permutation(len(x))     # a fixed split: 1497 train, 300 test
        x, y = x[order][:, None], y[order]
        spec = DataSpec(name, x.shape[1:], "levels", levels=17, classes=10, device=device)
        return spec, (x[300:], y[300:]), (x[:300], y[:300])
    if name == "binarized-digits":
        (train_x, train_y), (test_x, test_y) = (load_binarized_digits(split) for split in ("train", "test"))
        spec = DataSpec(name, (1, 8, 8), "binary", classes=10, device=device)
        return spec, (train_x[:, None], train_y), (test_x[:, None], test_y)
    if name in ("mnist", "fashion-mnist"):
        load = load_mnist if name == "mnist" else load_fashion_mnist
        (train_x, train_y), (test_x, test_y) = (load(split, data_dir=data_dir) for split in ("train", "test"))
        spec = DataSpec(name, (1, 28, 28), "levels", levels=256, classes=10, device=device)
        return spec, (train_x[:, None] / np.float32(255), train_y), (test_x[:, None] / np.float32(255), test_y)
    if name == "binarized-mnist":
        train_x, test_x = (load_binarized_mnist(split, data_dir=data_dir)[:, None].astype(np.float32)
                           for split in ("train", "test"))
        return DataSpec(name, (1, 28, 28), "binary", device=device), (train_x, None), (test_x, None)
    if name in TOY_DATASETS:
        rng = np.random.default_rng(seed)
        spec = DataSpec(name, (2,), "continuous", device=device)
        return spec, (sample_toy(name, 20000, rng), None), (sample_toy(name, 5000, rng), None)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
