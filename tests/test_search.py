"""APQ evolution search and random search on synthetic predictors with known optima."""
import time

import numpy as np
import pytest

from apq_lib.config import ConfigError, SearchConfig, SpaceConfig, load_profile
from apq_lib.search import (
    EvolutionFinder,
    IndexOps,
    InfeasibleConstraintError,
    RandomSearch,
    SearchResult,
)
from apq_lib.supernet.space import SearchSpace


@pytest.fixture(scope="module")
def space():
    return SearchSpace(load_profile("smoke").space)


@pytest.fixture(scope="module")
def tiny():
    """7 block slots: small enough that the optimum is reached every time."""
    return SearchSpace(SpaceConfig(stage_widths=[8, 16, 24], stage_strides=[1, 2, 1],
                                   stage_max_depth=[3, 3, 1]))


@pytest.fixture(scope="module")
def k7a4_space():
    return SearchSpace(SpaceConfig(forbid_k7_a4=True))


def _x(idx):
    """Choice index + 1 on active blocks, 0 on blocks switched off: [N, B, 6] float."""
    return np.where(idx >= 0, idx + 1, 0).astype(np.float64)


def bits_cost(idx):
    """1 + sum of the bit-choice indices over active blocks (minimum 1: lowest bits)."""
    return 1.0 + np.maximum(idx[:, :, 2:], 0).sum(axis=(1, 2))


def known_score(idx):
    """Architecture (index + 1 per active block) and bits (index) both help; only bits
    cost. Optimum under bits_cost <= L: every block on at the largest kernel and channels,
    bit indices summing to exactly L - 1."""
    return _x(idx)[:, :, :2].sum(axis=(1, 2)) + bits_cost(idx) - 1.0


def _optimum(space, limit):
    ops = IndexOps(space)
    arch = sum(ops.n_kernel + m for m in ops.n_mid)
    return arch + limit - 1


def _small(space, score, cons, **kw):
    kw.setdefault("generations", 60)
    return EvolutionFinder(space, score, cons, SearchConfig(), **kw)


# ---------------------------------------------------------------------------- operators
def test_operators_produce_valid_configs(space, k7a4_space):
    for sp in (space, k7a4_space):
        ops, rng = IndexOps(sp), np.random.default_rng(0)
        pop = ops.sample(rng, 300)
        kids = np.concatenate([ops.mutate(rng, pop, 0.3), ops.crossover(rng, pop, pop[::-1])])
        for arr in (pop, kids):
            assert ops.valid_mask(arr).all()
            for cfg in sp.from_index_array(arr[:40]):
                sp.validate(cfg)                      # raises if invalid
            assert (sp.to_index_array(sp.from_index_array(arr[:40])) == arr[:40]).all()
        depths = ops.depths_of(pop)
        assert {int(d) for d in depths[:, 0]} == set(sp.depth_choices[0])   # depth varies
    bad = ops.sample(np.random.default_rng(1), 4)
    bad[0, 0, 1] = 99                                 # channel index out of range
    bad[1, 1, :] = -1                                 # a hole inside a stage
    assert ops.valid_mask(bad).tolist()[:2] == [False, False]


def test_mutation_rate_and_depth(space):
    ops, rng = IndexOps(space), np.random.default_rng(0)
    pop = ops.sample(rng, 2000)
    kids = ops.mutate(rng, pop, 0.1)
    both = (pop[:, :, 0] >= 0) & (kids[:, :, 0] >= 0)
    changed = np.any(pop != kids, axis=2)[both].mean()
    assert 0.05 < changed < 0.15                      # ~0.1 * (1 - P(same draw))
    assert (ops.depths_of(pop) != ops.depths_of(kids)).mean() > 0.02
    assert (ops.mutate(rng, pop, 0.0) == pop).all()


# ---------------------------------------------------------------------------- evolution
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_known_optimum(tiny, seed):
    limit = 20.0
    res = _small(tiny, known_score, {"bits": (bits_cost, limit)}, generations=100,
                 seed=seed).run()
    assert res.best_costs["bits"] <= limit
    assert res.best_score == _optimum(tiny, limit)
    assert isinstance(res, SearchResult) and res.method == "evolution"
    h = res.history_frame()
    assert len(h) == 101 and h["best_score"].is_monotonic_increasing
    assert {"generation", "n_scored", "best_score", "cost_bits"} <= set(h.columns)


def test_constraints_never_violated(space):
    limits = {"bits": 60.0, "size": 120.0}
    size = lambda idx: _x(idx)[:, :, :2].sum(axis=(1, 2)) * 2.0 + bits_cost(idx)  # noqa: E731
    seen = {"scored": 0}

    def score(idx):
        assert (bits_cost(idx) <= limits["bits"]).all() and (size(idx) <= limits["size"]).all()
        seen["scored"] += len(idx)
        return known_score(idx)

    def check(g, pop, scores, costs):
        assert (bits_cost(pop) <= limits["bits"]).all() and (size(pop) <= limits["size"]).all()
        assert np.allclose(costs["size"], size(pop))

    res = _small(space, score, {"bits": (bits_cost, limits["bits"]),
                                "size": (size, limits["size"])},
                 generations=30, on_generation=check).run()
    assert seen["scored"] == res.n_scored
    assert all(res.best_costs[k] <= v for k, v in limits.items())


def test_same_seed_same_result(space):
    cons = {"bits": (bits_cost, 60.0)}
    a = _small(space, known_score, cons, generations=20, seed=3).run()
    b = _small(space, known_score, cons, generations=20, seed=3).run()
    c = _small(space, known_score, cons, generations=20, seed=4).run()
    assert (a.best_index == b.best_index).all() and a.history == b.history
    assert (a.population == b.population).all()
    assert a.history != c.history


def test_crossover_children_are_scored(space):
    sizes = []

    def score(idx):
        sizes.append(len(idx))
        return known_score(idx)

    f = EvolutionFinder(space, score, {"bits": (bits_cost, 60.0)}, SearchConfig(),
                        population=40, parents=10, mutants=12, crossovers=18, generations=5)
    res = f.run()
    assert sizes == [40] + [12 + 18] * 5                      # one batch per generation
    assert res.n_scored == f.budget == 40 + 5 * 30
    # crossover alone (no mutants) still improves: its children enter the population
    sizes.clear()
    res = EvolutionFinder(space, score, {"bits": (bits_cost, 60.0)}, SearchConfig(),
                          mutants=0, crossovers=100, generations=15).run()
    assert sizes[1:] == [100] * 15
    assert res.history[-1]["best_score"] > res.history[0]["best_score"]


def test_beats_random_search_at_equal_budget(space):
    rng = np.random.default_rng(7)
    wa, wc = rng.random((space.n_blocks, 6)), rng.random((space.n_blocks, 6)) + 0.2
    score = lambda idx: (_x(idx) * wa).sum(axis=(1, 2))  # noqa: E731
    cost = lambda idx: (_x(idx) * wc).sum(axis=(1, 2))   # noqa: E731
    limit = float(np.quantile(cost(IndexOps(space).sample(rng, 2000)), 0.25))
    f = _small(space, score, {"cost": (cost, limit)}, generations=100)
    evo, rnd = f.run(), RandomSearch.like(f).run()
    assert rnd.n_scored == evo.n_scored == f.budget
    assert len(rnd.history) == len(evo.history)
    assert rnd.method == "random" and rnd.best_costs["cost"] <= limit
    assert evo.best_score > rnd.best_score


def test_impossible_constraint_fails_fast(space):
    ops = IndexOps(space)
    min_cost = float(bits_cost(ops.minimal())[0])
    t0 = time.perf_counter()
    with pytest.raises(InfeasibleConstraintError) as e:
        _small(space, known_score, {"bits": (bits_cost, min_cost - 1)}).run()
    assert time.perf_counter() - t0 < 5
    err = e.value
    assert err.name == "bits" and err.limit == min_cost - 1 and err.min_cost == min_cost
    assert "bits" in str(err) and f"{min_cost:g}" in str(err)


def test_tight_but_feasible_constraint(space):
    """A limit random sampling never meets, but the minimal configuration does."""
    min_cost = float(bits_cost(IndexOps(space).minimal())[0])
    res = _small(space, known_score, {"bits": (bits_cost, min_cost + 2)},
                 generations=10).run()
    assert res.best_costs["bits"] <= min_cost + 2
    assert res.history[0]["fallback"] > 0


def test_forbid_k7_a4(k7a4_space):
    ops = IndexOps(k7a4_space)
    k7, a4 = ops.k7, ops.a4

    def score(idx):                         # rewards exactly the forbidden combination
        assert ops.valid_mask(idx).all()
        return ((idx[:, :, 0] == k7).sum(1) + (idx[:, :, 5] == a4).sum(1)).astype(float)

    res = EvolutionFinder(k7a4_space, score, None, SearchConfig(), generations=30).run()
    best = res.best_index
    assert not np.any((best[:, 0] == k7) & (best[:, 5] == a4))
    k7a4_space.validate(k7a4_space.from_index_array(best[None])[0])
    assert not np.any((res.population[:, :, 0] == k7) & (res.population[:, :, 5] == a4))


def test_faithful_mode_and_joint_infeasibility(space):
    """unique_parents=False is the official selection (duplicates allowed); two limits
    each reachable alone but not together give a clear error."""
    res = _small(space, known_score, {"bits": (bits_cost, 60.0)}, generations=20,
                 unique=False).run()
    assert res.settings["unique"] is False and res.best_costs["bits"] <= 60.0
    n_active = lambda idx: (idx[:, :, 0] >= 0).sum(1).astype(float)  # noqa: E731
    lo = float(n_active(IndexOps(space).minimal())[0])
    cons = {"bits": (bits_cost, 1.0),                     # lowest bits only ...
            "blocks": (lambda idx: -n_active(idx), -lo - 3)}   # ... and >= lo + 3 blocks
    with pytest.raises(InfeasibleConstraintError, match="together|unreachable|cannot"):
        _small(space, known_score, cons, max_tries=3).run()


# ---------------------------------------------------------------------------- costs
def test_bitops_table_matches_model_count():
    import torch

    from apq_lib.hardware import count_bitops, model_size_bits
    from apq_lib.search import BitOpsTable
    from apq_lib.supernet.network import APQSupernet
    sp = SearchSpace(SpaceConfig(stage_widths=[8, 16, 24], stage_strides=[1, 2, 1],
                                 stage_max_depth=[3, 3, 1], image_size=16, tail_width=32))
    net, table = APQSupernet(sp), BitOpsTable(sp)
    idx = IndexOps(sp).sample(np.random.default_rng(0), 2)
    for row, cfg in zip(idx, sp.from_index_array(idx)):
        net.set_quantization_policy(cfg)
        net.set_active_subnet(cfg)
        sub = net.get_active_subnet()
        pol = {}
        for j, i in enumerate(sp.active_blocks(cfg)):
            pw, dw = (cfg.pw_w[i], cfg.pw_a[i]), (cfg.dw_w[i], cfg.dw_a[i])
            pol.update({f"blocks.{j}.expand": pw, f"blocks.{j}.project": pw,
                        f"blocks.{j}.dw": dw})
        shape = (sp.cfg.in_channels, sp.cfg.image_size, sp.cfg.image_size)
        assert table.bitops(row[None])[0] * 1e9 == pytest.approx(
            count_bitops(sub, shape, pol, default_bits=(8, 8)))
        assert table.size_kb(row[None])[0] * 8e3 == pytest.approx(
            model_size_bits(sub, pol, default_bits=(8, 8), bias_bits=0))
        assert isinstance(sub, torch.nn.Module)


def test_realize_exports_quantized_and_finetunes():
    import torch

    from apq_lib.search import realize
    from apq_lib.supernet.network import APQSupernet
    sp = SearchSpace(SpaceConfig(stage_widths=[8, 16, 24], stage_strides=[1, 2, 1],
                                 stage_max_depth=[3, 3, 1], image_size=16, tail_width=32))
    torch.manual_seed(0)
    net = APQSupernet(sp).eval()
    before = {k: v.clone() for k, v in net.state_dict().items() if torch.is_tensor(v)}
    cfg = sp.sample(np.random.default_rng(0))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
               for _ in range(3)]
    from apq_lib.config import FinetuneConfig
    r = realize(net, cfg, FinetuneConfig(steps=3, lr=1e-2), batches, batches[:1], batches,
                predicted_acc=50.0, costs={"latency": 1.0})
    assert r.finetune_steps == 3 and len(r.losses) == 3 and 0 <= r.test_acc <= 100
    assert r.correct.dtype == bool and r.correct.shape == (24,)
    assert r.test_acc == pytest.approx(100 * r.correct.mean())
    assert r.config == cfg.to_dict() and r.predicted_acc == 50.0
    assert r.row()["latency"] == 1.0
    from apq_lib.quant import get_policy
    first = sp.active_blocks(cfg)[0]
    assert get_policy(r.model)["blocks.0.dw"] == (cfg.dw_w[first], cfg.dw_a[first])
    assert get_policy(r.model)["blocks.0.project"] == (cfg.pw_w[first], cfg.pw_a[first])
    assert r.model.quantized
    after = net.state_dict()                  # the supernet itself is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not net.quantized


def test_sweep_targets_and_history(space):
    from apq_lib.search import history_table, run_sweep, sweep_targets
    costs = {"latency": bits_cost, "energy": lambda idx: 2 * bits_cost(idx),
             "bitops": lambda idx: _x(idx).sum(axis=(1, 2))}
    scfg = SearchConfig(sweep_points=2, latency_targets_ms=[50.0], generations=3,
                        population=20, parents=5, mutants=10, crossovers=10)
    targets, sample = sweep_targets(scfg, space, costs, n_samples=500)
    assert targets["latency"] == [50.0]                          # the profile's, as given
    for k in ("energy", "bitops"):                               # derived: 25 / 75 % quantiles
        lo, hi = np.quantile(sample[k], [0.25, 0.75])
        assert len(targets[k]) == 2 and targets[k][0] == pytest.approx(lo, rel=1e-2)
        assert targets[k][1] == pytest.approx(hi, rel=1e-2)
    # explicit quantiles win over sweep_points (1.0 = the costliest random sample)
    q_cfg = SearchConfig(sweep_points=2, sweep_quantiles=[0.1, 0.5, 1.0])
    q_targets, q_sample = sweep_targets(q_cfg, space, costs, n_samples=500)
    for k in ("latency", "energy", "bitops"):
        want = np.quantile(q_sample[k], [0.1, 0.5, 1.0])
        assert q_targets[k] == pytest.approx(want, rel=1e-2)
        assert q_targets[k][2] == pytest.approx(q_sample[k].max(), rel=1e-2)
    with pytest.raises(ConfigError, match="sweep_quantiles"):
        SearchConfig(sweep_quantiles=[1.5]).check("search")
    runs = run_sweep(space, known_score, costs, targets, scfg, progress=False)
    assert [(r["constraint"], r["limit"]) for r in runs] == [
        (k, v) for k, vs in targets.items() for v in vs]
    for r in runs:
        assert r["costs"][r["constraint"]] <= r["limit"]
        assert r["random_costs"][r["constraint"]] <= r["limit"]
    h = history_table(runs)
    assert set(h["method"]) == {"evolution", "random"} and set(h["budget"]) >= {"1/2", "2/2"}
    assert len(h) == len(runs) * 2 * 4                           # generations 0..3


def test_predictor_score_fast_path_matches_dense(space):
    import torch

    from apq_lib.predictor.encoder import APQEncoder
    from apq_lib.predictor.model import QuantAwarePredictor
    from apq_lib.search import PredictorScore
    enc = APQEncoder(space)
    torch.manual_seed(0)
    model = QuantAwarePredictor(enc.arch_dims, enc.quant_dims, 64, 3)
    idx = IndexOps(space).sample(np.random.default_rng(0), 50)
    fast, dense = PredictorScore(model, space), PredictorScore(model, space, fast=False)
    assert fast.fast is not None and dense.fast is None
    assert np.allclose(fast(idx), dense(idx), atol=1e-4)
    with torch.no_grad():
        ref = model(torch.from_numpy(enc.encode_index(idx))).double().numpy() * 100
    assert np.allclose(dense(idx), ref, atol=1e-6) and fast.n_scored == 50


def test_one_path_apq_route_equals_baseline_route():
    """One configuration through APQ's route (``realize`` from the supernet) and through the
    baselines' route (FP32 export with BN recal, then ``PolicyEvaluator`` at the
    configuration's per-layer policy): identical logits and per-image correctness. Control:
    the quantized export calibrated without the FP32 BN recal differs."""
    import torch

    from apq_lib.baselines.fixed import PolicyEvaluator
    from apq_lib.config import FinetuneConfig
    from apq_lib.quant import calibrate
    from apq_lib.quant.policy import layer_names, layer_policy
    from apq_lib.search import export_float, realize
    from apq_lib.supernet.network import APQSupernet
    sp = SearchSpace(SpaceConfig(stage_widths=[8, 16, 24], stage_strides=[1, 2, 1],
                                 stage_max_depth=[3, 3, 1], image_size=16, tail_width=32))
    torch.manual_seed(0)
    net = APQSupernet(sp).eval()
    cfg = sp.sample(np.random.default_rng(3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 16, 16, generator=g),
                torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    recipe = FinetuneConfig(steps=4, lr=5e-2)
    apq = realize(net, cfg, recipe, batches, batches[:2], batches, calib_batches=batches[:1])
    fp = export_float(net, cfg, batches[:2])
    names = layer_names(fp)
    ev = PolicyEvaluator(fp, names, batches[:1], batches, batches, recipe.steps,
                         recal_batches=batches[:2], recipe=recipe, weight_kw={})
    base = ev.realized(layer_policy(sp, cfg, names))
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        a, b = apq.model.eval()(x), base.model.eval()(x)
    assert torch.equal(a, b)
    assert np.array_equal(apq.correct, base.correct) and apq.test_acc == base.test_acc
    assert apq.finetune_steps == base.finetune_steps == 4
    q = net.export(cfg, quantized=True)            # control: no FP32 BN recal first
    calibrate(q, batches[:1])
    fp_q = realize(net, cfg, recipe, batches, batches[:2], batches, calib_batches=batches[:1],
                   steps=0).model
    with torch.no_grad():
        assert not torch.allclose(q.eval()(x), fp_q.eval()(x))


def test_sweep_reruns_the_search_where_asked(space):
    """``search.seeds`` searches at the budgets ``rerun`` names: search 0 is the single
    search's result unchanged, the others use their own evolution seeds and meet the budget;
    other budgets get no reruns."""
    from apq_lib.search import run_sweep, search_seed
    costs = {"latency": bits_cost}
    targets = {"latency": [40.0, 60.0]}
    kw = dict(generations=3, population=20, parents=5, mutants=10, crossovers=10)
    one = run_sweep(space, known_score, costs, targets, SearchConfig(seeds=1, **kw),
                    seed=3, progress=False, rerun=lambda c, lim: True)
    three = run_sweep(space, known_score, costs, targets, SearchConfig(seeds=3, **kw),
                      seed=3, progress=False, rerun=lambda c, lim: lim == 60.0)
    assert [len(r["reruns"]) for r in one] == [0, 0]
    assert [len(r["reruns"]) for r in three] == [0, 2]
    for a, b in zip(one, three):
        assert np.array_equal(a["evolution"].best_index, b["evolution"].best_index)
    seeds = [r.seed for r, _ in three[1]["reruns"]]
    assert seeds == [search_seed(3, 1), search_seed(3, 2)] and 3 not in seeds
    assert len(set(seeds)) == 2 and search_seed(3, 0) == 3
    for res, c in three[1]["reruns"]:
        assert c["latency"] <= 60.0 and res.limits == {"latency": 60.0}
    with pytest.raises(ConfigError, match="seeds"):
        SearchConfig(seeds=0).check("search")
