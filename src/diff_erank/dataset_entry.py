"""A resolved dataset entry, typed: built once from the decoded spec at the command line's edge.

The whole config is validated when it is composed (``config.validate``); a prepare job receives
one of its ``datasets`` entries. :meth:`DatasetEntry.from_spec` checks that entry against the
schema's own ``dataset`` definition (a spec written by hand, in a script or a test, gets the same
one-sentence :class:`~diff_erank.errors.ConfigError`) and gives the steps below it fields instead
of dict lookups. The decoded dict is kept as it came (``spec``): the prepared texts' provenance
records it, so their files stay byte-identical; cache keys are made from the config, not from
this object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from diff_erank.config import check_entry
from diff_erank.errors import ConfigError

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
