"""MNIST source: find, verify and read the four IDX files.

Search order (first folder that holds all four files, raw or ``.gz``, wins):

1. an explicit folder (``--mnist DIR`` / ``mnist_dir=``): it must hold the files, nothing else is tried;
2. ``$BIASBENCH_MNIST_DIR``;
3. ``data/mnist/`` in the source checkout (shipped with the repository) and in the working directory;
4. the user cache, ``$XDG_CACHE_HOME/biasbench/mnist`` (default ``~/.cache/biasbench/mnist``);
5. a download from the standard mirrors into the cache (``download=True``).

Every file is checked against the MD5 of its **uncompressed** bytes (the canonical release); a
missing or corrupt file raises :class:`BiasbenchError` naming the file, the expected checksum and how
to provide the data. IDX parsing is one ``np.frombuffer`` per file, no per-image Python.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BiasbenchError

FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
"""MD5 of the uncompressed canonical files."""

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

HOW_TO_PROVIDE = (
    "provide the four MNIST IDX files (raw or .gz) with --mnist DIR or $BIASBENCH_MNIST_DIR, "
    "or allow the download into the cache"
)


@dataclass(frozen=True)
class MNIST:
    """Both MNIST splits as uint8 arrays: images (N, 28, 28), labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise BiasbenchError(f"unknown MNIST split {name!r}; expected 'train' or 'test'")

    @property
    def checksums(self) -> dict[str, str]:
        return dict(FILES)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "biasbench" / "mnist"


def _checkout_dir() -> Path:
    # src/biasbench/data/mnist.py -> repository root
    return Path(__file__).resolve().parents[3] / "data" / "mnist"


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_all(folder: Path) -> bool:
    return folder.is_dir() and all(_file_in(folder, s) is not None for s in FILES)


def candidate_dirs(explicit: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched, in order, each with a short description."""
    if explicit is not None:
        return [("--mnist", Path(explicit))]
    out = []
    env = os.environ.get("BIASBENCH_MNIST_DIR")
    if env:
        out.append(("$BIASBENCH_MNIST_DIR", Path(env)))
    out.append(("checkout data/mnist", _checkout_dir()))
    out.append(("working-directory data/mnist", Path.cwd() / "data" / "mnist"))
    out.append(("user cache", cache_dir()))
    return out


def locate(explicit: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the folder holding all four files, downloading into the cache if allowed."""
    cands = candidate_dirs(explicit)
    if explicit is not None:
        folder = cands[0][1]
        for stem, md5 in FILES.items():
            if _file_in(folder, stem) is None:
                raise BiasbenchError(
                    f"MNIST file {stem} (or {stem}.gz) not found in {folder} "
                    f"(expected MD5 of the uncompressed file {md5}); {HOW_TO_PROVIDE}"
                )
        return folder
    for _, folder in cands:
        if _has_all(folder):
            return folder
    if not download:
        where = ", ".join(str(p) for _, p in cands)
        raise BiasbenchError(f"MNIST not found (looked in {where}); {HOW_TO_PROVIDE}")
    return download_to_cache()


def download_to_cache(mirrors: tuple[str, ...] | None = None) -> Path:
    """Download the four ``.gz`` files into the cache, verifying each, trying mirrors in order.

    ``$BIASBENCH_MNIST_MIRRORS`` (comma-separated base URLs) overrides the mirror list.
    """
    env = os.environ.get("BIASBENCH_MNIST_MIRRORS")
    mirrors = tuple(env.split(",")) if env else (mirrors or MIRRORS)
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    for stem, md5 in FILES.items():
        if _file_in(target, stem) is not None:
            try:
                verify_file(target, stem)
                continue
            except BiasbenchError:
                pass
        errors = []
        for base in mirrors:
            tmp_name = f".{stem}.gz.part"
            try:
                _fetch(base.rstrip("/") + f"/{stem}.gz", target / tmp_name)
                data = gzip.decompress((target / tmp_name).read_bytes())
                if hashlib.md5(data).hexdigest() != md5:
                    raise BiasbenchError(f"checksum mismatch from {base}")
                os.replace(target / tmp_name, target / f"{stem}.gz")
                break
            except Exception as exc:  # network errors, bad gzip, bad checksum: try the next mirror
                errors.append(f"{base}: {exc}")
                if (target / tmp_name).exists():
                    (target / tmp_name).unlink()
        else:
            raise BiasbenchError(
                f"could not download MNIST file {stem}.gz (expected MD5 of the uncompressed file {md5}) "
                f"from any mirror ({'; '.join(errors)}); {HOW_TO_PROVIDE}"
            )
    return target


def _fetch(url: str, path: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` (http(s) or file) to ``path`` with a progress bar on a terminal."""
    import sys
    import urllib.request

    from tqdm.auto import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "biasbench"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(path, "wb") as fh:
        total = resp.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, leave=False,
                  desc=url.rsplit("/", 1)[-1], disable=not sys.stderr.isatty()) as bar:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
                bar.update(len(chunk))


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise BiasbenchError(f"MNIST file {path} is not a valid gzip file ({exc}); {HOW_TO_PROVIDE}") from None
    return raw


def verify_file(folder: Path, stem: str) -> bytes:
    """Read ``stem`` (raw or .gz) from ``folder`` and check the MD5 of its uncompressed bytes."""
    path = _file_in(folder, stem)
    expected = FILES[stem]
    if path is None:
        raise BiasbenchError(
            f"MNIST file {stem} not found in {folder} (expected MD5 of the uncompressed file {expected}); "
            f"{HOW_TO_PROVIDE}"
        )
    data = _read_bytes(path)
    got = hashlib.md5(data).hexdigest()
    if got != expected:
        raise BiasbenchError(
            f"MNIST file {path} is corrupt: MD5 of the uncompressed bytes is {got}, expected {expected}; "
            f"{HOW_TO_PROVIDE}"
        )
    return data


def parse_idx(data: bytes) -> np.ndarray:
    """Parse an IDX byte string (unsigned-byte data only, as MNIST uses) into an array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise BiasbenchError("not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 0
    if len(data) - offset != count:
        raise BiasbenchError(f"IDX file size does not match its header shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str) -> MNIST:
    folder_p = Path(folder)
    arrays = {stem: parse_idx(verify_file(folder_p, stem)) for stem in FILES}
    return MNIST(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"],
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
        source=str(folder_p),
    )


def load_mnist(mnist_dir: str | os.PathLike | None = None, download: bool = True) -> MNIST:
    """Locate, verify and read MNIST (cached per folder within a process)."""
    folder = locate(mnist_dir, download=download)
    return _load_cached(str(folder.resolve()))
