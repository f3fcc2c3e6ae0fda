"""The local files a config entry reads, listed for Snakemake's ``input:`` so that editing one reruns.

Snakemake reruns a job when an input is newer than its output; a dataset file, a local model
directory or an image folder that a rule reads without listing it would leave stale tables
behind ("Nothing to be done"). Hub sources are fixed by their revision instead, and outputs of
other rules (the demo corpus, zoo models) are inputs already. Only files that exist are listed:
a missing one is left to the stage's own one-sentence error, and the DAG of an experiment whose
data is not on this machine still resolves (dry runs). Kept free of torch and pandas: the
Snakefile imports it.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from diff_erank.config import data_file_list, looks_local
from diff_erank.variants import Variant


def _files_in(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


def dataset_files(source: dict[str, Any]) -> list[str]:
    """A local dataset's existing files (globs expanded); none for the hub and the demo corpus."""
    if source["kind"] in ("hub", "demo") or not source.get("data_files"):
        return []
    out: list[str] = []
    for f in data_file_list(source["data_files"]):
        out += sorted(glob.glob(f)) if glob.has_magic(f) else [f] if Path(f).is_file() else []
    return out


def model_files(spec: dict[str, Any], variant: str) -> list[str]:
    """The files of a local model entry that a variant is loaded from.

    ``trained`` and ``rev-<r>``: every file of the revision's directory (weights, config,
    tokenizer), or the file itself for a single-file source (GGUF); ``init-s<seed>``: only the
    config it is built from (and the tokenizer's files). Zoo models and ``ft-`` stages are outputs
    of other rules; a missing path is left to the loader's own error message.
    """
    out: list[str] = []
    tok = spec.get("tokenizer")
    if tok and looks_local(tok) and Path(tok).expanduser().is_dir():
        out += _files_in(Path(tok).expanduser())
    source = spec.get("source")
    v = Variant.parse(variant)
    if not source or spec.get("train") or v.kind == "ft" or not looks_local(source):
        return out
    root = Path(source).expanduser()
    if root.is_file():
        return [*out, str(root)]
    rev = v.revision if v.kind == "rev" else spec.get("revision") or "main"
    folder = root / rev if (root / rev).is_dir() else root
    files = _files_in(folder)
    if v.kind == "init":
        files = [f for f in files if Path(f).name == "config.json"]
    return [*out, *files]


def image_files(source: dict[str, Any]) -> list[str]:
    """A multi-modal dataset's local annotation file and every file of its image folder."""
    ann = source.get("annotations")
    out = [ann] if ann and not source.get("hub") and Path(ann).is_file() else []
    return [*out, *_files_in(Path(source["images"]).expanduser())]
