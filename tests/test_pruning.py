"""Pruning: Zhu & Gupta schedule, magnitude masks, physical MBConv channel pruning."""
import pytest
import torch
from torch import nn

from apq_lib.pruning import (
    GradualSchedule,
    find_mbconv_sites,
    gradual_channel_prune,
    gradual_magnitude_prune,
    gradual_sparsity,
    magnitude_prune,
    middle_channels,
    prune_channels,
    sparsity,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    def __init__(self, c, mid, k=3, stride=1):
        super().__init__()
        self.pw1 = nn.Conv2d(c, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.pw2 = nn.Conv2d(mid, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.pw1(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        return x + self.bn3(self.pw2(y))


def tiny_net(c=8, mids=(32, 48)):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         *[Block(c, m) for m in mids], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c, 10))


def batches(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(n, 1, 8, 8, generator=g)
        yield x, (x.mean(dim=(1, 2, 3)) > 0).long()


def test_schedule_hand_values_and_end():
    # s_f=0.8, s_i=0, n=4, dt=10: k=1 -> 0.8(1-(3/4)^3) = 0.8*(1-0.421875) = 0.4625
    assert gradual_sparsity(0, 0.8, 0.0, 0, 4, 10) == pytest.approx(0.0)
    assert gradual_sparsity(10, 0.8, 0.0, 0, 4, 10) == pytest.approx(0.4625)
    assert gradual_sparsity(15, 0.8, 0.0, 0, 4, 10) == pytest.approx(0.4625)  # held
    assert gradual_sparsity(20, 0.8, 0.0, 0, 4, 10) == pytest.approx(0.7)      # 0.8*(1-1/8)
    assert gradual_sparsity(40, 0.8, 0.0, 0, 4, 10) == pytest.approx(0.8)
    assert gradual_sparsity(1000, 0.8, 0.0, 0, 4, 10) == pytest.approx(0.8)
    assert gradual_sparsity(3, 0.8, 0.1, 5, 4, 10) == pytest.approx(0.1)       # before t0


def test_schedule_matches_torch_ao_cubic():
    from torch.ao.pruning import CubicSL
    for t in range(0, 50, 10):
        ref = CubicSL.sparsity_compute_fn(0.0, 0.9, t, 0, 10, 4)
        assert gradual_sparsity(t, 0.9, 0.0, 0, 4, 10) == pytest.approx(ref)


def test_magnitude_prune_global_and_layer():
    for scope in ("global", "layer"):
        net = tiny_net()
        magnitude_prune(net, 0.7, scope)
        sp = sparsity(net)
        assert sp["total"] == pytest.approx(0.7, abs=0.01)
        if scope == "layer":
            assert all(v == pytest.approx(0.7, abs=0.05) for v in sp["layers"].values())
        magnitude_prune(net, 0.9, scope)            # absolute, not relative
        assert sparsity(net)["total"] == pytest.approx(0.9, abs=0.01)


def test_gradual_magnitude_hits_end_sparsity_on_schedule():
    net = tiny_net()
    sched = GradualSchedule(s_f=0.8, n=4, dt=2, t0=0)
    out = gradual_magnitude_prune(net, batches(), steps=12, final=0.8, schedule=sched)
    steps = [t for t, _, _ in out["schedule"]]
    assert steps == [0, 2, 4, 6, 8]
    t_end, target, measured = out["schedule"][-1]
    assert t_end == sched.end and target == pytest.approx(0.8)
    assert measured == pytest.approx(0.8, abs=0.01)
    assert out["sparsity"] == pytest.approx(0.8, abs=0.01)      # kept through the finetune
    mid = out["schedule"][2]
    assert mid[1] == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert mid[2] == pytest.approx(mid[1], abs=0.01)
    assert not any(hasattr(m, "weight_mask") for m in net.modules())


def test_channel_pruning_is_physical_and_keeps_output_shape():
    net = tiny_net()
    x = torch.randn(2, 1, 8, 8)
    y0 = net.eval()(x)
    assert len(find_mbconv_sites(net)) == 2
    n0 = sum(p.numel() for p in net.parameters())
    widths = prune_channels(net, 0.5, step=8)
    assert widths == [16, 24] and middle_channels(net) == [16, 24]
    assert net[3].dw.groups == 16 and net[3].pw2.in_channels == 16
    assert net[3].bn1.num_features == 16
    assert sum(p.numel() for p in net.parameters()) < n0
    assert net.eval()(x).shape == y0.shape


def test_channel_pruning_keeps_most_important_channels():
    net = tiny_net(mids=(16,))
    blk = net[3]
    with torch.no_grad():
        blk.pw2.weight.mul_(0.01)
        blk.pw2.weight[:, [3, 7]] = 10.0          # the two channels that matter
        w1 = blk.pw1.weight[[3, 7]].clone()
    prune_channels(net, 0.875)                     # keep 2 of 16
    assert torch.equal(net[3].pw1.weight, w1)


def test_gradual_channel_prune_schedule():
    net = tiny_net()
    out = gradual_channel_prune(net, batches(), steps=8, ratio=0.5, step=8, n_updates=3)
    assert out["widths_before"] == [32, 48] and out["widths_after"] == [16, 24]
    assert len(out["schedule"]) >= 2
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
