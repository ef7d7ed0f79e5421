"""FBNet baseline (apq_lib.baselines.fbnet): latency expectation against the LUT, its
gradient against finite differences, the temperature schedule, the latency term's pull
toward cheap ops, and the derived model against the supernet."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apq_lib.baselines.fbnet import FBNetSearch, block_ops, fbnet_loss, latency_factor, temperature
from apq_lib.baselines.fixed import LayerCostTable
from apq_lib.config import ConfigError, load_profile
from apq_lib.hardware import get_simulator, subnet_cost
from apq_lib.supernet.space import SearchSpace


@pytest.fixture(scope="module")
def setup():
    cfg = load_profile("smoke")
    space = SearchSpace(cfg.space)
    sim = get_simulator("bitfusion")
    return cfg, space, sim, FBNetSearch(space, cfg.baselines.fbnet, sim)


def _one_hot(net, choices, big=1e4):
    with torch.no_grad():
        for (o, w, a), to, tw, ta in zip(choices, net.theta_op, net.theta_w, net.theta_a):
            for t, i in ((to, o), (tw, w), (ta, a)):
                t.zero_()
                t[i] = big


def _random_choices(net, rng, search_bits):
    nb = len(net.bits)
    return [(int(rng.integers(len(ops))),
             int(rng.integers(nb)) if search_bits else nb - 1,
             int(rng.integers(nb)) if search_bits else nb - 1) for ops in net.ops_spec]


@pytest.mark.parametrize("search_bits", [False, True])
def test_expected_latency_one_hot_equals_lut_sum(setup, search_bits):
    cfg, space, sim, fb = setup
    net = fb.new_supernet()
    net.search_bits = search_bits
    rng = np.random.default_rng(3)
    for _ in range(3):
        choices = _random_choices(net, rng, search_bits)
        _one_hot(net, choices)
        lat = float(net.expected_latency(fb.tables, fb.fixed).detach())
        sub_cfg, model = net.derive(choices)
        ref = subnet_cost(space, sub_cfg, sim.cost)["latency"]     # layer-by-layer LUT sum
        assert lat == pytest.approx(ref, rel=1e-9)
        # and the realised model's own layers, as the suite's cost table sees them
        table = LayerCostTable(model, (1, 32, 32), ["bitfusion"], range(2, 9))
        act = space.active_blocks(sub_cfg)
        bits = []
        for n in table.names:
            if n.startswith("blocks."):
                i = act[int(n.split(".")[1])]
                bits.append((sub_cfg.dw_w[i], sub_cfg.dw_a[i]) if n.endswith(".dw")
                            else (sub_cfg.pw_w[i], sub_cfg.pw_a[i]))
            else:
                bits.append((8, 8))
        assert table.cost("latency", bits) == pytest.approx(ref, rel=1e-9)
    if not search_bits:
        assert set(sub_cfg.pw_w) == {8}


def test_expected_latency_gradient_matches_finite_difference(setup):
    cfg, space, sim, fb = setup
    net = fb.new_supernet().double()
    net.search_bits = True
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    lat = net.expected_latency(fb.tables, fb.fixed)
    lat.backward()
    eps = 1e-6
    for p in [net.theta_op[0], net.theta_op[3], net.theta_w[5], net.theta_a[-1]]:
        for j in range(p.numel()):
            with torch.no_grad():
                p[j] += eps
                hi = float(net.expected_latency(fb.tables, fb.fixed))
                p[j] -= 2 * eps
                lo = float(net.expected_latency(fb.tables, fb.fixed))
                p[j] += eps
            assert float(p.grad[j]) == pytest.approx((hi - lo) / (2 * eps), rel=1e-5,
                                                     abs=1e-12)
    assert any(float(p.grad.abs().max()) > 0 for p in net.arch_parameters())


def test_latency_factor_gradcheck():
    lat = torch.tensor([0.031, 0.05], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: latency_factor(x, 0.04, 0.2, 0.6, 25.0), (lat,))
    # α · log(scale · LAT / T)^β by hand
    assert float(latency_factor(torch.tensor(0.04), 0.04)) == pytest.approx(
        0.2 * math.log(25.0) ** 0.6, rel=1e-6)
    with pytest.raises(ValueError, match="target"):
        latency_factor(lat, 0.0)


def test_temperature_schedule():
    assert temperature(0) == 5.0
    assert temperature(1) == pytest.approx(4.78)
    assert temperature(2) == pytest.approx(5.0 * 0.913936)
    assert temperature(90) == pytest.approx(5.0 * math.exp(90 * math.log(0.956)))
    assert temperature(3, tau0=2.0, decay=0.5) == 0.25
    with pytest.raises(ValueError, match="epoch"):
        temperature(-1)


def _toy(alpha, steps=40, lr=0.5):
    """Two ops with identical outputs (CE does not depend on θ), latency 1 vs 2 (× target)."""
    torch.manual_seed(0)
    theta = torch.zeros(2, requires_grad=True)
    lat_ops = torch.tensor([1.0, 2.0])
    logits = torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.SGD([theta], lr=lr)
    for _ in range(steps):
        m = F.gumbel_softmax(theta, tau=5.0)
        ce = F.cross_entropy(m[0] * logits + m[1] * logits, y)
        lat = (F.softmax(theta, 0) * lat_ops).sum()
        loss = fbnet_loss(ce, lat, target=1.0, alpha=alpha, beta=0.6, scale=25.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(F.softmax(theta.detach(), 0)[0])


def test_latency_term_moves_theta_to_cheaper_op_as_alpha_grows():
    p = [_toy(a) for a in (0.0, 0.05, 0.2, 1.0)]
    assert p[0] == pytest.approx(0.5)
    assert all(b > a for a, b in zip(p, p[1:])), p
    assert p[-1] > 0.9


def test_derived_model_matches_supernet_hard_path(setup):
    cfg, space, sim, fb = setup
    net = fb.new_supernet().eval()
    rng = np.random.default_rng(1)
    choices = _random_choices(net, rng, False)
    net.masks = [(F.one_hot(torch.tensor(o), len(ops)).float(), None, None)
                 for (o, _, _), ops in zip(choices, net.ops_spec)]
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        ref = net(x)
        net.clear_masks()
        sub_cfg, model = net.derive(choices)
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-5)
    space.validate(sub_cfg)
    n_skip = [sum(net.ops_spec[i][choices[i][0]] is None for i in range(sl.start, sl.stop))
              for sl in space.stage_slices]
    assert sub_cfg.depths == [len(range(sl.start, sl.stop)) - k
                              for sl, k in zip(space.stage_slices, n_skip)]


def test_block_ops_skip_only_beyond_min_depth(setup):
    cfg, space, sim, fb = setup
    ops = block_ops(space, 2)
    for s, sl in enumerate(space.stage_slices):
        dmin = min(space.depth_choices[s])
        for j, i in enumerate(range(sl.start, sl.stop)):
            assert (None in ops[i]) == (j >= dmin)
            assert len([o for o in ops[i] if o]) == len(space.kernel_choices) * min(
                2, len(space.blocks[i].mid_choices))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="baselines.fbnet.variants"):
        load_profile("smoke", {"baselines.fbnet.variants": ["nope"]})
    with pytest.raises(ConfigError, match="baselines.fbnet.val_fraction"):
        load_profile("smoke", {"baselines.fbnet.val_fraction": 1.5})
    with pytest.raises(ConfigError, match="baselines.fbnet.bogus"):
        load_profile("smoke", {"baselines.fbnet.bogus": 1})


def test_search_batches_split_80_20_disjoint(setup):
    from apq_lib.baselines.fbnet import search_batches
    from apq_lib.data import load_data
    cfg = setup[0]
    data = load_data(cfg.data)
    w_it, t_it, nw, nt = search_batches(data, 160, 0.2, 32)
    assert (nw, nt) == (4, 1)                      # 128 / 32 weight, 32 / 32 theta batches
    w = torch.cat([next(w_it)[0] for _ in range(nw)])
    t = next(t_it)[0]
    key = lambda x: {hash(r.numpy().tobytes()) for r in x.reshape(len(x), -1)}  # noqa: E731
    assert len(key(w)) == 128 and len(key(t)) == 32
    assert not key(w) & key(t)
    with pytest.raises(ValueError, match="train_images"):
        search_batches(data, 40, 0.2, 32)


@pytest.mark.parametrize("search_bits", [False, True])
def test_weight_step_trains_every_op_and_no_theta(setup, search_bits):
    """Weight steps run the soft mixture of every op (each op's weights get a gradient),
    one bit width per slot (hard bit masks), and never move θ."""
    cfg, space, sim, fb = setup
    net = fb.new_supernet().train()
    net.search_bits = search_bits
    net.sample_masks(5.0, weights_only=True)
    for m_op, m_w, m_a in net.masks:
        assert not m_op.requires_grad and (m_op > 0).all()      # soft, every op weighted
        assert float(m_op.sum()) == pytest.approx(1.0, abs=1e-6)
        for m in (m_w, m_a):
            if search_bits:
                assert sorted(m.tolist()) == [0.0] * (len(net.bits) - 1) + [1.0]
            else:
                assert m is None
    F.cross_entropy(net(torch.randn(8, 1, 32, 32)), torch.arange(8) % 10).backward()
    for cand in net.cands:
        for op in cand:
            for p in op.parameters():
                if p.dim() > 1:
                    assert p.grad is not None and float(p.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.arch_parameters())


def test_retrain_steps_and_failure_names_the_key(setup):
    import dataclasses

    cfg, space, sim, fb = setup
    net = fb.new_supernet()
    net.clear_masks()
    _, model = net.derive(_random_choices(net, np.random.default_rng(0), False))
    g = torch.Generator().manual_seed(0)
    batches = iter([(torch.randn(8, 1, 32, 32, generator=g), torch.arange(8) % 10)] * 100)
    fb0 = FBNetSearch(space, dataclasses.replace(cfg.baselines.fbnet, retrain_steps=0), sim)
    before = [p.detach().clone() for p in model.parameters()]
    assert fb0.retrain(model, batches) == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    fb5 = FBNetSearch(space, dataclasses.replace(cfg.baselines.fbnet, retrain_steps=5,
                                                 retrain_lr=0.05), sim)
    losses = fb5.retrain(model, batches)
    assert len(losses) == 5 and losses[-1] < losses[0]          # one repeated batch: fits
    bad = FBNetSearch(space, dataclasses.replace(cfg.baselines.fbnet, retrain_steps=5,
                                                 retrain_lr=1e30), sim)
    with pytest.raises(Exception, match="baselines.fbnet.retrain_lr"):
        bad.retrain(model, batches)


def test_fbnet_vs_apq_names_the_winner_as_apq():
    """APQ − FBNet at matched latency: an FBNet model right on fewer images than APQ's gives
    a positive difference and ``APQ better``; beyond the latency tolerance, no comparison."""
    import pandas as pd

    from apq_lib.baselines.study import fbnet_vs_apq
    rng = np.random.default_rng(0)
    apq_hits = rng.random(4000) < 0.85
    fb_hits = apq_hits & (rng.random(4000) < 0.9)            # ~8.5 points worse, paired
    apq = pd.DataFrame([{"model_id": "APQ|latency|0.2", "latency_ms": 0.200, "test_acc": 85.0}])
    row = {"row_id": "fb", "method": "FBNet+HAQ", "constraint": "latency <= 0.2 ms",
           "met": True, "test_acc": 100 * fb_hits.mean(), "latency_ms": 0.205,
           "expected_latency_ms": 0.2, "argmax_latency_ms": 0.2, "retrain_loss": 0.5,
           "arch": {"depths": [1]}, "search_s": 1.0}
    far = {**row, "row_id": "far", "latency_ms": 0.5}
    out = fbnet_vs_apq([row, far], apq, {"fb": fb_hits, "far": fb_hits},
                       {"APQ|latency|0.2": apq_hits})
    first, second = out.iloc[0], out.iloc[1]
    assert first["APQ - FBNet"] == pytest.approx(100 * (apq_hits.mean() - fb_hits.mean()))
    assert first["APQ - FBNet"] > 0 and first["ci_low"] > 0
    assert first["verdict"] == "APQ better"
    assert second["verdict"] == "not comparable" and pd.isna(second["APQ - FBNet"])
