"""Pin model entries to commits: rewrite ``revision:`` in ``conf/model/*.yaml`` to a commit SHA.

Needs hub access (run it once on a machine that has it, and commit the result). Every dump also
records the commit it actually loaded (``config._commit_hash``), pinned or not.

Abstract entries (``hf-base.yaml``, ``zoo-base.yaml``: no concrete ``source``, or ``???``) and
entries with a local source are skipped. An entry whose tokenizer lives in its own repository
(``tokenizer:``, e.g. OpenELM's Llama-2 tokenizer) gets that repository's commit in
``tokenizer_revision:``, never the model's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import yaml

from diff_erank.config import ConfigError

Resolver = Callable[[str, str | None], str]


def set_key(text: str, key: str, value: str) -> str:
    """The YAML text with its top-level ``key:`` set to ``value`` (comments and order kept)."""
    pattern = re.compile(rf"^{re.escape(key)}:.*$", re.M)
    if pattern.search(text):
        return pattern.sub(f"{key}: {value}", text, count=1)
    return text.rstrip("\n") + f"\n{key}: {value}\n"


def set_revision(text: str, sha: str) -> str:
    """The YAML text with its top-level ``revision:`` set to ``sha`` (comments kept)."""
    return set_key(text, "revision", sha)


def resolve(source: str, revision: str | None) -> str:
    """The commit of a hub model repository at ``revision`` (``main`` when unset)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(source, revision=revision or "main").sha
    except Exception as exc:
        raise ConfigError(
            f"cannot resolve {source}@{revision or 'main'} on the hub ({type(exc).__name__}): "
            "pinning needs hub access (and HF_TOKEN for a gated repository)"
        ) from None


def _concrete_hub_id(value) -> bool:
    if not isinstance(value, str) or not value or value == "???":
        return False
    return not value.startswith(("/", "./", "../", "~")) and not Path(value).exists()


def pin_file(path: str | Path, resolver: Resolver = resolve) -> dict[str, str] | None:
    """Pin one entry file; returns ``{field: sha}`` written, or ``None`` for an entry skipped
    (abstract, or a local source: nothing on the hub to pin)."""
    path = Path(path)
    text = path.read_text()
    entry = yaml.safe_load(text) or {}
    if not _concrete_hub_id(entry.get("source")):
        return None
    pinned = {"revision": resolver(entry["source"], entry.get("revision"))}
    if _concrete_hub_id(entry.get("tokenizer")):
        pinned["tokenizer_revision"] = resolver(entry["tokenizer"], entry.get("tokenizer_revision"))
    for key, sha in pinned.items():
        text = set_key(text, key, sha)
    path.write_text(text)
    return pinned
