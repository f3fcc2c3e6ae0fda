"""GPU benchmark of the dump stage: tokens/s and model FLOPs utilisation, in a few minutes.

No weights are downloaded: an OPT-style model of the chosen size is built from its config with
a seeded random init (the dump's cost does not depend on the weights' values). Texts are random
token ids of a fixed length, run through the pipeline's own batched forward.

    python benchmarks/bench_gpu.py --preset opt-1.3b --dtype bfloat16 --peak-tflops 989

MFU = 2 x params x tokens / time / peak (forward only; attention FLOPs not counted, as usual).
Peak dense tensor-core TFLOP/s: H100/H200 SXM ~989 (bf16/fp16), ~494 (tf32); A100 312 / 156.
"""

from __future__ import annotations

import argparse
import time

import torch

from diff_erank.dump import forward_batch

PRESETS = {  # hidden, layers, heads, ffn: the OPT family's shapes
    "opt-125m": (768, 12, 12, 3072),
    "opt-1.3b": (2048, 24, 32, 8192),
    "opt-2.7b": (2560, 32, 32, 10240),
    "opt-6.7b": (4096, 32, 32, 16384),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="opt-1.3b", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for float32")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine")
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    h, n_layers, heads, ffn = PRESETS[args.preset]
    cfg = OPTConfig(
        hidden_size=h,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        ffn_dim=ffn,
        word_embed_proj_dim=h,
        max_position_embeddings=2048,
        vocab_size=50272,
    )
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).cuda().eval()
    params = sum(p.numel() for p in model.parameters())
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(4, 50000, (args.seq_len,), generator=gen).tolist() for _ in range(args.batch)]
    layer_idx = {"last": n_layers}
    forward_batch(model, seqs, layer_idx, dev)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        forward_batch(model, seqs, layer_idx, dev)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = args.steps * args.batch * args.seq_len
    mfu = 2 * params * tokens / dt / (args.peak_tflops * 1e12)
    print(
        f"{args.preset} ({params / 1e9:.2f}B params, {args.dtype}) on {torch.cuda.get_device_name()}: "
        f"{tokens / dt:,.0f} tok/s, MFU {mfu:.1%} of {args.peak_tflops} TFLOP/s, "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


if __name__ == "__main__":
    main()
