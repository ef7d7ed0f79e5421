"""In-memory image sets and their batching: :class:`TensorImageSet` (uint8 tensors, whole-batch
random crop + flip), :class:`BatchLoader` (deterministic per epoch, sharded across DDP
ranks), :class:`DataBundle` (the train / val / test splits of one dataset) and the helpers
the loops use (:func:`cycle`, :func:`materialize`). Reading the datasets:
:mod:`apq_lib.data`, which re-exports all of this."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms import v2 as T

from .config import DataConfig
from .runtime import stream_generator, stream_seed

__all__ = ["split_indices", "TensorImageSet", "BatchLoader", "DataBundle", "materialize",
           "cycle"]


# --------------------------------------------------------------------------- splits
def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint (train, val) index split of ``range(n)`` (the ``data`` stream
    of ``seed``)."""
    if not 0 < val_size < n:
        raise ValueError(f"data.val_size={val_size} must be between 1 and {n - 1}")
    perm = torch.randperm(n, generator=stream_generator(seed, "data", "split"))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


# --------------------------------------------------------------------------- datasets
@dataclass
class TensorImageSet:
    """uint8 images [N, C, H, W] + int64 labels, normalised on the fly."""
    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple
    std: tuple
    pad_to: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "TensorImageSet":
        return TensorImageSet(self.images[idx], self.labels[idx], self.mean, self.std,
                              self.pad_to)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        h = x.shape[-1]
        if self.pad_to > h:  # zero-pad (in normalised-0 space = background) to pad_to
            p = (self.pad_to - h) // 2
            x = torch.nn.functional.pad(x, (p, self.pad_to - h - p, p, self.pad_to - h - p))
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, per sample."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    iy = oy[:, None] + torch.arange(h)
    ix = ox[:, None] + torch.arange(w)
    flip = torch.rand(n, generator=g) < 0.5
    ix = torch.where(flip[:, None], ix.flip(1), ix)
    out = xp[torch.arange(n)[:, None, None], :, iy[:, :, None], ix[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class BatchLoader:
    """Iterates a :class:`TensorImageSet` in batches; deterministic given ``seed`` and the
    epoch set with :meth:`set_epoch` (so a resumed run sees the same order)."""

    def __init__(self, ds: TensorImageSet, batch_size: int, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.ds, self.batch_size, self.shuffle, self.augment = ds, batch_size, shuffle, augment
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.ds)
        if self.shuffle:
            idx = torch.randperm(n, generator=stream_generator(self.seed, "batches", "order",
                                                               self.epoch))
        else:
            idx = torch.arange(n)
        if self.world_size > 1:  # same split rule as DistributedSampler(drop_last=True)
            per = n // self.world_size
            idx = idx[self.rank * per:(self.rank + 1) * per]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        g = stream_generator(self.seed, "batches", "augment", self.epoch)
        for i in range(len(self)):
            b = idx[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.ds.prepare(self.ds.images[b])
            if self.augment:
                x = _augment(x, g)
            yield x, self.ds.labels[b]


@dataclass
class DataBundle:
    """The three splits plus what models need to know about the data."""
    name: str
    train: object
    val: object
    test: object
    num_classes: int
    in_channels: int
    image_size: int
    cfg: DataConfig
    sources: list

    def loader(self, split: str, batch_size: Optional[int] = None, shuffle: Optional[bool] = None,
               augment: Optional[bool] = None, seed: int = 0, limit: Optional[int] = None,
               rank: int = 0, world_size: int = 1, drop_last: bool = False):
        """A batch iterator over ``split`` (train / val / test); ``limit`` caps the images."""
        ds = {"train": self.train, "val": self.val, "test": self.test}[split]
        is_train = split == "train"
        bs = batch_size or (self.cfg.batch_size if is_train else self.cfg.eval_batch_size)
        shuffle = is_train if shuffle is None else shuffle
        augment = (is_train and self.cfg.augment) if augment is None else augment
        if limit is not None and limit < len(ds):    # nested: a smaller limit, a subset
            g = stream_generator(seed, "data", "subset", split)
            sel = torch.randperm(len(ds), generator=g)[:limit].sort().values
            ds = ds.subset(sel) if isinstance(ds, TensorImageSet) else \
                torch.utils.data.Subset(ds, sel.tolist())
        if isinstance(ds, TensorImageSet):
            return BatchLoader(ds, bs, shuffle, augment, seed, drop_last, rank, world_size)
        return _torch_loader(ds, bs, shuffle, seed, self.cfg.num_workers, drop_last, rank,
                             world_size)

    def fixed_batches(self, split: str, n_images: int, batch_size: Optional[int] = None,
                      seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed, reusable list of batches (e.g. BN recalibration / calibration images)."""
        return list(self.loader(split, batch_size=batch_size, shuffle=False, augment=False,
                                seed=seed, limit=n_images))


class _EpochLoader(torch.utils.data.DataLoader):
    """A ``DataLoader`` with ``set_epoch`` (the order depends only on seed and epoch) and
    this rank's share of the images, like :class:`BatchLoader` (ImageFolder data)."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def _torch_loader(ds, bs, shuffle, seed, workers, drop_last, rank=0, world_size=1):
    sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                 seed=stream_seed(seed, "batches", "order"),
                                 drop_last=drop_last)
    return _EpochLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers,
                        drop_last=drop_last)


def _cap(ds, n: Optional[int], seed: int, split: str):
    if n is None or n >= len(ds):
        return ds
    g = stream_generator(seed, "data", "cap", split)
    sel = torch.randperm(len(ds), generator=g)[:n].sort().values
    return ds.subset(sel) if isinstance(ds, TensorImageSet) else \
        torch.utils.data.Subset(ds, sel.tolist())


def materialize(ds, limit: Optional[int] = None) -> TensorImageSet:
    """An ImageFolder split (a ``Subset`` of one, eval transforms) as a uint8
    :class:`TensorImageSet` of its first ``limit`` images (resized, centre-cropped, not
    normalised): integer-only inference and ONNX parity take raw pixels. A
    ``TensorImageSet`` is returned as is (capped)."""
    if isinstance(ds, TensorImageSet):
        return ds if limit is None or limit >= len(ds) else ds.subset(torch.arange(limit))
    base, idx = ds, None
    if isinstance(ds, torch.utils.data.Subset):
        base, idx = ds.dataset, list(ds.indices)
    idx = list(range(len(base))) if idx is None else idx
    idx = idx[:limit] if limit else idx
    norm = [t for t in base.transform.transforms if isinstance(t, T.Normalize)]
    if not norm:
        raise TypeError(f"materialize: {type(base).__name__} has no Normalize transform")
    raw = T.Compose([t for t in base.transform.transforms
                     if not isinstance(t, (T.Normalize, T.ToDtype))])
    imgs = torch.stack([raw(base.loader(base.samples[i][0])) for i in idx])
    labels = torch.tensor([base.samples[i][1] for i in idx], dtype=torch.long)
    return TensorImageSet(torch.as_tensor(imgs, dtype=torch.uint8), labels,
                          tuple(norm[0].mean), tuple(norm[0].std), 0)


def cycle(loader) -> Iterator:
    """Endless iterator over a loader's batches; calls ``set_epoch`` between passes."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise ValueError("the loader yields no batches")
        epoch += 1
