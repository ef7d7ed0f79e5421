"""HAWQ-V2: Hutchinson trace vs the exact Hessian, Pareto-frontier bit allocation."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from apq_lib.baselines.hawq import (
    hawq_allocate,
    hawq_sensitivity,
    hessian_traces,
    hutchinson_trace,
    pareto_frontier,
    weight_quant_error,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    params = {k: v.detach() for k, v in net.named_parameters()}
    names = ["0.weight", "2.weight"]

    def f(p):
        out = torch.func.functional_call(net, {**params, **p}, (x,))
        return nn.functional.cross_entropy(out, y)
    return net, x, y, f, {k: params[k] for k in names}


def _exact_block_traces(f, sub):
    names = list(sub)
    sizes = [sub[k].numel() for k in names]

    def flat_f(v):
        parts = torch.split(v, sizes)
        return f({k: p.view(sub[k].shape) for k, p in zip(names, parts)})
    H = torch.autograd.functional.hessian(flat_f, torch.cat([sub[k].reshape(-1) for k in names]))
    d = torch.diagonal(H)
    return dict(zip(names, [float(s.sum()) for s in torch.split(d, sizes)]))


def test_hutchinson_matches_exact_hessian_trace_mlp():
    _, _, _, f, sub = _mlp_problem()
    exact = _exact_block_traces(f, sub)
    est = hutchinson_trace(f, sub, n_samples=4000, seed=0, mode="double_backward")
    for k in exact:
        assert est[k] == pytest.approx(exact[k], rel=0.05)


def test_hutchinson_quadratic_and_jvp_equals_double_backward():
    g = torch.Generator().manual_seed(1)
    B = torch.randn(12, 12, generator=g)
    A = B @ B.T / 12 + torch.eye(12)                     # SPD, off-diagonal mass
    f = lambda p: 0.5 * (torch.cat([p["a"], p["b"]]) @ A @ torch.cat([p["a"], p["b"]]))
    sub = {"a": torch.randn(5), "b": torch.randn(7)}
    est = hutchinson_trace(f, sub, n_samples=3000, seed=0, mode="double_backward")
    assert est["a"] == pytest.approx(float(A.diagonal()[:5].sum()), rel=0.05)
    assert est["b"] == pytest.approx(float(A.diagonal()[5:].sum()), rel=0.05)
    j = hutchinson_trace(f, sub, n_samples=4, seed=3, mode="jvp")
    d = hutchinson_trace(f, sub, n_samples=4, seed=3, mode="double_backward")
    assert j["a"] == pytest.approx(d["a"], rel=1e-4) and j["b"] == pytest.approx(d["b"], rel=1e-4)


def test_hessian_traces_on_a_model():
    net, x, y, f, sub = _mlp_problem()
    tr = hessian_traces(net, [(x, y)], ["0", "2"], n_samples=3, seed=3, mode="double_backward")
    ref = hutchinson_trace(f, sub, n_samples=3, seed=3, mode="double_backward")
    assert tr["0"] == pytest.approx(ref["0.weight"], rel=1e-4)
    assert tr["2"] == pytest.approx(ref["2.weight"], rel=1e-4)


def test_quant_error_falls_with_bits():
    w = torch.randn(64, 32)
    errs = [weight_quant_error(w, b) for b in (2, 4, 6, 8)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_pareto_frontier_matches_brute_force():
    rng = np.random.default_rng(0)
    omega, costs = rng.random((5, 3)), rng.random((5, 3))
    fc, fo, fch = pareto_frontier(omega, costs)
    for budget in np.quantile(fc, [0.0, 0.3, 0.7, 1.0]):
        best = min((sum(omega[i, c] for i, c in enumerate(ch)), ch)
                   for ch in itertools.product(range(3), repeat=5)
                   if sum(costs[i, c] for i, c in enumerate(ch)) <= budget + 1e-12)
        out = hawq_allocate(omega, costs, budget)
        assert out["omega"] == pytest.approx(best[0]) and out["cost"] <= budget + 1e-12
    assert np.all(np.diff(fc) > 0) and np.all(np.diff(fo) < 0)     # non-dominated


def test_allocation_meets_constraint_and_prefers_high_trace_layers():
    torch.manual_seed(0)
    w = torch.randn(32, 16)
    weights = {f"l{i}": w.clone() for i in range(4)}                # identical layers
    traces = {"l0": 10.0, "l1": 0.1, "l2": 5.0, "l3": 0.01}
    bits = [4, 6, 8]
    omega = hawq_sensitivity(traces, weights, bits)
    cost = np.array([[512 * b * b for b in bits]] * 4, float)      # BitOps-like, same per layer
    budget = float(cost[:, 1].sum())                               # "all 6-bit" budget
    out = hawq_allocate(omega, cost, budget)
    chosen = [bits[c] for c in out["choices"]]
    assert out["cost"] <= budget
    assert chosen[0] >= chosen[2] >= chosen[1] >= chosen[3]        # ordered by trace
    assert chosen[0] > chosen[3]
    with pytest.raises(ValueError, match="budget"):
        hawq_allocate(omega, cost, float(cost[:, 0].sum()) - 1)


def test_hutchinson_standard_error_matches_rademacher_variance():
    # f(x) = 1/2 x^T A x: each probe gives v^T A v, variance 2 * sum_{i != j} A_ij^2
    g = torch.Generator().manual_seed(0)
    b = torch.randn(6, 6, generator=g)
    a = b @ b.T
    f = lambda p: 0.5 * p["x"] @ a @ p["x"]  # noqa: E731
    x = {"x": torch.randn(6, generator=g)}
    n = 2000
    mean, se = hutchinson_trace(f, x, n_samples=n, seed=1, mode="double_backward",
                                return_se=True)
    off = a - torch.diag(torch.diag(a))
    expected = float(torch.sqrt(2 * (off ** 2).sum() / n))
    assert se["x"] == pytest.approx(expected, rel=0.1)
    assert mean["x"] == pytest.approx(float(torch.trace(a)), abs=4 * expected)
    # a diagonal Hessian is estimated exactly by every Rademacher probe: SE 0
    d = torch.diag(torch.arange(1.0, 7.0))
    _, se0 = hutchinson_trace(lambda p: 0.5 * p["x"] @ d @ p["x"], x, n_samples=5, seed=2,
                              mode="double_backward", return_se=True)
    assert se0["x"] == pytest.approx(0.0, abs=1e-9)
