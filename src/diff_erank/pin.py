"""Pin model entries to commits: rewrite ``revision:`` in ``conf/model/*.yaml`` to a commit SHA.

Needs hub access (run it once on a machine that has it, and commit the result). Every dump also
records the commit it actually loaded (``config._commit_hash``), pinned or not.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from diff_erank.config import ConfigError

REVISION_LINE = re.compile(r"^revision:.*$", re.M)


def set_revision(text: str, sha: str) -> str:
    """The YAML text with its top-level ``revision:`` set to ``sha`` (comments kept)."""
    line = f"revision: {sha}"
    if REVISION_LINE.search(text):
        return REVISION_LINE.sub(line, text, count=1)
    return text.rstrip("\n") + f"\n{line}\n"


def resolve(source: str, revision: str | None) -> str:
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(source, revision=revision or "main").sha
    except Exception as exc:
        raise ConfigError(
            f"cannot resolve {source}@{revision or 'main'} on the hub ({type(exc).__name__}): "
            "pinning needs hub access"
        ) from None


def pin_file(path: str | Path, source: str | None = None, revision: str | None = None) -> str:
    path = Path(path)
    text = path.read_text()
    entry = yaml.safe_load(text) or {}
    source = source or entry.get("source")
    if not source:
        raise ConfigError(f"{path}: no source to pin (a base file or a zoo model?)")
    sha = resolve(source, revision or entry.get("revision"))
    path.write_text(set_revision(text, sha))
    return sha
