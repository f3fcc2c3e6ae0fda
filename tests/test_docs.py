"""The documentation stays a short guide with working links and examples that compose.

The README is read in ten minutes (at most 250 lines); every relative link of the README,
CONTRIBUTING and docs/*.md reaches a file (and, with an anchor, a heading of that file); the
README's bring-your-own YAML examples, written into a copy of conf/, compose and validate.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from diff_erank.config import load_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
EXAMPLE = re.compile(r"^(?:# @package \w+\n)?# (conf/(model|dataset|experiment)/[\w.-]+\.yaml)\b")


def _without_code(text: str) -> str:
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", _without_code(page.read_text()), re.M)}


def _examples() -> dict[str, str]:
    """The README's YAML blocks that start with the file they belong in (# conf/<group>/<name>.yaml),
    after the package header where there is one."""
    found = {}
    for lang, body in FENCE.findall(README.read_text()):
        m = EXAMPLE.match(body)
        if lang == "yaml" and m:
            found[m.group(1)] = body
    return found


def test_readme_is_short_and_shows_how_to_run() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for command in ("make run", "make test", "make quick", "snakemake --cores", "snakemake -n"):
        assert command in text, command


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_without_code(page.read_text())):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    links = {t.partition("#")[0] for t in LINK.findall(README.read_text())}
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} | {"CONTRIBUTING.md"}
    assert pages <= links, sorted(pages - links)


@pytest.fixture(scope="module")
def conf_with_examples(tmp_path_factory) -> Path:
    examples = _examples()
    assert {"conf/model/my-model.yaml", "conf/dataset/my-texts.yaml", "conf/experiment/my-run.yaml"} <= set(
        examples
    ), sorted(examples)
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "conf", root / "conf")
    for rel, body in examples.items():
        yaml.safe_load(body)  # each block is YAML on its own
        (root / rel).write_text(body)
    return root / "conf"


def test_readme_examples_compose_into_an_experiment(conf_with_examples: Path) -> None:
    cfg = load_config(conf_with_examples, ["experiment=my-run"])
    assert cfg["name"] == "my-run"
    mine = cfg["models"]["my-model"]
    assert mine["source"] == "./models/my-model" and mine["untrained"]["kind"] == "random_init"
    assert cfg["models"]["gpt2"]["source"] == "openai-community/gpt2"
    texts = cfg["datasets"]["my-texts"]["source"]
    assert texts["kind"] == "jsonl" and texts["data_files"] == "./data/my-texts.jsonl"


def test_readme_examples_join_an_existing_experiment(conf_with_examples: Path) -> None:
    """The README's one-line route: `+models=[my-model]` and `+datasets=[my-texts]` added to ci."""
    from diff_erank.config import overrides_from_snakemake

    route = r"experiment=ci name=ci-mine overrides='(\[\+models=\[my-model\][^']*)'"
    line = re.search(route, README.read_text())
    assert line, "the README shows the override that adds the examples to an experiment"
    given = {"experiment": "ci", "name": "ci-mine", "overrides": line.group(1)}
    cfg = load_config(conf_with_examples, overrides_from_snakemake(given, conf_with_examples))
    assert "my-model" in cfg["models"] and "zoo-opt-xs" in cfg["models"]
    assert set(cfg["datasets"]) == {"topics", "my-texts"}
