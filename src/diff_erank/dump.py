"""Dump the hidden states of one model variant on one dataset to disk, in shards.

Texts are tokenised as the tokenizer does by default (BOS included where the tokenizer adds
one), truncated at ``max_length``, sorted by length and cut into shards; a shard's texts are run
in batches under a token budget, right-padded with an attention mask. In a causal model a real
token attends only to earlier real tokens and its position id does not depend on the padding, so
a padded batch gives the hidden states of one text at a time (tested to float tolerance).

On disk (``safetensors``, no pickle): one file per shard holding, per layer, the hidden states of
its texts concatenated along the token axis, the offsets into them, the per-text next-token loss
and the text positions; a JSON sidecar per shard with its SHA-256. Work happens in
``<out>.partial/``; a finished shard survives a killed job and is not recomputed, and the
directory is renamed to ``<out>`` only once the manifest is written, so nothing half-done ever
looks complete.

:func:`dump_set` dumps every variant of one model (trained, untrained, stages) on one dataset in
one process, each into ``<out>/<variant>/``: the model code is imported, the tokenizer loaded and
the texts tokenised once, which on a CPU is most of what a small model's dump costs. A variant
finished before a job was killed is kept only if its fingerprint is still the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from diff_erank.config import ConfigError
from diff_erank.entries import ModelEntry, ModelSource
from diff_erank.erank import spectrum_and_dropped
from diff_erank.errors import UserError
from diff_erank.layers import layer_indices
from diff_erank.models import (
    DTYPES,
    gguf_provenance,
    init_facts,
    load_tokenizer,
    load_variant,
    n_params,
    weights_identity,
)
from diff_erank.progress import tqdm
from diff_erank.provenance import provenance
from diff_erank.shardwriter import ShardReader, ShardWriter, write_safetensors
from diff_erank.storage import (
    atomic_publish_dir,
    read_checked_json,
    read_parquet,
    sha256,
    write_checked_json,
    write_json,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: The file of a :func:`dump_set` directory that names its variants (one dump directory each).
SET_MANIFEST = "variants.json"
#: What to do about a damaged dump: the whole set's folder goes (its variants are one job's output).
DUMP_ADVICE = "delete the folder {dir} and rerun (the dump is redone)"
FORMAT_VERSION = 1
#: Fewest tokens a text needs to be measured (a model entry's ``min_tokens`` overrides it). Two
#: centred token vectors are always collinear, so a 2-token text has an eRank of exactly 1 whatever
#: the model: it carries no information and would only pull the mean towards 1.
MIN_TOKENS = 3


class ShardError(UserError, RuntimeError):
    """A shard on disk that is missing, truncated or corrupt; the message names the file."""


@torch.no_grad()
def count_layers(model, ids: Sequence[int], device: torch.device) -> int:
    """Number of blocks L, read from the ``L + 1`` hidden states one forward returns.

    Not from the config: remote-code models name it their own way (OpenELM's
    ``num_transformer_layers``), and the hidden states are what the dump indexes anyway.
    """
    out = model(
        input_ids=torch.tensor([list(ids)], device=device), output_hidden_states=True, use_cache=False
    )
    return len(out.hidden_states) - 1


@dataclass
class Tokenised:
    ids: list[list[int]]
    positions: list[int]  # row of the texts table each entry comes from
    n_short: int  # texts with fewer than ``min_tokens`` tokens, skipped
    n_truncated: int
    n_empty: int = 0  # texts empty or whitespace only, skipped before tokenising
    min_tokens: int = MIN_TOKENS  # the bound ``n_short`` was counted against
    truncated: list[int] = field(default_factory=list)  # positions of the texts cut at max_length


def tokenise(tokenizer, texts: Sequence[str], max_length: int, min_tokens: int = MIN_TOKENS) -> Tokenised:
    """Token ids of the texts worth measuring; skipped texts are counted, never silently dropped.

    A text that is empty after stripping is skipped (a tokenizer turns ``"   "`` into real tokens
    whose eRank would be averaged in); so is one with fewer than ``min_tokens`` tokens.
    """
    ids, positions, n_short, n_truncated, n_empty = [], [], 0, 0, 0
    truncated: list[int] = []
    for pos, text in enumerate(texts):
        if not text or not text.strip():
            n_empty += 1
            continue
        tok = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(tok) > max_length:
            tok, n_truncated = tok[:max_length], n_truncated + 1
            truncated.append(pos)
        if len(tok) < min_tokens:
            n_short += 1
            continue
        ids.append(list(tok))
        positions.append(pos)
    return Tokenised(ids, positions, n_short, n_truncated, n_empty, min_tokens, truncated)


def plan_shards(lengths: Sequence[int], shard_texts: int) -> list[list[int]]:
    """Indices sorted by length (longest first, ties by index) and cut into shards."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + shard_texts] for i in range(0, len(order), shard_texts)]


#: Largest share of padding in a batch: a padded position costs a real one's compute, and on a CPU
#: (compute-bound at any batch size) batching only pays when it pads little.
MAX_PADDING = 0.1


#: On a CPU, texts of at least this many tokens run one at a time. A padded batch needs an
#: attention mask, and with one SDPA's CPU kernel computes every block of the score matrix instead
#: of skipping the causal upper half; batching buys nothing back at this length (each matmul
#: already has hundreds of rows). Measured on SmolLM2-135M, 1 thread (docs/benchmarks.md): at 1,024
#: tokens a batch with 4 % padding cost 18 % more CPU per real token than one text at a time; at
#: 256 the two were even; at 64, batching 32 texts saved 25 % (per-forward overhead).
CPU_SOLO_TOKENS = 256


def plan_batches(
    lengths: Sequence[int],
    members: Sequence[int],
    batch_tokens: int,
    max_padding: float = MAX_PADDING,
    solo_from: int | None = None,
) -> list[list[int]]:
    """Greedy length-bucketed batches: padded size (count x longest) stays within the budget and
    at most ``max_padding`` of it is padding (a text that would pad more starts a new batch).

    Texts of ``solo_from`` tokens or more (None: no bound) get a batch of their own, which runs
    without padding or attention mask (see :data:`CPU_SOLO_TOKENS`).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    ordered = sorted(members, key=lambda i: (-lengths[i], i))
    if solo_from is not None:
        batches = [[i] for i in ordered if lengths[i] >= solo_from]
        ordered = [i for i in ordered if lengths[i] < solo_from]
    for i in ordered:
        new_longest = max(longest, lengths[i])
        padded = new_longest * (len(current) + 1)
        if current and (padded > batch_tokens or real + lengths[i] < (1 - max_padding) * padded):
            batches.append(current)
            current, new_longest, real = [], lengths[i], 0
        current.append(i)
        longest, real = new_longest, real + lengths[i]
    if current:
        batches.append(current)
    return batches


def pad_right(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids right-padded with 0 and their attention mask (padding never uses a pad token)."""
    longest = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    return ids, mask


#: Config attributes of models whose logits are not just the LM head applied to the last hidden
#: state (a soft cap, a scale): for those the loss is read from the model's own full logits.
_LOGIT_POSTPROCESSING = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier_scale",
)
#: Float elements of one chunk of LM-head logits in the loss (4 Mi = 16 MiB in float32). Small
#: enough that glibc serves a chunk from freed heap (its mmap threshold grows to 32 MiB) instead
#: of mapping and faulting in fresh pages each time: SmolLM2-135M's loss took 4.1 s instead of
#: 5.4 s (2^26) on 4,600 tokens, 1 thread; the LM-head matmul is as fast with 85-token chunks.
LOSS_CHUNK_ELEMENTS = 1 << 22


def _head_for_loss(model) -> torch.nn.Module | None:
    """The LM head, if the model's logits are exactly ``head(hidden_states[-1])`` and it can skip them.

    transformers' causal LMs take ``logits_to_keep`` (only the last position's logits are made);
    remote code that does not, or a model that post-processes its logits, gets None.
    """
    import inspect

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        return None
    if any(getattr(model.config, a, None) not in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING):
        return None
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return None
    return head


def _losses_from_head(
    head: torch.nn.Module, last: torch.Tensor, ids: torch.Tensor, lengths: Sequence[int]
) -> list[float]:
    """Mean next-token cross-entropy per text, the logits made a chunk of tokens at a time.

    The real (unpadded) positions of all texts are packed, the head is applied to at most
    ``LOSS_CHUNK_ELEMENTS / vocab`` tokens at once, and the per-token losses are summed per text
    in float64: peak memory is one chunk of logits, not the batch's ``tokens x vocab``.
    """
    b = ids.shape[0]
    packed = torch.cat([last[row, : n - 1] for row, n in enumerate(lengths)])  # slices: one plain copy
    targets = torch.cat([ids[row, 1:n] for row, n in enumerate(lengths)])
    counts = torch.tensor([n - 1 for n in lengths], device=ids.device)
    text_of = torch.arange(b, device=ids.device).repeat_interleave(counts)
    chunk = max(1, LOSS_CHUNK_ELEMENTS // max(1, int(head.weight.shape[0])))
    total = torch.zeros(b, dtype=torch.float64, device=ids.device)
    for a in range(0, packed.shape[0], chunk):
        total.index_add_(0, text_of[a : a + chunk], _nll(head(packed[a : a + chunk]), targets[a : a + chunk]))
    return (total / counts.double()).tolist()


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy (float64) as ``logsumexp - target logit``, in place on ``logits``.

    The same float32 arithmetic as ``F.cross_entropy`` (max-shifted log-sum-exp), without its
    ``log_softmax`` copy of the chunk: 9 % less time in the loss on SmolLM2-135M's 49k vocabulary.
    """
    logits = logits.float()  # the head's own output (a copy for another dtype): free to overwrite
    target = logits.gather(1, targets[:, None])[:, 0].double()
    top = logits.amax(1, keepdim=True)
    lse = logits.sub_(top).exp_().sum(1).log_().double() + top[:, 0].double()
    return lse - target


def _losses_from_logits(logits: torch.Tensor, ids: torch.Tensor, lengths: Sequence[int]) -> list[float]:
    """Mean next-token cross-entropy per text from the model's full logits (the fallback path)."""
    return [
        float(F.cross_entropy(logits[row, : n - 1].float(), ids[row, 1:n].to(logits.device)))
        for row, n in enumerate(lengths)
    ]


@torch.no_grad()
def forward_batch(
    model,
    seqs: Sequence[Sequence[int]],
    layer_idx: dict[str, int],
    device: torch.device,
    store_dtype: torch.dtype | None = None,
    spectra: bool = False,
    loss: bool = True,
) -> tuple[dict[str, list], list[float]]:
    """Hidden states (per layer, per text, unpadded, on the CPU) and mean next-token loss per text.

    A batch without padding (one text, or texts of one length) is run without an attention mask:
    SDPA then takes its causal kernel, which skips the masked half of the scores. ``loss=False``
    skips the LM head (the losses are NaN): what the authors' loop measures, for benchmarks (a
    dump spec's ``loss: false``; not a config key, the tables need the loss).

    The full-vocabulary logits of the batch (tokens x vocab, 3.2 GB in float32 for 16k tokens of
    a 49k-token vocabulary) are never made: the model is asked for its last position's logits
    only (``logits_to_keep=1``) and the loss applies the LM head to the last hidden state a chunk
    of tokens at a time; the kept logits check that this head is what the model applies. Models
    that cannot (see :func:`_head_for_loss`) fall back to their full logits.

    Each layer's real tokens are packed and cast to ``store_dtype`` on the device and copied to
    the CPU in one transfer; the per-text tensors are views into it. With ``spectra`` each text's
    covariance spectrum is computed on the device instead (float64, Gram form, see
    :mod:`diff_erank.erank`) and only the eigenvalues come back, as :class:`Spectrum`.

    The cache is off: a single full-sequence pass needs none, and OpenELM's remote code builds
    one with an API transformers 5 no longer has whenever ``use_cache`` is on.
    """
    ids, mask = pad_right(seqs)
    lengths = [len(s) for s in seqs]
    ids, mask = ids.to(device), (mask.to(device) if len(set(lengths)) > 1 else None)
    head = _head_for_loss(model)
    kw: dict[str, Any] = {"logits_to_keep": 1} if head is not None else {}
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False, **kw)
    hs = out.hidden_states
    if head is not None:
        kept = out.logits[:, -1].float()
        mine = head(hs[-1][:, -1]).float()
        tol = max(1e-4, 4 * torch.finfo(out.logits.dtype).eps)  # a few roundings of the model's dtype
        if out.logits.shape[1] != 1 or not torch.allclose(
            mine, kept, rtol=tol, atol=tol * float(kept.abs().max())
        ):
            log.warning("the model's logits are not its LM head on the last hidden state: full logits")
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            head = None
            hs = out.hidden_states
    if not loss:
        losses = [float("nan")] * len(lengths)
    elif head is not None:
        losses = _losses_from_head(head, hs[-1], ids, lengths)
    else:
        losses = _losses_from_logits(out.logits, ids, lengths)
    states = {}
    for name, i in layer_idx.items():
        packed = torch.cat([hs[i][row, :n] for row, n in enumerate(lengths)])
        if store_dtype is not None:
            packed = packed.to(store_dtype)
        if spectra:
            states[name] = [Spectrum(*spectrum_and_dropped(t), t.shape[1]) for t in packed.split(lengths)]
        else:
            states[name] = list(packed.cpu().split(lengths))
    return states, losses


@dataclass
class Spectrum:
    """One text's covariance spectrum at one layer (what ``store: spectra`` keeps)."""

    values: np.ndarray  # float64, descending, summing to 1
    n_dropped: int
    dim: int


def run_batches(
    model,
    seqs: Sequence[Sequence[int]],
    batches: list[list[int]],
    layer_idx: dict[str, int],
    device,
    **kw: Any,
) -> Iterator[tuple[list[int], dict[str, list], list[float]]]:
    """Run the batches; on an out-of-memory error split the batch in two and carry on."""
    pending = list(reversed(batches))
    while pending:
        batch = pending.pop()
        try:
            states, losses = forward_batch(model, [seqs[i] for i in batch], layer_idx, device, **kw)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("out of memory on a batch of %d texts: halving to %d and retrying", len(batch), half)
            pending += [batch[half:], batch[:half]]
            continue
        yield batch, states, losses


def _fingerprint(spec: dict[str, Any], variant: str, layers: Sequence, **facts: Any) -> str:
    """What determines a dump's numbers; a ``.partial`` is resumed only if this is unchanged.

    Beyond the config (spec, variant, layers): the texts' hash, the token ids (so a changed
    tokenizer counts), the weights' identity (hub commit actually loaded, or the hash of a local
    directory's files, see :func:`diff_erank.models.weights_identity`), the device kind, the
    torch and transformers versions and the on-disk format version.
    """
    import transformers

    blob = json.dumps(
        {
            "spec": spec,
            "variant": variant,
            "layers": list(layers),
            "format": FORMAT_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            **facts,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _shard_done(partial: Path, k: int) -> bool:
    side = partial / f"shard-{k:05d}.json"
    if not side.is_file():
        return False
    try:
        meta = json.loads(side.read_text())
    except ValueError:  # a side file cut by the kill: the shard is redone
        return False
    f = partial / meta["file"]
    return f.is_file() and sha256(f) == meta["sha256"]


def _hidden_shard(
    per_text: list[dict[str, torch.Tensor]], lengths: list[int], layers: list[str]
) -> dict[str, Any]:
    """A hidden-state shard: per layer the texts' states end to end, and the offsets into them."""
    tensors: dict[str, Any] = {f"layer.{n}": [t[n] for t in per_text] for n in layers}
    sizes = torch.tensor(lengths, dtype=torch.long)
    tensors["offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    return tensors


def _spectra_shard(
    per_text: list[dict[str, Spectrum]], lengths: list[int], layers: list[str]
) -> dict[str, Any]:
    """A spectra shard: per layer the texts' eigenvalues end to end, their offsets, dropped rows."""
    tensors: dict[str, Any] = {"n_tokens": torch.tensor(lengths, dtype=torch.long)}
    for n in layers:
        values = [torch.from_numpy(t[n].values) for t in per_text]
        sizes = torch.tensor([len(v) for v in values], dtype=torch.long)
        tensors[f"spectrum.{n}"] = values
        tensors[f"spectrum_offsets.{n}"] = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        tensors[f"n_dropped.{n}"] = torch.tensor([t[n].n_dropped for t in per_text], dtype=torch.long)
    return tensors


def _write_shard(partial: Path, k: int, tensors: dict[str, Any], dims: dict[str, int], n_texts: int) -> dict:
    """Write shard ``k`` and then its sidecar (the sidecar marks it finished); its metadata."""
    name = f"shard-{k:05d}.safetensors"
    digest = write_safetensors(tensors, partial / name, metadata={"format": str(FORMAT_VERSION)})
    meta = {"file": name, "sha256": digest, "n_texts": n_texts, "dims": dims}
    write_json(meta, partial / f"shard-{k:05d}.json")
    return meta


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda asked for, but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def to_device(model: torch.nn.Module, dev: torch.device | str, variant: str) -> torch.nn.Module:
    """Move the weights to the dump's device; an out-of-memory here is a GPU too small for the
    weights alone (no batch has run, so halving batches cannot help), and says so."""
    try:
        return model.to(dev)
    except torch.OutOfMemoryError:
        from diff_erank.sizing import ResourceError

        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
        card = torch.cuda.get_device_properties(dev).total_memory / 1e9 if torch.cuda.is_available() else 0
        raise ResourceError(
            f"out of GPU memory while loading the weights of {variant} ({weights:.1f} GB) onto a "
            f"{card:.0f} GB GPU, before any batch: the job got too small a GPU; name the site's GPU types "
            f"in cluster.gpu_types (or set cluster.gpu_mem_gb to its smallest card) so the job asks for "
            f"a large enough one, or load the model in float16 (models.<name>.dtype)"
        ) from None


class DumpJob:
    """One (model variant, dataset) dump, step by step: the texts and the weights; the fingerprint,
    which decides whether a finished dump or a ``.partial`` is kept; the shards, each written while
    the next is computed; the manifest, which publishes ``<out>``.

    ``texts`` is the texts table and its :class:`Tokenised` when the caller already has them
    (:func:`dump_set`; or tokenised its own way, :func:`read_and_tokenise`). ``model`` is the
    variant's model: :meth:`load` loads it before :meth:`run` would, for a caller that wants to
    hold it (a hook on it); a benchmark may set a stand-in of its own before :meth:`run`.
    ``memo_dir``: where local weights' SHA-256 are remembered (the cache's ``sha256/``).
    """

    def __init__(
        self,
        source: ModelSource,
        variant: str,
        texts_path: str | Path,
        out_dir: str | Path,
        layers: Sequence[str | int] = ("last",),
        device: str = "auto",
        texts: tuple[Any, Tokenised] | None = None,
        memo_dir: str | Path | None = None,
    ) -> None:
        self.source, self.entry, self.variant = source, source.entry, variant
        self.out_dir = Path(out_dir)
        self.partial = self.out_dir.with_name(self.out_dir.name + ".partial")
        self.texts_path, self.layers, self.memo_dir = Path(texts_path), layers, memo_dir
        self.dev = pick_device(device)
        texts = texts or read_and_tokenise(self.entry, self.texts_path, load_tokenizer(source))
        self.texts, self.tok = texts
        self.lengths = [len(s) for s in self.tok.ids]
        self.model: torch.nn.Module | None = None

    def load(self) -> torch.nn.Module:
        """The variant's model (loaded once)."""
        if self.model is None:
            self.model = load_variant(self.source, self.variant)
        return self.model

    def run(self) -> dict[str, Any]:
        """Dump, or keep the finished dump of the same fingerprint; returns the manifest."""
        model = self.load()
        # checked after loading: only then is the hub commit behind a moving `revision: main` known
        weights = weights_identity(self.source, self.variant, model, self.memo_dir)
        texts_sha = sha256(self.texts_path)
        fingerprint = self.fingerprint(weights, texts_sha)
        if (kept := self.finished(fingerprint)) is not None:
            return kept
        stamp = self.open_partial(fingerprint)
        to_device(model, self.dev, self.variant)
        num_layers = count_layers(model, min(self.tok.ids, key=len)[: self.tok.min_tokens], self.dev)
        layer_idx = layer_indices(self.layers, num_layers)
        shards = plan_shards(self.lengths, self.entry.shard_texts or 256)
        metas = self.write_shards(model, shards, layer_idx)
        manifest = self.manifest(model, layer_idx, num_layers, metas, weights, fingerprint, texts_sha)
        write_checked_json(manifest, self.partial / MANIFEST)
        stamp.unlink()
        atomic_publish_dir(self.partial, self.out_dir)
        tok = self.tok
        log.info(
            "%d texts (skipped: %d empty or whitespace, %d with < %d tokens; %d truncated), %d tokens -> %s",
            len(tok.ids),
            tok.n_empty,
            tok.n_short,
            tok.min_tokens,
            tok.n_truncated,
            sum(self.lengths),
            self.out_dir,
        )
        return manifest

    def fingerprint(self, weights: dict[str, Any], texts_sha: str) -> str:
        """What determines this dump's numbers (:func:`_fingerprint`)."""
        return _fingerprint(
            self.entry.spec,
            self.variant,
            self.layers,
            texts=texts_sha,
            tokens=hashlib.sha256(json.dumps(self.tok.ids).encode()).hexdigest(),
            weights=weights,
            device=self.dev.type,
            min_tokens=self.tok.min_tokens,
        )

    def finished(self, fingerprint: str) -> dict[str, Any] | None:
        """The manifest of a finished dump at ``out_dir`` with this fingerprint; any other is deleted."""
        if not (self.out_dir / MANIFEST).is_file():
            return None
        try:
            kept = read_checked_json(self.out_dir / MANIFEST, "dump manifest").get("fingerprint")
        except UserError:  # damaged: redone, like a dump of other weights
            kept = None
        if kept == fingerprint:
            log.info("%s is already dumped from the same weights, texts and settings: kept", self.out_dir)
            return read_manifest(self.out_dir)
        log.warning("discarding %s: it was made from other weights, texts or settings", self.out_dir)
        shutil.rmtree(self.out_dir)
        return None

    def open_partial(self, fingerprint: str) -> Path:
        """The ``.partial`` folder, resumed if it has this fingerprint (else emptied); its stamp."""
        stamp = self.partial / "fingerprint.txt"
        if self.partial.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
            log.warning("discarding %s: it was made from other weights, texts or settings", self.partial)
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        return stamp

    def write_shards(
        self, model: torch.nn.Module, shards: list[list[int]], layer_idx: dict[str, int]
    ) -> list[dict[str, Any]]:
        """Each shard not on disk yet computed and handed to a writer thread (the forward of the
        next shard runs while one is written); every shard's metadata, in order."""
        lengths, partial = self.lengths, self.partial
        done = sum(_shard_done(partial, k) for k in range(len(shards)))
        if done:
            log.info("resuming: %d of %d shards already on disk", done, len(shards))
        bar = tqdm(total=sum(lengths), unit="tok", desc=f"dump {self.variant}", mininterval=2.0)
        metas: dict[int, dict[str, Any]] = {}
        writer = ShardWriter(depth=2)
        try:
            for k, members in enumerate(shards):
                if _shard_done(partial, k):
                    metas[k] = json.loads((partial / f"shard-{k:05d}.json").read_text())
                    bar.update(sum(lengths[i] for i in members))
                    continue
                tensors, dims = self.shard(model, members, layer_idx, bar)
                writer.put(functools.partial(_write_shard, partial, k, tensors, dims, len(members)))
                del tensors
            for meta in writer.close():
                metas[int(meta["file"][6:11])] = meta
        except BaseException:
            writer.abandon()  # shards already handed over are finished: a rerun resumes after them
            raise
        bar.close()
        return [metas[k] for k in range(len(shards))]

    def shard(
        self, model: torch.nn.Module, members: list[int], layer_idx: dict[str, int], bar
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """One shard's tensors (its texts in order of position in the table) and its layers' dims."""
        lengths, store = self.lengths, self.entry.store
        solo_from = CPU_SOLO_TOKENS if self.dev.type == "cpu" else None
        collected: dict[int, tuple[dict[str, Any], float]] = {}
        for batch, states, losses in run_batches(
            model,
            self.tok.ids,
            plan_batches(lengths, members, self.entry.batch_tokens, solo_from=solo_from),
            layer_idx,
            self.dev,
            store_dtype=DTYPES[self.entry.dump_dtype],
            spectra=store == "spectra",
            loss=self.entry.loss,
        ):
            for j, i in enumerate(batch):
                collected[i] = ({n: states[n][j] for n in layer_idx}, losses[j])
            bar.update(sum(lengths[i] for i in batch))
        order = sorted(members)
        shard = _spectra_shard if store == "spectra" else _hidden_shard
        tensors = shard([collected[i][0] for i in order], [lengths[i] for i in order], list(layer_idx))
        tensors["loss"] = torch.tensor([collected[i][1] for i in order], dtype=torch.float64)
        tensors["position"] = torch.tensor([self.tok.positions[i] for i in order], dtype=torch.long)
        first = collected[order[0]][0]
        dims = {n: first[n].dim if store == "spectra" else int(first[n].shape[1]) for n in layer_idx}
        return tensors, dims

    def manifest(
        self,
        model: torch.nn.Module,
        layer_idx: dict[str, int],
        num_layers: int,
        shard_meta: list[dict[str, Any]],
        weights: dict[str, Any],
        fingerprint: str,
        texts_sha: str,
    ) -> dict[str, Any]:
        """What the dump holds and how it was made (``manifest.json``)."""
        dims: dict[str, int] = {}
        for meta in shard_meta:
            dims.update(meta["dims"])
        if len(set(dims.values())) > 1:
            log.warning("hidden size differs between layers: %s (e.g. OPT-350m's project_out)", dims)
        entry, tok, variant = self.entry, self.tok, self.variant
        return {
            "format": FORMAT_VERSION,
            "variant": variant,
            "layers": {n: {"index": i, "dim": dims[n]} for n, i in layer_idx.items()},
            "num_hidden_layers": num_layers,
            "n_params": n_params(model),
            "commit": getattr(model, "hub_commit", None),  # the hub commit actually loaded
            "gguf": gguf_provenance(self.source),  # file, SHA-256, quantisation of a GGUF entry
            "init": init_facts(model, variant, entry),  # what an untrained variant was built with
            "dtype": entry.dtype,
            "dump_dtype": entry.dump_dtype,
            "store": entry.store,
            "device": str(self.dev),
            "weights": weights,
            "fingerprint": fingerprint,
            "texts_sha256": texts_sha,  # the view step checks a table against the texts it is read with
            "n_texts_in": len(self.texts),
            "n_texts": len(tok.ids),
            "min_tokens": tok.min_tokens,
            "n_skipped_empty": tok.n_empty,
            "n_skipped_short": tok.n_short,
            "n_truncated": tok.n_truncated,
            "truncated_positions": tok.truncated,  # a prefix of the sample counts its own (cache.select)
            "n_tokens": sum(self.lengths),
            "shards": shard_meta,
            "provenance": provenance(
                entry.spec, variant=variant, texts=str(self.texts_path), layers=list(self.layers)
            ),
        }


def dump(
    source: ModelSource,
    variant: str,
    texts_path: str | Path,
    out_dir: str | Path,
    layers: Sequence[str | int] = ("last",),
    device: str = "auto",
    texts: tuple[Any, Tokenised] | None = None,
    memo_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Dump one (model variant, dataset) (:class:`DumpJob`); returns the manifest."""
    return DumpJob(source, variant, texts_path, out_dir, layers, device, texts, memo_dir).run()


def read_and_tokenise(entry: ModelEntry, texts_path: str | Path, tokenizer) -> tuple[Any, Tokenised]:
    """The texts table and the token ids of the texts worth measuring (see :func:`tokenise`)."""
    texts = read_parquet(texts_path)
    min_tokens = entry.min_tokens or MIN_TOKENS
    tok = tokenise(tokenizer, list(texts["text"].fillna("")), entry.max_length, min_tokens)
    if not tok.ids:
        raise ConfigError(f"{texts_path}: no text has {min_tokens} or more tokens")
    return texts, tok


def dump_set(
    source: ModelSource,
    variants: Sequence[str],
    texts_path: str | Path,
    out_dir: str | Path,
    layers: Sequence[str | int] = ("last",),
    device: str = "auto",
    publish: Callable[[Path, Path], Any] = atomic_publish_dir,
    memo_dir: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Dump every variant of one model on one dataset, in turn, into ``<out>/<variant>/``.

    One process for all of them: the model source is resolved once (``source``, with the
    directories of its ``ft-`` variants), the tokenizer is loaded and the texts tokenised once (a
    model entry has one tokenizer for all its variants), and each variant's weights are freed
    before the next is loaded. The set is published as ``<out>`` once every variant is finished; a
    rerun after a kill keeps the variants that were (same fingerprint) and resumes the one that was
    not. ``publish`` moves the finished set into place (the cache's: :func:`diff_erank.cache.publish_entry`).
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    texts = read_and_tokenise(source.entry, texts_path, load_tokenizer(source))
    manifests = {}
    for variant in variants:
        manifests[variant] = dump(
            source, variant, texts_path, partial / variant, layers, device, texts=texts, memo_dir=memo_dir
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    write_checked_json({"format": FORMAT_VERSION, "variants": list(variants)}, partial / SET_MANIFEST)
    publish(partial, out_dir)
    return manifests


def set_variants(dump_dir: str | Path) -> list[str]:
    """The variants of a :func:`dump_set` directory, in the order they were dumped."""
    path = Path(dump_dir) / SET_MANIFEST
    if not path.is_file():
        raise ShardError(f"{dump_dir} is not a finished set of dumps (no {SET_MANIFEST})")
    return read_checked_json(path, "dump set manifest", DUMP_ADVICE.format(dir=dump_dir))["variants"]


def read_manifest(dump_dir: str | Path) -> dict[str, Any]:
    """A dump's manifest, checked against the SHA-256 written into it (IntegrityError naming it)."""
    path = Path(dump_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{dump_dir} is not a finished dump (no {MANIFEST})")
    return read_checked_json(path, "dump manifest", DUMP_ADVICE.format(dir=Path(dump_dir).parent))


def _checked_shard(dump_dir: Path, meta: dict[str, Any]) -> Path:
    """A shard's path once it exists and its bytes hash to the manifest's SHA-256 (else ShardError)."""
    f = dump_dir / meta["file"]
    if not f.is_file():
        raise ShardError(f"shard missing: {f}; {DUMP_ADVICE.format(dir=dump_dir.parent)}")
    if sha256(f) != meta["sha256"]:
        raise ShardError(
            f"shard corrupt or truncated (checksum mismatch): {f}; {DUMP_ADVICE.format(dir=dump_dir.parent)}"
        )
    return f


def iter_texts(dump_dir: str | Path) -> Iterator[tuple[int, float, dict[str, torch.Tensor]]]:
    """Stream ``(position, loss, {layer: hidden [n, d]})``, one text in memory at a time.

    Each shard's checksum and internal lengths are verified first (streamed, a block at a time);
    then each text's rows are read alone (:class:`ShardReader`, plain reads), so the memory of the
    eRank step is bounded by the longest text, not by a shard of 256 of them. A mismatch names
    the file.
    """
    dump_dir = Path(dump_dir)
    manifest = read_manifest(dump_dir)
    for meta in manifest["shards"]:
        f = _checked_shard(dump_dir, meta)
        try:
            with ShardReader(f) as h:
                offsets, loss, position = (h.tensor(k) for k in ("offsets", "loss", "position"))
                names = {n: f"layer.{n}" for n in manifest["layers"]}
                if len(offsets) != meta["n_texts"] + 1 or any(
                    h.shape(k)[0] != int(offsets[-1]) for k in names.values()
                ):
                    raise ShardError(
                        f"shard lengths inconsistent with its offsets: {f}; "
                        f"{DUMP_ADVICE.format(dir=dump_dir.parent)}"
                    )
                for j in range(meta["n_texts"]):
                    a, b = int(offsets[j]), int(offsets[j + 1])
                    yield int(position[j]), float(loss[j]), {n: h.rows(k, a, b) for n, k in names.items()}
        except (ShardError, MemoryError):  # out of memory is said as such by the caller
            raise
        except Exception as exc:
            raise ShardError(
                f"shard unreadable: {f}: {exc}; {DUMP_ADVICE.format(dir=dump_dir.parent)}"
            ) from None


def iter_spectra(dump_dir: str | Path) -> Iterator[tuple[int, float, int, dict[str, tuple[np.ndarray, int]]]]:
    """Stream ``(position, loss, n_tokens, {layer: (spectrum, n_dropped)})`` of a ``store: spectra`` dump.

    The reader of the other kind of dump than :func:`iter_texts`; each shard's checksum and
    internal lengths are verified first, a mismatch names the file.
    """
    dump_dir = Path(dump_dir)
    manifest = read_manifest(dump_dir)
    if manifest.get("store") != "spectra":
        raise ShardError(f"{dump_dir} holds hidden states, not spectra")
    layers = list(manifest["layers"])
    for meta in manifest["shards"]:
        f = _checked_shard(dump_dir, meta)
        try:
            t = load_file(str(f))
        except MemoryError:
            raise
        except Exception as exc:
            raise ShardError(
                f"shard unreadable: {f}: {exc}; {DUMP_ADVICE.format(dir=dump_dir.parent)}"
            ) from None
        n = meta["n_texts"]
        if len(t["n_tokens"]) != n or any(
            len(t[f"spectrum_offsets.{m}"]) != n + 1
            or t[f"spectrum.{m}"].shape[0] != int(t[f"spectrum_offsets.{m}"][-1])
            for m in layers
        ):
            raise ShardError(f"shard lengths inconsistent with its offsets: {f}")
        off = {m: t[f"spectrum_offsets.{m}"].tolist() for m in layers}
        for j in range(n):
            yield (
                int(t["position"][j]),
                float(t["loss"][j]),
                int(t["n_tokens"][j]),
                {
                    m: (t[f"spectrum.{m}"][off[m][j] : off[m][j + 1]].numpy(), int(t[f"n_dropped.{m}"][j]))
                    for m in layers
                },
            )
