"""Typed entries. Model entries: typed once from the spec dict (which stays, byte for byte, for the
hashes), and resolved once per job: a dump of several variants checks the zoo folder one time.
Dataset entries: built once from a decoded spec, refusing what the schema refuses, and preparing
the texts a plain reading of the rows gives."""

from __future__ import annotations

import json
import random

import pytest
from helpers import EMPTY_EXPERIMENTS, REPO
from helpers.models import model_spec

from diff_erank import dump as D
from diff_erank import entries
from diff_erank.config import load_config
from diff_erank.data import prepare_texts, prepare_to_file
from diff_erank.entries import (
    Answer,
    DatasetEntry,
    DatasetSource,
    ModelEntry,
    Sampling,
    TextRecipe,
    model_entry,
)
from diff_erank.errors import ConfigError
from diff_erank.storage import read_provenance


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_lenght": 64}, "max_lenght"),  # a typo: the schema knows no such field
        ({"max_length": "64"}, "max_length"),
        ({"dtype": "float8"}, "dtype"),
        ({"untrained": {"kind": "random_init", "seed": [0]}}, "seed"),
    ],
)
def test_a_bad_field_is_a_config_error_naming_it(change, named) -> None:
    spec = {**model_spec("org/m").spec, **change}
    with pytest.raises(ConfigError, match=rf"invalid model entry: .*{named}"):
        ModelEntry.from_spec(spec)


def test_a_dump_spec_is_typed_and_kept_as_it_came() -> None:
    """The part of an entry a dump reads (cache.Keys.dump_spec: absent fields as null, ``untrained``
    only its init scale) is an entry too; ``spec`` is the very dict, so what hashes it is unchanged."""
    spec = {
        "source": "org/m",
        "revision": "main",
        "tokenizer": None,
        "dtype": "bfloat16",
        "dump_dtype": "float32",
        "trust_remote_code": False,
        "max_length": 128,
        "min_tokens": None,
        "gguf": None,
        "store": None,
        "batch_tokens": 512,
        "shard_texts": 8,
        "train": None,
        "untrained": {"init_scale": 2.0},
    }
    entry = ModelEntry.from_spec(spec)
    assert entry.spec is spec
    assert (entry.dtype, entry.max_length, entry.store, entry.min_tokens, entry.init_scale) == (
        "bfloat16",
        128,
        "hidden",
        None,
        2.0,
    )
    assert entry.updated(store="spectra").store == "spectra" and entry.store == "hidden"


def test_an_entry_a_model_is_loaded_from_needs_its_loading_fields() -> None:
    entry = ModelEntry.from_spec({"family": "pythia", "size": "70m"})  # what the diff step reads
    assert entry.family == "pythia"
    with pytest.raises(ConfigError, match=r"dtype, trust_remote_code, max_length not set"):
        entry.resolved()


def test_model_entry_is_the_entry_the_config_composes_for_a_folder(tmp_path) -> None:
    folder = tmp_path / "my-model-70m"
    folder.mkdir()
    cfg = load_config(REPO / "conf", ["experiment=ci", f"models=[{folder}]"])
    assert model_entry(folder).spec == cfg["models"]["my-model-70m"]


def test_a_set_of_variants_resolves_the_zoo_model_once(
    corpus_file, tokenizer_dir, texts_file, tmp_path, monkeypatch
):
    """trained, init-s0 and two revisions of a model the workflow trained, dumped in one process:
    the zoo folder (every file's SHA-256 against training.json) is checked once, not at each
    tokenizer load, variant load and weights identity."""
    from diff_erank.train import train_model

    recipe = {"arch": "opt", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "steps": 4, "seq_len": 16,
              "batch_size": 2, "lr": 1e-3, "seed": 0, "checkpoint_steps": [0, 2]}  # fmt: skip
    zoo = tmp_path / "zoo"
    train_model(recipe, tokenizer_dir, corpus_file, zoo)
    checked: list[str] = []
    real = entries.check_trained_dir

    def spy(path) -> None:
        checked.append(str(path))
        real(path)

    monkeypatch.setattr(entries, "check_trained_dir", spy)
    entry = model_spec("unused", checkpoints=["step2"], train=recipe, max_length=16)
    entry = entry.updated(source=None, revision=None)  # a zoo entry: the workflow made its folder
    names = ["trained", "init-s0", "rev-step0", "rev-step2"]
    manifests = D.dump_set(entry.resolved(str(zoo)), names, texts_file, tmp_path / "set", device="cpu")
    assert checked == [str(zoo)]
    assert D.set_variants(tmp_path / "set") == names == list(manifests)
    files = {v: m["weights"]["local_files"] for v, m in manifests.items()}
    assert list(files.pop("init-s0")) == ["config.json"]  # built from the config alone
    assert len({f["model.safetensors"] for f in files.values()}) == 3  # three checkpoints' weights


# --- dataset entries ------------------------------------------------------------------------------


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
