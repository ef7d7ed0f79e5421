"""Import of once-for-all ProxylessNAS weights: parity against the ``ofa`` package itself.

The reference is MIT Han Lab's ``OFAProxylessNASNets`` with random weights, non-identity
kernel-transform matrices, random BN affine parameters and BN statistics recalibrated on
random images. The imported supernet and its exported static subnets must reproduce its
logits (max |Δ| ≤ 1e-5) on the largest, smallest and 6 random subnets; the same check must
fail with BN eps 1e-5, with the transform matrices left at the identity and with the
middle channels re-sorted (so the check can fail).
"""
import os
import random

import pytest
import torch

ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")

from apq_lib.artifacts import load_state, save_state  # noqa: E402
from apq_lib.config import ConfigError, load_profile  # noqa: E402
from apq_lib.supernet import SubnetConfig  # noqa: E402
from apq_lib.supernet.ofa_import import (  # noqa: E402
    OFAImportError,
    _make_divisible,
    import_ofa_proxyless,
    ofa_proxyless_space,
)
from apq_lib.supernet.static import tensor_state  # noqa: E402
from apq_lib.supernet.train import load_supernet  # noqa: E402

TOL = 1e-5
RES = int(os.environ.get("APQ_OFA_TEST_RES", "64"))   # 64 px keeps it fast; 224: by hand


def _ofa_net(width=1.3, expand=(3, 4, 6), kernels=(3, 5, 7), seed=0):
    torch.manual_seed(seed)
    net = ofa_nets.OFAProxylessNASNets(n_classes=1000, width_mult=width,
                                       ks_list=list(kernels), expand_ratio_list=list(expand),
                                       depth_list=[2, 3, 4], dropout_rate=0)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n.endswith("_matrix"):
                p.add_(0.1 * torch.randn_like(p))           # non-identity transforms
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.reset_running_stats()
                m.momentum = None                          # exact batch statistics
        net.train()
        net.set_max_net()
        net(torch.randn(8, 3, RES, RES))                   # recalibrate BN statistics
    net.set_bn_param(momentum=0.1, eps=1e-3)
    return net.eval()


@pytest.fixture(scope="module")
def ofa_net():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _ofa_net()
    torch.set_num_threads(n)


def _settings(n_random=6, expand=(3, 4, 6)):
    rng = random.Random(0)
    out = [("largest", [7] * 21, [max(expand)] * 21, [4] * 5 + [1]),
           ("smallest", [3] * 21, [min(expand)] * 21, [2] * 5 + [1])]
    for i in range(n_random):
        out.append((f"random{i}", [rng.choice([3, 5, 7]) for _ in range(21)],
                    [rng.choice(expand) for _ in range(21)],
                    [rng.choice([2, 3, 4]) for _ in range(5)] + [1]))
    return out


def _config(space, ks, e, d) -> SubnetConfig:
    mids = [_make_divisible(round(b.in_c * r)) for b, r in zip(space.blocks, e)]
    n = space.n_blocks
    return SubnetConfig(list(d), list(ks), mids, *([[8] * n] * 4))


@torch.no_grad()
def _deltas(ofa, net, settings, static=True):
    """max |Δ| of the supernet (and of its exported static subnet) per subnet."""
    x = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    out = {}
    for name, ks, e, d in settings:
        ofa.set_active_subnet(ks=ks, e=e, d=d)
        ref = ofa(x)
        net.set_active_subnet(_config(net.space, ks, e, d))
        out[name] = float((net(x) - ref).abs().max())
        if static:
            out[name + "/static"] = float((net.get_active_subnet().eval()(x) - ref).abs().max())
    return out


def test_parity_supernet_and_static_subnets(ofa_net):
    net = import_ofa_proxyless(ofa_net)
    d = _deltas(ofa_net, net, _settings())
    print("max |delta| per subnet:", {k: f"{v:.1e}" for k, v in d.items()})
    assert len(d) == 16 and max(d.values()) <= TOL, d


def test_parity_from_file_with_old_names(ofa_net, tmp_path):
    """A checkpoint file (weights only) with the old ``.mobile_inverted_conv.`` names."""
    sd = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k:
          v for k, v in ofa_net.state_dict().items()}
    assert any(".mobile_inverted_conv." in k for k in sd)
    path = tmp_path / "ofa.pth.tar"
    torch.save({"state_dict": sd}, path)
    net = import_ofa_proxyless(path, ofa_proxyless_space())
    d = _deltas(ofa_net, net, _settings(n_random=1), static=False)
    assert max(d.values()) <= TOL, d


def test_controls_fail_the_check(ofa_net):
    """What the issue found: each condition is needed (else the parity check fails)."""
    small = _settings(n_random=2)[1:]                # smallest + 2 random subnets
    controls = {}
    net = import_ofa_proxyless(ofa_net)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-5
    controls["eps 1e-5"] = max(_deltas(ofa_net, net, small, static=False).values())
    net = import_ofa_proxyless(ofa_net)
    with torch.no_grad():
        for b in net.blocks:
            for t in b.dw.transforms.values():
                t.copy_(torch.eye(t.shape[0]))
    controls["transforms not loaded"] = max(_deltas(ofa_net, net, small, static=False).values())
    net = import_ofa_proxyless(ofa_net)
    net.sort_channels()
    controls["channels re-sorted"] = max(_deltas(ofa_net, net, small, static=False).values())
    print("controls max |delta|:", {k: f"{v:.1e}" for k, v in controls.items()})
    assert all(v > 100 * TOL for v in controls.values()), controls


def test_save_load_round_trip_keeps_eps(ofa_net, tmp_path):
    net = import_ofa_proxyless(ofa_net)
    path = tmp_path / "supernet.safetensors"
    save_state(tensor_state(net), path, {"bn_eps": net.space.cfg.bn_eps})
    assert load_state(path)[1]["bn_eps"] == 1e-3
    back = load_supernet(path, ofa_proxyless_space())
    assert {m.eps for m in back.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    d = _deltas(ofa_net, back, _settings(n_random=1)[1:])
    assert max(d.values()) <= TOL, d
    space = ofa_proxyless_space()
    space.cfg.bn_eps = 1e-5                              # a profile that forgot bn_eps
    with pytest.raises(ConfigError, match="bn_eps"):
        load_supernet(path, space)


def test_wrong_checkpoint_is_a_clear_error(ofa_net):
    w10 = ofa_nets.OFAProxylessNASNets(width_mult=1.0, ks_list=[3, 5, 7],
                                       expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    with pytest.raises(OFAImportError, match=r"first_conv\.conv\.weight.*\(32, 3, 3, 3\).*"
                                             r"stem\.weight.*\(40, 3, 3, 3\)"):
        import_ofa_proxyless(w10.state_dict())
    k7 = ofa_nets.OFAProxylessNASNets(width_mult=1.3, ks_list=[7], expand_ratio_list=[3, 4, 6],
                                      depth_list=[2, 3, 4])
    with pytest.raises(OFAImportError, match="7to5_matrix"):
        import_ofa_proxyless(k7.state_dict())
    space = ofa_proxyless_space()
    space.cfg.bn_eps = 1e-5
    with pytest.raises(OFAImportError, match="bn_eps"):
        import_ofa_proxyless(ofa_net.state_dict(), space)


def test_apq_checkpoint_layout_and_activation_range():
    """APQ's own checkpoint: OFA w1.0 with expand {4, 6}; per-layer activation_range (its
    quantized supernet) becomes the PACT clip of that layer's input."""
    ofa = _ofa_net(width=1.0, expand=(4, 6))
    sd = dict(ofa.state_dict())
    sd["blocks.3.conv.inverted_bottleneck.conv.activation_range"] = torch.tensor([3.5])
    sd["blocks.3.conv.inverted_bottleneck.conv.weight_range"] = torch.tensor([-1.0])
    sd["classifier.linear.activation_range"] = torch.tensor([4.25])
    space = ofa_proxyless_space(width_mult=1.0, expand_ratios=(4, 6))
    net = import_ofa_proxyless(sd, space)
    assert net.blocks[2].expand.a_quant.alpha.item() == 3.5
    assert net.classifier.a_quant.alpha.item() == 4.25
    d = _deltas(ofa, net, _settings(n_random=2, expand=(4, 6)), static=False)
    assert max(d.values()) <= TOL, d


def test_init_from_profile_field(tmp_path, ofa_net):
    """``supernet.init_from`` enters the supernet key by the checkpoint's content."""
    import shutil

    from apq_lib.supernet.train import supernet_artifact_config
    a, b = tmp_path / "a.pth", tmp_path / "copy" / "b.pth"
    torch.save(ofa_net.state_dict(), a)
    b.parent.mkdir()
    shutil.copy(a, b)
    base = load_profile("smoke")
    ca = supernet_artifact_config(load_profile("smoke", {"supernet.init_from": str(a)}))
    cb = supernet_artifact_config(load_profile("smoke", {"supernet.init_from": str(b)}))
    assert ca == cb != supernet_artifact_config(base)
    assert "init_from" not in supernet_artifact_config(base)["supernet"]
    assert "bn_eps" not in supernet_artifact_config(base)["space"]


def test_init_from_finetune_keeps_channel_order(tmp_path, monkeypatch):
    """``supernet.init_from`` with a finetune phase: the supernet stage imports, then trains
    without re-sorting the imported channels (the artifact records the checkpoint)."""
    from apq_lib.artifacts import ArtifactStore
    from apq_lib.data import load_data
    from apq_lib.dryrun import make_imagefolder, make_ofa_checkpoint
    from apq_lib.supernet.network import APQSupernet
    from apq_lib.supernet.train import get_trained_supernet

    def no_sort(self):
        raise AssertionError("sort_channels() ran on imported weights")
    monkeypatch.setattr(APQSupernet, "sort_channels", no_sort)
    data_root = make_imagefolder(tmp_path / "data", classes=2, train_per_class=5,
                                 val_per_class=2, size=32)
    ckpt = make_ofa_checkpoint(tmp_path / "ofa.pth", classes=2)
    phase = {"name": "finetune", "epochs": 1, "lr": 1e-3, "kernels": [3, 5, 7],
             "depths": [2, 3, 4], "expands": [3, 4, 6], "subnets_per_step": 2}
    cfg = load_profile("imagenet", {
        "device": "cpu", "data.root": str(data_root), "data.image_size": 32,
        "data.val_size": 2, "data.batch_size": 4, "data.num_workers": 0,
        "supernet.init_from": str(ckpt), "supernet.phases": [phase],
        "supernet.bn_recal_images": 4, "supernet.eval_images": 2})
    net, info = get_trained_supernet(cfg, load_data(cfg.data), ArtifactStore(tmp_path / "a"),
                                     progress=False)
    assert info["init_sha256"] and len(info["history"]) == 1
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
