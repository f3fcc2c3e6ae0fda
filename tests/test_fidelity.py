"""The paper's recipes where the code used to differ: dolly's filter, the environment, pinning."""

from __future__ import annotations

import json

from conftest import REPO
from paper_fixtures import local_source

from diff_erank.config import load_config
from diff_erank.data import prepare_texts

CONF = REPO / "conf"


def test_dolly_keeps_whitespace_contexts_as_the_authors(tmp_path) -> None:
    contexts = ["", " ", "A real context.", "\n", "", "\t \n", "Another one."]
    path = tmp_path / "dolly.jsonl"
    path.write_text("".join(json.dumps({"context": c, "instruction": "i"}) + "\n" for c in contexts))
    cfg = load_config(CONF, ["experiment=table4", *local_source("dolly-15k", str(path))])
    df = prepare_texts(cfg["datasets"]["dolly-15k"])
    # the authors' filter, written out: [c for c in rows if len(c) > 0]
    kept = [i for i, c in enumerate(contexts) if len(c) > 0]
    assert df["text_id"].tolist() == kept == [1, 2, 3, 5, 6]
    assert df["text"].tolist() == [contexts[i] for i in kept]
