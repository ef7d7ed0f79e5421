"""Data sources and splits: Fashion-MNIST (IDX), CIFAR-10 and ImageFolder on generated files."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from apq_lib.config import DataConfig
from apq_lib.data import (
    DatasetNotFoundError,
    find_fashion_mnist,
    load_data,
    read_idx,
    split_indices,
)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.fixture
def fake_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "fm"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (300, 28, 28)))
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(300) % 10)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(50) % 10)
    return d


def test_split_is_deterministic_and_disjoint():
    a_tr, a_va = split_indices(1000, 100, seed=3)
    b_tr, b_va = split_indices(1000, 100, seed=3)
    assert torch.equal(a_tr, b_tr) and torch.equal(a_va, b_va)
    assert len(a_va) == 100 and len(a_tr) == 900
    assert not set(a_tr.tolist()) & set(a_va.tolist())
    assert set(a_tr.tolist()) | set(a_va.tolist()) == set(range(1000))
    _, c_va = split_indices(1000, 100, seed=4)
    assert not torch.equal(a_va, c_va)


def test_split_rejects_bad_size():
    with pytest.raises(ValueError, match="val_size"):
        split_indices(10, 10, 0)


def test_fmnist_from_explicit_root(fake_fmnist, monkeypatch):
    monkeypatch.delenv("APQ_DATA_DIR", raising=False)
    b = load_data(DataConfig(val_size=30, root=str(fake_fmnist)))
    assert (len(b.train), len(b.val), len(b.test)) == (270, 30, 50)
    assert b.num_classes == 10 and b.in_channels == 1
    x, y = next(iter(b.loader("test", batch_size=16)))
    assert x.shape == (16, 1, 32, 32) and y.dtype == torch.int64
    # the padding ring is background: raw 0 -> normalised (0 - mean) / std
    assert torch.allclose(x[:, :, 0, :], torch.full_like(x[:, :, 0, :], -0.2860 / 0.3530))
    # values inside equal the raw images, normalised
    raw = read_idx(fake_fmnist / "t10k-images-idx3-ubyte.gz")[:16]
    ref = (torch.from_numpy(raw.copy()).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(x[:, 0, 2:30, 2:30], ref, atol=1e-6)


def test_fmnist_from_env_var(fake_fmnist, monkeypatch):
    monkeypatch.setenv("APQ_DATA_DIR", str(fake_fmnist))
    files = find_fashion_mnist(None, download=False)
    assert files["train_images"].parent == fake_fmnist


def test_debian_location_used(monkeypatch, fake_fmnist):
    import apq_lib.data as data
    monkeypatch.delenv("APQ_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FMNIST_DIR", fake_fmnist)
    assert find_fashion_mnist(None, download=False)["test_labels"].parent == fake_fmnist


def test_missing_dataset_message_lists_three_ways(monkeypatch, tmp_path):
    import apq_lib.data as data
    monkeypatch.delenv("APQ_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FMNIST_DIR", tmp_path / "none")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(DatasetNotFoundError) as e:
        find_fashion_mnist(str(tmp_path / "empty"), download=False)
    msg = str(e.value)
    assert "APQ_DATA_DIR" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "download" in msg


def test_corrupted_idx_is_reported(tmp_path):
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x00" * 5)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def test_train_loader_deterministic_per_epoch(fake_fmnist):
    b = load_data(DataConfig(val_size=30, root=str(fake_fmnist), batch_size=32))
    l1, l2 = b.loader("train", seed=1), b.loader("train", seed=1)
    x1, y1 = next(iter(l1))
    x2, y2 = next(iter(l2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    l2.set_epoch(1)
    x3, _ = next(iter(l2))
    assert not torch.equal(x1, x3)


def test_rank_sharding_is_disjoint(fake_fmnist):
    b = load_data(DataConfig(val_size=30, root=str(fake_fmnist), batch_size=1000,
                             augment=False))
    ys = []
    for r in range(2):
        l = b.loader("train", seed=0, rank=r, world_size=2)
        ys.append(l._indices())
    assert not set(ys[0].tolist()) & set(ys[1].tolist())
    assert len(ys[0]) == len(ys[1]) == 135


def _write_cifar(root, n_train=60, n_test=20):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    per = n_train // 5
    for i in range(1, 6):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                         "labels": list(rng.integers(0, 10, per))}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     "labels": list(rng.integers(0, 10, n_test))}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar10_loader(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    _write_cifar(tmp_path)
    b = load_data(DataConfig(dataset="cifar10", root=str(tmp_path), val_size=10,
                             download=False))
    assert (len(b.train), len(b.val), len(b.test)) == (50, 10, 20)
    assert b.in_channels == 3
    x, y = next(iter(b.loader("train", batch_size=8)))
    assert x.shape == (8, 3, 32, 32)


def test_cifar10_missing(tmp_path, monkeypatch):
    import apq_lib.data as data
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("APQ_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10"):
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path), download=False))


def test_imagefolder_loader(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog", "emu"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    d / f"{i}.png")
    b = load_data(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=3,
                             image_size=32, batch_size=4))
    assert b.num_classes == 3
    assert (len(b.train), len(b.val), len(b.test)) == (15, 3, 6)
    x, y = next(iter(b.loader("val")))
    assert x.shape == (3, 3, 32, 32)
    x, y = next(iter(b.loader("train")))
    assert x.shape == (4, 3, 32, 32)


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ImageFolder"):
        load_data(DataConfig(dataset="imagefolder", root=str(tmp_path)))
