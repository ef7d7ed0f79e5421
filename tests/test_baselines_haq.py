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


def test_noise_decay_fits_haq_schedule_to_the_episode_budget():
    """HAQ's own decay without a final σ; with one, σ goes from 0.5 at the first episode
    after warm-up to exactly that σ at the last; 600 episodes / 20 warm-up and HAQ's end
    σ give its 0.99 back."""
    from apq_lib.baselines.haq import DDPGConfig, noise_decay

    d = DDPGConfig()
    assert noise_decay(d, 30, 4, None) == 0.99
    assert noise_decay(d, 600, 20, 0.5 * 0.99 ** 579) == pytest.approx(0.99, rel=1e-12)
    k = noise_decay(d, 30, 4, 0.05)
    assert 0.5 * k ** (30 - 4 - 1) == pytest.approx(0.05, rel=1e-12)
    assert noise_decay(d, 5, 4, 0.05) == 0.99          # one episode after warm-up: no decay


def test_haq_reward_trend_hand_values():
    """Slope over the last third, the drift it implies and the binomial SE of one reward:
    a curve still rising by 0.5 points per episode is not flat; a level one is."""
    from apq_lib.baselines.study import haq_reward_trend

    rising = [{"constraint": "up", "history": [{"accuracy": 80 + 0.5 * i} for i in range(9)]}]
    level = [{"constraint": "flat", "history": [{"accuracy": 80 + 0.1 * (i % 2)}
                                                for i in range(9)]}]
    t = haq_reward_trend(rising + level, 2000)
    assert t["up"]["window"] == 3 and t["up"]["slope"] == pytest.approx(0.5)
    assert t["up"]["drift"] == pytest.approx(1.0)
    p = (83 + 83.5 + 84) / 300
    assert t["up"]["reward_se"] == pytest.approx(100 * np.sqrt(p * (1 - p) / 2000))
    assert not t["up"]["flat"] and t["flat"]["flat"]
    assert haq_reward_trend([{"constraint": "short", "history": [{"accuracy": 1.0}]}], 10) == {}
