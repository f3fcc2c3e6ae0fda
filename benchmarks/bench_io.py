"""Around the model: dump + eRank with a null model, against this disk's own write bandwidth.

The null model makes its hidden states at no cost (views of one preallocated random buffer of
width d, float32) and has a 16-word LM head, so what is timed is everything the pipeline does
around a forward: packing the real tokens and copying them off the "device", the loss, the shard
writer (a thread behind a bounded queue, hashing while it writes), then the eRank stage reading
the shards back. The reference, in the same run, is a dd-like sequential write of the same
number of bytes to the same directory (64 MiB blocks, then ``fsync``); the dump is also timed up
to an ``os.sync()`` so that the page cache does not flatter it.

    python benchmarks/bench_io.py [--dims 2048,5120] [--texts 150] [--median-tokens 200] [--dir DIR]

Texts have log-normal lengths (median ``--median-tokens``, sigma 0.8, at most 2048), as
``bench_gpu.py``'s dolly-like texts.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
import transformers  # noqa: F401 (start-up, paid once per job: the dump's fingerprint reads its version)

from diff_erank.dump import DumpJob, read_and_tokenise
from diff_erank.entries import model_entry
from diff_erank.measure import measure
from diff_erank.storage import write_parquet


class NullLM(torch.nn.Module):
    """A causal-LM stand-in whose hidden states cost nothing: views of a fixed random buffer."""

    def __init__(self, dim: int, max_tokens: int, vocab: int = 16) -> None:
        super().__init__()
        self.config = SimpleNamespace(use_cache=False)
        self.lm_head = torch.nn.Linear(dim, vocab, bias=False)
        g = torch.Generator().manual_seed(dim)
        self.register_buffer("states", torch.randn(max_tokens, dim, generator=g))

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def forward(
        self, input_ids, attention_mask=None, output_hidden_states=True, use_cache=False, logits_to_keep=0
    ):
        b, n = input_ids.shape
        h = self.states[: b * n].view(b, n, -1)
        return SimpleNamespace(hidden_states=(h, h), logits=self.lm_head(h[:, -1:]))


class LengthTokenizer:
    """A text is its own length in tokens; ids cycle through the null model's 16 words."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        n = int(text)
        return {"input_ids": (list(range(16)) * (n // 16 + 1))[:n]}


def dd_write(path: Path, n_bytes: int, block: int = 64 << 20) -> float:
    """Seconds to write ``n_bytes`` sequentially and fsync them (the disk's write bandwidth)."""
    buf = os.urandom(block)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = n_bytes
        while left > 0:
            left -= os.write(fd, buf[: min(block, left)])
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="2048,5120")
    p.add_argument("--texts", type=int, default=150)
    p.add_argument("--median-tokens", type=float, default=200.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the pipeline's jobs use 1)")
    p.add_argument("--dir", type=Path, default=None, help="on the disk to measure (default: a temp dir)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench_io-", dir=args.dir))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.texts, generator=g, dtype=torch.float64).tolist()
    lengths = [int(min(2048, max(3, round(args.median_tokens * math.exp(0.8 * v))))) for v in z]
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")  # what the dump hashes as the weights' identity
    texts = root / "texts.parquet"
    write_parquet(
        pd.DataFrame({"text_id": range(len(lengths)), "text": [str(n) for n in lengths]}),
        texts,
        {"benchmark": Path(__file__).name},
    )
    print(
        f"{len(lengths)} texts, {sum(lengths):,} tokens (median {sorted(lengths)[len(lengths) // 2]}), "
        f"{torch.get_num_threads()} threads, in {root}"
    )
    print("| d | GB | disk write (dd + fsync) | dump + sync | eRank stage | dump + eRank | ratio to disk |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for d in (int(v) for v in args.dims.split(",")):
            entry = model_entry(root / "model", revision=None, batch_tokens=16384, shard_texts=64)
            t0 = time.perf_counter()
            ids = read_and_tokenise(entry, texts, LengthTokenizer())
            job = DumpJob(entry.resolved(), "trained", texts, root / f"d{d}", device="cpu", texts=ids)
            job.model = NullLM(d, 16384)  # a stand-in of the right width: what is measured is the writes
            m = job.run()
            os.sync()
            t_dump = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in (root / f"d{d}").glob("*.safetensors"))
            t0 = time.perf_counter()
            df = measure(root / f"d{d}")
            t_erank = time.perf_counter() - t0
            assert len(df) == m["n_texts"] == len(lengths)
            t_dd = dd_write(root / "dd.bin", size)
            gb = size / 1e9
            both = gb / (t_dump + t_erank)
            print(
                f"| {d} | {gb:.2f} | {gb / t_dd:.2f} GB/s | {gb / t_dump:.2f} GB/s | {gb / t_erank:.2f} GB/s "
                f"| {both:.2f} GB/s | {both / (gb / t_dd):.2f} |"
            )
            shutil.rmtree(root / f"d{d}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
