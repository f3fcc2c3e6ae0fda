"""The paper's recipes where the code used to differ: dolly's filter, the environment, pinning."""

from __future__ import annotations

import json

from conftest import REPO
from paper_fixtures import local_source

from diff_erank.config import load_config
from diff_erank.data import prepare_texts

CONF = REPO / "conf"


def test_dolly_keeps_whitespace_contexts_as_the_authors(tmp_path) -> None:
    contexts = ["", " ", "A real context.", "\n", "", "\t \n", "Another one."]
    path = tmp_path / "dolly.jsonl"
    path.write_text("".join(json.dumps({"context": c, "instruction": "i"}) + "\n" for c in contexts))
    cfg = load_config(CONF, ["experiment=table4", *local_source("dolly-15k", str(path))])
    df = prepare_texts(cfg["datasets"]["dolly-15k"])
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
    prepare_to_file(spec, tmp_path / "texts.parquet")
    recorded = read_provenance(tmp_path / "texts.parquet")["source_revision"]
    assert recorded["files"] == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}

    # a hub dataset: the commit its revision resolves to (a local resolver here; offline, the real
    # one cannot reach the hub and the commit is recorded as unknown rather than failing)
    hub = {"kind": "hub", "path": "databricks/databricks-dolly-15k", "name": None, "revision": "main"}
    seen = []
    got = source_revision(hub, dataset_commit=lambda *a: seen.append(a) or "c" * 40)
    assert got == {"hub": hub["path"], "revision": "main", "commit": "c" * 40}
    assert seen == [("databricks/databricks-dolly-15k", None, "main", None)]
    assert source_revision(hub)["commit"] is None

    # wikipedia: parquet files of a hub repository, read through hf:// paths; the repository's
    # commit is what is recorded, and offline the loader fails with the hub named, not "no file"
    wiki = load_config(CONF, ["experiment=table11"])["datasets"]["wikipedia-1000"]["source"]
    assert wiki["data_files"].startswith("hf://datasets/legacy-datasets/wikipedia@")
    assert "data/20220301.en/" in wiki["data_files"]
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
