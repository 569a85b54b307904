"""Where dataset files live, and the one routine that downloads any of them with checksum verification.

Data directory: the `data_dir` argument, else `$MINIGEN_DATA`, else `~/.cache/minigen`. Inside it each
dataset has its own folder, the layout of the shared copy (`MINIGEN_DATA=../shared/data` works as is):

    mnist/train-images-idx3-ubyte.gz ...            MNIST, gzip IDX
    fashion-mnist/train-images-idx3-ubyte.gz ...    Fashion-MNIST, gzip IDX
    binarized-mnist/binarized_mnist_train.amat      fixed binarized MNIST, text (or the same file .amat.gz)

Any file may also be stored gzip-compressed with a `.gz` suffix added to its name.

A missing file is downloaded from `base_url` (argument), else `$MINIGEN_DATA_URL`, else its dataset's
official address in `BASE_URLS`. A mirror (`base_url` / `$MINIGEN_DATA_URL`) has the data directory's layout:
the file is fetched from `<base_url>/<folder>/<name>`. The download streams into a temporary file next to
the destination, is checked against the checksum in `FILES`, and only then moved into place with
`os.replace` (atomic); a corrupt or truncated download is deleted and raises `ChecksumError`.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass(frozen=True)
class RemoteFile:
    """A dataset file: its path inside the data directory and the checksum of its exact bytes."""
    path: str          # "<folder>/<name>"
    algorithm: str     # "md5" or "sha256"
    digest: str


def _table(folder: str, algorithm: str, rows: dict[str, str]) -> dict[str, RemoteFile]:
    return {f"{folder}/{name}": RemoteFile(f"{folder}/{name}", algorithm, digest) for name, digest in rows.items()}


# Checksums as in ../shared/data/README.md: md5 of the gzip IDX files, sha256 of the uncompressed .amat files.
FILES: dict[str, RemoteFile] = {
    **_table("mnist", "md5", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    **_table("fashion-mnist", "md5", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    **_table("binarized-mnist", "sha256", {
        "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"}),
}

BASE_URLS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "binarized-mnist": "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
}


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published checksum (corrupt or truncated); it was discarded."""


class DataUnavailableError(FileNotFoundError):
    """Dataset files are missing and could not be downloaded; the message says where to put which file."""


class CorruptDataError(ValueError):
    """A dataset file on disk does not match its published checksum; the message names it and the fix."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: `data_dir`, else `$MINIGEN_DATA`, else `~/.cache/minigen`."""
    return Path(data_dir or os.environ.get("MINIGEN_DATA") or "~/.cache/minigen").expanduser().absolute()


def url_for(file: RemoteFile, base_url: str | None = None) -> str:
    """`<mirror>/<folder>/<name>` for a mirror (`base_url` or `$MINIGEN_DATA_URL`), else the official URL."""
    mirror = base_url or os.environ.get("MINIGEN_DATA_URL")
    if mirror:
        return f"{mirror.rstrip('/')}/{file.path}"
    folder, name = file.path.split("/")
    return BASE_URLS[folder] + name


def local_copy(path: Path) -> Path | None:
    """`path` or its gzip-compressed twin `path.gz`, whichever exists."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _digest(file: RemoteFile, path: Path) -> str:
    """The checksum of `path`'s bytes as `file` publishes it (of the uncompressed bytes when `path` is the
    gzip-compressed copy of a file published uncompressed)."""
    digest = hashlib.new(file.algorithm)
    opener = gzip.open if path.suffix == ".gz" and not file.path.endswith(".gz") else open
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _diagnose(path: Path) -> str:
    """What is wrong with a file whose checksum does not match: not gzip, truncated, or other bytes."""
    if path.suffix != ".gz":
        return "checksum mismatch: the file is corrupt or truncated"
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return "not a gzip file"
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except EOFError:
        return "truncated (the gzip stream ends early)"
    except (OSError, zlib.error):
        return "corrupt gzip data"
    return "checksum mismatch: the file holds other bytes than the published one"


_verified: dict[tuple, bool] = {}      # (path, size, mtime) of the files checked in this process


def verify(file: RemoteFile, path: Path) -> None:
    """Check a local copy against its checksum (once per process and file version); a mismatch is a one-line
    CorruptDataError saying what is wrong: not gzip, truncated, or different bytes."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    try:
        problem = None if _digest(file, path) == file.digest else _diagnose(path)
    except (OSError, EOFError, zlib.error):
        problem = _diagnose(path)
    if problem:
        raise CorruptDataError(f"{path}: {problem}. Delete it to download it again, or replace it with a good "
                               "copy")
    _verified[key] = True


def download_file(file: RemoteFile, dest: Path, url: str) -> None:
    """Stream `url` into a temporary file beside `dest`, check its checksum, then move it to `dest`.

    Nothing is left behind on failure: the temporary file is removed whatever happens, and so are the
    folders made for it.
    """
    made = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest, size = hashlib.new(file.algorithm), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != file.digest:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected {file.algorithm} {file.digest}, got {digest.hexdigest()} "
                f"({size} bytes received; the file is corrupt or truncated). It was discarded; {dest} was not "
                "written.")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        for folder in made:                  # innermost first; only the ones still empty
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()


def fetch(paths: list[str], data_dir: str | os.PathLike | None = None, base_url: str | None = None,
          download: bool = True) -> list[Path]:
    """Local paths of the files `paths` (keys of `FILES`), downloading the missing ones when `download`.

    Raises `DataUnavailableError` naming every file that is still missing, its full destination path and
    where to get it; `ChecksumError` when a download arrives corrupt or truncated.
    """
    root = resolve_data_dir(data_dir)
    found, missing = [], []
    for key in paths:
        dest, url = root / key, url_for(FILES[key], base_url)
        if local_copy(dest) is None:
            if not download:
                missing.append(f"  {dest}\n      from {url}")
                continue
            try:
                download_file(FILES[key], dest, url)
            except OSError as e:   # no network, HTTP error, timeout, unwritable directory
                missing.append(f"  {dest}\n      from {url}  (download failed: {e})")
                continue
        verify(FILES[key], local_copy(dest))
        found.append(local_copy(dest))
    if missing:
        raise DataUnavailableError(
            "dataset files are missing. Put each file at the path shown (a gzip-compressed copy named "
            "<file>.gz also works), or give the folder that holds them with --data-dir (or $MINIGEN_DATA; "
            "data_dir= in Python), laid out as above:\n" + "\n".join(missing))
    return found
