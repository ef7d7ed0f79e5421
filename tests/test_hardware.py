"""apq_lib.hardware: BitOps/MACs, BitFusion and BISMO invariants, CPU timing, LUT lookups."""
import math

import numpy as np
import pytest
import torch.nn as nn
import torchvision

from apq_lib.artifacts import ArtifactStore
from apq_lib.config import load_profile
from apq_lib.hardware import (
    BismoSim,
    BitFusionSim,
    LayerSpec,
    bismo_layer_cost,
    bitfusion_layer_cost,
    build_space_lut,
    count_bitops,
    cpu_layer_latency,
    flop_counter_macs,
    get_simulator,
    layer_table,
    load_lut,
    mbconv_layers,
    model_cost,
    model_size_bits,
    parse_key,
    subnet_cost,
    subnet_layers,
)
from apq_lib.supernet.space import SearchSpace

SIMS = ("bitfusion", "bismo_edge", "bismo_cloud")
SHAPES = {                                       # 1x1, depthwise s1/s2/k7, strided 3x3, FC
    "pw": LayerSpec(96, 576, 14, 1, 1, 0, 1),
    "dw3": LayerSpec(96, 96, 112, 3, 1, 1, 96),
    "dw5s2": LayerSpec(144, 144, 56, 5, 2, 2, 144),
    "dw7": LayerSpec(960, 960, 7, 7, 1, 3, 960),
    "conv_s2": LayerSpec(32, 64, 56, 3, 2, 1, 1),
    "fc": LayerSpec.fc(1280, 1000),
}


# ------------------------------------------------------------------ BitOps and MACs
@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_bitops_w8a8_is_64x_flopcounter_macs(arch):
    model = getattr(torchvision.models, arch)(weights=None)
    bitops = count_bitops(model, (3, 224, 224))
    ref = flop_counter_macs(model, (3, 224, 224))
    assert ref > 0
    assert bitops == pytest.approx(64 * ref, rel=5e-3)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(16 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(self.down(self.dw(self.conv(x))).flatten(1))


def test_per_layer_macs_by_hand():
    df = layer_table(_Tiny(), (3, 32, 32)).set_index("name")
    assert df.loc["conv", "macs"] == 8 * 32 * 32 * 3 * 3 * 3          # out elems x C_in x k^2
    assert df.loc["dw", "macs"] == 8 * 32 * 32 * 1 * 3 * 3            # one input ch per group
    assert df.loc["down", "macs"] == 16 * 16 * 16 * 8 * 3 * 3         # stride 2: 16x16 out
    assert df.loc["fc", "macs"] == 4096 * 10
    assert df.loc["down", "key"] == "(8, 16, 32, 3, 2, 1, 1)-W8A8"
    assert df.loc["fc", "key"] == "(4096, 10, 1, 1, 1, 0, 1)-W8A8"
    for name, spec in [("conv", LayerSpec(3, 8, 32, 3, 1, 1, 1)),
                       ("dw", LayerSpec(8, 8, 32, 3, 1, 1, 8)),
                       ("down", LayerSpec(8, 16, 32, 3, 2, 1, 1)), ("fc", LayerSpec.fc(4096, 10))]:
        assert spec.macs == df.loc[name, "macs"]


def test_policy_bitops_and_size():
    m = _Tiny()
    policy = {"conv": (4, 8), "dw": (2, 6), "fc": (8, 4)}
    df = layer_table(m, (3, 32, 32))
    macs = dict(zip(df["name"], df["macs"]))
    want = macs["conv"] * 32 + macs["dw"] * 12 + macs["down"] * 64 + macs["fc"] * 32
    assert count_bitops(m, (3, 32, 32), policy) == want
    size = (m.conv.weight.numel() * 4 + 8 * 32 + m.dw.weight.numel() * 2
            + m.down.weight.numel() * 8 + m.fc.weight.numel() * 8 + 10 * 32)
    assert model_size_bits(m, policy) == size
    with pytest.raises(ValueError, match="nope"):
        count_bitops(m, (3, 32, 32), {"nope": (8, 8)})
    with pytest.raises(ValueError, match="w_bits"):
        count_bitops(m, (3, 32, 32), {"conv": (0, 8)})


def test_keys_and_mbconv_layers():
    spec, w, a = parse_key("(96, 456, 14, 1, 1, 0, 1)-W4A4")
    assert (spec.fields(), w, a) == ((96, 456, 14, 1, 1, 0, 1), 4, 4)
    assert spec.key(w, a) == "(96, 456, 14, 1, 1, 0, 1)-W4A4"
    pw1, dw, pw2 = mbconv_layers(24, 144, 40, 56, 5, 2)
    assert pw1.fields() == (24, 144, 56, 1, 1, 0, 1)
    assert dw.fields() == (144, 144, 56, 5, 2, 2, 144) and dw.is_depthwise
    assert pw2.fields() == (144, 40, 28, 1, 1, 0, 1)


# ------------------------------------------------------------------ simulators
# Monotone in bits is a BISMO invariant only: the official BitFusion simulator is not
# monotone (weights padded to N·pf rows; see test_hardware_bitfusion.py), so the old
# BitFusion cases of this test are replaced by the reference-grid tests there.
@pytest.mark.parametrize("sim_name", ["bismo_edge", "bismo_cloud"])
def test_cost_never_decreases_with_bits(sim_name):
    sim = get_simulator(sim_name)
    for spec in SHAPES.values():
        c = {(w, a): sim.cost(spec, w, a) for w in range(1, 9) for a in range(1, 9)}
        for (w, a), v in c.items():
            for nxt in ((w + 1, a), (w, a + 1)):
                if nxt in c:
                    for m in ("latency", "energy"):
                        assert c[nxt][m] >= v[m] * (1 - 1e-12), (spec, nxt, m)
                        assert v[m] > 0


def test_bitfusion_six_bits_compute_at_eight_bit_speed():
    # 6-bit operands run on fused 8-bit multipliers (the grid: 6 bits at 8-bit speed); the
    # old test pinned equal *costs* at 5..7 and 8 bits, but the official simulator moves
    # data at the true width, so only the array throughput is equal now.
    sim = BitFusionSim()
    for b in (5, 6, 7):
        assert sim.cfg.peak_macs_per_cycle(b, b) == sim.cfg.peak_macs_per_cycle(8, 8)
        assert sim.cfg.peak_macs_per_cycle(b, 4) == sim.cfg.peak_macs_per_cycle(8, 4)
    assert sim.cfg.peak_macs_per_cycle(3, 3) == sim.cfg.peak_macs_per_cycle(4, 4) == 4 * 512
    for spec in SHAPES.values():          # fewer bits to move: never dearer than 8 bits
        assert bitfusion_layer_cost(*spec.fields(), 6, 6)["latency"] <= \
            bitfusion_layer_cost(*spec.fields(), 8, 8)["latency"] * (1 + 1e-12)


def test_bitfusion_pointwise_is_memory_bound_on_partial_sums():
    # Replaces "big 1x1 is 4x faster at W4A4" of the old model: on the official simulator
    # every output moves through DRAM as a 32-bit partial sum, read and written, so the
    # MobileNetV2 expansion 1x1 is memory-bound and barely speeds up (grid median 1.14x);
    # a 3x3 conv with 9x the reuse stays compute-bound and gains ~3x.
    bf = BitFusionSim()
    r8, r4 = bf.report(SHAPES["pw"], 8, 8), bf.report(SHAPES["pw"], 4, 4)
    assert r8["bound"] == r4["bound"] == "memory"
    assert 1.0 < r8["latency"] / r4["latency"] < 1.5
    assert r8["dram_bits"] >= 2 * SHAPES["pw"].n_outputs * 32
    conv = LayerSpec(256, 256, 14, 3, 1, 1, 1)
    c8, c4 = bf.report(conv, 8, 8), bf.report(conv, 4, 4)
    assert c8["bound"] == c4["bound"] == "compute" and c8["utilization"] > 0.95
    assert 2.5 < c8["latency"] / c4["latency"] <= 4.0
    assert c4["energy"] < c8["energy"]


def test_depthwise_uses_the_array_poorly():
    # BitFusion has no depthwise mode: grouped (APQ's table) or one input channel -> C
    # outputs (official simulator); either way a small fraction of the array does work
    for mode in ("grouped", "official"):
        bf = BitFusionSim(depthwise=mode)
        for spec in (SHAPES["dw3"], SHAPES["dw5s2"], LayerSpec(960, 960, 7, 3, 1, 1, 960)):
            for b in (4, 8):
                r = bf.report(spec, b, b)
                assert r["utilization"] < 0.2, (mode, spec, b)
                assert r["intensity"] < bf.roofline(b, b)["ridge"]


def test_bismo_compute_scales_with_w_times_a():
    for p in ("edge", "cloud"):
        sim = BismoSim(p)
        base = sim.report(SHAPES["pw"], 1, 1)["compute_cycles"]
        for w, a in ((8, 8), (4, 4), (3, 5), (8, 1)):
            assert sim.report(SHAPES["pw"], w, a)["compute_cycles"] == base * w * a
    # bit-serial: 3 bits is cheaper than 4 on BISMO (no brick rounding)
    assert bismo_layer_cost(*SHAPES["pw"].fields(), 3, 3)["latency"] < \
        bismo_layer_cost(*SHAPES["pw"].fields(), 4, 4)["latency"]
    assert bismo_layer_cost(*SHAPES["pw"].fields(), 8, 8, "cloud")["latency"] < \
        bismo_layer_cost(*SHAPES["pw"].fields(), 8, 8, "edge")["latency"]


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="groups=5 does not divide"):
        bitfusion_layer_cost(24, 24, 14, 3, 1, 1, 5, 8, 8)
    with pytest.raises(ValueError, match="w_bits=9 is outside"):
        bitfusion_layer_cost(24, 24, 14, 1, 1, 0, 1, 9, 8)
    with pytest.raises(ValueError, match="a_bits=0 is outside"):
        bismo_layer_cost(24, 24, 14, 1, 1, 0, 1, 8, 0)
    with pytest.raises(ValueError, match="a_bits=32 is outside"):
        bismo_layer_cost(24, 24, 14, 1, 1, 0, 1, 8, 32, "cloud")
    with pytest.raises(ValueError, match="unknown platform 'mobile'"):
        bismo_layer_cost(24, 24, 14, 1, 1, 0, 1, 8, 8, "mobile")
    with pytest.raises(ValueError, match="unknown simulator 'tpu'"):
        get_simulator("tpu")
    with pytest.raises(ValueError, match="kernel 7 is larger"):
        LayerSpec(8, 8, 3, 7, 1, 0, 1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        LayerSpec(8, 8, 8, 3, 0, 1, 1)
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        cpu_layer_latency(8, 8, 8, 3, 1, 1, 3)


def test_cpu_latency_measures_something():
    r = cpu_layer_latency(16, 32, 16, 3, 1, 1, 1, repeats=3)
    assert r["latency"] > 0 and math.isfinite(r["latency"]) and math.isnan(r["energy"])


def test_model_cost_sums_layers():
    df = model_cost(_Tiny(), (3, 32, 32), policy={"down": (4, 4)}, simulator="bitfusion")
    assert list(df["name"]) == ["conv", "dw", "down", "fc"]
    sim = BitFusionSim()
    assert df["latency"].iloc[2] == sim.cost(LayerSpec(8, 16, 32, 3, 2, 1, 1), 4, 4)["latency"]


# ------------------------------------------------------------------ lookup tables
@pytest.fixture(scope="module")
def smoke_space():
    return SearchSpace(load_profile("smoke").space)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ArtifactStore(tmp_path_factory.mktemp("artifacts"))


def _random_configs(space, n, seed=0):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)] + [space.largest(8), space.smallest(4)]


@pytest.mark.parametrize("sim_name", SIMS)
def test_vectorised_lookup_equals_per_layer_sum(smoke_space, store, sim_name):
    table, art = build_space_lut(smoke_space, sim_name, store=store)
    configs = _random_configs(smoke_space, 60)
    lat, en = table.lookup_configs(configs)
    sim = get_simulator(sim_name)
    lut = load_lut(art.file("lut.json"))
    for i, cfg in enumerate(configs):
        ref = subnet_cost(smoke_space, cfg, sim.cost)
        assert lat[i] == pytest.approx(ref["latency"], rel=1e-9)
        assert en[i] == pytest.approx(ref["energy"], rel=1e-9)
        from_json = sum(lut[s.key(w, a)]["latency"] for _n, s, w, a in
                        subnet_layers(smoke_space, cfg))
        assert lat[i] == pytest.approx(from_json, rel=1e-9)
    # keys are APQ's format, plus head/tail totals
    assert {"head", "tail"} <= set(lut)
    for k in lut:
        if k not in ("head", "tail"):
            parse_key(k)
    # cached: a second build loads the same artifact
    again, art2 = build_space_lut(smoke_space, sim_name, store=store)
    assert art2.key == art.key and np.array_equal(again.costs, table.costs)


def test_lookup_rejects_bad_index_arrays(smoke_space, store):
    table, _ = build_space_lut(smoke_space, "bitfusion", store=store)
    idx = smoke_space.to_index_array(_random_configs(smoke_space, 4))
    with pytest.raises(ValueError, match="expected"):
        table.lookup(idx[:, :5])
    bad = idx.copy()
    bad[0, 0, 2] = 7
    with pytest.raises(ValueError, match="pw_w"):
        table.lookup(bad)
    # depth switches blocks off: fewer active blocks, lower latency
    lat, _ = table.lookup(idx)
    off = idx.copy()
    off[:, 3] = -1
    assert np.all(table.lookup(off)[0] <= lat)


def test_cpu_lut_fp32(smoke_space, store):
    table, art = build_space_lut(smoke_space, "cpu", store=store, cpu_repeats=1)
    lut = load_lut(art.file("lut.json"))
    assert all(k.endswith("-W32A32") for k in lut if k not in ("head", "tail"))
    configs = _random_configs(smoke_space, 10)
    lat, en = table.lookup_configs(configs)
    for i, cfg in enumerate(configs):        # bits do not matter on the FP32 target
        ref = sum(lut[s.key(32, 32)]["latency"] for _n, s, _w, _a in
                  subnet_layers(smoke_space, cfg))
        assert lat[i] == pytest.approx(ref, rel=1e-9)
    assert np.all(np.isnan(en))
