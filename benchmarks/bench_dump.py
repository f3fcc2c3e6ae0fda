"""Benchmark of the dump on a real-size model: tokens/s and peak memory, against the authors' loop.

The model is a Llama of SmolLM2-135M's shape (30 layers, d = 576, 9 heads, 3 KV heads, MLP 1536,
vocabulary 49,152, tied embeddings) built from its config with seeded random weights (the cost of
a forward does not depend on the weights' values), saved once with ``save_pretrained``; the texts
are the demo corpus's paragraphs joined to documentation-like lengths (about 30 to 400 tokens).

    python benchmarks/bench_dump.py setup DIR [--texts 60]
    python benchmarks/bench_dump.py dump DIR [--threads 1] [--batch-tokens 16384] [--variant trained,init-s0]
    python benchmarks/bench_dump.py authors DIR [--threads 1]   # batch 1, AutoModel, no LM head, no loss

``dump`` runs the pipeline's dump of one variant and then its eRank stage in this process and
prints tokens/s of each and the process's peak RSS; ``authors`` runs the authors' loop (trained +
one untrained variant, as their script does) on the same texts. Compare two checkouts by running
the same command with each one's ``src`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from diff_erank.entries import ModelEntry, model_entry

SMOLLM2_135M = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
    "rope_theta": 100000.0,
}


def setup(root: Path, n_texts: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from diff_erank.stdlib_text import topic_paragraphs
    from diff_erank.train import train_tokenizer

    paras = topic_paragraphs()
    corpus = root / "corpus.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in paras[:400]))
    tok = train_tokenizer(corpus, root / "tok", vocab_size=2000)
    tok.bos_token = tok.bos_token or tok.eos_token
    cfg = LlamaConfig(**SMOLLM2_135M, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(root / "model" / "main")
    tok.save_pretrained(root / "model" / "main")
    g = torch.Generator().manual_seed(0)
    k = torch.randint(1, 5, (n_texts,), generator=g).tolist()  # 1 to 4 paragraphs per text
    texts = [" ".join(paras[(7 * i + j) % len(paras)] for j in range(n)) for i, n in enumerate(k)]
    pd.DataFrame({"text_id": range(n_texts), "text": texts}).to_parquet(root / "texts.parquet")


def spec(root: Path, batch_tokens: int) -> ModelEntry:
    return model_entry(root / "model", family="bench", size="135m", batch_tokens=batch_tokens)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_dump(root: Path, variant: str, batch_tokens: int) -> None:
    import shutil

    from diff_erank.dump import dump
    from diff_erank.measure import measure

    out = root / f"dump-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = dump(
        spec(root, batch_tokens).resolved(),
        variant,
        root / "texts.parquet",
        out,
        layers=["last"],
        device="cpu",
    )
    t1 = time.perf_counter()
    df = measure(out)
    t2 = time.perf_counter()
    print(
        f"dump {variant}: {m['n_texts']} texts, {m['n_tokens']} tokens, {torch.get_num_threads()} threads, "
        f"batch_tokens {batch_tokens}: dump {t1 - t0:.1f} s ({m['n_tokens'] / (t1 - t0):.0f} tok/s), "
        f"eRank {t2 - t1:.2f} s, mean loss {df['loss'].mean():.4f}, peak RSS {peak_rss_mib():.0f} MiB"
    )


def run_authors(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from authors_method import authors_loop

    texts = list(pd.read_parquet(root / "texts.parquet")["text"])
    t0 = time.perf_counter()
    _, n_tok = authors_loop(root / "model" / "main", texts, max_length=2048)
    dt = time.perf_counter() - t0
    print(
        f"authors (trained + untrained, batch 1, no LM head): {n_tok} tokens, {torch.get_num_threads()} "
        f"threads: {dt:.1f} s ({n_tok / dt:.0f} tok/s), peak RSS {peak_rss_mib():.0f} MiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["setup", "dump", "authors"])
    p.add_argument("root", type=Path)
    p.add_argument("--texts", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--variant", default="trained", help="comma-separated: trained,init-s0 as the authors")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "setup":
        setup(args.root, args.texts)
    elif args.what == "dump":
        for variant in args.variant.split(","):
            run_dump(args.root, variant, args.batch_tokens)
    else:
        run_authors(args.root)


if __name__ == "__main__":
    main()
