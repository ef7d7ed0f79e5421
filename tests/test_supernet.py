"""Elastic supernet (issue 4): export equivalence, sampling, elastic ops, channel sorting,
validation, progressive-shrinking resume and DDP. Tiny space and synthetic data only."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apq_lib.artifacts import ArtifactStore, load_state
from apq_lib.config import ConfigError, DataConfig, Profile, SpaceConfig, SupernetConfig
from apq_lib.data import DataBundle, TensorImageSet
from apq_lib.supernet import (
    APQSupernet,
    ElasticDepthwiseConv,
    InvalidConfigError,
    Phase,
    PhaseSampler,
    SearchSpace,
    SubnetConfig,
    evaluate,
    get_trained_supernet,
    recalibrate_bn,
    subnet_macs,
    train_supernet,
)
from apq_lib.supernet.static import tensor_state
from apq_lib.supernet.train import phase_file

torch.set_num_threads(1)

TINY = SpaceConfig(stem_width=8, stem_stride=2, head_width=8, stage_widths=[8, 8, 16, 16, 16, 16],
                   stage_strides=[1, 2, 1, 2, 1, 1], stage_max_depth=[2, 2, 2, 2, 2, 1],
                   depth_choices=[1, 2], kernel_choices=[3, 5, 7], tail_width=32, image_size=16)
PHASES = [
    {"name": "full", "epochs": 1, "lr": 0.05, "kernels": [7], "depths": [2], "expands": [6],
     "subnets_per_step": 1, "distill": False},
    {"name": "elastic", "epochs": 1, "lr": 0.02, "kernels": [3, 5, 7], "depths": [1, 2],
     "expands": [4, 6], "subnets_per_step": 3, "distill": True, "sandwich": True},
]


def tiny_profile(phases=PHASES, batch_size=16) -> Profile:
    return Profile(name="test", seed=0, device="cpu",
                   data=DataConfig(batch_size=batch_size, eval_batch_size=32),
                   space=TINY, supernet=SupernetConfig(phases=phases, bn_recal_images=32,
                                                       eval_images=32))


def tiny_data(n_train=48, n_val=32, seed=0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)

    def mk(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = (torch.rand(n, 1, 14, 14, generator=g) * 80 + y.view(-1, 1, 1, 1) * 17).byte()
        return TensorImageSet(x, y, (0.5,), (0.3,), 16)

    return DataBundle("synthetic", mk(n_train), mk(n_val), mk(n_val), 10, 1, 16,
                      DataConfig(batch_size=16, eval_batch_size=32), [])


def busy_supernet(seed=0) -> APQSupernet:
    """A supernet with non-trivial BN statistics and kernel transforms."""
    torch.manual_seed(seed)
    net = APQSupernet(SearchSpace(TINY))
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "transforms" in n or "bn" in n:
                p.add_(0.05 * torch.randn_like(p))
    net.train()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _ in range(3):
            net.sample_active_subnet(rng)
            net(torch.randn(8, 1, 16, 16))
    return net.eval()


# --------------------------------------------------------------------------- export
def test_exported_subnet_matches_supernet_fp32_and_quantized():
    net = busy_supernet()
    rng = np.random.default_rng(1)
    x = torch.randn(4, 1, 16, 16)
    for _ in range(4):
        cfg = net.sample_active_subnet(rng)
        with torch.no_grad():
            diff = (net(x) - net.get_active_subnet().eval()(x)).abs().max().item()
        assert diff <= 1e-5, f"FP32 export differs by {diff} for {cfg.to_dict()}"
        qcfg = net.sample_quantization_policy(rng)
        sub = net.get_active_subnet().eval()
        assert sub.quantized and sub.config.to_dict() == qcfg.to_dict()
        assert sub.blocks[0].dw.w_quant.bits == qcfg.dw_w[0]
        with torch.no_grad():
            diff = (net(x) - sub(x)).abs().max().item()
        assert diff <= 1e-5, f"quantized export differs by {diff}"
        net.set_quantization_policy(None)
    assert len(sub.blocks) == sum(qcfg.depths)


def test_export_restores_the_supernet_state_even_on_a_bad_config():
    net = busy_supernet()
    rng = np.random.default_rng(2)
    net.sample_active_subnet(rng)
    before = net.active_config.to_dict()
    other = net.space.sample(rng)
    x = torch.randn(2, 1, 16, 16)
    sub = net.export(other, quantized=True)
    assert sub.quantized and sub.config.to_dict() == other.to_dict()
    assert net.active_config.to_dict() == before and not net.quantized
    net.set_active_subnet(other)
    net.set_quantization_policy(other)
    with torch.no_grad():
        torch.testing.assert_close(sub.eval()(x), net.eval()(x), rtol=1e-5, atol=1e-5)
    net.set_quantization_policy(None)
    net.set_active_subnet(SubnetConfig.from_dict(before))
    bad = other.to_dict()
    bad["kernels"] = [4] * len(bad["kernels"])
    with pytest.raises(InvalidConfigError):
        net.export(SubnetConfig.from_dict(bad))
    assert net.active_config.to_dict() == before and not net.quantized


def test_sampling_is_valid_and_seeded():
    net = APQSupernet(SearchSpace(TINY))
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        ca, cb = net.sample_active_subnet(a), net.sample_active_subnet(b)
        assert ca.to_dict() == cb.to_dict()
        net.space.validate(ca)
        qa, qb = net.sample_quantization_policy(a), net.sample_quantization_policy(b)
        assert qa.to_dict() == qb.to_dict()
        net.space.validate(qa)
    sampler = PhaseSampler(net.space, Phase.from_dict(PHASES[1]))
    for _ in range(20):
        for c in sampler.plan(np.random.default_rng(3)):
            net.space.validate(c)


def test_invalid_configurations_are_rejected():
    net = APQSupernet(SearchSpace(TINY))
    sp = net.space
    cases = [("kernels", 0, 4, ["blocks.0.0", "[3, 5, 7]"]),
             ("mids", 1, 33, ["blocks.0.1", "[32, 40, 48]"]),
             ("dw_a", 2, 3, ["blocks.1.0", "[4, 6, 8]"])]
    for field_, i, v, words in cases:
        cfg = sp.largest()
        getattr(cfg, field_)[i] = v
        with pytest.raises(InvalidConfigError) as e:
            net.set_active_subnet(cfg)
        assert all(w in str(e.value) for w in words), str(e.value)
    cfg = sp.largest()
    cfg.depths[0] = 5
    with pytest.raises(InvalidConfigError, match=r"stage 0.*allowed \[1, 2\]"):
        net.set_active_subnet(cfg)
    with pytest.raises(ConfigError, match="unknown key"):
        Phase.from_dict({"name": "x", "epochs": 1, "widths": [4]})


# --------------------------------------------------------------------------- elastic ops
def test_elastic_kernel_7_is_a_plain_conv_and_smaller_kernels_are_centre_crops():
    torch.manual_seed(0)
    dw = ElasticDepthwiseConv(16, [3, 5, 7], stride=1)
    x = torch.randn(2, 12, 9, 9)
    ref = torch.nn.Conv2d(12, 12, 7, 1, 3, groups=12, bias=False)
    ref.weight.data.copy_(dw.weight[:12])
    assert torch.allclose(dw(x), ref(x), atol=1e-6)
    dw.active_kernel = 3    # identity transforms at init: 3x3 = centre of the 7x7
    assert torch.equal(dw.active_weight(12), dw.weight[:12, :, 2:5, 2:5])
    assert dw.transforms["7to5"].shape == (25, 25) and dw.transforms["5to3"].shape == (9, 9)


def test_sorting_channels_keeps_the_full_network_output():
    net = busy_supernet()
    net.set_active_subnet(net.space.largest())
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        before = net(x)
        idx = net.blocks[0].sort_channels()
        net.sort_channels()
        after = net(x)
    assert not torch.equal(idx, torch.arange(len(idx)))
    assert torch.allclose(before, after, atol=1e-5)
    imp = net.blocks[1].project.weight.abs().sum((0, 2, 3))
    assert bool((imp[:-1] >= imp[1:]).all())


def test_phase_sampler_maps_expand_ratios_to_mid_choices():
    sp = SearchSpace(TINY)
    full = PhaseSampler(sp, Phase.from_dict(PHASES[0]))
    assert full.mids[0] == [48] and not full.elastic_width
    wide = PhaseSampler(sp, Phase.from_dict(PHASES[1]))
    assert wide.mids[0] == [32, 40, 48] and wide.elastic_width
    plan = wide.plan(np.random.default_rng(0))
    assert len(plan) == 3 and plan[0].to_dict() == wide.largest().to_dict()
    assert plan[1].to_dict() == wide.smallest().to_dict()


# --------------------------------------------------------------------------- metrics
def test_macs_match_flop_counter_and_bn_recalibration():
    from torch.utils.flop_counter import FlopCounterMode
    net = busy_supernet()
    cfg = net.sample_active_subnet(np.random.default_rng(5))
    sub = net.get_active_subnet().eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        sub(torch.randn(1, 1, 16, 16))
    assert fc.get_total_flops() // 2 == subnet_macs(net.space, cfg)
    batches = [(torch.randn(8, 1, 16, 16) + i, torch.zeros(8, dtype=torch.long))
               for i in range(2)]
    recalibrate_bn(sub, batches)
    with torch.no_grad():
        means = [sub.stem_bn.weight.new_tensor(0) + sub.stem(x).mean((0, 2, 3))
                 for x, _ in batches]
    assert torch.allclose(sub.stem_bn.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert not sub.training and sub.stem_bn.momentum == 0.1
    assert 0.0 <= evaluate(sub, batches) <= 100.0


# --------------------------------------------------------------------------- training
def _trained_state(tmp, name, stop=None, on_step=None, resume=False):
    torch.manual_seed(0)
    net = APQSupernet(SearchSpace(TINY))
    work = tmp / name
    if not resume and work.exists():
        raise AssertionError("fresh run expected")
    info = train_supernet(net, tiny_data(), tiny_profile(), work, progress=False,
                          stop_after_epochs=stop, on_step=on_step)
    return net, info


def test_resume_after_interruption_continues_the_same_schedule(tmp_path):
    ref, info = _trained_state(tmp_path, "straight")
    assert [r["phase"] for r in info["history"]] == ["full", "elastic"]
    # kill after the first epoch's checkpoint, then resume
    _, partial = _trained_state(tmp_path, "epoch_kill", stop=1)
    assert partial is None and (tmp_path / "epoch_kill" / "checkpoint.safetensors").exists()
    a, _ = _trained_state(tmp_path, "epoch_kill", resume=True)

    # kill in the middle of the second epoch (after its first step), then resume

    def boom(phase, epoch, step):
        if phase == 1 and step == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _trained_state(tmp_path, "mid_kill", on_step=boom)
    b, info_b = _trained_state(tmp_path, "mid_kill", resume=True)
    for other in (a, b):
        for (k, v), (_, w) in zip(ref.state_dict().items(), other.state_dict().items()):
            if torch.is_tensor(v):
                assert torch.equal(v, w), k
    assert len(info_b["history"]) == 2
    # every run (straight or resumed) keeps the weights at the end of each phase
    for run in ("straight", "epoch_kill", "mid_kill"):
        assert {f.name for f in (tmp_path / run).glob("phase*.safetensors")} == \
            {phase_file(0, "full"), phase_file(1, "elastic")}
    last = load_state(tmp_path / "straight" / phase_file(1, "elastic"))[0]
    assert all(torch.equal(v, last[k]) for k, v in tensor_state(ref).items())


def test_full_phase_snapshot_is_the_largest_network_trained_alone(tmp_path):
    """The end-of-phase-0 weights of a two-phase run equal a run of phase 0 alone: the
    fixed-architecture baseline taken from them is the largest network trained from
    scratch, untouched by the elastic phases."""
    _trained_state(tmp_path, "two")
    torch.manual_seed(0)
    alone = APQSupernet(SearchSpace(TINY))
    train_supernet(alone, tiny_data(), tiny_profile(phases=PHASES[:1]), tmp_path / "one",
                   progress=False)
    snap = load_state(tmp_path / "two" / phase_file(0, "full"))[0]
    assert all(torch.equal(v, snap[k]) for k, v in tensor_state(alone).items())


def test_get_trained_supernet_uses_the_artifact_cache(tmp_path):
    store = ArtifactStore(tmp_path)
    prof = tiny_profile(phases=[dict(PHASES[0], name="only")])
    net, info = get_trained_supernet(prof, tiny_data(), store, progress=False)
    assert (tmp_path / "supernet").exists() and info["train_seconds"] > 0
    net2, info2 = get_trained_supernet(prof, tiny_data(), store, progress=False)
    assert info2["artifact"] == info["artifact"]
    assert all(torch.equal(v, net2.state_dict()[k]) for k, v in net.state_dict().items()
               if torch.is_tensor(v))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        net = APQSupernet(SearchSpace(TINY))
        init = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        prof = tiny_profile(phases=[dict(PHASES[1], epochs=1)])
        info = train_supernet(net, tiny_data(n_train=16), prof, os.path.join(out_dir, "work"),
                              progress=False)
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        torch.save({"flat": flat, "init": init, "steps": info["history"][0]["steps"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes_run_a_step(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg_init"), str(tmp_path)), nprocs=2,
             join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["steps"] == 1
    assert torch.equal(r0["flat"], r1["flat"])
    assert not torch.equal(r0["flat"], r0["init"])
    assert (tmp_path / "work" / "supernet.safetensors").exists()


def test_profiles_schedule_is_valid():
    from apq_lib.config import load_profile
    for name in ("smoke", "default", "paper_counts", "imagenet"):
        cfg = load_profile(name)
        sp = SearchSpace(cfg.space)
        for ph in cfg.supernet.phases:
            PhaseSampler(sp, Phase.from_dict(ph))
    with pytest.raises(ConfigError, match=r"supernet.phases\[0\]"):
        load_profile("smoke", {"supernet.phases": [{"name": "a", "epochs": 1, "kernel": [3]}]})


def test_kd_loss_is_zero_for_identical_logits():
    from apq_lib.supernet.train import _kd_loss
    z = torch.randn(4, 10)
    assert float(_kd_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(_kd_loss(z, z + F.one_hot(torch.arange(4), 10) * 3)) > 0


def test_baseline_fixed_model_is_the_mobilenetv2_point_inherited_or_trained(tmp_path):
    """Notebook 05's fixed model: ``scratch_source: inherit`` is the space's MobileNetV2
    point exported from the final supernet (BN recalibrated; missing supernet → a clear
    error), ``train`` trains and caches one."""
    import dataclasses

    from apq_lib.artifacts import MissingInputError
    from apq_lib.baselines import BaselineSuite
    from apq_lib.baselines.fixed import to_float
    from apq_lib.config import BaselinesConfig

    base = BaselinesConfig(scratch_source="inherit", scratch_epochs=1, calib_images=16,
                           reward_images=32)
    prof, data, store = dataclasses.replace(tiny_profile(), baselines=base), tiny_data(), \
        ArtifactStore(tmp_path)
    suite = BaselineSuite(prof, data, store=store, progress=False)
    with pytest.raises(MissingInputError, match="01_supernet"):
        suite.scratch_model()
    net, _ = get_trained_supernet(prof, data, store, progress=False)
    model = suite.scratch_model()
    assert suite.scratch_info["seconds"] == 0.0          # no extra training
    space = SearchSpace(TINY)
    mb = space.mobilenetv2()
    assert set(mb.kernels) == {3} and mb.depths == [max(c) for c in space.depth_choices]
    assert mb != space.largest()
    # the same network as the final supernet's MobileNetV2 subnet, BN recalibrated alike
    ref = to_float(net.export(mb))
    recalibrate_bn(ref, suite.batches["recal"])
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(model(x), ref.eval()(x), rtol=1e-5, atol=1e-5)

    trained = BaselineSuite(dataclasses.replace(prof, baselines=dataclasses.replace(
        base, scratch_source="train")), data, store=store, progress=False)
    m2 = trained.scratch_model()
    assert trained.scratch_info["source"] == "measured" and m2(x).shape == (4, 10)
    assert not torch.allclose(m2(x), model(x))


def test_standalone_reference_trains_for_the_supernets_epochs_and_realises_seeds(tmp_path):
    """``baselines.standalone_reference``: MobileNetV2 trained standalone for the supernet's
    total epochs (``scratch_epochs: null``), cached, then PTQ + QAT at every fixed bit width
    with the recipe's finetune seeds, as rows named ``MBV2_STANDALONE``; off → nothing."""
    import dataclasses

    from apq_lib.baselines import MBV2_STANDALONE, BaselineSuite, study
    from apq_lib.config import BaselinesConfig

    base = BaselinesConfig(standalone_reference=True, scratch_images=64, calib_images=16,
                           reward_images=32, fixed_bits=[8, 4])
    prof = dataclasses.replace(tiny_profile(), baselines=base,
                               finetune=dataclasses.replace(tiny_profile().finetune, seeds=2,
                                                            steps=1))
    data, store = tiny_data(), ArtifactStore(tmp_path)
    suite = BaselineSuite(prof, data, store=store, progress=False)
    epochs = sum(p["epochs"] for p in prof.supernet.phases)    # the test phases: dicts
    assert suite.scratch_epochs() == epochs
    out = study.standalone_reference(suite)
    steps_per_epoch = len(data.loader("train", limit=64, seed=prof.seed))
    assert out["epochs"] == epochs and out["steps"] == epochs * steps_per_epoch
    assert out["source"] == "measured" and 0 <= out["fp32_test_acc"] <= 100
    rows = suite.frame()
    qat = rows[(rows["model"] == MBV2_STANDALONE) & (rows["variant"] == "QAT")]
    assert sorted(qat["method"]) == ["Fixed W4A4", "Fixed W8A8"]
    assert (qat["seeds"] == 2).all()
    for rid in qat["row_id"]:                  # both seeds' per-image correctness stored
        assert rid in suite.correct and f"{rid}#seed1" in suite.correct
    # the second call reads the artifact instead of training again
    again = BaselineSuite(prof, data, store=store, progress=False)
    assert again.standalone_model()[1]["cached"] is True
    off = BaselineSuite(dataclasses.replace(prof, baselines=dataclasses.replace(
        base, standalone_reference=False)), data, store=store, progress=False)
    assert study.standalone_reference(off) is None and off.frame().empty
