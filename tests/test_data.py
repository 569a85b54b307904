"""minigen.data: toy sets against their stated generators, U1-U4, transforms, the DataLoader's order and
resume, downloads against a local HTTP server, and the loaders on the real files in ../shared/data."""
import gzip
import hashlib
import http.server
import json
import math
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import minigen
from minigen.data import (BASE_URLS, EIGHT_GAUSSIANS, ENERGIES, FILES, TOY_DATASETS, TWENTY_FIVE_GAUSSIANS,
                          ChecksumError, DataLoader, DataUnavailableError, binarize, binarize_stochastic,
                          checkerboard, checkerboard_log_prob, checkerboard_support, compose, dequantize,
                          dynamically_binarized_mnist, energy_log_partition, fetch, load_binarized_mnist,
                          load_digits, load_fashion_mnist, load_mnist, logit_inverse, logit_transform,
                          resolve_data_dir, sample_toy, to_symmetric, to_unit, two_moons)
from minigen.data.download import url_for

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared dataset folder {SHARED} is absent")


# ---------------------------------------------------------------------------------------------------------
# Toy sets
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_shape_dtype_and_seeding(name):
    x = sample_toy(name, 1000, rng=3)
    assert x.shape == (1000, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_array_equal(x, sample_toy(name, 1000, rng=np.random.default_rng(3)))
    assert not np.array_equal(x, sample_toy(name, 1000, rng=4))


def test_unknown_toy_name():
    with pytest.raises(ValueError, match="checkerboard"):
        sample_toy("nope", 10)


@pytest.mark.parametrize("mixture, half_width", [(EIGHT_GAUSSIANS, 4.5), (TWENTY_FIVE_GAUSSIANS, 1.6)])
def test_mixture_log_prob_is_a_normalized_density_of_its_samples(mixture, half_width):
    step = mixture.std / 3
    axis = np.arange(-half_width, half_width, step) + step / 2
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    assert np.exp(mixture.log_prob(grid)).sum() * step**2 == pytest.approx(1, abs=1e-4)
    # samples: each component equally often, spread by the stated std around its mean
    x = mixture.sample(40000, rng=0).astype(np.float64)
    nearest = ((x[:, None] - mixture.means) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(mixture.means))
    assert np.abs(counts / len(x) - 1 / len(mixture.means)).max() < 0.01
    assert (x - mixture.means[nearest]).std() == pytest.approx(mixture.std, rel=0.02)


def test_mixture_conventions():
    radii = np.linalg.norm(EIGHT_GAUSSIANS.means, axis=1)
    np.testing.assert_allclose(radii, 2 * math.sqrt(2))
    assert EIGHT_GAUSSIANS.std == pytest.approx(0.5 / math.sqrt(2))
    assert len(TWENTY_FIVE_GAUSSIANS.means) == 25
    np.testing.assert_allclose(TWENTY_FIVE_GAUSSIANS.means.max(0), 4 / (2 * math.sqrt(2)))


def test_checkerboard_is_uniform_on_its_support():
    x = checkerboard(80000, rng=1)
    assert checkerboard_support(x).all()
    cells = (np.floor(x[:, 0] / 2) + 2) * 4 + np.floor(x[:, 1] / 2) + 2
    counts = np.bincount(cells.astype(int), minlength=16)
    assert (counts > 0).sum() == 8 and np.abs(counts[counts > 0] / len(x) - 1 / 8).max() < 0.01
    u = np.random.default_rng(2).uniform(-4, 4, (200000, 2))   # the support covers half of [-4, 4]^2
    assert checkerboard_support(u).mean() == pytest.approx(0.5, abs=0.005)
    assert np.exp(checkerboard_log_prob(x)) == pytest.approx(1 / 32)
    assert checkerboard_log_prob(np.array([[4.5, 0.0], [-3.0, -1.0]])).tolist() == [-np.inf, -np.inf]


def test_two_moons_mean_matches_its_generator():
    # E[(cos t, sin t)] = (0, 2/pi), E[(1 - cos t, 0.5 - sin t)] = (1, 0.5 - 2/pi); mixed, x 2 + (-1, -0.2)
    np.testing.assert_allclose(two_moons(200000, rng=0).mean(0), [0.0, 0.3], atol=0.01)


# ---------------------------------------------------------------------------------------------------------
# Energies U1-U4 (Rezende & Mohamed 2015, Table 1), against an independent NumPy transcription
# ---------------------------------------------------------------------------------------------------------

def _reference(name, z):
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    if name == "u1":
        return (0.5 * ((np.linalg.norm(z, axis=1) - 2) / 0.4) ** 2
                - np.log(np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)))
    if name == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "u3":
        return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_energy_values_and_gradients(name):
    z = np.random.default_rng(0).uniform(-4, 4, (64, 2))
    u = ENERGIES[name](minigen.Tensor(z))
    assert u.shape == (64,)
    np.testing.assert_allclose(u.numpy(), _reference(name, z), rtol=1e-10, atol=1e-10)
    minigen.gradcheck(ENERGIES[name], [minigen.Tensor(z, requires_grad=True)], mode="full")
    u32 = ENERGIES[name](minigen.Tensor(z.astype(np.float32)))
    assert u32.dtype == np.float32


def test_energy_log_partition_on_the_strip():
    # U2: for each z1 the z2-integral is that of a Gaussian with std 0.4; the strip |z1| <= 4 has width 8
    assert energy_log_partition(ENERGIES["u2"]) == pytest.approx(math.log(8 * math.sqrt(2 * math.pi) * 0.4),
                                                                 abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------

def test_scaling():
    x = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(to_unit(x), [0, 0.2, 1])
    np.testing.assert_allclose(to_symmetric(x), [-1, -0.6, 1], atol=1e-7)
    assert to_unit(x).dtype == to_symmetric(x).dtype == np.float32


def test_dequantize_spreads_each_level_over_its_bin():
    x = np.arange(256, dtype=np.uint8).repeat(50)
    y = dequantize(x, np.random.default_rng(0))
    assert y.dtype == np.float32 and (y >= 0).all() and (y <= 1).all()
    bin_offset = y.astype(np.float64) * 256 - x                 # in [0, 1] up to float32 rounding
    assert bin_offset.min() > -1e-4 and bin_offset.max() < 1 + 1e-4 and abs(bin_offset.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(y, dequantize(x / 255, np.random.default_rng(0)))
    digit_levels = np.arange(17) / 16
    offset = dequantize(digit_levels, np.random.default_rng(1), levels=17).astype(np.float64) * 17 - np.arange(17)
    assert offset.min() > -1e-5 and offset.max() < 1 + 1e-5


def test_binarization():
    x = np.array([0.2, 0.49, 0.5, 1.0], np.float32)
    np.testing.assert_array_equal(binarize(x), [0, 0, 1, 1])
    p = np.linspace(0, 1, 11).repeat(20000).astype(np.float32)
    b = binarize_stochastic(p, np.random.default_rng(0))
    assert set(np.unique(b)) <= {0.0, 1.0} and b.dtype == np.float32
    np.testing.assert_allclose(b.reshape(11, -1).mean(1), np.linspace(0, 1, 11), atol=0.01)


@pytest.mark.parametrize("alpha", [0.05, 1e-6])
def test_logit_log_det_is_the_exact_log_jacobian(alpha):
    x = np.random.default_rng(0).uniform(0, 1, (5, 3, 4))
    y, log_det = logit_transform(x, alpha)
    assert y.shape == x.shape and log_det.shape == (5,)
    p = alpha + (1 - 2 * alpha) * x
    np.testing.assert_allclose(y.numpy(), np.log(p / (1 - p)), rtol=1e-12)
    # the map is elementwise: the Jacobian is diagonal, its entries by central differences
    eps = 1e-6
    slope = (logit_transform(x + eps, alpha)[0].numpy() - logit_transform(x - eps, alpha)[0].numpy()) / (2 * eps)
    np.testing.assert_allclose(log_det.numpy(), np.log(slope).reshape(5, -1).sum(1), rtol=1e-7)
    # and by autodiff
    xt = minigen.Tensor(x, requires_grad=True)
    logit_transform(xt, alpha)[0].sum().backward()
    np.testing.assert_allclose(np.log(xt.grad.numpy()).reshape(5, -1).sum(1), log_det.numpy(), rtol=1e-12)
    np.testing.assert_allclose(logit_inverse(y, alpha).numpy(), x, atol=1e-9)


def test_compose_passes_rng_only_to_random_steps():
    f = compose(dequantize, to_symmetric)
    y = f(np.arange(256, dtype=np.uint8), np.random.default_rng(0))
    assert (y >= -1).all() and (y < 1).all()
    np.testing.assert_array_equal(y, f(np.arange(256, dtype=np.uint8), np.random.default_rng(0)))


# ---------------------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------------------

def _arrays(n=103):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return x, np.arange(n, dtype=np.int64)


def _epoch(loader):
    return [tuple(t.numpy() for t in batch) for batch in loader]


def test_loader_batches_cover_each_example_once_per_epoch():
    x, y = _arrays()
    loader = DataLoader(x, y, batch_size=10, seed=0)
    assert len(loader) == 11 and len(DataLoader(x, y, batch_size=10, drop_last=True)) == 10
    first, second = _epoch(loader), _epoch(loader)
    for epoch in (first, second):
        assert [len(b[1]) for b in epoch] == [10] * 10 + [3]
        labels = np.concatenate([b[1] for b in epoch])
        assert sorted(labels) == list(range(103))
        np.testing.assert_array_equal(np.concatenate([b[0] for b in epoch]), x[labels])   # rows stay aligned
    assert not np.array_equal(first[0][1], second[0][1])      # reshuffled
    assert loader.epoch == 2
    again = _epoch(DataLoader(x, y, batch_size=10, seed=0))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again))


def test_loader_yields_tensors_and_keeps_order_without_shuffle():
    x, y = _arrays()
    batches = list(DataLoader(x, y, batch_size=50, shuffle=False, drop_last=True))
    assert len(batches) == 2 and all(isinstance(t, minigen.Tensor) for b in batches for t in b)
    np.testing.assert_array_equal(batches[1][1].numpy(), np.arange(50, 100))
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int64


def test_loader_seed_none_follows_manual_seed():
    x, y = _arrays()
    minigen.manual_seed(5)
    a = _epoch(DataLoader(x, y, batch_size=10))
    minigen.manual_seed(5)
    b = _epoch(DataLoader(x, y, batch_size=10))
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(a, b))


def test_random_transform_is_fresh_each_epoch_and_reproducible():
    x = np.full((40, 8), 128, np.uint8)
    loader = DataLoader(x, batch_size=40, shuffle=False, seed=1, transform=binarize_stochastic)
    (e0,), (e1,) = _epoch(loader), _epoch(loader)
    assert e0[0].dtype == np.float32 and not np.array_equal(e0[0], e1[0])
    (r0,) = _epoch(DataLoader(x, batch_size=40, shuffle=False, seed=1, transform=binarize_stochastic))
    np.testing.assert_array_equal(e0[0], r0[0])


@pytest.mark.parametrize("stop_after", [4, 11, 15])   # mid-epoch, right after an epoch's last batch, later
def test_loader_resumes_exactly_from_a_json_state(stop_after):
    x, y = _arrays()
    make = lambda: DataLoader(x, y, batch_size=10, seed=7, transform=dequantize)  # noqa: E731
    full = make()
    reference = [b for _ in range(3) for b in _epoch(full)]
    run = make()
    seen, it = [], iter(run)
    while len(seen) < stop_after:
        try:
            seen.append(tuple(t.numpy() for t in next(it)))
        except StopIteration:
            it = iter(run)
    state = json.loads(json.dumps(run.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    while len(seen) < len(reference):
        seen += _epoch(resumed)
    assert len(seen) == len(reference)
    for a, b in zip(seen, reference):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_loader_rejects_bad_input():
    x, y = _arrays()
    with pytest.raises(ValueError, match="equal length"):
        DataLoader(x, y[:5], batch_size=4)
    state = DataLoader(x, y, batch_size=4).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, batch_size=5).load_state_dict(state)


@pytest.mark.gpu
@pytest.mark.skipif(not minigen.cuda_available(), reason="needs CuPy and a CUDA GPU")
def test_loader_on_cuda():
    x, y = _arrays()
    xb, yb = next(iter(DataLoader(x, y, batch_size=8, device="cuda", seed=0)))
    assert xb.device == yb.device == "cuda"


# ---------------------------------------------------------------------------------------------------------
# Downloads, against a local HTTP server serving copies of the shared files
# ---------------------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` (URL path -> bytes); `server.cut` (URL path -> n) closes after n bytes while
    announcing the full length, like a dropped connection."""

    def do_GET(self):
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:self.server.cut.get(self.path, len(body))])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut = {}, {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


LABELS = "mnist/t10k-labels-idx1-ubyte.gz"


def _labels_bytes():
    return (SHARED / LABELS).read_bytes()


@needs_shared
def test_download_good_file_is_verified_and_moved_into_place(server, tmp_path):
    server.files["/" + LABELS] = _labels_bytes()
    path, = fetch([LABELS], data_dir=tmp_path, base_url=server.url)
    assert path == tmp_path / LABELS and path.read_bytes() == _labels_bytes()
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == ["t10k-labels-idx1-ubyte.gz"]
    del server.files["/" + LABELS]
    assert fetch([LABELS], data_dir=tmp_path, base_url=server.url) == [path]    # present: no download


@needs_shared
@pytest.mark.parametrize("damage", ["corrupt", "truncated", "dropped connection"])
def test_bad_download_is_rejected_and_leaves_nothing(server, tmp_path, damage):
    good = _labels_bytes()
    if damage == "corrupt":
        server.files["/" + LABELS] = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    elif damage == "truncated":
        server.files["/" + LABELS] = good[:len(good) // 2]
    else:
        server.files["/" + LABELS], server.cut["/" + LABELS] = good, len(good) // 2
    with pytest.raises(ChecksumError, match="checksum mismatch.*md5 ec29112dd5afa0611ce80d1b7f02629c"):
        fetch([LABELS], data_dir=tmp_path, base_url=server.url)
    assert not (tmp_path / "mnist").exists()               # nor the folder made for it


@needs_shared
def test_download_binarized_mnist_checked_by_sha256_of_the_text(server, tmp_path, monkeypatch):
    text = gzip.decompress((SHARED / "binarized-mnist/binarized_mnist_test.amat.gz").read_bytes())
    server.files["/binarized-mnist/binarized_mnist_test.amat"] = text
    monkeypatch.setenv("MINIGEN_DATA_URL", server.url)
    monkeypatch.setenv("MINIGEN_DATA", str(tmp_path))
    x = load_binarized_mnist("test")
    assert x.shape == (10000, 28, 28) and (tmp_path / "binarized-mnist/binarized_mnist_test.amat").is_file()


@needs_shared
def test_mnist_loads_through_the_mirror(server, tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        server.files[f"/mnist/{name}"] = (SHARED / "mnist" / name).read_bytes()
    x, y = load_mnist("test", data_dir=tmp_path, base_url=server.url + "/")
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist()[:2] == [980, 1135]


def test_no_network_error_says_what_to_put_where(tmp_path):
    with socket.socket() as s:     # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataUnavailableError) as info:
        load_mnist("train", data_dir=tmp_path, base_url=f"http://127.0.0.1:{port}")
    message = str(info.value)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert str(tmp_path / "mnist" / name) in message
        assert f"http://127.0.0.1:{port}/mnist/{name}" in message
    assert not any(tmp_path.rglob("*.*"))
    with pytest.raises(DataUnavailableError, match="fashion-mnist/t10k-images"):
        load_fashion_mnist("test", data_dir=tmp_path, download=False)


def test_data_dir_and_official_urls(monkeypatch):
    monkeypatch.delenv("MINIGEN_DATA", raising=False)
    monkeypatch.delenv("MINIGEN_DATA_URL", raising=False)
    assert resolve_data_dir() == Path.home() / ".cache" / "minigen"
    monkeypatch.setenv("MINIGEN_DATA", "/some/where")
    assert resolve_data_dir() == Path("/some/where") and resolve_data_dir("/else") == Path("/else")
    file = FILES["binarized-mnist/binarized_mnist_valid.amat"]
    assert url_for(file) == BASE_URLS["binarized-mnist"] + "binarized_mnist_valid.amat"
    assert url_for(FILES[LABELS], "http://m/") == "http://m/" + LABELS


# ---------------------------------------------------------------------------------------------------------
# The real files in ../shared/data
# ---------------------------------------------------------------------------------------------------------

@needs_shared
def test_checksum_table_matches_the_shared_files():
    for key, file in FILES.items():
        path = SHARED / key
        data = path.read_bytes() if path.is_file() else gzip.decompress((SHARED / (key + ".gz")).read_bytes())
        assert hashlib.new(file.algorithm, data).hexdigest() == file.digest, key


@needs_shared
@pytest.mark.parametrize("split, n, counts, mean", [
    ("train", 60000, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], 33.318),
    ("test", 10000, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009], 33.791)])
def test_mnist(split, n, counts, mean):
    x, y = load_mnist(split, data_dir=SHARED, download=False)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8 and y.shape == (n,) and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 255 and x.mean() == pytest.approx(mean, abs=1e-3)
    assert np.bincount(y).tolist() == counts


@needs_shared
@pytest.mark.parametrize("split, n, mean", [("train", 60000, 72.940), ("test", 10000, 73.147)])
def test_fashion_mnist(split, n, mean):
    x, y = load_fashion_mnist(split, data_dir=SHARED, download=False)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert x.mean() == pytest.approx(mean, abs=1e-3) and np.bincount(y).tolist() == [n // 10] * 10


@needs_shared
@pytest.mark.parametrize("split, n, ones", [("train", 50000, 0.1306), ("valid", 10000, 0.1311),
                                            ("test", 10000, 0.1325)])
def test_binarized_mnist_from_gzipped_amat(split, n, ones):
    x = load_binarized_mnist(split, data_dir=SHARED, download=False)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8 and set(np.unique(x)) == {0, 1}
    assert x.mean() == pytest.approx(ones, abs=1e-4)


@needs_shared
def test_dynamically_binarized_mnist():
    make = lambda: dynamically_binarized_mnist(batch_size=10000, split="test", seed=0, shuffle=False,  # noqa: E731
                                               data_dir=SHARED, download=False)
    loader = make()
    (a, labels), = _epoch(loader)
    (b, _), = _epoch(loader)
    assert a.shape == (10000, 28, 28) and a.dtype == np.float32 and labels.dtype == np.int64
    assert set(np.unique(a)) == {0.0, 1.0} and a.mean() == pytest.approx(33.791 / 255, abs=0.002)
    assert (a != b).mean() > 0.02                          # the same images, binarized afresh
    np.testing.assert_array_equal(a, _epoch(make())[0][0])  # and reproducibly


def test_digits():
    pytest.importorskip("sklearn", reason="scikit-learn (optional) is not installed")
    x, y = load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 1 and set(np.unique(x * 16)) <= set(range(17))


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()
