"""Faults and determinism across process boundaries: SIGKILL mid-dump, seeds, tokenizers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.models import resolved
from transformers import AutoTokenizer

from diff_erank import dump as D
from diff_erank.cache import spec_file
from diff_erank.measure import measure

CLI = str(Path(sys.executable).with_name("diff-erank"))


def _big_texts(path: Path, n: int = 400) -> Path:
    from diff_erank.stdlib_text import topic_paragraphs

    paras = topic_paragraphs()
    texts = [paras[i % len(paras)] for i in range(n)]
    pd.DataFrame({"text_id": range(n), "text": texts}).to_parquet(path)
    return path


def test_sigkilled_dump_leaves_nothing_complete_then_resumes(tiny_opt, tmp_path) -> None:
    texts = _big_texts(tmp_path / "texts.parquet")
    spec = resolved(tiny_opt, shard_texts=20, batch_tokens=128)
    out = tmp_path / "dump"
    partial = out.with_name("dump.partial")
    cmd = [
        CLI,
        "dump",
        "--spec",
        spec_file(str(tmp_path), spec.entry.spec),
        "--variant",
        "trained",
        "--texts",
        str(texts),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(partial.glob("shard-00001.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the dump finished before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed dump must not publish its output directory"
    with pytest.raises(D.ShardError):
        D.read_manifest(out)
    finished = len(list(partial.glob("shard-*.json")))
    assert 2 <= finished < 20
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming: {finished} of 20 shards" in r.stderr
    fresh = tmp_path / "fresh"
    D.dump(spec, "trained", texts, fresh, device="cpu")
    pd.testing.assert_frame_equal(measure(out), measure(fresh), check_exact=True)


def test_untrained_seeds_give_different_values(tiny_opt, texts_file, tmp_path) -> None:
    spec = resolved(tiny_opt)
    e = {}
    for v in ("init-s0", "init-s0", "init-s1"):
        out = tmp_path / f"{v}-{len(e)}"
        D.dump(spec, v, texts_file, out, device="cpu")
        e[out.name] = measure(out)["erank"]
    assert list(e["init-s0-0"]) == list(e["init-s0-1"])  # same seed: bit-identical
    assert not e["init-s0-0"].equals(e["init-s1-2"])  # another seed: another model


def test_tokenizer_without_pad_token(tiny_opt, texts_file, tmp_path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_opt / "main")
    tok.pad_token = None
    assert tok.pad_token_id is None
    spec = resolved(tiny_opt, batch_tokens=4096)
    texts = D.read_and_tokenise(spec.entry, texts_file, tok)  # tokenised with this tokenizer
    m = D.dump(spec, "trained", texts_file, tmp_path / "nopad", device="cpu", texts=texts)
    ref = D.dump(spec, "trained", texts_file, tmp_path / "ref", device="cpu")
    assert m["n_texts"] == ref["n_texts"]
    pd.testing.assert_frame_equal(measure(tmp_path / "nopad"), measure(tmp_path / "ref"), check_exact=True)


def test_shards_are_not_pickles(tiny_opt, texts_file, tmp_path) -> None:
    D.dump(resolved(tiny_opt), "trained", texts_file, tmp_path / "d", device="cpu")
    for f in (tmp_path / "d").glob("shard-*.safetensors"):
        header = f.read_bytes()[:16]
        assert not header.startswith(b"\x80") and not header.startswith(b"PK")  # neither pickle nor zip
