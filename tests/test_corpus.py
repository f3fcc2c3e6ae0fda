"""The demo corpus is deterministic and its parts do not overlap."""

from __future__ import annotations

from diff_erank.corpus import build_corpus


def test_corpus_is_deterministic_and_held_out() -> None:
    a = build_corpus(seed=0, eval_texts=30, max_chars=500)
    b = build_corpus(seed=0, eval_texts=30, max_chars=500)
    assert a == b
    assert len(a["topics-eval"]) == len(a["docstrings-eval"]) == 30
    assert len(a["train"]) > 1000
    train = set(a["train"])
    assert not train & set(a["topics-eval"]) and not train & set(a["docstrings-eval"])
    assert all(80 <= len(t) <= 500 for part in a.values() for t in part)
    c = build_corpus(seed=1, eval_texts=30, max_chars=500)
    assert c["topics-eval"] != a["topics-eval"]


def test_corpus_does_not_depend_on_what_the_process_imported_before() -> None:
    """typing_extensions replaces ``typing._collect_parameters`` when imported (Python 3.11), so a
    corpus read from this process's modules lost that docstring and reshuffled the held-out
    split; it is collected in a fresh ``python -I -S`` instead. Built after importing the model
    stack and built in a bare interpreter, it is the same."""
    import hashlib
    import json
    import subprocess
    import sys

    probe = (
        "import hashlib, json, sys, typing\n{pre}\n"
        "from diff_erank.corpus import build_corpus\n"
        "c = build_corpus(seed=0, eval_texts=30, max_chars=500)\n"
        "print(typing._collect_parameters.__module__, "
        "hashlib.sha256(json.dumps(c).encode()).hexdigest())\n"
    )
    out = {}
    for name, pre in (("bare", ""), ("stack", "import typing_extensions, torch, transformers")):
        done = subprocess.run(
            [sys.executable, "-c", probe.format(pre=pre)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        out[name] = done.stdout.split()
    assert out["bare"][0] == "typing"
    assert out["stack"][1] == out["bare"][1], out
    here = build_corpus(seed=0, eval_texts=30, max_chars=500)  # pytest has imported all sorts
    assert hashlib.sha256(json.dumps(here).encode()).hexdigest() == out["bare"][1]
