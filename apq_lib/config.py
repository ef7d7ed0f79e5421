"""Typed experiment profiles (smoke / default / paper) loaded from ``env/params_*.yaml``.

A profile is a nested YAML mapping. Each section maps onto a dataclass below; the loader
checks every key (unknown keys, wrong types and impossible values raise ``ConfigError``
naming the dotted key, e.g. ``space.bit_choices``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = [
    "ConfigError", "DataConfig", "SpaceConfig", "SupernetConfig", "QuantConfig",
    "HardwareConfig", "PredictorConfig", "SearchConfig", "BaselinesConfig", "Profile",
    "FBNetConfig",
    "load_profile", "profile_path", "PROFILES", "ENV_DIR", "apply_overrides",
]

ENV_DIR = Path(__file__).resolve().parent.parent / "env"
PROFILES = ("smoke", "default", "paper")
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 32)


class ConfigError(ValueError):
    """A profile or override is invalid; the message names the dotted key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"          # fashion_mnist | cifar10 | imagefolder
    root: Optional[str] = None              # directory; else APQ_DATA_DIR, Debian, download
    download: bool = True                   # allow torchvision download as the last resort
    val_size: int = 5000                    # held out from train with a fixed seed
    split_seed: int = 0
    train_subset: Optional[int] = None      # cap on training images (after the val split)
    val_subset: Optional[int] = None
    test_subset: Optional[int] = None
    image_size: int = 32                    # Fashion-MNIST 28x28 is zero-padded to 32
    batch_size: int = 256
    eval_batch_size: int = 1000
    augment: bool = True                    # random crop (pad 2) + horizontal flip
    num_workers: int = 0

    def check(self, p: str) -> None:
        _check(self.dataset in ("fashion_mnist", "cifar10", "imagefolder"), f"{p}.dataset",
               f"unknown dataset {self.dataset!r}; use fashion_mnist, cifar10 or imagefolder")
        _check(self.val_size > 0, f"{p}.val_size", "must be > 0")
        _check(self.image_size >= 8, f"{p}.image_size", "must be >= 8")
        _check(self.batch_size > 0, f"{p}.batch_size", "must be > 0")
        _check(self.eval_batch_size > 0, f"{p}.eval_batch_size", "must be > 0")
        for k in ("train_subset", "val_subset", "test_subset"):
            v = getattr(self, k)
            _check(v is None or v > 0, f"{p}.{k}", "must be > 0 or null")
        _check(self.num_workers >= 0, f"{p}.num_workers", "must be >= 0")


@dataclass
class SpaceConfig:
    """APQ's search space, sized by the profile (see ``apq_lib.supernet.space``)."""
    stem_width: int = 16                    # fixed 3x3 stem conv
    stem_stride: int = 1
    head_width: int = 8                     # fixed expand-1 MBConv after the stem
    stage_widths: list[int] = field(default_factory=lambda: [16, 24, 32, 48, 64, 96])
    stage_strides: list[int] = field(default_factory=lambda: [1, 2, 2, 1, 2, 1])
    stage_max_depth: list[int] = field(default_factory=lambda: [4, 4, 4, 4, 4, 1])
    depth_choices: list[int] = field(default_factory=lambda: [2, 3, 4])
    kernel_choices: list[int] = field(default_factory=lambda: [3, 5, 7])
    expand_min: int = 4                     # middle channels from expand_min*C_in ...
    expand_max: int = 6                     # ... to expand_max*C_in
    channel_step: int = 8                   # ... in steps of 8 (fine-grained pruning)
    bit_choices: list[int] = field(default_factory=lambda: [4, 6, 8])
    tail_width: int = 256                   # fixed 8-bit 1x1 conv before the classifier
    forbid_k7_a4: bool = False              # APQ's LUT had no 7x7 depthwise with 4-bit acts
    image_size: int = 32
    in_channels: int = 1
    num_classes: int = 10

    def check(self, p: str) -> None:
        n = len(self.stage_widths)
        _check(n >= 1, f"{p}.stage_widths", "needs at least one stage")
        _check(len(self.stage_strides) == n, f"{p}.stage_strides",
               f"needs {n} entries (one per stage)")
        _check(len(self.stage_max_depth) == n, f"{p}.stage_max_depth",
               f"needs {n} entries (one per stage)")
        _check(all(s in (1, 2) for s in self.stage_strides), f"{p}.stage_strides",
               "each stride must be 1 or 2")
        _check(all(d >= 1 for d in self.stage_max_depth), f"{p}.stage_max_depth", "must be >= 1")
        _check(self.depth_choices and all(d >= 1 for d in self.depth_choices),
               f"{p}.depth_choices", "must be a non-empty list of positive ints")
        _check(self.kernel_choices and all(k in (1, 3, 5, 7) for k in self.kernel_choices),
               f"{p}.kernel_choices", "kernels must be odd, from {1,3,5,7}")
        _check(0 < self.expand_min <= self.expand_max, f"{p}.expand_min",
               "need 0 < expand_min <= expand_max")
        _check(self.channel_step > 0, f"{p}.channel_step", "must be > 0")
        _check(self.bit_choices and all(b in VALID_BITS[:-1] for b in self.bit_choices),
               f"{p}.bit_choices", f"bits must be in 2..8, got {self.bit_choices}")
        for k in ("stem_width", "head_width", "tail_width", "image_size", "in_channels",
                  "num_classes"):
            _check(getattr(self, k) > 0, f"{p}.{k}", "must be > 0")
        _check(all(w % self.channel_step == 0 or w < self.channel_step
                   for w in self.stage_widths), f"{p}.stage_widths",
               "widths should be multiples of channel_step")


@dataclass
class SupernetConfig:
    """Progressive shrinking schedule (``apq_lib.supernet.train``): ``phases`` is a list of
    mappings with keys ``name, epochs, lr, kernels, depths, expands, subnets_per_step,
    distill`` (and optionally ``sandwich``); see ``apq_lib.supernet.train.Phase``."""
    phases: list[dict] = field(default_factory=list)
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    distill_weight: float = 1.0             # weight of the KD (soft-target KL) term
    warmup_epochs: int = 0                  # linear LR warm-up at the start of phase 0
    bn_recal_images: int = 2000             # training images for BN recalibration
    eval_images: int = 2000                 # validation images for the per-epoch curves
    n_random_subnets: int = 100             # random subnets evaluated in notebook 01
    random_eval_images: Optional[int] = None  # val and test images per random subnet in
                                            # notebook 01 (None: whole splits)
    log_every: int = 50

    PHASE_KEYS = ("name", "epochs", "lr", "kernels", "depths", "expands", "subnets_per_step",
                  "distill", "sandwich")

    def check(self, p: str) -> None:
        _check(len(self.phases) > 0, f"{p}.phases", "needs at least one phase")
        for i, ph in enumerate(self.phases):
            q = f"{p}.phases[{i}]"
            _check(isinstance(ph, dict) and "name" in ph and "epochs" in ph, q,
                   "each phase needs 'name' and 'epochs'")
            bad = sorted(set(ph) - set(self.PHASE_KEYS))
            _check(not bad, q, f"unknown key(s) {bad}; allowed {list(self.PHASE_KEYS)}")
            _check(isinstance(ph["epochs"], int) and ph["epochs"] >= 0, f"{q}.epochs",
                   "must be an int >= 0")
            _check(float(ph.get("lr", 0.1)) > 0, f"{q}.lr", "must be > 0")
            _check(int(ph.get("subnets_per_step", 1)) >= 1, f"{q}.subnets_per_step",
                   "must be >= 1")
            for k in ("kernels", "depths", "expands"):
                v = ph.get(k, [1])
                _check(isinstance(v, list) and len(v) > 0 and all(
                    isinstance(x, (int, float)) and x > 0 for x in v), f"{q}.{k}",
                    "must be a non-empty list of positive numbers")
        _check(self.optimizer in ("sgd", "adam"), f"{p}.optimizer", "use sgd or adam")
        _check(self.bn_recal_images > 0, f"{p}.bn_recal_images", "must be > 0")
        _check(self.eval_images > 0, f"{p}.eval_images", "must be > 0")
        _check(self.random_eval_images is None or self.random_eval_images > 0,
               f"{p}.random_eval_images", "must be > 0 or null (whole splits)")
        _check(self.n_random_subnets > 0, f"{p}.n_random_subnets", "must be > 0")
        _check(self.warmup_epochs >= 0, f"{p}.warmup_epochs", "must be >= 0")


@dataclass
class QuantConfig:
    weight_calibration: str = "minmax"      # minmax | percentile | kl | mse
    act_calibration: str = "pact"
    kl_below_bits: int = 5                  # APQ: KL threshold for weights when bits < 5
    calib_images: int = 512
    qat_epochs: float = 1.0
    qat_lr: float = 1e-3
    use_triton: str = "auto"                # auto | always | never

    def check(self, p: str) -> None:
        _check(self.weight_calibration in ("minmax", "percentile", "kl", "mse"),
               f"{p}.weight_calibration", "use minmax, percentile, kl or mse")
        _check(self.calib_images > 0, f"{p}.calib_images", "must be > 0")
        _check(self.qat_epochs >= 0, f"{p}.qat_epochs", "must be >= 0")
        _check(self.use_triton in ("auto", "always", "never"), f"{p}.use_triton",
               "use auto, always or never")


@dataclass
class HardwareConfig:
    simulators: list[str] = field(default_factory=lambda: ["bitfusion", "bismo_edge",
                                                           "bismo_cloud"])
    measure_cpu: bool = True
    cpu_repeats: int = 20
    cpu_threads: int = 1                    # threads for measured CPU latency (shared box: 1)
    mbv2_resolution: int = 224
    mbv2_bits: list[int] = field(default_factory=lambda: [8, 6, 4])   # uniform WbAb policies

    def check(self, p: str) -> None:
        ok = {"bitfusion", "bismo_edge", "bismo_cloud"}
        _check(all(s in ok for s in self.simulators), f"{p}.simulators",
               f"unknown simulator; allowed {sorted(ok)}")
        _check(self.cpu_repeats > 0, f"{p}.cpu_repeats", "must be > 0")
        _check(self.cpu_threads > 0, f"{p}.cpu_threads", "must be > 0")
        _check(self.mbv2_resolution >= 32, f"{p}.mbv2_resolution", "must be >= 32")
        _check(bool(self.mbv2_bits) and all(2 <= b <= 8 for b in self.mbv2_bits),
               f"{p}.mbv2_bits", "bits must be in 2..8 (BitFusion/BISMO range)")


@dataclass
class PredictorConfig:
    """Predictor data (APQ §3.2) and training (see ``apq_lib.predictor``)."""
    fp32_pairs: int = 2000
    quant_pairs: int = 400
    policies_per_arch: int = 10             # APQ's second sampler
    finetune_steps: int = 20                # QAT steps per quantized pair
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 64
    finetune_optimizer: str = "sgd"         # sgd (Nesterov 0.9) | adam
    eval_images: int = 2000                 # validation images per pair
    quant_eval_images: Optional[int] = None  # per quantized pair (None: eval_images)
    recal_images: int = 2000                # training images for BN recalibration per pair
    workers: int = 1                        # collection processes (CLI shards) in notebook 03
    hidden: int = 400
    n_layers: int = 3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 300
    patience: int = 30
    holdout_fraction: float = 0.2
    transfer_branch_init: str = "zeros"     # zeros | default (PyTorch init of the new branch)
    study_sizes: list[int] = field(default_factory=lambda: [25, 50, 100, 200, 300])
    study_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def check(self, p: str) -> None:
        for k in ("fp32_pairs", "quant_pairs", "policies_per_arch", "eval_images",
                  "recal_images", "finetune_batch_size", "workers", "hidden", "n_layers",
                  "batch_size", "epochs", "patience"):
            _check(getattr(self, k) > 0, f"{p}.{k}", "must be > 0")
        _check(self.quant_eval_images is None or self.quant_eval_images > 0,
               f"{p}.quant_eval_images", "must be > 0 or null")
        _check(self.finetune_steps >= 0, f"{p}.finetune_steps", "must be >= 0")
        _check(self.finetune_lr >= 0, f"{p}.finetune_lr", "must be >= 0")
        _check(self.finetune_optimizer in ("sgd", "adam"), f"{p}.finetune_optimizer",
               "use sgd or adam")
        _check(self.transfer_branch_init in ("zeros", "default"), f"{p}.transfer_branch_init",
               "use zeros or default")
        _check(0 < self.holdout_fraction < 1, f"{p}.holdout_fraction", "must be in (0, 1)")
        _check(len(self.study_sizes) > 0 and all(n > 0 for n in self.study_sizes),
               f"{p}.study_sizes", "must be a non-empty list of positive ints")
        _check(len(self.study_seeds) > 0, f"{p}.study_seeds", "must be non-empty")
        # the held-out split takes whole architecture groups: at least the fraction, at
        # most policies_per_arch - 1 pairs more
        n_train = (self.quant_pairs - -(-self.quant_pairs * self.holdout_fraction // 1)
                   - (self.policies_per_arch - 1))
        _check(max(self.study_sizes) <= n_train, f"{p}.study_sizes",
               f"largest size {max(self.study_sizes)} may exceed the {int(n_train)} quantized "
               f"training pairs left after the held-out split")


@dataclass
class SearchConfig:
    population: int = 100
    parents: int = 25
    mutants: int = 50
    crossovers: int = 50
    mutation_prob: float = 0.1
    generations: int = 500
    latency_targets_ms: list[float] = field(default_factory=list)
    energy_targets_mj: list[float] = field(default_factory=list)
    bitops_targets_g: list[float] = field(default_factory=list)
    finetune_epochs: float = 1.0
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 64           # QAT finetune of each found model
    test_images: Optional[int] = None       # cap on test images per found model (None: all)
    recal_images: Optional[int] = None      # BN recal of found models (None: supernet's)
    threads: Optional[int] = None           # torch threads in notebook 04 (None: default;
                                            # 1 is several times faster on a busy box)
    max_tries: int = 20                     # rejection-sampling rounds per batch of children
    unique_parents: bool = True             # parents = top distinct candidates (APQ: no)
    sweep_points: int = 4                   # targets derived per cost when a list is empty
    sweep_quantiles: list[float] = field(default_factory=list)  # their quantiles of the cost
                                            # of random subnets (empty: (i + 0.5) / sweep_points)
    random_baseline: bool = True            # also run random search at the same budget

    def check(self, p: str) -> None:
        _check(self.population > 0, f"{p}.population", "must be > 0")
        _check(self.mutants >= 0 and self.crossovers >= 0 and
               self.mutants + self.crossovers > 0, f"{p}.mutants",
               "need mutants + crossovers > 0 children per generation")
        _check(self.max_tries > 0, f"{p}.max_tries", "must be > 0")
        _check(self.sweep_points > 0, f"{p}.sweep_points", "must be > 0")
        _check(all(0 <= q <= 1 for q in self.sweep_quantiles), f"{p}.sweep_quantiles",
               "quantiles must be in [0, 1]")
        _check(self.finetune_epochs >= 0, f"{p}.finetune_epochs", "must be >= 0")
        _check(self.finetune_batch_size > 0, f"{p}.finetune_batch_size", "must be > 0")
        for k in ("test_images", "recal_images", "threads"):
            _check(getattr(self, k) is None or getattr(self, k) > 0, f"{p}.{k}",
                   "must be > 0 or null")
        _check(0 < self.parents <= self.population, f"{p}.parents",
               "must be in 1..population")
        _check(0 <= self.mutation_prob <= 1, f"{p}.mutation_prob", "must be in [0, 1]")
        _check(self.generations > 0, f"{p}.generations", "must be > 0")
        for k in ("latency_targets_ms", "energy_targets_mj", "bitops_targets_g"):
            _check(all(t > 0 for t in getattr(self, k)), f"{p}.{k}", "targets must be > 0")


@dataclass
class FBNetConfig:
    """Notebook 05's FBNet baseline (Wu et al. 2019, apq_lib.baselines.fbnet)."""
    enabled: bool = True
    variants: list[str] = field(default_factory=lambda: ["haq", "bits"])  # (a) W8A8 → HAQ,
                                            # (b) per-block weight / activation bits as choices
    latency_targets_ms: list[float] = field(default_factory=list)  # empty: from notebook 04
    max_targets: int = 2                    # APQ latency budgets taken from notebook 04
    mid_points: int = 2                     # middle-channel choices per block (spread)
    train_images: int = 2000                # search subset of the training split, split
    val_fraction: float = 0.2               # 80 / 20 into weight / θ batches (paper)
    batch_size: int = 64
    warmup_epochs: int = 2                  # weights only (shared by every search)
    epochs: int = 2                         # joint epochs per search (temperature per epoch)
    w_lr: float = 0.1                       # weights: SGD momentum 0.9, cosine (paper)
    w_weight_decay: float = 1e-4
    theta_lr: float = 0.01                  # θ: Adam (paper: 0.01, weight decay 5e-4)
    theta_weight_decay: float = 5e-4
    tau0: float = 5.0                       # Gumbel-softmax temperature, × tau_decay per epoch
    tau_decay: float = 0.956
    alpha: float = 0.2                      # loss = CE · α · log(LAT)^β (paper eq. 8)
    beta: float = 0.6
    latency_scale: float = 25.0             # LAT in units of target/scale: the budget maps
                                            # to the paper's ~25 ms operating point
    haq_episodes: Optional[int] = None      # HAQ on FBNet's model (None: baselines.haq_*)
    haq_warmup: Optional[int] = None

    def check(self, p: str) -> None:
        _check(all(v in ("haq", "bits") for v in self.variants), f"{p}.variants",
               "use 'haq' (W8A8 search, then HAQ) and/or 'bits' (bits as choices)")
        for k in ("max_targets", "mid_points", "train_images", "batch_size", "epochs",
                  "w_lr", "theta_lr", "tau0", "alpha", "beta", "latency_scale"):
            _check(getattr(self, k) > 0, f"{p}.{k}", "must be > 0")
        _check(self.warmup_epochs >= 0, f"{p}.warmup_epochs", "must be >= 0")
        _check(0 < self.val_fraction < 1, f"{p}.val_fraction", "must be in (0, 1)")
        _check(0 < self.tau_decay <= 1, f"{p}.tau_decay", "must be in (0, 1]")
        _check(all(t > 0 for t in self.latency_targets_ms), f"{p}.latency_targets_ms",
               "targets must be > 0")
        _check(self.haq_episodes is None or self.haq_episodes > 0, f"{p}.haq_episodes",
               "must be > 0 or null")
        _check(self.haq_warmup is None or self.haq_warmup >= 0, f"{p}.haq_warmup",
               "must be >= 0 or null")


@dataclass
class BaselinesConfig:
    """Notebook 05: fixed-precision, HAQ, HAWQ-V2, multi-stage and pruning baselines."""
    # fixed-architecture "MobileNetV2" (largest subnet, trained from scratch): "supernet"
    # takes the supernet's full-network phase (the largest subnet trained alone from scratch
    # on the labels, same recipe and data; no extra cost), "train" trains it here with
    # scratch_epochs / scratch_images / scratch_lr
    scratch_source: str = "train"
    scratch_epochs: int = 5
    scratch_images: Optional[int] = None    # training images per epoch (None: all)
    scratch_lr: float = 0.05
    # shared finetune / evaluation budget
    finetune_batch_size: int = 64
    finetune_lr: float = 1e-3
    qat_steps: int = 100                    # QAT / final finetune steps of every baseline
    calib_images: int = 256
    reward_images: int = 1000               # validation images for HAQ's reward
    test_images: Optional[int] = None       # test images for the reported accuracy
    fixed_bits: list[int] = field(default_factory=lambda: [8, 6, 4])
    apq_models: int = 2                     # APQ's found models also run at fixed bits
    # constraints: when empty, taken from notebook 04's rows
    latency_targets_ms: list[float] = field(default_factory=list)
    energy_targets_mj: list[float] = field(default_factory=list)
    bitops_targets_g: list[float] = field(default_factory=list)
    max_targets: int = 2                    # per cost, when taken from notebook 04
    relative_targets: list[float] = field(default_factory=lambda: [0.75])  # HAQ / HAWQ also
                                            # at these fractions of MobileNetV2's W8A8 cost
    haq_costs: list[str] = field(default_factory=lambda: ["latency", "energy"])
    hawq_costs: list[str] = field(default_factory=lambda: ["latency", "energy", "bitops"])
    multistage_costs: list[str] = field(default_factory=lambda: ["latency"])
    # HAQ (DDPG)
    haq_episodes: int = 100
    haq_warmup: int = 20
    haq_finetune_steps: int = 20
    haq_bits: list[int] = field(default_factory=lambda: [2, 8])     # [b_min, b_max] of
                                            # HAQ and HAWQ-V2 (HAQ's own range: 2..8)
    haq_kmeans_bits: list[int] = field(default_factory=lambda: [2, 8])   # k-means weights
    haq_kmeans: bool = True                 # also HAQ with k-means weights, size target
    haq_size_fraction: float = 0.1          # k-means size target / FP32 weight size
    # HAWQ-V2
    hawq_samples: int = 20
    hawq_images: int = 256
    # pruning
    prune_ratios: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95])
    prune_scopes: list[str] = field(default_factory=lambda: ["global", "layer"])
    prune_steps: int = 100                  # finetune steps with the gradual schedule
    prune_lr: float = 0.01                  # their (cosine) learning rate
    channel_prune_ratio: float = 0.25       # multi-stage: middle channels removed
    multistage_arch_slack: float = 1.3      # FP32 search target = slack × target at W8A8
    # search-cost table
    amortize_searches: int = 10             # N for the amortised cost column
    threads: Optional[int] = None           # torch threads in notebook 05 (None: default;
                                            # 1 is several times faster on a busy box)
    fbnet: FBNetConfig = field(default_factory=FBNetConfig)

    def check(self, p: str) -> None:
        self.fbnet.check(f"{p}.fbnet")
        _check(self.scratch_source in ("supernet", "train"), f"{p}.scratch_source",
               "use 'supernet' (the supernet's full-network phase) or 'train'")
        _check(self.haq_episodes > 0, f"{p}.haq_episodes", "must be > 0")
        _check(0 <= self.haq_warmup <= self.haq_episodes, f"{p}.haq_warmup",
               "must be in 0..haq_episodes")
        for k in ("haq_bits", "haq_kmeans_bits"):
            v = getattr(self, k)
            _check(len(v) == 2 and 2 <= v[0] <= v[1] <= 8, f"{p}.{k}",
                   "needs [b_min, b_max] with 2 <= b_min <= b_max <= 8")
        _check(all(0 < r < 1 for r in self.prune_ratios), f"{p}.prune_ratios",
               "ratios must be in (0, 1)")
        _check(all(s in ("global", "layer") for s in self.prune_scopes), f"{p}.prune_scopes",
               "use global and/or layer")
        _check(0 <= self.channel_prune_ratio < 1, f"{p}.channel_prune_ratio",
               "must be in [0, 1)")
        _check(all(2 <= b <= 8 for b in self.fixed_bits), f"{p}.fixed_bits",
               "bits must be in 2..8")
        _check(0 < self.haq_size_fraction < 1, f"{p}.haq_size_fraction", "must be in (0, 1)")
        _check(self.multistage_arch_slack >= 1, f"{p}.multistage_arch_slack", "must be >= 1")
        _check(self.amortize_searches >= 1, f"{p}.amortize_searches", "must be >= 1")
        for k in ("scratch_epochs", "finetune_batch_size", "calib_images", "reward_images",
                  "hawq_samples", "hawq_images", "max_targets"):
            _check(getattr(self, k) > 0, f"{p}.{k}", "must be > 0")
        for k in ("qat_steps", "prune_steps", "haq_finetune_steps", "apq_models"):
            _check(getattr(self, k) >= 0, f"{p}.{k}", "must be >= 0")
        for k in ("scratch_images", "test_images"):
            v = getattr(self, k)
            _check(v is None or v > 0, f"{p}.{k}", "must be > 0 or null")
        for k in ("latency_targets_ms", "energy_targets_mj", "bitops_targets_g"):
            _check(all(t > 0 for t in getattr(self, k)), f"{p}.{k}", "targets must be > 0")
        for k, ok in (("haq_costs", ("latency", "energy", "bitops")),
                      ("hawq_costs", ("latency", "energy", "bitops")),
                      ("multistage_costs", ("latency", "energy"))):
            _check(all(c in ok for c in getattr(self, k)), f"{p}.{k}",
                   f"costs must be from {list(ok)}")
        _check(self.threads is None or self.threads > 0, f"{p}.threads", "must be > 0 or null")
        _check(all(0 < f < 1 for f in self.relative_targets), f"{p}.relative_targets",
               "fractions must be in (0, 1)")


@dataclass
class Profile:
    name: str = "default"
    seed: int = 0
    device: str = "auto"                    # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    # papermill parameters per notebook, e.g. {"01_supernet": {"force": false}}
    notebooks: dict[str, dict] = field(default_factory=dict)

    def check(self, p: str = "") -> None:
        _check(self.device in ("auto", "cpu", "cuda"), "device", "use auto, cpu or cuda")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v.check(f.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *names: str) -> str:
        """Stable hash of some sections (used as part of artifact keys)."""
        d = {n: dataclasses.asdict(getattr(self, n)) if dataclasses.is_dataclass(
            getattr(self, n)) else getattr(self, n) for n in names}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def params_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading
def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, coerced value) for a YAML value against a type hint."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is type(None):
                continue
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for x in value:
            ok, v = _type_ok(x, args[0] if args else Any)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _build(cls: type, data: dict, path: str, base: Any = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'profile'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    obj = base if base is not None else cls()
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        if key not in names:
            raise ConfigError(f"{dotted}: unknown key; allowed keys are {sorted(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            setattr(obj, key, _build(tp, value, dotted, getattr(obj, key)))
            continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
            raise ConfigError(f"{dotted}: expected {tname}, got {value!r}")
        setattr(obj, key, coerced)
    return obj


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    cur[parts[-1]] = value


def apply_overrides(raw: dict, overrides: Optional[dict]) -> dict:
    """Merge ``{"supernet.n_random_subnets": 10, "data": {"batch_size": 64}}`` into raw."""
    out = json.loads(json.dumps(raw))
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and "." not in k and isinstance(out.get(k), dict):
            for kk, vv in v.items():
                _set_dotted(out, f"{k}.{kk}", vv)
        else:
            _set_dotted(out, k, v)
    return out


def profile_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    p = ENV_DIR / f"params_{name}.yaml"
    if not p.exists():
        raise ConfigError(f"profile: unknown profile {name!r}; choose one of {PROFILES} "
                          f"or give a path to a params_*.yaml file")
    return p


def load_profile(name: str = "default", overrides: Optional[dict] = None) -> Profile:
    """Load ``env/params_<name>.yaml`` (or a yaml path), apply dotted overrides, validate."""
    path = profile_path(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"profile: {path} is not valid YAML: {e}") from e
    raw = apply_overrides(raw, overrides)
    raw.setdefault("name", Path(name).stem.replace("params_", ""))
    prof = _build(Profile, raw, "")
    prof.check()
    return prof
