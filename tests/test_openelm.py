"""OpenELM in the project's own classes (``diff_erank.openelm``), held against Apple's published facts.

What was read (nothing copied; the hub itself was not reachable from here):

* Apple's hub code for ``apple/OpenELM-270M`` (``configuration_openelm.py``,
  ``modeling_openelm.py``, transformers 4.39), read from a copy in a public code index, and the
  same model in Apple's training code, ``apple/corenet``
  ``corenet/modeling/models/language_modeling/general_gpt.py`` (commit 7bbedacb): the module
  tree (hence the parameter names), the per-layer head and FFN rules, the forward, the init rule.
* ``config.json`` of ``apple/OpenELM-270M`` (1.3 kB, ``transformers_version`` 4.39.3), read from
  re-saves of it on the hub (``TinyPixel/OpenELM-270M`` ``config.json``, ``_name_or_path``
  ``apple/OpenELM-270M``; ``a8nova/OpenELM-270M-Instruct`` commit 35f1c60 with Apple's
  ``auto_map``): :data:`APPLE_270M_CONFIG` below, field for field.
* Checkpoint sizes: ``apple/OpenELM-270M``'s ``model.safetensors`` is listed at 1.09 GB
  (float32); its bfloat16 re-save ``TinyPixel/OpenELM-270M`` (commit 8721166) is 543,068,952
  bytes; ``mlx-community/OpenELM-450M``'s ``model.safetensors.index.json`` gives ``total_size``
  914,358,272 (bfloat16) and names its tensors ``transformer.layers.0.attn.qkv_proj.weight``,
  ``...attn.q_norm.weight``, ``...attn.k_norm.weight``, ``...attn.out_proj.weight``,
  ``...attn_norm.weight``, ``...ffn.proj_1.weight``, ... A printed ``OpenELMForCausalLM`` of
  the 270M model shows layer 0 as ``qkv_proj: Linear(1280 -> 1152)``, ``out_proj: Linear(768 -> 1280)``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO
from helpers.models import model_spec, tiny_openelm_config
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from diff_erank import dump as D
from diff_erank.accuracy import hflm_kwargs
from diff_erank.config import load_config
from diff_erank.entries import ModelEntry
from diff_erank.models import load_variant
from diff_erank.openelm import OpenELMConfig, OpenELMForCausalLM

#: ``apple/OpenELM-270M``'s ``config.json`` as published (sources in the module docstring).
APPLE_270M_CONFIG = {
    "activation_fn_name": "swish",
    "architectures": ["OpenELMForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_openelm.OpenELMConfig",
        "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM",
    },
    "bos_token_id": 1,
    "eos_token_id": 2,
    "ffn_dim_divisor": 256,
    "ffn_multipliers": [
        0.5,
        0.73,
        0.97,
        1.2,
        1.43,
        1.67,
        1.9,
        2.13,
        2.37,
        2.6,
        2.83,
        3.07,
        3.3,
        3.53,
        3.77,
        4.0,
    ],
    "ffn_with_glu": True,
    "head_dim": 64,
    "initializer_range": 0.02,
    "max_context_length": 2048,
    "model_dim": 1280,
    "model_type": "openelm",
    "normalization_layer_name": "rms_norm",
    "normalize_qk_projections": True,
    "num_gqa_groups": 4,
    "num_kv_heads": [3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5],
    "num_query_heads": [12, 12, 12, 12, 12, 16, 16, 16, 16, 16, 16, 16, 20, 20, 20, 20],
    "num_transformer_layers": 16,
    "qkv_multipliers": [0.5, 1.0],
    "rope_freq_constant": 10000,
    "rope_max_length": 4096,
    "share_input_output_layers": True,
    "torch_dtype": "float32",
    "transformers_version": "4.39.3",
    "use_cache": True,
    "vocab_size": 32000,
}

#: Layer i's FFN width in OpenELM-270M: ``make_divisible(ffn_multipliers[i] * 1280, 256)``, worked
#: out by hand from Apple's rule (nearest multiple of 256, one step up if more than 10 % was lost).
FFN_270M = [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608, 4864, 5120]


def _apple_270m_table() -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of OpenELM-270M, from the published config and Apple's module tree."""
    d, hd, vocab = 1280, 64, 32000
    table = {"transformer.token_embeddings.weight": (vocab, d), "transformer.norm.weight": (d,)}
    heads = zip(
        APPLE_270M_CONFIG["num_query_heads"], APPLE_270M_CONFIG["num_kv_heads"], FFN_270M, strict=True
    )
    for i, (q, kv, f) in enumerate(heads):
        p = f"transformer.layers.{i}."
        table |= {
            p + "attn_norm.weight": (d,),
            p + "attn.qkv_proj.weight": ((q + 2 * kv) * hd, d),
            p + "attn.q_norm.weight": (hd,),
            p + "attn.k_norm.weight": (hd,),
            p + "attn.out_proj.weight": (d, q * hd),
            p + "ffn_norm.weight": (d,),
            p + "ffn.proj_1.weight": (2 * f, d),  # SwiGLU: gate and value halves
            p + "ffn.proj_2.weight": (d, f),
        }
    return table


def test_apples_270m_config_json_loads_without_remote_code(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(APPLE_270M_CONFIG))
    cfg = AutoConfig.from_pretrained(tmp_path, trust_remote_code=False)
    assert type(cfg) is OpenELMConfig
    # the derivation from qkv_multipliers / num_gqa_groups reproduces the published lists
    assert cfg.num_query_heads == APPLE_270M_CONFIG["num_query_heads"]
    assert cfg.num_kv_heads == APPLE_270M_CONFIG["num_kv_heads"]
    assert cfg.ffn_multipliers == APPLE_270M_CONFIG["ffn_multipliers"]
    assert [cfg.ffn_dim(i) for i in range(16)] == FFN_270M
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (16, 1280, 32000)  # the entry's shape:
    assert cfg.get_text_config().num_hidden_layers == 16
    assert cfg.tie_word_embeddings and cfg.dtype == torch.float32
    # the same from the pair the published config was made from (Apple's OpenELM_CONFIGS entry)
    published = {k: v for k, v in APPLE_270M_CONFIG.items() if k != "model_type"}
    pair = OpenELMConfig(**{**published, "ffn_multipliers": [0.5, 4.0], "num_query_heads": None})
    assert pair.num_query_heads == cfg.num_query_heads and pair.ffn_multipliers == cfg.ffn_multipliers
    # saved again it names no remote code (this class replaces Apple's)
    cfg.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert "auto_map" not in again and again["model_type"] == "openelm"


def test_parameter_names_and_shapes_are_apples_checkpoints() -> None:
    """OpenELM-270M built from its published config (on the meta device: nothing allocated) has
    exactly the parameters of Apple's checkpoint; the sizes agree with the published files."""
    cfg = OpenELMConfig(**{k: v for k, v in APPLE_270M_CONFIG.items() if k != "model_type"})
    with torch.device("meta"):
        model = OpenELMForCausalLM(cfg)
    mine = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert mine == _apple_270m_table()
    n = sum(p.numel() for p in model.parameters())
    assert round(4 * n / 1e9, 2) == 1.09  # Apple's float32 model.safetensors: "1.09 GB"
    assert 0 < 543_068_952 - 2 * n < 64 * 1024  # the bfloat16 re-save: tensors plus its JSON header
    assert model.lm_head.weight is model.transformer.token_embeddings.weight  # shared, no head of its own

    # OpenELM-450M (Apple's OpenELM_CONFIGS entry): the mlx-community index's total_size, to the byte
    c450 = OpenELMConfig(
        num_transformer_layers=20, model_dim=1536, head_dim=64, num_gqa_groups=4, qkv_multipliers=[0.5, 1.0],
        ffn_multipliers=[0.5, 4.0], normalize_qk_projections=True, share_input_output_layers=True,
    )  # fmt: skip
    with torch.device("meta"):
        m450 = OpenELMForCausalLM(c450)
    assert 2 * sum(p.numel() for p in m450.parameters()) == 914_358_272


def _reference_logits(model: OpenELMForCausalLM, ids: list[int]) -> torch.Tensor:
    """Apple's forward for one unpadded text, written out in float64, one attention head at a time:
    pre-norm blocks, queries and keys RMS-normed per head then rotated (rotate-half RoPE), key/value
    head ``j // group`` for query head ``j``, SwiGLU with the gate first, final norm, shared head."""
    c = model.config
    w = {k: v.detach().double() for k, v in model.state_dict().items()}
    n, hd = len(ids), c.head_dim

    def rms(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-6) * weight

    angle = torch.arange(n, dtype=torch.float64)[:, None] * c.rope_freq_constant ** (
        -torch.arange(0, hd, 2, dtype=torch.float64) / hd
    )

    def rope(v: torch.Tensor) -> torch.Tensor:
        a, b = v[:, : hd // 2], v[:, hd // 2 :]
        return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], -1)

    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    x = w["transformer.token_embeddings.weight"][ids]
    for i in range(c.num_transformer_layers):
        p = f"transformer.layers.{i}."
        nq, nkv = c.num_query_heads[i], c.num_kv_heads[i]
        heads = (rms(x, w[p + "attn_norm.weight"]) @ w[p + "attn.qkv_proj.weight"].T).view(
            n, nq + 2 * nkv, hd
        )
        outs = []
        for j in range(nq):
            g = j // (nq // nkv)
            q = rope(rms(heads[:, j], w[p + "attn.q_norm.weight"]))
            k = rope(rms(heads[:, nq + g], w[p + "attn.k_norm.weight"]))
            scores = (q @ k.T / math.sqrt(hd)).masked_fill(future, float("-inf"))
            outs.append(torch.softmax(scores, -1) @ heads[:, nq + nkv + g])
        x = x + torch.cat(outs, -1) @ w[p + "attn.out_proj.weight"].T
        gate, value = (rms(x, w[p + "ffn_norm.weight"]) @ w[p + "ffn.proj_1.weight"].T).chunk(2, -1)
        x = x + (F.silu(gate) * value) @ w[p + "ffn.proj_2.weight"].T
    return rms(x, w["transformer.norm.weight"]) @ w["transformer.token_embeddings.weight"].T


def test_forward_is_apples_forward_and_right_padding_changes_nothing(tokenizer_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = tiny_openelm_config(tok)
    assert cfg.num_query_heads == [2, 4, 4] and cfg.num_kv_heads == [1, 2, 2]  # per-layer heads, GQA
    assert [cfg.ffn_dim(i) for i in range(3)] == [32, 160, 256]  # per-layer FFN widths
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    texts = [[int(t) for t in torch.randint(0, len(tok), (k,))] for k in (17, 9, 30)]
    with torch.no_grad():
        singles = [model(input_ids=torch.tensor([t]), output_hidden_states=True) for t in texts]
        for t, out in zip(texts, singles, strict=True):
            assert torch.allclose(out.logits[0].double(), _reference_logits(model, t), atol=1e-4, rtol=1e-4)
            assert len(out.hidden_states) == 4  # embeddings, blocks 1-2's outputs, the final norm's output
            assert torch.equal(out.hidden_states[0][0], model.transformer.token_embeddings.weight[t])
        # a right-padded batch (as the dump and finetune make) gives each text its own numbers
        n = max(map(len, texts))
        ids = torch.tensor([t + [0] * (n - len(t)) for t in texts])
        mask = torch.tensor([[1] * len(t) + [0] * (n - len(t)) for t in texts])
        batch = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        for row, (t, out) in enumerate(zip(texts, singles, strict=True)):
            assert torch.allclose(batch.logits[row, : len(t)], out.logits[0], atol=1e-5)
            for mine, alone in zip(batch.hidden_states, out.hidden_states, strict=True):
                assert torch.allclose(mine[row, : len(t)], alone[0], atol=1e-5)
        assert torch.isfinite(batch.logits).all()
        kept = model(input_ids=ids[:1, :17], logits_to_keep=1).logits
        assert kept.shape == (1, 1, len(tok)) and torch.allclose(
            kept[0, 0], singles[0].logits[0, -1], atol=1e-5
        )
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([texts[2]]), labels=torch.tensor([texts[2]])).loss
    ref = F.cross_entropy(singles[2].logits[0, :-1], torch.tensor(texts[2][1:]))
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(NotImplementedError, match="cache"):
        model(input_ids=ids, past_key_values=((), ()))


def _expected_std(name: str, cfg: OpenELMConfig, shape: torch.Size) -> float:
    """OpenELM's init rule, from Apple's reset_parameters, per parameter name."""
    residual = cfg.model_dim**-0.5 * (2 * cfg.num_transformer_layers) ** -0.5
    if name.endswith(("attn.out_proj.weight", "ffn.proj_2.weight")):
        return residual
    if name.endswith("token_embeddings.weight"):
        return cfg.model_dim**-0.5
    return shape[1] ** -0.5  # every other linear layer: in_features ** -0.5


def test_seeded_init_follows_openelm_init_rule(tmp_path, tokenizer_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = tiny_openelm_config(tok, model_dim=256, head_dim=32, num_transformer_layers=4)
    cfg.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    spec = model_spec(tmp_path / "m").resolved()
    m0 = load_variant(spec, "init-s0")
    assert type(m0) is OpenELMForCausalLM
    for name, p in m0.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        std = _expected_std(name, cfg, p.shape)
        # a normal sample's std is off by about 1/sqrt(2 numel) (here < 1.2 %): 5 of those
        assert float(p.std()) == pytest.approx(std, rel=5 / math.sqrt(2 * p.numel())), name
        assert abs(float(p.mean())) < 5 * std / math.sqrt(p.numel()), name
    # the seed fixes the weights; another seed draws others
    again, other = load_variant(spec, "init-s0"), load_variant(spec, "init-s1")
    same = again.state_dict()
    assert all(torch.equal(t, same[k]) for k, t in m0.state_dict().items())
    assert not torch.equal(m0.lm_head.weight, other.lm_head.weight)

    # a head of its own (no published OpenELM has one) is drawn like the other linear layers
    torch.manual_seed(0)
    unshared = OpenELMForCausalLM(tiny_openelm_config(tok, model_dim=256, share_input_output_layers=False))
    assert unshared.lm_head.weight is not unshared.transformer.token_embeddings.weight
    assert float(unshared.lm_head.weight.std()) == pytest.approx(256**-0.5, rel=0.05)


def test_trained_variant_equals_the_model_saved(tmp_path, tokenizer_dir, texts_file) -> None:
    """save_pretrained -> load_variant("trained") (transformers 5's meta-device from_pretrained)
    gives back the same numbers: no buffer exists to be left uninitialised, the shared head is
    re-tied, the file holds Apple's tensor names only; the dump takes its chunked-loss path."""
    from safetensors import safe_open

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(3)
    saved = AutoModelForCausalLM.from_config(tiny_openelm_config(tok), dtype=torch.float32).eval()
    saved.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {name for name, _ in saved.named_parameters()}  # no lm_head.weight
    spec = model_spec(tmp_path / "m").resolved()
    loaded = load_variant(spec, "trained")
    assert type(loaded) is OpenELMForCausalLM and not loaded.config.use_cache
    assert list(loaded.buffers()) == []
    assert loaded.lm_head.weight is loaded.transformer.token_embeddings.weight
    ids = torch.randint(0, len(tok), (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.no_grad():
        a = saved(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        b = loaded(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states, strict=True))
    assert D._head_for_loss(loaded) is loaded.lm_head

    for variant in ("trained", "init-s0"):
        manifest = D.dump(
            spec, variant, texts_file, tmp_path / variant, layers=["embeddings", "last"], device="cpu"
        )
        assert manifest["num_hidden_layers"] == 3 and manifest["layers"]["last"]["index"] == 3


def test_openelm_entries_load_natively_and_evaluate_with_bos() -> None:
    cfg = load_config(REPO / "conf", ["experiment=fig3"])
    openelm = {name: m for name, m in cfg["models"].items() if m["family"] == "openelm"}
    assert sorted(openelm) == ["openelm-1_1b", "openelm-270m", "openelm-3b", "openelm-450m"]
    for name, m in openelm.items():
        assert m["trust_remote_code"] is False, name
        assert hflm_kwargs(ModelEntry.from_spec(m), cfg["accuracy"]) == {
            "batch_size": 8,
            "max_length": 2048,
            "add_bos_token": True,
        }
    # every other model keeps lm-eval's default
    assert "add_bos_token" not in hflm_kwargs(
        ModelEntry.from_spec(cfg["models"]["opt-125m"]), cfg["accuracy"]
    )


def test_hflm_takes_the_entrys_add_bos_token(tokenizer_dir) -> None:
    from lm_eval.models.huggingface import HFLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_config(tiny_openelm_config(tok), dtype=torch.float32)
    spec = model_spec("unused", lm_eval={"add_bos_token": True})
    lm = HFLM(pretrained=model, tokenizer=tok, device="cpu", **hflm_kwargs(spec, {"batch_size": 2}))
    assert lm.add_bos_token is True and lm.max_length == 64
    assert lm.tok_encode("a short text")[0] == tok.bos_token_id
