"""Shared fixtures: tiny real transformers models and a real BPE tokenizer, saved locally.

Nothing is mocked: models are built from configs, saved with ``save_pretrained`` and read back
through ``from_pretrained``; datasets go through ``datasets.load_dataset``. The hub is never
reached (offline variables are set for the whole session). The builders behind these fixtures,
and everything else test modules share, are in ``tests/helpers/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.models import ARCH_FAMILIES, llama_config, save_remote_standin, save_tiny, tiny_openelm_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    from diff_erank.stdlib_text import topic_paragraphs

    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in topic_paragraphs()[:300]))
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_file) -> Path:
    from diff_erank.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(corpus_file, out, vocab_size=400)
    return out


@pytest.fixture(scope="session", params=["opt", "gpt_neox"])
def tiny_model(request, tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny causal LM directory (``main`` and ``step0`` revisions) with its tokenizer."""
    return save_tiny(tmp_path_factory.mktemp(request.param), request.param, tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory, tokenizer_dir) -> Path:
    return save_tiny(tmp_path_factory.mktemp("opt"), "opt", tokenizer_dir)


@pytest.fixture
def texts_file(tmp_path) -> Path:
    """A texts parquet with an empty text, a one-token text and a long one."""
    import pandas as pd

    from diff_erank.stdlib_text import topic_paragraphs

    paras = topic_paragraphs()[300:311]
    texts = ["", "a", *paras[:10], " ".join(paras) * 3]
    path = tmp_path / "texts.parquet"
    pd.DataFrame({"text_id": range(len(texts)), "text": texts}).to_parquet(path)
    return path


@pytest.fixture(scope="session", params=ARCH_FAMILIES)
def arch_model(request, tmp_path_factory, tokenizer_dir) -> dict:
    """``model_spec`` keyword arguments for one tiny model of each family (3 blocks each)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    root = tmp_path_factory.mktemp(request.param)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if request.param == "remote-openelm":
        path = save_remote_standin(root / "model", len(tok))
        return {"source": str(path), "tokenizer": str(tokenizer_dir), "trust_remote_code": True}
    if request.param == "gpt2-cerebras":
        cfg = GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=3, n_head=2, n_positions=64,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
    elif request.param == "llama-openelm":
        cfg = llama_config(tok, heads=4, kv_heads=1, hidden=32)
    elif request.param == "openelm":
        cfg = tiny_openelm_config(tok)
    else:
        cfg = llama_config(tok, heads=3, kv_heads=1, hidden=24)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(root / "main")
    tok.save_pretrained(root / "main")
    return {"source": str(root)}
