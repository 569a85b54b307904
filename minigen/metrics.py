"""Metrics: bits per dimension for likelihood models, and sample-quality metrics for implicit models (GANs),
which give no likelihood to report.

Images, with a small MNIST classifier trained by this project (`examples/train_mnist_classifier.py`, weights
in `minigen/assets/mnist_classifier.npz`) standing in for the Inception network of FID and IS:

- FCD, the Fréchet Classifier Distance: the Fréchet (2-Wasserstein) distance between two Gaussians fitted to
  the classifier's penultimate features (128 ReLU units) of two sets of images,

      FCD = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2))          (Heusel et al. 2017, eq. 6)

  with mu, C the mean and covariance (unbiased, n - 1) of the features. Lower is better; 0 for identical
  statistics. It depends on the number of images (the covariance estimate is biased), so compare only FCDs
  computed from the same number of images.
- IS, the Inception-Score analogue: exp(E_x KL(p(y|x) || p(y))) with p(y|x) the classifier's class
  probabilities and p(y) their mean over the samples (Salimans et al. 2016). Between 1 and 10 (the number
  of classes); high when each sample is confidently one digit and all digits appear.

Both are comparable only between runs that use the same classifier weights: they measure distance in this
classifier's feature space, not in Inception's, and are not comparable with published FID / IS values.

2-D mixtures of Gaussians (8 and 25 Gaussians), as in the unrolled-GAN, VEEGAN and PacGAN papers:

- a sample is of high quality when it lies within 3 standard deviations of its nearest mode's mean (for an
  isotropic 2-D Gaussian, 1 - exp(-9/2) = 98.9% of true samples do);
- a mode is covered when at least `min_fraction` (default 0.2, PacGAN's 20 of 2500 samples on 25 modes) of
  its fair share n / K of the samples are high-quality samples assigned to it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import nn
from .nn import functional as F
from .tensor import Tensor, no_grad

CLASSIFIER_WEIGHTS = Path(__file__).parent / "assets" / "mnist_classifier.npz"


def bits_per_dim(nll: float, dims: int, levels: int = 1) -> float:
    """An NLL in nats per example as bits per dimension. For a density fit to grey levels scaled into [0, 1)
    (dequantized, divided by `levels`), the change of variables back to the levels adds D log(levels) nats:
    -log P(levels) <= nll + D log(levels)."""
    return (nll + dims * math.log(levels)) / (dims * math.log(2))


def likelihood_metrics(nll: float, spec, density: bool = True) -> dict:
    """The one convention every family reports: `nll` in nats per example on the data's own discrete scale
    where it is discrete, and `bits_per_dim` from it.

    `nll` is what the model computed: with density=True and discrete data (kind "levels" or "binary") a
    density on [0, 1)^D of the levels dequantized as y = (k + u) / L, turned into the bound
    -log P(k) <= nll + D log L (Theis et al. 2016, eq. 9); with density=False, or for kind "continuous", it is
    already on the data's scale: a probability of the discrete pixels, or a density of real vectors."""
    if density and spec.kind != "continuous":
        nll = nll + spec.dim * math.log(spec.levels)
    return {"nll": float(nll), "bits_per_dim": float(nll / (spec.dim * math.log(2)))}


# --- the classifier ----------------------------------------------------------------------------------------


class MNISTClassifier(nn.Module):
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks (16 and 32 channels), a 128-unit ReLU layer (the features
    of FCD) and a linear layer to 10 class logits. Input: images (n, 1, 28, 28) in [0, 1]."""

    def __init__(self, features: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, features)
        self.out = nn.Linear(features, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.reshape(len(h), -1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x))


def load_classifier(path: str | Path = CLASSIFIER_WEIGHTS) -> MNISTClassifier:
    """The project's trained MNIST classifier (read with allow_pickle=False), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; train it with `python examples/train_mnist_classifier.py`")
    model = MNISTClassifier()
    with np.load(path, allow_pickle=False) as weights:
        model.load_state_dict({k: weights[k] for k in weights.files})
    return model.eval()


def classifier_outputs(images: np.ndarray, classifier: MNISTClassifier | None = None,
                       batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (n, 128), class probabilities (n, 10)) in float64, for images (n, [1,] 28, 28)
    in [0, 1]."""
    classifier = classifier or load_classifier()
    images = np.asarray(images, np.float32).reshape(-1, 1, 28, 28)
    feats, probs = [], []
    with no_grad():
        for i in range(0, len(images), batch_size):
            h = classifier.features(Tensor(images[i:i + batch_size]))
            feats.append(h.numpy())
            probs.append(F.softmax(classifier.out(h), axis=1).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(probs).astype(np.float64)


# --- Fréchet distance and the Inception-Score analogue -----------------------------------------------------


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of rows of `features`."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix, by eigendecomposition."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), the squared 2-Wasserstein distance between
    N(mu1, C1) and N(mu2, C2). tr (C1 C2)^(1/2) = tr (C1^(1/2) C2 C1^(1/2))^(1/2): the eigenvalues of C1 C2
    are those of the symmetric PSD matrix C1^(1/2) C2 C1^(1/2), so the trace is the sum of their square
    roots (what scipy.linalg.sqrtm(C1 @ C2).trace() gives, without its complex round-off)."""
    s1 = _sqrt_psd(np.asarray(cov1, np.float64))
    eig = np.linalg.eigvalsh(s1 @ np.asarray(cov2, np.float64) @ s1)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def fcd(images_a: np.ndarray, images_b: np.ndarray, classifier: MNISTClassifier | None = None) -> float:
    """The Fréchet Classifier Distance between two sets of MNIST-like images in [0, 1]."""
    classifier = classifier or load_classifier()
    stats = [gaussian_statistics(classifier_outputs(x, classifier)[0]) for x in (images_a, images_b)]
    return frechet_distance(*stats[0], *stats[1])


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))) for class probabilities (n, K), p(y) = mean_x p(y|x)."""
    probs = np.asarray(probs, np.float64)
    p_y = probs.mean(axis=0)
    kl = (probs * (np.log(probs + eps) - np.log(p_y + eps))).sum(axis=1)
    return float(np.exp(kl.mean()))


def image_metrics(samples: np.ndarray, reference: np.ndarray, classifier: MNISTClassifier | None = None) -> dict:
    """FCD of `samples` against `reference` images and the IS analogue of `samples`, one classifier pass each."""
    classifier = classifier or load_classifier()
    feats, probs = classifier_outputs(samples, classifier)
    ref_feats, _ = classifier_outputs(reference, classifier)
    return {"fcd": frechet_distance(*gaussian_statistics(feats), *gaussian_statistics(ref_feats)),
            "is": inception_score(probs)}


# --- 2-D mixtures: modes covered, high-quality samples -----------------------------------------------------


def mode_statistics(samples: np.ndarray, means: np.ndarray, std: float, n_std: float = 3.0,
                    min_fraction: float = 0.2) -> dict:
    """For 2-D samples and a mixture of isotropic Gaussians N(means[k], std^2 I): the number of modes covered
    and the fraction of high-quality samples (definitions in the module docstring)."""
    samples, means = np.asarray(samples, np.float64), np.asarray(means, np.float64)
    dist = np.linalg.norm(samples[:, None, :] - means[None], axis=-1)
    nearest = dist.argmin(axis=1)
    good = dist[np.arange(len(samples)), nearest] <= n_std * std
    counts = np.bincount(nearest[good], minlength=len(means))
    threshold = max(1.0, min_fraction * len(samples) / len(means))
    return {"modes": int((counts >= threshold).sum()), "high_quality": float(good.mean())}
