"""apq_lib.loops, the one training / evaluation core, checked directly on models small
enough to compute by hand."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

# the module, not `from apq_lib.loops import test_batches`: pytest would collect that
import apq_lib.loops as loops
from apq_lib.runtime import stream_seed


def _identity_classifier() -> nn.Linear:
    """logits = x: the predicted class is the index of x's largest coordinate."""
    m = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.eye(2))
    return m


BATCHES = [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])),   # right, wrong
           (torch.tensor([[2.0, 3.0], [5.0, 1.0]]), torch.tensor([1, 1])),   # right, wrong
           (torch.tensor([[0.0, 9.0]]), torch.tensor([1]))]                  # right


def test_evaluate_accuracy_and_per_image_correctness_by_hand():
    m = _identity_classifier()
    m.train()
    acc, correct = loops.evaluate(m, BATCHES, return_correct=True)
    assert acc == pytest.approx(100.0 * 3 / 5)
    assert correct.dtype == bool and correct.tolist() == [True, False, True, False, True]
    assert m.training                                   # the model's mode is restored
    assert loops.evaluate(m, BATCHES, max_batches=1) == pytest.approx(50.0)
    pred, y = loops.predict(m, BATCHES)
    assert pred.tolist() == [0, 1, 1, 0, 1] and y.tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="no images"):
        loops.evaluate(m, [])


def test_make_optimizer_groups_and_kinds():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = loops.make_optimizer(m, 0.1, "sgd", momentum=0.9, weight_decay=1e-3)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 3                 # bias, BN weight, BN bias
    assert not loops.make_optimizer(m, 0.1, "sgd", momentum=0.0).defaults["nesterov"]
    assert isinstance(loops.make_optimizer(m, 0.1, "adam"), torch.optim.Adam)
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        loops.make_optimizer(m, 0.1, "rmsprop")


def _one_weight(w0: float = 1.0) -> nn.Linear:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(w0)
    return m


def test_train_steps_learning_rate_schedule_by_hand():
    """loss = w, so each plain SGD step moves w by exactly the step's learning rate."""
    batches = [(torch.ones(1, 1), torch.zeros(1, dtype=torch.long))]
    lin = lambda out, y: out.sum()                         # noqa: E731
    m = _one_weight()
    seen = []
    losses = loops.train_steps(m, batches, 4, lr=0.1, momentum=0.0, weight_decay=0.0,
                               loss_fn=lin, on_step=seen.append)
    # cosine: lr_t = 0.1 * (1 + cos(pi t / 4)) / 2 for t = 0..3; their sum is 0.25
    lrs = [0.05 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert sum(lrs) == pytest.approx(0.25)
    assert float(m.weight.detach()) == pytest.approx(1.0 - 0.25)
    assert losses == pytest.approx(list(1.0 - np.cumsum([0.0] + lrs[:-1])))
    assert seen == [0, 1, 2, 3, 4] and not m.training
    m = _one_weight()
    loops.train_steps(m, batches, 4, lr=0.1, momentum=0.0, weight_decay=0.0, loss_fn=lin,
                      cosine=False)
    assert float(m.weight.detach()) == pytest.approx(1.0 - 0.4)


def test_train_steps_non_finite_loss_names_step_and_key():
    m = _one_weight(float("nan"))
    with pytest.raises(loops.NonFiniteLossError, match=r"step 0 of 3; lower finetune\.lr"):
        loops.train_steps(m, [(torch.ones(1, 1), torch.zeros(1, dtype=torch.long))], 3,
                          lr=0.1, loss_fn=lambda out, y: out.sum())


def _blobs(seed: int, n: int = 64) -> list:
    """Two linearly separable blobs (class = sign of the first coordinate), in batches."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.3
    x[:, 0] += torch.where(y == 1, 1.5, -1.5)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


RECIPE = SimpleNamespace(steps=60, lr=0.2, optimizer="sgd", momentum=0.9, weight_decay=0.0,
                         label_smoothing=0.0, batch_size=16, test_images=None)


def _finetuned(seed: int = 0):
    torch.manual_seed(seed)
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.mul_(-1.0)                                 # start off wrong-ish
    out = loops.finetune(m, RECIPE, _blobs(1))
    return m, out


def test_finetune_learns_a_separable_set_and_is_deterministic():
    m, out = _finetuned()
    assert out["steps"] == 60 and len(out["losses"]) == 60 and out["seconds"] >= 0
    assert np.mean(out["losses"][-8:]) < 0.5 * np.mean(out["losses"][:8])
    assert loops.evaluate(m, _blobs(2)) == pytest.approx(100.0)     # held-out blobs
    m2, out2 = _finetuned()                                 # same seed, same batches
    assert out2["losses"] == out["losses"]
    assert torch.equal(m2.weight, m.weight) and torch.equal(m2.bias, m.bias)
    w = m.weight.detach().clone()
    assert loops.finetune(m, RECIPE, _blobs(1), steps=0) == {"steps": 0, "losses": [],
                                                               "seconds": 0.0}
    assert torch.equal(m.weight, w)                         # steps=0 leaves the model alone
    assert len(loops.finetune(nn.Linear(2, 2), RECIPE, _blobs(1), steps=5)["losses"]) == 5


class _FakeData:
    def __init__(self, n_test: int):
        self.test = list(range(n_test))
        self.calls = []

    def loader(self, split, batch_size=None, seed=None):
        self.calls.append(("loader", split, batch_size, seed))
        return ("loader", seed)

    def fixed_batches(self, split, n_images, seed=0):
        self.calls.append(("fixed", split, n_images, seed))
        return ["batches", n_images]


def test_finetune_batches_seed_from_seed_stream_and_model():
    d = _FakeData(10)
    a = loops.finetune_batches(d, RECIPE, 3, "haq")
    assert d.calls == [("loader", "train", 16, stream_seed(3, "finetune", "haq"))]
    assert a == loops.finetune_batches(d, RECIPE, 3, "haq")          # same model: same
    assert a != loops.finetune_batches(d, RECIPE, 3, "hawq")         # another model
    assert a != loops.finetune_batches(d, RECIPE, 4, "haq")          # another seed
    assert a != loops.finetune_batches(d, RECIPE, 3, "haq", stream="pair_finetune")


def test_test_batches_whole_split_or_capped_subset():
    d = _FakeData(10)
    assert loops.test_batches(d, RECIPE, seed=5) == ["batches", 10]
    assert loops.test_batches(d, SimpleNamespace(test_images=4)) == ["batches", 4]
    assert loops.test_batches(d, SimpleNamespace(test_images=40)) == ["batches", 10]
    assert d.calls == [("fixed", "test", 10, 5), ("fixed", "test", 4, 0),
                       ("fixed", "test", 10, 0)]
