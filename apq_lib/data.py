"""Datasets and splits: Fashion-MNIST (default), CIFAR-10 and any ImageFolder tree.

Splits: ``train``; ``val``, held out from the training set with a fixed seed and used by
every search and predictor stage; ``test``, for final reporting only.

Reading and checking the datasets is here; the in-memory sets, loaders and splits are in
:mod:`apq_lib.batching` (re-exported). Fashion-MNIST and CIFAR-10 are kept in memory as
uint8 tensors and batched without per-image Python transforms (random crop + flip are
applied to whole batches), which is what makes CPU training of the supernet practical.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torchvision
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2 as T

from .batching import (  # noqa: F401  (re-exported; _torch_loader, _cap: used here)
    BatchLoader,
    DataBundle,
    TensorImageSet,
    _cap,
    _torch_loader,
    cycle,
    materialize,
    split_indices,
)
from .config import DataConfig

__all__ = [
    "DatasetNotFoundError", "TensorImageSet", "DataBundle", "BatchLoader", "load_data",
    "split_indices", "find_fashion_mnist", "DEBIAN_FMNIST_DIR", "read_idx", "cycle",
    "CorruptDatasetError", "materialize",
]

DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("APQ_CACHE_DIR") or Path.home() / ".cache" / "apq"
                 ).expanduser().absolute()
_REFETCH = ("delete it and fetch it again: `sudo apt-get install --reinstall "
            "dataset-fashion-mnist` for the system copy, or remove it from the cache "
            "and let torchvision download it (data.download: true)")
_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is in none of the places searched; the message says how to provide it."""


class CorruptDatasetError(ValueError):
    """A dataset file is truncated or corrupted; the message names it and how to re-fetch."""


def _missing(dataset: str, searched: Sequence[str]) -> DatasetNotFoundError:
    where = "\n".join(f"  - {s}" for s in searched)
    return DatasetNotFoundError(
        f"{dataset} was not found. Searched:\n{where}\nProvide it in one of three ways:\n"
        f"  1. pass a directory (profile key data.root, or load_data(root=...)) or set the "
        f"APQ_DATA_DIR environment variable to a directory holding the files;\n"
        f"  2. on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist (installs into "
        f"{DEBIAN_FMNIST_DIR}; `make setup` does this when run as root);\n"
        f"  3. allow torchvision to download it (data.download: true) on a machine with "
        f"internet access; it is cached in {CACHE_DIR}.")


# --------------------------------------------------------------------------- readers
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptDatasetError(f"{path}: truncated or corrupted archive ({type(e).__name__}: "
                                  f"{e}); {_REFETCH}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CorruptDatasetError(f"{path} is not an unsigned-byte IDX file (corrupted "
                                  f"download?); {_REFETCH}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise CorruptDatasetError(f"{path}: expected {int(np.prod(dims))} values, found "
                                  f"{arr.size} (truncated file?); {_REFETCH}")
    return arr.reshape(dims)


def _fmnist_files_in(d: Path) -> Optional[dict[str, Path]]:
    for base in (d, d / "FashionMNIST" / "raw", d / "fashion-mnist"):
        found = {}
        for k, stem in _FMNIST_FILES.items():
            for cand in (base / stem, base / f"{stem}.gz"):
                if cand.exists():
                    found[k] = cand
                    break
        if len(found) == 4:
            return found
    return None


def find_fashion_mnist(root: Optional[str] = None, download: bool = True) -> dict[str, Path]:
    """Locate the four IDX files: ``root`` / ``$APQ_DATA_DIR``, Debian's package, download.

    A directory given explicitly (``root`` or a set ``APQ_DATA_DIR``, even an empty one)
    must hold the dataset: it is an error naming it, never a silent fall-back elsewhere."""
    for cand, label in ((root, "data.root"), (os.environ.get("APQ_DATA_DIR"), "APQ_DATA_DIR")):
        if cand is None:
            continue
        where = Path(cand).expanduser().absolute() if cand.strip() else None
        files = _fmnist_files_in(where) if where is not None else None
        if files:
            return files
        what = f"{label}={cand!r} is empty" if where is None else \
            f"{label}={where} does not hold the four Fashion-MNIST IDX files"
        names = ", ".join(f + "[.gz]" for f in _FMNIST_FILES.values())
        err = _missing("Fashion-MNIST", [f"{label}={where or repr(cand)}"])
        raise DatasetNotFoundError(f"{what} ({names}, directly or under FashionMNIST/raw); "
                                   f"fix or unset it.\n{err}")
    searched = []
    searched.append(str(DEBIAN_FMNIST_DIR))
    files = _fmnist_files_in(DEBIAN_FMNIST_DIR)
    if files:
        return files
    searched.append(str(CACHE_DIR))
    files = _fmnist_files_in(CACHE_DIR)
    if files:
        return files
    if download:
        try:
            torchvision.datasets.FashionMNIST(str(CACHE_DIR), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(CACHE_DIR), train=False, download=True)
            files = _fmnist_files_in(CACHE_DIR)
            if files:
                return files
        except Exception as e:  # no network, mirror down, ...
            searched.append(f"torchvision download failed: {type(e).__name__}: {e}")
    else:
        searched.append("torchvision download (disabled by data.download: false)")
    raise _missing("Fashion-MNIST", searched)


def _load_fashion_mnist(cfg: DataConfig, root: Optional[str]):
    f = find_fashion_mnist(root or cfg.root, cfg.download)
    xtr = torch.from_numpy(read_idx(f["train_images"]).copy()).unsqueeze(1)
    ytr = torch.from_numpy(read_idx(f["train_labels"]).astype(np.int64))
    xte = torch.from_numpy(read_idx(f["test_images"]).copy()).unsqueeze(1)
    yte = torch.from_numpy(read_idx(f["test_labels"]).astype(np.int64))
    return xtr, ytr, xte, yte, [str(f["train_images"].parent)]


def _load_cifar10(cfg: DataConfig, root: Optional[str]):
    searched = []
    cands = [root or cfg.root, os.environ.get("APQ_DATA_DIR"), str(CACHE_DIR)]
    for c in [c for c in cands if c]:
        searched.append(c)
        if (Path(c) / "cifar-10-batches-py").exists():
            tr = torchvision.datasets.CIFAR10(c, train=True, download=False)
            te = torchvision.datasets.CIFAR10(c, train=False, download=False)
            break
    else:
        if not cfg.download:
            raise _missing("CIFAR-10", searched + ["download disabled"])
        try:
            tr = torchvision.datasets.CIFAR10(str(CACHE_DIR), train=True, download=True)
            te = torchvision.datasets.CIFAR10(str(CACHE_DIR), train=False, download=True)
        except Exception as e:
            raise _missing("CIFAR-10", searched + [f"download failed: {e}"]) from e
    def conv(d):
        return (torch.from_numpy(np.ascontiguousarray(d.data)).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(d.targets, dtype=torch.int64))
    xtr, ytr = conv(tr)
    xte, yte = conv(te)
    return xtr, ytr, xte, yte, [tr.root]


N_CLASSES = {"fashion_mnist": 10, "cifar10": 10}


def check_labelled(name: str, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                   where: list) -> None:
    """One label per image and every label a class of the dataset; else an error naming
    the files and what is wrong (a corrupted or mismatched file, not a bigger dataset)."""
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} images but {len(y)} labels in {where}: the image "
                         f"and label files do not belong together (e.g. test labels beside "
                         f"train images); restore the original files")
    bad = (y < 0) | (y >= n_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: label {int(y[i])} of image {i} is outside 0..{n_classes - 1} "
                         f"({int(bad.sum())} such labels) in {where}: the label file is "
                         f"corrupted; restore it (e.g. reinstall dataset-fashion-mnist)")


def _image_loader(path: str):
    """torchvision's image loader with the file named when it cannot be decoded."""
    try:
        return default_loader(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); "
                         f"remove or replace the file") from e


def _load_imagefolder(cfg: DataConfig, root: Optional[str]):
    base = root or cfg.root or os.environ.get("APQ_DATA_DIR")
    if not base or not (Path(base) / "train").is_dir():
        raise _missing("ImageFolder data (root/train/<class>/*, root/val/<class>/*)",
                       [f"{base}/train" if base else "data.root / APQ_DATA_DIR unset"])
    test_dir = Path(base) / "val"
    if not test_dir.is_dir():
        test_dir = Path(base) / "test"
    mean, std = _STATS["imagefolder"]
    s = cfg.image_size
    common = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    train_tf = T.Compose([T.RandomResizedCrop(s, antialias=True), T.RandomHorizontalFlip(),
                          *common])
    eval_tf = T.Compose([T.Resize(int(round(s * 8 / 7)), antialias=True), T.CenterCrop(s),
                         *common])
    folder = torchvision.datasets.ImageFolder
    tr_aug = folder(str(Path(base) / "train"), transform=train_tf, loader=_image_loader)
    tr_eval = folder(str(Path(base) / "train"), transform=eval_tf, loader=_image_loader)
    te = folder(str(test_dir), transform=eval_tf, loader=_image_loader)
    return tr_aug, tr_eval, te, len(tr_aug.classes), [base]


def load_data(cfg: Optional[DataConfig] = None, root: Optional[str] = None) -> DataBundle:
    """Load the dataset named by ``cfg.dataset`` and split train / val / test."""
    cfg = cfg or DataConfig()
    if cfg.dataset == "imagefolder":
        tr_aug, tr_eval, te, ncls, src = _load_imagefolder(cfg, root)
        tr_idx, va_idx = split_indices(len(tr_aug), cfg.val_size, cfg.split_seed)
        train = torch.utils.data.Subset(tr_aug, tr_idx.tolist())
        val = torch.utils.data.Subset(tr_eval, va_idx.tolist())
        return DataBundle("imagefolder", _cap(train, cfg.train_subset, cfg.split_seed, "train"),
                          _cap(val, cfg.val_subset, cfg.split_seed, "val"),
                          _cap(te, cfg.test_subset, cfg.split_seed, "test"),
                          ncls, 3, cfg.image_size, cfg, src)
    loader = {"fashion_mnist": _load_fashion_mnist, "cifar10": _load_cifar10}[cfg.dataset]
    xtr, ytr, xte, yte, src = loader(cfg, root)
    k = N_CLASSES[cfg.dataset]
    check_labelled(f"{cfg.dataset} train", xtr, ytr, k, src)
    check_labelled(f"{cfg.dataset} test", xte, yte, k, src)
    mean, std = _STATS[cfg.dataset]
    full = TensorImageSet(xtr, ytr, mean, std, cfg.image_size)
    test = TensorImageSet(xte, yte, mean, std, cfg.image_size)
    tr_idx, va_idx = split_indices(len(full), cfg.val_size, cfg.split_seed)
    train, val = full.subset(tr_idx), full.subset(va_idx)
    return DataBundle(cfg.dataset, _cap(train, cfg.train_subset, cfg.split_seed, "train"),
                      _cap(val, cfg.val_subset, cfg.split_seed, "val"),
                      _cap(test, cfg.test_subset, cfg.split_seed, "test"),
                      k, xtr.shape[1], cfg.image_size, cfg, src)
