"""Tiny real models, written to disk as the hub would serve them: the builders the fixtures of
``conftest.py`` and the test modules share (nothing is mocked: configs, ``save_pretrained``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diff_erank.entries import ModelEntry, ModelSource, model_entry


def save_tiny(root: Path, arch: str, tokenizer_dir: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A 2-block ``arch`` model (``diff_erank.train.model_config``) saved as the revisions ``main``
    and ``step0`` under ``root``, with the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diff_erank.train import model_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = {"hidden_size": hidden, "num_layers": 2, "num_heads": 2, "seq_len": 64}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(arch, spec, tok), dtype=torch.float32)
    for rev in ("main", "step0"):
        model.save_pretrained(root / rev)
        tok.save_pretrained(root / rev)
    return root


def model_spec(source: Path | str, **kw) -> ModelEntry:
    """A model entry of a local tiny model, as a job reads it (:func:`diff_erank.entries.model_entry`):
    short texts, small batches and shards of 4 texts, so that a dump of a few texts has several."""
    fields = {"family": "tiny", "size": "xs", "max_length": 64, "batch_tokens": 256, "shard_texts": 4}
    return model_entry(source, **{**fields, **kw})


def resolved(source: Path | str, trained_path: str | None = None, variant_paths=None, **kw) -> ModelSource:
    """:func:`model_spec`'s entry resolved for a job (what the dump, accuracy and finetune steps take)."""
    return model_spec(source, **kw).resolved(trained_path, variant_paths)


# --- one tiny model per architecture family of conf/model/ ------------------------------------

#: Configuration and modelling files of a remote-code stand-in for OpenELM: its own config class
#: without ``num_hidden_layers`` (OpenELM's is ``num_transformer_layers``), its own model class
#: whose forward fails whenever a cache is asked for (OpenELM's calls the removed
#: ``DynamicCache.from_legacy_cache`` then), hidden states as OpenELM returns them (the input of
#: every block, then the final norm's output), a learned position table and tied embeddings.
#: Like OpenELM it computes non-persistent buffers in ``__init__`` and uses them in its forward:
#: RoPE frequencies ``inv_freq`` (rotating queries and keys) and a boolean ``causal`` mask.
#: ``INIT_BUFFERS`` marks the lines of ``_init_weights`` that recompute them (what transformers 5
#: needs: it leaves non-persistent buffers as uninitialised memory in ``from_pretrained`` and
#: recomputes only those its own models declare); OpenELM's code, written for transformers 4, has
#: no such lines, and ``save_remote_standin(..., init_buffers=False)`` leaves them out.
REMOTE_CONFIG_PY = """
from transformers import PretrainedConfig


class StandInConfig(PretrainedConfig):
    model_type = "standin-openelm"

    def __init__(self, vocab_size=400, model_dim=32, num_transformer_layers=3, num_query_heads=4,
                 max_context_length=64, use_cache=True, **kwargs):
        self.use_cache = use_cache  # on by default, as in OpenELM's config
        self.vocab_size = vocab_size
        self.model_dim = model_dim
        self.num_transformer_layers = num_transformer_layers
        self.num_query_heads = num_query_heads
        self.max_context_length = max_context_length
        super().__init__(**kwargs)
"""

REMOTE_MODELING_PY = """
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_standin import StandInConfig


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.model_dim
        self.heads = config.num_query_heads
        self.attn_norm = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.ffn_norm = nn.RMSNorm(d)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x, allowed, cos, sin):
        b, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed
        )
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))
        return x + self.down(F.silu(self.up(self.ffn_norm(x))))


class StandInForCausalLM(PreTrainedModel):
    config_class = StandInConfig
    base_model_prefix = "transformer"

    def __init__(self, config):
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.positions = nn.Embedding(config.max_context_length, config.model_dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_transformer_layers))
        self.norm = nn.RMSNorm(config.model_dim)
        self.register_buffer("inv_freq", self.rope_frequencies(config), persistent=False)
        self.register_buffer("causal", self.causal_mask(config), persistent=False)
        self.post_init()

    @staticmethod
    def rope_frequencies(config):
        half = config.model_dim // config.num_query_heads // 2
        return 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32) / half)

    @staticmethod
    def causal_mask(config):
        n = config.max_context_length
        return torch.ones(n, n, dtype=torch.bool).tril()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.2)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, StandInForCausalLM):  # INIT_BUFFERS
            module.inv_freq.copy_(self.rope_frequencies(self.config))  # INIT_BUFFERS
            module.causal.copy_(self.causal_mask(self.config))  # INIT_BUFFERS

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache:
            raise RuntimeError("stand-in: a cache was asked for (OpenELM calls a removed API here)")
        b, n = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        allowed = (self.causal[None, :n, :n] & attention_mask[:, None, :].bool())[:, None]
        pos = torch.arange(n, device=input_ids.device)
        angles = (pos[:, None] * self.inv_freq[None]).to(self.token_embeddings.weight.dtype)[:, None]
        cos, sin = angles.cos(), angles.sin()
        x = self.token_embeddings(input_ids) + self.positions(pos)
        states = []
        for layer in self.layers:
            states.append(x)
            x = layer(x, allowed, cos, sin)
        x = self.norm(x)
        states.append(x)
        logits = F.linear(x, self.token_embeddings.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=tuple(states) if output_hidden_states else None
        )
"""


def save_remote_standin(root: Path, vocab_size: int, seed: int = 0, init_buffers: bool = True) -> Path:
    """A local remote-code model directory (no tokenizer in it: like OpenELM, it has none).

    ``init_buffers=False``: its ``_init_weights`` does not recompute the non-persistent buffers,
    as OpenELM's does not (``from_pretrained`` on transformers 5 then leaves them uninitialised).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    modeling = REMOTE_MODELING_PY
    if not init_buffers:
        modeling = "\n".join(line for line in modeling.splitlines() if "# INIT_BUFFERS" not in line)
    root.mkdir(parents=True, exist_ok=True)
    (root / "configuration_standin.py").write_text(REMOTE_CONFIG_PY)
    (root / "modeling_standin.py").write_text(modeling)
    (root / "config.json").write_text(
        json.dumps(
            {
                "model_type": "standin-openelm",
                "auto_map": {
                    "AutoConfig": "configuration_standin.StandInConfig",
                    "AutoModelForCausalLM": "modeling_standin.StandInForCausalLM",
                },
                "vocab_size": vocab_size,
            }
        )
    )
    cfg = AutoConfig.from_pretrained(root, trust_remote_code=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True, dtype=torch.float32)
    model.save_pretrained(root)
    return root


def llama_config(tok, heads: int, kv_heads: int, hidden: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


#: The hub families of conf/model/ beyond OPT and GPTNeoX: GPT-2 (Cerebras-GPT), Llama in
#: OpenELM's shape (grouped-query attention with 4 query heads per key head, tied embeddings)
#: and in SmolLM's (3 query heads per key head, tied), the remote-code stand-in, and OpenELM
#: itself (the project's own classes, diff_erank.openelm).
ARCH_FAMILIES = ["gpt2-cerebras", "llama-openelm", "llama-smollm", "remote-openelm", "openelm"]


def tiny_openelm_config(tok, **kw):
    """A 3-block OpenELM with what makes it OpenELM: per-layer numbers of query and key/value
    heads (2 query heads per key/value head) and FFN widths, RMSNorm on queries and keys, input
    and output embeddings shared."""
    from diff_erank.openelm import OpenELMConfig

    fields = dict(
        vocab_size=len(tok), num_transformer_layers=3, model_dim=64, head_dim=16, num_gqa_groups=2,
        qkv_multipliers=[0.5, 1.0], ffn_multipliers=[0.5, 4.0], ffn_dim_divisor=32,
        normalize_qk_projections=True, share_input_output_layers=True, max_context_length=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return OpenELMConfig(**{**fields, **kw})
