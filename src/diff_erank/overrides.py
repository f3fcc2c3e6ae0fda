"""The command line's own spellings, turned into plain Hydra overrides before Hydra composes.

- ``models=[opt-125m,pythia-70m]`` / ``datasets=[...]`` replace an experiment's entries,
  ``+models=[...]`` / ``+datasets=[...]`` add to them. Hydra has no word for "these entries of a
  config group, keyed by name" (its own ``+model@models.<key>=<file>`` adds one at a time), so
  each name becomes one such override here and the entries the list leaves out are dropped after
  composition (:func:`keep_only`).
- A hub id or a local folder in a model list (``hf:EleutherAI/pythia-160m``, ``./my-model``) is an
  entry built on ``conf/model/hf-base.yaml``, keyed by :func:`entry_key` of the id.
- :func:`quote` writes any text as a Hydra value that reads back as the same text (apostrophes,
  commas, backslashes, ``${``), so a recorded configuration replays.

Stdlib only: it runs inside the Snakefile.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from diff_erank.errors import ConfigError

#: the file in a run folder that records the user's overrides (as Hydra's .hydra/overrides.yaml)
OVERRIDES_RECORD = "overrides.yaml"
#: the list keys and the config group each picks from
LISTS = {"models": "model", "datasets": "dataset"}
#: what a Hydra value may hold unquoted and still read back as the same string
_PLAIN = re.compile(r"[A-Za-z0-9_./+@%*?|~-]+")
_LIST = re.compile(r"^(\+?)(models|datasets)=(.*)$", re.S)


def quote(text: str) -> str:
    """``text`` as a quoted Hydra value that composes back to exactly ``text``.

    Two escapes: OmegaConf's (``\\${`` is a literal ``${``, backslashes before it doubled) and
    Hydra's (inside single quotes, ``\\'`` is a quote; backslashes before a quote or at the end
    doubled). Tested on random strings of the awkward characters (tests/test_config.py).
    """
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{text}'"


def value(text: str) -> str:
    """A string as a Hydra value: as is when Hydra reads it back unchanged, else :func:`quote`-d.

    Plain words stay plain so that ``0`` or ``true`` inside a list (Snakemake reads list items as
    strings) still become the number or boolean they were typed as.
    """
    return text if _PLAIN.fullmatch(text) else quote(text)


def _items(text: str) -> list[str]:
    """The items of ``[a,b,'c,d']`` (quotes kept out, commas inside quotes kept)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items, current, q = [], "", ""
    for ch in text:
        if q:
            if ch == q:
                q = ""
            else:
                current += ch
        elif ch in "'\"":
            q = ch
        elif ch == ",":
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    return [i for i in items if i]


def is_list_override(override: str) -> bool:
    return bool(_LIST.match(override.strip())) and override.split("=", 1)[1].strip().startswith("[")


def entry_key(source: str) -> str:
    """The name a hub id or local folder gets in ``models`` and in the results' paths.

    ``EleutherAI/pythia-160m`` -> ``EleutherAI--pythia-160m`` (the hub cache's spelling),
    ``./models/my-model`` -> ``my-model``; dots become ``_`` (a Hydra key path splits at dots),
    as the entries of conf/model/ do (``opt-1_3b``).
    """
    hub = source.startswith("hf:")
    text = source[3:] if hub else source
    if not hub and looks_local(text):
        text = Path(text.rstrip("/")).name or "model"
    key = re.sub(r"[^A-Za-z0-9_-]", "_", text.strip("/").replace("/", "--"))
    return key if re.match(r"[A-Za-z_]", key) else f"m_{key}"


def looks_local(source: str) -> bool:
    """A model or dataset source is a local path if it is written as one (``./``, ``../``, ``/``,
    ``~``) or exists; anything else is a hub id (``org/name``). The one such check: the config's
    validation, the command line's lists, ``pin`` and the hub downloads all ask it."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def size_label(source: str) -> str:
    """The size in a hub id's or folder's last name: ``EleutherAI/pythia-160m`` -> ``160m``,
    ``Qwen2.5-0.5B`` -> ``0.5B``; ``-`` when the name has none (an hf-base entry's ``size``)."""
    name = Path(source.rstrip("/")).name
    found = re.findall(r"(?<![A-Za-z0-9.])(\d+(?:[._]\d+)?[mMbBkK])(?![A-Za-z])", name)
    return found[-1] if found else "-"


def _source_entry(group: str, key: str, source: str) -> list[str]:
    """Overrides that make ``models.<key>`` an hf-base entry of a hub id or local folder."""
    path = source[3:] if source.startswith("hf:") else source
    at = f"{group}s.{key}"
    return [
        f"+{group}@{at}=hf-base",
        f"{at}.source={quote(path)}",
        f"{at}.family={value(key)}",
        f"{at}.size={quote(size_label(path))}",
        f"{at}.params=null",
    ]


def _no_entry(group: str, name: str, conf_dir: Path) -> ConfigError:
    files = sorted(p.stem for p in (conf_dir / group).glob("*.yaml") if p.stem not in ("hf-base", "zoo-base"))
    near = difflib.get_close_matches(name, files, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, near))}? " if near else ""
    other = (
        "a hub id is written hf:<org>/<name>, a local folder ./<path>"
        if group == "model"
        else f"`diff-erank list {group}s` shows them"
    )
    return ConfigError(f"there is no {group} {name!r} (no file conf/{group}/{name}.yaml); {hint}{other}")


def misused_group(override: str, conf_dir: Path) -> str | None:
    """The message for ``model=pythia-70m`` or ``dataset=a,b``: ``model`` and ``dataset`` hold
    settings for every entry, so a name there means the user wanted the lists."""
    key, _, val = override.partition("=")
    if key not in ("model", "dataset") or not val or val.lstrip().startswith(("{", "null")):
        return None
    names = _items(val)
    if not names:
        return None
    plural = f"{key}s"
    listed = f"{plural}=[{','.join(names)}]"
    return (
        f"{override!r}: {key!r} holds settings for every {key} ({key}.max_length=..., "
        f"{key}.dtype=...); to choose the {plural} write {listed}, or +{listed} to add to the experiment's"
        if key == "model"
        else f"{override!r}: {key!r} holds settings for every {key} ({key}.max_texts=...); to choose the "
        f"{plural} write {listed}, or +{listed} to add to the experiment's"
    )


def split_lists(overrides: list[str]) -> tuple[list[str], list[tuple[bool, str, list[str]]]]:
    """The overrides without the list ones, and the list ones as ``(add, plural, names)`` in order."""
    rest, lists = [], []
    for o in overrides:
        m = _LIST.match(o.strip())
        if m and is_list_override(o):
            lists.append((m.group(1) == "+", m.group(2), _items(m.group(3))))
        else:
            rest.append(o)
    return rest, lists


def plan_lists(
    lists: list[tuple[bool, str, list[str]]], existing: dict[str, list[str]], conf_dir: Path
) -> tuple[list[str], dict[str, list[str]]]:
    """Hydra overrides that bring in the listed entries the experiment lacks, and the keys to keep.

    ``existing``: the experiment's keys per plural (``models``: [...]). A listed name that is
    already a key keeps the experiment's entry (ci's zoo models keep ci's short training).
    """
    wanted: dict[str, list[str]] = {}
    sources: dict[str, dict[str, str]] = {}
    for add, plural, names in lists:
        group = LISTS[plural]
        keys = list(wanted.get(plural, existing.get(plural, []))) if add else []
        for name in names:
            if (conf_dir / group / f"{name}.yaml").is_file() or name in existing.get(plural, []):
                key = name
            elif group == "model" and (name.startswith("hf:") or "/" in name or looks_local(name)):
                key = entry_key(name)
                sources.setdefault(plural, {})[key] = name
            else:
                raise _no_entry(group, name, conf_dir)
            if key not in keys:
                keys.append(key)
        wanted[plural] = keys
    extra: list[str] = []
    for plural, keys in wanted.items():
        group = LISTS[plural]
        for key in keys:
            if key in existing.get(plural, []):
                continue
            if key in sources.get(plural, {}):
                extra += _source_entry(group, key, sources[plural][key])
            else:
                extra.append(f"+{group}@{plural}.{key}={key}")
    return extra, wanted


def keep_only(cfg: dict[str, Any], wanted: dict[str, list[str]]) -> dict[str, Any]:
    """``cfg`` with ``models``/``datasets`` cut to the listed keys, in the listed order."""
    for plural, keys in wanted.items():
        entries = cfg.get(plural) or {}
        cfg[plural] = {k: entries[k] for k in keys if k in entries}
    return cfg
