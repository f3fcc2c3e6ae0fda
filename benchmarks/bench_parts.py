"""Benchmark: where the dump's time per token goes, against the authors' ``AutoModel`` call.

One process, the same token ids for every part, CPU seconds per token (``time.process_time``; on a
shared machine less noisy than wall time at 1 thread): the authors' batch-1 ``AutoModel`` forward,
the causal LM's forward with all hidden states, the dump's :func:`forward_batch` with and without
the per-text loss (its batches as the dump plans them, and batch 1), and the loss's two parts
(the LM-head matmul, the log-sum-exp). This is the profile behind the pipeline row of
docs/benchmarks.md "Text length".

    python benchmarks/bench_parts.py --model DIR --texts TEXTS.parquet [--threads 1]

``TEXTS.parquet``: a texts table (``text`` column), e.g. the pipeline case's
``work/results/cache/texts/<key>.parquet`` after ``bench_real.py pipeline`` (``bench_lengths.py
pipeline-setup``). Both groups are a few thousand tokens: the whole run takes ≈ 30 s at 1 thread.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch


def timed(name: str, f: Callable[[list[list[int]]], None], seqs: list[list[int]]) -> None:
    n = sum(map(len, seqs))
    c0, w0 = time.process_time(), time.perf_counter()
    f(seqs)
    c, w = time.process_time() - c0, time.perf_counter() - w0
    print(f"{name:40s} {n:5d} tok  cpu {1e3 * c / n:5.2f} ms/tok  wall {n / w:5.0f} tok/s", flush=True)


def main() -> None:
    import pandas as pd
    from transformers import AutoModel, AutoTokenizer

    from diff_erank import dump as D
    from diff_erank.entries import model_entry
    from diff_erank.models import load_variant

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    ids = [tok(t)["input_ids"][:512] for t in pd.read_parquet(a.texts)["text"]]
    groups = {
        "long": sorted([s for s in ids if len(s) >= D.CPU_SOLO_TOKENS], key=len)[20:23],
        "short": sorted([s for s in ids if len(s) < D.CPU_SOLO_TOKENS], key=len)[-10:],
    }
    lm = load_variant(model_entry(a.model, revision=None).resolved(), "trained").eval()
    am = AutoModel.from_pretrained(a.model, dtype=torch.float32).eval()
    last = {"last": lm.config.num_hidden_layers}
    cpu = torch.device("cpu")

    @torch.no_grad()
    def authors(seqs: Sequence[list[int]]) -> None:
        for s in seqs:
            am(input_ids=torch.tensor([s])).last_hidden_state[0]

    @torch.no_grad()
    def causal_lm(seqs: Sequence[list[int]]) -> None:
        for s in seqs:
            lm(input_ids=torch.tensor([s]), output_hidden_states=True, use_cache=False, logits_to_keep=1)

    def dump(loss: bool, solo: bool) -> Callable[[list[list[int]]], None]:
        def f(seqs: list[list[int]]) -> None:
            lengths = [len(s) for s in seqs]
            plan = D.plan_batches(lengths, range(len(seqs)), 4096, solo_from=1 if solo else D.CPU_SOLO_TOKENS)
            for b in plan:
                D.forward_batch(lm, [seqs[i] for i in b], last, cpu, torch.float32, loss=loss)

        return f

    authors(groups["long"][:1])  # warm-up
    for g, seqs in groups.items():
        timed(f"{g}: authors, AutoModel batch 1", authors, seqs)
        timed(f"{g}: causal LM, all hidden states", causal_lm, seqs)
        timed(f"{g}: dump, no loss", dump(False, False), seqs)
        timed(f"{g}: dump, with the loss", dump(True, False), seqs)
        if g == "short":
            timed(f"{g}: dump batch 1, no loss", dump(False, True), seqs)
            timed(f"{g}: dump batch 1, with the loss", dump(True, True), seqs)
    head = lm.get_output_embeddings()
    x = torch.randn(2040, head.weight.shape[1])
    targets = torch.randint(0, head.weight.shape[0], (2040,))
    chunk = D.LOSS_CHUNK_ELEMENTS // head.weight.shape[0]
    matmul = nll = 0.0
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            t0 = time.process_time()
            logits = head(x[s : s + chunk])
            t1 = time.process_time()
            D._nll(logits, targets[s : s + chunk])
            matmul, nll = matmul + t1 - t0, nll + time.process_time() - t1
    per = 1e3 / len(x)
    print(f"the loss: LM-head matmul {per * matmul:.2f} ms/tok, log-sum-exp {per * nll:.2f} ms/tok")


if __name__ == "__main__":
    main()
