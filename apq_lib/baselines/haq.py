"""HAQ (Wang et al., CVPR 2019 §3): a DDPG agent picks per-layer weight / activation bits,
layer by layer, under a hardware-cost target enforced by the "action wall".

* State per step (one step per layer for weights, one for activations), min-max
  normalised: layer index, c_in, c_out, kernel, stride, feature size, #params,
  is-depthwise, weight-or-activation flag, previous action.
* Action ``a ∈ [0, 1]`` → ``bits = round(b_min − 0.5 + a·(b_max − b_min + 1))``.
* Action wall: after an episode, walk layers from last to first lowering the activation
  then the weight bits by one until ``cost(bits) ≤ target``.
* Reward ``0.1·(acc_quant − acc_orig)`` (percent), after a short finetune; the cost is
  not in the reward. Every transition of an episode gets the episode's reward; a moving
  average of the batch reward is subtracted (AMC/HAQ's baseline).
* DDPG: actor and critic 300-300 (critic's state and action branches summed), Adam
  actor 1e-4 / critic 1e-3, τ 0.01, discount 1, batch 64, replay 128 × steps,
  random warm-up episodes, truncated-normal noise σ = 0.5·0.99^(episode − warm-up).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..progress import tqdm
from ..quant.policy import fixed_bits, is_fixed
from ..runtime import stream_rng, stream_seed

__all__ = ["HAQLayer", "DDPGConfig", "DDPGAgent", "HAQSearch", "HAQResult",
           "bits_from_action", "action_from_bits", "action_wall", "haq_states",
           "N_STATE_FEATURES", "haq_layers", "run_haq"]

N_STATE_FEATURES = 10
Bits = list  # [(w_bits, a_bits)] per layer


def bits_from_action(a: float, b_min: int, b_max: int) -> int:
    """HAQ's mapping: ``round(b_min − 0.5 + a·(b_max − b_min + 1))``, ties rounded up, so
    each bitwidth gets an equal share of [0, 1]; clipped to ``[b_min, b_max]``."""
    x = b_min - 0.5 + float(a) * (b_max - b_min + 1)
    return int(min(b_max, max(b_min, math.floor(x + 0.5))))


def action_from_bits(b: int, b_min: int, b_max: int) -> float:
    """The centre of the action interval that maps to ``b``."""
    return (b - b_min + 0.5) / (b_max - b_min + 1)


@dataclass(frozen=True)
class HAQLayer:
    """One quantizable layer as HAQ's state sees it; ``fixed`` layers ((w, a) given,
    e.g. the first conv and the classifier) take no action and are never walled."""
    name: str
    in_c: int
    out_c: int
    kernel: int
    stride: int
    in_size: int
    params: int
    depthwise: bool
    fixed: Optional[tuple] = None


def haq_states(layers: Sequence[HAQLayer], quantize_acts: bool = True
               ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``([n_steps, 10] float32 states, [(layer index, 'w' | 'a')])`` for the agent's
    steps; the last column (previous action) is filled in during the episode."""
    steps, rows = [], []
    for i, l in enumerate(layers):
        if l.fixed is not None:
            continue
        for kind in (("w", "a") if quantize_acts else ("w",)):
            steps.append((i, kind))
            rows.append([i, l.in_c, l.out_c, l.kernel, l.stride, l.in_size, l.params,
                         float(l.depthwise), 1.0 if kind == "w" else 0.0, 0.0])
    s = np.asarray(rows, dtype=np.float64).reshape(-1, N_STATE_FEATURES)
    if len(s):
        lo, hi = s[:, :-1].min(0), s[:, :-1].max(0)
        rng = np.where(hi > lo, hi - lo, 1.0)
        s[:, :-1] = (s[:, :-1] - lo) / rng
    return s.astype(np.float32), steps


def action_wall(bits: Bits, cost: Callable[[Bits], float], target: float, b_min: int,
                layers: Optional[Sequence[HAQLayer]] = None, quantize_acts: bool = True
                ) -> tuple[Bits, bool]:
    """HAQ's final action wall: walk layers last → first lowering the activation, then
    the weight bits by one (never below ``b_min``, fixed layers untouched), checking the
    cost after every change, and repeat passes until ``cost ≤ target``.
    Returns ``(bits, met)``; ``met`` is False when even the lowest bits miss the target."""
    bits = [list(b) for b in bits]
    free = [i for i in range(len(bits)) if layers is None or layers[i].fixed is None]
    ok = lambda: cost([tuple(b) for b in bits]) <= target
    met = ok()
    while not met:
        changed = False
        for i in reversed(free):
            for j in ((1, 0) if quantize_acts else (0,)):
                if bits[i][j] > b_min:
                    bits[i][j] -= 1
                    changed = True
                    if ok():
                        met = True
                        break
            if met:
                break
        if not changed:
            break
    return [tuple(b) for b in bits], met


# --------------------------------------------------------------------------- DDPG
@dataclass
class DDPGConfig:
    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    rmsize: int = 128                 # replay buffer = rmsize × steps per episode
    init_delta: float = 0.5           # σ of the truncated-normal exploration noise
    delta_decay: float = 0.99
    moving_alpha: float = 0.5         # reward baseline: m += α (mean batch reward − m)
    init_w: float = 3e-3


class _Actor(nn.Module):
    def __init__(self, n_s: int, h: int, init_w: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_s, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                 nn.Linear(h, 1), nn.Sigmoid())
        nn.init.uniform_(self.net[4].weight, -init_w, init_w)

    def forward(self, s):
        return self.net(s)


class _Critic(nn.Module):
    """Q(s, a) = fc3(relu(fc2(relu(fc_s(s) + fc_a(a)))))."""

    def __init__(self, n_s: int, h: int, init_w: float):
        super().__init__()
        self.fc_s, self.fc_a = nn.Linear(n_s, h), nn.Linear(1, h)
        self.fc2, self.fc3 = nn.Linear(h, h), nn.Linear(h, 1)
        nn.init.uniform_(self.fc3.weight, -init_w, init_w)

    def forward(self, s, a):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc_s(s) + self.fc_a(a)))))


class _one_thread:
    """The agent's networks are tiny: on a busy CPU one thread is ~8× faster than two."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


class DDPGAgent:
    """The HAQ/AMC DDPG agent (CPU; the networks are tiny)."""

    def __init__(self, n_states: int, n_steps: int, cfg: Optional[DDPGConfig] = None,
                 seed: int = 0):
        self.cfg = cfg = cfg or DDPGConfig()
        torch.manual_seed(stream_seed(seed, "haq", "init"))
        self.rng = stream_rng(seed, "haq")
        self.actor = _Actor(n_states, cfg.hidden, cfg.init_w)
        self.critic = _Critic(n_states, cfg.hidden, cfg.init_w)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.capacity = cfg.rmsize * max(1, n_steps)
        self.buf = {k: np.zeros((self.capacity, d), np.float32) for k, d in
                    (("s", n_states), ("a", 1), ("r", 1), ("s2", n_states), ("d", 1))}
        self.n, self.pos = 0, 0
        self.moving_average: Optional[float] = None

    def observe(self, s, a, r, s2, done) -> None:
        for k, v in (("s", s), ("a", a), ("r", r), ("s2", s2), ("d", float(done))):
            self.buf[k][self.pos] = v
        self.pos = (self.pos + 1) % self.capacity
        self.n = min(self.n + 1, self.capacity)

    def random_action(self) -> float:
        return float(self.rng.uniform(0.0, 1.0))

    @torch.no_grad()
    def act(self, s: np.ndarray, sigma: float = 0.0) -> float:
        """Actor output plus truncated-normal noise (σ) kept inside [0, 1]."""
        with _one_thread():
            mu = float(self.actor(torch.as_tensor(s, dtype=torch.float32)[None])[0, 0])
        if sigma <= 0:
            return mu
        for _ in range(1000):                  # truncated normal on [0, 1] by rejection
            a = self.rng.normal(mu, sigma)
            if 0.0 <= a <= 1.0:
                return float(a)
        return float(min(1.0, max(0.0, mu)))

    def update(self) -> Optional[tuple[float, float]]:
        """One DDPG step on a replay batch; returns (critic loss, actor loss)."""
        with _one_thread():
            return self._update()

    def _update(self) -> Optional[tuple[float, float]]:
        c = self.cfg
        if self.n < c.batch_size:
            return None
        idx = self.rng.integers(0, self.n, c.batch_size)
        s, a, r, s2, d = (torch.from_numpy(self.buf[k][idx]) for k in ("s", "a", "r", "s2", "d"))
        mean_r = float(r.mean())
        self.moving_average = mean_r if self.moving_average is None else \
            self.moving_average + c.moving_alpha * (mean_r - self.moving_average)
        r = r - self.moving_average
        with torch.no_grad():
            target = r + c.discount * (1.0 - d) * self.critic_t(s2, self.actor_t(s2))
        lc = nn.functional.mse_loss(self.critic(s, a), target)
        self.opt_c.zero_grad()
        lc.backward()
        self.opt_c.step()
        la = -self.critic(s, self.actor(s)).mean()
        self.opt_a.zero_grad()
        la.backward()
        self.opt_a.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                tp = list(tgt.parameters())
                torch._foreach_lerp_(tp, list(net.parameters()), c.tau)   # soft update
        return float(lc.detach()), float(la.detach())


# --------------------------------------------------------------------------- search
@dataclass
class HAQResult:
    bits: Bits                        # best walled policy, one (w, a) per layer
    accuracy: float                   # its accuracy after the short finetune (percent)
    reward: float
    cost: float
    met: bool
    history: list = field(default_factory=list)   # one dict per episode
    seconds: float = 0.0

    def policy(self, layers: Sequence[HAQLayer]) -> dict:
        """``{layer name: (w, a)}``."""
        return {l.name: tuple(map(int, b)) for l, b in zip(layers, self.bits)}


class HAQSearch:
    """Runs HAQ's episodes.

    ``evaluate(bits) -> accuracy (percent)`` quantizes, briefly finetunes and evaluates a
    policy (one ``(w, a)`` per layer of ``layers``); ``cost(bits) -> float`` is the
    hardware cost (latency, energy or size) of a policy; ``acc_orig`` the FP32 accuracy.
    With ``quantize_acts=False`` only weights are searched (HAQ's model-size setting) and
    activations stay at ``a_fixed``.
    """

    def __init__(self, layers: Sequence[HAQLayer], evaluate: Callable[[Bits], float],
                 cost: Callable[[Bits], float], target: float, acc_orig: float,
                 b_min: int = 2, b_max: int = 8, episodes: int = 600, warmup: int = 20,
                 quantize_acts: bool = True, a_fixed: int = 32,
                 ddpg: Optional[DDPGConfig] = None, seed: int = 0):
        if not b_min <= b_max:
            raise ValueError(f"b_min={b_min} must be <= b_max={b_max}")
        self.layers, self.evaluate, self.cost = list(layers), evaluate, cost
        self.target, self.acc_orig = float(target), float(acc_orig)
        self.b_min, self.b_max = b_min, b_max
        self.episodes, self.warmup = episodes, warmup
        self.quantize_acts, self.a_fixed = quantize_acts, a_fixed
        self.states, self.steps = haq_states(self.layers, quantize_acts)
        self.agent = DDPGAgent(N_STATE_FEATURES, len(self.steps), ddpg, seed)

    def decode(self, actions: Sequence[float]) -> Bits:
        """Actions (one per step) → ``[(w, a)]`` per layer (fixed layers as given)."""
        bits = [list(l.fixed) if l.fixed is not None else [self.b_max, self.b_max if
                self.quantize_acts else self.a_fixed] for l in self.layers]
        for (i, kind), a in zip(self.steps, actions):
            bits[i][0 if kind == "w" else 1] = bits_from_action(a, self.b_min, self.b_max)
        return [tuple(b) for b in bits]

    def sigma(self, episode: int) -> float:
        c = self.agent.cfg
        return c.init_delta * c.delta_decay ** max(0, episode - self.warmup)

    def run(self, progress: bool = True) -> HAQResult:
        t0 = time.perf_counter()
        best: Optional[HAQResult] = None
        hist = []
        for ep in tqdm(range(self.episodes), desc="HAQ episodes", disable=not progress):
            states, actions, prev = [], [], 0.0
            for t in range(len(self.steps)):
                s = self.states[t].copy()
                s[-1] = prev
                a = self.agent.random_action() if ep < self.warmup else \
                    self.agent.act(s, self.sigma(ep))
                states.append(s)
                actions.append(a)
                prev = a
            bits, met = action_wall(self.decode(actions), self.cost, self.target, self.b_min,
                                    self.layers, self.quantize_acts)
            acc = float(self.evaluate(bits))
            reward = 0.1 * (acc - self.acc_orig)
            for t in range(len(self.steps)):
                last = t == len(self.steps) - 1
                s2 = states[t] if last else states[t + 1]
                self.agent.observe(states[t], actions[t], reward, s2, last)
            if ep >= self.warmup:
                for _ in range(len(self.steps)):
                    self.agent.update()
            c = float(self.cost(bits))
            free = [b for l, b in zip(self.layers, bits) if l.fixed is None]
            hist.append({"episode": ep, "accuracy": acc, "reward": reward, "cost": c,
                         "met": met, "sigma": self.sigma(ep) if ep >= self.warmup else None,
                         "mean_w_bits": float(np.mean([b[0] for b in free])),
                         "mean_a_bits": float(np.mean([b[1] for b in free]))
                         if self.quantize_acts else None})
            if met and (best is None or reward > best.reward):
                best = HAQResult(bits, acc, reward, c, met)
        if best is None:                       # nothing met the target: report the last
            best = HAQResult(bits, acc, reward, c, False)
        best.history, best.seconds = hist, time.perf_counter() - t0
        return best


def noise_decay(ddpg: DDPGConfig, episodes: int, warmup: int,
                final_sigma: Optional[float]) -> float:
    """The per-episode decay of the exploration σ: HAQ's own (``ddpg.delta_decay``) when
    ``final_sigma`` is None, else the one that takes σ from ``ddpg.init_delta`` at the first
    episode after warm-up to ``final_sigma`` at the last (HAQ's schedule fitted to a
    shorter search: at its 600 episodes and 20 warm-up, 0.0015 gives 0.99 back)."""
    if final_sigma is None or episodes - warmup < 2:
        return ddpg.delta_decay
    return float((final_sigma / ddpg.init_delta) ** (1.0 / (episodes - warmup - 1)))


def haq_layers(names: Sequence[str], specs: Sequence, fixed: Callable[[str], Optional[tuple]]
               ) -> list[HAQLayer]:
    """:class:`HAQLayer` records from layer names and their ``LayerSpec`` (e.g. a
    ``LayerCostTable``'s ``names`` / ``specs``); ``fixed(name)`` gives the (w, a) of a
    layer the agent does not control, or None."""
    return [HAQLayer(n, s.in_c, s.out_c, s.kernel, s.stride, s.in_size, s.n_weights,
                     bool(s.is_depthwise), fixed(n)) for n, s in zip(names, specs)]


def run_haq(table, evaluator, metric: str, target: float, acc_fp: float, settings,
            seed: int = 0, kmeans: bool = False, progress: bool = False
            ) -> tuple[HAQResult, list[HAQLayer]]:
    """The one HAQ set-up of the suite (fixed network, multi-stage, FBNet+HAQ): the layers of
    ``table`` (a :class:`~apq_lib.baselines.fixed.LayerCostTable`), fixed layers at their
    8-bit setting (weights only, FP activations, for k-means), the bit range, episodes and
    warm-up of ``settings`` (the ``baselines:`` section), DDPG under ``metric ≤ target``
    (table units) with ``evaluator`` as the reward's accuracy. Returns ``(result, layers)``."""
    fixed = ((lambda n: (fixed_bits(n)[0], 32) if is_fixed(n) else None) if kmeans else
             (lambda n: fixed_bits(n) if is_fixed(n) else None))
    layers = haq_layers(table.names, table.specs, fixed)
    lo, hi = settings.haq_kmeans_bits if kmeans else settings.haq_bits
    ddpg = DDPGConfig()
    ddpg.delta_decay = noise_decay(ddpg, settings.haq_episodes, settings.haq_warmup,
                                   settings.haq_final_sigma)
    res = HAQSearch(layers, evaluator, table.fn(metric), target, acc_fp, lo, hi,
                    settings.haq_episodes, settings.haq_warmup, quantize_acts=not kmeans,
                    a_fixed=32, ddpg=ddpg, seed=seed).run(progress)
    return res, layers
