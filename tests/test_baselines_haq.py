"""HAQ: action → bits mapping, the action wall, and a short DDPG run on a toy problem."""
import numpy as np
import pytest

from apq_lib.baselines.haq import (
    HAQLayer,
    HAQSearch,
    action_from_bits,
    action_wall,
    bits_from_action,
    haq_states,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bits_from_action_hand_values():
    # round(b_min - 0.5 + a (b_max - b_min + 1)), b in [2, 8]: 7 equal intervals
    assert bits_from_action(0.0, 2, 8) == 2
    assert bits_from_action(0.14, 2, 8) == 2         # 2.48
    assert bits_from_action(1 / 7, 2, 8) == 3        # 2.5, the boundary
    assert bits_from_action(0.5, 2, 8) == 5          # 5.0
    assert bits_from_action(0.99, 2, 8) == 8
    assert bits_from_action(1.0, 2, 8) == 8          # 8.5 clipped
    assert bits_from_action(0.19, 4, 8) == 4         # 4.45
    assert bits_from_action(0.2, 4, 8) == 5          # 4.5
    for b in range(2, 9):
        assert bits_from_action(action_from_bits(b, 2, 8), 2, 8) == b
    counts = np.bincount([bits_from_action(a, 2, 8) for a in np.linspace(0, 1, 7001)])
    assert counts[2:].min() >= 999                   # each width gets ~1/7 of [0, 1]


def _toy_layers(n=6):
    return [HAQLayer(f"l{i}", 8 * (i + 1), 8 * (i + 2), 3 if i % 2 else 1, 1, 16, 100 * (i + 1),
                     bool(i % 2), fixed=(8, 8) if i in (0, n - 1) else None) for i in range(n)]


def _toy_cost(layers):
    w = np.array([l.params for l in layers], float)
    return lambda bits: float(sum(wi * b[0] * b[1] for wi, b in zip(w, bits)))


def test_action_wall_meets_target_and_walks_last_to_first():
    layers = _toy_layers()
    cost = _toy_cost(layers)
    bits = [(8, 8)] * len(layers)
    full = cost(bits)
    target = 0.6 * full
    out, met = action_wall(bits, cost, target, 2, layers)
    assert met and cost(out) <= target
    assert out[0] == (8, 8) and out[-1] == (8, 8)            # fixed layers untouched
    # one step less would not have met it (the wall stops as soon as the target holds)
    assert out[-2][1] <= out[1][1]                           # later layers lowered first
    # first move is the activation of the last free layer
    out1, met1 = action_wall(bits, cost, full - 1, 2, layers)
    assert met1 and out1[-2] == (8, 7) and out1[1:-2] == [(8, 8)] * 3
    # unreachable target: every free layer at b_min, reported as not met
    out2, met2 = action_wall(bits, cost, 1.0, 2, layers)
    assert not met2 and all(b == (2, 2) for b in out2[1:-1])


def test_states_are_minmax_normalised():
    s, steps = haq_states(_toy_layers())
    assert s.shape == (8, 10) and len(steps) == 8                # 4 free layers × (w, a)
    assert s[:, :-1].min() >= 0 and s[:, :-1].max() <= 1
    assert set(s[:, 8]) == {0.0, 1.0}                            # weight / activation flag
    s2, steps2 = haq_states(_toy_layers(), quantize_acts=False)
    assert len(steps2) == 4 and all(k == "w" for _, k in steps2)


def test_haq_search_runs_and_respects_target():
    layers = _toy_layers()
    cost = _toy_cost(layers)
    target = 0.5 * cost([(8, 8)] * len(layers))
    sens = np.array([0, 3.0, 0.1, 2.0, 0.2, 0])                 # accuracy loss per lost bit

    def evaluate(bits):
        return 90.0 - float(sum(s * (8 - b[0]) + 0.5 * s * (8 - b[1]) for s, b in zip(sens, bits)))

    search = HAQSearch(layers, evaluate, cost, target, acc_orig=90.0, b_min=2, b_max=8,
                       episodes=30, warmup=10, seed=0)
    res = search.run(progress=False)
    assert res.met and res.cost <= target
    assert len(res.history) == 30 and all(h["cost"] <= target for h in res.history)
    assert res.reward == max(h["reward"] for h in res.history)
    assert res.reward == pytest.approx(0.1 * (res.accuracy - 90.0))
    assert search.agent.moving_average is not None               # DDPG updates happened
    assert search.sigma(10) == pytest.approx(0.5)
    assert search.sigma(12) == pytest.approx(0.5 * 0.99 ** 2)
