"""Texture synthesis against its definitions: RPN keeps the Fourier modulus exactly, ADSN's mean periodogram
is the example's within statistical error, both are real with the example's mean (grey and colour, the
channels sharing one phase / one noise), and the periodic plus smooth decomposition: u = p + s, s harmonic
inside the image with mean 0, Delta_per p = Delta_int u."""
import math

import numpy as np
import pytest

from minigen.models.texture import adsn, periodic_component, random_phase, rpn


def _example(shape=(3, 24, 32), seed=0) -> np.ndarray:
    """A non-periodic textured image: oblique stripes, a brightness ramp and noise, a mean per channel."""
    rng = np.random.default_rng(seed)
    M, N = shape[-2:]
    y, x = np.mgrid[0:M, 0:N]
    grey = np.sin(0.7 * x + 0.4 * y) + 0.05 * x + 0.3 * rng.standard_normal((M, N))
    return np.stack([grey * (c + 1) + 10 * c for c in range(shape[0])]) if len(shape) == 3 else grey


def _laplacian_periodic(u: np.ndarray) -> np.ndarray:
    return sum(np.roll(u, k, axis) for k in (1, -1) for axis in (-2, -1)) - 4 * u


def _laplacian_interior(u: np.ndarray) -> np.ndarray:
    """sum over the neighbours inside the image of u(y) - u(x) (free boundary)."""
    out = np.zeros_like(u)
    out[..., 1:, :] += u[..., :-1, :] - u[..., 1:, :]
    out[..., :-1, :] += u[..., 1:, :] - u[..., :-1, :]
    out[..., :, 1:] += u[..., :, :-1] - u[..., :, 1:]
    out[..., :, :-1] += u[..., :, 1:] - u[..., :, :-1]
    return out


@pytest.mark.parametrize("shape", [(24, 32), (3, 24, 32), (1, 17, 9)])
def test_periodic_plus_smooth_decomposition(shape):
    u = _example(shape)
    p, s = periodic_component(u)
    np.testing.assert_allclose(p + s, u, atol=1e-12)
    np.testing.assert_allclose(_laplacian_periodic(s)[..., 1:-1, 1:-1], 0, atol=1e-10)
    np.testing.assert_allclose(s.mean(axis=(-2, -1)), 0, atol=1e-12)
    np.testing.assert_allclose(_laplacian_periodic(p), _laplacian_interior(u), atol=1e-10)


def test_periodic_component_removes_the_cross_in_the_spectrum():
    """The edge jumps of the ramp put energy on the spectrum's axes; the periodic component has far less."""
    u = _example((64, 64))
    def on_axes(a):
        power = np.abs(np.fft.fft2(a)) ** 2
        return power[0, 1:].sum() + power[1:, 0].sum()
    assert on_axes(periodic_component(u)[0]) < 0.1 * on_axes(u)


def test_random_phase_is_odd_uniform_and_zero_at_the_origin():
    theta = random_phase((16, 20), np.zeros(1), np.random.default_rng(0))
    flipped = np.roll(theta[::-1, ::-1], 1, axis=(0, 1))       # theta(-xi)
    np.testing.assert_allclose(np.exp(1j * flipped), np.exp(-1j * theta), atol=1e-12)
    assert theta[0, 0] == 0
    big = random_phase((128, 128), np.zeros(1), np.random.default_rng(1)).ravel()
    assert abs(big.mean()) < 0.05 and big.var() == pytest.approx(math.pi ** 2 / 3, rel=0.05)


@pytest.mark.parametrize("shape", [(24, 32), (3, 24, 32), (2, 15, 15)])
@pytest.mark.parametrize("periodic", [False, True])
def test_rpn_keeps_the_fourier_modulus_and_the_mean(shape, periodic):
    u = _example(shape)
    used = periodic_component(u)[0] if periodic else u
    v = rpn(u, periodic=periodic, rng=np.random.default_rng(0))
    assert v.shape == u.shape and v.dtype == np.float64
    np.testing.assert_allclose(np.abs(np.fft.fft2(v)), np.abs(np.fft.fft2(used)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(v.mean(axis=(-2, -1)), u.mean(axis=(-2, -1)), atol=1e-10)
    assert np.abs(v - u).max() > 0.1                              # a new image, not the example


def test_rpn_colour_channels_share_the_phase():
    """v_hat_c = u_hat_c exp(i theta): the phase differences between channels are those of u."""
    u = _example((3, 24, 32))
    u_hat, v_hat = np.fft.fft2(u), np.fft.fft2(rpn(u, periodic=False, rng=np.random.default_rng(2)))
    cross = lambda a: a[0] * np.conj(a[1])                          # noqa: E731
    np.testing.assert_allclose(cross(v_hat), cross(u_hat), rtol=1e-8, atol=1e-8)


def test_rpn_output_is_real_before_the_real_part_is_taken():
    """The odd phase makes u_hat exp(i theta) Hermitian, so its inverse DFT is real: the imaginary part that
    rpn drops is rounding only."""
    u = _example((24, 32))
    theta = random_phase(u.shape, u, np.random.default_rng(3))
    assert np.abs(np.fft.ifft2(np.fft.fft2(u) * np.exp(1j * theta)).imag).max() < 1e-12


@pytest.mark.parametrize("shape", [(20, 24), (3, 20, 24)])
def test_adsn_mean_periodogram_matches_the_example(shape):
    """E |DFT(v - m)|^2 = |DFT(u - m)|^2. Averaged over K draws, each frequency's ratio has standard deviation
    1/sqrt(K) (sqrt(2/K) where the DFT of the noise is real): every ratio within 6 sqrt(2/K) of 1, and the
    ratio averaged over the frequencies (about half of them independent: xi and -xi agree) within 4 standard
    errors of 1."""
    u, K = _example(shape), 400
    rng = np.random.default_rng(0)
    m = u.mean(axis=(-2, -1), keepdims=True)
    expected = np.abs(np.fft.fft2(u - m)) ** 2
    draws = [adsn(u, periodic=False, rng=rng) for _ in range(K)]
    for v in draws[:3]:
        assert v.shape == u.shape and v.dtype == np.float64
        np.testing.assert_allclose(v.mean(axis=(-2, -1)), u.mean(axis=(-2, -1)), atol=1e-10)
    periodogram = np.mean([np.abs(np.fft.fft2(v - m)) ** 2 for v in draws], axis=0)
    keep = expected > 1e-6 * expected.max()
    ratio = periodogram[keep] / expected[keep]
    assert np.abs(ratio - 1).max() < 6 * math.sqrt(2 / K)
    assert abs(ratio.mean() - 1) < 4 * math.sqrt(2 / K / ratio.size)


def test_adsn_colour_channels_share_the_noise():
    """v_c - m_c = t_c * W with one W: DFT(v_c - m_c) / DFT(u_c - m_c) is the same for every channel."""
    u = _example((3, 16, 16))
    v = adsn(u, periodic=False, rng=np.random.default_rng(4))
    centred = lambda a: np.fft.fft2(a - a.mean(axis=(-2, -1), keepdims=True))[:, 1:, 1:]   # noqa: E731
    ratio = centred(v) / centred(u)
    np.testing.assert_allclose(ratio[1], ratio[0], rtol=1e-8)
    np.testing.assert_allclose(ratio[2], ratio[0], rtol=1e-8)


def test_uint8_example_and_default_generator():
    u = (np.arange(12 * 10).reshape(12, 10) % 7 * 30).astype(np.uint8)
    for synthesize in (rpn, adsn):
        v = synthesize(u)
        assert v.shape == u.shape and np.isfinite(v).all()
        assert v.mean() == pytest.approx(u.mean(), abs=1e-9)


def test_example_script_writes_its_pictures(tmp_path):
    pytest.importorskip("sklearn", reason="the example crops scikit-learn's china.jpg")
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).parent.parent / "examples" / "texture_synthesis.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "foliage.png").exists() and (tmp_path / "stripes.png").exists()
    assert "periodic component" in done.stdout
