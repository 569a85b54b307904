"""Stationary Gaussian textures from one example image, by FFT (Galerne, Gousseau & Morel 2011, "Random
phase textures: theory and synthesis", IEEE Trans. Image Processing 20(1)).

An example u of size M x N (channels first: (M, N) or (C, M, N)) with channel means m gives two random
textures with u's power spectrum, written with the DFT u_hat(xi):

- RPN, random phase noise: v_hat = u_hat exp(i theta), theta a random phase: uniform, odd
  (theta(-xi) = -theta(xi), so that v is real) and 0 at xi = 0 (so that v keeps the mean). The phase of the
  DFT of a white noise image is such a field (at xi = 0 it is 0 or pi, and set to 0). RPN keeps the Fourier
  modulus exactly.
- ADSN, asymptotic discrete spot noise: the limit of a spot noise with spot t = (u - m) / sqrt(MN),
  v = m + t * W with W Gaussian white noise and * the periodic convolution (v_hat = t_hat W_hat off xi = 0):
  the Gaussian field whose covariance is the autocorrelation of t, so E |DFT(v - m)|^2 = |DFT(u - m)|^2.

Colour: one theta (RPN) or one W (ADSN) for all channels; v_hat_c = u_hat_c exp(i theta) keeps the phase
differences between channels, so the colours are not mixed.

The DFT treats u as periodic: the jumps between its opposite edges put a cross of energy along the axes of
the spectrum, which RPN and ADSN turn into horizontal and vertical streaks. Both therefore use the periodic
component p of Moisan's periodic plus smooth decomposition u = p + s (Moisan 2011, "Periodic plus smooth
image decomposition", J. Math. Imaging Vision 39): s is harmonic inside the image (its discrete Laplacian is
zero there), takes the edge jumps, and has mean 0.

Plain array code (no gradients here): NumPy or CuPy, whichever holds the input, with random draws from
minigen's generator of that device unless an `rng` is given.
"""
from __future__ import annotations

import math

from .. import backend


def _as_float(u):
    """u as float64 on its own array module (uint8 images included)."""
    return backend.get_array_module(u).asarray(u, dtype="float64")


def _rng(u, rng):
    return rng if rng is not None else backend.generator(backend.device_of(u))


def periodic_component(u) -> tuple:
    """(p, s) with u = p + s: Moisan's periodic component p and smooth component s, channel by channel over
    the last two axes. s solves Delta_per s = v (Delta_per the periodic 5-point Laplacian; mean(s) = 0) with
    v the boundary image, v(x) = sum of u(y) - u(x) over the neighbours y of x that only the periodic
    extension has (across the opposite edge); then Delta_per p = Delta_int u, the Laplacian of u that sees
    only neighbours inside the image (Moisan 2011). In Fourier, Delta_per has eigenvalues
    2 cos(2 pi q / M) + 2 cos(2 pi r / N) - 4."""
    u = _as_float(u)
    xp = backend.get_array_module(u)
    M, N = u.shape[-2:]
    v = xp.zeros_like(u)
    jump = u[..., -1, :] - u[..., 0, :]          # across the bottom / top edge
    v[..., 0, :] += jump
    v[..., -1, :] -= jump
    jump = u[..., :, -1] - u[..., :, 0]          # across the right / left edge
    v[..., :, 0] += jump
    v[..., :, -1] -= jump
    eigenvalues = (2 * xp.cos(2 * math.pi * xp.arange(M) / M)[:, None]
                   + 2 * xp.cos(2 * math.pi * xp.arange(N) / N)[None, :] - 4)
    eigenvalues[0, 0] = 1.0                      # the constant mode: s_hat(0) = 0 below
    s_hat = xp.fft.fft2(v) / eigenvalues
    s_hat[..., 0, 0] = 0
    s = xp.fft.ifft2(s_hat).real
    return u - s, s


def random_phase(shape: tuple, like, rng=None):
    """A random phase field theta (M, N) on `like`'s array module: the phase of the DFT of Gaussian white
    noise (uniform, odd, 0 or pi where the DFT is real), with theta(0) = 0."""
    eps = _rng(like, rng).standard_normal(tuple(shape))
    theta = backend.get_array_module(like).angle(backend.get_array_module(like).fft.fft2(eps))
    theta[0, 0] = 0.0
    return theta


def rpn(u, periodic: bool = True, rng=None):
    """A random phase noise of the example u ((M, N) or (C, M, N)): v_hat = u_hat exp(i theta), one theta
    for every channel; u replaced by its periodic component first unless periodic=False. Same shape as u,
    float64, real, with u's mean and exactly the Fourier modulus of the image used (p, or u itself)."""
    u = periodic_component(u)[0] if periodic else _as_float(u)
    xp = backend.get_array_module(u)
    theta = random_phase(u.shape[-2:], u, rng)
    return xp.fft.ifft2(xp.fft.fft2(u) * xp.exp(1j * theta)).real


def adsn(u, periodic: bool = True, rng=None):
    """An asymptotic discrete spot noise of the example u ((M, N) or (C, M, N)): m + t * W with spot
    t = (u - m) / sqrt(MN), one white noise W for every channel, periodic convolution by FFT; u replaced by
    its periodic component first unless periodic=False. Same shape as u, float64, with u's mean."""
    u = periodic_component(u)[0] if periodic else _as_float(u)
    xp = backend.get_array_module(u)
    M, N = u.shape[-2:]
    m = u.mean(axis=(-2, -1), keepdims=True)
    t = (u - m) / math.sqrt(M * N)
    W = _rng(u, rng).standard_normal((M, N))
    return m + xp.fft.ifft2(xp.fft.fft2(t) * xp.fft.fft2(W)).real
