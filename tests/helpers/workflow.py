"""The real Snakemake command line on the repository's Snakefile, and what a run folder holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake_cmd(
    workdir: Path, *args: str, overrides: str | list[str] = "[experiment=ci]", config: list[str] | None = None
) -> list[str]:
    """The real Snakemake command line; a list of overrides goes through a --configfile (any quoting).

    ``config`` gives plain ``--config`` pairs instead (``experiment=ci``, ``layers=[first,last]``).
    """
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    cmd += list(args)  # before --config, which takes every word after it
    if config is not None:
        cmd += ["--config", *config]
    elif isinstance(overrides, list):
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "overrides.yaml"
        cfg.write_text(json.dumps({"overrides": overrides}))
        cmd += ["--configfile", str(cfg)]
    else:
        cmd += ["--config", f"overrides={overrides}"]
    return cmd


def snakemake_env(env: dict | None = None) -> dict:
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def snakemake(
    workdir: Path,
    *args: str,
    overrides: str | list[str] = "[experiment=ci]",
    config: list[str] | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI and wait for it."""
    cmd = snakemake_cmd(workdir, *args, overrides=overrides, config=config)
    return subprocess.run(cmd, capture_output=True, text=True, env=snakemake_env(env), timeout=1200)


def texts_of(run_dir: Path, model: str, dataset: str):
    """The prepared texts a run folder's eRank table was measured on (they live in the shared cache,
    <results_dir>/cache/texts/<key>.parquet; the table's provenance names the file)."""
    import pandas as pd

    from diff_erank.storage import read_provenance

    prov = read_provenance(run_dir / "erank" / model / dataset / "trained.parquet")
    return pd.read_parquet(run_dir.parents[1] / prov["dump_provenance"]["texts"])


def zoo_model_dir(model: str, overrides: list[str] | None = None) -> str:
    """Where a run trains a zoo model, relative to its working directory: in the shared cache under
    the key of its recipe (``results/cache/demo/<corpus key>/zoo/<model key>``), not in the run folder."""
    from diff_erank.cache import corpus_root, zoo_key
    from diff_erank.config import load_config

    cfg = load_config(REPO / "conf", overrides or ["experiment=ci"])
    return f"{corpus_root(cfg)}/zoo/{zoo_key(cfg, model)}"
