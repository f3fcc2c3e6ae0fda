"""Dataset preparation: load rows with ``datasets``, make one text per row, sample, save.

A dataset entry (:class:`~diff_erank.entries.DatasetEntry`, built once from the job's
spec) says where the rows come from (hub id + config + split + revision, or local
files), how a text is made from a row (a field, or a template such as question + answer), which
rows to keep (non-empty fields) and how many to draw. The paper's recipe is
``random.seed(123); random.sample(rows, k)``; ``method: paper`` reproduces it index for index.
"""

from __future__ import annotations

import glob
import logging
import random
import re
import string
from pathlib import Path
from typing import Any

import pandas as pd

from diff_erank.config import ConfigError, data_file_list
from diff_erank.entries import Answer, DatasetEntry, DatasetSource, TextRecipe
from diff_erank.errors import UserError
from diff_erank.provenance import provenance
from diff_erank.storage import sha256, write_parquet

log = logging.getLogger(__name__)

LOCAL_BUILDERS = {"json": "json", "jsonl": "json", "parquet": "parquet", "csv": "csv", "text": "text"}
TEXT_KINDS = {"json", "jsonl", "csv", "text", "demo"}  # local kinds read as UTF-8 text


class DataError(UserError, RuntimeError):
    """A dataset that cannot be loaded or turned into texts; the message says which and why."""


def demo_corpus_file(results_root: str | Path, part: str) -> Path:
    """Where the demo corpus rule writes one part (kind ``demo`` datasets read it from there)."""
    return Path(results_root) / "corpus" / f"{part}.jsonl"


def load_rows(source: DatasetSource, results_root: str | Path = "."):
    """Rows of the dataset as a ``datasets.Dataset`` through the real ``datasets.load_dataset``."""
    import datasets

    kind = source.kind
    split = source.split or "train"
    if kind == "hub":
        path = source.path
        if not path:
            raise ConfigError("dataset source kind 'hub' needs 'path' (the hub id)")
        try:
            return datasets.load_dataset(
                path, source.name, split=split, revision=source.revision, data_files=source.data_files
            )
        except Exception as exc:  # the library raises many types for "cannot reach the hub"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"cannot load hub dataset {path!r} (config {source.name!r}, split {split!r}, "
                f"revision {source.revision!r}): {type(exc).__name__}: {first}. "
                "If this machine is offline, fetch it first on one with the hub (hf_home=<folder>, then "
                "`diff-erank fetch`), point the dataset at local files (kind json/parquet/...) "
                "or pre-populate the HF cache."
            ) from None
    if kind == "demo":
        files: Any = str(demo_corpus_file(results_root, source.part))
        builder = "json"
    else:
        files = source.data_files
        builder = LOCAL_BUILDERS[kind]
    for f in data_file_list(files):
        if f.startswith("hf://"):  # files in a hub repository: the library reads them
            continue
        if not Path(f).exists():
            raise DataError(f"dataset file does not exist: {f}")
        if Path(f).stat().st_size == 0:
            raise DataError(f"dataset file is empty: {f}")
        if kind in TEXT_KINDS:
            check_utf8(f)
    try:
        return datasets.load_dataset(builder, data_files=files, split=split)
    except Exception as exc:
        raise DataError(f"cannot read {builder} files {files!r}: {type(exc).__name__}: {exc}") from None


def check_utf8(path: str | Path, chunk: int = 1 << 20) -> None:
    """Raise a DataError naming the file and line if it is not valid UTF-8.

    ``datasets`` reads such bytes without complaint and fails only when a row is turned into
    Python strings, with a ``UnicodeDecodeError`` that names no file; checking first (streaming,
    whatever the size) gives one sentence that does.
    """
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    seen = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                at = seen + max(exc.start, 0)  # approximate by up to 3 bytes across a block edge
                with open(path, "rb") as g:
                    line = g.read(at).count(b"\n") + 1
                raise DataError(
                    f"dataset file is not valid UTF-8: {path} (line {line}); re-encode it as UTF-8"
                ) from None
            if not block:
                return
            seen += len(block)


def _get(row: dict[str, Any], path: str) -> Any:
    """A dotted path into a row: ``choices.text`` reads ``row["choices"]["text"]``."""
    value: Any = row
    for part in path.split("."):
        value = value[part]
    return value


def _answer(row: dict[str, Any], answer: Answer) -> str:
    """The correct choice of a multiple-choice row (question + correct answer as the text).

    ``choices`` is a path to a list, or a list of paths (one per choice); the answer is
    ``row[key]``, either a label looked up in ``labels`` (a path to the label list) or an index
    (an int or a digit string) plus ``offset`` (winogrande's answers are "1"/"2").
    """
    choices = answer.choices
    options = [_get(row, c) for c in choices] if isinstance(choices, tuple) else list(_get(row, choices))
    key = _get(row, answer.key)
    index = list(_get(row, answer.labels)).index(key) if answer.labels else int(key) + answer.offset
    return str(options[index])


def text_maker(recipe: TextRecipe, columns: list[str]):
    """A function row -> text, checked against the columns before any row is read."""
    field, template, answer, blank = recipe.field, recipe.template, recipe.answer, recipe.blank
    if (field is None) == (template is None):
        raise ConfigError("a dataset's text needs exactly one of 'field' or 'template'")
    parsed = list(string.Formatter().parse(template)) if template else []
    needed = [field] if field else [n for _, n, _, _ in parsed if n]
    if template and not all(n.isidentifier() for n in needed):
        # plain field names only: no attribute or index access from a config string
        raise ConfigError(f"template {template!r}: use plain {{field}} names, got {needed}")
    if any(spec or conv for _, n, spec, conv in parsed if n is not None):
        # `{text!r}` would quote every text and `{text:>5000000}` pad it: never what a text should be
        raise ConfigError(
            f"template {template!r}: conversions (!r, !s, !a) and format specs (:...) are not allowed; "
            "use plain {field} names"
        )
    if answer:
        needed = [n for n in needed if n != "answer"]
        paths = list(answer.choices) if isinstance(answer.choices, tuple) else [answer.choices]
        labels = [answer.labels] if answer.labels else []
        needed += [p.split(".")[0] for p in [*paths, answer.key, *labels]]
    needed += list(recipe.nonempty)
    missing = sorted(set(needed) - set(columns))
    if missing:
        raise ConfigError(f"text field(s) {missing} not in the dataset; its columns are {sorted(columns)}")

    def make(row: dict[str, Any]) -> str:
        if field:
            return "" if row[field] is None else str(row[field])
        values = {**row, "answer": _answer(row, answer)} if answer else row
        text = template.format(**values)
        return text.replace(blank, values["answer"], 1) if blank else text

    return make


def sample_indices(n: int, k: int | None, method: str, seed: int) -> list[int]:
    """Indices of the rows to keep, in the order they are drawn.

    ``paper``: ``random.seed(seed); random.sample(range(n), k)``, the same draw as the authors'
    ``random.sample(list(rows), k)``; ``first``: the first k; ``all``: every row.
    """
    if method == "all" or k is None or k >= n:
        if method == "paper" and k is not None and k > n:
            log.warning("asked for %d texts but only %d rows exist: taking all", k, n)
        return list(range(n))
    if method == "first":
        return list(range(k))
    if method == "paper":
        random.seed(seed)
        return random.sample(range(n), k)
    raise ConfigError(f"sampling.method {method!r}; valid choices: ['paper', 'first', 'all']")


def prepare_texts(entry: DatasetEntry, results_root: str | Path = ".") -> pd.DataFrame:
    """The sampled texts of one dataset entry: columns ``text_id`` (row in the source) and ``text``."""
    rows = load_rows(entry.source, results_root)
    make = text_maker(entry.text, list(rows.column_names))
    keep_fields = list(entry.text.nonempty)
    sampling = entry.sampling
    try:
        eligible = [
            i
            for i, row in enumerate(rows)
            # len > 0, whitespace-only kept: the paper's code filters dolly with len(context) > 0
            if all(row[f] is not None and len(str(row[f])) > 0 for f in keep_fields)
        ]
        chosen = sample_indices(len(eligible), entry.max_texts, sampling.method, sampling.seed)
        ids = [eligible[i] for i in chosen]
        texts = [make(rows[i]) for i in ids]
    except UnicodeDecodeError as exc:  # e.g. a parquet or hub file with invalid strings
        raise DataError(f"dataset {entry.spec['source']} holds text that is not valid UTF-8: {exc}") from None
    n_blank = sum(not t.strip() for t in texts)
    if n_blank:
        log.warning(
            "%d of %d texts are empty or whitespace only: the dump skips and counts them", n_blank, len(texts)
        )
    log.info("%d rows, %d eligible, %d sampled", len(rows), len(eligible), len(ids))
    df = pd.DataFrame({"text_id": pd.Series(ids, dtype="int64"), "text": pd.Series(texts, dtype="string")})
    df.attrs["n_eligible"] = len(eligible)  # the population drawn from (cache.check_prefix)
    return df


def prepare_to_file(entry: DatasetEntry, out: str | Path, results_root: str | Path = ".") -> pd.DataFrame:
    """The entry's texts written to ``out``, with the entry's spec as it came in the provenance."""
    df = prepare_texts(entry, results_root)
    if df.empty:
        raise DataError("the dataset yields no texts after filtering and sampling")
    write_parquet(
        df,
        out,
        provenance(
            dict(entry.spec),
            n_texts=len(df),
            n_eligible=df.attrs.get("n_eligible"),
            n_chars=[len(t) for t in df["text"].fillna("")],  # sizes the jobs (diff_erank.sizing)
            source_revision=source_revision(entry.source, results_root),
        ),
    )
    return df


def hub_dataset_commit(path: str, name: str | None, revision: str | None, data_files: Any = None) -> str:
    """The commit a hub dataset's ``revision`` resolves to, as ``datasets`` itself resolves it
    (``load_dataset_builder(...).hash`` is the commit of a hub repository, or of its cached copy)."""
    import datasets

    return datasets.load_dataset_builder(path, name, revision=revision, data_files=data_files).hash


def hub_repo_commit(repo_id: str, revision: str | None) -> str:
    """The commit of a dataset repository at ``revision`` (for ``hf://datasets/<repo>@<rev>/...`` files)."""
    from huggingface_hub import HfApi

    return HfApi().dataset_info(repo_id, revision=revision).sha


HF_URL = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/")


def source_revision(
    source: DatasetSource,
    results_root: str | Path = ".",
    dataset_commit=hub_dataset_commit,
    repo_commit=hub_repo_commit,
) -> dict[str, Any]:
    """What exactly was read, for the provenance: a hub dataset's resolved commit, the commit of
    each repository ``hf://`` files come from, and the SHA-256 of every local file. A lookup that
    fails is recorded as ``None`` with the reason (the texts are already made by then)."""

    def attempt(fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # provenance must not kill a finished preparation
            log.warning("cannot resolve the revision of %s: %s", args[0], exc)
            return None

    if source.kind == "hub":
        commit = attempt(dataset_commit, source.path, source.name, source.revision, source.data_files)
        return {"hub": source.path, "revision": source.revision, "commit": commit}
    files = (
        [str(demo_corpus_file(results_root, source.part))]
        if source.kind == "demo"
        else data_file_list(source.data_files)
    )
    out: dict[str, Any] = {"files": {}, "repos": {}}
    for f in files:
        m = HF_URL.match(f)
        if m:
            key = f"{m['repo']}@{m['rev'] or 'main'}"
            if key not in out["repos"]:
                out["repos"][key] = attempt(repo_commit, m["repo"], m["rev"])
        else:
            for path in sorted(glob.glob(f)) or [f]:
                out["files"][path] = sha256(path) if Path(path).is_file() else None
    return out
