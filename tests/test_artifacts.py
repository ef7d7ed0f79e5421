"""Content-addressed artifacts: keys, corruption detection, resume dir; the manifest."""
import datetime as dt
import json

import pytest
import torch

from apq_lib.artifacts import (
    ArtifactError,
    ArtifactStore,
    config_key,
    file_sha256,
    load_state,
    record_chain,
    save_state,
    update_manifest,
)
from apq_lib.config import load_profile


def _writer(calls):
    def fn(work):
        calls.append(work)
        (work / "a.txt").write_text("hello")
        save_state({"w": torch.arange(4.0)}, work / "w.safetensors", {"epoch": 3})
    return fn


def test_key_depends_on_config_and_inputs():
    assert config_key({"a": 1}) == config_key({"a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})
    assert config_key({"a": 1}, ["k1"]) != config_key({"a": 1}, ["k2"])
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})


def test_build_once_then_cached(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    a = store.build("stage", {"x": 1}, _writer(calls))
    b = store.build("stage", {"x": 1}, _writer(calls))
    assert len(calls) == 1 and a.key == b.key
    meta = json.loads((a.path / "meta.json").read_text())
    assert meta["files"]["a.txt"] == file_sha256(a.path / "a.txt")
    c = store.build("next", {"y": 1}, _writer(calls), inputs=[a])
    assert c.meta["inputs"] == [a.key]


def test_corrupted_file_is_detected_and_rebuilt(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    a = store.build("stage", {"x": 1}, _writer(calls))
    (a.path / "a.txt").write_text("tampered")
    with pytest.raises(ArtifactError, match="does not match"):
        store.verify("stage", a.key)
    with pytest.warns(UserWarning, match="rebuilt"):
        b = store.build("stage", {"x": 1}, _writer(calls))
    assert len(calls) == 2 and (b.path / "a.txt").read_text() == "hello"


def test_missing_file_and_partial_are_not_used(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    a = store.build("stage", {"x": 1}, _writer(calls))
    (a.path / "w.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        store.verify("stage", a.key)
    # a partial build (killed before meta.json) is never returned as complete
    key = config_key({"x": 2})
    (tmp_path / "stage" / key).mkdir(parents=True)
    assert store.get("stage", key) is None


def test_failed_build_keeps_partial_dir_for_resume(tmp_path):
    store = ArtifactStore(tmp_path)
    seen = []

    def flaky(work):
        seen.append(sorted(p.name for p in work.iterdir()))
        (work / "ckpt.txt").write_text("epoch 1")
        if len(seen) == 1:
            raise KeyboardInterrupt
        (work / "done.txt").write_text("ok")

    with pytest.raises(KeyboardInterrupt):
        store.build("train", {"e": 2}, flaky)
    art = store.build("train", {"e": 2}, flaky)
    assert seen == [[], ["ckpt.txt"]]          # second run found the checkpoint
    assert (art.path / "done.txt").exists()


def test_corrupted_checkpoint_raises_clear_error(tmp_path):
    p = tmp_path / "w.safetensors"
    save_state({"w": torch.ones(3)}, p, {"epoch": 1})
    state, md = load_state(p)
    assert torch.equal(state["w"], torch.ones(3)) and md == {"epoch": 1}
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(ArtifactError, match="delete it"):
        load_state(p)


def test_manifest_records_run(tmp_path):
    res = tmp_path / "results"
    (res / "data").mkdir(parents=True)
    (res / "data" / "01_summary.json").write_text("{}")
    cfg = load_profile("smoke")
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)
    m = update_manifest("01_supernet", cfg, t0, t0 + dt.timedelta(seconds=5), results_dir=res)
    on_disk = json.loads((res / "manifest.json").read_text())
    assert on_disk == m
    for k in ("git_commit", "git_dirty", "versions", "device", "profile", "params_hash",
              "files", "notebooks"):
        assert k in m
    assert m["profile"] == "smoke" and m["params_hash"] == cfg.params_hash()
    assert m["versions"]["torch"].startswith("2.")
    nb = m["notebooks"]["01_supernet"]
    assert nb["seconds"] == 5.0 and nb["seeds"] == {"seed": cfg.seed}
    assert m["files"]["data/01_summary.json"] == file_sha256(res / "data" / "01_summary.json")
    # a second notebook adds its entry and rehashes files
    (res / "data" / "02_summary.json").write_text("[]")
    m2 = update_manifest("02_hardware", cfg, t0, t0, results_dir=res)
    assert set(m2["notebooks"]) == {"01_supernet", "02_hardware"}
    assert "data/02_summary.json" in m2["files"]


def test_completed_lists_published_artifacts_and_chain_is_recorded(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    assert store.completed() == []
    a = store.build("stage", {"x": 1}, _writer([]))
    (tmp_path / "art" / "stage" / "deadbeef.partial").mkdir()      # unfinished work dir
    assert store.completed() == [f"stage/{a.key}"]
    res = tmp_path / "results"
    update_manifest("01_x", load_profile("smoke"), dt.datetime.now(), results_dir=res)
    record_chain({"seconds": 12.5, "artifacts_before": []}, res)
    m = json.loads((res / "manifest.json").read_text())
    assert m["chain"] == {"seconds": 12.5, "artifacts_before": []} and "01_x" in m["notebooks"]
