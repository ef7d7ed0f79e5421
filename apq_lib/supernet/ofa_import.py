"""Import of MIT Han Lab's once-for-all ProxylessNAS supernets (OFA §3, the starting point
of APQ §3.1 on ImageNet) into :class:`~apq_lib.supernet.network.APQSupernet`.

An ``OFAProxylessNASNets`` (package ``ofa``; checkpoints such as
``ofa_proxyless_d234_e346_k357_w1.3``) is this project's supernet over the ProxylessNAS
space (:func:`ofa_proxyless_space`): every tensor maps one-to-one (:func:`ofa_key_map`),
the depthwise ``7to5_matrix`` / ``5to3_matrix`` onto the elastic kernel ``transforms``.
Three things make the imported supernet reproduce OFA's outputs:

* BatchNorm eps 1e-3 and momentum 0.1 (OFA's ``bn_param``; eps is not in a state dict):
  the space's ``bn_eps`` / ``bn_momentum``, which :func:`ofa_proxyless_space` sets;
* the transform matrices are loaded (identity transforms give other small kernels);
* the middle channels keep OFA's order: ``sort_channels()`` must not run on them (the
  supernet stage skips it for an imported supernet).

APQ's quantized supernet (mit-han-lab/apq) stores a PACT-style ``activation_range`` per
layer: it becomes that layer's input clip (``a_quant.alpha``); its ``weight_range`` is
recomputed by the weight quantizer and not imported. Checkpoints are read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..artifacts import save_state, write_json
from ..config import ConfigError, SpaceConfig
from .artifact import _bn_meta, _checkpoint_sha256, init_checkpoint
from .network import APQSupernet
from .space import SearchSpace
from .static import tensor_state
from .train import train_supernet

__all__ = ["OFA_BN_EPS", "OFA_BN_MOMENTUM", "OFAImportError", "ofa_proxyless_space_config",
           "ofa_proxyless_space", "ofa_key_map", "read_ofa_state", "import_ofa_proxyless"]

OFA_BN_EPS = 1e-3           # OFAProxylessNASNets(bn_param=(0.1, 1e-3))
OFA_BN_MOMENTUM = 0.1
_BASE_WIDTHS = (32, 16, 24, 40, 80, 96, 192, 320, 1280)   # ProxylessNAS stage widths
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

Source = Union[str, Path, nn.Module, dict]


class OFAImportError(ValueError):
    """The checkpoint does not fit the space; the message names the tensor and what to do."""


def _make_divisible(v: float, divisor: int = 8) -> int:
    """OFA's channel rounding (nearest multiple of ``divisor``, never 10 % below ``v``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def ofa_proxyless_space_config(width_mult: float = 1.3,
                               expand_ratios: Sequence[int] = (3, 4, 6),
                               kernels: Sequence[int] = (3, 5, 7),
                               depths: Sequence[int] = (2, 3, 4),
                               bits: Sequence[int] = (4, 6, 8), image_size: int = 224,
                               num_classes: int = 1000) -> SpaceConfig:
    """The :class:`SpaceConfig` of ``OFAProxylessNASNets(width_mult, ks_list=kernels,
    expand_ratio_list=expand_ratios, depth_list=depths)``: stem 3×3/2, an expand-1 first
    block, stages 24/40/80/96/192/320 × width (strides 2,2,2,1,2,1; the last stage one
    block), 1×1 feature-mix 1280 × width, BN eps 1e-3. APQ's middle channels are every
    multiple of 8 from ``min(expand)·C_in`` to ``max(expand)·C_in`` (OFA's are among them).
    The official w1.3 checkpoint: defaults; APQ's ``imagenet-OFA``: ``width_mult=1.0,
    expand_ratios=(4, 6)``."""
    w = [_make_divisible(b * width_mult) for b in _BASE_WIDTHS]
    return SpaceConfig(
        stem_width=w[0], stem_stride=2, head_width=w[1], stage_widths=w[2:8],
        stage_strides=[2, 2, 2, 1, 2, 1], stage_max_depth=[max(depths)] * 5 + [1],
        depth_choices=sorted(int(d) for d in depths),
        kernel_choices=sorted(int(k) for k in kernels),
        expand_min=int(min(expand_ratios)), expand_max=int(max(expand_ratios)),
        channel_step=8, bit_choices=sorted(int(b) for b in bits), tail_width=w[8],
        image_size=image_size, in_channels=3, num_classes=num_classes,
        bn_eps=OFA_BN_EPS, bn_momentum=OFA_BN_MOMENTUM)


def ofa_proxyless_space(**kwargs) -> SearchSpace:
    """:class:`SearchSpace` of :func:`ofa_proxyless_space_config` (same arguments)."""
    return SearchSpace(ofa_proxyless_space_config(**kwargs))


# --------------------------------------------------------------------------- key map
def _module_map(space: SearchSpace) -> list[tuple[str, str, str]]:
    """``(our module, OFA module in canonical names, kind)`` in forward order; kind is
    ``conv`` / ``dw`` (elastic depthwise with transforms) / ``bn`` / ``linear``."""
    out = [("stem", "first_conv.conv", "conv"), ("stem_bn", "first_conv.bn", "bn"),
           ("head.dw", "blocks.0.conv.depth_conv.conv", "conv"),
           ("head.dw_bn", "blocks.0.conv.depth_conv.bn", "bn"),
           ("head.project", "blocks.0.conv.point_linear.conv", "conv"),
           ("head.project_bn", "blocks.0.conv.point_linear.bn", "bn")]
    for j in range(space.n_blocks):
        o = f"blocks.{j + 1}.conv"
        out += [(f"blocks.{j}.expand", f"{o}.inverted_bottleneck.conv", "conv"),
                (f"blocks.{j}.expand_bn", f"{o}.inverted_bottleneck.bn", "bn"),
                (f"blocks.{j}.dw", f"{o}.depth_conv.conv", "dw"),
                (f"blocks.{j}.dw_bn", f"{o}.depth_conv.bn", "bn"),
                (f"blocks.{j}.project", f"{o}.point_linear.conv", "conv"),
                (f"blocks.{j}.project_bn", f"{o}.point_linear.bn", "bn")]
    return out + [("tail", "feature_mix_layer.conv", "conv"),
                  ("tail_bn", "feature_mix_layer.bn", "bn"),
                  ("classifier", "classifier.linear", "linear")]


def ofa_key_map(space: SearchSpace) -> "OrderedDict[str, str]":
    """``{our state-dict key: OFA key}`` (canonical OFA names: ``.conv.`` blocks, one
    ``.bn.`` / ``.conv.`` / ``.linear.`` level, see :func:`read_ofa_state`)."""
    small_big = list(zip(space.kernel_choices[:-1], space.kernel_choices[1:]))
    out: "OrderedDict[str, str]" = OrderedDict()
    for ours, theirs, kind in _module_map(space):
        if kind == "bn":
            for t in _BN:
                out[f"{ours}.{t}"] = f"{theirs}.{t}"
            continue
        out[f"{ours}.weight"] = f"{theirs}.weight"
        if kind == "dw":
            for s, b in sorted(small_big, reverse=True):
                out[f"{ours}.transforms.{b}to{s}"] = f"{theirs}.{b}to{s}_matrix"
        if kind == "linear":
            out[f"{ours}.bias"] = f"{theirs}.bias"
    return out


def _canonical(key: str) -> str:
    for old, new in ((".mobile_inverted_conv.", ".conv."), (".bn.bn.", ".bn."),
                     (".linear.linear.", ".linear."), (".conv.conv.", ".conv.")):
        key = key.replace(old, new)
    return key[7:] if key.startswith("module.") else key


def read_ofa_state(src: Source) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of an OFA network (module), a state dict, a checkpoint dict with a
    ``state_dict`` entry, or a file of either (``torch.load(weights_only=True)``), with
    keys in canonical names: old ``.mobile_inverted_conv.`` → ``.conv.``, dynamic
    layers' doubled ``.bn.bn.`` / ``.conv.conv.`` / ``.linear.linear.`` → one level,
    a DataParallel ``module.`` prefix dropped."""
    where = "the state dict"
    if isinstance(src, (str, Path)):
        where = str(src)
        if not Path(src).is_file():
            raise FileNotFoundError(f"OFA checkpoint {src} does not exist: download the "
                                    f"once-for-all weights (README: 'ImageNet from the "
                                    f"official OFA weights') or fix the path")
        try:
            src = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:
            raise OFAImportError(f"{where} cannot be read as a weights-only PyTorch "
                                 f"checkpoint ({type(e).__name__}: {e}); only plain tensor "
                                 f"checkpoints are loaded (no pickled code)") from e
    if isinstance(src, nn.Module):
        src = src.state_dict()
    if isinstance(src, dict) and "state_dict" in src and isinstance(src["state_dict"], dict):
        src = src["state_dict"]
    if not isinstance(src, dict) or not all(torch.is_tensor(v) for v in src.values()):
        raise OFAImportError(f"{where} is not a state dict of tensors (nor a dict with a "
                             f"'state_dict' entry)")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in src.items():
        out[_canonical(k)] = v
    return out


def _bn_eps_of(module: nn.Module) -> Optional[float]:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return float(m.eps)
    return None


# --------------------------------------------------------------------------- import
@torch.no_grad()
def import_ofa_proxyless(src: Source, space: Optional[SearchSpace] = None,
                         expect_eps: Optional[float] = OFA_BN_EPS) -> APQSupernet:
    """An :class:`APQSupernet` over ``space`` (default: :func:`ofa_proxyless_space`, the
    w1.3 e346 checkpoint) holding the weights of ``src`` (see :func:`read_ofa_state`),
    in eval mode, middle channels in OFA's order.

    ``expect_eps``: the BN eps the checkpoint was trained with (OFA: 1e-3); the space's
    ``bn_eps`` must equal it (a module ``src`` is checked against its own BNs). Raises
    :class:`OFAImportError` naming the first tensor that is missing or of another shape
    (checkpoint of another space or width) and any checkpoint tensor left over."""
    space = space or ofa_proxyless_space()
    if isinstance(src, nn.Module):
        eps = _bn_eps_of(src)
        expect_eps = eps if eps is not None else expect_eps
    if expect_eps is not None and abs(space.cfg.bn_eps - expect_eps) > 1e-12:
        raise OFAImportError(f"the space has BN eps {space.cfg.bn_eps:g} but the checkpoint "
                             f"was trained with {expect_eps:g}: set space.bn_eps: "
                             f"{expect_eps:g} (ofa_proxyless_space_config does)")
    state = read_ofa_state(src)
    net = APQSupernet(space)
    ours = net.state_dict()
    used = set()
    for mine, theirs in ofa_key_map(space).items():
        if theirs not in state:
            hint = (" (a checkpoint without elastic kernels has no transform matrices: "
                    "build the space with its kernel choices)" if "_matrix" in theirs else "")
            raise OFAImportError(f"the checkpoint has no tensor {theirs} for {mine}{hint}; "
                                 f"it is not an OFA-ProxylessNAS checkpoint of this space")
        t = state[theirs]
        if tuple(t.shape) != tuple(ours[mine].shape):
            raise OFAImportError(
                f"checkpoint tensor {theirs} has shape {tuple(t.shape)} but {mine} of this "
                f"space needs {tuple(ours[mine].shape)}: the checkpoint is of another space "
                f"or width; build the space with ofa_proxyless_space_config(width_mult=..., "
                f"expand_ratios=..., kernels=..., depths=...) as the checkpoint was trained "
                f"(e.g. ofa_proxyless_d234_e346_k357_w1.3: width_mult=1.3, expand (3, 4, 6))")
        ours[mine].copy_(t.to(ours[mine].dtype))
        used.add(theirs)
    mods = {theirs: mine for mine, theirs, _ in _module_map(space)}
    for k, t in state.items():
        mod, _, leaf = k.rpartition(".")
        if leaf == "activation_range" and mod in mods:
            ours[f"{mods[mod]}.a_quant.alpha"].fill_(float(t.reshape(-1)[0]))
            used.add(k)
        elif leaf == "weight_range":
            used.add(k)               # recomputed by the weight quantizer
    extra = [k for k in state if k not in used]
    if extra:
        raise OFAImportError(f"the checkpoint has {len(extra)} tensor(s) this space has no "
                             f"place for, first {extra[0]} {tuple(state[extra[0]].shape)}: "
                             f"it is of another space (deeper stages, SE layers: "
                             f"OFAMobileNetV3 is not supported)")
    net.load_state_dict(ours)
    net.keep_channel_order = True     # the supernet stage must not sort_channels() it
    return net.eval()


# --------------------------------------------------------------------------- supernet stage
def import_supernet(cfg, work: Path, data=None, device=None, progress: bool = True) -> dict:
    """The supernet stage (notebook 01) with ``supernet.init_from``: the once-for-all
    checkpoint imported into ``work`` (``supernet.safetensors`` + ``info.json``), then
    finetuned by the phases with epochs > 0, if any (those need ``data``)."""
    ckpt = init_checkpoint(cfg)
    t0 = time.time()
    net = import_ofa_proxyless(ckpt, SearchSpace(cfg.space))
    seconds = time.time() - t0
    src = {"init_from": str(ckpt), "init_sha256": _checkpoint_sha256(ckpt),
           "import_seconds": seconds}
    if any(p.epochs > 0 for p in cfg.supernet.phases):
        if data is None:
            raise ConfigError("supernet.phases: finetuning the imported supernet needs the "
                              "training data (run notebook 01, or set every epochs to 0)")
        info = train_supernet(net.to(device or "cpu"), data, cfg, work, device, progress)
        info = {**info, **src}
        write_json(Path(work) / "info.json", info, sort_keys=False)
        return info
    info = {"history": [], "seconds": seconds, "train_seconds": seconds, "epoch_seconds": [],
            "phases": [dataclasses.asdict(p) for p in cfg.supernet.phases], "world_size": 1,
            "device": "cpu", "threads": torch.get_num_threads(), **src}
    save_state(tensor_state(net), Path(work) / "supernet.safetensors", _bn_meta(net.space))
    write_json(Path(work) / "info.json", info, sort_keys=False)
    return info
