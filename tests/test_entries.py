"""Model entries: typed once from the spec dict (which stays, byte for byte, for the hashes), and
resolved once per job: a dump of several variants checks the zoo folder one time."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.models import model_spec

from diff_erank import dump as D
from diff_erank import entries
from diff_erank.config import load_config
from diff_erank.entries import ModelEntry, model_entry
from diff_erank.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


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
