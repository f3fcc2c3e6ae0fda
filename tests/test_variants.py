"""Variant names, layer names and algorithm names: each parsed and checked in one module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import EMPTY_EXPERIMENTS, REPO

from diff_erank import sizing
from diff_erank.config import ConfigError, load_config
from diff_erank.entries import ModelEntry
from diff_erank.erank import ALGORITHMS, STANDARD_ALGORITHM, dataset_erank, dataset_eranks
from diff_erank.layers import check_layers, layer_indices, n_distinct
from diff_erank.report import step_of
from diff_erank.variants import KINDS, Variant, register_kind, untrained_variants, variants

FORMS = [
    ("trained", Variant("trained")),
    ("init-s0", Variant("init", seed=0)),
    ("init-s12", Variant("init", seed=12)),
    ("init-s-1", Variant("init", seed=-1)),
    ("rev-step0", Variant("rev", revision="step0")),
    ("rev-main", Variant("rev", revision="main")),
    ("rev-fully_trained", Variant("rev", revision="fully_trained")),
    ("ft-sft", Variant("ft", name="sft")),
    ("ft-rlhf-2", Variant("ft", name="rlhf-2")),
]


@pytest.mark.parametrize(("name", "variant"), FORMS)
def test_parse_and_str_round_trip(name: str, variant: Variant) -> None:
    assert Variant.parse(name) == variant
    assert str(variant) == name


@pytest.mark.parametrize("bad", ["", "finetuned", "init-s", "init-sx", "init-s07", "rev-", "ft-", "Trained"])
def test_bad_names_are_refused_with_the_forms(bad: str) -> None:
    forms = "trained, init-s<seed>, rev-<revision> or ft-<name>"
    with pytest.raises(ConfigError, match=rf"unknown variant .*; expected {forms}"):
        Variant.parse(bad)


def test_a_variant_has_the_field_of_its_kind_only() -> None:
    with pytest.raises(ConfigError):
        Variant("init")
    with pytest.raises(ConfigError):
        Variant("trained", seed=0)
    with pytest.raises(ConfigError):
        Variant("checkpoint", revision="step1")  # type: ignore[arg-type]


def test_step() -> None:
    assert Variant.parse("rev-step150").step == 150
    assert Variant.parse("rev-main").step is None and Variant.parse("init-s3").step is None
    assert step_of("rev-step150") == 150 and step_of("init-s3") == 0 and step_of("trained", 400) == 400


def test_every_experiments_variant_names_round_trip() -> None:
    """The names in file paths, cache keys and tables are what ``str(Variant.parse(name))`` gives."""
    for path in sorted((REPO / "conf" / "experiment").glob("*.yaml")):
        if path.stem in EMPTY_EXPERIMENTS:  # its models come from the command line
            continue
        cfg = load_config(REPO / "conf", [f"experiment={path.stem}"])
        for spec in cfg["models"].values():
            names = variants(spec)
            assert names[0] == "trained" and set(untrained_variants(spec)) <= set(names)
            assert [str(Variant.parse(n)) for n in names] == names


def test_layers() -> None:
    assert layer_indices(["embeddings", "first", "middle", "last"], 12) == {
        "embeddings": 0,
        "first": 1,
        "middle": 6,
        "last": 12,
    }
    assert n_distinct(["first", "middle", 1, "all"], 4) == 5 and n_distinct([], 4) == 1
    check_layers(["embeddings", "all", 3, -1])
    with pytest.raises(ConfigError, match="'top' is not a layer"):
        check_layers(["last", "top"])


def test_sizing_refuses_an_unknown_layer() -> None:
    """Once treated as ``last``: a dump would refuse the name, so its estimate does too."""
    model = ModelEntry.from_spec({"params": 1e8, "dtype": "float32", "dump_dtype": "float32"})
    texts = sizing.Texts(10, 1000, 100, False)
    assert sizing.dump_need(model, texts, ["last"], "cpu").mem_mb > 0
    with pytest.raises(ConfigError, match="layer 'top'"):
        sizing.dump_need(model, texts, ["top"], "cpu")
    with pytest.raises(ConfigError, match="layer 'top'"):
        sizing.erank_need(model, texts, ["top"])


def test_algorithms() -> None:
    assert ALGORITHMS == ("a", "b") and STANDARD_ALGORITHM == "a"
    h = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0]])
    for alg in ALGORITHMS:
        assert list(dataset_eranks(h, alg)) == pytest.approx([dataset_erank(row, alg) for row in h])
    with pytest.raises(ValueError, match="algorithm must be"):
        dataset_eranks(h, "c")  # type: ignore[arg-type]


def test_every_variant_kind_has_one_loader() -> None:
    from diff_erank.models import LOADERS

    assert set(LOADERS) == set(KINDS) and list(KINDS) == ["trained", "init", "rev", "ft"]


def test_a_name_prefix_of_another_kind_is_refused() -> None:
    for prefix in ("rev-x", "init", "t"):
        with pytest.raises(ValueError, match="overlaps"):
            register_kind("other", prefix)
    assert "other" not in KINDS


# -- a variant kind registered from outside: what CONTRIBUTING's "Add a variant kind" shows ----------


@pytest.fixture
def noised():
    """``noised-<sigma>``: the trained weights plus seeded Gaussian noise of std ``sigma``, listed by
    a model entry's ``noise: [sigma, ...]`` (the schema's field, as CONTRIBUTING's third file adds
    it); its loader is registered beside the others."""
    from diff_erank import entries, models
    from diff_erank.config import schema

    fields = schema()["$defs"]["model"]["properties"]
    fields["noise"] = {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}}
    entries._entry_schema.cache_clear()

    def load_noised(model, v, dtype):
        model = models.LOADERS["trained"](model, v, dtype)  # the trained weights (made_from="weights")
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(v.sigma * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        return model

    register_kind("noised", "noised-", field="sigma", convert=float, listed=lambda m: m.get("noise") or [])
    models.variant_loader("noised")(load_noised)
    yield
    del KINDS["noised"], models.LOADERS["noised"], fields["noise"]
    entries._entry_schema.cache_clear()


def test_a_registered_kind_is_named_listed_and_sourced_like_the_others(noised, tiny_opt) -> None:
    from helpers.models import model_spec

    from diff_erank.sources import model_files

    assert Variant.parse("noised-0.5") == Variant("noised", sigma=0.5) == Variant("noised", 0.5)
    assert str(Variant("noised", sigma=0.5)) == "noised-0.5" and Variant.parse("noised-0.5").seed is None
    for bad in ("noised-", "noised-x", "noised-0.50", "noised-5e-1"):
        with pytest.raises(ConfigError, match=r"expected .*ft-<name> or noised-<sigma>"):
            Variant.parse(bad)
    for name, _ in FORMS:  # the four kinds' names are untouched by a fifth
        assert str(Variant.parse(name)) == name
    spec = model_spec(tiny_opt, noise=[0.5, 0.01]).spec
    assert variants(spec) == ["trained", "init-s0", "noised-0.5", "noised-0.01"]
    # made from the trained weights: the same local files are its rule inputs
    assert model_files(spec, "noised-0.5") == model_files(spec, "trained")
    assert len(model_files(spec, "noised-0.5")) > len(model_files(spec, "init-s0")) == 1


def test_a_registered_kind_is_loaded_through_its_loader_and_dumped(noised, tiny_opt, texts_file, tmp_path):
    from helpers.models import resolved

    from diff_erank import dump as D
    from diff_erank.measure import measure
    from diff_erank.models import load_variant

    source = resolved(tiny_opt)
    trained = load_variant(source, "trained").state_dict()
    noisy = load_variant(source, "noised-0.01").state_dict()
    diff = torch.cat([(noisy[k] - trained[k]).flatten() for k in trained if k in noisy])
    assert diff.std().item() == pytest.approx(0.01, rel=0.05)  # the noise, read back from the weights
    names = ["trained", "noised-0.01"]
    D.dump_set(source, names, texts_file, tmp_path / "set", device="cpu")
    assert D.set_variants(tmp_path / "set") == names
    a, b = measure(tmp_path / "set" / "trained"), measure(tmp_path / "set" / "noised-0.01")
    assert list(a["n_tokens"]) == list(b["n_tokens"]) and not np.allclose(a["erank"], b["erank"])
