"""Datasets and loading: 2-D toy sets and energy densities, image datasets (digits, MNIST family),
downloads with checksum verification, pixel transforms, and a resumable DataLoader.

    from minigen.data import DataLoader, load_mnist, dequantize
    x, y = load_mnist("train")                     # uint8 (60000, 28, 28), int64 (60000,)
    loader = DataLoader(x, y, batch_size=128, seed=0, transform=dequantize)
    for xb, yb in loader: ...                      # minigen Tensors: float32 (128, 28, 28), int64 (128,)
"""
from .catalog import IMAGE_DATASETS, dataset_names, load_binarized_digits, load_dataset
from .download import (BASE_URLS, FILES, ChecksumError, DataUnavailableError, download_file, fetch,
                       resolve_data_dir)
from .images import (FASHION_MNIST_CLASSES, dynamically_binarized_mnist, load_binarized_mnist, load_digits,
                     load_fashion_mnist, load_mnist)
from .loader import DataLoader
from .spec import DataSpec
from .toy import (EIGHT_GAUSSIANS, ENERGIES, ENERGY_Z1_MAX, TOY_DATASETS, TWENTY_FIVE_GAUSSIANS,
                  GaussianMixture, checkerboard, checkerboard_log_prob, checkerboard_support, circles,
                  eight_gaussians, energy_log_partition, sample_toy, spirals, swiss_roll,
                  twenty_five_gaussians, two_moons, u1, u2, u3, u4)
from .transforms import (binarize, binarize_stochastic, compose, dequantize, dequantize_batch, logit_inverse,
                         logit_transform, to_symmetric, to_unit)
