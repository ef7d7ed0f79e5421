"""Typed experiment profiles (smoke / default / paper_counts / imagenet) loaded from
``env/params_*.yaml``.

A profile is a nested YAML mapping. Each section maps onto a dataclass below; the loader
checks every key (unknown keys, wrong types and impossible values raise ``ConfigError``
naming the dotted key, e.g. ``space.bit_choices``).

Ranges, choices and finiteness are declared once per field with :func:`param` (field
metadata) and checked generically, so a new key gets its checks by declaring them: every
float must be finite unless its field says ``finite=False``; a value outside ``choices`` is
an error, never clipped. A section's ``check`` holds only the rules that relate fields.
``cache=False`` marks a field that cannot change any result (threads, paths, logging), so
no artifact key contains it (see :class:`apq_lib.artifacts.StageKey`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .fields import (
    ConfigError,
    _build,
    _check,
    apply_overrides,
    check_fields,
    field_rules,
    key_dict,
    leaf_fields,
    load_yaml,
    param,
)

__all__ = [
    "ConfigError", "DataConfig", "SpaceConfig", "SupernetConfig", "QuantConfig",
    "HardwareConfig", "PredictorConfig", "SearchConfig", "BaselinesConfig", "Profile",
    "load_profile", "profile_path", "PROFILES", "NOTEBOOKS", "ENV_DIR", "apply_overrides", "param",
    "Phase", "PHASE_KEYS", "check_fields", "field_rules", "leaf_fields", "FinetuneConfig",
    "DeployConfig", "SparsityConfig", "FBNetConfig", "key_dict",
]

ENV_DIR = Path(__file__).resolve().parent.parent / "env"
PROFILES = ("smoke", "default", "paper_counts", "imagenet")
# the chain, in order (``make reproduce``); every results file starts with its number
NOTEBOOKS = ("01_supernet", "02_hardware", "03_predictor", "04_search", "05_baselines",
             "06_paper_tables", "07_deploy", "08_sparsity")
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 32)
_COSTS = ("latency", "energy", "bitops")


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    dataset: str = param("fashion_mnist", choices=("fashion_mnist", "cifar10", "imagefolder"))
    root: Optional[str] = param(None, cache=False)  # dir; else APQ_DATA_DIR, Debian, download
    download: bool = param(True, cache=False)  # allow torchvision download as the last resort
    val_size: int = param(5000, gt=0)       # held out from train with a fixed seed
    split_seed: int = param(0, ge=0, le=2**31 - 1)
    train_subset: Optional[int] = param(None, gt=0)  # cap on training images (after val split)
    val_subset: Optional[int] = param(None, gt=0)
    test_subset: Optional[int] = param(None, gt=0)
    image_size: int = param(32, ge=8)       # Fashion-MNIST 28x28 is zero-padded to 32
    batch_size: int = param(256, gt=0)
    eval_batch_size: int = param(1000, gt=0)
    augment: bool = True                    # random crop (pad 2) + horizontal flip
    num_workers: int = param(0, ge=0, cache=False)

    def check(self, p: str) -> None:
        check_fields(self, p)


@dataclass
class SpaceConfig:
    """APQ's search space, sized by the profile (see ``apq_lib.supernet.space``)."""
    stem_width: int = param(16, gt=0)       # fixed 3x3 stem conv
    stem_stride: int = param(1, choices=(1, 2))
    head_width: int = param(8, gt=0)        # fixed expand-1 MBConv after the stem
    stage_widths: list[int] = param(default_factory=lambda: [16, 24, 32, 48, 64, 96],
                                    nonempty=True, gt=0)
    stage_strides: list[int] = param(default_factory=lambda: [1, 2, 2, 1, 2, 1],
                                     choices=(1, 2))
    stage_max_depth: list[int] = param(default_factory=lambda: [4, 4, 4, 4, 4, 1], ge=1)
    depth_choices: list[int] = param(default_factory=lambda: [2, 3, 4], nonempty=True, ge=1)
    kernel_choices: list[int] = param(default_factory=lambda: [3, 5, 7], nonempty=True,
                                      choices=(1, 3, 5, 7))
    expand_min: int = param(4, gt=0)        # middle channels from expand_min*C_in ...
    expand_max: int = param(6, gt=0)        # ... to expand_max*C_in
    channel_step: int = param(8, gt=0)      # ... in steps of 8 (fine-grained pruning)
    bit_choices: list[int] = param(default_factory=lambda: [4, 6, 8], nonempty=True,
                                   choices=VALID_BITS[:-1])
    tail_width: int = param(256, gt=0)      # fixed 8-bit 1x1 conv before the classifier
    forbid_k7_a4: bool = False              # APQ's LUT had no 7x7 depthwise with 4-bit acts
    image_size: int = param(32, gt=0)
    in_channels: int = param(1, gt=0)
    num_classes: int = param(10, ge=2)      # checked against the dataset's labels
    # BatchNorm of every layer of the supernet and of its exported subnets (eps is not in a
    # state dict: imported once-for-all weights need OFA's 1e-3). In an artifact key only
    # when changed from the default (keys of earlier profiles stay as they were).
    bn_eps: float = param(1e-5, gt=0, lt=1, cache="changed")
    bn_momentum: float = param(0.1, gt=0, le=1, cache="changed")

    def check(self, p: str) -> None:
        check_fields(self, p)            # the rules each field declares
        n = len(self.stage_widths)
        _check(len(self.stage_strides) == n, f"{p}.stage_strides",
               f"needs {n} entries (one per stage)")
        _check(len(self.stage_max_depth) == n, f"{p}.stage_max_depth",
               f"needs {n} entries (one per stage)")
        deepest = max(self.stage_max_depth)
        _check(all(d <= deepest for d in self.depth_choices), f"{p}.depth_choices",
               f"{self.depth_choices} has a depth no stage allows (stage_max_depth "
               f"{self.stage_max_depth}); use depths up to {deepest}")
        _check(self.expand_min <= self.expand_max, f"{p}.expand_min",
               "need expand_min <= expand_max")
        _check(all(w % self.channel_step == 0 or w < self.channel_step
                   for w in self.stage_widths), f"{p}.stage_widths",
               "widths should be multiples of channel_step")


@dataclass
class Phase:
    """One progressive-shrinking phase (OFA §3.2). ``kernels``/``depths``: allowed values
    (a stage whose choices miss them all uses its largest depth); ``expands``: expand
    ratios — a block samples every middle-channel choice between the choices nearest to
    ``min(expands)·C_in`` and ``max(expands)·C_in`` (so [6] = full width, [4, 6] = all of
    APQ's fine-grained choices). Left out, they default to the largest choice (the full
    network). ``sandwich``: also train the smallest subnet every step."""
    name: str
    epochs: int = param(ge=0)
    lr: float = param(0.1, gt=0)
    kernels: Optional[list[int]] = param(None, nonempty=True, choices=(1, 3, 5, 7))
    depths: Optional[list[int]] = param(None, nonempty=True, ge=1)
    expands: Optional[list[float]] = param(None, nonempty=True, gt=0)
    subnets_per_step: int = param(1, ge=1)
    distill: bool = False
    sandwich: bool = False

    def check(self, p: str) -> None:
        check_fields(self, p)

    @classmethod
    def from_dict(cls, d: "Mapping | Phase", where: str = "supernet.phases") -> "Phase":
        """A validated phase from a mapping (a :class:`Phase` is returned as is)."""
        if isinstance(d, Phase):
            return d
        ph = _build(cls, d, where)
        check_fields(ph, where)
        return ph


PHASE_KEYS = tuple(f.name for f in dataclasses.fields(Phase))


@dataclass
class SupernetConfig:
    """Progressive shrinking schedule (``apq_lib.supernet.train``): ``phases`` is a list of
    :class:`Phase` (YAML mappings with keys ``name, epochs, lr, kernels, depths, expands,
    subnets_per_step, distill, sandwich``), validated when the profile loads."""
    phases: list[Phase] = param(default_factory=list, nonempty=True)
    optimizer: str = param("sgd", choices=("sgd", "adam"))
    momentum: float = param(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = param(3e-5, ge=0)
    label_smoothing: float = param(0.1, ge=0, lt=1)
    distill_weight: float = param(1.0, ge=0)  # weight of the KD (soft-target KL) term
    warmup_epochs: int = param(0, ge=0)     # linear LR warm-up at the start of phase 0
    bn_recal_images: int = param(2000, gt=0)  # training images for BN recalibration
    eval_images: int = param(2000, gt=0)    # validation images for the per-epoch curves
    n_random_subnets: int = param(100, gt=0)  # random subnets evaluated in notebook 01
    random_eval_images: Optional[int] = param(None, gt=0)  # val and test images per random
                                            # subnet in notebook 01 (None: whole splits)
    log_every: int = param(50, gt=0, cache=False)
    # an official once-for-all ProxylessNAS checkpoint (apq_lib.supernet.ofa_import): the
    # supernet is imported from it instead of trained; phases with epochs > 0 then finetune
    # it (set every epochs to 0 for the import alone). Keyed by the file's sha256.
    init_from: Optional[str] = param(None, cache="changed")

    PHASE_KEYS = PHASE_KEYS

    def check(self, p: str) -> None:
        check_fields(self, p)


@dataclass
class QuantConfig:
    weight_calibration: str = param("minmax", choices=("minmax", "percentile", "kl", "mse"))
    kl_below_bits: Optional[int] = param(5, ge=2, le=9)  # APQ: KL for weights below 5 bits
                                            # (null: the weight_calibration method always)
    use_triton: str = param("auto", choices=("auto", "always", "never"))  # "always": the
                                            # Triton kernels (auto: aten, faster where measured)

    def check(self, p: str) -> None:
        check_fields(self, p)


@dataclass
class FinetuneConfig:
    """The one quantization-aware finetune every final model gets (``apq_lib.loops``): APQ's
    realised models (notebook 04), every baseline (05), the quantized predictor pairs (03,
    which override only ``steps``). Accuracy of a final model is measured on the test split
    (``test_images``: null = all of it, the same images for every model: paired)."""
    steps: int = param(35, ge=0)
    lr: float = param(1e-3, gt=0)
    batch_size: int = param(64, gt=0)
    optimizer: str = param("sgd", choices=("sgd", "adam"))   # sgd: Nesterov
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(4e-5, ge=0)
    label_smoothing: float = param(0.1, ge=0, lt=1)
    recal_images: int = param(1000, gt=0)   # BN recalibration after the finetune
    test_images: Optional[int] = param(None, gt=0)   # None: the whole test split
    seeds: int = param(1, ge=1)             # finetune seeds of the models behind Tables 1-2

    def check(self, p: str) -> None:
        check_fields(self, p)


@dataclass
class HardwareConfig:
    simulators: list[str] = param(default_factory=lambda: ["bitfusion", "bismo_edge",
                                                           "bismo_cloud"],
                                  nonempty=True, choices=("bitfusion", "bismo_edge",
                                                          "bismo_cloud"))
    measure_cpu: bool = True
    cpu_repeats: int = param(20, gt=0)
    cpu_threads: int = param(1, gt=0)       # threads for measured CPU latency (shared box: 1)
    mbv2_resolution: int = param(224, ge=32)
    mbv2_bits: list[int] = param(default_factory=lambda: [8, 6, 4], nonempty=True, ge=2,
                                 le=8)     # uniform WbAb policies (BitFusion/BISMO: 2..8)
    # BitFusion model options (apq_lib.hardware.bitfusion); defaults behave as APQ's table:
    # depthwise "grouped" (8·pf-channel dense groups) | "official" (1 input ch -> C outputs)
    bitfusion_depthwise: str = param("grouped", choices=("grouped", "official"))
    bitfusion_pad_tiles: bool = False       # round tile traffic up to the 16x32 array
    bitfusion_static_power: bool = True     # add SRAM leakage (~0.425 nJ per cycle)

    def bitfusion_options(self) -> dict:
        return {"depthwise": self.bitfusion_depthwise, "pad_tiles": self.bitfusion_pad_tiles,
                "static_power": self.bitfusion_static_power}

    def check(self, p: str) -> None:
        check_fields(self, p)


@dataclass
class PredictorConfig:
    """Predictor data (APQ §3.2) and training (see ``apq_lib.predictor``)."""
    fp32_pairs: int = param(2000, gt=0)
    quant_pairs: int = param(400, gt=0)
    policies_per_arch: int = param(6, gt=0)   # quantized pairs per architecture: uniform
                                              # lowest / middle / highest bits, then mixed
    large_fraction: float = param(0.25, ge=0, le=1)  # architectures drawn large (max depth,
                                              # upper-half widths); corners always included
    bit_spread: float = param(0.75, ge=0)     # per-layer SD (bit-choice indices) of a mixed
                                              # policy around its architecture's bit level
    finetune_steps: int = param(20, ge=0)   # QAT steps per quantized pair (of finetune:)
    eval_images: int = param(2000, gt=0)    # validation images per pair
    quant_eval_images: Optional[int] = param(None, gt=0)  # per quantized pair (None: eval_images)
    recal_images: int = param(2000, gt=0)   # training images for BN recalibration per pair
    workers: int = param(1, gt=0, cache=False)  # collection processes (CLI shards), notebook 03
    hidden: int = param(400, gt=0)
    n_layers: int = param(3, gt=0)
    lr: float = param(1e-3, gt=0)
    weight_decay: float = param(1e-4, ge=0)
    batch_size: int = param(256, gt=0)
    epochs: int = param(300, gt=0)
    patience: int = param(30, gt=0)
    holdout_fraction: float = param(0.2, gt=0, lt=1)
    transfer_branch_init: str = param("zeros", choices=("zeros", "default"))  # default: PyTorch
    ensemble: int = param(5, ge=1)          # members of each predictor (own seeds, averaged;
                                            # 5 as in deep ensembles); transfer member m
                                            # starts from FP32 member m
    study_sizes: list[int] = param(default_factory=lambda: [25, 50, 100, 200, 300],
                                   nonempty=True, gt=0)
    study_seeds: list[int] = param(default_factory=lambda: [0, 1, 2], nonempty=True, ge=0)
    cv_folds: int = param(5, ge=2)          # grouped (by architecture) k-fold CV, Table 4
    bootstrap_resamples: int = param(2000, ge=1000)  # over held-out architectures (CIs)
    realised_pairs: int = param(8, ge=2)    # held-out pairs realised as in notebook 04
    cv_seeds: int = param(3, ge=1)          # training seeds per fold of the grouped CV
    timing_configs: int = param(10_000, gt=0, cache=False)  # random configurations of
                                            # notebook 03's inference timing (its summary's
                                            # inference_ms_10k; the dry run times fewer)

    def check(self, p: str) -> None:
        check_fields(self, p)            # the rules each field declares
        # the held-out split takes whole architecture groups: at least the fraction, at
        # most policies_per_arch - 1 pairs more
        n_train = (self.quant_pairs - -(-self.quant_pairs * self.holdout_fraction // 1)
                   - (self.policies_per_arch - 1))
        _check(max(self.study_sizes) <= n_train, f"{p}.study_sizes",
               f"largest size {max(self.study_sizes)} may exceed the {int(n_train)} quantized "
               f"training pairs left after the held-out split")


@dataclass
class SearchConfig:
    population: int = param(100, gt=0)
    parents: int = param(25, gt=0)
    mutants: int = param(50, ge=0)
    crossovers: int = param(50, ge=0)
    mutation_prob: float = param(0.1, ge=0, le=1)
    generations: int = param(500, gt=0)
    latency_targets_ms: list[float] = param(default_factory=list, gt=0)
    energy_targets_mj: list[float] = param(default_factory=list, gt=0)
    bitops_targets_g: list[float] = param(default_factory=list, gt=0)
    threads: Optional[int] = param(None, gt=0, cache=False)  # torch threads in notebook 04
                                            # (None: default; 1 is faster on a busy box)
    max_tries: int = param(20, gt=0)        # rejection-sampling rounds per batch of children
    unique_parents: bool = True             # parents = top distinct candidates (APQ: no)
    sweep_points: int = param(4, gt=0)      # targets derived per cost when a list is empty
    sweep_quantiles: list[float] = param(default_factory=list, ge=0, le=1)  # their quantiles
                                            # of random subnets' cost (empty: (i + 0.5) / points)
    random_baseline: bool = True            # also run random search at the same budget
    # costs at which APQ is also searched at the fixed baselines' costs (MobileNetV2 at each
    # bit width, the largest corner at W8A8; notebook 04)
    baseline_costs: list[str] = param(default_factory=lambda: list(_COSTS), choices=_COSTS)
    seeds: int = param(2, ge=1)             # searches (evolution seeds) per budget at
                                            # MobileNetV2's costs; each winner gets
                                            # finetune.seeds finetune seeds (Tables 1 / 3)

    def check(self, p: str) -> None:
        check_fields(self, p)            # the rules each field declares
        _check(self.mutants + self.crossovers > 0, f"{p}.mutants",
               "need mutants + crossovers > 0 children per generation")
        _check(self.parents <= self.population, f"{p}.parents", "must be in 1..population")


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
    retrain_steps: int = 300                # train the searched architecture (SGD, cosine;
    retrain_lr: float = 0.05                # paper: from scratch) before the finetune recipe
    haq_episodes: Optional[int] = None      # HAQ on FBNet's model (None: baselines.haq_*)
    haq_warmup: Optional[int] = None

    def check(self, p: str) -> None:
        _check(all(v in ("haq", "bits") for v in self.variants), f"{p}.variants",
               "use 'haq' (W8A8 search, then HAQ) and/or 'bits' (bits as choices)")
        for k in ("max_targets", "mid_points", "train_images", "batch_size", "epochs",
                  "w_lr", "theta_lr", "retrain_lr", "tau0", "alpha", "beta", "latency_scale"):
            _check(getattr(self, k) > 0, f"{p}.{k}", "must be > 0")
        _check(self.warmup_epochs >= 0, f"{p}.warmup_epochs", "must be >= 0")
        _check(self.retrain_steps >= 0, f"{p}.retrain_steps", "must be >= 0")
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
    # the fixed network of Tables 1 and 3: the space's MobileNetV2 point (3x3, expand 6,
    # largest depth). "inherit": exported from the final supernet (the weights APQ's models
    # start from; then the one finetune recipe); "train": trained here from scratch with
    # scratch_epochs / scratch_images / scratch_lr
    scratch_source: str = param("inherit", choices=("inherit", "train"))
    # also train the same network standalone (the paper's protocol) and realise it at
    # fixed_bits with the finetune seeds: labelled reference rows beside the fixed network
    standalone_reference: bool = False
    scratch_epochs: Optional[int] = param(None, gt=0)  # None: the supernet's total epochs
    scratch_images: Optional[int] = param(None, gt=0)  # training images per epoch (None: all)
    scratch_lr: float = param(0.05, gt=0)
    # calibration images of the PTQ baselines (the finetune itself: the finetune: section)
    calib_images: int = param(256, gt=0)
    reward_images: int = param(1000, gt=0)  # validation images for HAQ's reward
    fixed_bits: list[int] = param(default_factory=lambda: [8, 6, 4], nonempty=True, ge=2, le=8)
    apq_models: int = param(2, ge=0)        # APQ's found models also run at fixed bits
    # constraints: when empty, taken from notebook 04's rows
    latency_targets_ms: list[float] = param(default_factory=list, gt=0)
    energy_targets_mj: list[float] = param(default_factory=list, gt=0)
    bitops_targets_g: list[float] = param(default_factory=list, gt=0)
    max_targets: int = param(2, gt=0)       # per cost, when taken from notebook 04
    relative_targets: list[float] = param(default_factory=lambda: [0.75], gt=0, lt=1)  # HAQ /
                                            # HAWQ also at these fractions of MBV2's W8A8 cost
    haq_costs: list[str] = param(default_factory=lambda: ["latency", "energy"], nonempty=True,
                                 choices=_COSTS)
    hawq_costs: list[str] = param(default_factory=lambda: ["latency", "energy", "bitops"],
                                  nonempty=True, choices=_COSTS)
    multistage_costs: list[str] = param(default_factory=lambda: ["latency"], nonempty=True,
                                        choices=("latency", "energy"))
    # HAQ (DDPG)
    haq_episodes: int = param(100, gt=0)
    haq_warmup: int = param(20, ge=0)
    # exploration noise σ at the last episode: the decay per episode is chosen so that σ goes
    # from 0.5 to this over the episodes after warm-up (None: HAQ's fixed 0.99 per episode,
    # which reaches ~0.0015 only after its 600 episodes)
    haq_final_sigma: Optional[float] = param(None, gt=0, lt=0.5)
    haq_finetune_steps: int = param(20, ge=0)
    haq_bits: list[int] = param(default_factory=lambda: [2, 8], length=2, ge=2, le=8)  # [b_min,
                                            # b_max] of HAQ and HAWQ-V2 (HAQ's own range: 2..8)
    haq_kmeans_bits: list[int] = param(default_factory=lambda: [2, 8], length=2, ge=2,
                                       le=8)   # k-means weights
    haq_kmeans: bool = True                 # also HAQ with k-means weights, size target
    haq_size_fraction: float = param(0.1, gt=0, lt=1)  # k-means size target / FP32 size
    # HAWQ-V2
    hawq_samples: int = param(20, gt=0)
    hawq_images: int = param(256, gt=0)
    # pruning
    prune_ratios: list[float] = param(default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95],
                                      gt=0, lt=1, nonempty=True)
    prune_scopes: list[str] = param(default_factory=lambda: ["global", "layer"],
                                    choices=("global", "layer"))
    prune_steps: int = param(100, ge=0)     # finetune steps with the gradual schedule
    prune_lr: float = param(0.01, gt=0)     # their (cosine) learning rate
    channel_prune_ratio: float = param(0.25, ge=0, lt=1)  # multi-stage: channels removed
    multistage_arch_slack: float = param(1.3, ge=1)  # FP32 search target = slack × W8A8 target
    # search-cost table
    amortize_searches: int = param(10, ge=1)  # N for the amortised cost column
    threads: Optional[int] = param(None, gt=0, cache=False)  # torch threads in notebook 05
                                            # (None: default; 1 is faster on a busy box)
    fbnet: FBNetConfig = field(default_factory=FBNetConfig)

    def check(self, p: str) -> None:
        check_fields(self, p)            # the rules each field declares
        self.fbnet.check(f"{p}.fbnet")
        _check(self.haq_warmup <= self.haq_episodes, f"{p}.haq_warmup",
               "must be in 0..haq_episodes")
        for k in ("haq_bits", "haq_kmeans_bits"):
            v = getattr(self, k)
            _check(v[0] <= v[1], f"{p}.{k}", "needs [b_min, b_max] with b_min <= b_max")


@dataclass
class DeployConfig:
    """Notebook 07: integer-only inference, ONNX / QONNX export, onnxruntime latency."""
    max_models: int = param(2, gt=0)        # of notebook 04's models (each also at W8A8)
    parity_images: int = param(0, ge=0)     # test images for integer parity (0: all)
    batch_size: int = param(500, gt=0)      # images per batch in the parity run
    extra_bits: int = param(16, ge=0, le=20)  # extra fractional bits of the int32 residual
                                            # stream / pool (one more rounding, ≤ 2^-k LSB)
    bias_correction: bool = True            # add the bias's sub-LSB part in the requantizer
    ort_images: int = param(500, gt=0)      # images run through onnxruntime / QONNX parity
    qonnx_images: int = param(16, gt=0)     # of those, through qonnx's (slow) executor
    latency_repeats: int = param(50, gt=0)
    latency_warmup: int = param(10, ge=0)

    def check(self, p: str) -> None:
        check_fields(self, p)


@dataclass
class SparsityConfig:
    """Notebook 08: magnitude vs VD vs L0 (Gale et al. 2019) and lottery tickets with
    rewinding / linear mode connectivity (Frankle et al. 2020) on LeNet-300-100."""
    seeds: int = param(3, ge=2)             # the spread needs two seeds
    threads: Optional[int] = param(1, gt=0, cache=False)  # torch threads (None: default)
    hidden: list[int] = param(default_factory=lambda: [300, 100], nonempty=True, gt=0)
    batch_size: int = param(128, gt=0)
    test_images: Optional[int] = param(None, gt=0)  # None: the whole test split
    # (a) accuracy vs sparsity at equal training budget
    steps: int = param(300, gt=0)           # training steps of every model in (a)
    lr: float = param(0.05, gt=0)           # SGD Nesterov, cosine (dense, magnitude, controls)
    targets: list[float] = param(default_factory=lambda: [0.5, 0.8, 0.9, 0.95, 0.98],
                                 nonempty=True, gt=0, lt=1)
    scope: str = param("global", choices=("global", "layer"))  # magnitude pruning scope
    prune_updates: int = param(10, gt=0)    # Zhu & Gupta updates
    prune_start: float = param(0.1, ge=0, lt=1)  # schedule from / to these fractions of steps
    prune_end: float = param(0.75, gt=0, le=1)
    reg_lr: float = param(1e-3, gt=0)       # Adam for VD and L0 (as in their papers)
    vd_lambdas: list[float] = param(default_factory=lambda: [1.0], ge=0)  # KL weight × 1/N
    l0_lambdas: list[float] = param(default_factory=lambda: [3.0], ge=0)  # E[L0] weight × 1/N
    l0_init_drop: float = param(0.3, gt=0, lt=1)
    l0_gate_scale: float = param(50.0, gt=0)  # log α = scale · raw (gate lr multiplier)
    # (b) instability and IMP with rewinding
    lmc_steps: int = param(300, gt=0)       # constant-lr training length T
    lmc_lr: float = param(0.02, gt=0)
    lmc_ks: list[int] = param(default_factory=lambda: [0, 25, 100], ge=0)
    lmc_points: int = param(11, ge=11)
    stable_barrier: float = param(2.0, gt=0)  # error (%) under which k counts as stable
    imp_rounds: int = param(8, ge=1)
    imp_rate: float = param(0.2, gt=0, lt=1)
    imp_output_rate: Optional[float] = param(0.1, gt=0, lt=1)  # output layer's (layer scope)
    imp_scope: str = param("layer", choices=("global", "layer"))
    bootstrap: int = param(2000, gt=0)      # resamples of the paired bootstrap

    def check(self, p: str) -> None:
        check_fields(self, p)
        _check(self.prune_start < self.prune_end, f"{p}.prune_start",
               "need prune_start < prune_end")
        _check(all(k < self.lmc_steps for k in self.lmc_ks) and 0 in self.lmc_ks,
               f"{p}.lmc_ks", "needs k = 0 and every k in [0, lmc_steps)")


@dataclass
class Profile:
    name: str = param("default", cache=False)
    seed: int = param(0, ge=0, le=2**31 - 1)    # every seeding API takes 31 bits
    device: str = param("auto", choices=("auto", "cpu", "cuda"))
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    # papermill parameters per notebook, e.g. {"01_supernet": {"force": false}}
    notebooks: dict[str, dict] = param(default_factory=dict, cache=False)

    def check(self, p: str = "") -> None:
        check_fields(self)                   # declared rules of every field, every section
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v) and hasattr(v, "check"):
                v.check(f.name)              # rules that relate fields of one section

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *names: str) -> str:
        """Stable hash of some sections (used as part of artifact keys)."""
        d = {n: dataclasses.asdict(getattr(self, n)) if dataclasses.is_dataclass(
            getattr(self, n)) else getattr(self, n) for n in names}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def params_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


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
    raw = load_yaml(path.read_text(), f"profile {path}") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path}: expected a mapping of sections, got "
                          f"{type(raw).__name__}")
    raw.setdefault("name", Path(name).stem.replace("params_", ""))
    prof = _build(Profile, apply_overrides(raw, overrides), "")
    prof.check()
    _check_notebooks(prof.notebooks, raw, path)
    return prof


def _check_notebooks(notebooks: dict, raw: dict, path: Path) -> None:
    """The ``notebooks:`` section up front: every name is a notebook of the chain, and
    each notebook's ``overrides`` build a valid profile (so a bad one fails before 01
    runs, not when its notebook starts). Other parameters are checked against the
    notebooks' parameters cells by :func:`apq_lib.runner.check_parameters`."""
    for nb, params in notebooks.items():
        where = f"profile {path}: notebooks.{nb}"
        if nb not in NOTEBOOKS:
            raise ConfigError(f"{where}: no such notebook; the chain's notebooks are "
                              f"{', '.join(NOTEBOOKS)}")
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}: expected a mapping of the notebook's parameters, "
                              f"e.g. {{force: false}}, got {type(params).__name__}")
        if params.get("overrides") is None:
            continue
        try:
            _build(Profile, apply_overrides(raw, params["overrides"]), "").check()
        except ConfigError as e:
            raise ConfigError(f"{where}.overrides: {e}") from None
