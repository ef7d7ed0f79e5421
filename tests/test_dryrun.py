"""``make dryrun`` in the unit suite: the imagenet profile's notebooks at 224 px on CPU,
starting from a random ``ofa`` supernet imported with ``apq-import-ofa``."""
import json
import os

import pytest

pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")

from apq_lib.config import load_profile  # noqa: E402
from apq_lib.dryrun import make_imagefolder, run_dryrun, write_profile  # noqa: E402

# notebooks the unit suite runs: 01-02 (~1.5 min: the import, 224-px data, the ProxylessNAS
# space, its cost tables). 03 is left out by default: with a random (untrained) supernet on
# a few synthetic images the held-out FP32 labels can tie, and its Kendall-tau check then
# fails. APQ_DRYRUN_ONLY="all" (or `make dryrun`) runs 01-08, "01 04" any subset.
_ONLY = os.environ.get("APQ_DRYRUN_ONLY", "01 02").split()
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
    assert (tmp_path / "executed" / "01_supernet.ipynb").exists()


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
