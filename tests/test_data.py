"""Dataset preparation through the real ``datasets.load_dataset`` on local files."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from diff_erank.config import ConfigError
from diff_erank.data import DataError, prepare_texts, prepare_to_file, sample_indices
from diff_erank.entries import DatasetEntry
from diff_erank.storage import read_provenance


@pytest.fixture
def qa_file(tmp_path):
    rows = [
        {"question": f"q{i}?", "answer": f"a{i}.", "context": "" if i % 3 == 0 else f"c{i}"}
        for i in range(30)
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def spec(files, **kw) -> DatasetEntry:
    s = {
        "source": {"kind": "jsonl", "data_files": str(files)},
        "text": {"field": "context"},
        "max_texts": None,
        "sampling": {"method": "all", "seed": 123},
    }
    s.update(kw)
    return DatasetEntry.from_spec(s)


def test_field_and_nonempty_filter(qa_file) -> None:
    df = prepare_texts(spec(qa_file, text={"field": "context", "nonempty": ["context"]}))
    assert len(df) == 20 and df["text"].str.len().gt(0).all()
    assert list(df["text_id"][:3]) == [1, 2, 4]


def test_template(qa_file) -> None:
    df = prepare_texts(spec(qa_file, text={"template": "{question} {answer}"}))
    assert df["text"][5] == "q5? a5."


def test_template_cannot_reach_attributes(qa_file) -> None:
    with pytest.raises(ConfigError, match="plain"):
        prepare_texts(spec(qa_file, text={"template": "{question.__class__}"}))


def test_paper_sampling_is_random_sample_of_the_rows(qa_file) -> None:
    df = prepare_texts(spec(qa_file, max_texts=7, sampling={"method": "paper", "seed": 123}))
    random.seed(123)
    rows = [json.loads(x) for x in qa_file.read_text().splitlines()]
    expected = random.sample(rows, 7)
    assert list(df["text"]) == [r["context"] for r in expected]
    assert sample_indices(10, 3, "first", 0) == [0, 1, 2]
    assert sample_indices(5, 50, "paper", 0) == list(range(5))


def test_missing_field_lists_columns(qa_file) -> None:
    with pytest.raises(
        ConfigError,
        match=r"\['body'\] not in the dataset; its columns are \['answer', 'context', 'question'\]",
    ):
        prepare_texts(spec(qa_file, text={"field": "body"}))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare_texts(spec(tmp_path / "none.jsonl"))


def test_hub_offline_is_one_clear_sentence() -> None:
    s = spec("x", source={"kind": "hub", "path": "databricks/databricks-dolly-15k", "split": "train"})
    with pytest.raises(
        DataError, match=r"cannot load hub dataset 'databricks/databricks-dolly-15k'.*offline"
    ):
        prepare_texts(s)


def test_parquet_and_provenance(tmp_path, qa_file) -> None:
    pq = tmp_path / "rows.parquet"
    pd.read_json(qa_file, lines=True).to_parquet(pq)
    out = tmp_path / "texts.parquet"
    df = prepare_to_file(
        spec(pq, source={"kind": "parquet", "data_files": str(pq)}, text={"template": "{question} {answer}"}),
        out,
    )
    assert len(pd.read_parquet(out)) == len(df) == 30
    prov = read_provenance(out)
    assert prov["config"]["text"]["template"] == "{question} {answer}"
    assert "torch" in prov["versions"] and "git" in prov
    assert not list(tmp_path.glob(".*.tmp"))


# -- issue 16, item 7: input errors name the file; templates cannot reshape texts ------------------
def test_invalid_utf8_names_the_file_and_line(tmp_path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"context": "fine"}\n{"context": "bad \xff\xfe here"}\n')
    with pytest.raises(DataError, match=r"not valid UTF-8: .*bad\.jsonl \(line 2\)"):
        prepare_texts(spec(f))


def test_empty_file_is_one_clear_sentence(tmp_path) -> None:
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    with pytest.raises(DataError, match=r"dataset file is empty: .*empty\.jsonl"):
        prepare_texts(spec(f))


@pytest.mark.parametrize(
    "template", ["{question!r}", "{question:>5000}", "{question} {answer!s}", "{question:{answer}}"]
)
def test_template_conversions_and_format_specs_are_rejected(qa_file, template) -> None:
    with pytest.raises(ConfigError, match="conversions"):
        prepare_texts(spec(qa_file, text={"template": template}))


def test_local_dataset_files_are_listed_for_snakemake(tmp_path, qa_file) -> None:
    from diff_erank.sources import dataset_files as source_files

    (tmp_path / "b.jsonl").write_text("{}\n")
    assert source_files({"kind": "jsonl", "data_files": str(qa_file)}) == [str(qa_file)]
    got = source_files({"kind": "jsonl", "data_files": {"train": [str(tmp_path / "*.jsonl")]}})
    assert got == [str(tmp_path / "b.jsonl"), str(qa_file)]
    assert source_files({"kind": "hub", "path": "x/y"}) == []
