"""Benchmark: the pipeline's dump + eRank against the authors' method, on the same model and texts.

The authors run one text at a time in float32 and take a float32 d x d ``torch.svd`` per text;
the pipeline batches with length bucketing and decomposes the small Gram matrix in float64.
Reports tokens per second of each, the largest relative difference in per-text eRank, and the
peak memory of the eRank stage for a small and a 4x larger dump (it streams shards, so it
should not grow with the number of texts).

    python benchmarks/bench_pipeline.py [--texts 200] [--hidden 512] [--layers 4] [--max-length 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from authors_method import authors_erank

from diff_erank.dump import dump
from diff_erank.entries import ModelSource, model_entry
from diff_erank.measure import measure
from diff_erank.stdlib_text import topic_paragraphs
from diff_erank.train import model_config, train_tokenizer


def build_model(root: Path, hidden: int, layers: int, max_length: int) -> Path:
    """A seeded random-init OPT saved locally (the same weights for both methods)."""
    from transformers import AutoModelForCausalLM

    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in topic_paragraphs()[:400]))
    tok = train_tokenizer(corpus, root / "tok", vocab_size=1024)
    spec = {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": max(1, hidden // 64),
        "seq_len": max_length,
    }
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("opt", spec, tok), dtype=torch.float32)
    model.save_pretrained(root / "model" / "main")
    tok.save_pretrained(root / "model" / "main")
    return root / "model"


def spec_for(model_dir: Path, max_length: int, shard_texts: int = 64) -> ModelSource:
    entry = model_entry(
        model_dir, family="bench", size="x", max_length=max_length, batch_tokens=8192, shard_texts=shard_texts
    )
    return entry.resolved()


def texts_file(path: Path, n: int) -> Path:
    paras = topic_paragraphs()
    texts = [" ".join(paras[i % len(paras) : i % len(paras) + 3]) for i in range(n)]
    pd.DataFrame({"text_id": range(n), "text": texts}).to_parquet(path)
    return path


@torch.no_grad()
def authors_pipeline(model_dir: Path, texts: list[str], max_length: int) -> tuple[list[float], float, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir / "main")
    model = AutoModelForCausalLM.from_pretrained(model_dir / "main", dtype=torch.float32).eval()
    t0, values, n_tok = time.perf_counter(), [], 0
    for text in texts:
        ids = tok(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        values.append(authors_erank(hidden))
        n_tok += ids.shape[1]
    return values, time.perf_counter() - t0, n_tok


def peak_rss_of_measure(dump_dir: Path) -> float:
    """Max RSS (MiB) of a fresh process that runs the eRank stage on ``dump_dir``."""
    code = (
        "import resource, sys; from diff_erank.measure import measure; measure(sys.argv[1]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(dump_dir)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=200)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_model(root, args.hidden, args.layers, args.max_length)
        tf = texts_file(root / "texts.parquet", args.texts)
        spec = spec_for(model_dir, args.max_length)

        t0 = time.perf_counter()
        manifest = dump(spec, "trained", tf, root / "dump", device="cpu")
        ours = measure(root / "dump")
        t_ours = time.perf_counter() - t0

        texts = list(pd.read_parquet(tf)["text"])
        theirs, t_theirs, n_tok = authors_pipeline(model_dir, texts, args.max_length)
        ours_by_pos = ours.set_index("position")["erank"]
        rel = max(abs(ours_by_pos[i] - v) / ours_by_pos[i] for i, v in enumerate(theirs) if i in ours_by_pos)
        print(
            f"model: OPT hidden {args.hidden}, {args.layers} layers, {manifest['n_params']:,} params, CPU, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"texts: {manifest['n_texts']}, tokens: {manifest['n_tokens']} (authors: {n_tok})")
        print(
            f"pipeline (batched dump + float64 Gram eRank): {t_ours:7.2f} s  "
            f"{manifest['n_tokens'] / t_ours:8.0f} tok/s"
        )
        print(
            f"authors  (batch 1 + float32 d x d SVD):       {t_theirs:7.2f} s  {n_tok / t_theirs:8.0f} tok/s"
        )
        print(f"speed-up {t_theirs / t_ours:.1f}x; largest relative difference in per-text eRank {rel:.2e}")

        small = spec_for(model_dir, args.max_length, shard_texts=32)
        for n in (args.texts // 4, args.texts):
            d = root / f"mem{n}"
            dump(small, "trained", texts_file(root / f"t{n}.parquet", n), d, device="cpu")
            print(f"eRank stage peak RSS with {n:5d} texts: {peak_rss_of_measure(d):7.1f} MiB")


if __name__ == "__main__":
    main()
