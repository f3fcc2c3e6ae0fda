"""The demo's corpus: English text that ships with every Python installation.

Two sources, both in the standard library: the help topics of ``pydoc_data.topics`` (the
language reference) and the docstrings of a fixed list of standard-library modules. Both are cut
into paragraphs; a seeded draw holds out an evaluation set from each, and the rest is the
training text. The result depends only on the seed and the Python version, which is recorded:
the text is collected in a fresh interpreter (:mod:`diff_erank.stdlib_text`), not in this process.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from diff_erank.provenance import provenance
from diff_erank.storage import atomic_path, write_json


def stdlib_paragraphs(max_chars: int) -> dict[str, list[str]]:
    """``{"topics": [...], "docstrings": [...]}`` from :mod:`diff_erank.stdlib_text`, run in a
    fresh ``python -I -S`` so that nothing this process imported has patched the library."""
    script = Path(__file__).with_name("stdlib_text.py")
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(script), str(max_chars)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"collecting the standard library's text failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def build_corpus(seed: int, eval_texts: int, max_chars: int) -> dict[str, list[str]]:
    """``{"train": [...], "topics-eval": [...], "docstrings-eval": [...]}``, deterministic."""
    parts: dict[str, list[str]] = {"train": []}
    for name, paras in stdlib_paragraphs(max_chars).items():
        rng = random.Random(f"{seed}-{name}")
        order = list(range(len(paras)))
        rng.shuffle(order)
        k = min(eval_texts, len(paras) // 4)
        parts[f"{name}-eval"] = [paras[i] for i in order[:k]]
        parts["train"] += [paras[i] for i in sorted(order[k:])]
    return parts


def write_corpus(out_dir: str | Path, seed: int, eval_texts: int, max_chars: int) -> dict[str, Any]:
    out_dir = Path(out_dir)
    parts = build_corpus(seed, eval_texts, max_chars)
    for name, texts in parts.items():
        with atomic_path(out_dir / f"{name}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    facts = {
        "python": platform.python_version(),
        "seed": seed,
        "counts": {k: len(v) for k, v in parts.items()},
        "chars": {k: sum(map(len, v)) for k, v in parts.items()},
    }
    write_json(provenance(corpus=facts), out_dir / "corpus.json")
    return facts
