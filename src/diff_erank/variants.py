"""Variant names: which weights of a model entry a measurement is of.

    trained          the entry's own weights (its ``revision``)
    init-s<seed>     a seeded ``from_config`` initialisation (``untrained.kind: random_init``)
    rev-<revision>   a named revision: Pythia's ``step0``, a zoo checkpoint (``checkpoints``)
    ft-<name>        the model further trained by the recipe ``finetune.<name>``

A name is parsed once into a :class:`Variant`; ``str()`` gives the name back unchanged, because
names are in file paths, cache keys and tables. Which variants a model entry has, and which of
them play M0, is :func:`variants` and :func:`untrained_variants`.

Stdlib only, below ``config``: the Snakefile imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from diff_erank.errors import ConfigError

Kind = Literal["trained", "init", "rev", "ft"]
#: The name of the trained model's variant.
TRAINED = "trained"
FORMS = "trained, init-s<seed>, rev-<revision> or ft-<name>"


@dataclass(frozen=True)
class Variant:
    """One variant of a model entry: its ``kind`` and the one field that kind has."""

    kind: Kind
    seed: int | None = None  # init
    revision: str | None = None  # rev
    name: str | None = None  # ft

    def __post_init__(self) -> None:
        given = {"seed": self.seed, "revision": self.revision, "name": self.name}
        wanted = {"trained": None, "init": "seed", "rev": "revision", "ft": "name"}
        if self.kind not in wanted:
            raise ConfigError(f"variant kind {self.kind!r}; valid: {list(wanted)}")
        extra = [k for k, v in given.items() if v is not None and k != wanted[self.kind]]
        if extra or (wanted[self.kind] and given[wanted[self.kind]] in (None, "")):
            raise ConfigError(f"a {self.kind} variant takes {wanted[self.kind] or 'no field'}, not {given}")

    @classmethod
    def parse(cls, text: str) -> Variant:
        """The variant a name stands for; a name of none of the four forms is a ConfigError."""
        if text == TRAINED:
            return cls("trained")
        if m := re.fullmatch(r"init-s(-?\d+)", text):
            if f"init-s{int(m.group(1))}" == text:  # init-s07 would name seed 7's files init-s07
                return cls("init", seed=int(m.group(1)))
        elif text.startswith("rev-") and len(text) > 4:
            return cls("rev", revision=text[4:])
        elif text.startswith("ft-") and len(text) > 3:
            return cls("ft", name=text[3:])
        raise ConfigError(f"unknown variant {text!r}; expected {FORMS}")

    def __str__(self) -> str:
        if self.kind == "init":
            return f"init-s{self.seed}"
        if self.kind == "rev":
            return f"rev-{self.revision}"
        if self.kind == "ft":
            return f"ft-{self.name}"
        return TRAINED

    @property
    def step(self) -> int | None:
        """The training step a revision's name gives (``rev-step200`` -> 200); None otherwise."""
        m = re.search(r"step(\d+)", self.revision or "")
        return int(m.group(1)) if m and self.kind == "rev" else None


def init_scale(model: dict[str, Any]) -> float | None:
    """The multiple of the published init std an entry's ``init-s<seed>`` variants are built at
    (``untrained.init_scale``); None when unset. Only a value other than 1 changes M0 (and its
    cache keys); any value set makes the entry a point of an init-scale sweep in the report."""
    scale = (model.get("untrained") or {}).get("init_scale")
    return None if scale is None else float(scale)


def untrained_variants(model: dict[str, Any]) -> list[str]:
    """The variants that play M0 in Diff-eRank (all of them when there are several seeds)."""
    untrained = model["untrained"]
    if untrained["kind"] == "random_init":
        return [str(Variant("init", seed=s)) for s in untrained["seeds"]]
    return [str(Variant("rev", revision=str(untrained["revision"])))]


def variants(model: dict[str, Any]) -> list[str]:
    """Names of the model variants to dump: the trained model, its untrained counterparts, stages.

    ``trained`` is the entry's revision; ``init-s<seed>`` a seeded ``from_config`` initialisation;
    ``rev-<name>`` a named revision (Pythia's ``step0``, a zoo checkpoint); ``ft-<name>`` a
    further-trained model.
    """
    names = untrained_variants(model)
    checkpoints = [str(Variant("rev", revision=str(c))) for c in model.get("checkpoints") or []]
    names += [c for c in checkpoints if c not in names]
    names += [str(Variant("ft", name=name)) for name in model.get("finetune") or {}]
    return [TRAINED, *names]
