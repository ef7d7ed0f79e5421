"""Multi-stage pipeline: quantization-unaware FP32 search, then pruning, HAQ, finetune."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from apq_lib.baselines.cost import CostMeter
from apq_lib.baselines.multistage import MultiStagePipeline, at_uniform_bits, fp32_arch_search
from apq_lib.config import load_profile
from apq_lib.hardware import SpaceCostTable, build_lut, get_simulator
from apq_lib.search.genome import IndexOps
from apq_lib.supernet import APQSupernet, SearchSpace, SubnetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def space():
    return SearchSpace(load_profile("smoke").space)


@pytest.fixture(scope="module")
def lut(space):
    return SpaceCostTable.from_lut(space, build_lut(space, get_simulator("bitfusion")),
                                   "bitfusion")


def test_at_uniform_bits(space):
    idx = IndexOps(space).sample(np.random.default_rng(0), 5)
    out = at_uniform_bits(space, idx)
    act = idx[..., 0] >= 0
    assert (out[..., 2:][act] == space.bit_choices.index(8)).all()
    assert (out[~act] == -1).all() and (out[..., :2] == idx[..., :2]).all()


def test_fp32_search_meets_w8_limit(space, lut):
    lat = lambda idx: lut.lookup(idx)[0]
    big = float(lat(space.to_index_array([space.largest(8)]))[0])
    small = float(lat(space.to_index_array([space.smallest(8)]))[0])
    limit = small + 0.3 * (big - small)
    score = lambda idx: (idx[..., 1].clip(0) + idx[..., 0].clip(0)).sum(axis=1).astype(float)
    res = fp32_arch_search(space, score, lat, limit, seed=0, population=12, parents=4,
                           mutants=6, crossovers=6, generations=3)
    cfg8 = SubnetConfig.from_dict(res.best_config)
    assert float(lat(at_uniform_bits(space, space.to_index_array([cfg8])))[0]) <= limit


def test_pipeline_runs_and_times_every_stage(space, lut):
    torch.manual_seed(0)
    net = APQSupernet(space).eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
               for _ in range(2)]

    def cyc():
        while True:
            yield from batches

    def export(arch):
        net.set_active_subnet(SubnetConfig.from_dict(arch))
        return net.get_active_subnet()

    s = SimpleNamespace(multistage_arch_slack=1.3, prune_steps=2, channel_prune_ratio=0.25,
                        prune_lr=0.01, finetune_lr=1e-3, haq_finetune_steps=1, haq_bits=[2, 8],
                        haq_episodes=2, haq_warmup=1, haq_final_sigma=None)
    lat = {"latency": lambda idx: lut.lookup(idx)[0]}
    target = float(lut.lookup(space.to_index_array([space.largest(8)]))[0][0])
    meter = CostMeter("cpu")
    pipe = MultiStagePipeline(space, lambda idx: -lut.lookup(idx)[0], lat, export,
                              {"calib": batches[:1], "train": cyc(), "reward": batches[:1],
                               "final": batches[1:]}, s, (1, 32, 32),
                              SimpleNamespace(population=8, parents=2, mutants=4, crossovers=4,
                                              mutation_prob=0.1, generations=1, max_tries=20,
                                              unique_parents=True),
                              meter=meter)
    r = pipe.run("latency", 0.8 * target)
    assert set(r.stage_seconds) == {"arch_search", "channel_pruning", "haq", "finetune"}
    assert all(v >= 0 for v in r.stage_seconds.values())
    assert all(a < b for a, b in zip(r.widths_after, r.widths_before))
    assert r.met and r.costs["latency_ms"] <= 0.8 * target
    assert len(meter.records) == 4 and 0 <= r.accuracy <= 100
