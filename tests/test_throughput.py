"""The dump's internals that exist for speed and memory, each against an independent reading.

The loss without the batch's full-vocabulary logits against ``F.cross_entropy`` on transformers'
own full logits of one text at a time; the streamed shard writer against ``safetensors``' own
``save_file``; the spectra-on-the-device dump against the two-stage (hidden states, then eRank)
path; the GPU benchmark's CPU smoke mode end to end.
"""

from __future__ import annotations

import functools
import hashlib
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO
from helpers.models import resolved
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from diff_erank import dump as D
from diff_erank.measure import measure
from diff_erank.shardwriter import ShardReader, write_safetensors


def test_loss_from_chunked_head_equals_full_logits(tiny_model, monkeypatch) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model / "main", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model / "main")
    texts = ["one two three four five six seven", "a b", "the model reads a longer text here, and more"]
    seqs = [tok(t)["input_ids"] for t in texts]
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(D, "LOSS_CHUNK_ELEMENTS", 5 * vocab)  # 5-token chunks cross text boundaries
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
    states, losses = D.forward_batch(model, seqs, {"last": 2}, torch.device("cpu"))
    assert max(rows) <= 5  # the head never saw more than a chunk: no batch x length x vocab logits
    for s, got, hidden in zip(seqs, losses, states["last"], strict=True):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([s]), output_hidden_states=True)
        ref = F.cross_entropy(out.logits[0, :-1], torch.tensor(s[1:]))
        assert got == pytest.approx(float(ref), rel=1e-5)
        torch.testing.assert_close(hidden, out.hidden_states[-1][0], rtol=1e-5, atol=1e-5)


def test_post_processed_logits_fall_back_to_the_full_logits(tiny_opt, caplog) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_opt / "main", dtype=torch.float32).eval()
    forward = model.forward

    @functools.wraps(forward)
    def soft_capped(*args, **kw):  # as Gemma 2 does, but undeclared in the config
        out = forward(*args, **kw)
        out.logits = 2.0 * torch.tanh(out.logits / 2.0)
        return out

    model.forward = soft_capped
    seqs = [[1, 5, 9, 13, 2], [1, 7, 3]]
    _, losses = D.forward_batch(model, seqs, {"last": 2}, torch.device("cpu"))
    assert "not its LM head" in caplog.text
    for s, got in zip(seqs, losses, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s])).logits[0, :-1]
        assert got == pytest.approx(float(F.cross_entropy(logits, torch.tensor(s[1:]))), rel=1e-5)


def test_streamed_writer_is_bit_identical_to_save_file(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    pieces = [torch.randn(n, 6, generator=g) for n in (3, 1, 5)]
    tensors = {
        "layer.last": pieces,
        "layer.first": [p.to(torch.bfloat16) for p in pieces],
        "layer.0": [p.half() for p in pieces],
        "offsets": torch.tensor([0, 3, 4, 9]),
        "loss": torch.tensor([1.5, 2.0, 0.25], dtype=torch.float64),
        "position": torch.tensor([7, 2, 0]),
    }
    digest = write_safetensors(tensors, tmp_path / "mine.safetensors", metadata={"format": "1"})
    whole = {k: torch.cat(v) if isinstance(v, list) else v for k, v in tensors.items()}
    save_file(whole, str(tmp_path / "ref.safetensors"), metadata={"format": "1"})
    mine, ref = (tmp_path / "mine.safetensors").read_bytes(), (tmp_path / "ref.safetensors").read_bytes()
    assert mine == ref
    assert digest == hashlib.sha256(ref).hexdigest()
    # read back with plain reads (no memory map): safetensors' own loader is the reference
    from safetensors.torch import load_file

    loaded = load_file(str(tmp_path / "ref.safetensors"))
    with ShardReader(tmp_path / "mine.safetensors") as r:
        for k, v in loaded.items():
            assert torch.equal(r.tensor(k), v) and r.tensor(k).dtype == v.dtype
            if v.ndim and v.shape[0] > 2:
                assert torch.equal(r.rows(k, 1, 3), v[1:3])
        with pytest.raises(ValueError, match="outside"):
            r.rows("loss", 2, 4)
    (tmp_path / "cut.safetensors").write_bytes(mine[:-4])
    with ShardReader(tmp_path / "cut.safetensors") as r, pytest.raises(ValueError, match="ends inside"):
        r.tensor("layer.0")  # the file's last tensor (safetensors orders by dtype, widest first)


@pytest.mark.parametrize("dump_dtype", ["float32", "bfloat16"])
def test_spectra_dump_gives_the_two_stage_tables(tiny_opt, texts_file, tmp_path, dump_dtype) -> None:
    layers = ["embeddings", "first", "last"]
    hidden = D.dump(
        resolved(tiny_opt, dump_dtype=dump_dtype),
        "trained",
        texts_file,
        tmp_path / "h",
        layers=layers,
        device="cpu",
    )
    spectra = D.dump(
        resolved(tiny_opt, dump_dtype=dump_dtype, store="spectra"),
        "trained",
        texts_file,
        tmp_path / "s",
        layers=layers,
        device="cpu",
    )
    assert (hidden["store"], spectra["store"]) == ("hidden", "spectra")
    assert not any(
        k.startswith("layer.") for k in D.load_file(str(tmp_path / "s" / spectra["shards"][0]["file"]))
    )
    a, b = measure(tmp_path / "h"), measure(tmp_path / "s")
    assert len(a) == 3 * hidden["n_texts"] > 20
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-12)
    with pytest.raises(D.ShardError, match="holds hidden states"):
        next(D.iter_spectra(tmp_path / "h"))


@pytest.mark.slow
def test_bench_gpu_smoke(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tok/s" in out.stdout and "spectra" in out.stdout and "MFU" in out.stdout


def test_batches_pad_at_most_max_padding() -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 400, (300,), generator=g).tolist()
    batches = D.plan_batches(lengths, range(300), batch_tokens=16384)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        padded, real = max(lengths[i] for i in b) * len(b), sum(lengths[i] for i in b)
        assert padded <= 16384 and (len(b) == 1 or real >= (1 - D.MAX_PADDING) * padded)
    assert sum(map(len, batches)) / len(batches) > 4  # sorted lengths still batch


def test_writer_error_reaches_the_caller_and_publishes_nothing(tiny_opt, texts_file, tmp_path, monkeypatch):
    def disk_full(tensors, path, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(D, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        D.dump(resolved(tiny_opt), "trained", texts_file, tmp_path / "d", device="cpu")
    assert not (tmp_path / "d").exists()
    assert not list((tmp_path / "d.partial").glob("shard-*"))


def test_store_is_a_closed_sweep_wide_choice() -> None:
    from diff_erank.config import ConfigError, load_config

    cfg = load_config(REPO / "conf", ["experiment=ci", "model.store=spectra"])
    assert {m["store"] for m in cfg["models"].values()} == {"spectra"}
    with pytest.raises(ConfigError, match="store"):
        load_config(REPO / "conf", ["experiment=ci", "model.store=gram"])


def test_solo_unmasked_and_padded_batches_equal_float64_one_text_at_a_time(tiny_model, monkeypatch) -> None:
    """Every path of the CPU batch plan (a long text alone, texts of one length batched without a
    mask, a padded batch with one) against an unbatched float64 forward of transformers' own."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model / "main", dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model / "main", dtype=torch.float64).eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(D, "LOSS_CHUNK_ELEMENTS", 7 * vocab)  # chunks cross the texts' boundaries
    g = torch.Generator().manual_seed(0)
    lengths = [60, 45, 20, 19, 18, 7, 7, 3]
    seqs = [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]
    batches = D.plan_batches(lengths, range(len(seqs)), batch_tokens=4096, solo_from=40)
    assert batches == [[0], [1], [2, 3, 4], [5, 6], [7]]  # solo, padded (masked), one length (no mask)
    layers = {"first": 0, "mid": 1, "last": 2}
    got: dict[int, tuple] = {}
    for batch, states, losses in D.run_batches(model, seqs, batches, layers, torch.device("cpu")):
        got |= {i: ({n: states[n][j] for n in layers}, losses[j]) for j, i in enumerate(batch)}
    for i, s in enumerate(seqs):
        with torch.no_grad():
            out = ref(input_ids=torch.tensor([s]), output_hidden_states=True, use_cache=False)
        want = F.cross_entropy(out.logits[0, :-1], torch.tensor(s[1:]))
        assert got[i][1] == pytest.approx(float(want), rel=1e-5)
        for n, k in layers.items():
            torch.testing.assert_close(got[i][0][n].double(), out.hidden_states[k][0], rtol=1e-4, atol=1e-4)
    _, no_loss = D.forward_batch(model, [seqs[5], seqs[6]], layers, torch.device("cpu"), loss=False)
    assert all(math.isnan(v) for v in no_loss)
