"""Compose the run configuration with Hydra and validate it against a JSON schema.

Hydra only composes: ``conf/config.yaml`` picks an experiment, and an experiment pulls model and
dataset entries into ``models.<name>`` and ``datasets.<name>`` through its defaults list. The
result is checked against ``schemas/config.schema.yaml`` so that a typo, a missing field or a
wrong type stops before any job runs, with the key path in the message.

This module must stay cheap and side-effect free: Snakemake evaluates the Snakefile (and so this
code) once per job, and on every SLURM node. It imports neither torch nor transformers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

#: Hidden-state layers by name; integers are also accepted (index into ``hidden_states``).
#: ``embeddings`` = hidden_states[0], ``first`` = [1] (first block), ``all`` = every index 0..L.
LAYER_NAMES = ("embeddings", "first", "middle", "last", "all")


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key and what is allowed."""


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("diff_erank").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def compose(conf_dir: str | Path = DEFAULT_CONF_DIR, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose ``config.yaml`` under ``conf_dir`` with Hydra overrides; return a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in config directory {conf_dir}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot compose the configuration: {exc}") from None
    finally:
        GlobalHydra.instance().clear()


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<root>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"unknown key(s) {extra} at '{path}'; valid keys: {allowed}"
    if error.validator == "enum":
        return f"'{path}' is {error.instance!r}; valid choices: {error.validator_value}"
    return f"'{path}': {error.message}"


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate against the schema, fill defaults and check cross-references; return ``cfg``."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors[:10]))
    if not cfg["models"] and not cfg.get("multimodal"):
        raise ConfigError("the experiment names no models (models: {}) and no multimodal section")
    if cfg["models"] and not cfg["datasets"]:
        raise ConfigError("the experiment names no datasets (datasets: {})")
    mm = cfg.get("multimodal")
    if mm and (not mm["models"] or not mm["datasets"]):
        raise ConfigError("multimodal: needs at least one model and one dataset")
    for name, ds in ((mm or {}).get("datasets") or {}).items():
        if not ds["source"].get("annotations") and not ds["source"].get("hub"):
            raise ConfigError(f"multimodal.datasets.{name}.source: needs 'annotations' (a file) or 'hub'")
    for name, model in cfg["models"].items():
        if model.get("source") is None and model.get("train") is None and not (model.get("gguf") or {}).get(
            "packages"
        ):
            raise ConfigError(
                f"models.{name}: needs a 'source' (hub id or local path), a 'train' recipe or 'gguf.packages'"
            )
    for name, ds in cfg["datasets"].items():
        if ds["source"]["kind"] in ("json", "jsonl", "parquet", "text", "csv") and not ds["source"].get(
            "data_files"
        ):
            raise ConfigError(f"datasets.{name}.source: kind {ds['source']['kind']} needs 'data_files'")
    for name, model in cfg["models"].items():
        for ft, recipe in (model.get("finetune") or {}).items():
            if recipe["dataset"] not in cfg["datasets"]:
                raise ConfigError(
                    f"models.{name}.finetune.{ft}.dataset: {recipe['dataset']!r} is not a dataset of the "
                    f"experiment; valid: {sorted(cfg['datasets'])}"
                )
            if recipe["from"] not in variants(model) or recipe["from"] == f"ft-{ft}":
                raise ConfigError(
                    f"models.{name}.finetune.{ft}.from: {recipe['from']!r}; valid: {variants(model)}"
                )
    for layer in cfg["layers"]:
        if isinstance(layer, str) and layer not in LAYER_NAMES:
            raise ConfigError(f"layers: {layer!r} is not a layer; use {list(LAYER_NAMES)} or an integer")
    return cfg


def load_config(conf_dir: str | Path = DEFAULT_CONF_DIR, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose, apply the sweep-wide ``dataset``/``model`` overrides, and validate."""
    cfg = compose(conf_dir, overrides)
    for group, entries in (("dataset", "datasets"), ("model", "models")):
        common = {k: v for k, v in (cfg.get(group) or {}).items() if v is not None}
        for name in list(cfg.get(entries) or {}):
            cfg[entries][name] = {**cfg[entries][name], **copy.deepcopy(common)}
    return validate(cfg)


def variants(model: dict[str, Any]) -> list[str]:
    """Names of the model variants to dump: the trained model, its untrained counterparts, stages.

    ``trained`` is the entry's revision; ``init-s<seed>`` a seeded ``from_config`` initialisation;
    ``rev-<name>`` a named revision (Pythia's ``step0``, a zoo checkpoint).
    """
    untrained = model["untrained"]
    if untrained["kind"] == "random_init":
        names = [f"init-s{s}" for s in untrained["seeds"]]
    else:
        names = [f"rev-{untrained['revision']}"]
    names += [f"rev-{c}" for c in model.get("checkpoints") or [] if f"rev-{c}" not in names]
    names += [f"ft-{name}" for name in model.get("finetune") or {}]
    return ["trained", *names]


def untrained_variants(model: dict[str, Any]) -> list[str]:
    """The variants that play M0 in Diff-eRank (all of them when there are several seeds)."""
    untrained = model["untrained"]
    if untrained["kind"] == "random_init":
        return [f"init-s{s}" for s in untrained["seeds"]]
    return [f"rev-{untrained['revision']}"]
