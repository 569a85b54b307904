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
    "vae": ("minigen.models.vae", "VAERecipe", "variational autoencoder (ELBO or IWAE training; MLP or conv)"),
    "cvae": ("minigen.models.vae", "CVAERecipe", "label-conditioned VAE with class-conditional sampling"),
    "hvae": ("minigen.models.vae", "HVAERecipe", "hierarchical VAE: top-down prior, residual normal posterior"),
    "nice": ("minigen.models.flows", "NICERecipe", "NICE: additive coupling flow with diagonal scaling"),
    "realnvp": ("minigen.models.flows", "RealNVPRecipe", "RealNVP: affine coupling flow, multiscale on images"),
    "glow": ("minigen.models.flows", "GlowRecipe", "Glow: actnorm, invertible 1x1 convolution, affine coupling"),
    "maf": ("minigen.models.flows", "MAFRecipe", "masked autoregressive flow on MADE"),
    "planar": ("minigen.models.flows", "PlanarRecipe", "planar flows fitted to an energy U1-U4 by reverse KL"),
    "radial": ("minigen.models.flows", "RadialRecipe", "radial flows fitted to an energy U1-U4 by reverse KL"),
    "iaf": ("minigen.models.flows", "IAFRecipe", "inverse autoregressive flow fitted to an energy U1-U4 by reverse KL"),
    "ffjord": ("minigen.models.cnf", "FFJORDRecipe", "FFJORD: continuous flow, exact or Hutchinson trace, RK4/Dopri5"),
    "otflow": ("minigen.models.cnf", "OTFlowRecipe", "OT-Flow: potential-gradient continuous flow with transport costs"),
    "gan": ("minigen.models.gan", "GANRecipe", "GAN, non-saturating or minimax generator loss (MLPs on 2-D data)"),
    "dcgan": ("minigen.models.gan", "DCGANRecipe", "DCGAN: transposed-conv generator, strided-conv discriminator"),
    "wgan": ("minigen.models.gan", "WGANRecipe", "Wasserstein GAN: critic with weight clipping, RMSprop"),
    "wgan-gp": ("minigen.models.gan", "WGANGPRecipe", "WGAN-GP: critic with gradient penalty, Adam(0, 0.9)"),
    "fgan": ("minigen.models.fgan", "FGANRecipe",
             "f-GAN: any f-divergence (kl, reverse-kl, js, ...) through its variational bound"),
    "bm": ("minigen.models.boltzmann", "BMRecipe", "fully visible Boltzmann machine: exact or Gibbs statistics, AIS"),
    "rbm": ("minigen.models.boltzmann", "RBMRecipe", "RBM (binary or Gaussian visible) by CD-k / PCD, AIS test NLL"),
    "dbn": ("minigen.models.boltzmann", "DBNRecipe", "deep belief net: greedy RBMs, variational bound with AIS"),
    "dbm": ("minigen.models.boltzmann", "DBMRecipe", "deep Boltzmann machine: mean-field, persistent chains, AIS"),
    "ebm": ("minigen.models.langevin", "LangevinEBMRecipe",
            "neural energy-based model: maximum likelihood with replay-buffer Langevin negatives"),
    "ddpm": ("minigen.models.diffusion", "DDPMRecipe",
             "denoising diffusion (DDPM): L_simple, variational bound, ancestral or DDIM sampling, EMA"),
    "pixelcnn": ("minigen.models.pixelcnn", "PixelCNNRecipe", "PixelCNN: masked convolutions (A, B), residual blocks"),
    "gated-pixelcnn": ("minigen.models.pixelcnn", "GatedPixelCNNRecipe",
                       "gated PixelCNN: vertical and horizontal stacks, no blind spot"),
    "gated-pixelcnn-cond": ("minigen.models.pixelcnn", "ConditionalGatedPixelCNNRecipe",
                            "class-conditional gated PixelCNN (a learned bias per class in every gate)"),
    "pixelrnn": ("minigen.models.pixelcnn", "PixelRNNRecipe", "PixelRNN with Row LSTM layers"),
    "gmm": ("minigen.models.mixtures", "GMMRecipe", "Gaussian mixture by EM (full / diagonal covariance, k-means++)"),
    "bernoulli-mixture": ("minigen.models.mixtures", "BernoulliMixtureRecipe", "mixture of Bernoullis by EM"),
    "fvsbn": ("minigen.models.autoregressive", "FVSBNRecipe", "fully visible sigmoid belief net (per-pixel logistic)"),
    "markov-mlp": ("minigen.models.autoregressive", "MarkovMLPRecipe", "MLP on a window of the previous pixels"),
    "rnn": ("minigen.models.autoregressive", "RNNRecipe", "RNN / LSTM / GRU over the pixel sequence (cell=...)"),
    "nade": ("minigen.models.autoregressive", "NADERecipe", "NADE: shared-weight autoregressive network, O(DH)"),
    "made": ("minigen.models.autoregressive", "MADERecipe", "MADE density: masked MLP, order-agnostic mask ensembles"),
}


def recipe_class(family: str):
    """The Recipe class of `family`, or a one-line error naming the families there are."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
    module, cls, _ = FAMILIES[family]
    return getattr(importlib.import_module(module), cls)
