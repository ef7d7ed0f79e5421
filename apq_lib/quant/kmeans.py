"""k-means weight quantization with shared centroids (HAQ §4.2 model-size experiments,
after Deep Compression, Han et al. 2016): ``2^b`` centroids per layer, linear init, Lloyd
iterations; during finetuning every weight keeps its cluster and the centroids are trained,
each receiving the sum of its members' gradients.
"""
from __future__ import annotations

import torch
from torch import nn

from .functional import FP_BITS, check_bits

__all__ = ["kmeans_1d", "KMeansQuantizer", "MAX_CENTROIDS"]

MAX_CENTROIDS = 256      # 2^8: the centroid Parameter is allocated once at this size


@torch.no_grad()
def kmeans_1d(x: torch.Tensor, k: int, iters: int = 50, tol: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the values of ``x``; linear initialisation over ``[min, max]``
    (Deep Compression's best). Returns ``(centroids [k] sorted, labels [x.numel()] int64)``.
    Empty clusters keep their previous centroid."""
    v = x.detach().reshape(-1).float()
    if v.numel() == 0:
        raise ValueError("k-means on an empty tensor")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("k-means input contains NaN or inf")
    lo, hi = float(v.min()), float(v.max())
    c = torch.linspace(lo, hi, k, device=v.device) if hi > lo else torch.full((k,), lo,
                                                                              device=v.device)
    labels = torch.zeros_like(v, dtype=torch.long)
    for _ in range(iters):
        c = c.sort().values
        labels = torch.bucketize(v, (c[1:] + c[:-1]) / 2)          # nearest centroid in 1-D
        sums = torch.zeros(k, device=v.device).index_add_(0, labels, v)
        counts = torch.zeros(k, device=v.device).index_add_(0, labels, torch.ones_like(v))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        shift = float((new - c).abs().max())
        c = new
        if shift <= tol:
            break
    order = torch.argsort(c)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=v.device)
    return c[order], rank[labels]


class KMeansQuantizer(nn.Module):
    """Shared-centroid weight quantizer: ``forward(w) = centroids[labels]``.

    The cluster assignment is fitted from the weight on the first call at a new bitwidth or
    shape (or by :meth:`fit`) and then frozen; ``forward`` ignores the values of ``w`` after
    that, so the layer's own weight gets no gradient and ``centroids`` (a Parameter of fixed
    size :data:`MAX_CENTROIDS`, first ``2^bits`` used) receives, by the indexing's backward,
    the sum of the gradients of its members. Call :meth:`commit` to write the quantized
    values back into the layer weight (e.g. before refitting at another bitwidth).
    """

    def __init__(self, bits: int = 8, iters: int = 50):
        super().__init__()
        self.bits = check_bits(bits, "w_bits")
        self.iters = iters
        self.centroids = nn.Parameter(torch.zeros(MAX_CENTROIDS))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self._fitted_key: tuple | None = None

    def set_bits(self, bits: int) -> None:
        bits = check_bits(bits, "w_bits")
        if bits != self.bits:
            self._fitted_key = None
        self.bits = bits

    @property
    def n_clusters(self) -> int:
        return 2 ** self.bits

    @torch.no_grad()
    def fit(self, w: torch.Tensor) -> None:
        if self.bits == FP_BITS:
            return
        c, labels = kmeans_1d(w, self.n_clusters, self.iters)
        self.centroids.data[:c.numel()] = c.to(self.centroids.device)
        self.labels = labels.reshape(w.shape).to(w.device)
        self._fitted_key = (self.bits, tuple(w.shape))

    def quantized(self) -> torch.Tensor:
        return self.centroids[:self.n_clusters][self.labels]

    @torch.no_grad()
    def commit(self, weight: torch.Tensor) -> None:
        """Copy the current quantized values into ``weight`` (in place)."""
        if self._fitted_key is not None:
            weight.copy_(self.quantized().to(weight.dtype))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == FP_BITS:
            return w
        if self._fitted_key != (self.bits, tuple(w.shape)):
            self.fit(w)
        return self.quantized().to(w.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "labels"
        if key in state_dict:
            self.labels = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.labels.numel():
            self._fitted_key = (self.bits, tuple(self.labels.shape))

    def get_extra_state(self):
        return {"bits": self.bits}

    def set_extra_state(self, state) -> None:
        self.bits = state.get("bits", self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clusters={self.n_clusters if self.bits != FP_BITS else 0}"
