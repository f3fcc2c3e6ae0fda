"""The demo's corpus: English text that ships with every Python installation.

Two sources, both in the standard library: the help topics of ``pydoc_data.topics`` (the
language reference) and the docstrings of a fixed list of standard-library modules. Both are cut
into paragraphs; a seeded draw holds out an evaluation set from each, and the rest is the
training text. The result depends only on the seed and the Python version, which is recorded.
"""

from __future__ import annotations

import importlib
import inspect
import platform
import random
import re
from pathlib import Path
from typing import Any

from diff_erank.provenance import provenance
from diff_erank.storage import atomic_path, write_json

#: Pure-Python modules with long English docstrings; a fixed list keeps the corpus deterministic.
DOC_MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "logging",
    "mailbox",
    "multiprocessing",
    "numbers",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "pydoc",
    "queue",
    "random",
    "shlex",
    "shutil",
    "smtplib",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tkinter",
    "tokenize",
    "trace",
    "turtle",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
)


def _paragraphs(text: str, min_chars: int, max_chars: int) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        para = " ".join(block.split())
        if len(para) >= min_chars:
            out.append(para[:max_chars])
    return out


def topic_paragraphs(min_chars: int = 80, max_chars: int = 1200) -> list[str]:
    from pydoc_data.topics import topics

    paras = (p for key in sorted(topics) for p in _paragraphs(topics[key], min_chars, max_chars))
    return list(dict.fromkeys(paras))  # some paragraphs recur under several topics


def docstring_paragraphs(min_chars: int = 80, max_chars: int = 1200) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name in DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. tkinter without Tk: skipped, and the count is recorded
            continue
        objects: list[Any] = [module]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
                obj, "__module__", None
            ) == module.__name__:
                objects.append(obj)
                if inspect.isclass(obj):
                    objects += [m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
        for obj in objects:
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            for p in _paragraphs(doc, min_chars, max_chars):
                if p not in seen:
                    seen.add(p)
                    out.append(p)
    return out


def build_corpus(seed: int, eval_texts: int, max_chars: int) -> dict[str, list[str]]:
    """``{"train": [...], "topics-eval": [...], "docstrings-eval": [...]}``, deterministic."""
    parts: dict[str, list[str]] = {"train": []}
    for name, paras in (
        ("topics", topic_paragraphs(max_chars=max_chars)),
        ("docstrings", docstring_paragraphs(max_chars=max_chars)),
    ):
        rng = random.Random(f"{seed}-{name}")
        order = list(range(len(paras)))
        rng.shuffle(order)
        k = min(eval_texts, len(paras) // 4)
        parts[f"{name}-eval"] = [paras[i] for i in order[:k]]
        parts["train"] += [paras[i] for i in sorted(order[k:])]
    return parts


def write_corpus(out_dir: str | Path, seed: int, eval_texts: int, max_chars: int) -> dict[str, Any]:
    import json

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
