"""The typed dataset entry: built once from a decoded spec, refusing what the schema refuses, and
preparing the texts a plain reading of the rows gives."""

from __future__ import annotations

import json
import random

import pytest
from helpers import EMPTY_EXPERIMENTS, REPO

from diff_erank.config import ConfigError, load_config
from diff_erank.data import prepare_texts, prepare_to_file
from diff_erank.dataset_entry import Answer, DatasetEntry, DatasetSource, Sampling, TextRecipe
from diff_erank.storage import read_provenance


def local(path, **kw) -> dict:
    spec = {
        "source": {"kind": "jsonl", "data_files": str(path)},
        "text": {"field": "text"},
        "max_texts": None,
        "sampling": {"method": "all", "seed": 123},
    }
    return {**spec, **kw}


def test_every_configured_dataset_is_an_entry_with_its_spec_kept() -> None:
    seen = 0
    for path in sorted((REPO / "conf" / "experiment").glob("*.yaml")):
        if path.stem in EMPTY_EXPERIMENTS:
            continue
        for spec in load_config(REPO / "conf", [f"experiment={path.stem}"])["datasets"].values():
            entry = DatasetEntry.from_spec(spec)
            assert entry.spec is spec and entry.source.kind == spec["source"]["kind"]
            assert entry.max_texts == spec["max_texts"] and entry.sampling.seed == spec["sampling"]["seed"]
            seen += 1
    assert seen >= 14  # every file of conf/dataset/ is in some experiment


def test_a_multiple_choice_entry_is_typed_field_by_field() -> None:
    spec = local(
        "rows.jsonl",
        text={
            "template": "{q} {answer}",
            "nonempty": ["q"],
            "answer": {"choices": ["a", "b"], "key": "k", "offset": 1},
        },
        max_texts=5,
        sampling={"method": "paper", "seed": 7},
        measure=False,
    )
    entry = DatasetEntry.from_spec(spec)
    assert entry.source == DatasetSource("jsonl", data_files="rows.jsonl")
    assert entry.text == TextRecipe(
        template="{q} {answer}", nonempty=("q",), answer=Answer(("a", "b"), "k", offset=1)
    )
    assert (entry.max_texts, entry.sampling, entry.measure, entry.size_hint) == (
        5,
        Sampling("paper", 7),
        False,
        None,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"maxtexts": 3}, "unknown key 'maxtexts' at '<root>'; did you mean 'max_texts'"),
        ({"sampling": {"method": "random", "seed": 1}}, r"'sampling.method' is 'random'; valid choices"),
        ({"source": {"kind": "xml", "data_files": "f"}}, r"'source.kind' is 'xml'; valid choices"),
        ({"source": {"kind": "jsonl", "files": "f"}}, "unknown key 'files' at 'source'"),
        ({"text": {"field": "text", "nonempty": "text"}}, r"'text.nonempty' is 'text'; it must be a list"),
        ({"max_texts": 0}, r"'max_texts': 0 is less than the minimum of 1"),
    ],
)
def test_a_bad_field_is_one_config_error(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid dataset entry: {message}"):
        DatasetEntry.from_spec(local("rows.jsonl", **change))


def test_a_missing_field_is_one_config_error() -> None:
    spec = local("rows.jsonl")
    del spec["sampling"]
    with pytest.raises(ConfigError, match="'sampling' is a required property"):
        DatasetEntry.from_spec(spec)


def test_local_jsonl_texts_are_the_rows_sampled_as_the_paper(tmp_path) -> None:
    rows = [{"text": f"row {i}", "q": "" if i % 5 == 0 else f"q{i}"} for i in range(50)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = local(
        path,
        text={"field": "text", "nonempty": ["q"]},
        max_texts=9,
        sampling={"method": "paper", "seed": 123},
    )
    df = prepare_to_file(DatasetEntry.from_spec(spec), tmp_path / "texts.parquet")
    # the paper's recipe written out: the eligible rows, random.seed(123), random.sample
    eligible = [i for i, r in enumerate(rows) if len(r["q"]) > 0]
    random.seed(123)
    ids = [eligible[i] for i in random.sample(range(len(eligible)), 9)]
    assert df["text_id"].tolist() == ids and df["text"].tolist() == [rows[i]["text"] for i in ids]
    assert read_provenance(tmp_path / "texts.parquet")["config"] == spec  # the spec as it came


def test_demo_corpus_texts_are_its_part_file_read_plainly(tmp_path) -> None:
    from diff_erank.corpus import write_corpus
    from diff_erank.data import demo_corpus_file

    write_corpus(tmp_path / "corpus", seed=0, eval_texts=20, max_chars=400)
    part = "topics-eval"
    spec = {
        "source": {"kind": "demo", "part": part},
        "text": {"field": "text"},
        "max_texts": 8,
        "sampling": {"method": "paper", "seed": 123},
    }
    df = prepare_texts(DatasetEntry.from_spec(spec), results_root=tmp_path)
    lines = demo_corpus_file(tmp_path, part).read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    random.seed(123)
    ids = random.sample(range(len(texts)), 8)
    assert df["text_id"].tolist() == ids and df["text"].tolist() == [texts[i] for i in ids]
