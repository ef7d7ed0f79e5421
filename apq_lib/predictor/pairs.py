"""APQ §3.2 predictor pairs merged from a finished collection (:class:`PairSet`, saved as
``pairs.npz`` in the pair artifacts)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..supernet.space import SubnetConfig
from .samples import CollectionError, SampleStore

__all__ = ["PairSet", "merge_pairs", "load_pairs"]


@dataclass
class PairSet:
    """Merged pairs, sorted by index: ``index [N, B, 6]`` (int16, as
    :meth:`SearchSpace.to_index_array`), ``acc`` (percent), ``seconds`` (wall),
    ``cpu_seconds``, ``group``, ``sampler`` (1 = a mixed-precision policy around the
    architecture's bit level, 0 = a uniform policy or an FP32 pair).

    Label noise (see :mod:`apq_lib.predictor.evaluators`; ``None`` for collections made
    before it was recorded): ``n_images`` / ``n_correct`` ``[N]``, ``acc_half [N, 2]``
    (even / odd images, percent) and ``correct [N, ceil(n_images / 8)]`` (np.packbits of
    the per-image correctness on the shared validation images)."""
    index: np.ndarray
    acc: np.ndarray
    seconds: np.ndarray
    cpu_seconds: np.ndarray
    group: np.ndarray
    sampler: np.ndarray
    n_images: np.ndarray | None = None
    n_correct: np.ndarray | None = None
    acc_half: np.ndarray | None = None
    correct: np.ndarray | None = None

    FIELDS = ("index", "acc", "seconds", "cpu_seconds", "group", "sampler")
    NOISE_FIELDS = ("n_images", "n_correct", "acc_half", "correct")

    def __len__(self) -> int:
        return len(self.acc)

    @property
    def has_noise(self) -> bool:
        """Whether per-image correctness was recorded (labels' noise can be measured)."""
        return all(getattr(self, k) is not None for k in self.NOISE_FIELDS)

    def correct_matrix(self) -> np.ndarray:
        """Per-image correctness ``[N, n_images]`` (bool) on the shared validation images."""
        if not self.has_noise:
            raise CollectionError("these pairs carry no per-image correctness (collected "
                                  "before it was recorded): rebuild them with force=True")
        return np.unpackbits(self.correct, axis=1)[:, :int(self.n_images[0])].astype(bool)

    def subset(self, idx) -> "PairSet":
        return PairSet(*(None if getattr(self, k) is None else getattr(self, k)[idx]
                         for k in self.FIELDS + self.NOISE_FIELDS))

    def save(self, path: Path | str) -> None:
        np.savez(path, **{k: getattr(self, k) for k in self.FIELDS + self.NOISE_FIELDS
                          if getattr(self, k) is not None})

    @classmethod
    def load(cls, path: Path | str) -> "PairSet":
        with np.load(path, allow_pickle=False) as z:
            return cls(*(z[k] for k in cls.FIELDS),
                       *(z[k] if k in z.files else None for k in cls.NOISE_FIELDS))


def _noise_arrays(rows: list[dict]) -> list:
    """``[n_images, n_correct, acc_half, correct]`` of the records, or Nones when any record
    lacks them or the records disagree on the number of images (not paired)."""
    if not rows or any("correct" not in r for r in rows):
        return [None] * 4
    n_img = np.array([r["n_images"] for r in rows], dtype=np.int64)
    if (n_img != n_img[0]).any():
        raise CollectionError(f"pair records hold different numbers of validation images "
                              f"({sorted(set(n_img.tolist()))}); the labels are not paired")
    return [n_img, np.array([r["n_correct"] for r in rows], dtype=np.int64),
            np.array([r["acc_half"] for r in rows], dtype=np.float64),
            np.stack([np.frombuffer(bytes.fromhex(r["correct"]), np.uint8) for r in rows])]


def merge_pairs(store: SampleStore) -> PairSet:
    """All ``n`` samples of ``store`` merged; missing indices are an error."""
    recs = store.load()
    missing = [i for i in range(store.n) if i not in recs]
    if missing:
        raise CollectionError(f"{store.dir}: {len(missing)} of {store.n} {store.kind} samples "
                              f"are missing (first: {missing[:5]}); run the remaining shards")
    rows = [recs[i] for i in range(store.n)]
    cfgs = [SubnetConfig.from_dict(r["config"]) for r in rows]
    return PairSet(store.space.to_index_array(cfgs),
                   np.array([r["acc"] for r in rows], dtype=np.float64),
                   np.array([r["seconds"] for r in rows], dtype=np.float64),
                   np.array([r.get("cpu_seconds", np.nan) for r in rows], dtype=np.float64),
                   np.array([r["group"] for r in rows], dtype=np.int64),
                   np.array([r["sampler"].endswith("+mixed") for r in rows], dtype=np.int8),
                   *_noise_arrays(rows))


def load_pairs(artifact) -> PairSet:
    """The :class:`PairSet` of a published collection artifact."""
    return PairSet.load(artifact.file("pairs.npz"))
