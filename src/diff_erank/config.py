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
import difflib
import glob
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from diff_erank.errors import ConfigError
from diff_erank.figure_registry import figure_names
from diff_erank.layers import check_layers
from diff_erank.overrides import (
    LISTS,
    OVERRIDES_RECORD,
    keep_only,
    looks_local,
    misused_group,
    plan_lists,
    split_lists,
)
from diff_erank.overrides import value as hydra_string
from diff_erank.variants import Variant, variants

DEFAULT_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("diff_erank").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def compose(conf_dir: str | Path = DEFAULT_CONF_DIR, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose ``config.yaml`` under ``conf_dir`` with Hydra overrides; return a plain dict.

    Hydra's own messages are written for Hydra's command line (``--multirun``, ``+key``, the
    config search path); :func:`_explain` turns each into one sentence about this project.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in config directory {conf_dir}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception as exc:
        raise ConfigError(_explain(exc, list(overrides), conf_dir)) from None
    finally:
        GlobalHydra.instance().clear()


def _closest(word: str, choices: Sequence[str]) -> str | None:
    match = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _groups(conf_dir: Path) -> list[str]:
    """Config groups: the folders of ``conf/`` (experiment, model, dataset, ...)."""
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir())


def _keys_at(conf_dir: Path, overrides: list[str], parent: str) -> list[str]:
    """Keys under ``parent`` of the config composed without the override that failed."""
    try:
        node: Any = compose(conf_dir, overrides)
    except ConfigError:
        node = yaml.safe_load((conf_dir / "config.yaml").read_text())
    for part in [p for p in parent.split(".") if p]:
        node = node.get(part) if isinstance(node, dict) else None
    return sorted(node) if isinstance(node, dict) else []


def _explain(exc: Exception, overrides: list[str], conf_dir: Path) -> str:
    """One sentence for a Hydra composition error: what is wrong, in the user's words, and the fix."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if m := re.search(r"Could not find '([^/']+)/([^']+)'", text):
        group, name = m.groups()
        options = list(getattr(exc, "options", None) or [])
        where = re.match(r"In '([^']+)'", text)
        inside = f" (asked for in conf/{where.group(1)}.yaml)" if where and where.group(1) != "config" else ""
        near = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, near))}? " if near else ""
        listing = (
            f"`diff-erank list {group}s` shows all {len(options)}"
            if len(options) > 12
            else (f"the {group} entries are: {', '.join(options)}")
        )
        return f"there is no {group} {name!r}{inside} (no file conf/{group}/{name}.yaml); {hint}{listing}"
    if m := re.search(r"Could not (?:override|delete from config\.) '([^']+)'", text):
        key = m.group(1)
        override = next((o for o in overrides if _key_of(o) == key), key)
        full = str(getattr(exc.__cause__, "full_key", "") or key)
        parent, _, bad = full.rpartition(".")
        rest = [o for o in overrides if o is not override]
        choices = _keys_at(conf_dir, rest, parent)
        if not parent:
            choices = sorted(set(choices) | set(_groups(conf_dir)))
        near = _closest(bad, choices)
        where = f"under {parent!r}" if parent else "at the top level"
        if near:
            fixed = ".".join([*([parent] if parent else []), near, *key.split(".")[len(full.split(".")) :]])
            return f"{override!r}: there is no key {full!r}; did you mean {fixed!r}?"
        return f"{override!r}: there is no key {full!r}; the keys {where} are: {', '.join(choices) or 'none'}"
    if m := re.search(r"Ambiguous value for argument '([^']+)'", text):
        override = m.group(1)
        key = _key_of(override)
        if key.split("@")[0] in _groups(conf_dir):
            return (
                f"{override!r}: a run takes one {key.split('@')[0]}; run them one after the other "
                f"({key}={override.split('=', 1)[1].split(',')[0]}, then the next)"
            )
        return (
            f"{override!r}: a value with a comma is ambiguous; write a list as {key}=[...] "
            f"or quote a string: {key}='...'"
        )
    if m := re.search(r"Error parsing override '([^']+)'", text):
        return f"cannot read the override {m.group(1)!r}: it must look like key=value (lists: key=[a,b])"
    if type(exc).__name__ == "OverrideParseException":
        return f"cannot read an override ({first}); overrides look like key=value, lists key=[a,b]"
    if "Config group override must be" in text:
        bad = [o for o in overrides if _key_of(o) in _groups(conf_dir) and "=" in o]
        bad = [o for o in bad if not (conf_dir / _key_of(o) / f"{o.split('=', 1)[1]}.yaml").is_file()] or bad
        if bad:
            group = _key_of(bad[0])
            files = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
            return (
                f"{bad[0]!r}: {group!r} is a config group, so its value must name a file of conf/{group}/ "
                f"(one of: {', '.join(files)})"
            )
    return f"cannot compose the configuration: {first}"


_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<root>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        near = {e: _closest(e, allowed) for e in extra}
        if len(extra) == 1 and near[extra[0]]:
            return f"unknown key {extra[0]!r} at '{path}'; did you mean {near[extra[0]]!r}?"
        return f"unknown key(s) {extra} at '{path}'; valid keys: {allowed}"
    if error.validator == "enum":
        return f"'{path}' is {error.instance!r}; valid choices: {error.validator_value}"
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return f"'{path}' is {error.instance!r}; it must be {wanted}"
    return f"'{path}': {error.message}"


def _unset(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _unset(v, f"{path}{k}.")]
    return [path.rstrip(".")] if node == "???" else []


def _check_unset(cfg: dict[str, Any]) -> None:
    """Hydra's ``???`` (a value an entry must be given, e.g. hf-base's family, size, params)."""
    missing = _unset(cfg)
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; give "
            f"{'it' if len(missing) == 1 else 'each'} a value, e.g. {missing[0]}=<value>"
        )


def _with_registered_names(base: dict[str, Any]) -> dict[str, Any]:
    """The schema with ``figures``' valid names read from the figure registry, now (a figure
    registered after the schema was first read is valid too)."""
    props = base["properties"]
    figures = {**props["figures"], "items": {"enum": figure_names()}}
    return {**base, "properties": {**props, "figures": figures}}


def check_entry(entry: dict[str, Any], definition: str, where: str) -> None:
    """One entry of a config against the schema's ``$defs/<definition>`` (``dataset``, ``model``),
    with the same one-sentence messages as the whole config gets."""
    base = schema()
    validator = jsonschema.Draft202012Validator({"$defs": base["$defs"], "$ref": f"#/$defs/{definition}"})
    errors = sorted(validator.iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(f"invalid {where}: {_describe(errors[0])}")


def _check_schema(cfg: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(_with_registered_names(schema()))
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if len(errors) == 1:
        raise ConfigError(f"invalid configuration: {_describe(errors[0])}")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors[:10]))


#: The longest run name: it is one path component (255 bytes on most filesystems) of folders and of
#: log names that add their own parts; the schema's pattern already keeps it to one component.
MAX_NAME = 100


def check_run_name(name: str) -> None:
    """A run name is a folder of ``results_dir``: not ``.``/``..`` (which would write the run's
    files into the results folder or the checkout itself), not hidden, and not too long a name."""
    if name.strip(".") == "" or name.startswith("."):
        raise ConfigError(
            f"name: {name!r} is not a folder name a run can have; start it with a letter or digit"
        )
    if len(name) > MAX_NAME:
        raise ConfigError(
            f"name: {len(name)} characters is too long for a run folder; use at most {MAX_NAME}"
        )


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate against the schema, fill defaults and check cross-references; return ``cfg``."""
    _check_schema(cfg)
    check_run_name(cfg["name"])
    if not str(cfg["results_dir"]).strip():
        raise ConfigError("results_dir: empty (the run would write to /<name>); give a folder, e.g. results")
    if not cfg["models"] and not cfg.get("multimodal") and not cfg.get("experiments"):
        raise ConfigError(
            f"experiment {cfg['name']!r} names no models; choose them with models=[...], e.g. "
            "models=[pythia-70m,hf:EleutherAI/pythia-160m,./my-model] (`diff-erank list models`)"
        )
    if cfg["models"] and not cfg["datasets"]:
        raise ConfigError(
            f"experiment {cfg['name']!r} names no datasets; choose them with datasets=[...], e.g. "
            "datasets=[wikipedia-1000] (`diff-erank list datasets`)"
        )
    mm = cfg.get("multimodal")
    if mm and (not mm["models"] or not mm["datasets"]):
        raise ConfigError("multimodal: needs at least one model and one dataset")
    for name, model in ((mm or {}).get("models") or {}).items():
        if not model.get("source") and not (model.get("arch") == "minigpt-v2" and model.get("minigpt")):
            raise ConfigError(
                f"multimodal.models.{name}: needs a 'source' (minigpt-v2: or 'minigpt.checkpoints')"
            )
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
            if recipe["from"] not in variants(model) or recipe["from"] == str(Variant("ft", name=ft)):
                raise ConfigError(
                    f"models.{name}.finetune.{ft}.from: {recipe['from']!r}; valid: {variants(model)}"
                )
    check_layers(cfg["layers"])
    return cfg


def compose_with_lists(conf_dir: str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    """:func:`compose`, with ``models=[...]``/``datasets=[...]`` (replace) and ``+models=[...]``
    (add) read first (:mod:`diff_erank.overrides`): the experiment is composed once without them
    to learn its own entries, then again with the listed entries it lacks."""
    conf_dir = Path(conf_dir)
    for override in overrides:
        if message := misused_group(override, conf_dir):
            raise ConfigError(message)
    rest, lists = split_lists(list(overrides))
    if not lists:
        return compose(conf_dir, rest)
    plain = [o for o in rest if not o.lstrip("+~").startswith(tuple(f"{p}." for p in LISTS))]
    base = compose(conf_dir, plain)
    extra, wanted = plan_lists(lists, {p: list(base.get(p) or {}) for p in LISTS}, conf_dir)
    return keep_only(compose(conf_dir, rest + extra), wanted)


def load_config(conf_dir: str | Path = DEFAULT_CONF_DIR, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose, apply the sweep-wide ``dataset``/``model`` overrides, and validate."""
    cfg = compose_with_lists(conf_dir, overrides)
    _check_unset(cfg)
    _check_schema(cfg)  # before the sweep-wide values are copied: each error is named where it was set
    for group, entries in (("dataset", "datasets"), ("model", "models")):
        common = {k: v for k, v in (cfg.get(group) or {}).items() if v is not None}
        for name in list(cfg.get(entries) or {}):
            cfg[entries][name] = {**cfg[entries][name], **copy.deepcopy(common)}
    return validate(cfg)


LOCAL_KINDS = ("json", "jsonl", "parquet", "csv", "text")


#: the files a saved tokenizer leaves (fast, sentencepiece, BPE and WordPiece vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def has_tokenizer_files(folder: str | Path) -> bool:
    return any((Path(folder).expanduser() / f).is_file() for f in TOKENIZER_FILES)


def _no_tokenizer(model: dict[str, Any]) -> str | None:
    """The local model folder (at its revision) when it holds no tokenizer and none is named."""
    src = model.get("source")
    if not src or model.get("tokenizer") or model.get("gguf") or model.get("train") or not looks_local(src):
        return None
    path = Path(src).expanduser()
    rev = path / (model.get("revision") or "main")
    folder = rev if rev.is_dir() else path
    if not (folder / "config.json").is_file() or has_tokenizer_files(folder):
        return None
    return str(folder)


def data_file_list(data_files: Any) -> list[str]:
    """A dataset's ``data_files`` (a path, a list, or a split -> path(s) mapping) as one list."""
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in data_file_list(v)]
    return [str(f) for f in data_files or []]


def missing_paths(cfg: dict[str, Any]) -> list[str]:
    """Local model directories, dataset files and image folders named by the config that are absent.

    Relative paths are read from the working directory, as the jobs read them. Checked once when a
    run starts, so that a typo in a path stops the run before any job, not in the middle of it.
    """
    problems = []
    for name, model in cfg.get("models", {}).items():
        for key in ("source", "tokenizer"):
            src = model.get(key)
            if src and looks_local(src) and not Path(src).expanduser().exists():
                problems.append(f"models.{name}.{key}: the local model directory {src} does not exist")
        if folder := _no_tokenizer(model):
            problems.append(
                f"models.{name}.source: the model folder {folder} has no tokenizer; "
                "save one or set `tokenizer:`"
            )
    for name, ds in cfg.get("datasets", {}).items():
        if ds["source"]["kind"] in LOCAL_KINDS:
            for f in data_file_list(ds["source"].get("data_files")):
                if "://" in f:  # hf://datasets/... files are read by the library from the hub
                    continue
                if glob.has_magic(f) and not glob.glob(str(Path(f).expanduser())):
                    problems.append(f"datasets.{name}.source.data_files: no file matches {f}")
                elif not glob.has_magic(f) and not Path(f).expanduser().exists():
                    problems.append(f"datasets.{name}.source.data_files: the file {f} does not exist")
    mm = cfg.get("multimodal") or {}
    for name, model in (mm.get("models") or {}).items():
        src = model.get("source")
        if src and looks_local(src) and not Path(src).expanduser().exists():
            problems.append(f"multimodal.models.{name}.source: the local directory {src} does not exist")
        if not src and model.get("minigpt"):  # converted by the workflow from these files
            for key, entry in model["minigpt"]["checkpoints"].items():
                path = entry.get("path") or (entry["source"] if looks_local(entry["source"]) else None)
                if path and not Path(path).expanduser().exists():
                    problems.append(f"multimodal.models.{name}.minigpt.checkpoints.{key}: {path} is missing")
    for name, ds in (mm.get("datasets") or {}).items():
        for key in ("annotations", "images"):
            path = ds["source"].get(key)
            if path and not Path(path).expanduser().exists():
                problems.append(f"multimodal.datasets.{name}.source.{key}: {path} does not exist")
    return problems


def _hydra_value(value: Any) -> str:
    """A value from Snakemake's ``--config`` (or a ``--configfile``) written as Hydra override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):  # quoted where Hydra would misread it (an apostrophe, a comma, ...)
        return hydra_string(value)
    return str(value)


def split_overrides(text: str) -> list[str]:
    """Split ``a=1,layers=[first,last],b='x,y'`` at the commas that separate overrides.

    Commas inside brackets, braces and quotes stay, and a piece without ``=`` (``demo`` in
    ``experiment=ci,demo``) stays with the override before it, so Hydra sees what was typed.
    """
    pieces, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(current)
            current = ""
            continue
        current += ch
    pieces.append(current)
    out: list[str] = []
    for piece in (p.strip() for p in pieces):
        if out and "=" not in piece and not piece.startswith("~"):
            out[-1] += "," + piece
        elif piece:
            out.append(piece)
    return out


def overrides_from_snakemake(config: dict[str, Any], conf_dir: str | Path = DEFAULT_CONF_DIR) -> list[str]:
    """Hydra overrides from Snakemake's ``config`` (``--config`` pairs and ``--configfile`` contents).

    ``overrides`` (a list, or a string ``[a=1,b=2]``) is taken as written; every other key is an
    override of its own: ``experiment=fig1``, ``layers=[first,last]``, and a mapping such as
    ``dataset={max_texts: 50}`` stands for ``dataset.max_texts=50`` (Snakemake does not accept dots
    in ``--config`` keys). A key that names nothing in the configuration is an error, not ignored.
    """
    conf_dir = Path(conf_dir)
    root = yaml.safe_load((conf_dir / "config.yaml").read_text()) or {}
    groups = set(_groups(conf_dir))
    # experiments: a paper run's list (conf/experiment/paper.yaml), not in conf/config.yaml
    valid = sorted({*root, *groups, "overrides", "from", "experiments"} - {"defaults"})
    out: list[str] = []
    resolved = set(root) - {"defaults"}
    if resolved and resolved <= set(config) and isinstance(config.get("models"), dict):
        raise ConfigError(
            "--configfile: this is a run folder's resolved configuration (its config.yaml), which does "
            "not say which experiment it came from; replay the run with "
            f"--config from=results/{config.get('name')}"
        )
    if config.get("from") is not None:  # a run folder's recorded overrides come first; the rest amend them
        out += recorded_overrides(str(config["from"]))
    given = config.get("overrides")
    if isinstance(given, str):
        given = given.strip()
        out += split_overrides(given[1:-1] if given.startswith("[") and given.endswith("]") else given)
    elif isinstance(given, (list, tuple)):
        out += split_overrides(",".join(str(o) for o in given))
    elif given is not None:
        raise ConfigError(f"--config overrides={given!r}: give a list, e.g. overrides='[experiment=ci]'")

    def flatten(key: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                if ":" in str(k):
                    raise ConfigError(
                        f"--config {key}=...: {k!r} is not a key; YAML needs a space after the colon, "
                        f"e.g. {key}='{{{str(k).split(':')[0]}: {str(k).split(':', 1)[1]}}}'"
                    )
                flatten(f"{key}.{k}", v)
        elif key in groups and isinstance(value, str):  # a file name as typed: `experiment=ci,demo` is
            out.append(f"{key}={value}")  # answered as two experiments, not as one odd name
        else:
            out.append(f"{key}={_hydra_value(value)}")

    for key, value in config.items():
        if key in ("overrides", "from"):
            continue
        if key not in valid:
            near = _closest(key, valid)
            fix = f"did you mean {near!r}?" if near else f"the keys are: {', '.join(valid)}"
            raise ConfigError(f"--config {key}=...: {key!r} is not a key of the configuration; {fix}")
        flatten(key, value)
    return out


def recorded_overrides(source: str) -> list[str]:
    """The overrides a run recorded in its folder (``from=results/<name>``), to replay that run."""
    folder = Path(source)
    if folder.is_file() or folder.suffix in (".yaml", ".json"):
        folder = folder.parent
    record = folder / OVERRIDES_RECORD
    if not record.is_file():
        raise ConfigError(
            f"from={source}: {record} does not exist; name a run folder that a run has started in "
            f"(from=results/<name>)"
        )
    given = yaml.safe_load(record.read_text())
    if not isinstance(given, list) or not all(isinstance(o, str) for o in given):
        raise ConfigError(f"from={source}: {record} is not a list of overrides; restore it, or run again")
    return given


_SNAKEMAKE_KEY = re.compile(r"[a-zA-Z_][\w-]*\w")


def _snakemake_value(text: str) -> Any:
    """A ``--config`` value read as Snakemake reads it (snakemake.cli.parse_config): an integer,
    a float, True/False, else YAML with every scalar a string, else the text."""
    if text == "":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return text


def command_line_overrides(args: Sequence[str], conf_dir: str | Path = DEFAULT_CONF_DIR) -> list[str]:
    """Hydra overrides from ``diff-erank config``'s arguments: every ``--config`` pair as Snakemake
    reads it (``overrides='[...]'``, ``from=results/<name>``, ``dataset={max_texts: 50}``), so a
    command copies between the two tools; a Hydra override Snakemake cannot take (a dotted key,
    ``+model@models.x=y``, ``+models=[...]``) as written."""
    out: list[str] = []
    for arg in args:
        key, sep, text = arg.partition("=")
        if sep and _SNAKEMAKE_KEY.fullmatch(key):
            out += overrides_from_snakemake({key: _snakemake_value(text)}, conf_dir)
        else:
            out.append(arg)
    return out


#: What ``diff-erank list`` shows: the config groups a user picks from, with their plural names.
CATALOG_GROUPS = {
    "experiments": "experiment",
    "models": "model",
    "datasets": "dataset",
    "mm_models": "mm_model",
    "mm_datasets": "mm_dataset",
}


def _first_comment(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def describe_entry(group: str, path: Path) -> str:
    """One line about a ``conf/<group>/<name>.yaml`` file, read from the file itself.

    Its ``description:`` if it has one, else what a model entry is (family, size, source, or how
    the demo trains it), else the file's first comment line (the base entries).
    """
    text = path.read_text()
    entry = yaml.safe_load(text) or {}
    if entry.get("description"):
        return str(entry["description"])
    if group in ("model", "mm_model") and entry.get("family") not in (None, "???"):
        label = f"{entry['family']} {entry.get('size', '')}".strip()
        train = entry.get("train")
        if isinstance(train, dict) and train.get("arch"):
            shape = f"{train['arch']}, hidden {train.get('hidden_size')}, {train.get('num_layers')} layer(s)"
            return f"{label}: trained by the demo ({shape})"
        extra = " (remote code)" if entry.get("trust_remote_code") else ""
        source = entry.get("source") or ("its published files, converted" if entry.get("minigpt") else None)
        return f"{label}: {source}{extra}"
    return _first_comment(text) or "-"


def catalog(
    conf_dir: str | Path = DEFAULT_CONF_DIR, groups: Sequence[str] = ()
) -> dict[str, list[tuple[str, str]]]:
    """``{plural group: [(name, one line), ...]}`` for the chosen groups (default: all)."""
    conf_dir = Path(conf_dir)
    out = {}
    for plural in groups or CATALOG_GROUPS:
        group = CATALOG_GROUPS[plural]
        files = sorted((conf_dir / group).glob("*.yaml"))
        out[plural] = [(f.stem, describe_entry(group, f)) for f in files]
    return out
