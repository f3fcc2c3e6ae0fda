"""The measurement cache shared by every experiment: ``<results_dir>/cache/``.

What determines a per-text eRank table is the model as loaded (hub source, revision, tokenizer,
dtype, dump dtype, truncation; a local model folder or tokenizer by the SHA-256 of the files the
variant loads; a zoo variant by its recipe and corpus; a fine-tuned one by its recipe, texts and
starting point), the variant, the prepared texts (the dataset's recipe, local data files by their
SHA-256), the device setting, the layers and the on-disk format. Their hash is a variant's key. No
path as written and no run folder is part of a key: two checkouts with different files at the
same relative path get two entries, and a renamed run, a twin experiment or a copied checkout
gets the same ones (issue 29, item 1; issue 25, item 9). One job measures every variant of one
model on one dataset (the trained model, its untrained counterparts, its stages), so the model's
code is imported, its tokenizer loaded and the texts tokenised once, not once per variant; the
cache entry is keyed by that set of variant keys. Two experiments that measure the same thing
(fig1, table4 and table9 on OPT x dolly-15k) share one dump and one table set, whatever they are
called, and a change to any part gives a new key: nothing stale is read.

    cache/texts/<dataset>.<digest>.parquet                prepared texts
    cache/dumps/<model>.<dataset>.<digest>/<layers>/...   hidden states per variant (temp() unless keep_dumps)
    cache/erank/<model>.<dataset>.<digest>/<layers>/...   per-text eRank per variant, <layers>.json: the key
    cache/demo/corpus.<digest>/corpus/, zoo/              the demo corpus; its tokenizer, zoo/<model>.<digest>
    cache/finetuned/<model>.ft-<name>.<digest>/           further-trained stages
    cache/gguf/<model>.<digest>/hf/                       converted GGUF checkpoints
    cache/sha256/                                         SHA-256 of local files, remembered by path and stat
    cache/specs/<digest>.json                             what a rule hands its step (:func:`spec_file`)

The run folder's ``erank/<model>/<dataset>/<variant>.parquet`` is a view of a cached table (made by
the ``diff`` step): its layers, or the first k texts of a larger sample drawn with the same seed
(table11's 1,000 and 5,000 are the first texts of its 10,000), with provenance naming the cached
table it came from. A table set with more layers serves a run that asks for fewer; that run's own
dump and erank rules then make that layer set, so its DAG ties the table to its inputs, and the
view checks the texts' SHA-256 the table records (issue 29, item 2).

Snakefile-cheap: stdlib only (:func:`select`, which the ``diff`` step calls, imports pandas).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diff_erank.config import ConfigError
from diff_erank.layers import ALL
from diff_erank.sources import data_files_identity, model_identity
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
#: The digest part of a cache key: what determines the entry, hashed (:func:`digest`).
HEX = r"[0-9a-f]{16}"
#: A cache key as a user reads it in ``snakemake -n``, the cache's folders, logs and benchmarks: the
#: names the entry is for, then its digest, joined by dots (``zoo-opt-xs.topics.3643a682a89d4b65``,
#: :func:`named`). Model, dataset and stage names hold no dot (the schema's ``propertyNames``), so
#: the dots separate them, and the digest is always the last 16 hex digits.
KEY = rf"(?:[A-Za-z0-9_-]+\.)+{HEX}"
#: The cache's folder of spec files (:func:`spec_file`).
SPECS = "specs"


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def named(hexdigest: str, *names: str) -> str:
    """A cache key: ``<name>.<name>.<digest>``. The digest alone is the entry's identity (what is
    hashed into another key, e.g. a texts key into a measurement's, is the digest, never the names);
    the names make a job, its log and its folder readable. The price: one entry reached under two
    model names (an experiment that names a model otherwise) is two entries, computed twice."""
    return ".".join((*names, hexdigest))


def key_digest(key: str) -> str:
    """The digest of a key (:func:`named`): what the entry is, whatever names it is filed under."""
    return key.rsplit(".", 1)[-1]


def cache_dir(cfg: dict[str, Any]) -> str:
    if cfg["name"] == "cache":
        raise ConfigError("name: 'cache' is the shared measurement cache's folder; pick another name")
    return f"{cfg['results_dir']}/cache"


def spec_file(root: str, obj: Any, write: bool = True) -> str:
    """``<root>/specs/<digest>.json``: the part of the configuration a rule hands its step, in a
    file named by its content, so that no JSON travels on a shell line. The rule puts the path in
    its params: it changes exactly when the content does, so Snakemake's params trigger reruns the
    job as the JSON itself did, and the path is the same in every run folder sharing the cache.
    Written once (atomically) by whichever run evaluates it first; ``write=False`` (a dry run) only
    names it."""
    text = json.dumps(obj, sort_keys=True)
    path = f"{root}/{SPECS}/{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if write and not Path(path).is_file():
        from diff_erank.storage import write_text

        write_text(text + "\n", path)
    return path


def layers_tag(layers: list[str | int]) -> str:
    return "+".join(str(x) for x in layers)


def memo_dir(cfg: dict[str, Any]) -> str:
    """Where the SHA-256 of local files are remembered (:func:`diff_erank.sources.file_sha256`)."""
    return f"{cache_dir(cfg)}/sha256"


def corpus_digest(cfg: dict[str, Any]) -> str | None:
    """What the demo corpus is: its settings and the Python version whose standard library it is cut
    from (:mod:`diff_erank.corpus`). The tokenizer is made from it and its ``vocab_size``."""
    if not cfg.get("corpus"):
        return None
    return digest({"corpus": cfg["corpus"], "python": platform.python_version()})


def corpus_key(cfg: dict[str, Any]) -> str | None:
    """The demo corpus's key, ``corpus.<digest>``."""
    d = corpus_digest(cfg)
    return named(d, "corpus") if d else None


def corpus_root(cfg: dict[str, Any]) -> str:
    """``<cache>/demo/<corpus key>``: the corpus parts (``corpus/``), the tokenizer (``zoo/tokenizer``)
    and the zoo models (``zoo/<model key>``) of every run with this corpus, whatever its name."""
    return f"{cache_dir(cfg)}/demo/{corpus_key(cfg)}"


def _zoo_digest(cfg: dict[str, Any], model: str) -> str | None:
    spec = cfg["models"][model]
    return digest({"train": spec["train"], "corpus": corpus_digest(cfg)}) if spec.get("train") else None


def _gguf_digest(cfg: dict[str, Any], model: str) -> str | None:
    spec = cfg["models"][model]
    return digest({"gguf": spec["gguf"], "dtype": spec.get("dtype")}) if spec.get("gguf") else None


def _first_named(cfg: dict[str, Any], model: str, of: Callable[[dict[str, Any], str], str | None]) -> str:
    """``of``'s digest of a model, named by the configuration's first model entry with that digest:
    entries that differ only in what it does not hash (init-scale's five entries of one model, M0
    at five init scales) share one entry, made once."""
    d = of(cfg, model)
    if d is None:
        raise ValueError(f"models.{model} is not made by the workflow (no train or gguf field)")
    return named(d, next(m for m in cfg["models"] if of(cfg, m) == d))


def zoo_key(cfg: dict[str, Any], model: str) -> str:
    """A zoo model's key: its training recipe (architecture, steps, seed, ...) on its corpus."""
    return _first_named(cfg, model, _zoo_digest)


def gguf_key(cfg: dict[str, Any], model: str) -> str:
    """A GGUF entry's converted folder's key: the checkpoint (file, SHA-256, packages, published
    config) and the dtype it is converted to; the run folder and the source folder's path are not."""
    return _first_named(cfg, model, _gguf_digest)


def texts_recipe(cfg: dict[str, Any], dataset: str, run: str | None = None) -> dict[str, Any]:
    """What determines a dataset's texts: its entry without labels, local files by their content
    (SHA-256, never the path as written), a demo part by its corpus's key. ``run`` is unused (kept
    for callers): no run folder is part of a key, so a renamed or copied run shares the cache."""
    spec = {k: v for k, v in cfg["datasets"][dataset].items() if k not in DATASET_NEUTRAL}
    source = spec["source"]
    if source["kind"] == "demo":  # made from the corpus, which its key names
        spec = {**spec, "corpus": corpus_digest(cfg)}
    elif source["kind"] != "hub" and source.get("data_files"):
        spec = {
            **spec,
            "source": {**source, "data_files": data_files_identity(source["data_files"], memo_dir(cfg))},
        }
    return spec


def texts_digest(cfg: dict[str, Any], dataset: str) -> str:
    return digest({"texts": texts_recipe(cfg, dataset)})


def texts_key(cfg: dict[str, Any], dataset: str, run: str | None = None) -> str:
    """The prepared texts' key, ``<dataset>.<digest>``."""
    return named(texts_digest(cfg, dataset), dataset)


def variant_identity(cfg: dict[str, Any], model: str, variant: str, run: str | None = None) -> dict[str, Any]:
    """What the weights of a model variant are: its entry's loading fields (local files by their
    content) and how it was made (a zoo model's recipe, a stage's recipe and texts)."""
    m = cfg["models"][model]
    ident: dict[str, Any] = {k: m.get(k) for k in MODEL_KEYS}
    ident |= model_identity(m, variant, memo_dir(cfg))
    ident["variant"] = variant
    v = Variant.parse(variant)
    scale = init_scale(m)
    if v.kind == "init" and scale not in (None, 1):  # M0 of another init scale
        ident["init_scale"] = scale
    if m.get("train"):  # a zoo model: its recipe on its corpus
        ident |= {"train": m["train"], "corpus": corpus_digest(cfg)}
    if v.kind == "ft":
        recipe = m["finetune"][v.name]
        ident |= {
            "finetune": recipe,
            "finetune_texts": texts_digest(cfg, recipe["dataset"]),
            "from": variant_identity(cfg, model, recipe["from"]),
        }
    return ident


def finetune_key(cfg: dict[str, Any], model: str, name: str) -> str:
    """A further-trained stage's key, ``<model>.ft-<name>.<digest>``: what its weights are (recipe,
    texts, starting point)."""
    stage = f"ft-{name}"
    hexdigest = digest({"finetuned": variant_identity(cfg, model, stage), "device": cfg.get("device")})
    return named(hexdigest, model, stage)


def measurement_digest(cfg: dict[str, Any], model: str, variant: str, dataset: str) -> str:
    return digest(
        {
            "model": variant_identity(cfg, model, variant),
            "texts": texts_digest(cfg, dataset),
            "device": cfg.get("device"),  # auto | cpu | cuda: a GPU's numbers are not a CPU's
            "format": CACHE_FORMAT,
            "measure": MEASURE_VERSION,
        }
    )


def measurement_key(
    cfg: dict[str, Any], model: str, variant: str, dataset: str, run: str | None = None
) -> str:
    """One variant's measurement on a dataset, ``<model>.<variant>.<dataset>.<digest>``."""
    return named(measurement_digest(cfg, model, variant, dataset), model, variant, dataset)


def set_key(
    cfg: dict[str, Any], model: str, dataset: str, run: str | None = None, names: list[str] | None = None
) -> str:
    """The key of one job's measurement, ``<model>.<dataset>.<digest>``: the variants ``names``
    (default: every variant of ``model``) on ``dataset``, by their digests."""
    names = variants(cfg["models"][model]) if names is None else names
    hexdigest = digest({"variants": {v: measurement_digest(cfg, model, v, dataset) for v in names}})
    return named(hexdigest, model, dataset)


def chunks(names: list[str], per_job: int | None) -> list[list[str]]:
    """A model's variants in jobs of at most ``per_job`` (cluster.variants_per_job), in order: a
    Pythia trajectory of 154 checkpoints is ten bounded jobs, not one of 33 hours and 2.8 TB. A
    model with no more variants than that is one job, under the key it always had."""
    n = per_job or len(names) or 1
    return [names[i : i + n] for i in range(0, len(names), n)] or [[]]


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
        filed: dict[str, str] | None = None,
    ) -> None:
        """``root``, ``measure`` and ``filed`` are a paper run's (:mod:`diff_erank.paper`): its
        cache, the layers each job measures (the union of its experiments'), by job key, and the
        key each texts or set digest is filed under (its owner's names: table11's wikipedia-10000
        is fig1's wikipedia, one entry)."""
        self.cfg, self.run, self.root = cfg, run, root or cache_dir(cfg)
        #: digest -> the key its entry is filed under in this DAG: the names of the first dataset or
        #: (model, dataset) that has it, so that two names for one entry are one job, not two
        self.filed: dict[str, str] = {} if filed is None else filed
        self.layers = layers_tag(cfg["layers"])
        self.measure = measure or {}
        self.tag_layers: dict[str, list[str | int]] = {self.layers: cfg["layers"]}
        self.tag_layers |= {layers_tag(v): list(v) for v in self.measure.values()}
        self.corpus = corpus_root(cfg) if cfg.get("corpus") else None
        #: zoo model key -> the first model trained by that recipe (a twin recipe trains once)
        self.zoo: dict[str, str] = {}
        self.finetuned: dict[str, tuple[str, str]] = {}  # stage key -> (model, stage name)
        self.gguf: dict[str, str] = {}  # converted GGUF key -> the first model entry of that checkpoint
        for m, spec in cfg["models"].items():
            if spec.get("gguf"):
                self.gguf.setdefault(gguf_key(cfg, m), m)
            if spec.get("train"):
                self.zoo.setdefault(zoo_key(cfg, m), m)
            for name in spec.get("finetune") or {}:
                self.finetuned.setdefault(finetune_key(cfg, m, name), (m, name))
        self.texts = {d: self._filed(texts_key(cfg, d, run)) for d in cfg["datasets"]}
        self.datasets_of = {}
        for d, k in self.texts.items():
            self.datasets_of.setdefault(k, d)
        self.prefix = prefix_samples(cfg)
        self.measured: dict[tuple[str, str, str], str] = {}  # (model, variant, dataset) -> variant key
        self.sets: dict[tuple[str, str], str] = {}  # (model, dataset) -> the key of its (first) job
        self.set_keys: dict[tuple[str, str], list[str]] = {}  # (model, dataset) -> its jobs' keys
        self._variants: dict[str, list[str]] = {}  # job key -> its variants
        per_job = (cfg.get("cluster") or {}).get("variants_per_job")
        for m, spec in cfg["models"].items():
            for d, dspec in cfg["datasets"].items():
                if dspec.get("measure", True):
                    src = self.prefix.get(d, (d, None))[0]
                    keys = []
                    for names in chunks(variants(spec), per_job):
                        keys.append(self._filed(set_key(cfg, m, src, run, names)))
                        self._variants.setdefault(keys[-1], names)
                    self.sets[(m, d)], self.set_keys[(m, d)] = keys[0], keys
                    for v in variants(spec):
                        self.measured[(m, v, d)] = measurement_key(cfg, m, v, src, run)
        self.jobs_of: dict[str, tuple[str, str]] = {}  # job key -> (model, dataset measured)
        for (m, d), keys in self.set_keys.items():
            for k in keys:
                self.jobs_of.setdefault(k, (m, self.prefix.get(d, (d, None))[0]))

    def _filed(self, key: str) -> str:
        """The key an entry is filed under in this DAG: its first names (:attr:`filed`)."""
        return self.filed.setdefault(key_digest(key), key)

    def measure_layers(self, key: str) -> list[str | int]:
        """The layers a job measures: the run's, or in a paper run the union its experiments ask."""
        return self.measure.get(key) or self.cfg["layers"]

    def layer_tags(self) -> list[str]:
        """Every layer tag this run's jobs measure (the dump and erank rules' ``layers`` wildcard)."""
        return sorted({layers_tag(self.measure_layers(k)) for k in self.jobs_of} | {self.layers})

    def variants_of(self, key: str) -> list[str]:
        """The variants one job measures (at most cluster.variants_per_job of its model's)."""
        return self._variants[key]

    def spec_file(self, obj: Any, write: bool = True) -> str:
        """:func:`spec_file` in this run's cache."""
        return spec_file(self.root, obj, write)

    def about(self, key: str) -> str | None:
        """What a cache key of this run stands for, in its names (None: not one of its keys)."""
        if key in self.jobs_of:
            m, d = self.jobs_of[key]
            return f"{m} on {d}: {' '.join(self.variants_of(key))} (cache key {key})"
        if key in self.datasets_of:
            return f"the texts of {self.datasets_of[key]} (cache key {key})"
        if key in self.zoo:
            return f"zoo model {self.zoo[key]} (cache key {key})"
        if key in self.finetuned:
            return "{} stage ft-{} (cache key {})".format(*self.finetuned[key], key)
        if key in self.gguf:
            return f"the GGUF checkpoint of {self.gguf[key]} (cache key {key})"
        return None

    def texts_spec(self, dataset: str) -> dict[str, Any]:
        """The dataset entry as ``prepare`` reads it: without the fields that do not change the texts."""
        return {k: v for k, v in self.cfg["datasets"][dataset].items() if k not in DATASET_NEUTRAL}

    # The cache's paths, by key. A rule gives a wildcard for the key (``"{key}"``) and the layer tag
    # (``"{layers}"``): its output pattern is the same path, so the names a user reads in the job
    # list, the folders, the logs and the benchmarks are the key's.
    def texts_file(self, key: str) -> str:
        """Prepared texts: ``<cache>/texts/<dataset>.<digest>.parquet``."""
        return f"{self.root}/texts/{key}.parquet"

    def texts_path(self, dataset: str) -> str:
        return self.texts_file(self.texts[dataset])

    def dump_path(self, key: str, tag: str | None = None, dumps: str | None = None) -> str:
        """A job's dump, ``<dumps>/<model>.<dataset>.<digest>/<layers>``: in the cache's ``dumps/``,
        or under ``dumps`` (node-local scratch when the dumps are not kept)."""
        return f"{dumps or self.root + '/dumps'}/{key}/{tag or layers_tag(self.measure_layers(key))}"

    def table_path(self, key: str, tag: str | None = None) -> str:
        """The directory of a job's per-variant tables (``<variant>.parquet``), beside ``<tag>.json``."""
        return f"{self.root}/erank/{key}/{tag or layers_tag(self.measure_layers(key))}"

    @property
    def demo(self) -> str:
        """The demo's folder: its corpus, tokenizer and zoo models (``<cache>/demo/corpus.<digest>``;
        ``<cache>/demo/none`` in a configuration without a corpus, where nothing is made there)."""
        return self.corpus or f"{self.root}/demo/none"

    def zoo_path(self, key: str) -> str:
        """A zoo model, beside its corpus and tokenizer: ``<cache>/demo/corpus.<digest>/zoo/<key>``."""
        return f"{self.demo}/zoo/{key}"

    def finetuned_path(self, key: str) -> str:
        """A further-trained stage: ``<cache>/finetuned/<model>.ft-<name>.<digest>``."""
        return f"{self.root}/finetuned/{key}"

    def gguf_path(self, key: str) -> str:
        """A GGUF entry's fetched file and converted ``hf/`` folder: ``<cache>/gguf/<model>.<digest>``."""
        return f"{self.root}/gguf/{key}"

    def source_tables(self, model: str, dataset: str) -> list[str]:
        """The cached table folders of every job of a model on a dataset (one per variants_per_job)."""
        return [self.source_table(model, dataset, key) for key in self.set_keys[(model, dataset)]]

    def wider_tables(self) -> dict[str, list[str | int]]:
        """``{layers tag: layers}`` of the finished table sets with more layers than this run asks
        for, under this run's set keys: a view may read one instead of measuring again, and the
        workflow then lets its own dump and erank rules make that tag (so this run's DAG connects
        the table to its texts and model files, and reruns it when one of them changes)."""
        out: dict[str, list[str | int]] = {}
        for (m, d), keys in self.set_keys.items():
            for key in keys:
                found = self._wider(m, d, key)
                if found:
                    out[Path(found).name] = self.tag_layers[Path(found).name]
        return out

    def _wider(self, model: str, dataset: str, key: str | None = None) -> str | None:
        key = key or self.sets[(model, dataset)]
        wanted = {str(x) for x in self.cfg["layers"]}
        for keyfile in sorted(Path(self.root, "erank", key).glob("*.json")):
            if keyfile.stem == self.layers:
                continue
            try:
                have = json.loads(keyfile.read_text())["layers"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged key file serves no view; this run measures its own layers
            if wanted <= {str(x) for x in have} and keyfile.with_suffix("").is_dir():
                self.tag_layers[keyfile.stem] = list(have)
                return str(keyfile.with_suffix(""))
        return None

    def source_table(self, model: str, dataset: str, key: str | None = None) -> str:
        """The cached tables a run-folder view reads: this layer set's, or finished ones with more."""
        key = key or self.sets[(model, dataset)]
        own = self.table_path(key)
        if Path(own).is_dir():
            return own
        return self._wider(model, dataset, key) or own

    def layers_of(self, tag: str) -> list[str | int]:
        """The layers a tag stands for: this run's, or a wider table set's (:meth:`wider_tables`)."""
        return self.cfg["layers"] if tag == self.layers else self.tag_layers[tag]

    def describe(self, key: str, layers: list[str | int] | None = None) -> dict[str, Any]:
        """The key file's content: what the cached tables measure, readable."""
        m, d = self.jobs_of[key]
        return {
            "key": key,
            "layers": self.measure_layers(key) if layers is None else layers,
            "variants": {
                v: {
                    "key": measurement_key(self.cfg, m, v, d),
                    **variant_identity(self.cfg, m, v),
                }
                for v in self.variants_of(key)
            },
            "texts": {"key": self.texts[d], "recipe": texts_recipe(self.cfg, d)},
            "device": self.cfg.get("device"),
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


class About:
    """A cache job in the names a user reads: ``{ABOUT:{wildcards.key}}`` in a rule's shell line is
    :meth:`Keys.about` of the key (``<model> on <dataset>: <variants> (cache key <key>)``), quoted,
    which the rule echoes as its log's first line (and ``snakemake -n -p`` prints). Not a param:
    the names are a run's labels, and a shared cache job's params must be the same in every run
    folder (a changed param reruns it); Snakemake's code trigger reads the shell line unformatted."""

    def __init__(self, keys: list[Keys]) -> None:
        self.keys = keys

    def __format__(self, key: str) -> str:
        import shlex

        text = next((t for k in self.keys if (t := k.about(key))), f"cache key {key}")
        return shlex.quote(text)


@contextlib.contextmanager
def entry_lock(path: str | Path) -> Iterator[None]:
    """Hold ``<path>.lock`` while a cache entry is written or reused: runs from other checkouts that
    share the cache (Snakemake's own lock is per working directory) wait instead of writing the same
    files, and find the entry finished when they get the lock (:func:`reuse_entry`)."""
    from diff_erank.storage import held

    with held(f"{path}.lock", f"{path} is being written by another run: waiting for it"):
        yield


# -- entries published by a link, so that no run deletes what another reads ---------------------------
#
# A finished entry ``<final>`` is a symbolic link to its data, ``.<final name>.data-<host>-<pid>-<rand>``
# beside it. Snakemake removes a job's existing outputs before the job runs (an entry another run
# finished after this run's DAG was built) and deletes temp() outputs after use: on a link it removes
# the link only (``os.remove``), so what another run reads stays, and the job, once it holds the
# entry's lock, links the finished data again instead of recomputing it (:func:`reuse_entry`).
ELIDED = "elided.json"  # a dump not written again because the tables it is for are finished
CLAIMS = ".claims"  # <dump data>/.claims/<run digest>: run folders that may still read a dump


def _data_dirs(final: Path) -> list[Path]:
    """The finished data of an entry, oldest first (complete by construction: renamed when done)."""
    found = [p for p in final.parent.glob(f".{final.name}.data-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _link(final: Path, data: Path) -> None:
    """Point ``final`` at ``data`` in one step (a new link renamed over the old one)."""
    import os

    from diff_erank.storage import atomic_publish_dir, unique_name

    tmp = unique_name(final, "link")
    os.symlink(data.name, tmp)
    try:
        os.replace(tmp, final)
    except IsADirectoryError:  # a real directory (a cache from before links): swapped out, deleted
        atomic_publish_dir(tmp, final)


def publish_entry(partial: str | Path, final: str | Path) -> Path:
    """Publish a finished ``partial`` directory as the entry ``final``; its data directory."""
    import os
    import socket
    import uuid

    final = Path(final)
    data = final.with_name(f".{final.name}.data-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(partial, data)
    _link(final, data)
    return data


def finished(final: str | Path) -> Path | None:
    """The finished data of an entry, or None; reads only (the lock is not needed to look)."""
    final = Path(final)
    if final.is_dir():  # a link to data, or a real directory published before links
        return final.resolve()
    dirs = _data_dirs(final)
    return dirs[-1] if dirs else None


def reuse_entry(final: str | Path) -> Path | None:
    """Under the entry's lock: its finished data, linked at ``final`` again if Snakemake removed the
    link; None if the entry has to be computed."""
    final = Path(final)
    data = finished(final)
    if data is not None and not final.is_dir():
        _link(final, data)
        log.info("%s: reusing the finished entry another run published (%s)", final, data.name)
    return data


def measured_entry(dump: str | Path) -> Path:
    """The eRank tables a dump is for: ``<cache>/dumps/<key>/<layers>`` -> ``<cache>/erank/<key>/<layers>``"""
    dump = Path(dump)
    return dump.parent.parent.parent / "erank" / dump.parent.name / dump.name


def _run_tag(run: str | Path) -> str:
    return digest(str(Path(run).resolve()))


def claim(data: Path, run: str | Path) -> None:
    """Record that the run folder ``run`` may still read the dump ``data`` (its eRank job is to come)."""
    d = data / CLAIMS
    d.mkdir(exist_ok=True)
    (d / _run_tag(run)).write_text(str(Path(run).resolve()) + "\n")


def drop_dump(dump: str | Path, data: Path, run: str | Path) -> bool:
    """After ``run`` measured a temp() dump: remove its claim, and the dump's data if no other run
    folder still claims it (their eRank jobs have not run). True if the data was deleted."""
    import shutil

    with entry_lock(dump):
        (data / CLAIMS / _run_tag(run)).unlink(missing_ok=True)
        others = list((data / CLAIMS).glob("*")) if (data / CLAIMS).is_dir() else []
        if others or not data.is_dir():
            return False
        shutil.rmtree(data)
        return True


def elide_dump(dump: str | Path) -> Path:
    """Publish a stub for a temp() dump whose eRank tables are finished: nothing reads it again."""
    import shutil

    dump = Path(dump)
    partial = dump.with_name(dump.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / ELIDED).write_text(json.dumps({"measured": str(measured_entry(dump))}) + "\n")
    return publish_entry(partial, dump)


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


def entry_advice(table: str | Path) -> str:
    """What to do about a damaged cached eRank table: delete its entry (the ``<layers>`` folder and
    its key file, the erank rule's two outputs), then rerun: the plain rerun measures it again."""
    folder = Path(table).parent
    return f"delete the cache entry {folder}/ and {folder}.json, then rerun"


def read_key_file(keyfile: str | Path) -> dict[str, Any]:
    """A cached table set's key file (``<layers>.json``), or a UserError naming it and what to do."""
    from diff_erank.storage import IntegrityError

    try:
        return json.loads(Path(keyfile).read_text())
    except (OSError, ValueError) as exc:
        folder = Path(keyfile).with_suffix("")
        raise IntegrityError(
            f"the cache key file {keyfile} is unreadable or truncated ({exc}): delete it and the folder "
            f"{folder}/, then rerun"
        ) from None


def check_texts(table: str | Path, prov: dict[str, Any], texts: str | Path) -> None:
    """Refuse a cached table measured on other texts than the ones this run prepared: a view must
    never pair one run's texts with another's numbers (the table records the texts' SHA-256)."""
    from diff_erank.storage import IntegrityError, sha256

    recorded = (prov.get("dump") or {}).get("texts_sha256")
    if recorded is None:  # a table from before the texts were recorded: keyed by recipe only
        log.warning("%s does not record the SHA-256 of its texts: not checked against %s", table, texts)
        return
    if recorded != sha256(texts):
        raise IntegrityError(
            f"{table} was measured on other texts than {texts} (SHA-256 differs): {entry_advice(table)}"
        )


def _prefix_truncated(dump: dict[str, Any], prov: dict[str, Any], df: Any, first: int) -> int | None:
    """Texts among the first ``first`` that the dump cut at ``max_length``: its recorded positions,
    or, for a dump from before they were recorded, the measured texts exactly ``max_length`` long
    (an upper bound: a text of exactly that length was not cut); ``None`` where neither is known."""
    if "truncated_positions" in dump:
        return sum(1 for p in dump["truncated_positions"] if p < first)
    if not dump.get("n_truncated"):
        return 0 if "n_truncated" in dump else None
    max_length = ((prov.get("dump_provenance") or {}).get("config") or {}).get("max_length")
    if not max_length or "n_tokens" not in df:
        return None
    return int((df.drop_duplicates("position")["n_tokens"] >= max_length).sum())


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

    df = read_parquet(table, advice=entry_advice(table))
    prov = read_provenance(table, advice=entry_advice(table))
    check_texts(table, prov, texts)
    wanted = [str(x) for x in layers]
    missing = sorted(set(wanted) - set(df["layer"].astype(str)))
    if missing and ALL not in wanted:
        raise ConfigError(f"{table} holds no rows for layer(s) {missing}")
    if ALL not in wanted:
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
            "n_truncated": _prefix_truncated(dump, prov, df, first),
            "n_tokens": int(df.drop_duplicates("position")["n_tokens"].sum()),
        }
    keyfile = Path(table).parent.with_suffix(".json")  # <layers>/<variant>.parquet beside <layers>.json
    key = read_key_file(keyfile) if keyfile.is_file() else None
    record = provenance(
        dump=dump,
        dump_provenance=prov.get("dump_provenance"),
        measured=prov,  # the cached table's own record: where, when and by what it was computed
        cache={"table": str(table), "key": key, "layers": wanted, "first": first},
    )
    write_parquet(pd.DataFrame(df).reset_index(drop=True), out, record)


# -- garbage collection: what no run folder references ------------------------------------------------
def _entries(kind_dir: Path) -> dict[tuple[str, str], list[Path]]:
    """``{(key, layers): [every path of that entry]}``: its link, data, partial, key file, locks.
    A bare digest is an entry from before keys carried names: no run reads it, so it is collected."""
    import re

    out: dict[tuple[str, str], list[Path]] = {}
    keyed = [p for p in kind_dir.glob("*") if p.is_dir() and re.fullmatch(f"{KEY}|{HEX}", p.name)]
    for key_dir in sorted(keyed):
        for p in key_dir.iterdir():
            m = re.fullmatch(r"\.?(.+?)(\.data-.*|\.partial|\.json|\.lock(\.excl)?|\.link\..*)?", p.name)
            if m:
                out.setdefault((key_dir.name, m.group(1)), []).append(p)
    return out


def run_folders(results_dir: str | Path) -> list[Path]:
    """The run folders under ``results_dir``: ``<name>/``, and a paper run's ``<name>/<experiment>/``
    (:mod:`diff_erank.paper`); never the cache."""
    results = Path(results_dir)
    tops = [p for p in results.iterdir() if p.is_dir() and p.name != "cache"]
    nested = (q for p in tops for q in p.iterdir() if q.is_dir() and (q / "config.yaml").is_file())
    return sorted([*tops, *nested])


def referenced(results_dir: str | Path) -> set[tuple[str, str]]:
    """``(key, layers)`` of every cached table set a run folder's views were made from."""
    from diff_erank.storage import read_provenance

    found = set()
    for run in run_folders(results_dir):
        if not (run / "erank").is_dir():
            continue
        for view in (run / "erank").rglob("*.parquet"):
            try:
                table = Path(read_provenance(view)["cache"]["table"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.add((table.parent.parent.name, table.parent.name))
    return found


def collect_garbage(results_dir: str | Path, dry_run: bool = False) -> list[Path]:
    """Delete what no run folder references: eRank tables no view was made from (and their dumps),
    data a link no longer points to, stubs and dumps already measured, leftover ``.partial``
    folders, and the spec files (:func:`spec_file`: a run writes again those its jobs read).
    Refuses while any run holds its run folder (its views may not be written yet)."""
    import shutil

    from diff_erank.errors import UserError
    from diff_erank.storage import FileLock

    results = Path(results_dir)
    root = results / "cache"
    for run in run_folders(results):
        lock = FileLock(run / ".run.lock")
        if (run / ".run.lock").exists() or lock.excl.exists():
            if not lock.try_acquire():
                who = lock.holder()
                raise UserError(f"{run} is in use by a run ({who}): run `cache gc` when none is going")
            lock.release()
    keep = referenced(results)
    doomed: list[Path] = []
    for kind in ("erank", "dumps"):
        for (key, name), paths in _entries(root / kind).items():
            final = root / kind / key / name
            target = final.resolve() if final.is_symlink() and final.exists() else None
            stub = target is not None and (target / ELIDED).is_file()
            wanted = (key, name) in keep and not stub and (kind == "erank" or target is not None)
            for p in paths:
                if p.suffix == ".lock" or p.name.endswith(".lock.excl"):
                    continue
                if wanted and (p in (final, target) or p.suffix == ".json"):
                    continue
                doomed.append(p)
    if (root / SPECS).is_dir():  # every run names its specs again, and writes those it does not find
        doomed += sorted((root / SPECS).iterdir())
    if not dry_run:
        for p in doomed:
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
    return doomed
