"""Models and datasets fetched once, on a machine with the hub, for jobs that run offline.

Compute nodes of a cluster usually cannot reach the hub, and a download inside a GPU job spends
GPU time waiting and fills the home directory's ``~/.cache/huggingface``. With ``hf_home`` set (a
folder on project storage), ``diff-erank fetch`` (or ``snakemake fetch``, a local rule) downloads,
on the login node, every model of the experiment at its pinned revision (each ``rev-`` variant's
too, and a separate tokenizer repository) and every hub dataset into it; every job then runs with
``HF_HOME`` pointing there and the hub offline (:func:`job_env`), so a missing file is an error
that names it instead of a download.

Stdlib only at import: the Snakefile reads :func:`shell_prefix`; the download imports the hub.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diff_erank.errors import UserError
from diff_erank.overrides import looks_local
from diff_erank.variants import Variant, variants

log = logging.getLogger(__name__)

#: What makes transformers, huggingface_hub and datasets read only their cache.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
#: Bytes of one parameter in each entry dtype (the download size in `diff-erank plan`).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Files a model load reads; weights are chosen apart (safetensors, else .bin).
MODEL_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "tokenizer*", "vocab*", "merges*"]


class FetchError(UserError, RuntimeError):
    """A model or dataset that could not be fetched (the message names it and its revision)."""


def job_env(hf_home: str | Path) -> dict[str, str]:
    """The environment of every job when models and datasets were fetched into ``hf_home``."""
    return {"HF_HOME": str(Path(hf_home).resolve()), **OFFLINE}


def shell_prefix(hf_home: str | Path) -> str:
    """``export`` lines for Snakemake's ``shell.prefix`` (every job, local or on a compute node)."""
    return "".join(f"export {k}={shlex.quote(v)}; " for k, v in job_env(hf_home).items())


@dataclass(frozen=True)
class Download:
    """One thing to fetch: a model repository at a revision, or a hub dataset."""

    kind: str  # model | tokenizer | dataset
    repo: str
    revision: str | None
    bytes: int = 0  # estimated (models: params x dtype bytes); 0 where unknown
    source: str = ""  # a dataset's source entry, as JSON


def _is_hub(source: str | None) -> bool:
    return bool(source) and not looks_local(str(source))


def downloads(cfg: dict[str, Any]) -> list[Download]:
    """What an experiment reads from the hub: models (trained revision and each ``rev-`` variant),
    separate tokenizers, hub datasets and multimodal models; local entries and the zoo need nothing."""
    out: list[Download] = []
    for spec in cfg["models"].values():
        source = spec.get("source")
        if spec.get("train") or spec.get("gguf") or not _is_hub(source):
            continue
        size = int(float(spec.get("params") or 0) * DTYPE_BYTES.get(spec.get("dtype"), 4))
        loaded = [v for v in map(Variant.parse, variants(spec)) if v.made_from == "weights"]
        revs = [spec.get("revision")] + [v.source_revision(spec) for v in loaded]
        for rev in dict.fromkeys(revs):
            out.append(Download("model", source, rev, size))
        if spec.get("tokenizer") and _is_hub(spec["tokenizer"]):
            out.append(Download("tokenizer", spec["tokenizer"], spec.get("tokenizer_revision")))
    for spec in (cfg.get("multimodal") or {}).get("models", {}).values():
        if _is_hub(spec.get("source")):
            out.append(Download("model", spec["source"], spec.get("revision")))
    for spec in cfg["datasets"].values():
        src = spec["source"]
        entry = json.dumps(src, sort_keys=True)
        if src.get("kind") == "hub":
            out.append(Download("dataset", src["path"], src.get("revision"), 0, entry))
        elif '"hf://' in json.dumps(src.get("data_files")):  # files of a hub repository (wikipedia)
            out.append(Download("dataset", json.dumps(src["data_files"]).strip('"'), None, 0, entry))
    return list(dict.fromkeys(out))


def download_bytes(cfg: dict[str, Any]) -> tuple[int, int]:
    """``(model bytes, number of hub datasets)``: the size `plan` shows for the fetch step."""
    items = downloads(cfg)
    return sum(d.bytes for d in items), sum(d.kind == "dataset" for d in items)


def _weights(repo: str, revision: str | None) -> list[str]:
    """Safetensors where the repository has them, else PyTorch ``.bin`` (as models._load_weights)."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE:
        return ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json"]
    files = HfApi().list_repo_files(repo, revision=revision)
    if any(f.endswith(".safetensors") for f in files):
        return ["*.safetensors", "*.safetensors.index.json"]
    return ["*.bin", "*.bin.index.json"]


def fetch_one(d: Download) -> str:
    """Download one item into the current ``HF_HOME``; what it resolved to (a path or commit)."""
    try:
        if d.kind == "dataset":
            from diff_erank.data import load_rows
            from diff_erank.entries import DatasetSource

            rows = load_rows(DatasetSource.from_dict(json.loads(d.source)))
            return f"{len(rows)} rows"
        from huggingface_hub import snapshot_download

        patterns = MODEL_FILES + (_weights(d.repo, d.revision) if d.kind == "model" else [])
        return snapshot_download(d.repo, revision=d.revision, allow_patterns=patterns)
    except Exception as exc:  # the hub raises many types for "not there", "gated", "offline"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FetchError(
            f"cannot fetch {d.kind} {d.repo!r} at revision {d.revision!r}: {first} (check the entry's "
            "source and revision, accept a gated model's licence and `hf auth login`, then fetch again)"
        ) from None


def fetch(cfg: dict[str, Any], hf_home: str | Path) -> dict[str, str]:
    """Download everything :func:`downloads` lists into ``hf_home``; ``{item: where}``.

    ``HF_HOME`` must point at ``hf_home`` before the hub libraries are imported (they read it once):
    the command line sets it first thing.
    """
    home = str(Path(hf_home).resolve())
    if os.environ.get("HF_HOME") != home:
        raise FetchError(f"HF_HOME is {os.environ.get('HF_HOME')!r}, not {home}: use `diff-erank fetch`")
    done = {}
    for d in downloads(cfg):
        log.info("fetching %s %s at %s", d.kind, d.repo, d.revision)
        done[f"{d.kind} {d.repo}@{d.revision}"] = str(fetch_one(d))
    return done
