"""Variant names: which weights of a model entry a measurement is of.

    trained          the entry's own weights (its ``revision``)
    init-s<seed>     a seeded ``from_config`` initialisation (``untrained.kind: random_init``)
    rev-<revision>   a named revision: Pythia's ``step0``, a zoo checkpoint (``checkpoints``)
    ft-<name>        the model further trained by the recipe ``finetune.<name>``

Each kind is one registration (:func:`register_kind`, :data:`KINDS`): how its names are written
(a prefix and the kind's one field), which of the entry's files it is made from, and which
variants of it a model entry lists. ``Variant.parse``, ``str(variant)``, :func:`variants`, the
rule inputs and cache identity of local files (``sources``) and the hub downloads (``hub``) all
read the registry; how a kind is loaded is registered beside the loaders
(``models.variant_loader``). A name is parsed once into a :class:`Variant`; ``str()`` gives the
name back unchanged, because names are in file paths, cache keys and tables. Which of them play
M0 is :func:`untrained_variants`.

Stdlib only, below ``config``: the Snakefile imports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from diff_erank.errors import ConfigError

#: The name of the trained model's variant.
TRAINED = "trained"
Model = dict[str, Any]
#: What a kind's weights are made from, which decides the local files it depends on:
#: ``weights`` the files of the entry's source at the variant's revision (rule inputs and cache
#: identity); ``config`` only what the model is built from: its config (rule input) and every file
#: but the weights (identity); ``stage`` a further-trained model, an output of another rule, made
#: from the trained weights (no rule input of its own; the trained files are its identity).
MadeFrom = Literal["weights", "config", "stage"]


@dataclass(frozen=True)
class VariantKind:
    """One kind of variant: its names are ``prefix`` + its one field written as ``str()`` (just
    ``prefix`` for a kind without a field)."""

    kind: str
    prefix: str
    field: str | None  # the field's name (``seed``, ``revision``, ``name``), in messages and attributes
    convert: Callable[[str], Any]  # the field from its text (a text ``str()`` does not give back: no name)
    made_from: MadeFrom
    revision: bool  # the field is a revision of the entry's source (its files are that revision's)
    listed: Callable[[Model], list[Any]]  # the fields of the variants of this kind an entry has

    def form(self) -> str:
        return self.prefix + (f"<{self.field}>" if self.field else "")

    def name(self, value: Any) -> str:
        return self.prefix + ("" if self.field is None else str(value))

    def value(self, text: str) -> Any:
        """The field the name ``text`` gives, or None when it is not a name of this kind."""
        if self.field is None or not text.startswith(self.prefix) or len(text) == len(self.prefix):
            return None
        raw = text[len(self.prefix) :]
        try:
            value = self.convert(raw)
        except ValueError:
            return None
        return value if str(value) == raw else None  # init-s07 would name seed 7's files init-s07


#: Every variant kind by name, in registration order (the order of :func:`variants`).
KINDS: dict[str, VariantKind] = {}


def register_kind(
    kind: str,
    prefix: str,
    *,
    field: str | None = None,
    convert: Callable[[str], Any] = str,
    made_from: MadeFrom = "weights",
    revision: bool = False,
    listed: Callable[[Model], list[Any]] = lambda model: [],
) -> VariantKind:
    """Register a variant kind. Its prefix may not be the start of another kind's (or have
    another's as its start): a name must be of one kind only."""
    if kind in KINDS:
        raise ValueError(f"variant kind {kind!r} is registered already")
    for other in KINDS.values():
        if prefix.startswith(other.prefix) or other.prefix.startswith(prefix):
            raise ValueError(f"variant prefix {prefix!r} overlaps {other.kind}'s {other.prefix!r}")
    KINDS[kind] = VariantKind(kind, prefix, field, convert, made_from, revision, listed)
    return KINDS[kind]


def forms() -> str:
    """The registered name forms, for messages: ``trained, init-s<seed>, rev-<revision> or ft-<name>``."""
    names = [k.form() for k in KINDS.values()]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


@dataclass(frozen=True, init=False)
class Variant:
    """One variant of a model entry: its ``kind`` and the one field that kind has (``value``; also
    readable by the field's name: ``Variant("init", seed=3).seed == 3``, and None on another kind).
    """

    kind: str
    value: Any = None

    def __init__(self, kind: str, value: Any = None, **field: Any) -> None:
        k = KINDS.get(kind)
        if k is None:
            raise ConfigError(f"variant kind {kind!r}; valid: {list(KINDS)}")
        if field:
            if value is not None or list(field) != [k.field]:
                raise ConfigError(f"a {kind} variant takes {k.field or 'no field'}, not {field}")
            value = field[k.field]
        if (k.field is None) != (value is None) or value == "":
            raise ConfigError(f"a {kind} variant takes {k.field or 'no field'}, not {value!r}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "value", value)

    def __getattr__(self, attr: str) -> Any:
        """A kind's field by its name (``v.seed``, ``v.revision``, ``v.name``); None on other kinds."""
        if attr.startswith("_") or attr not in {k.field for k in KINDS.values()}:
            raise AttributeError(attr)
        return self.value if KINDS[self.kind].field == attr else None

    @classmethod
    def parse(cls, text: str) -> Variant:
        """The variant a name stands for; a name of no registered form is a ConfigError."""
        for k in KINDS.values():
            if k.field is None and text == k.prefix:
                return cls(k.kind)
            if (value := k.value(text)) is not None:
                return cls(k.kind, value)
        raise ConfigError(f"unknown variant {text!r}; expected {forms()}")

    def __str__(self) -> str:
        return KINDS[self.kind].name(self.value)

    @property
    def made_from(self) -> MadeFrom:
        return KINDS[self.kind].made_from

    def source_revision(self, model: Model) -> str | None:
        """The revision of the entry's source this variant's files are read from (None: its default)."""
        return self.value if KINDS[self.kind].revision else model.get("revision")

    @property
    def step(self) -> int | None:
        """The training step a revision's name gives (``rev-step200`` -> 200); None otherwise."""
        m = re.search(r"step(\d+)", self.revision or "")
        return int(m.group(1)) if m and self.kind == "rev" else None


def _seeds(model: Model) -> list[int]:
    untrained = model.get("untrained") or {}
    return list(untrained.get("seeds") or []) if untrained.get("kind") == "random_init" else []


def _revisions(model: Model) -> list[str]:
    """M0 where it is a published revision (Pythia's ``step0``), then the entry's ``checkpoints``."""
    untrained = model.get("untrained") or {}
    m0 = [str(untrained["revision"])] if untrained.get("kind") == "revision" else []
    return m0 + [str(c) for c in model.get("checkpoints") or [] if str(c) not in m0]


def _stages(model: Model) -> list[str]:
    return list(model.get("finetune") or {})


register_kind("trained", TRAINED, listed=lambda model: [None])
register_kind("init", "init-s", field="seed", convert=int, made_from="config", listed=_seeds)
register_kind("rev", "rev-", field="revision", revision=True, listed=_revisions)
register_kind("ft", "ft-", field="name", made_from="stage", listed=_stages)


def init_scale(model: Model) -> float | None:
    """The multiple of the published init std an entry's ``init-s<seed>`` variants are built at
    (``untrained.init_scale``); None when unset. Only a value other than 1 changes M0 (and its
    cache keys); any value set makes the entry a point of an init-scale sweep in the report."""
    scale = (model.get("untrained") or {}).get("init_scale")
    return None if scale is None else float(scale)


def untrained_variants(model: Model) -> list[str]:
    """The variants that play M0 in Diff-eRank (all of them when there are several seeds)."""
    untrained = model["untrained"]
    if untrained["kind"] == "random_init":
        return [str(Variant("init", seed=s)) for s in untrained["seeds"]]
    return [str(Variant("rev", revision=str(untrained["revision"])))]


def variants(model: Model) -> list[str]:
    """Names of the model variants to dump: each registered kind's (:data:`KINDS`, in registration
    order: ``trained``, M0's ``init-s<seed>`` or ``rev-<step0>``, the ``checkpoints``, the
    ``finetune`` stages)."""
    return [k.name(value) for k in KINDS.values() for value in k.listed(model)]
