"""Benchmark: the dump against the authors' batch-1 loop across text lengths, as whole processes.

At each length of the sweep (16, 64, 256, 1,024 and 2,048 tokens, the same total tokens per
point) three commands run in turn, A B C A B C ..., each a fresh process on the same texts and
threads:

* ``dump --loss``: the pipeline's :func:`diff_erank.dump.dump` of one variant (the model's own
  weights, float32, last layer, per-text loss) and its eRank stage (:func:`diff_erank.measure.measure`);
* ``dump --no-loss``: the same without the LM head (``loss: false``), what the authors measure;
* ``authors``: their loop (``AutoModel``, batch 1, no LM head, float32 d x d ``torch.svd`` per text).

The texts are seeded random token ids of exactly the point's length (a forward's cost does not
depend on which tokens it reads), given to the dump as space-separated ids and to the authors'
loop as tensors, so both read the same tokens. Each process's wall time, CPU time (user + sys)
and peak RSS come from the kernel (``os.wait4``); the ratio is the authors' wall time over the
dump's, pair by pair (above 1: the dump is faster), and its median is quoted.

    python benchmarks/bench_lengths.py sweep ROOT --model DIR [--total 2048] [--pairs 2] [--threads 1]
    python benchmarks/bench_lengths.py opt-setup ROOT          # OPT-1.3B's shape, seeded random weights
    python benchmarks/bench_lengths.py sweep ROOT --model ROOT/opt-1.3b --lengths 1024 --total 1024 --pairs 1
    python benchmarks/bench_lengths.py pipeline-setup ROOT --model DIR  # 79 pydoc topics, <= 1,500 chars
    python benchmarks/bench_real.py pipeline ROOT; python benchmarks/bench_real.py authors ROOT

``--model`` is a transformers directory (the demo's converted SmolLM2-135M-Instruct is
``results/demo/gguf/smollm2-135m/hf``). ``dump`` and ``authors`` are the workers the sweep
starts; the dump worker imports ``diff_erank`` from ``PYTHONPATH``, so ``--src`` compares
another checkout (one whose dump has no ``loss: false`` computes the loss in both dump rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

LENGTHS = (16, 64, 256, 1024, 2048)
COMMANDS = ("dump-loss", "dump-noloss", "authors")


def texts_for(root: Path, length: int, total: int, vocab: int) -> Path:
    """``total // length`` texts of exactly ``length`` seeded random token ids, as a texts table."""
    import pandas as pd
    import torch

    path = root / f"texts-{length}.parquet"
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(4, vocab, (max(1, total // length), length), generator=g).tolist()
    texts = [" ".join(map(str, row)) for row in ids]
    pd.DataFrame({"text_id": range(len(texts)), "text": texts}).to_parquet(path)
    return path


class IdsTokenizer:
    """Texts are space-separated token ids: the dump's tokenisation step without a vocabulary."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


def spec(model: Path, loss: bool):
    """A model entry for a local transformers directory, as the dump step receives it."""
    from diff_erank.entries import model_entry

    return model_entry(model, family="bench", size=model.name, revision=None, batch_tokens=4096, loss=loss)


def run_dump(model: Path, texts: Path, out: Path, loss: bool) -> None:
    import torch

    from diff_erank.dump import dump, read_and_tokenise
    from diff_erank.measure import measure

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    entry = spec(model, loss)
    ids = read_and_tokenise(entry, texts, IdsTokenizer())
    m = dump(entry.resolved(), "trained", texts, out, ["last"], "cpu", texts=ids)
    df = measure(out)
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    print(
        f"dump: {m['n_tokens']} tokens, {torch.get_num_threads()} threads, {dt:.2f} s in the dump "
        f"and eRank ({m['n_tokens'] / dt:.0f} tok/s), mean loss {df['loss'].mean():.4f}"
    )


def run_authors(model: Path, texts: Path) -> None:
    import pandas as pd
    import torch
    from transformers import AutoModel

    sys.path.insert(0, str(Path(__file__).parent))
    from authors_method import authors_erank

    rows = [[int(t) for t in s.split()] for s in pd.read_parquet(texts)["text"]]
    net = AutoModel.from_pretrained(model, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        eranks = [authors_erank(net(input_ids=torch.tensor([r])).last_hidden_state[0]) for r in rows]
    dt = time.perf_counter() - t0
    n = sum(map(len, rows))
    print(
        f"authors: {n} tokens, {torch.get_num_threads()} threads, {dt:.2f} s ({n / dt:.0f} tok/s), "
        f"mean eRank {statistics.fmean(eranks):.3f}"
    )


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd`` as a process; its wall and CPU seconds and peak RSS as the kernel counted them."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (status {status})")
    proc.returncode = 0
    return {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rss_mib": ru.ru_maxrss / 1024,
        "out": out.strip(),
    }


def sweep(a: argparse.Namespace) -> None:
    from transformers import AutoConfig

    a.root.mkdir(parents=True, exist_ok=True)
    vocab = AutoConfig.from_pretrained(a.model).vocab_size
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if a.src:
        env["PYTHONPATH"] = str(a.src)
    me = [sys.executable, str(Path(__file__).resolve())]
    results = []
    for length in [int(x) for x in a.lengths.split(",")]:
        texts = texts_for(a.root, length, a.total, vocab)
        cmds = {
            "dump-loss": [*me, "dump", str(a.root), "--model", str(a.model), "--texts", str(texts), "--loss"],
            "dump-noloss": [*me, "dump", str(a.root), "--model", str(a.model), "--texts", str(texts)],
            "authors": [*me, "authors", str(a.root), "--model", str(a.model), "--texts", str(texts)],
        }
        cmds = {k: [*v, "--threads", str(a.threads)] for k, v in cmds.items() if k in a.commands.split(",")}
        runs: dict[str, list[dict]] = {k: [] for k in cmds}
        for _ in range(a.pairs):
            for k, cmd in cmds.items():
                runs[k].append(timed(cmd, env))
                print(f"{length:5d} {k:12s} {runs[k][-1]}", flush=True)
        n_tok = (a.total // length or 1) * length
        row = {"length": length, "tokens": n_tok}
        for k, rs in runs.items():
            row[k] = {f: statistics.median(r[f] for r in rs) for f in ("wall", "cpu", "rss_mib")}
            row[k]["tok_s"] = n_tok / row[k]["wall"]
            if k != "authors" and "authors" in runs:
                pairs = zip(runs["authors"], rs, strict=True)
                row[k]["ratio"] = statistics.median(b["wall"] / r["wall"] for b, r in pairs)
        results.append(row)
    (a.root / "bench_lengths.json").write_text(json.dumps(results, indent=1))
    print(
        "| tokens a text | texts | "
        + " | ".join(f"{k} tok/s" for k in runs)
        + " | "
        + " | ".join(f"{k} / authors" for k in runs if k != "authors")
        + " | "
        + " | ".join(f"{k} RSS MiB" for k in runs)
        + " |"
    )
    for row in results:
        ks = [k for k in COMMANDS if k in row]
        print(
            f"| {row['length']} | {row['tokens'] // row['length']} | "
            + " | ".join(f"{row[k]['tok_s']:.0f}" for k in ks)
            + " | "
            + " | ".join(f"{row[k]['ratio']:.2f}" for k in ks if "ratio" in row[k])
            + " | "
            + " | ".join(f"{row[k]['rss_mib']:.0f}" for k in ks)
            + " |"
        )


def opt_setup(root: Path) -> None:
    """OPT-1.3B's shape from its published config sizes, seeded random weights, saved once."""
    import torch
    from transformers import AutoModelForCausalLM, OPTConfig

    cfg = OPTConfig(
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=32,
        ffn_dim=8192,
        word_embed_proj_dim=2048,
        vocab_size=50272,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(root / "opt-1.3b")


def pipeline_setup(root: Path, model: Path, max_chars: int) -> None:
    """The whole-pipeline case: every ``pydoc_data`` topic cut at ``max_chars`` characters, laid out
    as ``bench_real.py`` reads it (``corpus/topics-eval.jsonl``, ``gguf/hf``, ``pipeline.yaml``)."""
    from pydoc_data.topics import topics

    import yaml

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_real import overrides

    (root / "corpus").mkdir(parents=True, exist_ok=True)
    (root / "gguf").mkdir(exist_ok=True)
    if not (root / "gguf" / "hf").exists():
        (root / "gguf" / "hf").symlink_to(model.resolve())
    texts = root / "corpus" / "topics-eval.jsonl"
    texts.write_text("".join(json.dumps({"text": topics[k][:max_chars]}) + "\n" for k in sorted(topics)))
    hf = root / "gguf" / "hf"
    (root / "pipeline.yaml").write_text(yaml.safe_dump({"overrides": overrides(hf, texts)}))
    print(f"{len(topics)} texts -> {texts}; then: bench_real.py pipeline|authors {root}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["sweep", "dump", "authors", "opt-setup", "pipeline-setup"])
    p.add_argument("root", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--texts", type=Path)
    p.add_argument("--loss", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--total", type=int, default=2048, help="tokens per point")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--commands", default=",".join(COMMANDS))
    p.add_argument("--max-chars", type=int, default=1500, help="pipeline-setup: characters a topic")
    p.add_argument("--src", type=Path, help="the diff_erank checkout whose dump runs (PYTHONPATH)")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.what == "sweep":
        sweep(a)
    elif a.what == "dump":
        run_dump(a.model, a.texts, a.root / f"dump-{os.getpid()}", a.loss)
    elif a.what == "authors":
        run_authors(a.model, a.texts)
    elif a.what == "pipeline-setup":
        pipeline_setup(a.root, a.model, a.max_chars)
    else:
        opt_setup(a.root)


if __name__ == "__main__":
    main()
