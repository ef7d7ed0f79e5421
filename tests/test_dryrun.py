"""``make dryrun`` in the unit suite: the imagenet profile's notebooks at 224 px on CPU,
starting from a random ``ofa`` supernet imported with ``apq-import-ofa``."""
import json
import os

import pytest

pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")

from apq_lib.config import load_profile  # noqa: E402
from apq_lib.dryrun import make_imagefolder, run_dryrun, write_profile  # noqa: E402

# notebooks the unit suite runs: all of 01-08 in one pass (~10 min on a shared 2-core box,
# see the README). APQ_DRYRUN_ONLY="01 04" runs a subset (later notebooks need the
# artifacts of earlier ones, so a subset starts at 01).
_ONLY = os.environ.get("APQ_DRYRUN_ONLY", "all").split()
ONLY = None if _ONLY == ["all"] else _ONLY


def test_dryrun_profile_is_the_imagenet_protocol_shrunk(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=1, val_per_class=1)
    cfg = load_profile(str(write_profile(tmp_path, data, tmp_path / "ckpt.pth")))
    ref = load_profile("imagenet")
    assert cfg.space == ref.space and cfg.space.image_size == 224
    assert cfg.space.num_classes == 1000 and cfg.data.dataset == "imagefolder"
    assert cfg.supernet.init_from == str(tmp_path / "ckpt.pth")


@pytest.mark.slow
def test_dryrun_chain(tmp_path, monkeypatch):
    for var in ("APQ_RESULTS_DIR", "APQ_ARTIFACTS"):
        monkeypatch.setenv(var, "")          # run_dryrun points them into tmp_path
    run_dryrun(tmp_path, ONLY)
    res = tmp_path / "results" / "data"
    s01 = json.loads((res / "01_summary.json").read_text())
    assert s01["largest_macs"] > 9e8          # the w1.3 space at 224 px (1.0 GMAC)
    ran = sorted(p.name.split("_")[0] for p in (tmp_path / "executed").glob("*.ipynb"))
    assert ran == (sorted(ONLY) if ONLY else [f"{i:02d}" for i in range(1, 9)])
    for nb in ran:                            # every notebook wrote its summary
        assert nb == "06" or (res / f"{nb}_summary.json").exists(), nb
    if "03" in ran:   # labels differ (a random head ties them all: rank statistics undefined)
        s03 = json.loads((res / "03_summary.json").read_text())
        assert s03["fp32_acc_std"] > 0 and s03["quant_acc_std"] > 0
    if "04" in ran:
        s04 = json.loads((res / "04_summary.json").read_text())
        assert s04["predicted_test_spearman"] is not None


def test_imagenet_space_corners_are_valid():
    """Under forbid_k7_a4 the largest corner at 4 bits lifts the 7x7 depthwise activations
    to the next bit choice (notebook 04 realises every corner); without it, unchanged."""
    from apq_lib.supernet.space import SearchSpace
    sp = SearchSpace(load_profile("imagenet").space)
    for b in sp.bit_choices:
        for cfg in sp.corners(b).values():
            assert sp.is_valid(cfg)
    big = sp.largest(4)
    assert set(big.dw_a) == {6} and set(big.pw_w) == set(big.pw_a) == set(big.dw_w) == {4}
    sd = SearchSpace(load_profile("default").space)
    assert not sd.cfg.forbid_k7_a4 and set(sd.largest(min(sd.bit_choices)).dw_a) == \
        {min(sd.bit_choices)}


def test_materialize_imagefolder_matches_its_loader(tmp_path):
    """The uint8 copy of an ImageFolder split (notebook 07) normalises to the same tensors."""
    import torch

    from apq_lib.data import load_data, materialize
    root = make_imagefolder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=2,
                            size=40)
    cfg = load_profile("imagenet", {"data.root": str(root), "data.image_size": 32,
                                    "data.val_size": 1, "data.num_workers": 0})
    data = load_data(cfg.data)
    ts = materialize(data.test)
    x, y = next(iter(data.loader("test", batch_size=len(data.test), shuffle=False)))
    assert ts.images.dtype == torch.uint8 and ts.images.shape == (4, 3, 32, 32)
    assert torch.equal(ts.labels, y)
    assert (ts.prepare(ts.images) - x).abs().max() < 1e-5
