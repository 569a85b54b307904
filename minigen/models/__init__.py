"""The model families, one file each. Each file holds its model, its loss, its sampler, and a `Recipe`
(see `minigen.train.Recipe`) that the shared training loop and the `minigen` command drive.

FAMILIES maps a family's command-line name to (module, recipe class, one-line description); modules are
imported on first use.
"""
from __future__ import annotations

import importlib

FAMILIES = {
    "gaussian": ("minigen.models.gaussian", "GaussianRecipe",
                 "Gaussian / probabilistic PCA in closed form (mean, covariance, eigen-decomposition)"),
    "ae": ("minigen.models.ae", "AERecipe", "MLP autoencoder trained on reconstruction error"),
    "gan": ("minigen.models.gan", "GANRecipe", "GAN, non-saturating or minimax generator loss (MLPs on 2-D data)"),
    "dcgan": ("minigen.models.gan", "DCGANRecipe", "DCGAN: transposed-conv generator, strided-conv discriminator"),
    "wgan": ("minigen.models.gan", "WGANRecipe", "Wasserstein GAN: critic with weight clipping, RMSprop"),
    "wgan-gp": ("minigen.models.gan", "WGANGPRecipe", "WGAN-GP: critic with gradient penalty, Adam(0, 0.9)"),
}


def recipe_class(family: str):
    """The Recipe class of `family`, or a one-line error naming the families there are."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
    module, cls, _ = FAMILIES[family]
    return getattr(importlib.import_module(module), cls)
