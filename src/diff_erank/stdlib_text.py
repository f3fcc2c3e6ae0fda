"""The demo corpus's raw text, collected from the standard library alone.

Run as a script by :func:`diff_erank.corpus.stdlib_paragraphs` in a fresh interpreter started
with ``-I -S`` (no site-packages, no user paths): third-party packages patch the standard
library when they are imported (``typing_extensions`` replaces ``typing._collect_parameters``
with its own), so collected inside a process that has imported them the docstrings are not the
same, and with them the seeded held-out split and every zoo model trained on the rest. This
module therefore imports nothing but the standard library, and prints its paragraphs as JSON.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from typing import Any

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


if __name__ == "__main__":  # python -I -S stdlib_text.py MAX_CHARS
    limit = int(sys.argv[1])
    json.dump(
        {"topics": topic_paragraphs(max_chars=limit), "docstrings": docstring_paragraphs(max_chars=limit)},
        sys.stdout,
    )
