"""Every model family of conf/model/ through dump and eRank, against an unbatched float64 reading.

The families beyond OPT and GPTNeoX (tests/test_dump.py): GPT-2 (Cerebras-GPT), Llama in
OpenELM's and SmolLM's shapes, OpenELM in the project's own classes (``diff_erank.openelm``; more
in tests/test_openelm.py), and a remote-code stand-in for OpenELM that the tests write
themselves (its own configuration and modelling files, no ``num_hidden_layers``, a forward that
fails when a cache is asked for), loaded with ``trust_remote_code`` through the path OpenELM's
entries take (``models.load_variant`` and ``load_tokenizer`` with a separate tokenizer).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import model_spec
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from diff_erank import dump as D
from diff_erank.config import ConfigError
from diff_erank.entries import ModelEntry
from diff_erank.measure import measure
from diff_erank.models import load_tokenizer, load_variant

LAYERS = ["embeddings", "first", "middle", "last", "all"]


def _spec(arch: dict, **kw) -> ModelEntry:
    return model_spec(arch["source"], **{k: v for k, v in arch.items() if k != "source"}, **kw)


def _erank_float64(hidden: torch.Tensor) -> float:
    """The definition, written out: centre, unit rows, covariance, eigenvalues, exp(entropy)."""
    x = hidden.detach().to(torch.float64).numpy()
    z = x - x.mean(axis=0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    cov = z.T @ z / len(z)
    lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
    lam = lam / lam.sum()
    return math.exp(-sum(p * math.log(p) for p in lam if p > 0))


def _model_dir(arch: dict) -> Path:
    src = Path(arch["source"])
    return src / "main" if (src / "main").is_dir() else src


def test_family_dump_and_erank_match_float64_reading(arch_model, texts_file, tmp_path) -> None:
    # a small token budget: batches of several texts, right-padded
    spec = _spec(arch_model, batch_tokens=160, shard_texts=5)
    manifest = D.dump(spec.resolved(), "trained", texts_file, tmp_path / "d", layers=LAYERS, device="cpu")
    assert manifest["num_hidden_layers"] == 3
    index = {n: v["index"] for n, v in manifest["layers"].items()}
    assert index == {"embeddings": 0, "first": 1, "middle": 1, "last": 3, "0": 0, "1": 1, "2": 2, "3": 3}
    df = measure(tmp_path / "d")
    assert len(df) == manifest["n_texts"] * len(index)
    assert (df["layer_index"] == df["layer"].map(index)).all()

    # the independent reading: the model and tokenizer straight from transformers, one text at a
    # time, no padding, no cache; eRank in float64 from the definition
    remote = arch_model.get("trust_remote_code", False)
    model = AutoModelForCausalLM.from_pretrained(
        _model_dir(arch_model), dtype=torch.float32, trust_remote_code=remote
    )
    tok = AutoTokenizer.from_pretrained(arch_model.get("tokenizer") or _model_dir(arch_model))
    texts = pd.read_parquet(texts_file)["text"]
    seen = 0
    for pos, text in texts.items():
        ids = tok(text, return_tensors="pt")["input_ids"][:, : spec.max_length] if text.strip() else None
        if ids is None or ids.shape[1] < D.MIN_TOKENS:  # blank and too-short texts are skipped
            assert pos not in set(df["position"])
            continue
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids, output_hidden_states=True, use_cache=False)
        assert len(out.hidden_states) == 4
        rows = df[df["position"] == pos].set_index("layer")
        for name, i in index.items():
            assert rows.loc[name, "n_tokens"] == ids.shape[1]
            assert rows.loc[name, "erank"] == pytest.approx(_erank_float64(out.hidden_states[i][0]), rel=1e-5)
        assert rows.loc["last", "loss"] == pytest.approx(float(out.loss), rel=1e-5)
        seen += 1
    assert seen == manifest["n_texts"] > 5
    # the layers differ: the test would notice a layer read from the wrong index
    per_layer = df.groupby("layer")["erank"].mean()
    assert per_layer["embeddings"] != pytest.approx(per_layer["last"], rel=1e-3)


def test_layer_names() -> None:
    assert D.layer_indices(["embeddings", "first", "middle", "last"], 12) == {
        "embeddings": 0,
        "first": 1,
        "middle": 6,
        "last": 12,
    }
    assert D.layer_indices(["all"], 2) == {"0": 0, "1": 1, "2": 2}
    assert D.layer_indices(["last", "all", -1], 2) == {"last": 2, "0": 0, "1": 1, "2": 2, "-1": 2}
    with pytest.raises(ConfigError, match="embeddings"):
        D.layer_indices(["top"], 4)


@pytest.fixture(scope="module")
def openelm_like(tmp_path_factory, tokenizer_dir) -> ModelEntry:
    """The stand-in laid out as OpenELM's entries use it: model and tokenizer in separate
    repositories, the tokenizer at its own revision (a sub-directory for a local source)."""
    from helpers.models import save_remote_standin

    root = tmp_path_factory.mktemp("openelm-like")
    tok_repo = root / "tokenizer-repo"
    shutil.copytree(tokenizer_dir, tok_repo / "tok-rev")
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    model = save_remote_standin(root / "model", vocab, seed=1)
    return model_spec(
        model, tokenizer=str(tok_repo), tokenizer_revision="tok-rev", trust_remote_code=True, max_length=48
    )


def test_openelm_like_remote_code_runs_dump_finetune_and_accuracy(openelm_like, texts_file, tmp_path) -> None:
    from helpers.paper import make_datasets, make_tasks

    from diff_erank.accuracy import evaluate
    from diff_erank.finetune import finetune

    spec = openelm_like.resolved()
    entry = openelm_like
    # what broke OpenELM: no num_hidden_layers in its config, and a cache asked for by default
    cfg = AutoConfig.from_pretrained(entry.source, trust_remote_code=True)
    assert type(cfg).__module__.startswith("transformers_modules.")
    with pytest.raises(AttributeError):
        cfg.get_text_config().num_hidden_layers  # noqa: B018
    raw = AutoModelForCausalLM.from_pretrained(entry.source, trust_remote_code=True)
    with pytest.raises(RuntimeError, match="cache"):
        raw(input_ids=torch.tensor([[1, 2, 3]]))

    # the tokenizer comes from its own repository at its own revision, not the model's "main"
    tok = load_tokenizer(spec)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(Path(entry.tokenizer) / "tok-rev").get_vocab()
    with pytest.raises(ConfigError, match="no revision directory 'main'"):
        load_tokenizer(entry.updated(tokenizer_revision=None).resolved())

    model = load_variant(spec, "trained")
    assert type(model).__module__.startswith("transformers_modules.")
    model(input_ids=torch.tensor([[1, 2, 3]]))  # a plain call, as lm-eval's HFLM makes, runs

    trained = D.dump(spec, "trained", texts_file, tmp_path / "t", layers=["embeddings", "last"], device="cpu")
    init = D.dump(spec, "init-s0", texts_file, tmp_path / "i", layers=["embeddings", "last"], device="cpu")
    assert trained["num_hidden_layers"] == init["num_hidden_layers"] == 3
    assert trained["layers"]["last"]["index"] == 3

    recipe = {
        "dataset": "x",
        "from": "trained",
        "steps": 3,
        "lr": 1e-3,
        "batch_size": 2,
        "max_length": 32,
        "seed": 0,
    }
    facts = finetune(spec, recipe, texts_file, tmp_path / "ft", device="cpu")
    assert math.isfinite(facts["final_loss"])
    with_ft = entry.resolved(variant_paths={"ft-x": str(tmp_path / "ft")})
    ft = D.dump(with_ft, "ft-x", texts_file, tmp_path / "f", layers=["last"], device="cpu")
    assert ft["n_texts"] == trained["n_texts"]
    a, b = measure(tmp_path / "t"), measure(tmp_path / "f")
    assert not np.allclose(a[a["layer"] == "last"]["erank"], b["erank"])  # training changed the model

    files = make_datasets(tmp_path, n=8)
    acc = {"tasks": ["piqa"], "include_path": make_tasks(tmp_path, files), "include_defaults": False,
           "limit": 4, "batch_size": 4}  # fmt: skip
    evaluate(spec, "trained", acc, tmp_path / "acc.json", device="cpu")
    assert json.loads((tmp_path / "acc.json").read_text())["variant"] == "trained"


# -- non-persistent buffers: checked against a fresh construction after every load ---------------
def _logged_buffers(caplog) -> list[str]:
    import ast

    marker = "non-persistent buffers equal to a fresh construction's: "
    messages = [r.getMessage() for r in caplog.records]
    return [name for m in messages if marker in m for name in ast.literal_eval(m.split(marker)[1])]


def test_every_family_loads_with_its_non_persistent_buffers_checked(arch_model, tiny_model, caplog) -> None:
    """No false alarm on any family of conf/model/ (Llama's and GPTNeoX's RoPE, GPT-2's, OPT's and the
    stand-in's buffers), and every non-persistent buffer transformers itself lists is checked and logged."""
    import logging

    checked = {}
    for spec in (_spec(arch_model), model_spec(tiny_model)):
        for variant in ("trained", "init-s0"):
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="diff_erank.models"):
                model = load_variant(spec.resolved(), variant)
            expected = sorted(name for name, _ in model.named_non_persistent_buffers())
            assert sorted(_logged_buffers(caplog)) == expected, (spec.source, variant)
            checked[spec.source] = expected
    if arch_model.get("trust_remote_code"):
        assert checked[arch_model["source"]] == ["causal", "inv_freq"]


def test_remote_code_with_uninitialised_buffers_is_refused(tmp_path, tokenizer_dir) -> None:
    """The real fault: a remote-code model written for transformers 4 (its ``_init_weights`` does not
    set the non-persistent buffers its ``__init__`` computes, as OpenELM's) read by the installed
    transformers' ``from_pretrained`` gets uninitialised memory for them. Its trained variant is
    refused naming the buffer; ``init-s0`` (``from_config`` runs ``__init__`` on real tensors) loads."""
    from helpers.models import save_remote_standin

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    root = save_remote_standin(tmp_path / "standin-unset-buffers", vocab, init_buffers=False)
    raw = AutoModelForCausalLM.from_pretrained(root, trust_remote_code=True, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(raw.config, trust_remote_code=True, dtype=torch.float32)
    if torch.equal(raw.inv_freq, fresh.inv_freq) and torch.equal(raw.causal, fresh.causal):
        pytest.skip("this transformers initialises remote code's non-persistent buffers: the fault is gone")
    spec = model_spec(root, tokenizer=str(tokenizer_dir), trust_remote_code=True).resolved()
    refusal = r"buffer '(causal|inv_freq)' of module '\(root\)' differs .* by up to"
    with pytest.raises(ConfigError, match=refusal):
        load_variant(spec, "trained")
    model = load_variant(spec, "init-s0")
    assert torch.equal(model.inv_freq, fresh.inv_freq) and torch.equal(model.causal, fresh.causal)


@pytest.mark.parametrize("variant", ["trained", "init-s0", "rev-main", "ft-x"])
@pytest.mark.parametrize("garbage", [1e-25, float("nan")])
def test_a_corrupted_buffer_is_refused_for_every_variant_kind(
    variant, garbage, tmp_path, tokenizer_dir, monkeypatch
) -> None:
    """The refusal itself, made deterministic: Llama's RoPE ``inv_freq`` is corrupted right after
    transformers builds the model (scaled to the ~1e-29 seen in the real fault, or one NaN: a
    non-finite value differs), for each kind of variant ``load_variant`` builds."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    from helpers.models import llama_config

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(llama_config(tok, heads=4, kv_heads=1, hidden=32)).save_pretrained(
        tmp_path / "llama" / "main"
    )

    def corrupt(model):
        with torch.no_grad():
            if math.isnan(garbage):
                model.model.rotary_emb.inv_freq[1] = garbage
            else:
                model.model.rotary_emb.inv_freq.mul_(garbage)
        return model

    for build in ("from_pretrained", "from_config"):
        original = getattr(AutoModelForCausalLM, build)
        monkeypatch.setattr(AutoModelForCausalLM, build, lambda *a, _f=original, **k: corrupt(_f(*a, **k)))
    spec = model_spec(tmp_path / "llama").resolved(variant_paths={"ft-x": str(tmp_path / "llama" / "main")})
    diff = "inf" if math.isnan(garbage) else "1"  # inv_freq[0] is 1: scaled to ~0
    refusal = rf"buffer 'inv_freq' of module 'model.rotary_emb' .* by up to {diff} "
    with pytest.raises(ConfigError, match=refusal):
        load_variant(spec, variant)
