"""Provenance stamped beside every result: config, versions, seeds, git revision, host, time.

A number without the code and config that made it cannot be trusted or re-made, so every table,
figure and dump the pipeline writes carries this record (in parquet metadata or a JSON sidecar).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGES = ("diff-erank", "torch", "transformers", "tokenizers", "datasets", "numpy", "pandas", "snakemake")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@lru_cache(maxsize=1)
def git_revision(start: str | None = None) -> dict[str, Any]:
    """Commit of the checkout the code runs from (and whether it had uncommitted changes)."""
    where = Path(start or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def provenance(config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The record for one result file; ``extra`` holds step-specific facts (seeds, inputs)."""
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "versions": package_versions(),
        "git": git_revision(),
        "env": {
            k: os.environ[k]
            for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "CUDA_VISIBLE_DEVICES")
            if k in os.environ
        },
    }
    if config is not None:
        record["config"] = config
    record.update(extra)
    return record
