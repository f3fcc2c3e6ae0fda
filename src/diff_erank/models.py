"""Loading a model variant: the trained checkpoint, a seeded random init, or a named revision.

The dtype is always explicit (transformers 5 otherwise loads the checkpoint's own dtype), remote
code runs only where the model entry enables it, and weights are asked for as safetensors
(``use_safetensors=True``). Only a repository without any falls back to its PyTorch ``.bin``,
read by ``torch.load(weights_only=True)`` (tensors only, no code; torch >= 2.6), with a warning;
a ``.bin`` that is more than tensors is refused with one sentence. Which format was read is
recorded in every dump's manifest (``weights.format``).

Every loaded variant's non-persistent buffers (RoPE frequencies, causal masks: computed in
``__init__``, not stored in the checkpoint) are compared with those of a freshly constructed model
of the same config (:func:`check_buffers`); transformers 5 leaves a remote-code model's such
buffers as uninitialised memory in ``from_pretrained``, and a model that computes with garbage is
refused rather than measured.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from diff_erank.config import ConfigError, has_tokenizer_files, looks_local
from diff_erank.entries import ModelEntry, ModelSource, resolve_source
from diff_erank.variants import Variant

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The config field ``PreTrainedModel._init_weights`` takes the std of every initial Linear and
#: Embedding weight from: the first of these the config has (OPT's is ``init_std``).
INIT_STD_FIELDS = ("initializer_range", "init_std", "initializer_factor")


def scale_init(cfg, entry: ModelEntry):
    """``cfg`` with its init std multiplied by the entry's ``untrained.init_scale`` (if set).

    The init-scale sweep: how much of a Diff-eRank is the choice of M0. Scale 1 (or none) is the
    published config as it is.
    """
    scale = entry.init_scale
    if scale is None or scale == 1:
        return cfg
    field = next((f for f in INIT_STD_FIELDS if hasattr(cfg, f)), None)
    if field is None:
        raise ConfigError(f"untrained.init_scale: a {cfg.model_type} config has none of {INIT_STD_FIELDS}")
    setattr(cfg, field, getattr(cfg, field) * scale)
    return cfg


def _load_gguf_variant(model: ModelSource, v: Variant, dtype: torch.dtype):
    """A variant of a GGUF entry read straight from the file (the workflow converts it once instead).

    Both variants use the file's config completed by the entry's published facts
    (``checkpoint.published_config``), as the converted directory does.
    """
    from transformers import AutoModelForCausalLM

    from diff_erank.checkpoint import check_sha256, published_config

    path, gguf = model.gguf, model.entry.gguf
    assert path is not None and gguf is not None
    if not path.is_file():
        raise ConfigError(f"GGUF file not found: {path}")
    check_sha256(path, gguf["sha256"])
    cfg = published_config(path, gguf)
    if v.kind == "trained":
        return AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, config=cfg, dtype=dtype
        )
    if v.kind == "init":
        torch.manual_seed(v.seed)
        return AutoModelForCausalLM.from_config(scale_init(cfg, model.entry), dtype=dtype)
    raise ConfigError(f"a GGUF entry has variants trained and init-s<seed>, not {str(v)!r}")


def gguf_provenance(model: ModelSource) -> dict[str, Any] | None:
    """File, SHA-256 and quantisation type of a GGUF entry's checkpoint (None for other entries)."""
    gguf = model.entry.gguf
    if not gguf:
        return None
    from diff_erank.checkpoint import checkpoint_facts, read_facts

    if model.gguf is not None:
        return {**read_facts(model.gguf), "sha256": gguf["sha256"], "packages": gguf.get("packages")}
    return checkpoint_facts(model.source)


def load_tokenizer(model: ModelSource):
    """The entry's tokenizer: its own repository at ``tokenizer_revision`` when ``tokenizer`` names
    one (OpenELM uses Llama-2's), else the model's at the model's revision."""
    from transformers import AutoTokenizer

    remote = model.entry.trust_remote_code
    if model.gguf is not None:
        return AutoTokenizer.from_pretrained(str(model.gguf.parent), gguf_file=model.gguf.name)
    name, rev = model.tokenizer or model.weights_of(Variant("trained"))
    if model.tokenizer is None and looks_local(name) and not model.trained_path:
        # the user's own folder: nothing checked it yet
        if not has_tokenizer_files(name):
            raise ConfigError(f"the model folder {name} has no tokenizer; save one or set `tokenizer:`")
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=remote)
        check_tokenizer(tokenizer, name)
        return tokenizer
    return _hub_call(AutoTokenizer.from_pretrained, name, revision=rev, trust_remote_code=remote)


#: a sample every tokenizer of a text LM reads back as it was written
ROUND_TRIP = "The quick brown fox jumps over the lazy dog, 1,234 times."


def check_tokenizer(tokenizer: Any, folder: str | Path) -> None:
    """Refuse a tokenizer that does not fit the model in ``folder`` before any text is measured.

    transformers builds a tokenizer from whatever a folder holds, down to one of a single token;
    texts then come out as one token each and the run fails much later ("no text has 3 or more
    tokens"). Two checks: its vocabulary against the model's ``vocab_size`` (larger: ids the
    embedding lacks; under half: not this model's), and :data:`ROUND_TRIP` encoded and decoded.
    """
    import json

    n, base = len(tokenizer), getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        vocab = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    except (OSError, ValueError):
        vocab = None
    ids = tokenizer.encode(ROUND_TRIP, add_special_tokens=False)
    back = tokenizer.decode(ids, skip_special_tokens=True)
    problem = (
        f"its {n} tokens do not fit the model's vocab_size {vocab}"
        if vocab and (base > vocab or n < vocab // 2)
        else f"{ROUND_TRIP!r} reads back as {back!r}"
        if len(ids) < 2 or " ".join(back.split()) != ROUND_TRIP
        else ""
    )
    if problem:
        raise ConfigError(
            f"the tokenizer in the model folder {folder} is not the model's ({problem}); "
            "save the model's own tokenizer there or set `tokenizer:`"
        )


def _hub_call(fn, name: str, **kwargs):
    """Call a ``from_pretrained`` and turn "cannot reach the hub" into one clear sentence."""
    try:
        return fn(name, **kwargs)
    except OSError as exc:
        raise ConfigError(
            f"cannot load {name!r} (revision {kwargs.get('revision')!r}): {str(exc).splitlines()[0]} "
            "If this machine is offline, fetch it first on one with the hub (hf_home=<folder>, then "
            "`diff-erank fetch`), use a local directory, or pre-populate the HF cache."
        ) from None


def _load_weights(name: str, rev: str | None, dtype: torch.dtype, remote: bool):
    """``from_pretrained`` asking for safetensors; a ``.bin`` only where there is no safetensors.

    The hub's safetensors conversion bot is switched off: with ``use_safetensors=True`` transformers
    would otherwise load the weights of an unmerged conversion pull request instead of ``rev``.
    """
    from transformers import AutoModelForCausalLM

    os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "1"
    commit = hub_commit(name, rev)  # load exactly the commit that is recorded, even if `rev` moves meanwhile
    kw = {"revision": commit or rev, "dtype": dtype, "trust_remote_code": remote, "weights_only": True}
    try:
        model = _hub_call(AutoModelForCausalLM.from_pretrained, name, use_safetensors=True, **kw)
        model.weights_format, model.hub_commit = "safetensors", commit
        return model
    except (OSError, ConfigError) as exc:
        if "safetensors" not in str(exc):
            raise
    log.warning(
        "%s (revision %s) has no safetensors weights: reading its PyTorch .bin (tensors only)", name, rev
    )
    try:
        model = _hub_call(AutoModelForCausalLM.from_pretrained, name, use_safetensors=False, **kw)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"refusing the .bin checkpoint of {name!r} (revision {rev!r}): it holds more than tensors "
            "(torch's weights-only loader rejected it); use a safetensors copy"
        ) from None
    model.weights_format, model.hub_commit = "bin", commit
    return model


def hub_commit(name: str, rev: str | None) -> str | None:
    """The commit a hub revision points to now (the hub, or offline the cache's ``refs/``).

    transformers 5 resolves the revision the same way inside ``from_pretrained`` but no longer
    records it (``config._commit_hash`` stays unset). None for a local path or when unresolvable.
    """
    import re

    if Path(name).exists():
        return None
    try:
        from transformers.utils.hub import resolve_revision

        commit = getattr(resolve_revision(name, rev), "resolved", None)
    except Exception:  # best effort, as in transformers: the load itself reports what is wrong
        return None
    return commit if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit) else None


#: How each variant kind (``variants.KINDS``) is loaded: ``loader(model, v, dtype)`` with the job's
#: :class:`~diff_erank.entries.ModelSource`, the parsed :class:`Variant` and the torch dtype ->
#: the model, before the checks every variant gets (:func:`load_variant`).
LOADERS: dict[str, Any] = {}


def variant_loader(kind: str):
    """Register the loader of a variant kind (one per kind)."""

    def register(fn):
        if kind in LOADERS:
            raise ValueError(f"variant kind {kind!r} already has a loader")
        LOADERS[kind] = fn
        return fn

    return register


@variant_loader("trained")
@variant_loader("rev")
@variant_loader("ft")
def _load_weights_of(model: ModelSource, v: Variant, dtype: torch.dtype):
    """The weights a variant names: the entry's revision, another revision, a further-trained folder."""
    name, rev = model.weights_of(v)
    return _load_weights(name, rev, dtype, model.entry.trust_remote_code)


@variant_loader("init")
def _load_init(model: ModelSource, v: Variant, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = model.entry.trust_remote_code
    name, rev = model.weights_of(v)
    cfg = _hub_call(AutoConfig.from_pretrained, name, revision=rev, trust_remote_code=remote)
    cfg = scale_init(cfg, model.entry)
    torch.manual_seed(v.seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype, trust_remote_code=remote)


def load_variant(model: ModelSource, variant: str, dtype: str | None = None):
    """The causal LM for one variant, in eval mode, in the entry's dtype (or ``dtype``), on the CPU.

    Each kind of variant is loaded by its registered loader (:data:`LOADERS`); a raw GGUF file by
    its own.
    """
    import diff_erank.openelm  # noqa: F401  (registers model_type "openelm": OpenELM without remote code)

    torch_dtype = DTYPES[dtype or model.entry.dtype]
    v = Variant.parse(variant)
    if model.gguf is not None:
        lm = _load_gguf_variant(model, v, torch_dtype)
    else:
        lm = LOADERS[v.kind](model, v, torch_dtype)
    check_buffers(lm, torch_dtype, f"{model.source} variant {variant}")
    lm.eval()
    # No KV cache in any forward (dump, finetune, lm-eval's HFLM, which calls model(ids)): one
    # full-sequence pass needs none, and remote code may build one with an API transformers 5 removed.
    lm.config.use_cache = False
    log.info("loaded %s variant %s (%s, %d parameters)", model.source, variant, torch_dtype, n_params(lm))
    return lm


def init_facts(model: torch.nn.Module, variant: str, entry: ModelEntry) -> dict[str, Any] | None:
    """The seed and config fields an ``init-s<seed>`` variant was initialised from; None otherwise.

    Recorded in every untrained variant's manifest: Diff-eRank is a difference against this
    model, and its sign can depend on the init scale alone.
    """
    v = Variant.parse(variant)
    if v.kind != "init":
        return None
    from diff_erank.checkpoint import INIT_FIELDS

    cfg = model.config
    names = {*INIT_STD_FIELDS, "rope_parameters"} | {f for fields in INIT_FIELDS.values() for f in fields}
    fields = {n: getattr(cfg, n) for n in sorted(names) if getattr(cfg, n, None) is not None}
    scale = entry.init_scale or 1.0
    return {"seed": v.seed, "init_scale": scale, "model_type": cfg.model_type, **fields}


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device and their buffers for real.

    Only ``register_parameter`` is redirected (as accelerate's ``init_empty_weights`` with
    ``include_buffers=False``), so ``__init__`` code that computes a buffer from plain tensors runs
    as in any construction while the weights cost no memory and their initialisation no time.
    """
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def _non_persistent_buffers(model: torch.nn.Module) -> dict[str, tuple[str, str]]:
    """``{qualified name: (module path, buffer name)}`` of every non-persistent buffer that is set."""
    out = {}
    for path, module in model.named_modules():
        for name in sorted(module._non_persistent_buffers_set):
            if module._buffers.get(name) is not None:
                out[f"{path}.{name}" if path else name] = (path, name)
    return out


def _max_abs_diff(loaded: torch.Tensor, fresh: torch.Tensor) -> tuple[bool, float]:
    """(same within float tolerance, max abs difference). Non-finite values differ unless the fresh
    buffer holds the same infinity there (an additive mask's -inf); NaN always differs."""
    if loaded.shape != fresh.shape:
        return False, float("inf")
    if not loaded.is_floating_point():  # masks, positions: exact (a bool's garbage bytes read as bytes)
        a = loaded.view(torch.uint8) if loaded.dtype == torch.bool else loaded
        b = fresh.to(loaded.dtype)
        b = b.view(torch.uint8) if b.dtype == torch.bool else b
        diff = (a.to(torch.float64) - b.to(torch.float64)).abs()
        return bool(torch.equal(a, b)), float(diff.max()) if diff.numel() else 0.0
    a, b = loaded.to(torch.float64), fresh.to(torch.float64)
    # rounding at the buffer's own precision; rtol alone would let garbage near zero pass in bf16
    eps = max(torch.finfo(loaded.dtype).eps, torch.finfo(fresh.dtype).eps)
    finite = b[torch.isfinite(b)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    close = torch.isclose(a, b, rtol=4 * eps, atol=eps * scale)
    diff = (a - b).abs()
    diff[torch.isnan(diff)] = float("inf")  # NaN loaded, or inf - inf: report as unbounded
    diff[close] = 0.0
    return bool(close.all()), float(diff.max()) if diff.numel() else 0.0


def check_buffers(model: torch.nn.Module, dtype: torch.dtype, what: str) -> list[str]:
    """Refuse a loaded model whose non-persistent buffers differ from a fresh construction's.

    Non-persistent buffers are not in the checkpoint: ``__init__`` computes them. transformers 5
    builds the model on the meta device in ``from_pretrained`` and then gives such buffers
    uninitialised memory, recomputing only those its own ``_init_weights`` knows (the RoPE of its
    native models); a remote-code model's are left as garbage (seen on a remote-code model: RoPE
    ``inv_freq`` ~1e-29, a causal mask summing to ~1e30). The reference is the model's own class built from
    a copy of its config in ``dtype`` under :func:`_parameters_on_meta`: the buffers computed as
    ``from_config`` computes them, the weights not allocated. Returns the names checked (logged);
    a buffer the reference computes from parameters (left on meta) is logged as unchecked.
    Measured on one CPU core: 7-30 ms for the tests' tiny models, 0.1-0.4 s and under 6 MiB of
    peak RSS for SmolLM2-135M- and Llama-2-7B-shaped Llamas (a whole second model would double
    the memory: 27 GB for a 7B model in float32).
    """
    names = _non_persistent_buffers(model)
    if not names:
        return []
    previous = torch.get_default_dtype()
    try:
        # in the default dtype from_pretrained / from_config build in (transformers' local_torch_dtype),
        # and without moving the random state a seeded variant or a fine-tuning run goes on from
        torch.set_default_dtype(dtype)
        with torch.random.fork_rng(devices=[]), _parameters_on_meta():
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception as exc:
        raise ConfigError(
            f"{what}: cannot build a fresh {type(model).__name__} to check its non-persistent buffers "
            f"{sorted(names)} against ({type(exc).__name__}: {exc}); they may hold uninitialised memory"
        ) from None
    finally:
        torch.set_default_dtype(previous)
    fresh_buffers = _non_persistent_buffers(fresh)
    checked, unchecked = [], []
    for qual, (path, name) in names.items():
        ref = fresh.get_submodule(path)._buffers.get(name) if qual in fresh_buffers else None
        if ref is None or ref.is_meta:
            unchecked.append(qual)
            continue
        same, diff = _max_abs_diff(model.get_submodule(path)._buffers[name].detach().cpu(), ref)
        if not same:
            raise ConfigError(
                f"{what}: the non-persistent buffer {name!r} of module {path or '(root)'!r} differs from "
                f"a freshly constructed model's by up to {diff:.3g} (e.g. uninitialised memory left by "
                "from_pretrained); refusing to measure it: load the model with a native class instead "
                "of remote code, give its class an `_init_weights` that sets this buffer, or use a "
                "transformers release that computes it"
            )
        checked.append(qual)
    log.info("%s: non-persistent buffers equal to a fresh construction's: %s", what, checked)
    if unchecked:
        log.warning("%s: non-persistent buffers not checked (no fresh value to compare): %s", what, unchecked)
    return checked


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_identity(
    source: ModelSource,
    variant: str,
    model: torch.nn.Module | None = None,
    memo_dir: str | Path | None = None,
) -> dict[str, Any]:
    """What fixes the weights a variant loads, for the resume check of a dump (and its manifest).

    A local directory: the SHA-256 of every file in it (weights, config, tokenizer), so a
    replaced or retrained model is a new identity. A hub model: the commit transformers resolved
    the revision to and loaded (:func:`hub_commit`; a ``revision: main`` that moved is a new
    identity); if it cannot be resolved, a hash of the loaded tensors themselves.
    An ``init-s<seed>`` variant is fixed by the config it is built from (a local ``config.json``,
    or the hub commit) plus the seed in its name.
    A local file's hash is remembered under ``memo_dir`` by its path and stat (the cache's
    ``sha256/``, :func:`diff_erank.sources.file_sha256`): the first process to hash a file (a
    dump, or the Snakefile once the cache exists) leaves its SHA-256 there, and a later dump of
    the same model does not read gigabytes of weights again.
    """
    from diff_erank.sources import file_sha256

    v = Variant.parse(variant)
    if source.gguf is None:
        name, rev = source.weights_of(v)
    else:  # a folder holding a raw GGUF file
        name, rev = resolve_source(source.source, source.entry.revision)
    ident: dict[str, Any] = {"format": getattr(model, "weights_format", None)}
    if Path(name).is_dir():
        files = sorted(p for p in Path(name).iterdir() if p.is_file())
        if v.made_from == "config":  # built from the config alone (init-s): no need to hash the weights
            files = [p for p in files if p.name == "config.json"]
        return {**ident, "local_files": {p.name: file_sha256(p, memo_dir) for p in files}}
    commit = getattr(model, "hub_commit", None) or hub_commit(name, rev)
    if commit:
        return {**ident, "hub": name, "commit": commit}
    h = hashlib.sha256()
    for key, t in (model.state_dict() if model is not None else {}).items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {**ident, "hub": name, "revision": rev, "tensors_sha256": h.hexdigest()}
