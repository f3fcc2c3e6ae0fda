"""The measurement cache shared by every experiment: ``<results_dir>/cache/``.

What determines a per-text eRank table is the model as loaded (source, revision, tokenizer, dtype,
dump dtype, truncation; for a zoo or fine-tuned variant also its recipe and the run folder that
built it), the variant, the prepared texts (the dataset's recipe; the file's SHA-256 is in every
dump's fingerprint and Snakemake reruns what follows a rewritten texts file), the layers and the
on-disk format. Their hash is a variant's key. One job measures every variant of one model on one
dataset (the trained model, its untrained counterparts, its stages), so the model's code is
imported, its tokenizer loaded and the texts tokenised once, not once per variant; the cache entry
is keyed by that set of variant keys. Two experiments that measure the same thing (fig1, table4
and table9 on OPT x dolly-15k) share one dump and one table set, whatever they are called, and a
change to any part gives a new key: nothing stale is read.

    cache/texts/<texts key>.parquet               prepared texts
    cache/dumps/<key>/<layers>/<variant>/         hidden states per variant (temp() unless keep_dumps)
    cache/erank/<key>/<layers>/<variant>.parquet  per-text eRank, with <layers>.json: what the key is

The run folder's ``erank/<model>/<dataset>/<variant>.parquet`` is a view of a cached table (made by
the ``diff`` step): its layers, or the first k texts of a larger sample drawn with the same seed
(table11's 1,000 and 5,000 are the first texts of its 10,000), with provenance naming the cached
table it came from. A table set with more layers serves a run that asks for fewer.

Snakefile-cheap: stdlib only (:func:`select`, which the ``diff`` step calls, imports pandas).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diff_erank.config import ConfigError
from diff_erank.variants import Variant, init_scale, variants

log = logging.getLogger(__name__)

#: Bump with dump.FORMAT_VERSION (a test ties them) or when the eRank computation changes numbers.
CACHE_FORMAT = 1
MEASURE_VERSION = 1
#: Model fields that change hidden states; size labels, resources and plots do not.
MODEL_KEYS = (
    "source",
    "revision",
    "tokenizer",
    "tokenizer_revision",
    "dtype",
    "dump_dtype",
    "trust_remote_code",
    "max_length",
    "min_tokens",
    "gguf",  # a GGUF entry's file, SHA-256 and packages: its identity (source may be null)
    "store",  # hidden states or spectra on disk: two kinds of dump
)
#: Dataset fields that do not change the texts.
DATASET_NEUTRAL = ("description", "paper_name", "paper_variant", "measure", "size_hint")
KEY = r"[0-9a-f]{16}"


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_dir(cfg: dict[str, Any]) -> str:
    if cfg["name"] == "cache":
        raise ConfigError("name: 'cache' is the shared measurement cache's folder; pick another name")
    return f"{cfg['results_dir']}/cache"


def layers_tag(layers: list[str | int]) -> str:
    return "+".join(str(x) for x in layers)


def texts_recipe(cfg: dict[str, Any], dataset: str, run: str) -> dict[str, Any]:
    spec = {k: v for k, v in cfg["datasets"][dataset].items() if k not in DATASET_NEUTRAL}
    if spec["source"]["kind"] == "demo":  # made from the run folder's own corpus
        spec = {**spec, "corpus": cfg.get("corpus"), "run": str(Path(run).resolve())}
    return spec


def texts_key(cfg: dict[str, Any], dataset: str, run: str) -> str:
    return digest({"texts": texts_recipe(cfg, dataset, run)})


def variant_identity(cfg: dict[str, Any], model: str, variant: str, run: str) -> dict[str, Any]:
    """What the weights of a model variant are: its entry's loading fields and how it was made."""
    m = cfg["models"][model]
    ident: dict[str, Any] = {k: m.get(k) for k in MODEL_KEYS}
    ident["variant"] = variant
    v = Variant.parse(variant)
    scale = init_scale(m)
    if v.kind == "init" and scale not in (None, 1):  # M0 of another init scale
        ident["init_scale"] = scale
    if m.get("train"):  # a zoo model trained in this run folder
        ident |= {"train": m["train"], "corpus": cfg.get("corpus"), "run": str(Path(run).resolve())}
    if v.kind == "ft":
        recipe = m["finetune"][v.name]
        ident |= {
            "finetune": recipe,
            "finetune_texts": texts_key(cfg, recipe["dataset"], run),
            "from": variant_identity(cfg, model, recipe["from"], run),
            "run": str(Path(run).resolve()),
        }
    return ident


def measurement_key(cfg: dict[str, Any], model: str, variant: str, dataset: str, run: str) -> str:
    return digest(
        {
            "model": variant_identity(cfg, model, variant, run),
            "texts": texts_key(cfg, dataset, run),
            "format": CACHE_FORMAT,
            "measure": MEASURE_VERSION,
        }
    )


def set_key(cfg: dict[str, Any], model: str, dataset: str, run: str) -> str:
    """The key of one job's measurement: every variant of ``model`` on ``dataset``, by their keys."""
    names = variants(cfg["models"][model])
    return digest({"variants": {v: measurement_key(cfg, model, v, dataset, run) for v in names}})


def prefix_samples(cfg: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """``{small: (large, k)}``: datasets whose texts are the first k of a larger one's sample.

    Same recipe but ``max_texts``, sampled ``paper`` (``random.seed`` + ``random.sample``, which
    draws one index after another, so a smaller k gives a prefix of a larger draw; the ``diff``
    step checks it for the actual population) or ``first``.
    """
    out: dict[str, tuple[str, int]] = {}
    ds = cfg["datasets"]

    def base(name: str) -> str:
        spec = {k: v for k, v in ds[name].items() if k not in (*DATASET_NEUTRAL, "max_texts")}
        return json.dumps(spec, sort_keys=True, default=str)

    for small, spec in ds.items():
        k = spec.get("max_texts")
        if not k or spec["sampling"]["method"] not in ("paper", "first") or spec["source"]["kind"] == "demo":
            continue
        larger = [
            (ds[o]["max_texts"], o)
            for o in ds
            if o != small and ds[o].get("max_texts") and ds[o]["max_texts"] > k and base(o) == base(small)
        ]
        if larger:
            out[small] = (max(larger)[1], k)
    return out


class Keys:
    """Every cache path of one experiment, and the way back from a key to its job's names."""

    def __init__(
        self,
        cfg: dict[str, Any],
        run: str,
        root: str | None = None,
        measure: dict[str, list[str | int]] | None = None,
    ) -> None:
        """``root`` and ``measure`` are a paper run's (:mod:`diff_erank.paper`): its cache, and the
        layers each job measures (the union of its experiments'), by job key."""
        self.cfg, self.run, self.root = cfg, run, root or cache_dir(cfg)
        self.layers = layers_tag(cfg["layers"])
        self.measure = measure or {}
        self.texts = {d: texts_key(cfg, d, run) for d in cfg["datasets"]}
        self.datasets_of = {}
        for d, k in self.texts.items():
            self.datasets_of.setdefault(k, d)
        self.prefix = prefix_samples(cfg)
        self.measured: dict[tuple[str, str, str], str] = {}  # (model, variant, dataset) -> variant key
        self.sets: dict[tuple[str, str], str] = {}  # (model, dataset) -> the key of its job
        for m, spec in cfg["models"].items():
            for d, dspec in cfg["datasets"].items():
                if dspec.get("measure", True):
                    src = self.prefix.get(d, (d, None))[0]
                    self.sets[(m, d)] = set_key(cfg, m, src, run)
                    for v in variants(spec):
                        self.measured[(m, v, d)] = measurement_key(cfg, m, v, src, run)
        self.jobs_of: dict[str, tuple[str, str]] = {}  # set key -> (model, dataset measured)
        for (m, d), k in self.sets.items():
            self.jobs_of.setdefault(k, (m, self.prefix.get(d, (d, None))[0]))

    def measure_layers(self, key: str) -> list[str | int]:
        """The layers a job measures: the run's, or in a paper run the union its experiments ask."""
        return self.measure.get(key) or self.cfg["layers"]

    def layer_tags(self) -> list[str]:
        """Every layer tag this run's jobs measure (the dump and erank rules' ``layers`` wildcard)."""
        return sorted({layers_tag(self.measure_layers(k)) for k in self.jobs_of} | {self.layers})

    def variants_of(self, key: str) -> list[str]:
        return variants(self.cfg["models"][self.jobs_of[key][0]])

    def texts_spec(self, dataset: str) -> dict[str, Any]:
        """The dataset entry as ``prepare`` reads it: without the fields that do not change the texts."""
        return {k: v for k, v in self.cfg["datasets"][dataset].items() if k not in DATASET_NEUTRAL}

    def texts_path(self, dataset: str) -> str:
        return f"{self.root}/texts/{self.texts[dataset]}.parquet"

    def dump_path(self, key: str) -> str:
        return f"{self.root}/dumps/{key}/{layers_tag(self.measure_layers(key))}"

    def table_path(self, key: str, tag: str | None = None) -> str:
        """The directory of a job's per-variant tables (``<variant>.parquet``)."""
        return f"{self.root}/erank/{key}/{tag or layers_tag(self.measure_layers(key))}"

    def source_table(self, model: str, dataset: str) -> str:
        """The cached tables a run-folder view reads: this layer set's, or finished ones with more."""
        key = self.sets[(model, dataset)]
        own = self.table_path(key)
        if Path(own).is_dir():
            return own
        wanted = {str(x) for x in self.cfg["layers"]}
        for keyfile in sorted(Path(self.root, "erank", key).glob("*.json")):
            try:
                have = {str(x) for x in json.loads(keyfile.read_text())["layers"]}
            except (OSError, ValueError, KeyError):
                continue
            if wanted <= have and keyfile.with_suffix("").is_dir():
                return str(keyfile.with_suffix(""))
        return own

    def describe(self, key: str) -> dict[str, Any]:
        """The key file's content: what the cached tables measure, readable."""
        m, d = self.jobs_of[key]
        return {
            "key": key,
            "layers": self.measure_layers(key),
            "variants": {
                v: {
                    "key": measurement_key(self.cfg, m, v, d, self.run),
                    **variant_identity(self.cfg, m, v, self.run),
                }
                for v in self.variants_of(key)
            },
            "texts": {"key": self.texts[d], "recipe": texts_recipe(self.cfg, d, self.run)},
            "format": CACHE_FORMAT,
            "measure": MEASURE_VERSION,
        }

    def dump_spec(self, key: str) -> dict[str, Any]:
        """The part of a model entry a dump reads: the same in every experiment that shares the key
        (labels, resources and recipes are left out, so they do not rerun a shared dump)."""
        m = self.cfg["models"][self.jobs_of[key][0]]
        spec = {k: m.get(k) for k in (*MODEL_KEYS, "batch_tokens", "shard_texts", "train")}  # train: zoo
        scale = init_scale(m)
        if scale not in (None, 1):  # M0 at another init scale: in its variants' keys (variant_identity)
            spec["untrained"] = {"init_scale": scale}
        return spec


@contextlib.contextmanager
def entry_lock(path: str | Path) -> Iterator[None]:
    """Hold ``<path>.lock`` while a cache entry is written: runs from other checkouts that share the
    cache (Snakemake's own lock is per working directory) wait instead of writing the same files."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.warning("%s is being written by another run: waiting for it", path)
            fcntl.lockf(f, fcntl.LOCK_EX)
        yield


def check_prefix(texts_prov: dict[str, Any], k: int) -> None:
    """Raise unless the first k texts of this prepared sample are the k-text sample of the same recipe."""
    from diff_erank.data import DataError, sample_indices

    spec = texts_prov["config"]
    method, seed = spec["sampling"]["method"], spec["sampling"]["seed"]
    n, big = texts_prov.get("n_eligible"), spec.get("max_texts")
    if n is None:
        raise DataError("the larger sample's texts table does not record n_eligible: rerun its prepare")
    if sample_indices(n, k, method, seed) != sample_indices(n, big, method, seed)[:k]:
        raise DataError(
            f"a {k}-text sample of this recipe is not the first {k} of its {big}-text sample "
            f"({n} rows to draw from): measure it on its own (give it another sampling seed)"
        )


def select(
    table: str | Path,
    out: str | Path,
    layers: list[str | int],
    texts: str | Path,
    first: int | None = None,
) -> None:
    """Write the run folder's view of a cached eRank table: its layers and (prefix) texts."""
    import pandas as pd

    from diff_erank.provenance import provenance
    from diff_erank.storage import read_parquet, read_provenance, write_parquet

    df = read_parquet(table)
    prov = read_provenance(table)
    wanted = [str(x) for x in layers]
    missing = sorted(set(wanted) - set(df["layer"].astype(str)))
    if missing and "all" not in wanted:
        raise ConfigError(f"{table} holds no rows for layer(s) {missing}")
    if "all" not in wanted:
        df = df[df["layer"].astype(str).isin(wanted)]
    dump = dict(prov.get("dump") or {})
    if first is not None:
        tprov = read_provenance(texts)
        check_prefix(tprov, first)
        df = df[df["position"] < first]
        head = read_parquet(texts, columns=["text"])["text"].iloc[:first].fillna("")
        measured = set(df["position"])
        empty = sum(1 for i, t in enumerate(head) if i not in measured and not t.strip())
        dump |= {
            "n_texts_in": first,
            "n_texts": len(measured),
            "n_skipped_empty": empty,
            "n_skipped_short": first - len(measured) - empty,
            "n_tokens": int(df.drop_duplicates("position")["n_tokens"].sum()),
        }
    keyfile = Path(table).parent.with_suffix(".json")  # <layers>/<variant>.parquet beside <layers>.json
    key = json.loads(keyfile.read_text()) if keyfile.is_file() else None
    record = provenance(
        dump=dump,
        dump_provenance=prov.get("dump_provenance"),
        measured=prov,  # the cached table's own record: where, when and by what it was computed
        cache={"table": str(table), "key": key, "layers": wanted, "first": first},
    )
    write_parquet(pd.DataFrame(df).reset_index(drop=True), out, record)
