"""Predictor (issue 6): encoder, models, transfer, resumable collection, metrics, training."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from apq_lib.config import ConfigError, SpaceConfig, load_profile
from apq_lib.predictor import (
    AccuracyPredictor,
    APQEncoder,
    CorruptSampleError,
    PredictorTransfer,
    QuantAwarePredictor,
    SampleStore,
    TrainSettings,
    collect_samples,
    evaluate_predictor,
    kendall_tau,
    member_settings,
    merge_pairs,
    pairwise_accuracy,
    predictor_metrics,
    rmse,
    sample_config,
    samples_to_match,
    split_holdout,
    summarize_study,
    train_predictor,
    transfer_from_fp32,
)
from apq_lib.predictor.collect import CollectionError, PairSet, parse_shard_arg
from apq_lib.predictor.model import FastPredictor, PredictorEnsemble, is_quant_aware, predict_numpy
from apq_lib.predictor.transfer import TransferError
from apq_lib.supernet.space import SearchSpace, apq_imagenet_space


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny MLPs: one thread is fastest on a shared CPU
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_space():
    return SearchSpace(load_profile("smoke").space)


def _configs(space, n, seed=0):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


# --------------------------------------------------------------------------- encoder
def test_encoder_dims_apq_imagenet():
    enc = APQEncoder(apq_imagenet_space())
    assert (enc.arch_dims, enc.quant_dims, enc.dims) == (520, 252, 772)
    assert len(enc.feature_names()) == 772


def test_encoder_round_trip_and_one_hot():
    space = apq_imagenet_space()
    enc = APQEncoder(space)
    cfgs = _configs(space, 200)
    idx = space.to_index_array(cfgs)
    x = enc.encode_index(idx)
    assert x.shape == (200, 772) and x.dtype == np.float32
    active = (idx[:, :, 0] >= 0).sum(1)
    # per active block: one kernel, one mid and four bit one-hots; off blocks all zero
    np.testing.assert_array_equal(x[:, enc.arch_slice].sum(1), 2 * active)
    np.testing.assert_array_equal(x[:, enc.quant_slice].sum(1), 4 * active)
    np.testing.assert_array_equal(enc.decode_index(x), idx)
    back = enc.decode(x)
    np.testing.assert_array_equal(space.to_index_array(back), idx)
    for c, b in zip(cfgs, back):
        assert c.depths == b.depths
        for i in space.active_blocks(c):
            assert (c.kernels[i], c.mids[i], c.block_bits(i)) == \
                   (b.kernels[i], b.mids[i], b.block_bits(i))
    # the configuration API matches the vectorised one; arch-only encodings decode too
    np.testing.assert_array_equal(enc.encode(cfgs[:5]), x[:5])
    xa = enc.encode_index(idx, quant=False)
    np.testing.assert_array_equal(xa, x[:, :enc.arch_dims])
    np.testing.assert_array_equal(enc.decode_index(xa)[..., :2], idx[..., :2])


def test_encoder_off_blocks_are_zero(small_space):
    enc = APQEncoder(small_space)
    cfg = small_space.smallest(bits=4)
    x = enc.encode(cfg)[0]
    names = np.array(enc.feature_names())
    on = set(names[x > 0])
    off_blocks = [b.name for i, b in enumerate(small_space.blocks)
                  if i not in small_space.active_blocks(cfg)]
    assert off_blocks and not any(n.startswith(ob + ".") for n in on for ob in off_blocks)


def test_encoder_vectorised_10k(small_space):
    enc = APQEncoder(small_space)
    idx = small_space.to_index_array(_configs(small_space, 50))
    big = np.repeat(idx, 200, axis=0)
    x = enc.encode_index(big)
    assert x.shape == (10_000, enc.dims)


def test_fast_predictor_matches_dense():
    space = apq_imagenet_space()
    enc = APQEncoder(space)
    idx = space.to_index_array(_configs(space, 300, seed=3))
    torch.manual_seed(0)
    for model in (QuantAwarePredictor(enc.arch_dims, enc.quant_dims, 32, 3),
                  AccuracyPredictor(enc.arch_dims, 32, 3)):
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.1)
        quant = isinstance(model, QuantAwarePredictor)
        ref = predict_numpy(model, enc.encode_index(idx, quant))
        np.testing.assert_allclose(FastPredictor(model, enc)(idx), ref, rtol=1e-4, atol=1e-5)


def test_ensemble_is_the_mean_of_its_members_on_both_paths():
    space = apq_imagenet_space()
    enc = APQEncoder(space)
    idx = space.to_index_array(_configs(space, 200, seed=4))
    x = enc.encode_index(idx)
    torch.manual_seed(1)
    members = [QuantAwarePredictor(enc.arch_dims, enc.quant_dims, 32, 3) for _ in range(3)]
    for m in members:
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.1)
    ens = PredictorEnsemble(members)
    each = np.stack([predict_numpy(m, x) for m in members])
    np.testing.assert_allclose(predict_numpy(ens, x), each.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(FastPredictor(ens, enc)(idx), each.mean(0), rtol=1e-4,
                               atol=1e-5)
    assert not np.allclose(each[0], each[1])                  # the members differ
    assert ens.config() == {**members[0].config(), "members": 3} and is_quant_aware(ens)
    with pytest.raises(ValueError, match="at least one"):
        PredictorEnsemble([])


def test_ensemble_fits_member_seeds_and_transfers_member_by_member(small_space):
    """Member 0 is the single predictor (same seed, same weights); the others have their
    own seeds; an FP32 ensemble transfers member m to member m."""
    from apq_lib.predictor import fit_fp32_predictor
    enc = APQEncoder(small_space)
    idx = small_space.to_index_array(_configs(small_space, 60, seed=2))
    x = enc.encode_index(idx)
    y = 0.7 + 0.05 * x[:, :enc.arch_dims].mean(1) - 0.1 * x[:, enc.quant_slice][:, ::3].mean(1)
    st = TrainSettings(epochs=2, patience=5, seed=5)
    one = fit_fp32_predictor(x[:, :enc.arch_dims], y, st, 16, 2).model
    ens = fit_fp32_predictor(x[:, :enc.arch_dims], y, st, 16, 2, members=3).model
    assert isinstance(ens, PredictorEnsemble) and len(ens.members) == 3
    w = [m.layers[0].weight for m in ens.members]
    assert torch.equal(w[0], one.layers[0].weight) and not torch.equal(w[0], w[1])
    res = PredictorTransfer(ens, enc.quant_dims).fit(x[:40], y[:40], st)
    assert isinstance(res.model, PredictorEnsemble) and is_quant_aware(res.model)
    single = PredictorTransfer(ens.members[1], enc.quant_dims).fit(
        x[:40], y[:40], member_settings(st, 1)).model
    np.testing.assert_allclose(predict_numpy(res.model.members[1], x[40:]),
                               predict_numpy(single, x[40:]), rtol=1e-6)


# --------------------------------------------------------------------------- metrics
def test_metrics_hand_computed():
    y = [1, 2, 3, 4]
    p = [1, 3, 2, 4]                # 5 concordant, 1 discordant pair
    assert kendall_tau(y, p) == pytest.approx((5 - 1) / 6)
    assert pairwise_accuracy(y, p) == pytest.approx(5 / 6)
    assert pairwise_accuracy(y, [1, 1, 2, 3]) == pytest.approx(5.5 / 6)   # a tie: one half
    assert pairwise_accuracy(y, [4, 3, 2, 1]) == 0.0
    assert pairwise_accuracy([1, 1, 2], [0, 5, 1]) == pytest.approx(0.5)  # tied truth skipped
    assert rmse([1, 2], [2, 4]) == pytest.approx(np.sqrt(2.5))
    m = predictor_metrics(y, y)
    assert m["rmse"] == 0 and m["kendall_tau"] == pytest.approx(1) and m["pairwise_acc"] == 1


# --------------------------------------------------------------------------- models
def test_transfer_loads_every_fp32_weight():
    torch.manual_seed(0)
    fp = AccuracyPredictor(30, hidden=16, n_layers=3)
    for p in fp.parameters():
        torch.nn.init.normal_(p)
    q = transfer_from_fp32(fp, quant_dims=12)
    qs, fs = q.state_dict(), fp.state_dict()
    new = set(qs) - set(fs)
    assert new == {"quant_branch.weight", "quant_branch.bias"}
    for k, v in fs.items():
        assert torch.equal(qs[k], v), k
    assert q.layers[0].weight.data_ptr() != fp.layers[0].weight.data_ptr()   # a copy
    assert torch.count_nonzero(q.quant_branch.weight) == 0                   # fresh branch
    x = torch.rand(8, 42)
    torch.testing.assert_close(q(x), fp(x[:, :30]))    # zero branch: same function as FP32
    q2 = transfer_from_fp32(fp, 12, branch_init="default")
    assert torch.count_nonzero(q2.quant_branch.weight) > 0
    for k, v in fs.items():
        assert torch.equal(q2.state_dict()[k], v)


def test_transfer_rejects_weights_it_cannot_place():
    fp = AccuracyPredictor(30, hidden=16, n_layers=2)
    fp.extra = torch.nn.Linear(2, 2)                 # a weight the quant predictor lacks
    with pytest.raises(TransferError, match="unexpected"):
        transfer_from_fp32(fp, 12)


def _synthetic_accuracy(idx):
    """A smooth accuracy-like function of the configuration (fraction)."""
    on = idx[:, :, 0] >= 0
    low_bits = ((idx[:, :, 2:] == 0) & on[:, :, None]).sum((1, 2))     # 4-bit choices
    return (0.80 + 0.004 * on.sum(1) + 0.002 * np.where(on, idx[:, :, 0], 0).sum(1)
            + 0.001 * np.where(on, idx[:, :, 1], 0).sum(1) - 0.004 * low_bits
            - 0.0002 * low_bits ** 2)


def test_quant_predictor_learns_synthetic_target():
    tiny = SearchSpace(SpaceConfig(stage_widths=[8, 16, 16], stage_strides=[1, 2, 1],
                                   stage_max_depth=[3, 3, 1], depth_choices=[1, 2, 3]))
    enc = APQEncoder(tiny)
    idx = tiny.to_index_array(_configs(tiny, 400, seed=1))
    x, y = enc.encode_index(idx), _synthetic_accuracy(idx)
    tr, te = split_holdout(len(y), 0.2, 0)
    st = TrainSettings(epochs=100, patience=10, batch_size=32, lr=3e-3, seed=0)
    torch.manual_seed(0)
    res = train_predictor(QuantAwarePredictor(enc.arch_dims, enc.quant_dims, 64, 3),
                          x[tr], y[tr], st)
    m = evaluate_predictor(res.model, x[te], y[te])
    assert m["kendall_tau"] > 0.8 and m["pairwise_acc"] > 0.85
    assert m["rmse"] < 0.5 * 100 * y.std()


def test_transfer_fit_and_study_table(small_space):
    enc = APQEncoder(small_space)
    idx = small_space.to_index_array(_configs(small_space, 60, seed=2))
    x = enc.encode_index(idx)
    y = 0.7 + 0.05 * x[:, :enc.arch_dims].mean(1) - 0.1 * x[:, enc.quant_slice][:, ::3].mean(1)
    st = TrainSettings(epochs=3, patience=5, seed=0)
    fp = train_predictor(AccuracyPredictor(enc.arch_dims, 16, 3), x[:, :enc.arch_dims], y,
                         st).model
    res = PredictorTransfer(fp, enc.quant_dims).fit(x[:30], y[:30], st)
    assert isinstance(res.model, QuantAwarePredictor) and res.epochs_run <= 3
    from apq_lib.predictor import sample_efficiency
    df = sample_efficiency(fp, x[:40], y[:40], x[40:], y[40:], [10, 20], [0, 1], st,
                           progress=False)
    assert len(df) == 2 * 2 * 2 and set(df.method) == {"transfer", "scratch"}
    assert set(summarize_study(df).columns) >= {"rmse_mean", "rmse_std", "kendall_tau_mean"}


def test_samples_to_match():
    rows = []
    for n, t, s in [(10, 3.0, 5.0), (20, 2.0, 4.0), (40, 1.5, 2.5)]:
        for seed in (0, 1):
            rows += [{"n_train": n, "seed": seed, "method": "transfer", "rmse": t,
                      "kendall_tau": 0.5, "pairwise_acc": 0.7},
                     {"n_train": n, "seed": seed, "method": "scratch", "rmse": s,
                      "kendall_tau": 0.4, "pairwise_acc": 0.6}]
    out = samples_to_match(pd.DataFrame(rows))
    assert out["transfer_n_needed"] == 20 and out["fraction"] == 0.5
    assert samples_to_match(pd.DataFrame(rows), "kendall_tau")["transfer_n_needed"] == 10


def test_split_holdout_groups():
    groups = np.repeat(np.arange(20), 5)
    tr, te = split_holdout(100, 0.2, 0, groups)
    assert len(tr) + len(te) == 100 and 20 <= len(te) <= 24
    assert not set(groups[tr]) & set(groups[te])
    tr2, te2 = split_holdout(100, 0.2, 0, groups)
    np.testing.assert_array_equal(te, te2)


# --------------------------------------------------------------------------- collection
class _Killed(Exception):
    pass


class FakeEvaluator:
    """Accuracy from the config; raises after ``kill_after`` calls (a simulated kill)."""

    def __init__(self, kill_after=None):
        self.calls, self.kill_after = [], kill_after

    def __call__(self, cfg, i):
        if self.kill_after is not None and len(self.calls) >= self.kill_after:
            raise _Killed(f"killed before sample {i}")
        self.calls.append(i)
        return 50 + sum(cfg.kernels) / 10 + sum(cfg.dw_a) / 100


def _store(d, space, n=24, kind="quant"):
    return SampleStore(d, kind, n, seed=0, space=space, policies_per_arch=3)


def _lines(d):
    out = []
    for f in sorted(d.glob("*_shard*.jsonl")):
        out += [json.loads(line)["i"] for line in f.read_text().splitlines()]
    return out


def test_collection_resumes_without_duplicates(tmp_path, small_space):
    ev = FakeEvaluator(kill_after=7)
    with pytest.raises(_Killed):
        collect_samples(ev, _store(tmp_path, small_space), progress=False)
    assert sorted(_lines(tmp_path)) == list(range(7))
    ev2 = FakeEvaluator()
    done = collect_samples(ev2, _store(tmp_path, small_space), progress=False)
    assert ev2.calls == list(range(7, 24))                  # nothing redone, nothing lost
    assert sorted(_lines(tmp_path)) == list(range(24)) and sorted(done) == list(range(24))
    pairs = merge_pairs(_store(tmp_path, small_space))
    assert len(pairs) == 24 and pairs.index.shape == (24, small_space.n_blocks, 6)
    # same result as one uninterrupted run and as two shards (order-independent samples)
    ref_dir, sh_dir = tmp_path / "ref", tmp_path / "shards"
    collect_samples(FakeEvaluator(), _store(ref_dir, small_space), progress=False)
    for r in (1, 0):
        collect_samples(FakeEvaluator(), _store(sh_dir, small_space), shard=(r, 2), progress=False)
    for d in (ref_dir, sh_dir):
        other = merge_pairs(_store(d, small_space))
        np.testing.assert_array_equal(other.index, pairs.index)
        np.testing.assert_array_equal(other.acc, pairs.acc)
    assert sorted(_lines(sh_dir)) == list(range(24))


def test_collection_samplers(small_space):
    """Blocks of policies_per_arch share one architecture: uniform lowest / middle /
    highest bits first, then mixed policies; corners come first."""
    s = [sample_config(small_space, "quant", 0, i, 5) for i in range(40)]
    assert [x[1].split("+")[1] for x in s[:5]] == ["uniform"] * 3 + ["mixed"] * 2
    assert [x[1].split("+")[0] for x in s[:15:5]] == ["corner"] * 3
    for b in range(8):
        blk = [x for x in s[5 * b:5 * b + 5]]
        a = blk[0][0]
        assert all((c.depths, c.kernels, c.mids) == (a.depths, a.kernels, a.mids)
                   for c, _, _ in blk)
        assert len({g for _, _, g in blk}) == 1
        for c, bits in zip([x[0] for x in blk[:3]], (4, 6, 8)):   # smoke bits [4, 6, 8]
            assert {*c.pw_w, *c.pw_a, *c.dw_w, *c.dw_a} == {bits}
    assert s[0][0].to_dict() == small_space.smallest(4).to_dict()
    assert (s[5][0].kernels, s[5][0].mids) == (small_space.mobilenetv2().kernels,
                                               small_space.mobilenetv2().mids)
    assert s[10][0].mids == small_space.largest().mids
    assert sample_config(small_space, "quant", 0, 4, 5)[0].to_dict() == s[4][0].to_dict()
    f = [sample_config(small_space, "fp32", 0, i, 5) for i in range(3)]
    assert [x[1] for x in f] == ["corner"] * 3


def test_policy_sampler_spans_bits_within_and_between_architectures(small_space):
    from apq_lib.predictor.policies import mean_bits, pair_config
    rows = [pair_config(small_space, "quant", 0, i, 6, 0.25, 0.75) for i in range(6 * 40)]
    idx = small_space.to_index_array([r[0] for r in rows])
    mb, g = mean_bits(small_space, idx), np.array([r[2] for r in rows])
    kinds = [r[1].split("+")[1] for r in rows]
    uni = np.array([k == "uniform" for k in kinds])
    assert sorted(set(mb[uni])) == [4.0, 6.0, 8.0]                # every uniform level
    mixed = ~uni
    # within an architecture the mixed policies differ (per-layer spread) ...
    within = [np.ptp(mb[mixed & (g == k)]) for k in np.unique(g)]
    assert np.mean(np.array(within) > 0) > 0.8
    # ... and their levels differ between architectures (per-architecture level)
    level = np.array([mb[mixed & (g == k)].mean() for k in np.unique(g)])
    assert level.std() > 0.5 and level.min() < 5.5 and level.max() > 6.5
    # per-layer spread 0: a mixed policy is uniform at the architecture's rounded level
    flat = [pair_config(small_space, "quant", 0, i, 6, 0.25, 0.0)[0] for i in range(3, 6)]
    assert all(len({*c.pw_w, *c.dw_a}) == 1 for c in flat)
    # large architectures: deepest everywhere, middle widths from the upper half
    large = [r[0] for r in rows if r[1].startswith("large")]
    assert large and all(c.depths == [max(d) for d in small_space.depth_choices] for c in large)
    # deterministic from (seed, i); another seed gives other draws
    again = [pair_config(small_space, "quant", 0, i, 6, 0.25, 0.75)[0].to_dict()
             for i in range(30, 60)]
    assert again == [r[0].to_dict() for r in rows[30:60]]
    other = [pair_config(small_space, "quant", 1, i, 6, 0.25, 0.75)[0].to_dict()
             for i in range(30, 60)]
    assert other != again
    for r in rows:
        small_space.validate(r[0])


def test_variance_shares_recovers_known_components():
    """Synthetic labels: architecture SD 2, bit effect SD 1, image noise SD 0.5 (the
    halves carry the noise: label = mean of halves, each half with variance 2 σ²)."""
    from apq_lib.predictor import variance_shares
    rng = np.random.default_rng(0)
    G, P = 400, 6
    g = np.repeat(np.arange(G), P)
    arch = rng.normal(0, 2.0, G)[g]
    bits = rng.normal(0, 1.0, G * P)
    common = rng.normal(0, 1.0)                          # shared by every label (same images)
    half_noise = rng.normal(0, 0.5 * np.sqrt(2), (G * P, 2))
    halves = 80 + (arch + bits)[:, None] + half_noise + np.array([common, -common])
    acc = halves.mean(1)
    out = variance_shares(acc, g, halves)
    v = out["variance"]
    assert v["noise"] == pytest.approx(0.25, rel=0.1)
    assert v["bits"] == pytest.approx(1.0, rel=0.1)
    assert v["architecture"] == pytest.approx(4.0, rel=0.15)
    sh = out["shares"]
    assert sum(sh.values()) == pytest.approx(1.0)
    assert sh["noise"] == pytest.approx(0.25 / 5.25, abs=0.02)
    assert out["bit_to_noise_variance"] == pytest.approx(4.0, rel=0.2)
    # a hand-computed case: two architectures x two labels, exact arithmetic
    acc = np.array([1.0, 3.0, 5.0, 7.0])
    halves = np.array([[1.5, 0.5], [3.5, 2.5], [4.5, 5.5], [7.5, 6.5]])
    out = variance_shares(acc, [0, 0, 1, 1], halves)
    # total var 6.6667; within MS (1+1+1+1)/2 = 2; noise var([1, 1, -1, 1]) / 4 = 0.25
    assert out["variance"]["total"] == pytest.approx(20 / 3)
    assert out["variance"]["within_architecture"] == pytest.approx(2.0)
    assert out["variance"]["noise"] == pytest.approx(0.25)
    assert out["variance"]["bits"] == pytest.approx(1.75)
    assert out["variance"]["architecture"] == pytest.approx(20 / 3 - 2)
    with pytest.raises(ValueError, match="two labels"):
        variance_shares([1.0, 2.0, 3.0], [0, 1, 2], np.ones((3, 2)))


def test_coverage_fraction():
    from apq_lib.predictor.policies import coverage_fraction
    lat = np.array([0.1, 0.79, 0.8, 0.9, 2.0])
    assert coverage_fraction(lat, 1.0) == pytest.approx(3 / 5)
    assert coverage_fraction(lat, 1.0, factor=1.0) == pytest.approx(1 / 5)
    assert coverage_fraction(lat, 10.0) == 0.0
    with pytest.raises(ValueError):
        coverage_fraction(lat, 0.0)
    with pytest.raises(ValueError):
        coverage_fraction([], 1.0)


def test_coverage_of_the_sampled_pairs(small_space):
    """The largest corner's W8A8 pair is among the quantized pairs, and the latency
    fraction is computed on the pairs' own policies."""
    from apq_lib.predictor.collect import PairSet
    from apq_lib.predictor.report import coverage, pair_latency
    rows = [sample_config(small_space, "quant", 0, i, 4) for i in range(24)]
    idx = small_space.to_index_array([r[0] for r in rows])
    fidx = small_space.to_index_array([sample_config(small_space, "fp32", 0, i)[0]
                                       for i in range(6)])
    z = np.zeros(24)
    q = PairSet(idx, z, z, z, np.array([r[2] for r in rows]), z.astype(np.int8))
    f = PairSet(fidx, z[:6], z[:6], z[:6], np.arange(6), z[:6].astype(np.int8))
    cov = coverage(small_space, f, q)
    lat = pair_latency(small_space, [r[0] for r in rows])
    ref = pair_latency(small_space, [small_space.mobilenetv2(8)])[0]
    assert cov["reference_ms"] == pytest.approx(ref)
    assert cov["pairs_at_baseline_cost_fraction"] == pytest.approx(np.mean(lat >= 0.8 * ref))
    assert cov["quant_max_latency_ms"] == pytest.approx(cov["largest_ms"])
    assert 0 < cov["pairs_at_baseline_cost_fraction"] < 1


def test_incomplete_merge_is_an_error(tmp_path, small_space):
    collect_samples(FakeEvaluator(), _store(tmp_path, small_space), shard=(0, 2), progress=False)
    with pytest.raises(CollectionError, match="12 of 24"):
        merge_pairs(_store(tmp_path, small_space))


def test_corrupted_sample_line_is_reported(tmp_path, small_space):
    collect_samples(FakeEvaluator(), _store(tmp_path, small_space, n=6), progress=False)
    f = next(tmp_path.glob("quant_shard*.jsonl"))
    lines = f.read_text().splitlines(keepends=True)
    lines[2] = '{"i": 2, "acc": 7\n'                         # garbage in the middle
    f.write_text("".join(lines))
    with pytest.raises(CorruptSampleError, match=rf"{f.name}:3"):
        merge_pairs(_store(tmp_path, small_space, n=6))       # publishing stays strict
    # issue 15: collecting drops a corrupt line anywhere (warning naming it), cuts it out
    # of the file and recomputes that sample (it used to stop with this error)
    ev = FakeEvaluator()
    with pytest.warns(UserWarning, match=rf"{f.name}:3: not valid JSON.*recomputed"):
        collect_samples(ev, _store(tmp_path, small_space, n=6), progress=False)
    assert ev.calls == [2] and sorted(_lines(tmp_path)) == list(range(6))
    assert len(merge_pairs(_store(tmp_path, small_space, n=6))) == 6
    rec = json.loads(lines[1])
    rec["acc"] = 140.0                                       # impossible accuracy
    lines[2] = json.dumps(rec) + "\n"
    f.write_text("".join(lines))
    with pytest.raises(CorruptSampleError, match=rf"{f.name}:3.*accuracy"):
        merge_pairs(_store(tmp_path, small_space, n=6))
    rec = json.loads(lines[1])
    rec["config"]["kernels"][0] = 3 if rec["config"]["kernels"][0] != 3 else 5
    lines[2] = json.dumps(rec) + "\n"                        # edited configuration
    f.write_text("".join(lines))
    with pytest.raises(CorruptSampleError, match=rf"{f.name}:3.*configuration"):
        merge_pairs(_store(tmp_path, small_space, n=6))


def test_torn_last_line_is_recomputed_with_warning(tmp_path, small_space):
    collect_samples(FakeEvaluator(), _store(tmp_path, small_space, n=6), progress=False)
    f = next(tmp_path.glob("quant_shard*.jsonl"))
    text = f.read_text()
    f.write_text(text[: text.rindex("{") + 20])              # killed while writing sample 5
    ev = FakeEvaluator()
    with pytest.warns(UserWarning, match=rf"{f.name}:6: last line is incomplete"):
        collect_samples(ev, _store(tmp_path, small_space, n=6), progress=False)
    assert ev.calls == [5] and sorted(_lines(tmp_path)) == list(range(6))


def test_spec_mismatch_is_an_error(tmp_path, small_space):
    collect_samples(FakeEvaluator(), _store(tmp_path, small_space, n=6), progress=False)
    other = SampleStore(tmp_path, "quant", 6, seed=1, space=small_space, policies_per_arch=3)
    with pytest.raises(CollectionError, match="different spec"):
        collect_samples(FakeEvaluator(), other, progress=False)


def test_shard_arg(monkeypatch):
    assert parse_shard_arg("1/4") == (1, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parse_shard_arg(None) == (1, 2)
    with pytest.raises(SystemExit):
        parse_shard_arg("2/2")


def test_profile_study_sizes_checked():
    with pytest.raises(ConfigError, match="predictor.study_sizes"):
        load_profile("smoke", {"predictor.study_sizes": [100]})
    for p in ("default", "paper_counts", "imagenet"):
        pc = load_profile(p).predictor
        assert len(pc.study_sizes) >= 5 and len(pc.study_seeds) >= 3


def test_pipeline_artifacts_round_trip(tmp_path, monkeypatch):
    from apq_lib.artifacts import ArtifactStore
    from apq_lib.predictor import pipeline as pp
    cfg = load_profile("smoke", {"predictor": {"fp32_pairs": 30, "quant_pairs": 24,
                                               "epochs": 3, "hidden": 16, "workers": 1,
                                               "study_sizes": [8]}})
    monkeypatch.setattr(pp, "make_evaluator", lambda *a, **k: FakeEvaluator())
    store = ArtifactStore(tmp_path)
    arts = {k: pp.collect_pairs(cfg, k, None, "supernetkey", None, store, progress=False)
            for k in ("fp32", "quant")}
    pairs = {k: pp.load_pairs(a) for k, a in arts.items()}
    assert len(pairs["fp32"]) == 30 and len(pairs["quant"]) == 24
    # cached: a second call measures nothing
    monkeypatch.setattr(pp, "make_evaluator", lambda *a, **k: FakeEvaluator(kill_after=0))
    assert pp.collect_pairs(cfg, "fp32", None, "supernetkey", None, store).key == \
        arts["fp32"].key
    space = SearchSpace(cfg.space)
    enc = APQEncoder(space)
    trained = pp.train_predictors(cfg, pairs["fp32"], pairs["quant"], enc)
    assert {"fp32", "transfer", "scratch", "fp32_on_quant"} <= set(trained["metrics"])
    art = pp.save_predictors(cfg, trained, enc, arts["fp32"], arts["quant"], store)
    assert art.key == pp.predictor_artifact_key(cfg, "supernetkey")
    model = pp.load_predictor(art)
    assert isinstance(model, PredictorEnsemble) and is_quant_aware(model)
    assert len(model.members) == cfg.predictor.ensemble == 2
    assert all(isinstance(m, QuantAwarePredictor) for m in model.members)
    assert isinstance(pp.load_predictor(art, "fp32"), PredictorEnsemble)
    assert not is_quant_aware(pp.load_predictor(art, "fp32"))
    idx = pairs["quant"].index
    oracle = pp.AccuracyOracle(model, space)
    expect = 100 * predict_numpy(trained["transfer"].model, enc.encode_index(idx))
    np.testing.assert_allclose(oracle.predict_index(idx), expect, rtol=1e-5)
    cfgs = space.from_index_array(idx[:3])
    np.testing.assert_allclose(oracle.predict(cfgs), expect[:3], rtol=1e-5)


def test_collection_config_eval_images():
    from apq_lib.predictor.pipeline import collection_config
    cfg = load_profile("smoke", {"predictor.quant_eval_images": 200})
    assert collection_config(cfg, "quant")["eval_images"] == 200
    assert collection_config(cfg, "fp32")["eval_images"] == cfg.predictor.eval_images
    # the key holds the declared fields by section (issue 13: keys derived from the fields)
    assert "finetune_steps" in collection_config(cfg, "quant")["predictor"]
    assert "finetune_steps" not in collection_config(cfg, "fp32")["predictor"]


# --------------------------------------------------------------------------- label noise
def test_label_record_round_trip_and_halves():
    from apq_lib.predictor.evaluators import label_record, unpack_correct
    c = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1], bool)         # 9 images, 6 correct
    rec = label_record(c)
    assert rec["n_images"] == 9 and rec["n_correct"] == 6
    assert rec["acc"] == pytest.approx(100 * 6 / 9)
    # even images 0,2,4,6,8 -> 1,1,0,1,1 ; odd images 1,3,5,7 -> 0,1,0,1
    assert rec["acc_half"] == pytest.approx([80.0, 50.0])
    np.testing.assert_array_equal(unpack_correct(rec["correct"], 9), c)
    json.dumps(rec)                                        # storable as a JSONL line


def test_correct_mask_matches_evaluate():
    from apq_lib.predictor.evaluators import correct_mask
    from apq_lib.supernet.metrics import evaluate
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(7, 12), torch.randint(0, 3, (7,))) for _ in range(3)]
    m = correct_mask(model, batches)
    assert m.shape == (21,) and m.dtype == bool
    assert 100 * m.mean() == pytest.approx(evaluate(model, batches))
    ref = torch.cat([(model(x).argmax(1) == y) for x, y in batches]).numpy()
    np.testing.assert_array_equal(m, ref)
    with pytest.raises(ValueError, match="no images"):
        correct_mask(model, [])


def test_label_noise_hand_computed():
    from apq_lib.predictor import label_noise
    rng = np.random.default_rng(0)
    base = rng.random(4000) < 0.85
    c = np.stack([base, base, ~base])                     # two identical labels, one opposite
    ln = label_noise(c, max_pairs=500, seed=1)
    p = base.mean()
    np.testing.assert_allclose(ln["se_binomial"], 100 * np.sqrt(p * (1 - p) / 4000))
    # split-half over one split by hand: sqrt(mean((a-b)^2))/2
    from apq_lib.runtime import stream_rng
    one = label_noise(c, max_pairs=10, n_splits=1, seed=1)
    h = stream_rng(1, "bootstrap", "split half").permutation(4000) < 2000   # its stream
    a, b = 100 * c[:, h].mean(1), 100 * c[:, ~h].mean(1)
    assert one["se_split_half"] == pytest.approx(np.sqrt(np.mean((a - b) ** 2)) / 2)
    # averaged over random splits it estimates the binomial SE (exactly, in expectation)
    assert ln["se_split_half"] == pytest.approx(ln["se_binomial_median"], rel=0.1)
    # identical labels have zero paired noise: a third of the random pairs are (0, 1)/(1, 0)
    same = label_noise(np.stack([base, base]), max_pairs=50)
    assert same["se_paired_median"] == 0.0
    # independent labels: the paired SE / sqrt 2 is close to the binomial SE
    ind = rng.random((30, 4000)) < 0.85
    li = label_noise(ind, seed=0)
    assert li["se_paired_median"] == pytest.approx(li["se_binomial_median"], rel=0.1)
    assert li["se_split_half"] == pytest.approx(li["se_binomial_median"], rel=0.1)


def test_pairset_noise_fields_round_trip(tmp_path, small_space):
    from apq_lib.predictor.evaluators import label_record

    class CorrectEvaluator:
        def __call__(self, cfg, i):
            r = np.random.default_rng(i)
            return label_record(r.random(37) < 0.8)

    store = _store(tmp_path / "q", small_space, n=6)
    collect_samples(CorrectEvaluator(), store, progress=False)
    pairs = merge_pairs(store)
    assert pairs.has_noise
    cm = pairs.correct_matrix()
    assert cm.shape == (6, 37)
    np.testing.assert_allclose(100 * cm.mean(1), pairs.acc)
    np.testing.assert_array_equal(cm.sum(1), pairs.n_correct)
    pairs.save(tmp_path / "p.npz")
    back = PairSet.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.correct_matrix(), cm)
    np.testing.assert_array_equal(back.subset([1, 3]).correct_matrix(), cm[[1, 3]])
    # a collection from before the noise fields loads, but says how to get them
    old = tmp_path / "old.npz"
    np.savez(old, **{k: getattr(pairs, k) for k in PairSet.FIELDS})
    legacy = PairSet.load(old)
    assert not legacy.has_noise and len(legacy.subset([0])) == 1
    with pytest.raises(CollectionError, match="force=True"):
        legacy.correct_matrix()


def test_unpaired_labels_are_an_error(tmp_path, small_space):
    from apq_lib.predictor.evaluators import label_record
    store = _store(tmp_path / "q", small_space, n=4)
    collect_samples(lambda cfg, i: label_record(np.ones(10 + (i == 2), bool)), store,
                    progress=False)
    with pytest.raises(CollectionError, match="not paired"):
        merge_pairs(store)


# --------------------------------------------------------------------------- held-out CV
def test_grouped_kfold_holds_out_each_group_once():
    from apq_lib.predictor import grouped_kfold
    groups = np.array([5, 5, 5, 1, 2, 2, 9, 9, 9, 9, 3, 4, 6, 7, 7])
    folds = grouped_kfold(groups, 3, seed=0)
    held = np.concatenate([te for _, te in folds])
    np.testing.assert_array_equal(np.sort(held), np.arange(len(groups)))   # each pair once
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])                         # no shared arch
        assert len(tr) + len(te) == len(groups)
    sizes = [len(te) for _, te in folds]
    assert max(sizes) - min(sizes) <= 4                                      # the largest group
    assert [t.tolist() for _, t in grouped_kfold(groups, 3, 0)] == [t.tolist() for _, t in folds]
    with pytest.raises(ValueError, match="cv_folds"):
        grouped_kfold(groups, 20, 0)


def test_group_bootstrap_resamples_whole_groups():
    from apq_lib.predictor.metrics import _group_resamples
    groups = np.array([0, 0, 0, 1, 2, 2])
    for s in _group_resamples(groups, 50, seed=3):
        g, cnt = np.unique(groups[s], return_counts=True)
        size = {0: 3, 1: 1, 2: 2}
        assert all(c % size[k] == 0 for k, c in zip(g, cnt))
        assert sum(cnt[i] // size[k] for i, k in enumerate(g)) == 3          # 3 groups drawn


def test_group_bootstrap_ci_and_verdicts():
    from apq_lib.predictor import group_bootstrap_ci, kendall_tau
    from apq_lib.stats import verdict
    rng = np.random.default_rng(0)
    y = rng.normal(size=120)
    groups = np.repeat(np.arange(40), 3)
    preds = {"good": y + 0.1 * rng.normal(size=120), "bad": rng.normal(size=120),
             "same": None}
    preds["same"] = preds["good"].copy()
    out = group_bootstrap_ci(y, preds, groups, kendall_tau, "good", n_resamples=1000, seed=1)
    g = out["good"]
    assert g["value"] == pytest.approx(kendall_tau(y, preds["good"]))
    assert g["ci_low"] <= g["value"] <= g["ci_high"] <= 1
    assert out["bad"]["verdict"] == "good better" and out["bad"]["delta_ci_low"] > 0
    assert out["same"]["delta_ci_low"] == out["same"]["delta_ci_high"] == 0
    assert out["same"]["verdict"] == "not comparable"
    again = group_bootstrap_ci(y, preds, groups, kendall_tau, "good", n_resamples=1000, seed=1)
    assert repr(again) == repr(out)                             # seeded (NaN p-values too)
    assert verdict(-0.1, 0.2) == "inconclusive"
    assert verdict(-0.3, -0.1, who="transfer") == "transfer worse"
    with pytest.raises(KeyError, match="reference"):
        group_bootstrap_ci(y, preds, groups, reference="nope", n_resamples=10)


def test_linear_controls(small_space):
    from apq_lib.predictor import bit_features, fit_linear, index_macs
    from apq_lib.supernet.metrics import subnet_macs
    cfgs = _configs(small_space, 20, seed=4)
    idx = small_space.to_index_array(cfgs)
    np.testing.assert_array_equal(index_macs(small_space, idx),
                                  [subnet_macs(small_space, c) for c in cfgs])
    bf = bit_features(small_space, idx)
    c0 = cfgs[0]
    on = set(small_space.active_blocks(c0))
    B = small_space.n_blocks
    expect = [[getattr(c0, f)[i] if i in on else 0 for f in ("pw_w", "pw_a", "dw_w", "dw_a")]
              for i in range(B)]
    np.testing.assert_array_equal(bf[0], np.ravel(expect))
    # no ridge: the same fit as numpy's least squares with an intercept
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    yv = x @ [1.0, -2.0, 0.5] + 3 + 0.01 * rng.normal(size=50)
    a = np.column_stack([x, np.ones(50)])
    ref = a @ np.linalg.lstsq(a, yv, rcond=None)[0]
    np.testing.assert_allclose(fit_linear(x, yv, ridge=0.0)(x), ref, atol=1e-9)


def _quant_groups(space):
    """36 quantized pairs of 12 architectures (3 policies each) with synthetic labels: the
    encoder, index arrays, labels, architecture groups and an untrained FP32 predictor."""
    enc = APQEncoder(space)
    rows = [sample_config(space, "quant", 0, i, 3) for i in range(36)]
    cfgs, groups = [r[0] for r in rows], np.array([r[2] for r in rows])
    idx = space.to_index_array(cfgs)
    return enc, idx, 100 * _synthetic_accuracy(idx), groups, AccuracyPredictor(
        enc.arch_dims, 16, 2)


def test_crossval_controls_predicts_every_pair(small_space):
    from apq_lib.predictor import (
        METHODS,
        controls_table,
        crossval_controls,
        grouped_kfold,
    )
    enc, idx, y, groups, fp = _quant_groups(small_space)
    st = TrainSettings(epochs=3, patience=2)
    folds = grouped_kfold(groups, 3, 0)
    cv = crossval_controls(fp, enc.encode_index(idx), y, idx, small_space, folds, st, 16, 2,
                           progress=False)
    assert {f"pred_{m}" for m in METHODS} <= set(cv.columns)
    assert cv.filter(like="pred_").notna().all().all()
    for f, (_, te) in enumerate(folds):
        assert (cv["fold"].to_numpy()[te] == f).all()
    tab = controls_table(cv, groups, n_resamples=1000)
    assert list(tab["method"]) == list(METHODS)
    assert tab.set_index("method").loc["transfer", "verdict"] == "reference"
    assert set(tab["verdict"]) <= {"reference", "transfer better", "transfer worse",
                                   "inconclusive", "not comparable"}
    assert (tab["tau_ci_low"] <= tab["kendall_tau"] + 1e-12).all()


def test_crossval_controls_seeds_per_fold(small_space):
    """cv_seeds fits per fold: per-seed columns, the mean, seed-aware intervals and
    Holm-corrected verdicts; a method that predicts the labels wins."""
    from apq_lib.predictor import controls_table, crossval_controls, grouped_kfold
    enc, idx, y, groups, fp = _quant_groups(small_space)
    folds = grouped_kfold(groups, 3, 0)
    cv = crossval_controls(fp, enc.encode_index(idx), y, idx, small_space, folds,
                           TrainSettings(epochs=3, patience=2), 16, 2, progress=False, seeds=3)
    for m in ("transfer", "scratch"):
        cols = [f"pred_{m}_seed{k}" for k in range(3)]
        assert set(cols) <= set(cv.columns)
        np.testing.assert_allclose(cv[f"pred_{m}"], cv[cols].mean(axis=1))
        assert not np.allclose(cv[cols[0]], cv[cols[1]])          # seeds differ
    assert "pred_fp32_predictor_seed0" not in cv.columns
    # an oracle column that equals the labels beats every control (Holm, who=transfer)
    cv2 = cv.copy()
    for k in range(3):
        cv2[f"pred_transfer_seed{k}"] = y + 1e-3 * k
    cv2["pred_transfer"] = y
    tab = controls_table(cv2, groups, n_resamples=1000).set_index("method")
    assert (tab.loc[["transfer", "scratch"], "training_seeds"] == 3).all()
    assert tab.loc["fp32_predictor", "training_seeds"] == 1
    assert tab.loc["transfer", "kendall_tau"] == pytest.approx(1.0)
    assert tab.loc["scratch", "verdict"] == "transfer better"
    assert tab.loc["scratch", "ci_low"] > 0 and tab.loc["scratch", "p_value"] < 0.05
    assert set(tab["verdict"]) <= {"reference", "transfer better", "transfer worse",
                                   "inconclusive", "not comparable"}
    # the seed draw is part of the interval: the same seed three times gives a narrower one
    cv3 = cv.copy()
    for k in range(3):
        cv3[f"pred_scratch_seed{k}"] = cv["pred_scratch_seed0"]
    t1 = controls_table(cv, groups, n_resamples=1000).set_index("method")
    t3 = controls_table(cv3, groups, n_resamples=1000).set_index("method")
    assert t3.loc["scratch", "tau_seed_sd"] == 0 < t1.loc["scratch", "tau_seed_sd"]
    with pytest.raises(ValueError, match="seeds"):
        crossval_controls(fp, enc.encode_index(idx), y, idx, small_space, folds,
                          TrainSettings(epochs=1), 16, 2, progress=False, seeds=0)


def test_early_stopping_split_takes_whole_architectures():
    from apq_lib.predictor.train import _early_stopping_split
    groups = np.repeat(np.arange(10), 5)
    vi, ti = _early_stopping_split(50, 0.2, np.random.default_rng(0), groups)
    assert len(vi) == 10 and len(vi) + len(ti) == 50
    assert not set(groups[vi]) & set(groups[ti])            # no architecture on both sides
    vi2, _ = _early_stopping_split(50, 0.2, np.random.default_rng(0), None)
    assert len(vi2) == 10
    vi3, ti3 = _early_stopping_split(6, 0.9, np.random.default_rng(0), [0, 0, 0, 1, 1, 1])
    assert len(ti3) == 3 and len(vi3) == 3                   # one group always trains
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    r = train_predictor(AccuracyPredictor(4, 8, 1), x, x[:, 0] * 0.1 + 0.5,
                        TrainSettings(epochs=2, patience=1), groups=groups)
    assert r.epochs_run == 2


def test_label_offset_t_interval():
    from scipy import stats

    from apq_lib.predictor import label_offset
    lab = np.array([85.0, 86.0, 84.5, 87.0, 85.5])
    real = lab + np.array([1.0, 0.5, 1.5, 0.8, 1.2])
    out = label_offset(lab, real)
    d = real - lab
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert out["mean"] == pytest.approx(d.mean()) and out["n"] == 5
    assert out["ci"] == pytest.approx([lo, hi])
    assert out["spearman"] == pytest.approx(stats.spearmanr(lab, real).statistic)
    with pytest.raises(ValueError, match="no realised"):
        label_offset([], [])


def test_profile_predictor_cv_fields_checked():
    with pytest.raises(ConfigError, match="cv_folds"):
        load_profile("smoke", {"predictor.cv_folds": 1})
    with pytest.raises(ConfigError, match="bootstrap_resamples"):
        load_profile("smoke", {"predictor.bootstrap_resamples": 100})


def test_evaluators_record_paired_correctness(small_space):
    """FP32 and QAT evaluators score the same images; their records carry the correctness
    that reproduces the accuracy, and the collection stores them as they are."""
    from apq_lib.predictor.evaluators import FP32Evaluator, QATEvaluator, unpack_correct
    from apq_lib.supernet.metrics import evaluate, recalibrate_bn
    from apq_lib.supernet.network import APQSupernet
    torch.manual_seed(0)
    net = APQSupernet(small_space).eval()
    g = torch.Generator().manual_seed(1)
    val = [(torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
           for _ in range(2)]
    recal = [(torch.randn(8, 1, 32, 32, generator=g), torch.zeros(8, dtype=torch.long))]
    cfg = small_space.sample(np.random.default_rng(0))
    rec = FP32Evaluator(net, recal, val)(cfg, 0)
    sub = recalibrate_bn(net.export(cfg), recal)
    assert rec["acc"] == pytest.approx(evaluate(sub, val))
    assert rec["n_images"] == 16
    assert 100 * unpack_correct(rec["correct"], 16).mean() == pytest.approx(rec["acc"])
    q = QATEvaluator(net, None, recal, val, steps=0)(cfg, 0)     # no finetune
    assert q["n_images"] == 16 and q["loss_first"] is None
    qsub = recalibrate_bn(net.export(cfg, quantized=True), recal)
    assert q["acc"] == pytest.approx(evaluate(qsub, val))
