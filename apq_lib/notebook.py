"""What every notebook does first and last: load the profile, seed, pick the device, find
its inputs, write its outputs and record the run in ``results/manifest.json``."""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import artifacts
from .config import Profile, load_profile
from .runtime import get_device, seed_everything

__all__ = ["NotebookContext", "start"]


@dataclass
class NotebookContext:
    notebook: str
    cfg: Profile
    force: bool
    started: _dt.datetime
    store: artifacts.ArtifactStore = field(default_factory=artifacts.ArtifactStore)

    @property
    def device(self):
        return get_device(self.cfg.device)

    @property
    def results(self) -> Path:
        """``APQ_RESULTS_DIR`` when set (``make reproduce`` sets results/, ``make test`` build/),
        else the scratch dir ``build/lab/results``: interactive runs never overwrite the
        committed results. The scratch dir starts as a copy of the committed ``results/data``
        and manifest, so a notebook opened on its own finds its inputs."""
        if os.environ.get("APQ_RESULTS_DIR"):
            return Path(os.environ["APQ_RESULTS_DIR"])
        committed = artifacts.REPO_ROOT / "results"
        scratch = artifacts.REPO_ROOT / "build" / "lab" / "results"
        if not scratch.exists():
            import shutil
            scratch.mkdir(parents=True)
            if (committed / "data").is_dir():
                shutil.copytree(committed / "data", scratch / "data")
            if (committed / "manifest.json").is_file():
                shutil.copy2(committed / "manifest.json", scratch / "manifest.json")
            print(f"results go to the scratch dir {scratch} (a copy of results/data); set "
                  f"APQ_RESULTS_DIR={committed} to write the committed results")
        return scratch

    def out(self, sub: str, name: str) -> Path:
        """Path ``results/<sub>/<name>``; ``name`` must start with this notebook's number."""
        if not name.startswith(self.notebook[:2] + "_"):
            raise ValueError(f"results files are named after their notebook: {name!r} should "
                             f"start with {self.notebook[:2]}_")
        p = self.results / sub / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.out("data", name)
        p.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float))
        return p

    def read_json(self, name: str, notebook: str) -> Any:
        """Read ``results/data/<name>`` written by ``notebook``; missing → names it."""
        p = self.results / "data" / name
        if not p.exists():
            raise artifacts.MissingInputError(
                f"results/data/{name} is missing: run notebook {notebook} first "
                f"(make reproduce runs them in order)")
        return json.loads(p.read_text())

    def write_table(self, df, name: str, floatfmt: str = ".3g") -> Path:
        """Write ``df`` as ``results/tables/<name>.{csv,md,tex}``; returns the CSV path."""
        p = self.out("tables", name + ".csv")
        df.to_csv(p, index=False)
        p.with_suffix(".md").write_text(df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
        p.with_suffix(".tex").write_text(df.to_latex(index=False, float_format=lambda v: format(
            v, floatfmt), na_rep="--"))
        return p

    def savefig(self, fig, name: str) -> Path:
        """Save a figure as PNG and PDF under ``results/figures/``."""
        p = self.out("figures", name if name.endswith(".png") else name + ".png")
        fig.savefig(p, dpi=130, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(p.with_suffix(".pdf"), bbox_inches="tight",
                    metadata={"CreationDate": None, "ModDate": None, "Producer": None,
                              "Creator": None})
        return p

    def finish(self, extra: Optional[dict] = None) -> dict:
        return artifacts.update_manifest(self.notebook, self.cfg, self.started,
                                         results_dir=self.results, extra=extra)


def start(notebook: str, profile: str = "default", overrides: Optional[dict] = None,
          force: bool = False) -> NotebookContext:
    """Load and validate the profile (unknown override keys are errors), seed everything."""
    cfg = load_profile(profile, overrides)
    seed_everything(cfg.seed)
    from .quant import set_triton_mode
    set_triton_mode(cfg.quant.use_triton)   # fused kernels on CUDA unless "never"
    return NotebookContext(notebook, cfg, force, _dt.datetime.now())
