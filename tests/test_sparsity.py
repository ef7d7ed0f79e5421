"""Sparse variational dropout, L0 hard-concrete gates, IMP with rewinding and the linear
mode connectivity analysis (apq_lib.pruning.{variational,l0,imp,lmc,study})."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from apq_lib.pruning import imp as I
from apq_lib.pruning import l0 as L
from apq_lib.pruning import lmc
from apq_lib.pruning import variational as V
from apq_lib.pruning.magnitude import sparsity
from apq_lib.pruning.study import paired_bootstrap


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def lin_layers(m):
    return [(n, x) for n, x in m.named_modules() if isinstance(x, nn.Linear)]


# ---------------------------------------------------------------- variational dropout
def test_vd_kl_matches_published_formula():
    # eq. 14 of Molchanov et al. evaluated by hand with math (no torch)
    for la in (-4.0, -1.0, 0.0, 0.5, 3.0, 6.0):
        sig = 1.0 / (1.0 + math.exp(-(1.87320 + 1.48695 * la)))
        neg_kl = 0.63576 * sig - 0.5 * math.log(1.0 + math.exp(-la)) - 0.63576
        got = float(V.vd_kl(torch.tensor(la, dtype=torch.float64)))
        assert got == pytest.approx(-neg_kl, abs=1e-10)
    la = torch.linspace(-6, 8, 50, dtype=torch.float64)
    kl = V.vd_kl(la)
    assert (kl > 0).all() and (kl.diff() < 0).all()        # positive, decreasing in α
    assert float(V.vd_kl(torch.tensor(30.0, dtype=torch.float64))) == pytest.approx(0, abs=1e-6)


def test_vd_kl_approximates_the_true_kl():
    # -KL(α) = ½ log α − E log|ε|, ε ~ N(1, α), up to the constant that makes it 0 as α → ∞:
    # C = −(γ_Euler + log 2) / 2; the paper's approximation is within ~0.01 of it
    g = torch.Generator().manual_seed(0)
    c = -(0.5772156649 + math.log(2.0)) / 2
    for la in (-2.0, 0.0, 2.0):
        eps = 1.0 + math.exp(la / 2) * torch.randn(2_000_000, generator=g, dtype=torch.float64)
        neg_kl = 0.5 * la - float(torch.log(eps.abs()).mean()) + c
        assert float(V.vd_kl(torch.tensor(la))) == pytest.approx(-neg_kl, abs=0.02)


def test_vd_layers_eval_threshold_and_local_reparameterisation():
    m = mlp()
    ref = copy.deepcopy(m)
    V.to_variational(m, log_sigma2_init=-30.0)
    x = torch.randn(5, 12)
    m.eval()
    torch.testing.assert_close(m(x), ref(x))              # σ² tiny: log α < 3 everywhere
    lay = m[0]
    with torch.no_grad():                                   # half the weights get α = e^5
        hi = torch.rand_like(lay.weight) < 0.5
        lay.log_sigma2.copy_(torch.where(hi, torch.log(lay.weight ** 2) + 5.0,
                                         torch.full_like(lay.weight, -20.0)))
    torch.testing.assert_close(lay.eval_weight(), lay.weight * ~hi)
    lay.train()
    xs = torch.randn(1, 12).expand(200_000, 12)
    with torch.no_grad():
        out = lay(xs)
        mu = nn.functional.linear(xs[:1], lay.weight, lay.bias)
        var = nn.functional.linear(xs[:1] ** 2, lay.log_sigma2.exp())
    torch.testing.assert_close(out.mean(0, keepdim=True), mu, atol=0.05, rtol=0.02)
    torch.testing.assert_close(out.var(0, keepdim=True), var, rtol=0.03, atol=1e-3)
    plain = V.vd_sparsify(copy.deepcopy(m))
    assert not V.vd_layers(plain) and type(plain[0]) is nn.Linear
    torch.testing.assert_close(plain[0].weight, (lay.weight * ~hi).detach())
    ranked = V.vd_sparsify(copy.deepcopy(m), sparsity=0.3)
    assert sparsity(ranked, lin_layers(ranked))["total"] == pytest.approx(0.3, abs=2e-3)
    with pytest.raises(ValueError, match="no VD layers"):
        V.vd_penalty(mlp())
    with pytest.raises(KeyError, match="nope"):
        V.to_variational(mlp(), ["nope"])


# ---------------------------------------------------------------- L0 / hard concrete
def test_hard_concrete_expected_l0_closed_form_and_monte_carlo():
    g = L.HardConcreteGate((4,), init_drop=0.5)
    with torch.no_grad():
        g.raw.copy_(torch.tensor([-3.0, -0.5, 0.7, 2.5]))
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    closed = [1 / (1 + math.exp(-(la - beta * math.log(-gamma / zeta))))
              for la in (-3.0, -0.5, 0.7, 2.5)]
    torch.testing.assert_close(g.prob_nonzero(), torch.tensor(closed))
    assert float(g.expected_l0().detach()) == pytest.approx(sum(closed), rel=1e-6)
    torch.manual_seed(0)
    z = g.sample(torch.rand(100_000, 4).clamp(1e-6, 1 - 1e-6)).detach()
    mc = (z > 0).float().mean(0)
    torch.testing.assert_close(mc, torch.tensor(closed), atol=0.01, rtol=0)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0 and (z == 1).any(0)[-1]
    # u = ½ gives s = σ(log α / β); the test-time gate is eq. 13
    s = torch.sigmoid(g.log_alpha / beta)
    torch.testing.assert_close(g.sample(torch.full((4,), 0.5)),
                               (s * (zeta - gamma) + gamma).clamp(0, 1))
    det = (torch.sigmoid(g.log_alpha) * 1.2 - 0.1).clamp(0, 1)
    torch.testing.assert_close(g.deterministic(), det)
    with pytest.raises(ValueError, match="init_drop"):
        L.HardConcreteGate((2,), init_drop=1.0)


def test_l0_gates_parametrize_penalty_and_sparsify():
    m = mlp()
    ref = copy.deepcopy(m)
    L.add_l0_gates(m, lin_layers(m), init_drop=0.2, scale=5.0)
    gates = L.l0_gates(m)
    assert len(gates) == 3
    n = sum(x.weight.numel() for _, x in lin_layers(ref))
    p = 1 / (1 + math.exp(-(math.log(4.0) - 2 / 3 * math.log(0.1 / 1.1))))
    assert float(L.l0_penalty(m).detach()) == pytest.approx(n * p, rel=1e-3)
    m.eval()                                  # test-time gate σ(log 4)·1.2 − 0.1 = 0.86
    z = (torch.sigmoid(gates[0][1].log_alpha) * 1.2 - 0.1).clamp(0, 1)
    torch.testing.assert_close(m[0].weight, ref[0].weight * z)
    assert float(z.mean()) == pytest.approx(0.86, abs=0.01)
    out = L.l0_sparsify(copy.deepcopy(m), sparsity=0.6)
    assert not L.l0_gates(out)
    assert sparsity(out, lin_layers(out))["total"] == pytest.approx(0.6, abs=2e-3)
    with pytest.raises(ValueError, match="already parametrized"):
        L.add_l0_gates(m, lin_layers(m))


# ---------------------------------------------------------------- IMP + rewinding
def _perturb(model, r):
    with torch.no_grad():
        g = torch.Generator().manual_seed(100 + r)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return r


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_imp_masks_nested_and_rewind_exact(scope):
    m = mlp()
    state_k = I.snapshot(m)                                # "iteration k"
    _perturb(m, 0)                                          # "trained"
    lay = lin_layers(m)
    seen = []

    def retrain(net, r):
        got = {n: x.weight.detach().clone() for n, x in lay}
        masks = I.current_masks(lay)
        for n, _ in lay:                                   # exactly w_k on kept entries
            assert torch.equal(got[n], state_k[n + ".weight"] * masks[n])
        seen.append(masks)
        return _perturb(net, r)

    rounds = I.run_imp(m, lay, 4, state_k, retrain, rate=0.2, scope=scope,
                   output_rate=0.1 if scope == "layer" else None)
    assert [r.result for r in rounds] == [1, 2, 3, 4]
    total = sum(x.weight.numel() for _, x in lay)
    for a, b in zip(seen, seen[1:]):
        for n in a:
            assert not (b[n] & ~a[n]).any()                 # nested
            assert b[n].sum() < a[n].sum() or scope == "global"
    for r in rounds:                                       # 20 % of the remaining per round
        kept = sum(int(v.sum()) for v in r.masks.values())
        assert 1 - kept / total == pytest.approx(r.sparsity)
        if scope == "global":
            assert kept == pytest.approx(total * 0.8 ** r.round, abs=r.round)
    if scope == "layer":
        w0 = rounds[-1].masks["0"]
        assert int(w0.sum()) == pytest.approx(w0.numel() * 0.8 ** 4, abs=4)
    with pytest.raises(ValueError, match="scope"):
        I.imp_prune_round(lay, 0.2, "channel")


def test_random_controls_keep_counts_and_change_weights():
    m = mlp()
    lay = lin_layers(m)
    masks = I.imp_prune_round(lay, 0.5)
    rnd = I.random_masks(masks, seed=3)
    for n in masks:
        assert int(rnd[n].sum()) == int(masks[n].sum()) and not torch.equal(rnd[n], masks[n])
    fresh = I.reinit_like(m, seed=5)
    assert not torch.equal(fresh["0.weight"], m[0].weight_orig)
    assert torch.equal(fresh["0.weight"], I.reinit_like(m, seed=5)["0.weight"])
    I.rewind(m, fresh)
    torch.testing.assert_close(m[0].weight, fresh["0.weight"] * masks["0"])
    with pytest.raises(KeyError, match="bogus"):
        I.rewind(m, {"bogus": torch.zeros(1)})


# ---------------------------------------------------------------- linear mode connectivity
def _err(x, y):
    def error_fn(net):
        with torch.no_grad():
            return 100.0 * float((net(x).argmax(1) != y).float().mean())
    return error_fn


def test_interpolation_endpoints_and_barrier():
    torch.manual_seed(0)
    x, y = torch.randn(256, 12), torch.randint(0, 3, (256,))
    a, b = mlp(1), mlp(2)
    with torch.no_grad():                                  # endpoints with very different
        a[0].weight.mul_(7.3)                              # scales so lerp would be inexact
    err = _err(x, y)
    t, e = lmc.interpolation_curve(a, a.state_dict(), b.state_dict(), err, points=11)
    assert len(t) == 11 and t[0] == 0 and t[-1] == 1
    assert e[0] == err(a) and e[-1] == err(b)
    mid = lmc.interpolate_state(a.state_dict(), b.state_dict(), 0.5)
    torch.testing.assert_close(mid["0.weight"], (a[0].weight + b[0].weight) / 2)
    assert lmc.error_barrier(e) == pytest.approx(e.max() - (e[0] + e[-1]) / 2)
    assert lmc.error_barrier([10.0, 30.0, 12.0]) == pytest.approx(19.0)
    with pytest.raises(ValueError, match="11"):
        lmc.interpolation_curve(a, a.state_dict(), b.state_dict(), err, points=5)


def test_instability_same_noise_has_no_barrier_and_masks_are_kept():
    torch.manual_seed(0)
    x, y = torch.randn(128, 12), torch.randint(0, 3, (128,))
    m = mlp()
    lay = lin_layers(m)
    I.imp_prune_round(lay, 0.5)
    state = copy.deepcopy(m.state_dict())

    def train(net, s):
        g = torch.Generator().manual_seed(s % 2)          # seeds 2 and 4: same noise
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(5):
            idx = torch.randint(0, 128, (16,), generator=g)
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    r = lmc.instability(m, state, train, _err(x, y), data_seeds=(2, 4))
    assert r.barrier == 0.0 and np.ptp(r.errors) == 0.0
    with pytest.raises(ValueError, match="different data seeds"):
        lmc.instability(m, state, train, _err(x, y), data_seeds=(1, 1))


def test_paired_bootstrap_interval_contains_mean():
    r = paired_bootstrap([90.0, 91.0, 89.5, 90.2], [88.0, 90.0, 88.9, 87.0], 500)
    assert r["ci_low"] <= r["mean_diff"] <= r["ci_high"] and r["n"] == 4
    assert r["mean_diff"] == pytest.approx(np.mean([2.0, 1.0, 0.6, 3.2]))


# ---------------------------------------------------------------- config section
@pytest.mark.parametrize("key,value", [("sparsity.targets", [0.5, 1.0]),
                                       ("sparsity.lmc_points", 5),
                                       ("sparsity.lmc_ks", [5, 10]),
                                       ("sparsity.seeds", 1),
                                       ("sparsity.bogus", 1)])
def test_sparsity_config_rejects_bad_values(key, value):
    from apq_lib.config import ConfigError, load_profile
    assert load_profile("smoke").sparsity.lmc_points >= 11
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_profile("smoke", {key: value})
