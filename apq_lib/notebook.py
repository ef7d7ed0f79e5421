"""What every notebook does first and last: load the profile, seed, pick the device, find
its inputs, write its outputs and record the run in ``results/manifest.json``."""
from __future__ import annotations

import datetime as _dt
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from . import artifacts
from .config import ConfigError, Profile, load_profile
from .quant import set_triton_mode
from .runtime import get_device, seed_everything

__all__ = ["NotebookContext", "start", "ParameterError", "ResultsNotWritableError"]


class ParameterError(ConfigError):
    """A notebook parameter (papermill ``-p``) has the wrong type; the message names it."""


class ResultsNotWritableError(PermissionError):
    """The results dir (or a folder in it) cannot be written; raised by :func:`start`."""


def check_writable(results: Path) -> None:
    """Create (if needed) and write-probe the results dir and every folder in it, so that a
    read-only one fails when the notebook starts, naming it, not at its first write."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        for d in [results, *sorted(p for p in results.iterdir() if p.is_dir())]:
            probe = d / f".write-test-{os.getpid()}.tmp"
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
            os.unlink(probe)
    except OSError as e:
        raise ResultsNotWritableError(
            f"results dir {results} is not writable ({e.strerror or e}: "
            f"{e.filename or results}); make it writable (e.g. chmod -R u+w {results}) or "
            f"set APQ_RESULTS_DIR to a writable dir, then run the notebook again") from None


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
        """Atomic, strict JSON (NaN / inf become an explicit ``null``)."""
        return artifacts.write_json(self.out("data", name), obj)

    def _input(self, name: str, notebook: str) -> tuple[Path, bytes]:
        """``results/data/<name>`` written by ``notebook``: its path and bytes, checked
        against the hash ``notebook`` recorded in the manifest (none: not checked)."""
        p = self.results / "data" / name
        if not p.exists():
            raise artifacts.MissingInputError(
                f"results/data/{name} is missing: run notebook {notebook} first "
                f"(make reproduce runs them in order)")
        return p, artifacts.verified_bytes(p, self.results)

    def read_json(self, name: str, notebook: str) -> Any:
        """Read ``results/data/<name>`` written by ``notebook``; missing, torn or edited
        after ``notebook`` recorded it → names the file and the notebook to rerun."""
        p, data = self._input(name, notebook)
        return artifacts.read_json_file(p, rerun=f"notebook {notebook}", data=data)

    def read_csv(self, name: str, notebook: str, **kw):
        """``pd.read_csv`` of a verified ``results/data/<name>`` (see :meth:`read_json`)."""
        return pd.read_csv(io.BytesIO(self._input(name, notebook)[1]), **kw)

    def load_npz(self, name: str, notebook: str):
        """``np.load`` (no pickles) of a verified ``results/data/<name>.npz``."""
        return np.load(io.BytesIO(self._input(name, notebook)[1]), allow_pickle=False)

    def save_npz(self, name: str, arrays: dict) -> Path:
        """``results/data/<name>`` as a compressed ``.npz`` of ``arrays`` (e.g. per-image
        correctness keyed by model id), written atomically."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        p = self.out("data", name)
        artifacts.atomic_write(p, buf.getvalue())
        return p

    def write_table(self, df, name: str, floatfmt: str = ".3g") -> Path:
        """Write ``df`` as ``results/tables/<name>.{csv,md,tex}`` (each atomically);
        returns the CSV path."""
        p = self.out("tables", name + ".csv")
        artifacts.atomic_write(p, df.to_csv(index=False))
        artifacts.atomic_write(p.with_suffix(".md"),
                               df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
        artifacts.atomic_write(p.with_suffix(".tex"), df.to_latex(
            index=False, float_format=lambda v: format(v, floatfmt), na_rep="--"))
        return p

    def savefig(self, fig, name: str) -> Path:
        """Save a figure as PNG and PDF under ``results/figures/`` (each atomically)."""
        p = self.out("figures", name if name.endswith(".png") else name + ".png")
        for path, kw in ((p, {"dpi": 130, "metadata": {"Software": None}}),
                         (p.with_suffix(".pdf"), {"metadata": {
                             "CreationDate": None, "ModDate": None, "Producer": None,
                             "Creator": None}})):
            buf = io.BytesIO()
            fig.savefig(buf, format=path.suffix[1:], bbox_inches="tight", **kw)
            artifacts.atomic_write(path, buf.getvalue())
        return p

    def finish(self, extra: Optional[dict] = None) -> dict:
        return artifacts.update_manifest(self.notebook, self.cfg, self.started,
                                         results_dir=self.results, extra=extra)


def start(notebook: str, profile: str = "default", overrides: Optional[dict] = None,
          force: bool = False) -> NotebookContext:
    """Load and validate the profile (unknown override keys are errors), seed everything.

    ``force`` must be a bool and ``overrides`` a mapping: ``papermill -p force false``
    passes the *string* ``'false'`` (write ``-p force False``), which would count as true."""
    if not isinstance(profile, str):
        raise ParameterError(f"profile: expected a profile name, got {profile!r}")
    if not isinstance(force, bool):
        raise ParameterError(f"force: expected True or False, got {type(force).__name__} "
                             f"{force!r} (papermill: -p force True / -p force False, "
                             f"capitalised; -p force false passes a string)")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ParameterError(f"overrides: expected a mapping such as "
                             f"{{'data.batch_size': 64}}, got {type(overrides).__name__} "
                             f"{overrides!r} (papermill: -y \"overrides: {{...}}\")")
    cfg = load_profile(profile, overrides)
    seed_everything(cfg.seed)
    set_triton_mode(cfg.quant.use_triton)   # fused kernels only with "always"
    ctx = NotebookContext(notebook, cfg, force, _dt.datetime.now())
    check_writable(ctx.results)
    return ctx
