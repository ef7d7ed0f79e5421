"""Notebook 03's stages (APQ §3.2): collect the FP32 and quantized pairs as artifacts (in
process or as CLI shards), train the FP32, transferred and from-scratch predictors, and
save / load the trained predictors for the search (notebook 04)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..artifacts import (
    Artifact,
    ArtifactStore,
    StageKey,
    config_key,
    load_state,
    save_state,
    write_json,
)
from ..config import Profile, load_profile
from ..data import load_data
from ..progress import tqdm
from ..runtime import get_device, seed_everything
from ..supernet import train as sn
from ..supernet.space import SearchSpace, SubnetConfig
from ..workers import LockBusy, WorkerGroup, exclusive
from .encoder import APQEncoder
from .evaluators import FP32Evaluator, QATEvaluator
from .model import (
    AccuracyPredictor,
    FastPredictor,
    PredictorEnsemble,
    QuantAwarePredictor,
    is_quant_aware,
)
from .pairs import PairSet, load_pairs, merge_pairs  # noqa: F401  (load_pairs: re-export)
from .samples import CollectionError, SampleStore, collect_samples
from .train import (
    TrainSettings,
    evaluate_predictor,
    fit_fp32_predictor,
    fit_quant_predictor,
    split_holdout,
)
from .transfer import PredictorTransfer

__all__ = ["PAIR_STAGES", "MODEL_STAGE", "collection_config", "sample_store", "make_evaluator",
           "trained_supernet", "collect_pairs", "collect_cli", "train_predictors",
           "predictor_config", "save_predictors", "load_predictor", "AccuracyOracle",
           "predictor_artifact_key", "PAIR_KEYS", "MODEL_KEY"]

PAIR_STAGES = {"fp32": "predictor_fp32_pairs", "quant": "predictor_quant_pairs"}
MODEL_STAGE = "predictor"

# What each stage reads from the profile (its artifact key; the supernet key is an input).
# The data section minus the test split, which no pair is measured on.
_PAIRS_READ = ("seed", "space", "data", "predictor.eval_images", "predictor.recal_images")
PAIR_KEYS = {
    "fp32": StageKey(PAIR_STAGES["fp32"], version=4, skip=("data.test_subset",),
                     reads=_PAIRS_READ + ("predictor.fp32_pairs",
                                          "predictor.large_fraction")),
    "quant": StageKey(PAIR_STAGES["quant"], version=4, skip=("data.test_subset",),
                      reads=_PAIRS_READ + tuple(f"predictor.{k}" for k in (
                          "quant_pairs", "quant_eval_images", "policies_per_arch",
                          "large_fraction", "bit_spread", "finetune_steps"))
                      + tuple(f"finetune.{k}" for k in (
                          "lr", "batch_size", "optimizer", "momentum", "weight_decay",
                          "label_smoothing")) + ("quant.weight_calibration",
                                                 "quant.kl_below_bits")),
}
MODEL_KEY = StageKey(MODEL_STAGE, version=3, reads=("seed", "space") + tuple(
    f"predictor.{k}" for k in ("hidden", "n_layers", "lr", "weight_decay", "batch_size",
                               "epochs", "patience", "holdout_fraction",
                               "transfer_branch_init", "ensemble")))


# --------------------------------------------------------------------------- collection
def collection_config(cfg: Profile, kind: str) -> dict:
    """What determines a collection's samples (its artifact key, with the supernet key):
    the fields :data:`PAIR_KEYS` declares, plus ``kind``, ``n`` and ``eval_images``
    derived from them."""
    p = cfg.predictor
    return {"kind": kind, "n": p.fp32_pairs if kind == "fp32" else p.quant_pairs,
            "eval_images": _eval_images(cfg, kind), **PAIR_KEYS[kind].config(cfg)}


def _eval_images(cfg: Profile, kind: str) -> int:
    p = cfg.predictor
    return p.quant_eval_images if kind == "quant" and p.quant_eval_images else p.eval_images


def sample_store(cfg: Profile, kind: str, workdir: Path) -> SampleStore:
    c = collection_config(cfg, kind)
    p = cfg.predictor
    return SampleStore(workdir, kind, c["n"], cfg.seed, SearchSpace(cfg.space),
                       p.policies_per_arch, spec=c, large_fraction=p.large_fraction,
                       bit_spread=p.bit_spread)


def make_evaluator(cfg: Profile, kind: str, supernet, data, device=None):
    """The FP32 or QAT evaluator with the profile's fixed recal / validation images."""
    p = cfg.predictor
    recal = data.fixed_batches("train", p.recal_images, seed=cfg.seed)
    val = data.fixed_batches("val", _eval_images(cfg, kind), seed=cfg.seed)  # never test
    if kind == "fp32":
        return FP32Evaluator(supernet, recal, val, device)
    return QATEvaluator(supernet, data, recal, val, p.finetune_steps, cfg.finetune, cfg.seed,
                        device)


def trained_supernet(cfg: Profile, data, store: ArtifactStore, device=None):
    """``(supernet in eval mode, its artifact key)`` (:func:`apq_lib.supernet.train.
    require_supernet`: never trains; a missing artifact names notebook 01)."""
    net, key, _ = sn.require_supernet(cfg, store, device)
    return net, key


def _partial_dir(store: ArtifactStore, cfg: Profile, kind: str, supernet_key: str) -> Path:
    key = config_key(collection_config(cfg, kind), [supernet_key])
    p = store.path(PAIR_STAGES[kind], key)
    return p.with_name(p.name + ".partial")


def _run_workers(cfg_profile: str, overrides: dict, kind: str, workers: int, work: Path,
                 n_total: int, progress: bool, store: Optional[ArtifactStore] = None) -> None:
    """Collect with ``workers`` CLI shard processes (one thread each); poll progress. The
    workers stop with this process however it ends (:class:`apq_lib.workers.WorkerGroup`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if store is not None:                   # absolute: the workers run in the repo root
        env["APQ_ARTIFACTS"] = str(store.root)
    cmds = [[sys.executable, "-m", "apq_lib.predictor.collect", "--profile", cfg_profile,
             "--kind", kind, "--shard", f"{r}/{workers}", "--no-progress", "--no-publish",
             "--threads", "1", "--overrides-json", json.dumps(overrides)]
            for r in range(workers)]
    logs = [work / f"{kind}_worker{r}.log" for r in range(workers)]
    bar = tqdm(total=n_total, desc=f"{kind} pairs ({workers} workers)", disable=not progress)

    def poll() -> None:
        n = sum(f.read_bytes().count(b"\n") for f in work.glob(f"{kind}_shard*.jsonl"))
        bar.update(min(n, n_total) - bar.n)

    try:
        with WorkerGroup(cmds, logs, cwd=Path(__file__).resolve().parents[2], env=env) as g:
            bad = g.wait(poll)
    finally:
        bar.close()
    if bad:
        r0 = next(iter(bad))
        tail = (work / f"{kind}_worker{r0}.log").read_text()[-2000:]
        how = "; ".join(f"worker {r}: " + (f"killed by signal {-c}" if c < 0 else f"exit {c}")
                        for r, c in bad.items())
        raise CollectionError(f"collection worker(s) failed ({how}); finished samples are "
                              f"kept in {work} and a rerun resumes there. Log tail of worker "
                              f"{r0}:\n{tail}")


def collect_pairs(cfg: Profile, kind: str, supernet, supernet_key: str, data,
                  store: ArtifactStore, force: bool = False, progress: bool = True,
                  workers: int = 1, profile_name: Optional[str] = None,
                  overrides: Optional[dict] = None, device=None) -> Artifact:
    """The ``predictor_<kind>_pairs`` artifact (built, resumed, or loaded from cache).

    Files: the JSONL shards, ``pairs.npz`` (:class:`PairSet`) and ``summary.json``.
    With ``workers > 1`` the pairs are measured by that many CLI shard processes."""
    conf = collection_config(cfg, kind)
    if force:
        shutil.rmtree(_partial_dir(store, cfg, kind, supernet_key), ignore_errors=True)

    def build(work: Path) -> None:
        ss = sample_store(cfg, kind, work)
        ss.check_spec()
        if workers > 1:
            if profile_name is None:
                raise ValueError("workers > 1 needs profile_name (the CLI reloads it)")
            if len(ss.load(repair=True)) < ss.n:
                _run_workers(profile_name, overrides or {}, kind, workers, work, ss.n,
                             progress, store)
        ev = make_evaluator(cfg, kind, supernet, data, device)
        collect_samples(ev, ss, (0, 1), progress=progress)          # whatever is left, in process
        pairs = merge_pairs(ss)
        pairs.save(work / "pairs.npz")
        for f in [*work.glob(f"{kind}_worker*.log"), *work.glob(f"{kind}_shard*.jsonl.lock")]:
            f.unlink()
        write_json(work / "summary.json", _pair_summary(pairs), sort_keys=False)

    return store.build(PAIR_STAGES[kind], conf, build, inputs=[supernet_key], force=force)


def _pair_summary(pairs: PairSet) -> dict:
    return {"n": len(pairs), "acc_mean": float(pairs.acc.mean()),
            "acc_std": float(pairs.acc.std()), "acc_min": float(pairs.acc.min()),
            "acc_max": float(pairs.acc.max()),
            "seconds_per_pair": float(pairs.seconds.mean()),
            "cpu_seconds_per_pair": float(np.nanmean(pairs.cpu_seconds)),
            "seconds_total": float(pairs.seconds.sum())}


def collect_cli(profile: str, kind: str, shard: tuple[int, int], overrides: dict,
                progress: bool = True, publish: bool = True, threads: Optional[int] = None
                ) -> None:
    """One shard from the command line (see ``python -m apq_lib.predictor.collect -h``)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_profile(profile, overrides)
    seed_everything(cfg.seed)
    store = ArtifactStore()
    data = load_data(cfg.data)
    dev = get_device(cfg.device)
    net, skey = trained_supernet(cfg, data, store, dev)
    key = config_key(collection_config(cfg, kind), [skey])
    if store.get(PAIR_STAGES[kind], key) is not None:
        print(f"{PAIR_STAGES[kind]}/{key} is already complete")
        return
    work = _partial_dir(store, cfg, kind, skey)
    ss = sample_store(cfg, kind, work)
    done = collect_samples(make_evaluator(cfg, kind, net, data, dev), ss, shard, progress)
    print(f"shard {shard[0]}/{shard[1]}: done; {len(done)}/{ss.n} samples in {work}")
    if not publish or len(done) < ss.n:
        return
    try:                        # flock: released by the kernel if this process dies
        with exclusive(work.with_name(work.name + ".publish.lock"), wait=False):
            art = collect_pairs(cfg, kind, net, skey, data, store, progress=False, device=dev)
            print(f"published {art}")
    except LockBusy:
        print("another shard is publishing the artifact")


# --------------------------------------------------------------------------- training
def train_predictors(cfg: Profile, fp32_pairs: PairSet, quant_pairs: PairSet,
                     encoder: APQEncoder, device="cpu") -> dict:
    """FP32 predictor; quantization-aware predictor by transfer and from scratch; each
    scored on its held-out pairs (quantized split by architecture group).

    Returns models, train results, held-out metrics (percent) and the split indices."""
    p = cfg.predictor
    st = TrainSettings.from_config(p, seed=cfg.seed)
    f_tr, f_te = split_holdout(len(fp32_pairs), p.holdout_fraction, cfg.seed)
    xf = encoder.encode_index(fp32_pairs.index, quant=False)
    yf = fp32_pairs.acc / 100.0
    fp = fit_fp32_predictor(xf[f_tr], yf[f_tr], st, p.hidden, p.n_layers, device,
                            members=p.ensemble)
    q_tr, q_te = split_holdout(len(quant_pairs), p.holdout_fraction, cfg.seed,
                               groups=quant_pairs.group)
    xq = encoder.encode_index(quant_pairs.index)
    yq = quant_pairs.acc / 100.0
    gq = quant_pairs.group[q_tr]
    tr = PredictorTransfer(fp.model, encoder.quant_dims, p.transfer_branch_init) \
        .fit(xq[q_tr], yq[q_tr], st, device, groups=gq)
    sc = fit_quant_predictor(xq[q_tr], yq[q_tr], encoder.arch_dims, st, p.hidden,
                             p.n_layers, device, groups=gq, members=p.ensemble)
    fp.model.cpu(), tr.model.cpu(), sc.model.cpu()
    metrics = {"fp32": evaluate_predictor(fp.model, xf[f_te], yf[f_te]),
               "transfer": evaluate_predictor(tr.model, xq[q_te], yq[q_te]),
               "scratch": evaluate_predictor(sc.model, xq[q_te], yq[q_te]),
               # the FP32 predictor ignoring the bits, as a reference for the quantized pairs
               "fp32_on_quant": evaluate_predictor(fp.model, xq[q_te][:, :encoder.arch_dims],
                                                   yq[q_te])}
    return {"fp32": fp, "transfer": tr, "scratch": sc, "metrics": metrics,
            "split": {"fp32": (f_tr, f_te), "quant": (q_tr, q_te)},
            "x": {"fp32": xf, "quant": xq}, "y": {"fp32": yf, "quant": yq}, "settings": st}


# --------------------------------------------------------------------------- saving
def predictor_config(cfg: Profile) -> dict:
    """What the trained predictors depend on besides their pairs (see :data:`MODEL_KEY`)."""
    return MODEL_KEY.config(cfg)


def predictor_artifact_key(cfg: Profile, supernet_key: str) -> str:
    """The ``predictor`` artifact's key, recomputed from the profile and the supernet key
    (what notebook 04 needs to find notebook 03's predictor)."""
    kf = config_key(collection_config(cfg, "fp32"), [supernet_key])
    kq = config_key(collection_config(cfg, "quant"), [supernet_key])
    return config_key(predictor_config(cfg), [kf, kq])


def save_predictors(cfg: Profile, trained: dict, encoder: APQEncoder, fp32_art: Artifact,
                    quant_art: Artifact, store: ArtifactStore, force: bool = False,
                    extra: Optional[dict] = None) -> Artifact:
    """Artifact ``predictor/<key>``: ``fp32.safetensors``, ``quant_transfer.safetensors``,
    ``quant_scratch.safetensors`` and ``predictor.json`` (dims, metrics)."""
    def build(work: Path) -> None:
        for name, k in (("fp32", "fp32"), ("quant_transfer", "transfer"),
                        ("quant_scratch", "scratch")):
            m = trained[k].model
            save_state(m.state_dict(), work / f"{name}.safetensors", {"config": m.config()})
        info = {"arch_dims": encoder.arch_dims, "quant_dims": encoder.quant_dims,
                "hidden": cfg.predictor.hidden, "n_layers": cfg.predictor.n_layers,
                "output": "top-1 accuracy fraction on the validation split",
                "metrics": {k: {kk: vv for kk, vv in v.items() if kk != "pred"}
                            for k, v in trained["metrics"].items()}, **(extra or {})}
        write_json(work / "predictor.json", info)
    return store.build(MODEL_STAGE, predictor_config(cfg), build,
                       inputs=[fp32_art, quant_art], force=force)


def load_predictor(artifact: Artifact, which: str = "quant_transfer") -> torch.nn.Module:
    """A trained predictor from the ``predictor`` artifact: ``quant_transfer`` (what the
    search uses), ``quant_scratch`` or ``fp32`` (each a :class:`PredictorEnsemble` when the
    profile's ``predictor.ensemble`` > 1); in eval mode on CPU."""
    state, md = load_state(artifact.file(f"{which}.safetensors"))
    c = md["config"]

    def one():
        return (QuantAwarePredictor(c["arch_dims"], c["quant_dims"], c["hidden"],
                                    c["n_layers"]) if "quant_dims" in c
                else AccuracyPredictor(c["arch_dims"], c["hidden"], c["n_layers"]))
    model = PredictorEnsemble([one() for _ in range(c["members"])]) if "members" in c else one()
    model.load_state_dict(state)
    return model.eval()


class AccuracyOracle:
    """Batched accuracy prediction (top-1 percent) for configurations or index arrays,
    e.g. ``AccuracyOracle(load_predictor(art), SearchSpace(cfg.space))``; runs on
    :class:`~apq_lib.predictor.model.FastPredictor` (``dtype=torch.bfloat16`` for ~2-4x
    faster, slightly rounded predictions)."""

    def __init__(self, model: torch.nn.Module, space: SearchSpace,
                 dtype: torch.dtype = torch.float32):
        self.model, self.encoder = model.eval(), APQEncoder(space)
        self.quant = is_quant_aware(model)
        self.fast = FastPredictor(self.model, self.encoder, dtype)

    def predict_index(self, idx: np.ndarray) -> np.ndarray:
        """``[N, B, 6]`` index arrays -> ``[N]`` predicted top-1 (%)."""
        return 100.0 * self.fast(idx).astype(np.float64)

    def predict(self, configs: list[SubnetConfig] | SubnetConfig) -> np.ndarray:
        if isinstance(configs, SubnetConfig):
            configs = [configs]
        return self.predict_index(self.encoder.space.to_index_array(configs))
