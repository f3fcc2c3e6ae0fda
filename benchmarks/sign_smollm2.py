"""What decides the sign of SmolLM2-135M's last-layer Diff-eRank? Measure the candidates, tune nothing.

Prints, for N held-out demo texts (algorithm (a): exp of the mean per-text entropy, the
pipeline's own ``erank_stats``; float32 models, float64 eRank):

  (a) untrained eRank against depth (every ``hidden_states`` index) for the seeded Llama init of
      SmolLM2's published config (initializer_range 1/24, written into the converted directory
      from the model entry's ``gguf.published``), over seeds, and against multiples of that
      init std (``--scales``);
  (b) trained eRank against depth;
  (c) the final RMSNorm: the last block's output before the norm against after it (trained and
      untrained), and the spread of the trained norm's gain;
  (d) 4-bit noise: a trained zoo model quantised and dequantised to Q4_1 with ``gguf.quants``
      (every 2-D weight whose rows are whole 32-blocks), eRank before and after; the same for the
      untrained SmolLM2 init.

    python benchmarks/sign_smollm2.py --model results/cache/gguf/<key>/hf \\
        --texts results/cache/demo/<corpus key>/corpus/topics-eval.jsonl \\
        --zoo results/cache/demo/<corpus key>/zoo/<zoo-opt-l key>/main

``--model`` is the converted directory the workflow makes: its ``config.json`` holds the
published init fields a GGUF file lacks (a config read straight from the GGUF would hold
LlamaConfig's library default 0.02 instead, the wrong M0). One process, ``--threads`` torch
threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diff_erank.erank import dataset_erank, erank_stats


def read_texts(path: Path, n: int) -> list[str]:
    """The first ``n`` texts of a demo corpus part (JSON lines with a ``text`` field)."""
    rows = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return rows[:n]


@torch.no_grad()
def per_layer_erank(model, tok, texts: list[str], max_length: int = 512, pre_norm: bool = False):
    """Dataset eRank (a) per ``hidden_states`` index, plus the last block's output before the norm."""
    captured = {}
    handle = None
    if pre_norm:
        layers = model.model.layers
        handle = layers[-1].register_forward_hook(
            lambda m, i, o: captured.__setitem__("pre", o[0] if isinstance(o, tuple) else o)
        )
    ent: dict[str, list[float]] = {}
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"][:, :max_length]
        if ids.shape[1] < 2:
            continue
        out = model(input_ids=ids, output_hidden_states=True)
        for i, h in enumerate(out.hidden_states):
            ent.setdefault(str(i), []).append(erank_stats(h[0]).entropy)
            if ids.shape[1] > 2:  # the same without the text's first token (SmolLM2 adds no BOS)
                ent.setdefault(f"{i}-first", []).append(erank_stats(h[0, 1:]).entropy)
        if pre_norm:
            ent.setdefault("pre_norm", []).append(erank_stats(captured["pre"][0]).entropy)
    if handle:
        handle.remove()
    return {k: dataset_erank(v, "a") for k, v in ent.items()}


def q4_roundtrip(model, kind: str = "Q4_1") -> int:
    """Quantise-dequantise every 2-D weight with 32-divisible rows to ``kind`` in place; count them."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    q = GGMLQuantizationType[kind]
    n = 0
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 2 and p.shape[1] % 32 == 0:
                w = p.detach().float().numpy()
                p.copy_(torch.from_numpy(dequantize(quantize(w, q), q).reshape(w.shape)))
                n += 1
    return n


def fmt(curve: dict[str, float], keys) -> str:
    return " ".join(f"{curve[str(k)]:.2f}" for k in keys)


def smollm2(a: argparse.Namespace, texts: list[str]) -> None:
    """(a)-(d) on SmolLM2: per-layer eRank of the trained model and its inits, norm, 4-bit noise."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(a.model)
    trained = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    cfg = AutoConfig.from_pretrained(a.model)
    L = cfg.num_hidden_layers
    show = [0, 1, 2, 4, 8, 15, 22, 26, 28, 29, 30] if L == 30 else list(range(L + 1))
    print(f"SmolLM2 ({a.model}): {L} layers, d={cfg.hidden_size}; "
          f"initializer_range={cfg.initializer_range}")  # fmt: skip
    print(f"hidden_states index:        {' '.join(f'{k:>5}' for k in show)}  pre-norm")

    tr = per_layer_erank(trained, tok, texts, pre_norm=True)
    print(f"(b) trained eRank:          {fmt(tr, show)}  {tr['pre_norm']:.2f}")
    inits = []
    for s in a.seeds:
        torch.manual_seed(s)
        init = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        inits.append(per_layer_erank(init, tok, texts, pre_norm=True))
        print(f"(a) init seed {s} eRank:      {fmt(inits[-1], show)}  {inits[-1]['pre_norm']:.2f}")
    mean = {k: float(np.mean([c[k] for c in inits])) for k in inits[0]}
    print(f"    Diff-eRank (init mean - trained): {fmt({k: mean[k] - tr[k] for k in tr}, show)}  "
          f"{mean['pre_norm'] - tr['pre_norm']:.2f}")  # fmt: skip
    last = str(L)
    spread = max(c[last] for c in inits) - min(c[last] for c in inits)
    print(f"    last layer: trained {tr[last]:.2f}, init {mean[last]:.2f} (spread {spread:.2f} over "
          f"{len(inits)} seeds), Diff-eRank {mean[last] - tr[last]:.2f}")  # fmt: skip

    for x in a.scales:
        c = AutoConfig.from_pretrained(a.model)
        c.initializer_range = cfg.initializer_range * x
        torch.manual_seed(a.seeds[0])
        init = AutoModelForCausalLM.from_config(c, dtype=torch.float32).eval()
        curve = per_layer_erank(init, tok, texts)
        print(f"(a) init std x{x:<5g} ({c.initializer_range:.4f}) seed {a.seeds[0]}: {fmt(curve, show)}  "
              f"Diff-eRank (last) {curve[last] - tr[last]:.2f}")  # fmt: skip

    def no_first(curve):
        return fmt({str(k): curve[f"{k}-first"] for k in show}, show)

    print(f"(b) without each text's first token, trained: {no_first(tr)}")
    print(f"    init seed {a.seeds[0]}:                          {no_first(inits[0])}")
    with torch.no_grad():
        h = trained(input_ids=tok(texts[0], return_tensors="pt")["input_ids"], output_hidden_states=True)
    norms = h.hidden_states[L // 2][0].norm(dim=-1)
    print(f"    trained layer {L // 2} row norms, text 0: first token {norms[0]:.0f}, "
          f"others median {norms[1:].median():.1f}, max {norms[1:].max():.1f}")  # fmt: skip
    g = trained.model.norm.weight.detach().float()
    print(f"(c) final RMSNorm: last block output {tr['pre_norm']:.2f} -> after norm {tr[last]:.2f} "
          f"(trained), {mean['pre_norm']:.2f} -> {mean[last]:.2f} (init); trained gain: mean "
          f"{g.mean():.3f}, std {g.std():.3f}, min {g.min():.3f}, max {g.max():.3f}, "
          f"max/median |g| {g.abs().max() / g.abs().median():.1f}")  # fmt: skip

    torch.manual_seed(a.seeds[0])
    init = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    n = q4_roundtrip(init)
    q = per_layer_erank(init, tok, texts)
    mid = str(L // 2)
    print(f"(d) init seed {a.seeds[0]} after Q4_1 round trip ({n} matrices): last {q[last]:.2f} "
          f"(float {inits[0][last]:.2f}); middle {q[mid]:.2f} (float {inits[0][mid]:.2f})")  # fmt: skip
    n = q4_roundtrip(trained, "Q4_0")
    q = per_layer_erank(trained, tok, texts)
    print(f"(d) trained after a further Q4_0 round trip ({n} matrices, fresh 4-bit noise): last "
          f"{q[last]:.2f} (loaded {tr[last]:.2f}); middle {q[mid]:.2f} (loaded {tr[mid]:.2f})")  # fmt: skip
    from transformers import OPTConfig

    opt = OPTConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=L,
        ffn_dim=cfg.intermediate_size, num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=2048, word_embed_proj_dim=cfg.hidden_size, init_std=cfg.initializer_range,
    )  # fmt: skip
    torch.manual_seed(a.seeds[0])
    curve = per_layer_erank(AutoModelForCausalLM.from_config(opt, dtype=torch.float32).eval(), tok, texts)
    print(f"(a) OPT init, same width/depth/init std, seed {a.seeds[0]}: {fmt(curve, show)}")
    print(f"({time.time() - t0:.0f} s)")


def zoo_q4(zoo_dir: str, texts: list[str]) -> None:
    """(d) on a trained zoo model: eRank before and after a Q4_1 round trip of its weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ztok = AutoTokenizer.from_pretrained(zoo_dir)
    zoo = AutoModelForCausalLM.from_pretrained(zoo_dir, dtype=torch.float32).eval()
    limit = zoo.config.max_position_embeddings
    before = per_layer_erank(zoo, ztok, texts, max_length=limit)
    n = q4_roundtrip(zoo)
    after = per_layer_erank(zoo, ztok, texts, max_length=limit)
    zl = str(zoo.config.num_hidden_layers)
    print(f"(d) zoo {zoo_dir} Q4_1 round trip ({n} matrices): last {before[zl]:.2f} -> {after[zl]:.2f} "
          f"({after[zl] - before[zl]:+.2f}); first {before['1']:.2f} -> {after['1']:.2f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="the converted SmolLM2 directory")
    p.add_argument("--texts", required=True, type=Path)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.48, 2.0],
                   help="multiples of the published init std (0.48: LlamaConfig's default 0.02)")  # fmt: skip
    p.add_argument("--zoo", default=None, help="a trained zoo model directory for the Q4_1 test")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    texts = read_texts(a.texts, a.n)
    print(f"{len(texts)} texts from {a.texts}")
    if a.model:
        smollm2(a, texts)
    if a.zoo:
        zoo_q4(a.zoo, texts)


if __name__ == "__main__":
    main()
