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

import contextlib
import glob
import hashlib
import os
from pathlib import Path
from typing import Any

from diff_erank.config import data_file_list, looks_local
from diff_erank.variants import TRAINED, Variant


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

    By what the variant's kind is made from (``variants.MadeFrom``): ``weights`` (``trained``,
    ``rev-<r>``): every file of its revision's directory (weights, config, tokenizer), or the file
    itself for a single-file source (GGUF); ``config`` (``init-s<seed>``): only the config it is
    built from (and the tokenizer's files). Zoo models and ``stage`` kinds (``ft-``) are outputs
    of other rules; a missing path is left to the loader's own error message.
    """
    out: list[str] = []
    tok = spec.get("tokenizer")
    if tok and looks_local(tok) and Path(tok).expanduser().is_dir():
        out += _files_in(Path(tok).expanduser())
    source = spec.get("source")
    v = Variant.parse(variant)
    if not source or spec.get("train") or v.made_from == "stage" or not looks_local(source):
        return out
    root = Path(source).expanduser()
    if root.is_file():
        return [*out, str(root)]
    rev = v.source_revision(spec) or "main"
    folder = root / rev if (root / rev).is_dir() else root
    files = _files_in(folder)
    if v.made_from == "config":
        files = [f for f in files if Path(f).name == "config.json"]
    return [*out, *files]


def image_files(source: dict[str, Any]) -> list[str]:
    """A multi-modal dataset's local annotation file and every file of its image folder."""
    ann = source.get("annotations")
    out = [ann] if ann and not source.get("hub") and Path(ann).is_file() else []
    return [*out, *_files_in(Path(source["images"]).expanduser())]


# -- local files as cache keys: by content, never by spelling ----------------------------------------
#
# A key that holds a path as written gives two different files one cache entry (two checkouts that
# share results/cache, each with its own data/topics.jsonl) and one file two entries (a copied
# checkout, an absolute and a relative spelling). The SHA-256 of the bytes is what identifies a
# local input. Hashing is remembered per file under the cache (``<cache>/sha256/``), keyed by
# the file's path and its stat (device, inode, size, mtime and ctime in ns): ctime moves on every
# write, even when the mtime is set back, and the Snakefile is evaluated once per job on a cluster,
# so a large local model is hashed once, not once per job.


_SEEN: dict[str, str] = {}
#: Files a variant built from the config (init-s<seed>) does not read: its key holds the config and tokenizer.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


def _memo_name(path: Path, st: os.stat_result) -> str:
    facts = f"{path.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    return hashlib.sha256(facts.encode()).hexdigest()[:32]


def file_sha256(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """The SHA-256 of a file's bytes, remembered under ``memo_dir`` while its stat is unchanged."""
    path = Path(path).expanduser()
    st = path.stat()
    name = _memo_name(path, st)
    if name in _SEEN:  # one Snakefile evaluation keys every variant x dataset: hash each file once
        return _SEEN[name]
    memo = Path(memo_dir) / name if memo_dir else None
    if memo is not None:
        with contextlib.suppress(OSError):
            text = memo.read_text().strip()
            if len(text) == 64:
                _SEEN[name] = text
                return text
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    digest = _SEEN[name] = h.hexdigest()
    # best effort: a read-only cache only costs the hash again; nothing is created where no run has
    # made the cache yet (a dry run on a fresh checkout writes nothing)
    if memo is not None and memo.parent.parent.is_dir():
        with contextlib.suppress(OSError):
            memo.parent.mkdir(exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(digest + "\n")
            os.replace(tmp, memo)
    return digest


def files_identity(files: list[str], root: str | Path | None, memo_dir: str | Path | None) -> list[list[str]]:
    """``[[name, sha256], ...]``: each file by content, named relative to ``root`` (a folder's
    layout is part of what a loader reads) or by its base name; never by the path as written."""
    out = []
    for f in files:
        p = Path(f).expanduser()
        name = str(p.relative_to(root)) if root is not None and p.is_relative_to(root) else p.name
        out.append([name, file_sha256(p, memo_dir)])
    return out


def data_files_identity(data_files: Any, memo_dir: str | Path | None = None) -> Any:
    """A dataset's ``data_files`` with each local path (or glob) replaced by the content of what it
    names, in the same shape (a split mapping stays a mapping): the files' order is kept, since the
    rows are read in that order. ``hf://`` files stay as written (their repository is pinned by
    revision); a path that matches nothing stays as written (``prepare`` stops on it)."""
    if isinstance(data_files, dict):
        return {k: data_files_identity(v, memo_dir) for k, v in data_files.items()}
    if isinstance(data_files, list | tuple):
        return [data_files_identity(f, memo_dir) for f in data_files]
    f = str(data_files)
    if f.startswith("hf://"):
        return f
    matches = sorted(glob.glob(os.path.expanduser(f))) if glob.has_magic(f) else [f]
    found = [m for m in matches if Path(m).expanduser().is_file()]
    if not found:
        return {"missing": f}
    sums = [file_sha256(m, memo_dir) for m in found]
    return {"sha256": sums if glob.has_magic(f) else sums[0]}


def model_identity(spec: dict[str, Any], variant: str, memo_dir: str | Path | None = None) -> dict[str, Any]:
    """A local model entry's ``source`` and ``tokenizer`` by content (:func:`model_files`: the files
    the variant is loaded from); hub ids and zoo/GGUF entries are returned as they are."""
    out: dict[str, Any] = {}
    tok = spec.get("tokenizer")
    if tok and looks_local(tok) and Path(tok).expanduser().is_dir():
        root = Path(tok).expanduser()
        out["tokenizer"] = {"local": files_identity(_files_in(root), root, memo_dir)}
    source = spec.get("source")
    if source and looks_local(source) and not spec.get("train"):
        if spec.get("gguf"):  # the GGUF file's SHA-256 is in the entry itself: the folder is a place
            out["source"] = {"local": "gguf"}
        else:
            root = Path(source).expanduser()
            made_from = Variant.parse(variant).made_from
            loaded = variant if made_from == "weights" else TRAINED  # a stage: trained from it
            files = model_files({**spec, "tokenizer": None}, loaded)
            if made_from == "config":  # built from the config, tokenised by the folder's: no weights
                files = [f for f in files if not f.endswith(WEIGHT_SUFFIXES)]
            base = root if root.is_dir() else root.parent
            out["source"] = {"local": files_identity(files, base, memo_dir) or {"missing": source}}
    return out


def changed_trained_file(folder: str | Path, memo_dir: str | Path | None = None) -> str | None:
    """The first file of a finished zoo model folder whose bytes are not the ones its training
    recorded (``training.json``: the SHA-256 of every file), or None.

    Snakemake dates a directory output by its ``.snakemake_timestamp``, so an edit inside one (a
    zoo model's ``tokenizer.json``) would rerun nothing; the workflow checks this when it builds
    the DAG instead (hashes remembered by stat: a stat per file when nothing changed). A folder
    without a readable record is left to the check when a job resolves its model
    (:func:`diff_erank.entries.check_trained_dir`).
    """
    import json

    folder = Path(folder)
    try:
        files = json.loads((folder / "training.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file() or file_sha256(path, memo_dir) != digest:
            return name
    return None
