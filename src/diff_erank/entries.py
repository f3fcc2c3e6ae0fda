"""The entries a job reads, typed: a model entry and where its weights are (resolved once per
job), and a dataset entry.

A step gets its model entry as the dict the config composed (``--spec``: a whole entry, or the
part of one a dump reads, :meth:`diff_erank.cache.Keys.dump_spec`). :meth:`ModelEntry.from_spec`
checks it once against the schema's model entry and gives it typed fields; the dict itself stays
on the entry (``entry.spec``) because fingerprints, cache keys and provenance hash exactly that
dict, byte for byte. :meth:`ModelEntry.resolved` then finds where the weights are, once: the zoo
folder checked, a raw GGUF file found, the hub name or local revision folder and the tokenizer's
resolved (:class:`ModelSource`); the loaders take that, never the dict.

:func:`model_entry` builds an entry by hand (benchmarks, tests) with the defaults the config
gives a hub id or local folder (``conf/model/hf-base.yaml``). No torch here: the paths only.

A prepare job gets one ``datasets`` entry: :meth:`DatasetEntry.from_spec` checks it against the
schema's ``dataset`` definition and gives the steps below it fields instead of dict lookups; the
dict stays on it (``spec``) because the prepared texts' provenance records it, byte for byte.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from diff_erank.config import DEFAULT_CONF_DIR, check_entry, looks_local, schema
from diff_erank.errors import ConfigError
from diff_erank.storage import sha256
from diff_erank.variants import KINDS, Variant, init_scale

#: What every job that loads the model reads from its entry (the rest has a meaning when absent).
REQUIRED = ("dtype", "trust_remote_code", "max_length")


@lru_cache(maxsize=1)
def _entry_schema() -> dict[str, Any]:
    """The schema's definitions with its model entry relaxed to what a job's spec holds: a dump's
    spec is part of an entry (no labels, ``untrained`` only its ``init_scale``), and a benchmark may
    turn the loss off (``loss: false``, not a config key)."""
    defs = copy.deepcopy(schema()["$defs"])
    model = defs["model"]
    model.pop("required")
    model["properties"]["loss"] = {"type": "boolean"}
    for key in ("required", "if", "then", "else"):
        model["properties"]["untrained"].pop(key, None)
    return defs


@dataclass(frozen=True)
class ModelEntry:
    """One model entry (``models.<name>``), its fields typed; ``spec`` is the dict it was read from."""

    spec: Mapping[str, Any] = field(repr=False, compare=False)
    dtype: str | None = None  # REQUIRED ones: None only in an entry no model is loaded from (diff)
    trust_remote_code: bool = False
    max_length: int | None = None
    source: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    tokenizer_revision: str | None = None
    dump_dtype: str = "float32"
    min_tokens: int | None = None
    batch_tokens: int | None = None
    shard_texts: int | None = None
    store: str = "hidden"
    loss: bool = True
    family: str | None = None
    size: str | None = None
    params: float | None = None
    untrained: Mapping[str, Any] | None = None
    checkpoints: tuple[str, ...] = ()
    finetune: Mapping[str, Any] | None = None
    stage_labels: Mapping[str, str] | None = None
    shape: Mapping[str, int] | None = None
    resources: Mapping[str, Any] | None = None
    lm_eval: Mapping[str, Any] | None = None
    gguf: Mapping[str, Any] | None = None
    train: Mapping[str, Any] | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ModelEntry:
        """The entry of a spec dict; a field the schema does not know, or of the wrong type, is a
        ConfigError naming it."""
        given = {k: v for k, v in spec.items() if v is not None}  # a projection writes absent as null
        check_entry(given, "model", "model entry", _entry_schema())
        names = {f.name for f in fields(cls)} - {"spec"}
        typed = {k: v for k, v in given.items() if k in names}
        if "checkpoints" in typed:
            typed["checkpoints"] = tuple(str(c) for c in typed["checkpoints"])
        return cls(spec=spec, **typed)

    def updated(self, **changes: Any) -> ModelEntry:
        """This entry with some fields changed (the spec dict changes with them)."""
        return ModelEntry.from_spec({**self.spec, **changes})

    @property
    def init_scale(self) -> float | None:
        """``untrained.init_scale`` (:func:`diff_erank.variants.init_scale`)."""
        return init_scale(self.spec)

    def resolved(
        self, trained_path: str | None = None, variant_paths: Mapping[str, str] | None = None
    ) -> ModelSource:
        """Where this job's weights are (:class:`ModelSource`), found once.

        ``trained_path`` replaces the entry's source: a zoo model trained by the workflow, or a
        converted GGUF checkpoint. ``variant_paths`` maps an ``ft-<name>`` variant to the directory
        of its further-trained model.
        """
        missing = [k for k in REQUIRED if self.spec.get(k) is None]
        if missing:
            raise ConfigError(
                f"invalid model entry: {', '.join(missing)} not set (a model is loaded from it)"
            )
        source = trained_path or self.source
        if not source:
            raise ConfigError("model entry has no source and no trained path")
        if trained_path and self.train:  # a zoo model trained by the workflow (not a converted GGUF)
            check_trained_dir(trained_path)
        gguf = None
        if self.gguf and looks_local(source) and not (Path(source) / "config.json").is_file():
            gguf = Path(source).expanduser() / self.gguf["file"]  # the folder holding the raw file
        return ModelSource(
            entry=self,
            source=source,
            trained_path=trained_path,
            gguf=gguf,
            weights=None if gguf else resolve_source(source, self.revision),
            tokenizer=resolve_source(self.tokenizer, self.tokenizer_revision) if self.tokenizer else None,
            variant_paths=dict(variant_paths or {}),
        )


@dataclass(frozen=True)
class ModelSource:
    """Where one job's model entry loads from, resolved once (:meth:`ModelEntry.resolved`)."""

    entry: ModelEntry
    source: str  # the trained path, else the entry's source (hub id or local folder)
    trained_path: str | None  # a directory the workflow made: a zoo model, a converted GGUF
    gguf: Path | None  # the raw GGUF file, when the source is the folder holding it
    weights: tuple[str, str | None] | None  # the entry's (hub id or folder, hub revision); None: GGUF
    tokenizer: tuple[str, str | None] | None  # a tokenizer of its own (``tokenizer:``), resolved
    variant_paths: Mapping[str, str]  # ft-<name> -> its further-trained directory

    def weights_of(self, v: Variant) -> tuple[str, str | None]:
        """``(hub id or folder, hub revision)`` a variant's weights (or config) are read from."""
        if v.made_from == "stage":  # ft-<name>: another rule's output
            path = self.variant_paths.get(str(v))
            if not path:
                raise ConfigError(f"variant {v} needs the directory of the further-trained model")
            return resolve_source(path, None)
        if KINDS[v.kind].revision:  # rev-<revision>: that revision of the source
            return resolve_source(self.source, v.value)
        if self.weights is None:
            raise ConfigError(f"{self.source}: a raw GGUF file is read by its own loader")
        return self.weights


def resolve_source(source: str, revision: str | None) -> tuple[str, str | None]:
    """``(name_or_path, hub_revision)``; a local directory's revision is a sub-directory.

    The zoo stores checkpoints as ``<dir>/main``, ``<dir>/step0`` ..., mirroring Pythia's
    ``stepN`` revisions on the hub.
    """
    if not looks_local(source):
        return source, revision
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError(f"local model path does not exist: {path}")
    rev = revision or "main"
    if (path / rev).is_dir():
        return str(path / rev), None
    if rev == "main" and any((path / f).is_file() for f in ("config.json", "tokenizer_config.json")):
        return str(path), None
    raise ConfigError(
        f"local model {path} has no revision directory {rev!r}; "
        f"found {sorted(p.name for p in path.iterdir() if p.is_dir())}"
    )


def check_trained_dir(path: str | Path) -> None:
    """Refuse a zoo model directory that is not exactly what one finished training run wrote.

    ``training.json`` is written last and lists the checkpoints and the SHA-256 of every file
    under them; a directory missing a checkpoint or holding other bytes (two runs writing into
    one results folder, a copy cut short) would otherwise look done to Snakemake forever.
    """
    p = Path(path)
    try:
        record = json.loads((p / "training.json").read_text())
        expected = ["main", *record["training"]["checkpoints"]]
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        problem = "no complete training.json"
    else:
        missing = [d for d in expected if not (p / d / "config.json").is_file()]
        changed = [f for f, h in files.items() if not (p / f).is_file() or sha256(p / f) != h]
        problem = (
            f"missing checkpoint(s) {missing}"
            if missing
            else f"{len(changed)} file(s) differ from the ones trained, e.g. {changed[0]}"
            if changed
            else ""
        )
    if problem:
        raise ConfigError(
            f"zoo model {p} is incomplete ({problem}): delete it and rerun, or rerun with "
            "`snakemake --forcerun train`"
        )


def model_entry(source: str | Path, **overrides: Any) -> ModelEntry:
    """The entry the config composes for a hub id or local folder in a model list (``models=[...]``):
    ``conf/model/hf-base.yaml`` with this source, ``overrides`` on top (family and size default as
    :func:`diff_erank.overrides.entry_key` and the folder's size label)."""
    from diff_erank.overrides import entry_key, size_label

    text = str(source)
    base = yaml.safe_load((DEFAULT_CONF_DIR / "model" / "hf-base.yaml").read_text())
    spec = {
        **base,
        "source": text,
        "family": entry_key(text),
        "size": size_label(text),
        "params": None,
        **overrides,
    }
    return ModelEntry.from_spec(spec)


# --- a dataset entry ---------------------------------------------------------------------------

SourceKind = Literal["hub", "json", "jsonl", "parquet", "csv", "text", "demo"]


@dataclass(frozen=True)
class DatasetSource:
    """Where the rows come from: a hub dataset (``path``, ``name``, ``split``, ``revision``), local
    or ``hf://`` files (``data_files``: a path, a glob, a list or a split mapping) or a part of the
    demo corpus (``part``)."""

    kind: SourceKind
    path: str | None = None
    name: str | None = None
    split: str | None = None
    revision: str | None = None
    data_files: Any = None
    part: str | None = None

    @classmethod
    def from_dict(cls, source: Mapping[str, Any]) -> DatasetSource:
        try:
            return cls(**source)
        except TypeError as exc:  # a key the schema does not know
            raise ConfigError(f"dataset source {dict(source)!r}: {exc}") from None


@dataclass(frozen=True)
class Answer:
    """The correct choice of a multiple-choice row: ``choices`` (a path to a list, or one path per
    choice), ``key`` (a label looked up in ``labels``, or an index plus ``offset``)."""

    choices: str | tuple[str, ...]
    key: str
    labels: str | None = None
    offset: int = 0


@dataclass(frozen=True)
class TextRecipe:
    """How a row becomes a text: a ``field``, or a ``template`` (with ``answer``, and ``blank``
    replaced by it); rows with an empty ``nonempty`` field are not drawn."""

    field: str | None = None
    template: str | None = None
    nonempty: tuple[str, ...] = ()
    answer: Answer | None = None
    blank: str | None = None


@dataclass(frozen=True)
class Sampling:
    method: Literal["paper", "first", "all"]
    seed: int


@dataclass(frozen=True)
class SizeHint:
    texts: int | None = None
    mean_tokens: float | None = None


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a config (``conf/dataset/*.yaml``, resolved), with the dict it was built from."""

    source: DatasetSource
    text: TextRecipe
    max_texts: int | None
    sampling: Sampling
    description: str | None = None
    paper_name: str | None = None
    paper_variant: str | None = None
    measure: bool = True
    size_hint: SizeHint | None = None
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> DatasetEntry:
        """The entry of a decoded dataset spec; a field the schema refuses is a ConfigError."""
        check_entry(dict(spec), "dataset", "dataset entry")
        text = dict(spec["text"])
        answer = text.pop("answer", None)
        if answer is not None:
            choices = answer["choices"]
            answer = Answer(**{**answer, "choices": tuple(choices) if isinstance(choices, list) else choices})
        hint = spec.get("size_hint")
        return cls(
            source=DatasetSource.from_dict(spec["source"]),
            text=TextRecipe(**{**text, "nonempty": tuple(text.get("nonempty") or ()), "answer": answer}),
            max_texts=spec["max_texts"],
            sampling=Sampling(**spec["sampling"]),
            description=spec.get("description"),
            paper_name=spec.get("paper_name"),
            paper_variant=spec.get("paper_variant"),
            measure=spec.get("measure", True),
            size_hint=None if hint is None else SizeHint(**hint),
            spec=spec,
        )
