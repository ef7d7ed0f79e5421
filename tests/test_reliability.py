"""Issue 15: long runs survive faults and bad input (worker lifecycle, one writer per shard,
strict parameters, declared config checks, integrity, atomic writes, data errors); issue 13:
artifact keys derived from the fields a stage reads. Kill / signal tests run real
subprocesses and are bounded by timeouts."""
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import pytest
import torch

from apq_lib import artifacts
from apq_lib.artifacts import (
    STAGE_KEYS,
    ArtifactError,
    ArtifactStore,
    CorruptResultError,
    atomic_write,
    dumps_strict,
)
from apq_lib.baselines import suite as _suite  # noqa: F401  (registers its stage key)
from apq_lib.config import ConfigError, Phase, Profile, field_rules, leaf_fields, load_profile
from apq_lib.predictor import pipeline as pp  # noqa: F401  (registers its stage keys)
from apq_lib.predictor.collect import SampleStore, collect_samples, merge_pairs
from apq_lib.supernet import train as sn  # noqa: F401  (registers its stage key)
from apq_lib.supernet.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --------------------------------------------------------------------------- 1. workers
_FAKE_WORKER = ("import sys, time; from apq_lib.workers import exit_with_parent; "
                "exit_with_parent(poll_s=0.2); open(sys.argv[1], 'w').write('up'); "
                "time.sleep(120)")

_PARENT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from apq_lib.workers import WorkerGroup
    d = Path(sys.argv[1])
    cmds = [[sys.executable, "-c", {worker!r}, str(d / f"up{{r}}")] for r in range(2)]
    with WorkerGroup(cmds) as g:
        (d / "pids.json").write_text(json.dumps([p.pid for p in g.procs]))
        if sys.argv[2] == "raise":
            while not all((d / f"up{{r}}").exists() for r in range(2)):
                time.sleep(0.05)
            raise RuntimeError("boom")
        g.wait(every_s=0.1)
""").format(worker=_FAKE_WORKER)


def _start_parent(tmp_path, mode="wait"):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path), mode], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: all((tmp_path / f"up{r}").exists() for r in range(2)) or
              parent.poll() is not None, 60, "the workers to start")
    pids = json.loads((tmp_path / "pids.json").read_text())
    return parent, pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_stop_when_parent_is_killed(tmp_path, sig):
    """SIGTERM: the parent stops its workers; SIGKILL: the workers notice and exit."""
    parent, pids = _start_parent(tmp_path)
    assert all(_alive(p) for p in pids)
    parent.send_signal(sig)
    parent.wait(30)
    assert parent.returncode == -sig
    _wait_for(lambda: not any(_alive(p) for p in pids), 20, "orphaned workers to exit")


def test_workers_stop_when_parent_raises(tmp_path):
    parent, pids = _start_parent(tmp_path, "raise")
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 1 and b"boom" in err
    _wait_for(lambda: not any(_alive(p) for p in pids), 20, "workers to be stopped")


def test_worker_group_in_process(tmp_path):
    from apq_lib.workers import WorkerGroup
    ok = [sys.executable, "-c", "print('hi')"]
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    with WorkerGroup([ok, fail], logs=[tmp_path / "a.log", tmp_path / "b.log"]) as g:
        assert g.wait(every_s=0.05) == {1: 3}
    assert (tmp_path / "a.log").read_text() == "hi\n"
    old = signal.getsignal(signal.SIGTERM)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    with pytest.raises(KeyboardInterrupt), WorkerGroup([sleeper], grace_s=2) as g:
        pid = g.procs[0].pid
        raise KeyboardInterrupt
    assert not _alive(pid) and signal.getsignal(signal.SIGTERM) == old


# --------------------------------------------------------------------------- 1. shards
_COLLECTOR = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from apq_lib.config import load_profile
    from apq_lib.predictor.collect import SampleStore, collect_samples
    from apq_lib.supernet.space import SearchSpace
    d, tag = Path(sys.argv[1]), sys.argv[2]
    calls = []
    def ev(cfg, i):
        calls.append(i)
        (d / f"calls_{tag}.json").write_text(json.dumps(calls))
        time.sleep(0.1)
        return 50.0 + i
    store = SampleStore(d, "fp32", 24, 0, SearchSpace(load_profile("smoke").space))
    (d / f"ready_{tag}").write_text("")
    collect_samples(ev, store, (0, 1), progress=False)
""")


def test_two_collectors_on_one_shard_do_the_work_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _COLLECTOR, str(tmp_path), t], env=ENV,
                              stderr=subprocess.PIPE) for t in ("a", "b")]
    errs = [p.communicate(timeout=240)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    calls = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("calls_*.json"))]
    done = sorted(i for c in calls for i in c)
    assert done == list(range(24))                    # every sample once, by one of them
    assert any("being written by another collector" in e for e in errs)
    lines = (tmp_path / "fp32_shard000of001.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["i"] for x in lines) == list(range(24))


def _fake_acc(cfg, i):
    return 50 + sum(cfg.kernels) / 10


def test_torn_line_in_the_middle_is_dropped_and_recomputed(tmp_path):
    """The old failure: a torn line, then appends after it (a second writer) → a broken
    line mid-file that stopped every rerun."""
    space = SearchSpace(load_profile("smoke").space)
    store = SampleStore(tmp_path, "fp32", 8, 0, space)
    collect_samples(_fake_acc, store, progress=False)
    f = store.shard_path(0, 1)
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[:3]) + lines[3][:25] + "".join(lines[4:]))   # torn sample 3
    calls = []
    with pytest.warns(UserWarning, match=rf"{f.name}:4: not valid JSON.*recomputed"):
        collect_samples(lambda c, i: calls.append(i) or _fake_acc(c, i), store,
                        progress=False)
    assert calls == [3, 4]           # the torn fragment swallowed the next line (sample 4)
    assert len(f.read_text().splitlines()) == 8 and len(merge_pairs(store)) == 8


# --------------------------------------------------------------------------- 2. parameters
def test_force_and_overrides_are_type_checked(tmp_results):
    from apq_lib.notebook import ParameterError, start
    with pytest.raises(ParameterError, match=r"force: expected True or False.*'false'"):
        start("01_supernet", "smoke", {}, "false")
    with pytest.raises(ParameterError, match="overrides: expected a mapping"):
        start("01_supernet", "smoke", "seed=1", False)
    with pytest.raises(ConfigError, match="overrides: expected a mapping"):
        load_profile("smoke", "seed=1")
    assert start("01_supernet", "smoke", {"seed": 2}, False).cfg.seed == 2


def test_runner_rejects_unknown_or_mistyped_parameters():
    from apq_lib.runner import check_parameters
    assert check_parameters("03_predictor", {"profile": "smoke", "force": True})
    with pytest.raises(ConfigError, match=r"notebooks\.03_predictor\.nonsense.*no parameter"):
        check_parameters("03_predictor", {"nonsense": 1})
    with pytest.raises(ConfigError, match=r"03_predictor\.force: expected bool.*'false'"):
        check_parameters("03_predictor", {"force": "false"})
    with pytest.raises(ConfigError, match=r"overrides: expected dict"):
        check_parameters("01_supernet", {"overrides": "x"})


# --------------------------------------------------------------------------- 3. numbers
@pytest.mark.parametrize("key, value", [
    ("predictor.lr", math.nan), ("supernet.momentum", math.nan),
    ("supernet.distill_weight", math.nan), ("finetune.lr", math.nan),
    ("finetune.momentum", math.nan), ("baselines.prune_lr", math.nan),
    ("predictor.lr", -1), ("predictor.weight_decay", -1), ("supernet.label_smoothing", 5),
    ("finetune.weight_decay", math.inf), ("seed", -1), ("baselines.fixed_bits", []),
    ("hardware.simulators", []), ("baselines.haq_costs", []), ("space.depth_choices", [5]),
    ("space.kernel_choices", [4]), ("hardware.simulators", ["bitfusion", "tpu"]),
])
def test_bad_numbers_and_choices_are_named(key, value):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', r'[.]')}\b"):
        load_profile("smoke", {key: value})


def test_list_element_type_error_names_the_element():
    with pytest.raises(ConfigError, match=r"space\.bit_choices\[0\]: expected int, got 3\.5"):
        load_profile("smoke", {"space.bit_choices": [3.5]})
    bad_phase = {"name": "p", "epochs": 1, "lr": math.nan}
    with pytest.raises(ConfigError, match=r"supernet\.phases\[0\]\.lr: must be a finite"):
        load_profile("smoke", {"supernet.phases": [bad_phase]})


def _float_fields():
    out = []
    for dotted in leaf_fields(Profile):
        *sec, name = dotted.split(".")
        cls = Profile
        for s in sec:
            cls = typing.get_type_hints(cls)[s]
        tp = typing.get_type_hints(cls)[name]
        f = {x.name: x for x in dataclasses.fields(cls)}[name]
        if float in (tp, *typing.get_args(tp)) or tp == list[float]:
            out.append((dotted, tp == list[float], field_rules(f).get("finite", True)))
    return out


def test_every_float_field_must_be_finite():
    fields = _float_fields()
    assert len(fields) >= 25
    for dotted, is_list, finite in fields:
        for bad in (math.nan, math.inf):
            value = [bad] if is_list else bad
            if finite:
                with pytest.raises(ConfigError, match=rf"^{dotted.replace('.', '[.]')}"):
                    load_profile("smoke", {dotted: value})


def test_nonfinite_loss_stops_supernet_training_naming_step_and_key(tmp_path):
    cfg = load_profile("smoke")
    net = sn.APQSupernet(SearchSpace(cfg.space))

    class NaNData:
        name, num_classes = "zeros", cfg.space.num_classes

        def loader(self, split, **kw):
            from apq_lib.data import BatchLoader, TensorImageSet
            imgs = torch.zeros(256, 1, 28, 28, dtype=torch.uint8)
            ds = TensorImageSet(imgs, torch.zeros(256, dtype=torch.int64), (0.0,), (0.0,), 32)
            return BatchLoader(ds, kw["batch_size"], shuffle=True, drop_last=True)

        def fixed_batches(self, split, n, **kw):
            return []

    with pytest.raises(FloatingPointError,
                       match=r"phase 0 .*epoch 0, step 0.*supernet\.phases\[0\]\.lr"):
        sn.train_supernet(net, NaNData(), cfg, tmp_path, progress=False)   # 0/0: NaN input


def test_nonfinite_loss_stops_finetune_naming_key():
    from apq_lib.quant.training import train_steps
    model = torch.nn.Linear(4, 3)
    batches = [(torch.full((2, 4), math.nan), torch.tensor([0, 1]))]
    with pytest.raises(FloatingPointError, match=r"step 0 of 5.*finetune\.lr"):
        train_steps(model, batches, 5, 0.1, lr_key="finetune.lr")


# --------------------------------------------------------------------------- 4. integrity
def _publish(store):
    def fn(work):
        (work / "a.txt").write_text("hello")
        (work / "sub").mkdir()
        (work / "sub" / "w.bin").write_bytes(b"\x00" * 16)
    return store.build("stage", {"x": 1}, fn)


def test_unlisted_file_fails_verification(tmp_path):
    store = ArtifactStore(tmp_path)
    art = _publish(store)
    meta = json.loads((art.path / "meta.json").read_text())
    del meta["files"]["sub/w.bin"]                        # tampered weights, entry removed
    (art.path / "sub" / "w.bin").write_bytes(b"\x01" * 16)
    (art.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"sub/w\.bin.*not listed"):
        store.verify("stage", art.key)
    (art.path / "meta.json").write_text(json.dumps(json.loads(
        (art.path / "meta.json").read_text()) | {"files": {}}))
    (art.path / "extra.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not listed"):
        store.verify("stage", art.key)


@pytest.mark.parametrize("meta, match", [
    ([1, 2], "JSON list, not an object"),
    ({"stage": "stage", "inputs": [], "files": {}}, "'key' is missing"),
    ({"stage": "other", "key": "K", "inputs": [], "files": {}}, "describes other/"),
    ({"stage": "stage", "key": "K", "inputs": [], "files": {"a.txt": "abc"}}, "sha256"),
    ({"stage": "stage", "key": "K", "inputs": [], "files": {"../x": "0" * 64}}, "relative"),
])
def test_meta_schema_is_validated_and_a_bad_one_rebuilt(tmp_path, meta, match):
    store = ArtifactStore(tmp_path)
    art = _publish(store)
    if isinstance(meta, dict) and meta.get("key") == "K":
        meta["key"] = art.key
    (art.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=match):
        store.verify("stage", art.key)
    with pytest.warns(UserWarning, match="rebuilt"):
        again = _publish(store)
    assert store.verify("stage", again.key).meta["files"].keys() == {"a.txt", "sub/w.bin"}


# --------------------------------------------------------------------------- 5. writes
_WRITER = textwrap.dedent("""
    import sys
    from apq_lib.artifacts import write_json
    n = 0
    while True:
        n += 1
        write_json(sys.argv[1], {"n": n, "pad": "x" * 2_000_000})
""")


def test_kill_mid_write_never_leaves_a_torn_file(tmp_path):
    path = tmp_path / "r.json"
    for k in range(4):
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=ENV)
        _wait_for(lambda: path.exists(), 60, "the first write")
        time.sleep(0.2 + 0.13 * k)
        p.kill()
        p.wait(30)
        assert json.loads(path.read_text())["n"] >= 1       # old or new, never torn
    leftovers = [f.name for f in tmp_path.iterdir() if f.name != "r.json"]
    assert all(n.endswith(".tmp") for n in leftovers)      # a killed write's temp only


def test_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.csv"
    atomic_write(p, "old\n")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28)))
    with pytest.raises(OSError):
        atomic_write(p, "new\n")
    assert p.read_text() == "old\n" and [f.name for f in tmp_path.iterdir()] == ["a.csv"]


def test_json_is_strict():
    assert json.loads(dumps_strict({"a": math.nan, "b": [1.0, -math.inf]})) == \
        {"a": None, "b": [1.0, None]}
    import numpy as np
    assert json.loads(dumps_strict({"x": np.float32(0.5), "y": np.float64("nan")})) == \
        {"x": 0.5, "y": None}
    with pytest.raises(ValueError):
        dumps_strict({"a": math.nan}, nonfinite="error")


def test_torn_results_file_names_path_and_notebook(tmp_results):
    from apq_lib.notebook import start
    ctx = start("02_hardware", "smoke", {}, False)
    p = ctx.write_json("02_summary.json", {"lat": math.nan, "n": 3})
    assert json.loads(p.read_text()) == {"lat": None, "n": 3}
    p.write_text('{"lat": nu')                            # a torn file (old non-atomic write)
    ctx3 = start("03_predictor", "smoke", {}, False)
    with pytest.raises(CorruptResultError, match=rf"{p}.*rerun notebook 02_hardware"):
        ctx3.read_json("02_summary.json", "02_hardware")


def test_torn_manifest_is_moved_aside(tmp_results):
    tmp_results.mkdir(parents=True)
    (tmp_results / "manifest.json").write_text('{"notebooks": {"01')
    with pytest.warns(UserWarning, match="manifest.json is corrupted"):
        m = artifacts.update_manifest("01_supernet", load_profile("smoke"),
                                      __import__("datetime").datetime.now(),
                                      results_dir=tmp_results)
    assert "01_supernet" in m["notebooks"] and (tmp_results / "manifest.json.corrupt").exists()
    assert json.loads((tmp_results / "manifest.json").read_text()) == m


# --------------------------------------------------------------------------- 6. data, paths
def _fmnist_dir(tmp_path, truncate=None):
    import gzip

    import numpy as np
    d = tmp_path / "fm"
    d.mkdir()
    for stem, shape in (("train-images-idx3-ubyte", (20, 28, 28)),
                        ("train-labels-idx1-ubyte", (20,)),
                        ("t10k-images-idx3-ubyte", (5, 28, 28)),
                        ("t10k-labels-idx1-ubyte", (5,))):
        arr = np.zeros(shape, np.uint8)
        hdr = bytes([0, 0, 8, arr.ndim]) + b"".join(n.to_bytes(4, "big") for n in shape)
        with gzip.open(d / f"{stem}.gz", "wb") as f:
            f.write(hdr + arr.tobytes())
    if truncate:
        p = d / f"{truncate}.gz"
        p.write_bytes(p.read_bytes()[:40])
    return d


@pytest.mark.parametrize("value", ["", "EMPTYDIR"])
def test_explicit_data_dir_without_dataset_is_an_error(tmp_path, monkeypatch, value):
    from apq_lib.data import DatasetNotFoundError, find_fashion_mnist
    if value == "EMPTYDIR":
        value = str(tmp_path / "nothing")
        (tmp_path / "nothing").mkdir()
    monkeypatch.setenv("APQ_DATA_DIR", value)
    with pytest.raises(DatasetNotFoundError, match="APQ_DATA_DIR=.*(empty|does not hold)"):
        find_fashion_mnist(None, download=False)           # no fall-back to the system copy
    monkeypatch.delenv("APQ_DATA_DIR")
    with pytest.raises(DatasetNotFoundError, match=r"data\.root=.*does not hold"):
        find_fashion_mnist(str(tmp_path / "nothing2"), download=False)


def test_truncated_gz_names_file_and_how_to_refetch(tmp_path):
    from apq_lib.config import DataConfig
    from apq_lib.data import CorruptDatasetError, load_data
    d = _fmnist_dir(tmp_path, truncate="train-images-idx3-ubyte")
    with pytest.raises(CorruptDatasetError,
                       match=r"train-images-idx3-ubyte\.gz: truncated.*apt-get install "
                             r"--reinstall dataset-fashion-mnist"):
        load_data(DataConfig(root=str(d), val_size=5))


def test_env_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APQ_ARTIFACTS", "rel/art")
    root = ArtifactStore().root
    assert root.is_absolute() and root == tmp_path / "rel" / "art"
    assert ArtifactStore("x").root == tmp_path / "x"
    monkeypatch.setenv("APQ_RESULTS_DIR", "res")
    assert artifacts.env_path("APQ_RESULTS_DIR", "/r") == tmp_path / "res"


# --------------------------------------------------------------------------- keys (13)
def _candidates(value, rules):
    """Other valid-looking values of a field, from its type and declared rules."""
    choices = list(rules.get("choices", ()))
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, str):
        return [c for c in choices if c != value] or [value + "x"]
    if isinstance(value, int):
        return [c for c in choices if c != value] + [value + 1, value * 2, value - 1, 1, 7]
    if isinstance(value, float):
        return [value * 0.5, value * 1.5 or 0.5, 0.5, value + 0.1]
    if value is None:
        return [3, 7, 100, 0.5, "/elsewhere"]
    if isinstance(value, dict):
        return [{"01_supernet": {"force": True}}]
    if isinstance(value, list):
        if value and isinstance(value[0], Phase):
            return [[dataclasses.asdict(value[0]) | {"epochs": value[0].epochs + 1}]
                    + [dataclasses.asdict(p) for p in value[1:]]]
        out = [value[:-1], value + value[-1:]] if value else []
        out += [[c for c in choices if c not in value] + value] if choices else []
        if value and isinstance(value[0], (int, float)) and not isinstance(value[0], bool):
            out += [[x * 2 for x in value], [x + 1 for x in value], value[:1],
                    [value[0] + 1] + value[1:], value[:-1] + [value[-1] - 1]]
        out += [[c] + value[1:] for c in choices if value and c != value[0]]
        if not value:
            out += [[0.5], [3], ["latency"]]
        return out
    raise TypeError(value)


def _perturbed_profiles():
    base = load_profile("smoke")
    out = {}
    for dotted in leaf_fields(Profile):
        *sec, name = dotted.split(".")
        obj = base
        for s in sec:
            obj = getattr(obj, s)
        f = {x.name: x for x in dataclasses.fields(obj)}[name]
        value = getattr(obj, name)
        for cand in _candidates(value, field_rules(f)):
            try:
                prof = load_profile("smoke", {dotted: cand})
            except ConfigError:
                continue
            if prof.to_dict() != base.to_dict():
                out[dotted] = prof
                break
    return base, out


def test_every_field_a_stage_reads_changes_its_key_and_no_other_does():
    base, perturbed = _perturbed_profiles()
    fields = leaf_fields(Profile)
    missed = sorted(set(fields) - set(perturbed))
    assert not missed, f"no valid other value found for {missed}"
    stages = {s for s in STAGE_KEYS if not s.startswith("t_")}    # every declared stage
    assert {"supernet", "predictor_fp32_pairs", "predictor_quant_pairs", "predictor"} <= stages
    for stage in sorted(stages):
        spec = STAGE_KEYS[stage]
        reads = set(spec.fields(base))
        k0 = spec.key(base)
        changed = {d for d, prof in perturbed.items() if spec.key(prof) != k0}
        assert changed == reads, (stage, sorted(changed ^ reads))
        assert not any(d.endswith(("threads", "workers", "log_every")) for d in reads)
    # the keys the pipeline uses are these keys
    assert artifacts.config_key(sn.supernet_artifact_config(base)) == \
        STAGE_KEYS["supernet"].key(base)
    p2 = perturbed["predictor.lr"]
    assert pp.predictor_artifact_key(p2, "s") != pp.predictor_artifact_key(base, "s")
    p3 = perturbed["predictor.workers"]
    assert pp.predictor_artifact_key(p3, "s") == pp.predictor_artifact_key(base, "s")


def test_stage_key_rejects_a_skip_it_does_not_read():
    from apq_lib.artifacts import StageKey
    with pytest.raises(ValueError, match="names no field"):
        StageKey("t_bad_skip", 1, reads=("seed",), skip=("space.stem_width",)).fields(
            load_profile("smoke"))
    STAGE_KEYS.pop("t_bad_skip", None)


# --------------------------------------------------------------------------- bad input
def test_duplicate_key_in_a_profile_is_refused_naming_the_line(tmp_path):
    p = tmp_path / "params_dup.yaml"
    p.write_text("seed: 0\nseed: 7\n")
    with pytest.raises(ConfigError, match=r"line 2: key 'seed' appears twice.*line 1"):
        load_profile(str(p))


def test_alias_bomb_is_refused_before_expanding(tmp_path):
    """Billion laughs: nine levels of aliases, refused at the first alias, in bounded time
    and memory (nothing is expanded)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    p = tmp_path / "params_bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"line 2: alias \*a0"):
        load_profile(str(p))


@pytest.mark.parametrize("override, key", [({"seed": 2 ** 70}, "seed"),
                                           ({"baselines.prune_ratios": []},
                                            "baselines.prune_ratios"),
                                           ({"space.num_classes": 1}, "space.num_classes")])
def test_out_of_range_values_are_named_up_front(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_profile("smoke", override)


def _fmnist_files(tmp_path, train_labels=None, n_train=300):
    import gzip

    import numpy as np

    def write(path, arr):
        arr = np.asarray(arr, dtype=np.uint8)
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.tobytes())

    rng = np.random.default_rng(0)
    d = tmp_path / "fm"
    d.mkdir()
    write(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write(d / "train-labels-idx1-ubyte.gz",
          np.arange(300) % 10 if train_labels is None else train_labels)
    write(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    write(d / "t10k-labels-idx1-ubyte.gz", np.arange(50) % 10)
    return d


def test_corrupted_label_byte_is_an_error_not_a_bigger_dataset(tmp_path):
    import numpy as np

    from apq_lib.config import DataConfig
    from apq_lib.data import load_data
    labels = np.arange(300) % 10
    labels[17] = 255
    d = _fmnist_files(tmp_path, labels)
    with pytest.raises(ValueError, match=r"label 255 of image 17 is outside 0\.\.9"):
        load_data(DataConfig(root=str(d), val_size=50, download=False))


def test_labels_of_another_split_beside_the_images_are_refused(tmp_path):
    from apq_lib.config import DataConfig
    from apq_lib.data import load_data
    d = _fmnist_files(tmp_path, n_train=200)         # 300 labels for 200 images
    with pytest.raises(ValueError, match="200 images but 300 labels"):
        load_data(DataConfig(root=str(d), val_size=50, download=False))


def test_unreadable_image_in_an_imagefolder_is_named(tmp_path):
    import numpy as np
    from PIL import Image

    from apq_lib.config import DataConfig
    from apq_lib.data import load_data
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
                    tmp_path / split / c / f"{i}.png")
    bad = tmp_path / "train" / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:20])            # truncated
    b = load_data(DataConfig(dataset="imagefolder", root=str(tmp_path), val_size=2,
                             image_size=8))
    with pytest.raises(ValueError, match=r"1\.png: cannot be read as an image"):
        [b.train.dataset[i] for i in range(len(b.train.dataset))]


# --------------------------------------------------------------------------- 7. tampering
def test_hand_edited_results_are_detected_and_not_laundered(tmp_results):
    import numpy as np

    from apq_lib.artifacts import ResultMismatchError
    from apq_lib.notebook import start
    from apq_lib.paper_results import _csv
    from apq_lib.results import read_summary, write_summary
    ctx = start("01_supernet", "smoke", {}, False)
    p = write_summary(ctx, {"largest_top1": 71.5, "smallest_top1": 60.0,
                            "random_macs_spearman": 0.8, "train_seconds": 12.0})
    ctx.finish()
    assert read_summary(tmp_results, "01_supernet")["largest_top1"] == 71.5
    recorded = json.loads((tmp_results / "manifest.json").read_text())["files"]
    p.write_text(p.read_text().replace("71.5", "77.7777"))          # edited by hand
    msg = (r"01_summary\.json differs from what notebook 01_supernet recorded in .*"
           r"manifest\.json.*rerun notebook 01_supernet")
    with pytest.raises(ResultMismatchError, match=msg):
        read_summary(tmp_results, "01_supernet")
    ctx2 = start("02_hardware", "smoke", {}, False)
    with pytest.raises(ResultMismatchError, match=msg):
        ctx2.read_json("01_summary.json", "01_supernet")
    (tmp_results / "bench").mkdir()
    (tmp_results / "bench" / "step.csv").write_text("a\n1\n")     # no notebook prefix
    ctx2.write_json("02_summary.json", {"lut": {}})
    ctx2.finish()                       # a later notebook does not re-record 01's file
    after = json.loads((tmp_results / "manifest.json").read_text())["files"]
    assert after["data/01_summary.json"] == recorded["data/01_summary.json"]
    assert "data/02_summary.json" in after and "bench/step.csv" in after
    with pytest.raises(ResultMismatchError, match=msg):
        read_summary(tmp_results, "01_supernet")
    # the CSV / npz readers of notebooks 05 and 06
    ctx4 = start("04_search", "smoke", {}, False)
    csv = ctx4.out("data", "04_search.csv")
    atomic_write(csv, "method,top1\nAPQ,70.1\n")
    np.savez(ctx4.out("data", "04_correct.npz"), m0=np.ones(4, bool))
    ctx4.finish()
    ctx5 = start("05_baselines", "smoke", {}, False)
    assert ctx5.read_csv("04_search.csv", "04_search")["top1"].tolist() == [70.1]
    assert ctx5.load_npz("04_correct.npz", "04_search")["m0"].all()
    csv.write_text("method,top1\nAPQ,77.7777\n")
    npz = tmp_results / "data" / "04_correct.npz"
    np.savez(npz, m0=np.zeros(4, bool))
    for read in (lambda: ctx5.read_csv("04_search.csv", "04_search"), lambda: _csv(csv)):
        with pytest.raises(ResultMismatchError, match=r"04_search\.csv differs from what "
                           r"notebook 04_search recorded.*rerun notebook 04_search"):
            read()
    with pytest.raises(ResultMismatchError, match=r"04_correct\.npz differs.*04_search"):
        ctx5.load_npz("04_correct.npz", "04_search")
    # a file its notebook never recorded (it did not finish) is refused too
    ctx5.write_json("05_summary.json", {"search_cost": {}})
    with pytest.raises(ResultMismatchError, match=r"05_summary\.json is not recorded.*"
                       r"notebook 05_baselines did not finish"):
        read_summary(tmp_results, "05_baselines")


def test_no_manifest_means_no_check(tmp_results):
    from apq_lib.notebook import start
    from apq_lib.results import read_summary, write_summary
    ctx = start("05_baselines", "smoke", {}, False)
    write_summary(ctx, {"search_cost": {"APQ": 1.0}})
    assert not (tmp_results / "manifest.json").exists()
    assert read_summary(tmp_results, "05_baselines")["search_cost"] == {"APQ": 1.0}


# --------------------------------------------------------------------------- 8. notebooks:
def _profile_with(tmp_path, notebooks: str) -> Path:
    text = (ROOT / "env" / "params_smoke.yaml").read_text()
    assert "\nnotebooks: {}\n" in text
    p = tmp_path / "params_nb.yaml"
    p.write_text(text.replace("\nnotebooks: {}\n", f"\nnotebooks: {notebooks}\n"))
    return p


def test_misspelt_notebook_in_profile_is_refused_listing_the_names(tmp_path):
    p = _profile_with(tmp_path, "{04_serach: {force: true}}")
    with pytest.raises(ConfigError, match=r"notebooks\.04_serach: no such notebook; the "
                       r"chain's notebooks are 01_supernet, .*04_search, .*08_sparsity"):
        load_profile(str(p))


def test_invalid_notebook_override_fails_at_load_naming_notebook_and_key(tmp_path,
                                                                        tmp_results,
                                                                        monkeypatch):
    from apq_lib.runner import run_chain
    monkeypatch.setenv("APQ_PROGRESS", "text")      # run_chain sets it for its kernels
    p = _profile_with(tmp_path, "{04_search: {overrides: {search.population: -3}}}")
    msg = r"notebooks\.04_search\.overrides: search\.population: .*-3"
    with pytest.raises(ConfigError, match=msg):
        load_profile(str(p))
    with pytest.raises(SystemExit, match=msg):       # before notebook 01 starts
        run_chain(str(p), tmp_path / "executed")
    ok = _profile_with(tmp_path, "{04_search: {overrides: {search.population: 30}}}")
    assert load_profile(str(ok)).notebooks["04_search"]["overrides"] == {
        "search.population": 30}


# --------------------------------------------------------------------------- 9. smaller ones
def test_read_only_results_dir_fails_at_start_naming_it(tmp_results, monkeypatch):
    from apq_lib.notebook import ResultsNotWritableError, start
    (tmp_results / "data").mkdir(parents=True)
    os.chmod(tmp_results / "data", 0o555)
    if os.geteuid() == 0:               # root writes anyway: refuse as a read-only mount would
        real_open = os.open

        def read_only(path, flags, *a, **kw):
            writes = flags & (os.O_WRONLY | os.O_RDWR)
            if writes and str(path).startswith(str(tmp_results / "data")):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *a, **kw)
        monkeypatch.setattr(os, "open", read_only)
    try:
        with pytest.raises(ResultsNotWritableError, match=rf"results dir {tmp_results} is not "
                           rf"writable \(Permission denied: {tmp_results / 'data'}/.*"
                           rf"APQ_RESULTS_DIR"):
            start("02_hardware", "smoke", {}, False)
    finally:
        os.chmod(tmp_results / "data", 0o755)


def test_supernet_trainer_lock_is_an_flock(tmp_path, monkeypatch):
    import fcntl
    lock = tmp_path / "train.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)          # held, as by a live trainer that has not yet
    os.write(fd, b"999999999")              # written its pid (here: a pid no process has)
    monkeypatch.setattr(sn, "_train_phases", lambda *a: {"trained": True})
    try:
        with pytest.raises(RuntimeError, match=rf"{tmp_path} is being trained by process "
                           rf"999999999"):
            sn.train_supernet(None, None, None, tmp_path, device="cpu")
    finally:
        os.close(fd)                        # the holder exits: the lock goes with it
    lock.write_text(str(os.getppid()))      # a live pid left in the file holds nothing
    assert sn.train_supernet(None, None, None, tmp_path, device="cpu") == {"trained": True}
    assert not lock.exists()                # not left in the published artifact


def _fake_chain(monkeypatch, interrupt_at=None, kernel_side=False):
    """papermill's execute_notebook replaced: records the notebooks, Ctrl-C in one."""
    import papermill
    ran = []

    def execute(src, dst, **kw):
        nb = Path(src).stem
        if nb == interrupt_at:
            if kernel_side:
                raise papermill.PapermillExecutionError(3, 1, "train()", "KeyboardInterrupt",
                                                        "", [])
            raise KeyboardInterrupt
        ran.append(nb)
        Path(dst).write_text("{}")
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setenv("APQ_PROGRESS", "text")      # run_chain sets it for its kernels
    return ran


def test_second_chain_on_the_same_results_is_refused_naming_the_first(tmp_results,
                                                                      monkeypatch):
    import fcntl

    from apq_lib.runner import run_chain
    ran = _fake_chain(monkeypatch)
    tmp_results.mkdir(parents=True)
    fd = os.open(tmp_results / ".chain.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)                  # a first chain, still running
    os.write(fd, b"4242")
    try:
        with pytest.raises(SystemExit, match=rf"another chain \(process 4242\) is running on "
                           rf"{tmp_results}: wait for it.*executed/ copies"):
            run_chain("smoke", tmp_results / "executed", ["01"])
        assert ran == []
    finally:
        os.close(fd)
    run_chain("smoke", tmp_results / "executed", ["01"])    # the first one is gone
    assert ran == ["01_supernet"]


@pytest.mark.parametrize("kernel_side", [False, True])
def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_results, monkeypatch, capsys,
                                                     kernel_side):
    from apq_lib.runner import main
    ran = _fake_chain(monkeypatch, "03_predictor", kernel_side)
    with pytest.raises(SystemExit) as e:
        try:
            main(["reproduce", "--profile", "smoke", "--only", "01", "02", "03", "04"])
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C escaped as a raw KeyboardInterrupt (a traceback)")
    assert e.value.code == 130 and ran == ["01_supernet", "02_hardware"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert re.fullmatch(
        r"\[reproduce\] interrupted in 03_predictor; kept: 01_supernet, 02_hardware finished "
        r"\(results and manifest written\), every completed stage cached in .* \(reused, not "
        r"recomputed\); resume with the same command: python -m apq_lib.runner reproduce "
        r"--profile smoke --only 01 02 03 04", err[0]), err[0]


def test_after_a_torn_manifest_no_file_is_vouched_for(tmp_results):
    from apq_lib.artifacts import ResultMismatchError
    from apq_lib.notebook import start
    from apq_lib.results import read_summary, write_summary
    ctx = start("05_baselines", "smoke", {}, False)
    write_summary(ctx, {"search_cost": {"APQ": 1.0}})
    ctx.finish()
    (tmp_results / "manifest.json").write_text('{"files": {"data/05_su')
    ctx6 = start("06_paper_tables", "smoke", {}, False)
    with pytest.warns(UserWarning, match="manifest.json is corrupted"):
        ctx6.finish()
    with pytest.raises(ResultMismatchError, match=r"05_summary\.json is not recorded.*rerun "
                       r"notebook 05_baselines"):
        read_summary(tmp_results, "05_baselines")
