"""The shared measurement cache: what its keys depend on, sample prefixes, and run-folder views."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO

from diff_erank import cache
from diff_erank.config import ConfigError, load_config
from diff_erank.data import DataError, sample_indices
from diff_erank.dump import FORMAT_VERSION
from diff_erank.provenance import provenance
from diff_erank.storage import read_provenance, write_parquet


def cfg(*overrides: str) -> dict:
    return load_config(REPO / "conf", list(overrides))


def test_experiments_share_a_measurement_whatever_their_name() -> None:
    fig1, table4, table9 = (
        cache.Keys(cfg(f"experiment={e}"), f"results/{e}") for e in ("fig1", "table4", "table9")
    )
    job = ("opt-13b", "trained", "dolly-15k")
    assert fig1.measured[job] == table4.measured[job] == table9.measured[job]
    # one job measures every variant of OPT-13B on dolly: the same set of variants, one key
    assert fig1.sets[("opt-13b", "dolly-15k")] == table9.sets[("opt-13b", "dolly-15k")]
    assert fig1.texts["dolly-15k"] == table9.texts["dolly-15k"]
    # table4's four layers are a table of their own; fig1 and table9 (last) share theirs
    assert fig1.layers == table9.layers == "last" != table4.layers


@pytest.mark.parametrize(
    "override",
    [
        "models.opt-125m.revision=abc123",
        "models.opt-125m.dtype=float16",
        "models.opt-125m.dump_dtype=bfloat16",
        "models.opt-125m.max_length=512",
        "datasets.dolly-15k.max_texts=100",
        "datasets.dolly-15k.source.revision=v2",
    ],
)
def test_a_change_to_any_part_of_the_key_is_a_new_key(override: str) -> None:
    job = ("opt-125m", "trained", "dolly-15k")
    base = cache.Keys(cfg("experiment=table9"), "results/table9")
    changed = cache.Keys(cfg("experiment=table9", override), "results/table9")
    assert changed.measured[job] != base.measured[job]


def test_labels_and_resources_are_not_part_of_the_key() -> None:
    job = ("opt-125m", "init-s0", "dolly-15k")
    base = cache.Keys(cfg("experiment=table9"), "results/table9")
    other = cache.Keys(
        cfg(
            "experiment=table9",
            "models.opt-125m.resources.mem_mb=999",
            "models.opt-125m.size=tiny",
            "datasets.dolly-15k.description=renamed",
            "name=elsewhere",
        ),
        "results/elsewhere",
    )
    assert other.measured[job] == base.measured[job]
    assert base.measured[job] != base.measured[("opt-125m", "trained", "dolly-15k")]  # variant counts
    assert cache.CACHE_FORMAT == FORMAT_VERSION  # a new dump format is a new key


def test_a_job_is_keyed_by_its_set_of_variants() -> None:
    """Other untrained seeds: the trained variant's own key stays, the job's (the set's) is new."""
    base = cache.Keys(cfg("experiment=table9"), "results/table9")
    seeds = cache.Keys(cfg("experiment=table9", "models.opt-125m.untrained.seeds=[0,1]"), "results/table9")
    job = ("opt-125m", "dolly-15k")
    trained = ("opt-125m", "trained", "dolly-15k")
    assert seeds.measured[trained] == base.measured[trained]
    assert seeds.sets[job] != base.sets[job]
    assert seeds.variants_of(seeds.sets[job]) == ["trained", "init-s0", "init-s1"]
    described = base.describe(base.sets[job])["variants"]
    assert list(described) == ["trained", "init-s0"]
    assert described["init-s0"]["key"] == base.measured[("opt-125m", "init-s0", "dolly-15k")]


def test_the_init_scale_reaches_the_dump_and_its_key() -> None:
    """``untrained.init_scale`` makes new keys for the init variants only, and is in the dump spec
    the dump job loads its variants with (the spec is a projection of the entry: a field left
    out of it never reaches the model); at scale 1 the spec and keys are the published ones."""
    from transformers import LlamaConfig

    from diff_erank.entries import ModelEntry
    from diff_erank.models import scale_init

    run = "results/init-scale"
    sweep = cache.Keys(cfg("experiment=init-scale"), run)
    for name, scale in (("smollm2-x2", 2.0), ("smollm2-x0_25", 0.25), ("smollm2-x1", None)):
        spec = sweep.dump_spec(sweep.sets[(name, "topics")])
        assert (spec.get("untrained") or {}).get("init_scale") == scale
        assert scale_init(
            LlamaConfig(initializer_range=0.04), ModelEntry.from_spec(spec)
        ).initializer_range == 0.04 * (scale or 1)
    trained, init = (("smollm2-x2", v, "topics") for v in ("trained", "init-s0"))
    same = (("smollm2-x1", v, "topics") for v in ("trained", "init-s0"))
    (t1, i1) = (cache.key_digest(sweep.measured[j]) for j in same)
    assert cache.key_digest(sweep.measured[trained]) == t1 and cache.key_digest(sweep.measured[init]) != i1
    # five entries of one zoo model at five init scales: one zoo key, the first entry's (one training)
    zoo = {cache.zoo_key(sweep.cfg, m) for m in sweep.cfg["models"] if m.startswith("zoo-opt-m")}
    assert zoo == set(sweep.zoo) and [k.split(".")[0] for k in zoo] == ["zoo-opt-m-x0_25"]
    demo = cache.Keys(cfg("experiment=demo"), "results/demo")
    assert "untrained" not in demo.dump_spec(demo.sets[("smollm2-135m", "topics")])


def test_the_cache_folder_is_not_a_run_name() -> None:
    with pytest.raises(ConfigError, match="shared measurement cache"):
        cache.cache_dir(cfg("experiment=table9", "name=cache"))


@pytest.mark.parametrize("k", [1000, 5000])
def test_smaller_paper_samples_are_prefixes_of_the_10000_one(k: int) -> None:
    """Issue 12's claim, with the sampling code prepare runs, on Wikipedia's population size."""
    n = 6_458_670  # rows of 20220301.en
    assert sample_indices(n, k, "paper", 123) == sample_indices(n, 10_000, "paper", 123)[:k]
    random.seed(123)
    assert random.sample(range(n), k) == sample_indices(n, k, "paper", 123)  # the authors' call
    # not a law: on 30,000 rows random.sample switches algorithm between k and 10,000
    assert sample_indices(30_000, k, "paper", 123) != sample_indices(30_000, 10_000, "paper", 123)[:k]


def test_table11_reads_its_smaller_samples_from_the_larger_table() -> None:
    keys = cache.Keys(cfg("experiment=table11"), "results/table11")
    assert keys.prefix == {
        "wikipedia-1000": ("wikipedia-10000", 1000),
        "wikipedia-5000": ("wikipedia-10000", 5000),
    }
    for v in ("trained", "init-s0"):
        ids = {
            keys.measured[("opt-1_3b", v, d)] for d in ("wikipedia-1000", "wikipedia-5000", "wikipedia-10000")
        }
        assert len(ids) == 1


def _tables(tmp_path, n_population: int, big: int):
    """A prepared 'big' sample and a per-text eRank table of it, as prepare and measure write them."""
    spec = cfg("experiment=table11")["datasets"]["wikipedia-10000"] | {"max_texts": big}
    ids = sample_indices(n_population, big, "paper", 123)
    texts = ["" if i == 2 else f"text {i}" for i in range(big)]  # position 2 is blank: skipped
    tpath = tmp_path / "texts.parquet"
    write_parquet(
        pd.DataFrame({"text_id": ids, "text": texts}), tpath, provenance(spec, n_eligible=n_population)
    )
    rows = [
        {"position": p, "text_id": ids[p], "layer": layer, "n_tokens": 5, "erank": float(p)}
        for p in range(big)
        if p != 2
        for layer in ("first", "last")
    ]
    table = tmp_path / "erank" / "k" / "first+last" / "trained.parquet"
    write_parquet(pd.DataFrame(rows), table, provenance(dump={"n_texts_in": big, "n_params": 7}))
    table.parent.with_suffix(".json").write_text(json.dumps({"key": "k", "layers": ["first", "last"]}))
    return tpath, table


def test_a_view_keeps_the_layers_and_first_texts_and_says_where_they_came_from(tmp_path) -> None:
    tpath, table = _tables(tmp_path, 6_458_670, 40)
    out = tmp_path / "view.parquet"
    cache.select(table, out, ["last"], tpath, first=10)
    view = pd.read_parquet(out)
    assert set(view["layer"]) == {"last"} and sorted(view["position"]) == [0, 1, *range(3, 10)]
    prov = read_provenance(out)
    assert prov["cache"]["table"] == str(table) and prov["cache"]["key"]["key"] == "k"
    assert prov["dump"] | {"n_params": 7} == prov["dump"]
    assert (prov["dump"]["n_texts_in"], prov["dump"]["n_texts"], prov["dump"]["n_skipped_empty"]) == (
        10,
        9,
        1,
    )


def test_a_view_counts_the_texts_cut_among_its_own_first_texts(tmp_path) -> None:
    tpath, table = _tables(tmp_path, 6_458_670, 40)
    df = pd.read_parquet(table)
    # the dump cut texts 1, 5 and 30 of its 40 (dump.tokenise records their positions)
    dump = {"n_texts_in": 40, "n_params": 7, "n_truncated": 3, "truncated_positions": [1, 5, 30]}
    write_parquet(df, table, provenance(dump=dump))
    cache.select(table, tmp_path / "view.parquet", ["last"], tpath, first=10)
    assert read_provenance(tmp_path / "view.parquet")["dump"]["n_truncated"] == 2  # 1 and 5; 30 is past 10
    # the whole sample keeps the dump's own count
    cache.select(table, tmp_path / "all.parquet", ["last"], tpath)
    assert read_provenance(tmp_path / "all.parquet")["dump"]["n_truncated"] == 3


def test_a_sample_that_is_no_prefix_is_refused(tmp_path) -> None:
    tpath, table = _tables(tmp_path, 150, 40)  # 150 rows: k = 10 and k = 40 draw differently
    with pytest.raises(DataError, match="not the first 10 of its 40-text sample"):
        cache.select(table, tmp_path / "view.parquet", ["last"], tpath, first=10)


def test_a_table_with_more_layers_serves_a_run_that_asks_for_fewer(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    t4 = cache.Keys(cfg("experiment=table4"), "results/table4")
    f1 = cache.Keys(cfg("experiment=fig1"), "results/fig1")
    job = ("opt-125m", "dolly-15k")
    key = t4.sets[job]
    assert key == f1.sets[job]  # the same variants of the same model on the same texts
    assert f1.source_table(*job) == f1.table_path(key) != t4.table_path(key)  # nothing cached yet
    tables = tmp_path / t4.table_path(key)
    tables.mkdir(parents=True)
    (tables / "trained.parquet").write_bytes(b"a finished table")
    tables.with_suffix(".json").write_text(json.dumps(t4.describe(key)))
    assert f1.source_table(*job) == str(t4.table_path(key))  # table4's four layers hold fig1's last
    assert t4.describe(key)["layers"] == ["embeddings", "first", "middle", "last"]


# -- issue 29 item 1 and issue 25 item 9: keys from content and recipes, never from paths -------------
def _local_dolly(path: str) -> list[str]:
    from helpers.paper import local_source

    return ["experiment=table9", *local_source("dolly-15k", path)]


def test_a_local_file_is_keyed_by_its_content_not_its_spelling(tmp_path, monkeypatch) -> None:
    """Two checkouts sharing results/cache, each with its own data/topics.jsonl: two texts keys. The
    same bytes spelled another way (absolute, or a copied checkout) are one key."""
    rows = {"a": ["one", "two", "three"], "b": ["one", "two"]}
    for checkout, texts in rows.items():
        (tmp_path / checkout / "data").mkdir(parents=True)
        (tmp_path / checkout / "data" / "dolly.jsonl").write_text(
            "".join(json.dumps({"context": t}) + "\n" for t in texts)
        )
    keys = {}
    for checkout in rows:
        monkeypatch.chdir(tmp_path / checkout)
        keys[checkout] = cache.Keys(cfg(*_local_dolly("data/dolly.jsonl")), "results/table9")
    assert keys["a"].texts["dolly-15k"] != keys["b"].texts["dolly-15k"]
    job = ("opt-125m", "dolly-15k")
    assert keys["a"].sets[job] != keys["b"].sets[job]
    absolute = cache.Keys(cfg(*_local_dolly(str(tmp_path / "b" / "data" / "dolly.jsonl"))), "x/y")
    shutil.copytree(tmp_path / "b", tmp_path / "b-copy")
    monkeypatch.chdir(tmp_path / "b-copy")
    copied = cache.Keys(cfg(*_local_dolly("data/dolly.jsonl")), "results/table9")
    assert absolute.sets[job] == copied.sets[job] == keys["b"].sets[job]


def test_an_edit_with_the_mtime_set_back_is_a_new_key(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "dolly.jsonl"
    data.write_text(json.dumps({"context": "first"}) + "\n")
    before = cache.Keys(cfg(*_local_dolly(str(data))), "results/table9").texts["dolly-15k"]
    stamp = data.stat().st_mtime_ns
    data.write_text(json.dumps({"context": "other"}) + "\n")  # same size, same mtime after utime
    os.utime(data, ns=(stamp, stamp))
    after = cache.Keys(cfg(*_local_dolly(str(data))), "results/table9").texts["dolly-15k"]
    assert after != before


def test_a_local_model_is_keyed_by_its_files(tiny_opt, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    over = ["experiment=table9", f"models.opt-125m.source={tiny_opt}", "models.opt-125m.revision=main"]
    job = ("opt-125m", "trained", "dolly-15k")
    base = cache.Keys(cfg(*over), "results/table9").measured[job]
    shutil.copytree(tiny_opt, tmp_path / "copy")
    copied = [*over[:1], f"models.opt-125m.source={tmp_path / 'copy'}", over[2]]
    assert cache.Keys(cfg(*copied), "results/other").measured[job] == base
    weights = tmp_path / "copy" / "main" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 1  # other weights at the same path
    init = ("opt-125m", "init-s0", "dolly-15k")
    init_before = cache.Keys(cfg(*copied), "results/other").measured[init]
    weights.write_bytes(bytes(data))
    assert cache.Keys(cfg(*copied), "results/other").measured[job] != base
    assert cache.Keys(cfg(*copied), "results/other").measured[init] == init_before  # M0 reads no weights
    tok = tmp_path / "copy" / "main" / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")  # but its texts are tokenised by the folder's tokenizer
    assert cache.Keys(cfg(*copied), "results/other").measured[init] != init_before


def test_no_run_folder_is_part_of_a_key_and_the_zoo_is_cached_by_recipe(tmp_path, monkeypatch) -> None:
    """A twin of `ci` under another name, a copied checkout, another results folder: one zoo, one key."""
    monkeypatch.chdir(tmp_path)
    ci = cache.Keys(cfg("experiment=ci"), "results/ci")
    twin = cache.Keys(cfg("experiment=ci", "name=ci-20"), "results/ci-20")
    moved = cache.Keys(cfg("experiment=ci"), str(tmp_path / "elsewhere" / "results" / "ci"))
    assert ci.sets == twin.sets == moved.sets and ci.texts == twin.texts == moved.texts
    assert ci.corpus == twin.corpus and ci.corpus.startswith("results/cache/demo/")
    assert set(ci.zoo.values()) == {"zoo-opt-xs", "zoo-opt-s", "zoo-neox-xs"}
    longer = cache.Keys(cfg("experiment=ci", "models.zoo-opt-xs.train.steps=61"), "results/ci")
    assert set(longer.zoo) ^ set(ci.zoo) and longer.sets != ci.sets  # another recipe: another model
    other_corpus = cache.Keys(cfg("experiment=ci", "corpus.seed=1"), "results/ci")
    assert other_corpus.corpus != ci.corpus and other_corpus.texts != ci.texts


def test_the_device_is_part_of_the_key() -> None:
    job = ("opt-125m", "trained", "dolly-15k")
    keys = {
        d: cache.Keys(cfg("experiment=table9", f"device={d}"), "r/t").measured[job] for d in ("cpu", "cuda")
    }
    assert keys["cpu"] != keys["cuda"]


# -- issue 29 item 2: a view never pairs one run's texts with a table measured on others -----------------
def test_a_view_refuses_a_table_measured_on_other_texts(tmp_path) -> None:
    from diff_erank.storage import IntegrityError, sha256

    tpath, table = _tables(tmp_path, 6_458_670, 40)
    write_parquet(
        read_parquet_plain(table), table, provenance(dump={"n_texts_in": 40, "texts_sha256": sha256(tpath)})
    )
    cache.select(table, tmp_path / "ok.parquet", ["last"], tpath)  # its own texts: read
    other = tmp_path / "other.parquet"
    write_parquet(pd.DataFrame({"text_id": [0], "text": ["x"]}), other, provenance({}))
    with pytest.raises(IntegrityError, match=r"was measured on other texts than .*other\.parquet"):
        cache.select(table, tmp_path / "view.parquet", ["last"], other)


def read_parquet_plain(path):
    return pd.read_parquet(path)


def test_a_damaged_cached_table_names_the_entry_to_delete(tmp_path) -> None:
    from diff_erank.storage import IntegrityError

    tpath, table = _tables(tmp_path, 6_458_670, 40)
    keyfile = table.parent.with_suffix(".json")
    keyfile.write_text(keyfile.read_text()[:10])  # a truncated key file: no JSONDecodeError traceback
    with pytest.raises(IntegrityError, match=r"key file .*first\+last\.json is unreadable or truncated"):
        cache.select(table, tmp_path / "view.parquet", ["last"], tpath)
    table.write_bytes(table.read_bytes()[:-100])  # a truncated table: the folder to delete, not "it"
    with pytest.raises(IntegrityError, match=r"delete the cache entry .*/erank/k/first\+last/ and"):
        cache.select(table, tmp_path / "view.parquet", ["last"], tpath)


def test_a_spec_file_is_named_by_its_content_and_written_once(tmp_path) -> None:
    """What a rule hands its step: the same content is the same path in every run (so Snakemake's
    params trigger sees no change), another content another path; a dry run (write=False) only
    names it; the step reads back what the rule gave; `cache gc` collects it (a run writes it again)."""
    import hashlib

    from diff_erank.cache import collect_garbage, spec_file
    from diff_erank.cli import parser

    root = str(tmp_path / "results" / "cache")
    spec = {"source": "EleutherAI/pythia-70m", "layers": ["first", -1], "max_length": 1024}
    named = spec_file(root, spec, write=False)
    assert not (tmp_path / "results").exists()
    path = spec_file(root, dict(reversed(spec.items())))  # key order is not content
    text = '{"layers": ["first", -1], "max_length": 1024, "source": "EleutherAI/pythia-70m"}\n'
    assert path == named == f"{root}/specs/{hashlib.sha256(text[:-1].encode()).hexdigest()[:16]}.json"
    assert Path(path).read_text() == text
    assert spec_file(root, {**spec, "max_length": 2048}) != path
    os.utime(path, (0, 0))  # written once: an existing spec file is not written again
    assert spec_file(root, spec) == path and Path(path).stat().st_mtime == 0
    args = parser().parse_args(["prepare", "--spec", path, "--out", "x"])
    assert args.spec == spec == json.loads(text)
    written = sorted(Path(root, "specs").iterdir())
    assert len(written) == 2 and sorted(collect_garbage(tmp_path / "results")) == written
    assert not any(Path(root, "specs").iterdir())


def test_a_step_refuses_a_spec_file_it_cannot_read(tmp_path, capsys) -> None:
    from diff_erank.cli import main

    (tmp_path / "cut.json").write_text('{"source": "EleutherAI/py')
    for path in (tmp_path / "missing.json", tmp_path / "cut.json"):
        with pytest.raises(SystemExit):
            main(["prepare", "--spec", str(path), "--out", str(tmp_path / "texts.parquet")])
        assert f"argument --spec: cannot read the spec file {path}: " in capsys.readouterr().err


def test_a_cache_key_reads_as_the_names_of_what_it_measures() -> None:
    """``{ABOUT:{wildcards.key}}`` in a rule's shell line: a cache job's log's first line."""
    k = cache.Keys(cfg("experiment=ci"), "results/ci")
    about = cache.About([k])
    dump, texts = k.sets[("zoo-opt-xs", "topics")], k.texts["topics"]
    assert f"{about:{dump}}" == f"'zoo-opt-xs on topics: trained rev-step0 rev-step20 (cache key {dump})'"
    assert f"{about:{texts}}" == f"'the texts of topics (cache key {texts})'"
    zoo = next(key for key, model in k.zoo.items() if model == "zoo-opt-xs")
    assert f"{about:{zoo}}" == f"'zoo model zoo-opt-xs (cache key {zoo})'"
    assert f"{about:0123456789abcdef}" == "'cache key 0123456789abcdef'"  # not one of this run's


def test_a_key_reads_as_its_names_and_its_digest_does_not_depend_on_them() -> None:
    """``<model>.<dataset>.<digest>``, ``<dataset>.<digest>``, ``<model>.ft-<stage>.<digest>``: a
    job, its folder and its log read by name. The same entry under another model name has the same
    digest (its identity) and another key: two entries (the documented price of readable names)."""
    import re

    base = cfg("experiment=table10")
    keys = cache.Keys(base, "results/table10")
    job = ("opt-1_3b", "openbookqa")
    assert keys.sets[job].startswith("opt-1_3b.openbookqa.") and keys.texts["wikipedia"].startswith(
        "wikipedia."
    )
    assert sorted(k.rsplit(".", 1)[0] for k in keys.finetuned) == [
        "opt-1_3b.ft-further",
        "opt-1_3b.ft-overfit",
    ]
    every = [*keys.jobs_of, *keys.texts.values(), *keys.finetuned, *keys.measured.values()]
    assert all(re.fullmatch(cache.KEY, k) and re.fullmatch(cache.HEX, cache.key_digest(k)) for k in every)
    renamed = {**base, "models": {"opt-other": base["models"]["opt-1_3b"]}}
    other = cache.Keys(renamed, "results/table10")
    moved = other.sets[("opt-other", "openbookqa")]
    assert moved.startswith("opt-other.openbookqa.") and moved != keys.sets[job]
    assert cache.key_digest(moved) == cache.key_digest(keys.sets[job])
    assert other.texts == keys.texts and set(map(cache.key_digest, other.finetuned)) == set(
        map(cache.key_digest, keys.finetuned)
    )
