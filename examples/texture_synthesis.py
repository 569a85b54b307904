"""Texture synthesis from one example image by random phase noise (RPN) and asymptotic discrete spot noise
(ADSN), with and without the periodic component (Galerne, Gousseau & Morel 2011; `minigen.models.texture`).

    python examples/texture_synthesis.py                  # writes runs/texture/{foliage,stripes}.png

Two examples that need no download: a 128 x 128 patch of foliage cropped from scikit-learn's sample photo
china.jpg (colour), and a synthetic grey texture made here (oblique stripes and blobs over a brightness
ramp, so that its opposite edges do not match). Each picture has three rows:

    example              | RPN of the raw example | RPN (periodic component) | ADSN (periodic component)
    periodic component p | smooth component s     | log |DFT| of the example | log |DFT| of p
    four more draws from p: RPN, ADSN, RPN, ADSN

The raw example's edge jumps show as a bright cross on the axes of its spectrum and as horizontal and
vertical streaks in its RPN; the periodic component has neither. RPN keeps every Fourier modulus, while ADSN
multiplies each coefficient by a complex Gaussian: where the energy sits in a few coefficients (the
stripes) the ADSN draws differ visibly in contrast from one another, which the third row shows. The script
also prints, for each example, the share of the spectrum's energy (mean removed) on the two axes before and
after.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from minigen.models.texture import adsn, periodic_component, rpn
from minigen.train import image_grid, save_picture


def foliage() -> np.ndarray:
    """(3, 128, 128) in [0, 1]: trees at the bottom right of scikit-learn's china.jpg."""
    from sklearn.datasets import load_sample_image
    return load_sample_image("china.jpg")[299:427, 430:558].transpose(2, 0, 1) / 255.0


def stripes(size: int = 128, seed: int = 0) -> np.ndarray:
    """(1, size, size) in [0, 1]: oblique stripes, random soft blobs and fine noise over a brightness ramp."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(float)
    u = 0.5 * np.sin(0.45 * x + 0.25 * y) + x / size
    for cy, cx in rng.uniform(0, size, (40, 2)):
        u += 0.6 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 18.0)
    u += 0.1 * rng.standard_normal((size, size))
    return ((u - u.min()) / (u.max() - u.min()))[None]


def log_modulus(u: np.ndarray) -> np.ndarray:
    """log(1 + |DFT(u - mean)|), centred (fftshift) and scaled to [0, 1], channels averaged."""
    a = np.log1p(np.abs(np.fft.fft2(u - u.mean(axis=(-2, -1), keepdims=True)))).mean(axis=0)
    a = np.fft.fftshift(a)
    return np.broadcast_to(a / a.max(), u.shape)


def axis_energy(u: np.ndarray) -> float:
    """The share of |DFT(u - mean)|^2 on the frequency axes (xi_1 = 0 or xi_2 = 0)."""
    power = (np.abs(np.fft.fft2(u - u.mean(axis=(-2, -1), keepdims=True))) ** 2).sum(axis=0)
    return float((power[0, :].sum() + power[:, 0].sum()) / power.sum())


def panel(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The picture described in the module docstring, as uint8 (H, W, C)."""
    p, s = periodic_component(u)
    images = [u, rpn(u, periodic=False, rng=rng), rpn(u, rng=rng), adsn(u, rng=rng),
              p, s - s.min(), log_modulus(u), log_modulus(p)]
    images += [synthesize(u, rng=rng) for synthesize in (rpn, adsn, rpn, adsn)]
    return image_grid(np.stack(images), nrow=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/texture", help="folder for the pictures (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for name, u in (("foliage", foliage()), ("stripes", stripes())):
        picture = panel(u, rng)
        save_picture(picture, out / f"{name}.png", zoom=2)
        print(f"{name}: {u.shape}, spectral energy on the axes {axis_energy(u):.3f} in the example, "
              f"{axis_energy(periodic_component(u)[0]):.3f} in its periodic component -> {out / name}.png")


if __name__ == "__main__":
    main()
