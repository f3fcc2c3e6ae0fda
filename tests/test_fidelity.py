"""The paper's recipes where the code used to differ: dolly's filter, the environment, pinning."""

from __future__ import annotations

import json

from helpers import REPO
from helpers.paper import local_source

from diff_erank.config import load_config
from diff_erank.data import prepare_texts
from diff_erank.entries import DatasetEntry, DatasetSource

CONF = REPO / "conf"


def test_dolly_keeps_whitespace_contexts_as_the_authors(tmp_path) -> None:
    contexts = ["", " ", "A real context.", "\n", "", "\t \n", "Another one."]
    path = tmp_path / "dolly.jsonl"
    path.write_text("".join(json.dumps({"context": c, "instruction": "i"}) + "\n" for c in contexts))
    cfg = load_config(CONF, ["experiment=table4", *local_source("dolly-15k", str(path))])
    df = prepare_texts(DatasetEntry.from_spec(cfg["datasets"]["dolly-15k"]))
    # the authors' filter, written out: [c for c in rows if len(c) > 0]
    kept = [i for i, c in enumerate(contexts) if len(c) > 0]
    assert df["text_id"].tolist() == kept == [1, 2, 3, 5, 6]
    assert df["text"].tolist() == [contexts[i] for i in kept]


def test_prepare_records_the_files_and_commits_it_read(tmp_path) -> None:
    import hashlib

    import pytest

    from diff_erank.data import DataError, load_rows, prepare_to_file, source_revision
    from diff_erank.storage import read_provenance

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(5)))
    spec = {
        "source": {"kind": "jsonl", "data_files": str(path)},
        "text": {"field": "text"},
        "max_texts": None,
        "sampling": {"method": "all", "seed": 123},
    }
    prepare_to_file(DatasetEntry.from_spec(spec), tmp_path / "texts.parquet")
    recorded = read_provenance(tmp_path / "texts.parquet")["source_revision"]
    assert recorded["files"] == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}

    # a hub dataset: the commit its revision resolves to (a local resolver here; offline, the real
    # one cannot reach the hub and the commit is recorded as unknown rather than failing)
    hub = DatasetSource("hub", path="databricks/databricks-dolly-15k", name=None, revision="main")
    seen = []
    got = source_revision(hub, dataset_commit=lambda *a: seen.append(a) or "c" * 40)
    assert got == {"hub": hub.path, "revision": "main", "commit": "c" * 40}
    assert seen == [("databricks/databricks-dolly-15k", None, "main", None)]
    assert source_revision(hub)["commit"] is None

    # wikipedia: parquet files of a hub repository, read through hf:// paths; the repository's
    # commit is what is recorded, and offline the loader fails with the hub named, not "no file"
    wiki = DatasetSource.from_dict(
        load_config(CONF, ["experiment=table11"])["datasets"]["wikipedia-1000"]["source"]
    )
    assert wiki.data_files.startswith("hf://datasets/legacy-datasets/wikipedia@")
    assert "data/20220301.en/" in wiki.data_files
    got = source_revision(wiki, repo_commit=lambda repo, rev: f"{repo}:{rev}")
    assert got["repos"] == {"legacy-datasets/wikipedia@main": "legacy-datasets/wikipedia:main"}
    assert source_revision(wiki)["repos"] == {"legacy-datasets/wikipedia@main": None}
    with pytest.raises(DataError, match="cannot read parquet files") as err:
        load_rows(wiki)
    assert "does not exist" not in str(err.value)


def test_pin_skips_abstract_entries_and_pins_the_tokenizer_on_its_own(tmp_path) -> None:
    import shutil

    import pytest
    import yaml

    from diff_erank.config import ConfigError
    from diff_erank.pin import pin_file

    calls: list[tuple[str, str | None]] = []
    commits = {
        "apple/OpenELM-270M": "a" * 40,
        "meta-llama/Llama-2-7b-hf": "b" * 40,
        "facebook/opt-125m": "c" * 40,
    }

    def resolver(repo: str, revision: str | None) -> str:  # the hub, as a local table
        calls.append((repo, revision))
        return commits[repo]

    shutil.copytree(CONF, tmp_path / "conf")
    model_dir = tmp_path / "conf" / "model"
    before = {p.name: p.read_text() for p in model_dir.glob("*.yaml")}
    for name in ("hf-base.yaml", "zoo-base.yaml", "zoo-opt-xs.yaml"):  # abstract, or made here
        assert pin_file(model_dir / name, resolver) is None
        assert (model_dir / name).read_text() == before[name]
    assert calls == []

    assert pin_file(model_dir / "openelm-270m.yaml", resolver) == {
        "revision": "a" * 40,
        "tokenizer_revision": "b" * 40,
    }
    assert calls == [("apple/OpenELM-270M", None), ("meta-llama/Llama-2-7b-hf", None)]

    entry = yaml.safe_load((model_dir / "openelm-270m.yaml").read_text())
    assert (entry["revision"], entry["tokenizer_revision"]) == ("a" * 40, "b" * 40)
    assert entry["tokenizer"] == "meta-llama/Llama-2-7b-hf"
    assert pin_file(model_dir / "opt-125m.yaml", resolver) == {"revision": "c" * 40}
    assert "tokenizer_revision" not in (model_dir / "opt-125m.yaml").read_text()
    # the pinned entries still compose and validate
    cfg = load_config(tmp_path / "conf", ["experiment=fig3"])
    assert cfg["models"]["openelm-270m"]["tokenizer_revision"] == "b" * 40
    assert cfg["models"]["openelm-450m"]["tokenizer_revision"] is None

    # the real resolver, offline: one clear sentence that names HF_TOKEN for gated repositories
    with pytest.raises(ConfigError, match=r"needs hub access.*HF_TOKEN"):
        pin_file(model_dir / "openelm-450m.yaml")


def test_pin_covers_mm_models_and_dataset_revisions(tmp_path) -> None:
    """``pin`` on conf/mm_model (a model entry: the model resolver), conf/dataset and conf/mm_dataset
    (hub datasets through the dataset resolver: ``source.revision`` in flow or block style, a
    ``source.hub`` annotation file, ``hf://`` paths); local and inherited sources are skipped; only
    the pinned values change (comments kept), and the pinned entries still compose."""
    import shutil

    import pytest
    import yaml

    from diff_erank.config import ConfigError
    from diff_erank.pin import pin_file

    shutil.copytree(CONF, tmp_path / "conf")
    conf = tmp_path / "conf"
    models: list[tuple[str, str | None]] = []
    datasets: list[tuple[str, str | None]] = []

    def sha(repo: str) -> str:  # a distinct commit per repository
        return f"{sum(map(ord, repo)) % 0xFFFF:04x}".ljust(40, "f")

    def model_resolver(repo: str, revision: str | None) -> str:
        models.append((repo, revision))
        return sha(repo)

    def dataset_resolver(repo: str, revision: str | None) -> str:
        datasets.append((repo, revision))
        return sha(repo)

    before = {f.relative_to(conf): f.read_text() for f in conf.rglob("*.yaml")}
    files = sorted(f for kind in ("dataset", "mm_dataset", "mm_model") for f in conf.glob(f"{kind}/*.yaml"))
    got = {f.relative_to(conf).as_posix(): pin_file(f, model_resolver, dataset_resolver) for f in files}

    hub_datasets = {"dolly-15k": "databricks/databricks-dolly-15k", "hh-rlhf": "Anthropic/hh-rlhf",
                    "openbookqa": "allenai/openbookqa", "openbookqa-train": "allenai/openbookqa",
                    "openwebtext2": "suolyer/pile_openwebtext2", "piqa": "baber/piqa",
                    "winogrande": "allenai/winogrande"}  # fmt: skip
    wiki = "hf://datasets/legacy-datasets/wikipedia@main"
    assert got == {
        **{f"dataset/{n}.yaml": {"source.revision": sha(r)} for n, r in hub_datasets.items()},
        "dataset/wikipedia.yaml": {wiki: sha("legacy-datasets/wikipedia")},
        **{f"dataset/{n}.yaml": None  # the demo's local corpus, and entries inheriting wikipedia's source
           for n in ("demo-base", "demo-docstrings", "demo-topics", "wikipedia-1000", "wikipedia-5000",
                     "wikipedia-10000")},
        "mm_dataset/detail_23k.yaml": {"source.hub.revision": sha("liuhaotian/LLaVA-Instruct-150K")},
        "mm_dataset/cc_sbu_align.yaml": None,  # local annotations and images
        "mm_model/llava-1_5-7b.yaml": {"revision": sha("llava-hf/llava-1.5-7b-hf")},
        "mm_model/llava-1_5-13b.yaml": {"revision": sha("llava-hf/llava-1.5-13b-hf")},
        # converted from local checkpoint files (its Llama's revision, minigpt.checkpoints.llama, is not
        # pinned by `pin` yet: the conversion records the commit it read)
        "mm_model/minigpt-v2.yaml": None,
    }  # fmt: skip
    assert sorted(models) == [("llava-hf/llava-1.5-13b-hf", "main"), ("llava-hf/llava-1.5-7b-hf", "main")]
    assert sorted(datasets) == sorted(
        [*((r, "main") for r in hub_datasets.values()), ("legacy-datasets/wikipedia", "main"),
         ("liuhaotian/LLaVA-Instruct-150K", "main")]
    )  # fmt: skip

    # only the pinned lines changed: every comment and every other line is as it was
    for rel, text in before.items():
        after = (conf / rel).read_text().splitlines()
        changed = [(a, b) for a, b in zip(text.splitlines(), after, strict=True) if a != b]
        pinned = got.get(rel.as_posix()) or {}
        assert len(changed) == (1 if pinned else 0), rel
        for _, new in changed:
            assert all(v in new for v in pinned.values())
    hh = yaml.safe_load((conf / "dataset/hh-rlhf.yaml").read_text())["source"]  # block style
    assert hh["revision"] == sha("Anthropic/hh-rlhf") and len(hh["data_files"]) == 4

    # the pinned entries compose, validate and reach the steps (inherited ones included)
    cfg = load_config(conf, ["experiment=table11"])
    assert cfg["datasets"]["wikipedia-1000"]["source"]["data_files"].startswith(
        f"hf://datasets/legacy-datasets/wikipedia@{sha('legacy-datasets/wikipedia')}/data/20220301.en/"
    )
    piqa_source = load_config(conf, ["experiment=table1"])["datasets"]["piqa"]["source"]
    assert piqa_source["revision"] == sha("baber/piqa")
    mm = load_config(conf, ["experiment=table2"])["multimodal"]
    assert mm["models"]["llava-1_5-7b"]["revision"] == sha("llava-hf/llava-1.5-7b-hf")
    assert mm["datasets"]["detail_23k"]["source"]["hub"]["revision"] == sha("liuhaotian/LLaVA-Instruct-150K")

    # a hub dataset without a revision field is refused and left as it was; offline, one sentence
    bare = tmp_path / "bare.yaml"
    bare.write_text("source: {kind: hub, path: org/data, split: train}\n")
    with pytest.raises(ConfigError, match="no `revision:` field"):
        pin_file(bare, model_resolver, dataset_resolver)
    assert bare.read_text() == "source: {kind: hub, path: org/data, split: train}\n"
    piqa = tmp_path / "piqa.yaml"
    shutil.copy(CONF / "dataset" / "piqa.yaml", piqa)
    with pytest.raises(ConfigError, match=r"cannot resolve dataset baber/piqa@main .*needs hub access"):
        pin_file(piqa)
    assert piqa.read_text() == (CONF / "dataset" / "piqa.yaml").read_text()


def _requirements(lines) -> dict:
    """``{normalised name: SpecifierSet}`` of requirement strings (conda's ``=`` read as ``==``)."""
    import re

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in lines:
        line = str(line).strip()
        if not line or line.startswith(("-", "#")):
            continue
        line = re.sub(r"^([A-Za-z0-9_.\-\[\]]+)=(?=[0-9])", r"\1==", line)  # conda: python=3.11
        req = Requirement(line)
        out[canonicalize_name(req.name)] = req.specifier
    return out


def test_environment_file_agrees_with_constraints_and_pyproject() -> None:
    import pytest
    import yaml
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    wanted = _requirements(conda) | _requirements(pip)
    pinned = _requirements((REPO / "requirements" / "constraints.txt").read_text().splitlines())
    for name, spec in wanted.items():
        if name in ("python", "pip"):
            continue
        assert name in pinned, f"{name} is in environment.yml but not pinned in constraints.txt"
        version = next(iter(pinned[name])).version
        assert spec.contains(version), f"{name}: constraints pin {version}, environment.yml wants {spec}"
    # PyTorch: never the frozen `pytorch` channel (2.5.1 at most); at least transformers 5's floor
    assert "pytorch" not in env["channels"] and "pytorch" not in wanted
    assert not wanted["torch"].contains("2.5.1") and wanted["torch"].contains("2.6.0")
    assert Version(next(iter(pinned["torch"])).version) >= Version("2.6")
    # and nothing pyproject.toml depends on is missing from the environment file
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = _requirements(project["dependencies"])
    assert needed.keys() <= wanted.keys(), sorted(needed.keys() - wanted.keys())
    assert not needed["torch"].contains("2.5.1")


def test_pin_sets_where_a_gguf_entrys_published_facts_were_read(tmp_path) -> None:
    """A GGUF entry has no hub source to pin, but its published config facts come from a hub
    repository: `pin` writes that repository's commit into gguf.published.revision, touching that
    one line (comments kept) and leaving the file readable as the same entry otherwise."""
    import hashlib
    import shutil

    import yaml

    from diff_erank.pin import pin_file

    asked = []

    def resolver(repo: str, revision: str | None) -> str:
        asked.append((repo, revision))
        return hashlib.sha1(repo.encode()).hexdigest()

    entries = (("smollm2-135m", "HuggingFaceTB/SmolLM2-135M"), ("gemma3-270m", "google/gemma-3-270m"))
    for name, repo in entries:
        path = tmp_path / f"{name}.yaml"
        shutil.copy(REPO / "conf" / "model" / f"{name}.yaml", path)
        before = path.read_text()
        sha = hashlib.sha1(repo.encode()).hexdigest()
        assert pin_file(path, resolver) == {"gguf.published.revision": sha}
        after = path.read_text()
        entry, old = yaml.safe_load(after), yaml.safe_load(before)
        assert entry["gguf"]["published"]["revision"] == sha
        old["gguf"]["published"]["revision"] = sha
        assert entry == old  # nothing else changed
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
        assert changed == [("    revision: main", f"    revision: {sha}")]
    assert asked == [("HuggingFaceTB/SmolLM2-135M", "main"), ("google/gemma-3-270m", "main")]
