"""Fixed-architecture helpers: the per-layer cost table against APQ's LUT sum, k-means
weights (≤ 2^b values per layer, also after finetuning), channel pruning of the real model."""
import pytest
import torch

from apq_lib.baselines.fixed import (
    LayerCostTable,
    PolicyEvaluator,
    build_fixed_model,
    fixed_bits,
    is_fixed,
    quantize_with_policy,
    to_float,
    uniform_policy,
)
from apq_lib.config import load_profile
from apq_lib.hardware import get_simulator, subnet_cost
from apq_lib.pruning import find_mbconv_sites, middle_channels, prune_channels
from apq_lib.supernet import APQSupernet, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def space():
    return SearchSpace(load_profile("smoke").space)


@pytest.fixture(scope="module")
def mbv2(space):
    return build_fixed_model(space, seed=0).eval()


def _batches(n=2, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 32, 32, generator=g), torch.randint(0, 10, (bs,), generator=g))
            for _ in range(n)]


def test_cost_table_matches_lut_sum(space, mbv2):
    tab = LayerCostTable(mbv2, (1, 32, 32), ["bitfusion"], range(2, 9))
    assert [n for n in tab.names if is_fixed(n)] == ["stem", "head.dw", "head.project", "tail",
                                                      "classifier"]
    sim = get_simulator("bitfusion")
    for b in (8, 4):
        got = tab.summary(tab.bits_of(uniform_policy(tab.names, b, b)))
        ref = subnet_cost(space, space.mobilenetv2(b), sim.cost)
        assert got["latency_ms"] == pytest.approx(ref["latency"], rel=1e-9)
        assert got["energy_mj"] == pytest.approx(ref["energy"], rel=1e-9)
    bits = [(8, 8)] * len(tab.names)
    assert tab.cost("bitops", bits) == pytest.approx(64 * tab.macs.sum())
    assert tab.fn("size")(bits) == pytest.approx(8 * tab.params.sum())
    assert uniform_policy(tab.names, 4, 4)["stem"] == fixed_bits("stem") == (8, 32)


def test_kmeans_keeps_at_most_2b_values(mbv2):
    names = [n for n, m in mbv2.named_modules() if isinstance(m, (torch.nn.Conv2d,
                                                                  torch.nn.Linear))]
    pol = {n: (8, 32) if is_fixed(n) else (2 + i % 3, 32) for i, n in enumerate(names)}
    train = iter(_batches(3))
    ev = PolicyEvaluator(mbv2, names, None, train, _batches(1), steps=2,
                         weight_quantizer="kmeans")
    q, acc = ev.quantized(pol)
    assert 0 <= acc <= 100
    mods = dict(q.named_modules())
    for n, (w, _) in pol.items():
        vals = torch.unique(mods[n].w_quant(mods[n].weight).detach())
        assert vals.numel() <= 2 ** w, (n, w, vals.numel())


def test_linear_policy_sets_bits(mbv2):
    names = [n for n, m in mbv2.named_modules() if isinstance(m, (torch.nn.Conv2d,
                                                                  torch.nn.Linear))]
    q = quantize_with_policy(mbv2, uniform_policy(names, 4, 6), _batches(1))
    mods = dict(q.named_modules())
    assert (mods["blocks.0.dw"].w_bits, mods["blocks.0.dw"].a_bits) == (4, 6)
    assert (mods["stem"].w_bits, mods["stem"].a_bits) == (8, 32)
    assert q(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_channel_pruning_on_exported_subnet(space):
    torch.manual_seed(0)
    sub = APQSupernet(space).get_active_subnet().eval()     # supernet's own QConv2d layers
    x = torch.randn(2, 1, 32, 32)
    n_sites = len(find_mbconv_sites(sub))
    assert n_sites == sum(space.largest().depths)           # every searchable block
    before = middle_channels(sub)
    after = prune_channels(sub, 0.5, step=8)
    assert all(a < b for a, b in zip(after, before)) and all(a % 8 == 0 for a in after)
    blk = sub.blocks[0]
    assert blk.dw.weight.shape[0] == blk.dw.groups == after[0] == blk.mid
    assert type(blk.dw).__name__ == "QConv2d"                # quantizers kept
    assert sub(x).shape == (2, 10)
    flt = to_float(sub)
    assert all(type(m) in (torch.nn.Conv2d, torch.nn.Linear) for m in flt.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    torch.testing.assert_close(flt(x), sub(x))


def test_final_models_do_not_depend_on_run_order(mbv2):
    """Every policy's finetune draws its own batches (keyed by the policy and the finetune
    seed, as the suite's ``train_batches`` does), so a baseline row is the same whether it
    runs first or after others; a second finetune seed is another draw."""
    names = [n for n, m in mbv2.named_modules() if isinstance(m, (torch.nn.Conv2d,
                                                                  torch.nn.Linear))]

    def train(key):                         # batches seeded from the key only
        import zlib
        return iter(_batches(3, seed=zlib.crc32(key.encode())))

    def evaluator():
        return PolicyEvaluator(mbv2, names, _batches(1, seed=7), train, _batches(2, seed=9),
                               steps=3, recal_batches=_batches(1, seed=8), seed=0)

    a, b = uniform_policy(names, 4, 4), uniform_policy(names, 8, 8)
    first = evaluator().realized_seeds(a, 2)
    ev = evaluator()
    ev.realized(b)                          # another baseline ran before
    after = ev.realized_seeds(a, 2)
    x = torch.cat([x for x, _ in _batches(2, seed=9)])
    with torch.no_grad():
        for r1, r2 in zip(first, after):
            assert torch.equal(r1.model.eval()(x), r2.model.eval()(x))
            assert (r1.correct == r2.correct).all() and r1.test_acc == r2.test_acc
        assert not torch.equal(first[0].model(x), first[1].model(x))   # seed 1: another draw
