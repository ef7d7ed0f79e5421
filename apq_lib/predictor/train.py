"""Training the accuracy predictors (APQ §3.2; OFA's recipe): Adam lr 1e-3, weight decay
1e-4, MSE on accuracy fractions, output bias set to the mean accuracy, early stopping on a
validation split carved from the training pairs (the held-out test pairs are never seen)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..runtime import stream_generator, stream_rng, stream_seed
from .metrics import predictor_metrics
from .model import AccuracyPredictor, PredictorEnsemble, QuantAwarePredictor, predict_numpy

__all__ = ["TrainSettings", "TrainResult", "split_holdout", "grouped_kfold", "train_predictor",
           "evaluate_predictor", "fit_fp32_predictor", "fit_quant_predictor", "fit_members",
           "member_settings"]


@dataclass
class TrainSettings:
    """Optimisation settings (the ``predictor:`` section supplies them via
    :meth:`from_config`)."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 300
    patience: int = 30
    val_fraction: float = 0.2          # of the training pairs, for early stopping
    seed: int = 0

    @classmethod
    def from_config(cls, pc, **over) -> "TrainSettings":
        kw = dict(lr=pc.lr, weight_decay=pc.weight_decay, batch_size=pc.batch_size,
                  epochs=pc.epochs, patience=pc.patience, val_fraction=pc.holdout_fraction)
        kw.update(over)
        return cls(**kw)


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    epochs_run: int
    best_val_rmse: float               # accuracy percent, on the early-stopping split
    seconds: float
    history: list = field(default_factory=list)   # [{"epoch", "train_rmse", "val_rmse"}]


def split_holdout(n: int, fraction: float, seed: int,
                  groups: Optional[Sequence] = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, holdout) index split. With ``groups`` (e.g. the architecture
    id of APQ's second sampler) whole groups go to one side, so a held-out pair never
    shares its architecture with a training pair."""
    rng = stream_rng(seed, "predictor_split")
    if groups is None:
        perm = rng.permutation(n)
        k = max(1, int(round(fraction * n))) if n > 1 else 0
        return np.sort(perm[k:]), np.sort(perm[:k])
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    perm = rng.permutation(len(uniq))
    hold, taken = set(), 0
    for g in uniq[perm]:
        if taken >= fraction * n:
            break
        hold.add(g)
        taken += int((groups == g).sum())
    mask = np.isin(groups, list(hold))
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def grouped_kfold(groups: Sequence, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped k-fold cross-validation: ``k`` (train, held-out) index splits where every
    group (architecture) is held out in exactly one fold and never trained on there.

    Groups are shuffled (seeded) and dealt to folds largest first, each to the fold with
    the fewest pairs so far, so folds are about equally large."""
    groups = np.asarray(groups)
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if not 2 <= k <= len(uniq):
        raise ValueError(f"grouped_kfold: k={k} folds need 2 <= k <= {len(uniq)} groups "
                         f"(lower predictor.cv_folds or collect more quantized pairs)")
    order = stream_rng(seed, "predictor_folds").permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of, size = np.empty(len(uniq), np.int64), np.zeros(k, np.int64)
    for g in order:
        f = int(np.argmin(size))
        fold_of[g], size[f] = f, size[f] + counts[g]
    pair_fold = fold_of[inv]
    return [(np.flatnonzero(pair_fold != f), np.flatnonzero(pair_fold == f)) for f in range(k)]


def _rmse_pct(model, x, y) -> float:
    with torch.no_grad():
        return float(100 * torch.sqrt(torch.mean((model(x) - y) ** 2)))


def _early_stopping_split(n: int, fraction: float, rng: np.random.Generator,
                          groups: Optional[Sequence] = None) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices: ``fraction`` of the pairs (at least 1 when n >= 5;
    none below). With ``groups`` whole groups (architectures) are taken until the
    fraction is reached, as long as one group stays for training, so early stopping
    scores architectures the fit has not seen, as the held-out pairs are."""
    n_val = max(int(round(fraction * n)), 1) if n >= 5 else 0
    if groups is None or n_val == 0:
        perm = rng.permutation(n)
        return perm[:n_val], perm[n_val:]
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        perm = rng.permutation(n)
        return perm[:n_val], perm[n_val:]
    take, k = [], 0
    for g in uniq[rng.permutation(len(uniq))][:-1]:
        if k >= n_val:
            break
        take.append(g)
        k += int((groups == g).sum())
    val = np.isin(groups, take)
    return rng.permutation(np.flatnonzero(val)), rng.permutation(np.flatnonzero(~val))


def train_predictor(model: nn.Module, x: np.ndarray, y: np.ndarray,
                    settings: Optional[TrainSettings] = None, init_bias: bool = True,
                    device: str | torch.device = "cpu",
                    groups: Optional[Sequence] = None) -> TrainResult:
    """Fit ``model`` on encodings ``x [N, D]`` and accuracy fractions ``y [N]``.

    A ``val_fraction`` of the pairs (at least 1 when N >= 5) is held back for early stopping
    with ``patience`` epochs; the best-validation weights (the starting ones included,
    ``best_epoch = -1``) are restored at the end. With
    ``groups`` (the architecture of each pair) the held-back pairs are whole architectures
    (see :func:`_early_stopping_split`)."""
    s = settings or TrainSettings()
    t0 = time.perf_counter()
    torch.manual_seed(stream_seed(s.seed, "predictor_fit", "train"))
    n = len(y)
    rng = stream_rng(s.seed, "predictor_fit")
    vi, ti = _early_stopping_split(n, s.val_fraction, rng, groups)
    n_val = len(vi)
    dev = torch.device(device)
    X = torch.as_tensor(np.asarray(x, np.float32), device=dev)
    Y = torch.as_tensor(np.asarray(y, np.float32), device=dev)
    Xt, Yt = X[ti], Y[ti]
    Xv, Yv = (X[vi], Y[vi]) if n_val else (Xt, Yt)
    model.to(dev)
    if init_bias and isinstance(model, AccuracyPredictor):
        model.init_output_bias(float(Yt.mean()))
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    g = stream_generator(s.seed, "predictor_fit", "batches")
    best, best_epoch, best_state, history = float("inf"), -1, None, []
    if n_val:       # the starting weights are a candidate too (epoch -1): a transferred
        model.eval()    # predictor that training only makes worse stays as it started
        best, best_state = _rmse_pct(model, Xv, Yv), copy.deepcopy(model.state_dict())
    bs = min(s.batch_size, len(ti))
    epoch = -1
    for epoch in range(s.epochs):
        model.train()
        order = torch.randperm(len(ti), generator=g).to(dev)
        for j in range(0, len(ti), bs):
            b = order[j:j + bs]
            loss = torch.mean((model(Xt[b]) - Yt[b]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        v = _rmse_pct(model, Xv, Yv)
        history.append({"epoch": epoch, "val_rmse": v})
        if v < best - 1e-6:
            best, best_epoch = v, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= s.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    for h in history[-1:]:
        h["train_rmse"] = _rmse_pct(model, Xt, Yt)
    return TrainResult(model, best_epoch, epoch + 1, best, time.perf_counter() - t0, history)


def evaluate_predictor(model: nn.Module, x: np.ndarray, y_frac: np.ndarray) -> dict:
    """:func:`~apq_lib.predictor.metrics.predictor_metrics` in accuracy percent, plus the
    predictions (``pred`` [N], percent)."""
    pred = 100 * predict_numpy(model, x)
    out = predictor_metrics(100 * np.asarray(y_frac), pred)
    out["pred"] = pred
    return out


def member_settings(settings: TrainSettings, m: int) -> TrainSettings:
    """Ensemble member ``m``'s settings: member 0 keeps ``settings.seed``, the others draw
    theirs from the ``predictor_fit`` stream."""
    return settings if m == 0 else replace(
        settings, seed=stream_seed(settings.seed, "predictor_fit", "member", m))


def fit_members(fit_one, settings: TrainSettings, members: int = 1) -> TrainResult:
    """``fit_one(member_settings, m) -> TrainResult`` for ``members`` members; one member is
    returned as is, several as a :class:`PredictorEnsemble` (epochs and validation RMSE of
    member 0, seconds summed)."""
    if members < 1:
        raise ValueError(f"members={members}: an ensemble needs at least one member")
    fits = [fit_one(member_settings(settings, m), m) for m in range(members)]
    if members == 1:
        return fits[0]
    f = fits[0]
    return TrainResult(PredictorEnsemble([r.model for r in fits]), f.best_epoch, f.epochs_run,
                       f.best_val_rmse, sum(r.seconds for r in fits), f.history)


def fit_fp32_predictor(x_arch: np.ndarray, y: np.ndarray, settings: TrainSettings,
                       hidden: int = 400, n_layers: int = 3, device="cpu",
                       members: int = 1) -> TrainResult:
    """A fresh :class:`AccuracyPredictor` (or an ensemble of ``members``) trained on
    ``[N, arch_dims]`` encodings."""
    def one(st, m):
        torch.manual_seed(stream_seed(st.seed, "predictor_fit", "init"))
        model = AccuracyPredictor(x_arch.shape[1], hidden, n_layers)
        return train_predictor(model, x_arch, y, st, device=device)
    return fit_members(one, settings, members)


def fit_quant_predictor(x: np.ndarray, y: np.ndarray, arch_dims: int,
                        settings: TrainSettings, hidden: int = 400, n_layers: int = 3,
                        device="cpu", groups: Optional[Sequence] = None,
                        members: int = 1) -> TrainResult:
    """A :class:`QuantAwarePredictor` (or an ensemble of ``members``) trained from scratch
    (the baseline to transfer); ``groups``: architectures, for a grouped early-stopping
    split."""
    def one(st, m):
        torch.manual_seed(stream_seed(st.seed, "predictor_fit", "init"))
        model = QuantAwarePredictor(arch_dims, x.shape[1] - arch_dims, hidden, n_layers)
        return train_predictor(model, x, y, st, device=device, groups=groups)
    return fit_members(one, settings, members)
