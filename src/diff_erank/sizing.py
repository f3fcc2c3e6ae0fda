"""How much memory, GPU memory, threads, time and scratch disk each job needs, estimated up front.

A job is sized from the model entry (``params`` and ``shape``: hidden size, layers, vocabulary; the
dtypes) and the texts: before ``prepare`` has run, from the dataset's ``size_hint`` (a rough mean,
for ``plan`` and dry runs); after, from the prepared table's provenance, which records every
text's length in characters (``prepare`` writes it; tokens are taken as characters / 3.5, a
deliberate over-estimate for English BPE's ~4-4.5, each text capped at ``max_length``). Snakemake
re-evaluates a job's resources once its inputs exist, so a dump asks for what its texts need.

The Snakefile builds the typed entries once (:class:`diff_erank.entries.ModelEntry`,
:class:`~diff_erank.entries.DatasetEntry`) and passes those; a multi-modal entry has no typed
class yet, so :func:`mm_need` and :func:`minigpt_convert_need` read its dict. The Snakefile imports
this module on every job and every node: stdlib (and PyArrow for the footer of the texts table)
only (the entries are imported for their types alone). The same functions size the rules and
print ``diff-erank plan``. Every estimate can be overridden per model (``models.<name>.resources``:
mem_mb, gpu_mem_gb, runtime, threads); a job that exceeds one fails with a message naming that
override.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diff_erank.errors import UserError
from diff_erank.layers import n_distinct

if TYPE_CHECKING:  # the Snakefile builds the entries; sizing only reads their fields
    from diff_erank.entries import DatasetEntry, ModelEntry

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Characters per token assumed for prepared texts (English BPE gives ~4-4.5: this errs high).
CHARS_PER_TOKEN = 3.5
#: Sustained throughput assumed for a forward pass, FLOP/s (A100-class; float32 without TF32).
GPU_FLOPS = {"float32": 15e12, "float16": 100e12, "bfloat16": 100e12}
CPU_FLOPS_PER_THREAD = 20e9
#: Seconds for the eRank of one text of 2048 tokens x 5120 dims on one thread (measured, issue 12).
ERANK_REF_SECONDS = 1.9
ERANK_REF_WORK = 2048 * 5120**2 + 5120**3
DISK_MB_PER_S = 200
MB = 1e6
#: Bytes of one row (one text, one layer, one variant) of a per-text eRank table on disk, with the
#: key file and Parquet's own overhead rounded up: what stays on the shared filesystem per measurement.
TABLE_ROW_BYTES = 200
#: Each retry (Snakemake's ``attempt``) asks this much more memory, GPU memory and time than the last.
RETRY_GROWTH = 0.5


class ResourceError(UserError, RuntimeError):
    """A job that needs more than it asked for; the message names the resource and the override."""


def limit_memory(mem_mb: int | None) -> None:
    """Cap this process's data segment at the job's memory (CPU jobs only: CUDA maps far more
    virtual memory than it uses), so that going over raises MemoryError with a message naming
    the resource instead of a silent kill by the batch system's OOM killer."""
    if not mem_mb:
        return
    import resource

    limit = int(mem_mb * 1.05 * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


@dataclass(frozen=True)
class Shape:
    """What sizes a model's jobs: parameters, hidden size, blocks, vocabulary, dtypes."""

    params: float
    hidden: int
    layers: int
    vocab: int
    dtype: str = "float32"
    dump_dtype: str = "float32"


@dataclass(frozen=True)
class Texts:
    """Texts of one dataset as one model sees them: count, total and longest tokens."""

    n: int
    tokens: int
    longest: int
    known: bool  # from the prepared table (True) or from the size hint (False)


@dataclass
class Need:
    """One job's request. ``gpu_mem_mb`` 0 = no GPU; runtime in minutes."""

    mem_mb: int
    runtime: int
    threads: int = 1
    gpus: int = 0
    gpu_mem_mb: int = 0
    disk_mb: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.runtime / 60


def shape(model: ModelEntry) -> Shape:
    """The model's sizes: ``shape`` and ``params`` of a hub entry, ``train`` of a zoo model.

    A hub entry without ``shape`` is sized as a GPT-style model of its ``params`` with 128-wide
    heads per layer (d = 128 L, P = 12 L d^2), which over-estimates hidden size for small models.
    """
    dtype = model.dtype or "float32"
    s = model.shape or {}
    train = model.train or {}
    hidden = s.get("hidden_size") or train.get("hidden_size")
    layers = s.get("num_layers") or train.get("num_layers")
    vocab = s.get("vocab_size") or 50272
    params = model.params
    if not (hidden and layers):
        p = float(params or 1e9)
        layers = max(1, round((p / (12 * 128**2)) ** (1 / 3)))
        hidden = 128 * layers
    if not params:
        params = 12 * layers * hidden**2 + vocab * hidden
    return Shape(float(params), int(hidden), int(layers), int(vocab), dtype, model.dump_dtype)


@lru_cache(maxsize=256)
def _prepared_chars(path: str, mtime: float) -> tuple[int, ...]:
    """Characters per text of a prepared table: its provenance's ``n_chars``, else its text column."""
    import json

    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    prov = json.loads(meta.get(b"diff_erank.provenance", b"{}"))
    if prov.get("n_chars") is not None:
        return tuple(prov["n_chars"])
    col = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    return tuple(len(t or "") for t in col)


def texts_size(dataset: DatasetEntry, model: ModelEntry, texts_path: str | Path | None = None) -> Texts:
    """Tokens of a dataset's texts for a model: counted from the prepared table when it exists."""
    max_length = int(model.max_length or 2048)
    if texts_path and Path(texts_path).is_file():
        chars = _prepared_chars(str(texts_path), Path(texts_path).stat().st_mtime)
        toks = [min(max_length, math.ceil(c / CHARS_PER_TOKEN) + 1) for c in chars]
        return Texts(len(toks), sum(toks), max(toks, default=0), True)
    hint_texts = dataset.size_hint.texts if dataset.size_hint else None
    hint_mean = dataset.size_hint.mean_tokens if dataset.size_hint else None
    n = dataset.max_texts or hint_texts or 10000
    if dataset.max_texts and hint_texts:
        n = min(n, hint_texts)
    mean = min(max_length, hint_mean or max_length / 2)
    return Texts(int(n), int(n * mean), max_length, False)


def _overrides(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``resources`` an entry sets (a model entry's, or a multi-modal entry's, still a dict)."""
    return {k: v for k, v in (resources or {}).items() if v is not None}


def _apply(need: Need, resources: Mapping[str, Any] | None) -> Need:
    """An entry's ``resources`` override the estimates (and are named in failure messages)."""
    o = _overrides(resources)
    need.overrides = o
    if "mem_mb" in o:
        need.mem_mb = int(o["mem_mb"])
    if "runtime" in o:
        need.runtime = int(o["runtime"])
    if "threads" in o:
        need.threads = int(o["threads"])
    if "gpus" in o:
        need.gpus = int(o["gpus"])
    if "gpu_mem_gb" in o:
        need.gpu_mem_mb = int(o["gpu_mem_gb"] * 1000)
    if not need.gpus:
        need.gpu_mem_mb = 0
    return need


def _minutes(seconds: float) -> int:
    """Runtime to ask for: 1.5 x the estimate plus 10 minutes of start-up, whole minutes."""
    return math.ceil(seconds * 1.5 / 60) + 10


def gpu_count(resources: Mapping[str, Any] | None, device: str) -> int:
    """GPUs a job asks for: none on ``device: cpu``, else the entry's ``resources.gpus`` or one."""
    if device == "cpu":
        return 0
    return int(_overrides(resources).get("gpus", 1))


def dump_need(
    model: ModelEntry,
    texts: Texts,
    layers: list[str | int],
    device: str = "auto",
    threads: int = 4,
    n_variants: int = 1,
) -> Need:
    """A hidden-state dump: weights + one batch's hidden states and logits on the GPU, one shard
    of hidden states in host memory, every stored layer of every token on disk. A job dumps
    ``n_variants`` variants one after the other: n times the time and the disk, the memory of one."""
    s = shape(model)
    b, sb = BYTES[s.dtype], BYTES[s.dump_dtype]
    n_layers = n_distinct(layers, s.layers)
    batch = min(int(model.batch_tokens or 16384), max(texts.tokens, 1))
    weights = s.params * b
    # all L+1 hidden states of the batch (output_hidden_states), the logits and their float copy,
    # one block's MLP intermediate (4d), and 1.5 GB for the CUDA context and allocator slack
    act = batch * (s.hidden * b * (s.layers + 1) + s.vocab * (b + 4) + 4 * s.hidden * b)
    gpu = weights + act + 1.5e9
    shard_tokens = min(texts.tokens, int(model.shard_texts or 256) * texts.longest)
    spectra = model.store == "spectra"
    if spectra:  # per text and layer min(tokens, d) float64 eigenvalues, computed on the device
        shard = min(shard_tokens, s.hidden * int(model.shard_texts or 256)) * 8 * n_layers * 2
        disk = spectra_bytes(texts, s.hidden) * n_layers * 1.02 + 50 * MB
    else:
        shard = shard_tokens * s.hidden * max(b, sb) * n_layers * 2  # the collected states + their concat
        disk = texts.tokens * s.hidden * sb * n_layers * 1.02 + 50 * MB
    host = weights * 1.2 + shard + 3e9
    gpus = gpu_count(model.resources, device)
    flops = 2 * s.params * texts.tokens
    if spectra:  # each text's Gram matrix, per layer, in float64 (its eigenvalues cost less)
        flops += n_layers * 2 * texts.tokens * s.hidden * min(texts.longest, s.hidden)
    rate = GPU_FLOPS[s.dtype] if gpus else CPU_FLOPS_PER_THREAD * threads
    seconds = flops / rate + disk / (DISK_MB_PER_S * MB) + weights / (DISK_MB_PER_S * MB)
    seconds, disk = seconds * n_variants, disk * n_variants
    need = Need(
        mem_mb=int(host / MB) + 1,
        runtime=_minutes(seconds),
        threads=threads,
        gpus=gpus,
        gpu_mem_mb=int(gpu / MB) + 1 if gpus else 0,
        disk_mb=int(disk / MB) + 1,
    )
    return _apply(need, model.resources)


def spectra_bytes(texts: Texts, hidden: int) -> float:
    """Bytes of one layer's spectra (``store: spectra``): min(tokens, d) float64 eigenvalues a text;
    texts no longer than d (the usual case) keep 8 bytes a token, a d-th of their hidden states."""
    if texts.longest <= hidden:
        return texts.tokens * 8.0
    return min(texts.tokens, texts.n * hidden) * 8.0


def table_bytes(texts: Texts, layers: list[str | int], model: ModelEntry, n_variants: int = 1) -> float:
    """What a measurement leaves on the shared filesystem: one eRank row per text, layer and variant."""
    return texts.n * n_distinct(layers, shape(model).layers) * n_variants * TABLE_ROW_BYTES + 1 * MB


def erank_need(
    model: ModelEntry, texts: Texts, layers: list[str | int], threads: int = 4, n_variants: int = 1
) -> Need:
    """The per-text eRank of a dump, reading one text at a time: one text's states in float64
    (a few copies while centring and normalising), the d x d Gram matrix and its eigensolver;
    ``n_variants`` dumps one after the other. A model entry's ``resources.threads`` sets the threads."""
    threads = int(_overrides(model.resources).get("threads") or threads)
    s = shape(model)
    n_layers = n_distinct(layers, s.layers)
    one_text = texts.longest * s.hidden * 8 * 4 + s.hidden**2 * 8 * 3
    mem = one_text + 1.5e9 + texts.n * 2000  # + the result rows
    if model.store == "spectra":  # the dump computed the spectra: entropies only
        one_text = min(texts.longest, s.hidden) * 8 * 4
        mem = one_text + 1.5e9 + texts.n * 2000
        disk_read = spectra_bytes(texts, s.hidden) * n_layers * 2
        seconds = disk_read / (DISK_MB_PER_S * MB) + n_layers * texts.n * 1e-4
        return Need(mem_mb=int(mem / MB) + 1, runtime=_minutes(seconds * n_variants), threads=threads)
    work = n_layers * texts.tokens * s.hidden**2 + n_layers * texts.n * s.hidden**3
    seconds = ERANK_REF_SECONDS * work / ERANK_REF_WORK / threads**0.8
    disk_read = texts.tokens * s.hidden * BYTES[s.dump_dtype] * n_layers * 2  # checksum + read
    seconds += disk_read / (DISK_MB_PER_S * MB)
    return Need(mem_mb=int(mem / MB) + 1, runtime=_minutes(seconds * n_variants), threads=threads)


def finetune_need(model: ModelEntry, recipe: dict[str, Any], device: str = "auto", threads: int = 4) -> Need:
    """Full fine-tuning with AdamW in float32: weights, gradients and two moments (16 bytes per
    parameter) plus the activations of one batch kept for the backward pass."""
    s = shape(model)
    tokens = recipe["batch_size"] * recipe["max_length"]
    states = 16 * s.params
    act = tokens * s.hidden * s.layers * 34 + tokens * s.vocab * 4 * 3
    gpus = gpu_count(model.resources, device)
    flops = 6 * s.params * tokens * recipe["steps"]
    rate = GPU_FLOPS["float32"] if gpus else CPU_FLOPS_PER_THREAD * threads
    host = (states + act if not gpus else 3 * 4 * s.params) + 3e9  # load + save copies on a GPU job
    need = Need(
        mem_mb=int(host / MB) + 1,
        runtime=_minutes(flops / rate + 3 * 4 * s.params / (DISK_MB_PER_S * MB)),
        threads=threads,
        gpus=gpus,
        gpu_mem_mb=int((states + act + 1.5e9) / MB) + 1 if gpus else 0,
        disk_mb=int(4 * s.params / MB) + 1,
    )
    return _apply(need, model.resources)


def accuracy_need(
    model: ModelEntry, accuracy: dict[str, Any], device: str = "auto", threads: int = 4
) -> Need:
    """lm-eval zero-shot scoring: the weights and one batch of short multiple-choice contexts."""
    s = shape(model)
    b = BYTES[s.dtype]
    batch_tokens = int(accuracy.get("batch_size") or 8) * 512
    gpus = gpu_count(model.resources, device)
    examples = 3000 * len(accuracy.get("tasks") or [1]) * 2
    flops = 2 * s.params * examples * 128
    rate = GPU_FLOPS[s.dtype] if gpus else CPU_FLOPS_PER_THREAD * threads
    need = Need(
        mem_mb=int((s.params * b * 1.2 + 4e9) / MB) + 1,
        runtime=_minutes(flops / rate + s.params * b / (DISK_MB_PER_S * MB)),
        threads=threads,
        gpus=gpus,
        gpu_mem_mb=int((s.params * b + batch_tokens * s.vocab * (b + 4) + 1.5e9) / MB) + 1 if gpus else 0,
    )
    return _apply(need, model.resources)


#: Parameters of a multi-modal model besides its LLM (``size``), by ``arch``, where they are not
#: small beside it: MiniGPT-v2's EVA ViT-g/14 (39 blocks of 4 x 1408^2 + 2 x 1408 x 6144) and projection.
EXTRA_PARAMS = {"minigpt-v2": 1.01e9}


def size_value(size: str) -> float:
    """A size label's parameter count: '125m' -> 1.25e8, '1.3b' -> 1.3e9, '1_1b' -> 1.1e9; NaN for
    a label that is not one ('-'). Orders the report's rows by size and sizes multi-modal jobs."""
    m = re.fullmatch(r"([\d._]+)\s*([mMbBkK]?)", str(size).strip())
    if not m:
        return float("nan")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "": 1.0}[m.group(2).lower()]
    return float(m.group(1).replace("_", ".")) * scale


def _mm_params(mm_model: dict[str, Any]) -> float:
    params = size_value(str(mm_model.get("size", "7b")))
    params = params if math.isfinite(params) else 7e9
    return params + EXTRA_PARAMS.get(mm_model.get("arch") or "llava", 0.0)


def mm_need(mm_model: dict[str, Any], device: str = "auto", threads: int = 4) -> Need:
    """LLaVA or MiniGPT-v2: the language model (``size`` like 7b, 13b) plus its vision tower, a few
    hundred items."""
    params = _mm_params(mm_model)
    b = BYTES[mm_model.get("dtype", "float16")]
    gpus = gpu_count(mm_model.get("resources"), device)
    need = Need(
        mem_mb=int((params * b * 1.5 + 8e9) / MB) + 1,
        runtime=240,
        threads=threads,
        gpus=gpus,
        gpu_mem_mb=int((params * b * 1.2 + 4e9) / MB) + 1 if gpus else 0,
    )
    return _apply(need, mm_model.get("resources"))


def minigpt_convert_need(mm_model: dict[str, Any]) -> Need:
    """MiniGPT-v2's conversion, on CPU: the LLM in the entry's dtype (each LoRA target upcast to
    float32 one at a time), the tower read in float32, both written once."""
    b = BYTES[mm_model.get("dtype", "float16")]
    llm = _mm_params(mm_model) - EXTRA_PARAMS["minigpt-v2"]
    need = Need(
        mem_mb=int((llm * b * 1.5 + EXTRA_PARAMS["minigpt-v2"] * 4 * 2 + 4e9) / MB) + 1,
        runtime=_minutes(3 * (llm * b + EXTRA_PARAMS["minigpt-v2"] * 4) / (DISK_MB_PER_S * MB)),
    )
    return need


def gpu_request(
    gpu_mem_mb: int, cluster: dict[str, Any], job: str | None = None, retry: bool = False
) -> dict[str, Any]:
    """The Slurm resources (executor plugin 2.8) that put a job on a GPU with enough memory.

    ``cluster.gpu_types`` maps the site's GPU types to their memory in GB; ``gpu_request`` says
    how a type is asked for: ``constraint`` (node features, ``-C 'a|b'``: every type that fits),
    ``gpu_model`` (``--gpus=<type>:1``: the smallest that fits) or ``gres``
    (``--gres=gpu:<type>:1``, without ``gpu``: the plugin refuses both). No types: any GPU, and
    ``cluster.gpu_mem_gb`` (the smallest GPU a job may land on) bounds what a job may need: more
    stops the DAG naming ``job``, instead of an out-of-memory on a smaller card. A ``retry``
    (a grown request) is never refused: it asks for the largest type.
    """
    how = cluster.get("gpu_request", "constraint")
    types = cluster.get("gpu_types") or {}
    if gpu_mem_mb <= 0:  # no GPU: every key the GPU jobs of this site give, set to none
        key = how if how in ("gres", "gpu_model") else "constraint"
        return {"gpu": 0, key: None} if types else {"gpu": 0}
    fits = sorted((gb, name) for name, gb in types.items() if gb * 1000 >= gpu_mem_mb)
    if not types:
        site = cluster.get("gpu_mem_gb")
        if site and gpu_mem_mb > site * 1000 and not retry:
            raise ResourceError(
                f"{job or 'a job'} needs {gpu_mem_mb / 1000:.1f} GB of GPU memory but cluster.gpu_mem_gb "
                f"says the site's GPUs have {site:g} GB: name the site's GPU types in cluster.gpu_types "
                f"so the job asks for a large enough one, or lower the model's batch_tokens or dtype"
            )
        return {"gpu": 1}
    if not fits:
        if retry:  # a retry that outgrew the largest type: ask for the largest, the estimate may be high
            fits = [max((gb, name) for name, gb in types.items())]
        else:
            biggest = max(types.values())
            raise ResourceError(
                f"{job or 'a job'} needs {gpu_mem_mb / 1000:.0f} GB of GPU memory but the largest GPU in "
                f"cluster.gpu_types has {biggest} GB: lower batch_tokens or use a smaller dtype, or set the "
                f"model's resources.gpu_mem_gb to override the estimate"
            )
    if how == "gres":
        return {"gpu": 0, "gres": f"gpu:{fits[0][1]}:1"}
    if how == "gpu_model":
        return {"gpu": 1, "gpu_model": fits[0][1]}
    return {"gpu": 1, "constraint": "|".join(name for _, name in fits)}


def grown(need: Need, attempt: int) -> Need:
    """The request of a retry: ``attempt`` 1 is the estimate, each further one asks
    :data:`RETRY_GROWTH` more memory, GPU memory and time (an out-of-memory or time-limit failure
    is not repeated with the same request). Overrides from a model entry grow too."""
    if attempt <= 1:
        return need
    f = 1 + RETRY_GROWTH * (attempt - 1)
    return replace(
        need,
        mem_mb=math.ceil(need.mem_mb * f),
        runtime=math.ceil(need.runtime * f),
        gpu_mem_mb=math.ceil(need.gpu_mem_mb * f),
    )


def check_runtime(runtime: int, cluster: dict[str, Any], job: str) -> int:
    """The runtime to ask for, or a stop naming the job when it exceeds ``cluster.max_runtime``."""
    limit = cluster.get("max_runtime")
    if limit and runtime > limit:
        raise ResourceError(
            f"{job} asks for {runtime} minutes but cluster.max_runtime is {limit}: lower cluster."
            f"variants_per_job or the dataset's max_texts, or raise max_runtime to the partition's limit"
        )
    return runtime
