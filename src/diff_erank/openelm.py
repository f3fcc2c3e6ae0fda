"""OpenELM (Apple, arXiv 2404.14619) as this project's own transformers classes: no remote code.

Why: Apple publishes OpenELM on the hub with remote code written for transformers 4.39
(``apple/OpenELM-*``: ``configuration_openelm.py``, ``modeling_openelm.py``). On transformers 5 it
does not run: its config class overrides the dataclass ``__post_init__`` that transformers 5
calls with keyword arguments, its forward calls the removed ``DynamicCache.from_legacy_cache``
when the cache is on, and its non-persistent buffers (a causal mask, RoPE's ``inv_freq``) are
re-created empty by transformers 5's meta-device loading and only ``_init_weights`` refills them,
which Apple's does not. This module is written from Apple's published code and configs (read, not
copied) so that a folder or hub repository with ``"model_type": "openelm"`` loads natively with
``trust_remote_code=False`` (the ``auto_map`` of Apple's ``config.json`` is then ignored):

* :class:`OpenELMConfig` takes Apple's ``config.json`` fields as they are and derives the
  per-layer numbers of query/key-value heads and FFN multipliers exactly as Apple's
  ``OpenELMConfig.__post_init__`` does (layer-wise scaling); ``num_hidden_layers`` and
  ``hidden_size`` are aliases of ``num_transformer_layers`` and ``model_dim``.
* :class:`OpenELMForCausalLM` has the parameter names and shapes of Apple's checkpoints
  (``transformer.token_embeddings``, ``transformer.layers.{i}.attn.qkv_proj`` / ``q_norm`` /
  ``k_norm`` / ``out_proj``, ``ffn.proj_1`` / ``proj_2``, ``attn_norm``, ``ffn_norm``,
  ``transformer.norm``) and computes what Apple's forward computes (pre-norm blocks, grouped-query
  attention, RMSNorm on queries and keys, then RoPE, SwiGLU FFN, float32 norms and RoPE).
* Initialisation (the ``init-s<seed>`` variants) follows Apple's ``reset_parameters`` (the same
  in ``modeling_openelm.OpenELMModel`` and in CoreNet, ``apple/corenet``
  ``corenet/modeling/models/language_modeling/general_gpt.py``, which trained OpenELM).

Not supported: a KV cache (``use_cache`` is ignored, ``past_key_values`` refused; the project
never generates), left padding (positions are 0..n-1 in every row, as in Apple's forward).
"""

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


def make_divisible(v: float, divisor: int) -> int:
    """Apple's rounding of layer widths (``configuration_openelm.make_divisible``, from MobileNet):
    the nearest multiple of ``divisor`` (at least ``divisor``), one step up if that lost > 10 %."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def per_layer(multipliers: float | list[float], n: int, what: str) -> list[float]:
    """One multiplier per layer, as Apple's config derives them: a number for every layer, a pair
    spread linearly over the layers (``np.linspace``, rounded to 2 decimals), or (FFN only) one
    number per layer already, as Apple's ``config.json`` stores ``ffn_multipliers``."""
    if isinstance(multipliers, (int, float)):
        return [float(multipliers)] * n
    m = list(multipliers)
    if len(m) == 2:
        return [round(float(v), 2) for v in np.linspace(m[0], m[1], num=n, dtype=float)]
    if what == "ffn" and len(m) == n:
        return [float(v) for v in m]
    raise ValueError(f"OpenELM {what}_multipliers: a number, a pair or (ffn) one per layer; got {m}")


class OpenELMConfig(PretrainedConfig):
    """Apple's OpenELM configuration; the field names and defaults are those of Apple's
    ``configuration_openelm.py`` (``apple/OpenELM-270M``), so its ``config.json`` loads as is.

    ``num_query_heads`` / ``num_kv_heads`` are always derived from ``qkv_multipliers`` and
    ``num_gqa_groups`` (as Apple's ``__post_init__`` does; the lists in a ``config.json`` are
    that derivation written out), ``ffn_multipliers`` becomes one number per layer.
    """

    model_type = "openelm"
    # the names the rest of transformers (and this project) reads
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "num_transformer_layers",
        "hidden_size": "model_dim",
        "tie_word_embeddings": "share_input_output_layers",
    }

    vocab_size: int = 32000
    max_context_length: int = 2048
    num_transformer_layers: int = 12
    model_dim: int = 2048
    head_dim: int = 128
    qkv_multipliers: float | list[float] = 1.0
    num_query_heads: int | list[int] | None = None
    num_kv_heads: list[int] | None = None
    num_gqa_groups: int = 1
    ffn_multipliers: float | list[float] = 4.0
    ffn_with_glu: bool = True
    ffn_dim_divisor: int = 256
    activation_fn_name: str = "swish"
    normalization_layer_name: str = "rms_norm"
    normalize_qk_projections: bool = False
    share_input_output_layers: bool = False
    rope_freq_constant: int = 10000
    rope_max_length: int = 4096
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def __post_init__(self, **kwargs: Any) -> None:
        n = self.num_transformer_layers
        width = self.head_dim * self.num_gqa_groups  # query widths: whole groups of whole heads
        qkv = per_layer(self.qkv_multipliers, n, "qkv")
        self.num_query_heads = [make_divisible(self.model_dim * m, width) // self.head_dim for m in qkv]
        self.num_kv_heads = [q // self.num_gqa_groups for q in self.num_query_heads]
        self.ffn_multipliers = per_layer(self.ffn_multipliers, n, "ffn")
        if self.normalization_layer_name != "rms_norm":
            raise ValueError(f"OpenELM: only rms_norm is implemented, not {self.normalization_layer_name!r}")
        kwargs.pop("auto_map", None)  # Apple's remote-code classes: this class replaces them
        super().__post_init__(**kwargs)

    def ffn_dim(self, layer: int) -> int:
        """Layer ``layer``'s FFN width (before the GLU's doubling of ``proj_1``)."""
        return make_divisible(self.ffn_multipliers[layer] * self.model_dim, self.ffn_dim_divisor)


def _linear(d_in: int, d_out: int, std: float | None) -> nn.Linear:
    """A bias-free linear layer (OpenELM has no biases) tagged with the std its init draws from.

    The tag is read by ``_init_weights``: transformers 5 calls it on the modules that own
    parameters (for code outside transformers it skips modules without direct parameters, so the
    attention and FFN modules could not set their children's stds themselves).
    """
    layer = nn.Linear(d_in, d_out, bias=False)
    layer.init_std = std
    return layer


class OpenELMRMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back before the scale, as Apple's (eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_cos_sin(n: int, dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's float32 cos and sin tables for positions 0..n-1 (``(n, dim)``, halves repeated).

    Computed on the fly in every forward instead of kept in a buffer: nothing to go stale or be
    left uninitialised by ``from_pretrained``. Apple caches the same values (same formula) for
    ``rope_max_length`` positions and extends the cache past it, so that length is no limit.
    """
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    angles = torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``(..., n, dim)``) in float32, the rotate-half layout Apple uses."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


class OpenELMAttention(nn.Module):
    """Causal grouped-query attention with layer ``i``'s own numbers of heads.

    One ``qkv_proj`` makes the queries, keys and values (in that order along its output);
    queries and keys are RMS-normalised per head, then rotated; each key/value head serves
    ``num_gqa_groups`` consecutive query heads.
    """

    def __init__(self, config: OpenELMConfig, i: int) -> None:
        super().__init__()
        d, hd = config.model_dim, config.head_dim
        self.head_dim = hd
        self.q_heads, self.kv_heads = config.num_query_heads[i], config.num_kv_heads[i]
        residual_std = d**-0.5 * (2 * config.num_transformer_layers) ** -0.5
        self.qkv_proj = _linear(d, (self.q_heads + 2 * self.kv_heads) * hd, std=d**-0.5)
        self.q_norm = OpenELMRMSNorm(hd) if config.normalize_qk_projections else None
        self.k_norm = OpenELMRMSNorm(hd) if config.normalize_qk_projections else None
        self.out_proj = _linear(self.q_heads * hd, d, std=residual_std)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.q_heads, self.kv_heads, self.kv_heads], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.q_heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=allowed is None)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, -1))


class OpenELMFeedForward(nn.Module):
    """SwiGLU FFN (``proj_1`` makes gate and value halves, in that order), or a plain FFN."""

    def __init__(self, config: OpenELMConfig, i: int) -> None:
        super().__init__()
        d, hidden = config.model_dim, config.ffn_dim(i)
        self.glu = config.ffn_with_glu
        residual_std = d**-0.5 * (2 * config.num_transformer_layers) ** -0.5
        self.proj_1 = _linear(d, (2 if self.glu else 1) * hidden, std=d**-0.5)
        self.proj_2 = _linear(hidden, d, std=residual_std)
        self.act = ACT2FN[config.activation_fn_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_1(x)
        if self.glu:
            gate, value = h.chunk(2, dim=-1)
            return self.proj_2(self.act(gate) * value)
        return self.proj_2(self.act(h))


class OpenELMDecoderLayer(nn.Module):
    """A pre-norm block: ``x + attn(attn_norm(x))``, then ``x + ffn(ffn_norm(x))``."""

    def __init__(self, config: OpenELMConfig, i: int) -> None:
        super().__init__()
        self.attn_norm = OpenELMRMSNorm(config.model_dim)
        self.attn = OpenELMAttention(config, i)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim)
        self.ffn = OpenELMFeedForward(config, i)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, allowed)
        return x + self.ffn(self.ffn_norm(x))


class OpenELMPreTrainedModel(PreTrainedModel):
    config_class = OpenELMConfig
    base_model_prefix = "transformer"
    _no_split_modules: ClassVar[list[str]] = ["OpenELMDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """Apple's ``reset_parameters`` (OPT's scheme): every linear layer ``N(0, in_features**-0.5)``,
        the embeddings ``N(0, model_dim**-0.5)``, the norms 1, and the projections back into the
        residual stream (``out_proj``, ``proj_2``) ``N(0, model_dim**-0.5 * (2 *
        num_transformer_layers)**-0.5)``. A separate head (no published OpenELM has one) is a
        linear layer like the others, as CoreNet's ``classifier`` (Apple's hub code would give its
        ``lm_head`` ``initializer_range`` instead). The stds are fixed when the layers are built
        (:func:`_linear`); ``transformers.initialization``'s functions leave weights loaded by
        ``from_pretrained`` alone.
        """
        if isinstance(module, nn.Linear) and getattr(module, "init_std", None) is not None:
            init.normal_(module.weight, mean=0.0, std=module.init_std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=module.embedding_dim**-0.5)
        elif isinstance(module, OpenELMRMSNorm):
            init.ones_(module.weight)


def _allowed(attention_mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The boolean ``(b, 1, n, n)`` attention mask for a padded batch; None when nothing is padded
    (then attention runs with ``is_causal``). The diagonal stays allowed so that a row of padding
    never has every key masked (which would make NaNs); its outputs are not read."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    causal = torch.ones(n, n, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal & attention_mask[:, None, None, :].bool()
    return allowed | torch.eye(n, dtype=torch.bool, device=attention_mask.device)


class OpenELMModel(OpenELMPreTrainedModel):
    """The OpenELM decoder without its head."""

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(
            OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers)
        )
        self.norm = OpenELMRMSNorm(config.model_dim)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """``hidden_states`` as Apple returns them: the input of every block (the embeddings, then
        blocks 1..L-1's outputs), then the final norm's output, ``L + 1`` in all; the last block's
        own output before the norm is not among them (as in transformers' Llama)."""
        if past_key_values is not None:
            raise NotImplementedError("OpenELM here has no KV cache (full-sequence forwards only)")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        x = self.token_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        n = x.shape[1]
        cos, sin = rope_cos_sin(n, self.config.head_dim, self.config.rope_freq_constant, x.device)
        allowed = _allowed(attention_mask, n)
        states = []
        for layer in self.layers:
            states.append(x)
            x = layer(x, cos, sin, allowed)
        x = self.norm(x)
        states.append(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None
        )


class OpenELMForCausalLM(OpenELMPreTrainedModel):
    """OpenELM with its LM head: the input embeddings themselves when
    ``share_input_output_layers`` (every published OpenELM), as in Apple's forward.

    The head is an ``lm_head`` whose weight transformers ties to ``transformer.token_embeddings``
    (one tensor; ``save_pretrained`` writes only the embeddings, as Apple's checkpoints hold), so
    the dump can use it for its chunked loss and ``logits_to_keep``.
    """

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "transformer.token_embeddings.weight"}

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        std = None if config.share_input_output_layers else config.model_dim**-0.5
        self.lm_head = _linear(config.model_dim, config.vocab_size, std=std)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.token_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits of the last ``logits_to_keep`` positions (0: all); with ``labels``, the mean
        next-token cross-entropy over labels that are not -100 (as Apple's, which ignores -100
        through ``CrossEntropyLoss``'s default). ``use_cache`` is ignored: no cache is built."""
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            past_key_values=past_key_values,
        )
        h = out.last_hidden_state
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten().to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states)


AutoConfig.register("openelm", OpenELMConfig, exist_ok=True)
AutoModel.register(OpenELMConfig, OpenELMModel, exist_ok=True)
AutoModelForCausalLM.register(OpenELMConfig, OpenELMForCausalLM, exist_ok=True)
