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
