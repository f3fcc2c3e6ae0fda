"""GPU benchmark of the dump: tokens/s and MFU by precision and batch budget, then the goal run.

One short script for a lent GPU (a few minutes on one H200). No weights or data are downloaded:

* the model is OPT-1.3B's shape built from its config with seeded random weights (a forward's
  cost does not depend on the weights' values); ``trained`` and ``init-s0`` are two seeds;
* the texts are random token ids whose lengths follow an approximation of dolly-15k's rows with
  a context (the pipeline's ``dolly-15k`` dataset is the ``context`` field of those rows): about
  4,500 texts, log-normal lengths with a median of 200 tokens and sigma 0.8 (Wikipedia-style
  paragraphs; GPT-2 BPE, about 4.5 characters a token), cut at ``max_length`` 2048 as the pipeline
  does. ``--lengths FILE`` (one length per line, e.g. of the real tokenised texts) replaces it.

Parts, each printed as a table row and written to ``<out>/bench_gpu.json``:

1. the forward of :func:`diff_erank.dump.forward_batch` (hidden states to the CPU + the loss)
   in float32, TF32 and bfloat16 over batch budgets: tokens/s and model FLOPs utilisation,
   MFU = 2 x params x tokens / time / peak of that precision (attention's own FLOPs not counted);
2. the length sweep (as ``bench_lengths.py`` on a CPU): at 16, 64, 256, 1,024 and 2,048 tokens a
   text, the same tokens per point, float32, :func:`diff_erank.dump.forward_batch` over the
   planned batches with and without the loss against the authors' batch-1 loop (the base model's
   ``last_hidden_state`` and their float32 ``torch.svd`` eRank per text, on the device): tokens/s
   and the ratio;
3. the goal: the pipeline's :func:`diff_erank.dump.dump` of trained + untrained on all texts to
   local disk (``store: hidden``, ``dump_dtype`` bfloat16), then the eRank stage; and the same with
   ``store: spectra`` (spectra computed on the GPU, no hidden states written).

    python benchmarks/bench_gpu.py [--out /tmp/bench] [--dtype bfloat16] [--budgets 16384,65536,262144]
    python benchmarks/bench_gpu.py --smoke   # a tiny OPT on the CPU, end to end in seconds

Peaks (dense, H100/H200 SXM): float32 67, TF32 494, bfloat16 989 TFLOP/s (``--peak-*``).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from diff_erank.dump import DumpJob, forward_batch, read_and_tokenise
from diff_erank.entries import model_entry
from diff_erank.measure import measure
from diff_erank.storage import write_parquet

OPT_1_3B = {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "ffn_dim": 8192}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128}


class IdsTokenizer:
    """Texts are space-separated token ids: the dump's tokenisation step without a vocabulary."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


def dolly_like_lengths(n: int, median: float, sigma: float, max_length: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=torch.float64)
    return [int(min(max_length, max(3, round(median * math.exp(sigma * float(v)))))) for v in z]


def opt_config(shape: dict, vocab: int):
    from transformers import OPTConfig

    return OPTConfig(
        **shape, word_embed_proj_dim=shape["hidden_size"], vocab_size=vocab, max_position_embeddings=2048
    )


def build(shape: dict, vocab: int, dtype: torch.dtype, seed: int, device: torch.device):
    """The model, initialised on the device itself (a 1.3B-parameter init on the CPU takes long)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(opt_config(shape, vocab), dtype=dtype)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_rates(model, seqs, budgets, device, peak, n_params, layer) -> list[dict]:
    """tokens/s of forward_batch over the planned batches of ``seqs`` for each budget."""
    from diff_erank.dump import plan_batches

    lengths = [len(s) for s in seqs]
    rows = []
    for budget in budgets:
        batches = plan_batches(lengths, range(len(seqs)), budget)
        forward_batch(model, [seqs[i] for i in batches[0]], {"last": layer}, device)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for b in batches:
            forward_batch(model, [seqs[i] for i in b], {"last": layer}, device)
        sync(device)
        dt = time.perf_counter() - t0
        tps = sum(lengths) / dt
        rows.append(
            {
                "budget": budget,
                "batches": len(batches),
                "tok_s": tps,
                "mfu": 2 * n_params * tps / (peak * 1e12),
            }
        )
    return rows


SWEEP_LENGTHS = (16, 64, 256, 1024, 2048)


def length_sweep(model, vocab: int, device, total: int, budget: int, layer: int) -> list[dict]:
    """tokens/s of the dump's forward (with and without the loss) and of the authors' loop by length."""
    import sys

    from diff_erank.dump import plan_batches

    sys.path.insert(0, str(Path(__file__).parent))
    from authors_method import authors_erank

    rows = []
    for n in SWEEP_LENGTHS:
        if n > model.config.max_position_embeddings:
            continue
        g = torch.Generator().manual_seed(n)
        seqs = torch.randint(4, vocab, (max(1, total // n), n), generator=g).tolist()
        batches = plan_batches([n] * len(seqs), range(len(seqs)), budget)
        row: dict = {"length": n, "texts": len(seqs)}
        for label in ("dump-loss", "dump-noloss", "authors"):
            sync(device)
            t0 = time.perf_counter()
            if label == "authors":
                with torch.no_grad():
                    for s in seqs:
                        hidden = model.base_model(
                            input_ids=torch.tensor([s], device=device)
                        ).last_hidden_state
                        authors_erank(hidden[0])
            else:
                for b in batches:
                    forward_batch(
                        model, [seqs[i] for i in b], {"last": layer}, device, loss=label == "dump-loss"
                    )
            sync(device)
            row[label] = n * len(seqs) / (time.perf_counter() - t0)
        row["ratio_loss"] = row["dump-loss"] / row["authors"]
        row["ratio_noloss"] = row["dump-noloss"] / row["authors"]
        rows.append(row)
        print(
            f"| {n} | {len(seqs)} | {row['dump-loss']:,.0f} | {row['dump-noloss']:,.0f} "
            f"| {row['authors']:,.0f} | {row['ratio_loss']:.2f} | {row['ratio_noloss']:.2f} |"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny OPT on the CPU: checks the script runs")
    p.add_argument("--out", type=Path, default=None, help="local disk for the dumps (default: a temp dir)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="of the goal run")
    p.add_argument("--budgets", default="16384,65536,262144", help="batch_tokens values of part 1")
    p.add_argument("--rate-tokens", type=int, default=100_000, help="tokens timed per part-1 row")
    p.add_argument("--sweep-tokens", type=int, default=32768, help="tokens per point of the length sweep")
    p.add_argument("--n-texts", type=int, default=4500)
    p.add_argument("--median-tokens", type=float, default=200.0)
    p.add_argument("--sigma", type=float, default=0.8)
    p.add_argument("--lengths", type=Path, default=None, help="one text length per line, replaces the above")
    p.add_argument("--peak-fp32", type=float, default=67.0)
    p.add_argument("--peak-tf32", type=float, default=494.0)
    p.add_argument("--peak-bf16", type=float, default=989.0)
    args = p.parse_args()
    if args.smoke:
        shape, vocab, device, max_length = TINY, 512, torch.device("cpu"), 64
        args.n_texts, args.median_tokens, args.rate_tokens, args.budgets = 40, 20.0, 400, "256,1024"
        args.sweep_tokens = 128
        modes = [("float32", torch.float32, False, args.peak_fp32), ("bfloat16", torch.bfloat16, False, 1.0)]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: this benchmark is for a GPU machine (--smoke runs on a CPU)")
        shape, vocab, device, max_length = OPT_1_3B, 50272, torch.device("cuda"), 2048
        modes = [
            ("float32", torch.float32, False, args.peak_fp32),
            ("tf32", torch.float32, True, args.peak_tf32),
            ("bfloat16", torch.bfloat16, False, args.peak_bf16),
        ]
    if args.lengths:
        lengths = [min(max_length, int(v)) for v in args.lengths.read_text().split()]
    else:
        lengths = dolly_like_lengths(args.n_texts, args.median_tokens, args.sigma, max_length)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"{name}; {len(seqs)} texts, {sum(lengths):,} tokens (median {sorted(lengths)[len(lengths) // 2]}, "
        f"max {max(lengths)}); dumps under {out}"
    )
    budgets = [int(b) for b in args.budgets.split(",")]
    layer = shape["num_hidden_layers"]
    # part 1: a prefix of the texts (longest-first order does not matter: plan_batches sorts)
    sample, total = [], 0
    for s in seqs:
        if total >= args.rate_tokens:
            break
        sample.append(s)
        total += len(s)
    results: dict = {"device": name, "n_texts": len(seqs), "n_tokens": sum(lengths), "forward": []}
    print("| precision | batch_tokens | batches | tokens/s | MFU |\n| --- | ---: | ---: | ---: | ---: |")
    for label, dtype, tf32, peak in modes:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        model = build(shape, vocab, dtype, 0, device)
        n_params = sum(q.numel() for q in model.parameters())
        for row in forward_rates(model, sample, budgets, device, peak, n_params, layer):
            results["forward"].append({"precision": label, **row})
            print(
                f"| {label} | {row['budget']} | {row['batches']} | {row['tok_s']:,.0f} | {row['mfu']:.1%} |"
            )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    # part 2: the length sweep against the authors' loop, float32
    print(
        "| tokens a text | texts | dump tok/s | dump, no loss | authors | ratio | ratio, no loss |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    model = build(shape, vocab, torch.float32, 0, device)
    results["lengths"] = length_sweep(model, vocab, device, args.sweep_tokens, max(budgets), layer)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # part 3: the pipeline's dump + eRank, trained + untrained, hidden states vs spectra on the device
    texts = out / "texts.parquet"
    table = pd.DataFrame({"text_id": range(len(seqs)), "text": [" ".join(map(str, s)) for s in seqs]})
    write_parquet(table, texts, {"benchmark": Path(__file__).name})
    src = out / "model"
    src.mkdir(exist_ok=True)
    dtype = getattr(torch, args.dtype)
    opt_config(shape, vocab).save_pretrained(src)  # what the dump hashes as the weights' identity
    spec = model_entry(
        src,
        family="opt",
        size="bench",
        revision=None,
        dtype=args.dtype,
        dump_dtype=args.dtype,
        max_length=max_length,
        batch_tokens=max(budgets),
    )
    results["goal"] = []
    for store in ("hidden", "spectra"):
        t0 = time.perf_counter()
        t_dump = 0.0
        for seed, variant in ((0, "trained"), (1, "init-s0")):
            model = build(shape, vocab, dtype, seed, device)
            d0 = time.perf_counter()
            entry = spec.updated(store=store)
            ids = read_and_tokenise(entry, texts, IdsTokenizer())
            job = DumpJob(
                entry.resolved(), variant, texts, out / f"{store}-{variant}", ["last"], device.type, ids
            )
            job.model = model  # built on the device with this seed, not loaded from the folder
            job.run()
            sync(device)
            t_dump += time.perf_counter() - d0
            df = measure(out / f"{store}-{variant}")
            assert len(df) == len(seqs)
            del model
        wall = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.glob(f"{store}-*/*.safetensors"))
        results["goal"].append({"store": store, "wall_s": wall, "dump_s": t_dump, "bytes": size})
        print(
            f"goal, {store}{' (spectra on the device)' if store == 'spectra' else ''}: trained + untrained, "
            f"{2 * sum(lengths):,} tokens in {wall:.1f} s (dumps {t_dump:.1f} s, "
            f"{2 * sum(lengths) / t_dump:,.0f} tok/s), {size / 1e9:.2f} GB written"
        )
    (out / "bench_gpu.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
