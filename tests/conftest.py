"""Shared fixtures: tiny real transformers models and a real BPE tokenizer, saved locally.

Nothing is mocked: models are built from configs, saved with ``save_pretrained`` and read back
through ``from_pretrained``; datasets go through ``datasets.load_dataset``. The hub is never
reached (offline variables are set for the whole session).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    from diff_erank.corpus import topic_paragraphs

    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in topic_paragraphs()[:300]))
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_file) -> Path:
    from diff_erank.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(corpus_file, out, vocab_size=400)
    return out


def _save_tiny(root: Path, arch: str, tokenizer_dir: Path, seed: int = 0, hidden: int = 32) -> Path:
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


@pytest.fixture(scope="session", params=["opt", "gpt_neox"])
def tiny_model(request, tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny causal LM directory (``main`` and ``step0`` revisions) with its tokenizer."""
    return _save_tiny(tmp_path_factory.mktemp(request.param), request.param, tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory, tokenizer_dir) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("opt"), "opt", tokenizer_dir)


def model_spec(source: Path | str, **kw) -> dict:
    spec = {
        "family": "tiny",
        "size": "xs",
        "params": None,
        "source": str(source),
        "revision": "main",
        "tokenizer": None,
        "dtype": "float32",
        "dump_dtype": "float32",
        "trust_remote_code": False,
        "untrained": {"kind": "random_init", "seeds": [0]},
        "checkpoints": [],
        "max_length": 64,
        "batch_tokens": 256,
        "shard_texts": 4,
    }
    spec.update(kw)
    return spec


@pytest.fixture
def texts_file(tmp_path) -> Path:
    """A texts parquet with an empty text, a one-token text and a long one."""
    import pandas as pd

    from diff_erank.corpus import topic_paragraphs

    paras = topic_paragraphs()[300:311]
    texts = ["", "a", *paras[:10], " ".join(paras) * 3]
    path = tmp_path / "texts.parquet"
    pd.DataFrame({"text_id": range(len(texts)), "text": texts}).to_parquet(path)
    return path
