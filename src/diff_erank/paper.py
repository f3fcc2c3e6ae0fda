"""The whole paper in one run: ``experiment=paper`` names the experiments, one DAG runs them all.

``conf/experiment/paper.yaml`` lists the paper's experiments (``experiments:``). The Snakefile loads
itself once per experiment as a Snakemake module (its rules renamed ``<experiment>_<rule>``), each
with its own configuration, composed with the run's other overrides, and its own run folder,
``<results_dir>/<name>/<experiment>/``: its tables, figures and reproduction section as a run of
that experiment alone would write them. What they share is the measurement cache
(:mod:`diff_erank.cache`), and this module makes each measurement one job:

- a cache entry (prepared texts; one model's variants on one dataset) is made by the rules of one
  experiment only, its *owner*, the first that needs it (every module's rules could make it, and two
  rules that can make a file are ambiguous to Snakemake);
- a model x dataset that several experiments measure at different layers is measured once at the
  union of their layers (Table 4's four on OPT x dolly-15k serve Fig. 1's last), each run folder's
  view selecting its own (``cache.select``).

Snakefile-cheap: stdlib, the configuration and the cache keys only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diff_erank.cache import KEY, Keys, cache_dir, key_digest
from diff_erank.config import ConfigError, load_config
from diff_erank.layers import NAMES

#: The key of a module's ``config`` that carries what the paper run decided for it.
PART = "paper_part"
#: Overrides that belong to the paper run itself, not to its experiments.
OWN_KEYS = ("experiment", "experiments", "name", "description", "paper_tables", "figures")


def is_paper(cfg: dict[str, Any]) -> bool:
    return bool(cfg.get("experiments"))


def run_overrides(conf_dir: str | Path, overrides: Sequence[str]) -> list[str]:
    """The overrides the run's own configuration is composed with: all of them for an experiment,
    a paper run's own for a paper run (``~models.opt-13b`` or ``dataset.max_texts=50`` are its
    experiments': the paper run itself has no models). Which it is: the experiment file's
    ``experiments:`` (read as YAML: this runs before Hydra composes anything)."""
    import yaml

    pairs = [o.split("=", 1) for o in overrides if "=" in o]
    chosen = [value for key, value in pairs if key.lstrip("+") == "experiment"]
    if not chosen:
        root = yaml.safe_load(Path(conf_dir, "config.yaml").read_text()) or {}
        defaults = [d for d in root.get("defaults", []) if isinstance(d, dict)]
        chosen = [d["experiment"] for d in defaults if "experiment" in d]
    path = Path(conf_dir, "experiment", f"{chosen[-1]}.yaml") if chosen else None
    spec = yaml.safe_load(path.read_text()) if path and path.is_file() else None
    if not (isinstance(spec, dict) and spec.get("experiments")):
        return list(overrides)
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in (*OWN_KEYS, "results_dir")]


def part_overrides(overrides: Sequence[str], cfg: dict[str, Any], experiment: str) -> list[str]:
    """One experiment's overrides: the paper run's others (``dataset.max_texts=50``, ``device=cuda``),
    its experiment, and a run folder under the paper's (``<results_dir>/<name>/<experiment>``)."""
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in (*OWN_KEYS, "results_dir")]
    return [*rest, f"experiment={experiment}", f"results_dir={cfg['results_dir']}/{cfg['name']}"]


def alias(experiment: str) -> str:
    """The prefix of an experiment's rule names: ``pythia-v1`` -> ``pythia_v1_``."""
    return re.sub(r"\W", "_", experiment) + "_"


def _measure_order(layers: set[str | int]) -> list[str | int]:
    """Layers in depth order (embeddings, first, middle, last, all; indices after): one order, so
    one union of layers is one cache entry whichever experiment asked first."""
    named = [x for x in NAMES if x in layers]
    return named + sorted((x for x in layers if x not in NAMES), key=str)


class Paper:
    """Every experiment of a paper run, composed, with the owner and layers of each cache entry."""

    def __init__(self, cfg: dict[str, Any], conf_dir: str | Path, overrides: Sequence[str]) -> None:
        self.cfg, self.root = cfg, cache_dir(cfg)
        self.out = f"{cfg['results_dir']}/{cfg['name']}"
        known = {p.stem for p in Path(conf_dir, "experiment").glob("*.yaml")}
        for e in cfg["experiments"]:
            if e not in known or e == cfg["name"]:
                raise ConfigError(
                    f"experiments: {e!r} is not an experiment of conf/experiment/; list the ones to run"
                )
        self.overrides = {e: part_overrides(overrides, cfg, e) for e in cfg["experiments"]}
        self.parts = {e: load_config(conf_dir, o) for e, o in self.overrides.items()}
        for e, part in self.parts.items():
            if is_paper(part):
                raise ConfigError(f"experiments: {e!r} is itself a run of several experiments; list theirs")
        #: digest -> the key its owner files it under, which every experiment's Keys then use
        self.filed: dict[str, str] = {}
        self.keys = {e: Keys(p, self.run(e), root=self.root, filed=self.filed) for e, p in self.parts.items()}
        self.owner_sets: dict[str, str] = {}
        self.owner_texts: dict[str, str] = {}
        layers: dict[str, set] = {}
        for e, k in self.keys.items():
            for key in k.jobs_of:
                self.owner_sets.setdefault(key, e)
                layers.setdefault(key, set()).update(k.cfg["layers"])
            for d, key in k.texts.items():
                if d in k.datasets_of.values():
                    self.owner_texts.setdefault(key, e)
        self.layers = {key: _measure_order(v) for key, v in layers.items()}
        self.claimers = claimers(conf_dir)

    def run(self, experiment: str) -> str:
        return f"{self.out}/{experiment}"

    def module_config(self, experiment: str) -> dict[str, Any]:
        """What the Snakefile, loaded as this experiment's module, is given."""
        k = self.keys[experiment]
        return {
            "overrides": self.overrides[experiment],
            PART: {
                "root": self.root,
                "layers": {key: self.layers[key] for key in k.jobs_of},
                "sets": sorted(key for key, e in self.owner_sets.items() if e == experiment),
                "texts": sorted(key for key, e in self.owner_texts.items() if e == experiment),
                "filed": {key_digest(key): key for key in [*k.jobs_of, *k.texts.values()]},
            },
        }


def claimers(conf_dir: str | Path) -> dict[str, list[str]]:
    """Each paper table -> the experiments whose ``paper_tables`` name it (read from the files, for
    the report's reason of a row a paper run leaves out)."""
    import yaml

    out: dict[str, list[str]] = {}
    for f in sorted(Path(conf_dir, "experiment").glob("*.yaml")):
        spec = yaml.safe_load(f.read_text()) or {}
        if not spec.get("experiments"):
            for table in spec.get("paper_tables") or []:
                out.setdefault(table, []).append(f.stem)
    return out


def keys_args(part: dict[str, Any] | None) -> dict[str, Any]:
    """``Keys`` arguments of an experiment run inside a paper run (none for a run of its own)."""
    return {"root": part["root"], "measure": part["layers"], "filed": dict(part["filed"])} if part else {}


def owned(part: dict[str, Any] | None, kind: str) -> str:
    """The wildcard constraint of a cache rule's ``key``: any key in a run of its own, the keys
    this experiment owns in a paper run (a regex that matches nothing if it owns none)."""
    if not part:
        return KEY
    return "|".join(re.escape(k) for k in part[kind]) or "(?!x)x"
