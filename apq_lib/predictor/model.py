"""APQ §3.2 accuracy predictors: the FP32 MLP (as in Once-for-All) and the
quantization-aware MLP with an extra branch for the quantization policy.

Both take the full encoding ``x [N, arch_dims + quant_dims]`` (the FP32 one ignores the
quant part; it also accepts ``[N, arch_dims]``) and return accuracy fractions ``[N]``.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AccuracyPredictor", "QuantAwarePredictor", "PredictorEnsemble", "is_quant_aware",
           "FastPredictor", "predict_numpy", "time_inference"]


def _mlp(in_dims: int, hidden: int, n_layers: int) -> nn.ModuleList:
    dims = [in_dims] + [hidden] * n_layers
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))


class AccuracyPredictor(nn.Module):
    """FP32 predictor: ``n_layers`` x (Linear ``hidden`` + ReLU) -> Linear(hidden -> 1).

    ``x [N, >= arch_dims]`` -> ``[N]`` accuracy fraction (bias of the output starts at the
    mean training accuracy, see :meth:`init_output_bias`)."""

    def __init__(self, arch_dims: int, hidden: int = 400, n_layers: int = 3):
        super().__init__()
        self.arch_dims, self.hidden, self.n_layers = arch_dims, hidden, n_layers
        self.layers = _mlp(arch_dims, hidden, n_layers)
        self.head = nn.Linear(hidden, 1)

    def init_output_bias(self, mean: float) -> None:
        with torch.no_grad():
            self.head.bias.fill_(float(mean))

    def trunk(self, x: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = torch.relu(self.layers[0](x[:, :self.arch_dims]))
        if extra is not None:                      # the quantization branch joins here
            h = h + extra
        for lin in self.layers[1:]:
            h = torch.relu(lin(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(-1)

    def config(self) -> dict:
        return {"arch_dims": self.arch_dims, "hidden": self.hidden, "n_layers": self.n_layers}


class QuantAwarePredictor(AccuracyPredictor):
    """APQ's quantization-aware predictor: the FP32 MLP plus a branch
    ``Linear(quant_dims -> hidden)`` whose output is added after the first ReLU.

    Its parameter names are the FP32 predictor's plus ``quant_branch.*``, so the FP32
    state dict loads into it with only the branch missing (predictor transfer)."""

    def __init__(self, arch_dims: int, quant_dims: int, hidden: int = 400, n_layers: int = 3):
        super().__init__(arch_dims, hidden, n_layers)
        self.quant_dims = quant_dims
        self.quant_branch = nn.Linear(quant_dims, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.arch_dims + self.quant_dims:
            raise ValueError(f"expected encodings with {self.arch_dims + self.quant_dims} "
                             f"dims (arch + quant), got {x.shape[1]}")
        q = self.quant_branch(x[:, self.arch_dims:])
        return self.head(self.trunk(x, q)).squeeze(-1)

    def config(self) -> dict:
        return {**super().config(), "quant_dims": self.quant_dims}


class PredictorEnsemble(nn.Module):
    """The mean of ``members`` predictors of one kind and shape, each trained on the same
    pairs from its own seed (own initialisation, batch order and early-stopping split): a
    deep ensemble, which ranks better than any one member when the pairs are few (notebook
    03 measures it). ``x`` and the output are the members'."""

    def __init__(self, members: list):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        m = members[0]
        self.arch_dims, self.hidden, self.n_layers = m.arch_dims, m.hidden, m.n_layers
        if hasattr(m, "quant_dims"):
            self.quant_dims = m.quant_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)

    def config(self) -> dict:
        return {**self.members[0].config(), "members": len(self.members)}


def is_quant_aware(model: nn.Module) -> bool:
    """Whether ``model`` (a predictor or an ensemble of them) reads the quantization part."""
    if isinstance(model, PredictorEnsemble):
        model = model.members[0]
    return isinstance(model, QuantAwarePredictor)


class FastPredictor:
    """Batched inference straight from index arrays ``[N, B, 6]``, without the one-hot
    matrix. The encoding is one-hot per block, so the first layer is a sum over blocks of
    precomputed rows: one row per (block, kernel, mid) choice and, for the quantization
    branch, one per (block, 4 bits) choice; ``F.embedding_bag`` gathers B + B rows per
    sample instead of a dense matmul over ``dims`` inputs. The other layers are the same
    MLP (``dtype=torch.bfloat16`` runs them in bf16). Returns the same accuracy fractions
    as ``model(encoder.encode_index(idx))`` up to float rounding."""

    def __init__(self, model: AccuracyPredictor, encoder, dtype: torch.dtype = torch.float32):
        self.encoder, self.dtype = encoder, dtype
        self.quant = is_quant_aware(model)
        # an ensemble: one fast path per member, averaged
        self.members = ([FastPredictor(m, encoder, dtype) for m in model.members]
                        if isinstance(model, PredictorEnsemble) else None)
        if self.members is not None:
            return
        d = lambda t: t.detach().float().cpu().contiguous()
        arch_t, quant_t = encoder.block_tables()
        w1 = d(model.layers[0].weight).numpy()                            # [H, arch_dims]
        self.arch_rows = torch.from_numpy(np.concatenate([t @ w1.T for t in arch_t]))
        self.arch_off = np.concatenate([[0], np.cumsum([len(t) for t in arch_t])[:-1]])
        self.b1 = d(model.layers[0].bias)
        if self.quant:
            wq = d(model.quant_branch.weight).numpy()                     # [H, quant_dims]
            self.quant_rows = torch.from_numpy(np.concatenate([t @ wq.T for t in quant_t]))
            self.quant_off = np.concatenate([[0], np.cumsum([len(t) for t in quant_t])[:-1]])
            self.bq = d(model.quant_branch.bias)
        self.dense = [(d(l.weight).T.contiguous().to(dtype), d(l.bias).to(dtype))
                      for l in model.layers[1:]]
        self.head_w, self.head_b = d(model.head.weight).T.to(dtype), d(model.head.bias).to(dtype)

    @torch.no_grad()
    def __call__(self, idx: np.ndarray) -> np.ndarray:
        if self.members is not None:
            return np.mean([m(idx) for m in self.members], axis=0)
        a, q = self.encoder.block_codes(idx)
        h = F.embedding_bag(torch.from_numpy(a + self.arch_off), self.arch_rows, mode="sum")
        h = torch.relu(h + self.b1)
        if self.quant:
            h = h + F.embedding_bag(torch.from_numpy(q + self.quant_off), self.quant_rows,
                                    mode="sum") + self.bq
        h = h.to(self.dtype)
        for w, b in self.dense:
            h = torch.relu(torch.addmm(b, h, w))
        return torch.addmm(self.head_b, h, self.head_w).squeeze(-1).float().numpy()


@torch.no_grad()
def predict_numpy(model: nn.Module, x: np.ndarray, batch_size: int = 16384) -> np.ndarray:
    """Batched inference on numpy encodings; returns accuracy fractions ``[N]``."""
    model.eval()
    dev = next(model.parameters()).device
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = [model(xt[i:i + batch_size].to(dev)).cpu() for i in range(0, len(xt), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def time_inference(fn, x, repeats: int = 7) -> dict:
    """Wall time of ``fn(x)`` on the whole batch (median and min of ``repeats``, after a
    warm-up call); ``fn`` is e.g. a :class:`FastPredictor` or ``lambda x: predict_numpy(m, x)``."""
    fn(x)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return {"n": int(len(x)), "median_ms": 1e3 * float(np.median(ts)),
            "min_ms": 1e3 * float(np.min(ts)), "threads": torch.get_num_threads()}
