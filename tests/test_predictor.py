"""Predictor (issue 6): encoder, models, transfer, resumable collection, metrics, training."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from apq_lib.config import ConfigError, SpaceConfig, load_profile
from apq_lib.predictor import (AccuracyPredictor, APQEncoder, CorruptSampleError,
                               PredictorTransfer, QuantAwarePredictor, SampleStore,
                               collect_samples,
                               TrainSettings, evaluate_predictor, kendall_tau,
                               merge_pairs, pairwise_accuracy, predictor_metrics, rmse,
                               sample_config, samples_to_match, split_holdout,
                               summarize_study, train_predictor, transfer_from_fp32)
from apq_lib.predictor.model import FastPredictor, predict_numpy
from apq_lib.predictor.transfer import TransferError
from apq_lib.predictor.collect import CollectionError, parse_shard_arg

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
    s = [sample_config(small_space, "quant", 0, i, 3) for i in range(12)]
    assert [x[1] for x in s] == ["random"] * 3 + ["arch_policies"] * 3 + ["random"] * 3 + \
        ["arch_policies"] * 3
    a, b = s[3][0], s[4][0]                # the second sampler shares one architecture
    assert (a.depths, a.kernels, a.mids) == (b.depths, b.kernels, b.mids) and s[3][2] == s[4][2]
    assert (a.pw_w, a.dw_a) != (b.pw_w, b.dw_a)
    assert sample_config(small_space, "quant", 0, 4, 3)[0].to_dict() == b.to_dict()


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
    for p in ("default", "paper"):
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
    assert isinstance(model, QuantAwarePredictor)
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
