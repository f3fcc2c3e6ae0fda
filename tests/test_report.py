"""The experiment report: declared files, readable tables, generated summary, figures, Table 4 readings."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO

from diff_erank.aggregate import diff_table
from diff_erank.outputs import figure_kinds, report_files
from diff_erank.report import build, summarise
from diff_erank.reproduce import first_layer_readings, first_layer_section, reference
from diff_erank.tables import human_count, markdown

# eRank (= exp(entropy)) of each checkpoint: collapse at step 40, re-expansion by the end
STEPS = {"rev-step0": 30.0, "rev-step40": 2.0, "rev-step150": 6.0, "trained": 10.0}
LOSS = {"rev-step0": 7.6, "rev-step40": 6.0, "rev-step150": 5.0, "trained": 4.5}


def per_text(erank: float, loss: float, layers: dict[str, int], rng, n: int = 12) -> pd.DataFrame:
    rows = []
    for name, index in layers.items():
        for pos in range(n):
            h = math.log(erank * (1 + index / 10)) + rng.normal(0, 0.01)
            rows.append(
                {
                    "position": pos,
                    "layer": name,
                    "layer_index": index,
                    "dim": 32,
                    "entropy": h,
                    "loss": loss,
                    "normalized_entropy": h / math.log(32),
                }
            )
    return pd.DataFrame(rows)


def model_entry(family: str, size: str) -> dict:
    return {
        "family": family,
        "size": size,
        "untrained": {"kind": "revision", "revision": "step0"},
        "checkpoints": ["step40", "step150"],
        "train": {"steps": 400},
        "max_length": 64,
    }


# (family, size, parameters, number of blocks): the 1-block and 3-block models have middle = first
MODELS = {
    "opt-s": ("opt", "s", 82_464, 1),
    "opt-l": ("opt", "l", 1_317_632, 4),
    "neox-s": ("neox", "s", 125_000_000, 3),
    "neox-l": ("neox", "l", 1_300_000_000, 4),
}


TRUNCATED = {("opt-l", "d1"): 3}


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    config = {
        "name": "fixture",
        "description": "a synthetic experiment",
        "layers": ["first", "middle", "last"],
        "algorithms": ["a", "b"],
        "figures": ["size", "stages", "algorithms", "accuracy", "layers"],
        "paper_tables": [],
        "accuracy": {"tasks": ["piqa"]},
        "models": {m: model_entry(f, s) for m, (f, s, _, _) in MODELS.items()},
        "datasets": {"d1": {}, "d2": {}},
    }
    diffs, accs = [], []
    for k, (model, (fam, size, n_params, blocks)) in enumerate(MODELS.items()):
        layers = {"first": 1, "middle": max(1, blocks // 2), "last": blocks}
        for ds in ("d1", "d2"):
            # the trained model's eRank grows less than M0's with size: Diff-eRank grows with size
            tables = {
                v: per_text(e * (1 + k / 4 if v == "rev-step0" else 1.0), LOSS[v], layers, rng)
                for v, e in STEPS.items()
            }
            info = {"model": model, "family": fam, "size": size, "n_params": n_params, "dataset": ds}
            # what aggregate.load_tables passes on from the dump: 3 of opt-l's 12 d1 texts were cut
            info |= {"n_skipped_empty": 0, "n_skipped_short": 0, "n_truncated": TRUNCATED.get((model, ds), 0)}
            df = diff_table(tables, ["rev-step0"], ["a", "b"], {"samples": 50, "seed": 0, "ci": 0.95}, info)
            path = tmp / "diff" / model / f"{ds}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            df.to_parquet(path)
            diffs.append(path)
        acc = tmp / "accuracy" / model / "trained.json"
        acc.parent.mkdir(parents=True, exist_ok=True)
        acc.write_text(json.dumps({"variant": "trained", "accuracy": {"piqa": 0.55 + 0.05 * k}}))
        accs.append(acc)
    out = tmp / "out"
    build(diffs, out, config, accs)
    return out, config


def test_writes_exactly_the_declared_files(report_run) -> None:
    out, config = report_run
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == set(report_files(config).values())
    assert figure_kinds(config) == ["size", "stages", "algorithms", "accuracy", "layers"]
    for kind in figure_kinds(config):
        assert (out / "figures" / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "figures" / f"{kind}.pdf").read_bytes()[:4] == b"%PDF"
    # without stages, accuracy or a second layer those figures are neither promised nor drawn
    lean = {**config, "layers": ["last"], "algorithms": ["a"], "accuracy": None}
    lean["models"] = {m: {**e, "checkpoints": []} for m, e in config["models"].items()}
    assert figure_kinds(lean) == ["size"]
    assert "tables/accuracy.csv" not in report_files(lean).values()


def test_tables_are_readable(report_run) -> None:
    out, _ = report_run
    md = (out / "tables" / "diff_erank.md").read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md[2:] if line.startswith("|")]
    params = {r[header.index("model")]: r[header.index("n_params")] for r in rows}
    assert params == {"opt-s": "82K", "opt-l": "1.3M", "neox-s": "125M", "neox-l": "1.3B"}
    for col in ("diff_erank", "reduced_loss", "erank_trained", "ci_low"):
        cells = [r[header.index(col)] for r in rows]
        assert len({len(c.split(".")[1]) if "." in c else 0 for c in cells}) == 1, (col, cells)
    # the CSV keeps full precision
    csv = pd.read_csv(out / "tables" / "diff_erank.csv")
    assert set(csv["n_params"]) == {p for _, _, p, _ in MODELS.values()}
    html = (out / "tables" / "diff_erank.html").read_text()
    assert "<table>" in html and "1.3B" in html
    # one set of column names: the CSV's are the Markdown's and the HTML's, in every table
    for csv_file in (out / "tables").glob("*.csv"):
        names = list(pd.read_csv(csv_file).columns)
        md_head = csv_file.with_suffix(".md").read_text().splitlines()[0]
        assert [c.strip() for c in md_head.strip("|").split("|")] == names, csv_file.name
        assert re.findall(r"<th>(.*?)</th>", csv_file.with_suffix(".html").read_text()) == names
    # footnotes name only columns the table has
    for md_file in (out / "tables").glob("*.md"):
        lines = md_file.read_text().splitlines()
        cols = {c.strip() for c in lines[0].strip("|").split("|")}
        for note in (x for x in lines[1:] if x and not x.startswith("|")):
            named = set(re.findall(r"\b([a-z]+(?:_[a-z0-9]+)+)\b", note))
            assert named <= cols | {"max_length", "hidden_states"}, (md_file.name, named - cols)


def test_truncated_texts_are_counted_and_stated(report_run) -> None:
    out, _ = report_run
    csv = pd.read_csv(out / "tables" / "diff_erank.csv")
    cut = {(r.model, r.dataset): r.n_truncated for r in csv.itertuples() if r.n_truncated}
    assert cut == {("opt-l", "d1"): 3}
    assert "n_truncated" in pd.read_csv(out / "tables" / "all.csv").columns
    summary = (out / "summary.md").read_text()
    assert "opt-l on d1: 3 of 12 texts cut at 64 tokens" in summary
    # a run where nothing was cut says nothing about cutting
    assert "cut at" not in summarise(csv.assign(n_truncated=0), pd.DataFrame(), config={"name": "x"})


def test_even_precision_and_human_counts() -> None:
    text = markdown(pd.DataFrame({"x": [2.82, 3.014, 15.0], "n": [1.0, 2.0, 3.0]}))
    assert "| 2.82 | 1 |" in text and "| 3.01 | 2 |" in text and "| 15.00 | 3 |" in text
    assert [human_count(v) for v in (82_464, 1_317_632, 125e6, 1.3e9, 13e9, 999)] == [
        "82K",
        "1.3M",
        "125M",
        "1.3B",
        "13B",
        "999",
    ]


def test_footnote_where_middle_is_first(report_run) -> None:
    out, _ = report_run
    text = (out / "tables" / "algorithms_layers.md").read_text()
    notes = [line for line in text.splitlines() if line.startswith("* ")]
    assert len(notes) == 2 and not any("-l" in n for n in notes)
    assert notes[0].startswith("* first = middle for neox-s: ") and "hidden_states[1]" in notes[0]
    assert notes[1].startswith("* first = middle = last for opt-s: ")
    layers = pd.read_csv(out / "tables" / "layers.csv")
    assert set(layers[layers.model == "opt-l"].layer_index) == {1, 2, 4}


def test_summary_rho_leaves_out_step0_and_states_the_collapse(report_run) -> None:
    out, _ = report_run
    summary = (out / "summary.md").read_text()
    stages = pd.read_csv(out / "tables" / "stages.csv")
    g = stages[(stages.model == "opt-l") & (stages.dataset == "d1")].sort_values("step")
    later = g[g.step > 0]
    # independent reading: Diff-eRank falls over steps 40 < 150 < 400 (rho -1); with step 0 it would be 0.2
    assert list(later["diff_erank"]) == sorted(later["diff_erank"], reverse=True)
    line = next(s for s in summary.splitlines() if s.startswith("- opt-l on d1:"))
    assert "Spearman rho(step, Diff-eRank) -1.00" in line
    m = re.search(r"eRank collapses to ([\d.]+) at step 40 and re-expands to ([\d.]+) by step 400", line)
    assert m and float(m.group(1)) == pytest.approx(g.erank_trained.iloc[1], abs=0.05)
    assert "**Collapse, then re-expansion**: in 8 of 8 model x dataset series" in summary
    assert (out / "summary.html").read_text().count("<li>") >= 8


def test_first_layer_both_readings_against_the_paper() -> None:
    ref = reference()
    paper = ref[(ref.table == "table4") & (ref.variant == "layer_first")]
    assert len(paper) == 5
    ours = pd.concat(
        [
            paper.assign(variant="layer_embeddings", value=paper["value"] * 1.1),
            paper.assign(variant="layer_first", value=paper["value"] * 0.5),
        ]
    ).assign(model="m")
    readings = first_layer_readings(ours, ["table4"])
    assert set(readings["reading"]) == {"embeddings", "first"} and len(readings) == 10
    text = first_layer_section(readings)
    assert "`embeddings`: 5 sizes, median |relative difference| 10.0%" in text
    assert "`first`: 5 sizes, median |relative difference| 50.0%" in text
    assert "Closer to the paper's numbers: **`embeddings`**" in text
    # with one reading only there is nothing to choose between
    assert first_layer_section(readings[readings.reading == "first"]) == ""


def imports(path: Path) -> set[str]:
    """diff_erank modules a module imports, at any level (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "diff_erank":
                found |= {a.name for a in node.names}
            elif node.module.startswith("diff_erank."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("diff_erank.")}
    return found


def test_no_two_modules_import_each_other() -> None:
    src = REPO / "src" / "diff_erank"
    graph = {p.stem: imports(p) - {p.stem} for p in src.glob("*.py")}

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, m, (m,)))]
    assert not cycles, f"import cycles: {cycles}"


def test_every_layer_with_layers_all(tmp_path) -> None:
    """``layers: all`` (every hidden state, embedding output included): depth comes from layer_index."""
    rng = np.random.default_rng(1)
    layers = {"embeddings": 0, **{str(i): i for i in range(1, 7)}}
    entry = {**model_entry("opt", "s"), "checkpoints": []}
    config = {
        "name": "every-layer",
        "layers": ["all"],
        "algorithms": ["a"],
        "figures": ["size", "stages", "algorithms", "layers"],
        "paper_tables": [],
        "accuracy": None,
        "models": {"opt-s": entry},
        "datasets": {"d1": {}},
    }
    assert figure_kinds(config) == ["size", "layers"]
    tables = {v: per_text(STEPS[v], LOSS[v], layers, rng) for v in ("trained", "rev-step0")}
    info = {"model": "opt-s", "family": "opt", "size": "s", "n_params": 1000, "dataset": "d1"}
    path = tmp_path / "d1.parquet"
    diff_table(tables, ["rev-step0"], ["a"], {"samples": 0, "seed": 0, "ci": 0.95}, info).to_parquet(path)
    out = tmp_path / "out"
    build([path], out, config)
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(
        report_files(config).values()
    )
    per_layer = pd.read_csv(out / "tables" / "layers.csv")
    assert per_layer["layer_index"].tolist() == list(range(7))
    assert per_layer["layer"].tolist() == list(layers)
    assert "- opt-s on d1: Diff-eRank over 7 layers from" in (out / "summary.md").read_text()


def test_named_stages_without_steps(tmp_path) -> None:
    """Table 10's kind: random init, the hub model and further-trained stages, in training order."""
    rng = np.random.default_rng(2)
    labels = {
        "init-s0": "random_init",
        "trained": "pretrained",
        "ft-further": "further",
        "ft-overfit": "overfit",
    }
    entry = {
        "family": "opt",
        "size": "m",
        "untrained": {"kind": "random_init", "seeds": [0]},
        "finetune": {"further": {}, "overfit": {}},
        "stage_labels": labels,
    }
    config = {
        "name": "stages",
        "layers": ["last"],
        "algorithms": ["a"],
        "figures": ["stages"],
        "paper_tables": [],
        "accuracy": None,
        "models": {"opt-m": entry},
        "datasets": {"d1": {}},
    }
    assert figure_kinds(config) == ["stages"]
    erank = {"init-s0": 30.0, "trained": 12.0, "ft-further": 10.0, "ft-overfit": 4.0}
    tables = {v: per_text(e, 5.0, {"last": 2}, rng) for v, e in erank.items()}
    info = {"model": "opt-m", "family": "opt", "size": "m", "n_params": 1000, "dataset": "d1"}
    path = tmp_path / "d1.parquet"
    diff_table(tables, ["init-s0"], ["a"], {"samples": 0, "seed": 0, "ci": 0.95}, info).to_parquet(path)
    build([path], tmp_path / "out", config)
    stages = pd.read_csv(tmp_path / "out" / "tables" / "stages.csv")
    assert stages["stage"].tolist() == list(labels.values())  # training order, not name order
    assert stages["step"].tolist()[0] == 0 and stages["step"].iloc[1:].isna().all()  # unknown, not 0
    assert "Spearman rho(step, Diff-eRank) 1.00" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "figures" / "stages.png").stat().st_size > 10_000


def test_named_layers_beside_all_are_not_counted_twice(tmp_path) -> None:
    """The demo's ``layers: [first, middle, last, all]``: a name and its index row are one hidden
    state; the summary counts depths, and footnotes only flag names that share one (middle = first)."""
    rng = np.random.default_rng(2)
    blocks = 6
    layers = {"first": 1, "middle": 3, "last": blocks, **{str(i): i for i in range(blocks + 1)}}
    entry = {**model_entry("opt", "s"), "checkpoints": []}
    config = {
        "name": "named-and-all",
        "layers": ["first", "middle", "last", "all"],
        "algorithms": ["a"],
        "figures": ["layers"],
        "paper_tables": [],
        "accuracy": None,
        "models": {"opt-s": entry},
        "datasets": {"d1": {}},
    }
    tables = {v: per_text(STEPS[v], LOSS[v], layers, rng) for v in ("trained", "rev-step0")}
    info = {"model": "opt-s", "family": "opt", "size": "s", "n_params": 1000, "dataset": "d1"}
    path = tmp_path / "d1.parquet"
    diff_table(tables, ["rev-step0"], ["a"], {"samples": 0, "seed": 0, "ci": 0.95}, info).to_parquet(path)
    build([path], tmp_path / "out", config)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "- opt-s on d1: Diff-eRank over 7 layers from" in summary
    assert "in models this shallow" not in summary  # first, middle and last are three depths here


def test_init_scale_sweep_table_figure_and_summary(tmp_path) -> None:
    """The init-scale experiment's report: one row per scale, in order, with the seeds' std, the
    figure, and a summary that states where the sign of Diff-eRank changes (here: between x0.25
    and x0.5, where M0's eRank, made to grow with the scale, passes the trained model's)."""
    rng = np.random.default_rng(2)
    layers = {"last": 3}
    scales = {"x0_25": 0.25, "x0_5": 0.5, "x1": 1.0, "x2": 2.0}
    config = {
        "name": "init-scale",
        "layers": ["last"],
        "algorithms": ["a"],
        "figures": ["init_scale"],
        "paper_tables": [],
        "accuracy": None,
        "models": {
            f"m-{k}": {
                "family": "m",
                "size": "s",
                "untrained": {"kind": "random_init", "seeds": [0, 1], "init_scale": s},
            }
            for k, s in scales.items()
        },
        "datasets": {"d1": {}},
    }
    assert figure_kinds(config) == ["init_scale"]
    paths = []
    for k, s in scales.items():
        # trained eRank 10; M0's grows with the init scale (6 * 2**log2(4s)): 6, 12, 24, 48
        tables = {"trained": per_text(10.0, 4.0, layers, rng)}
        tables |= {f"init-s{i}": per_text(6.0 * 4 * s * (1 + i / 20), 7.0, layers, rng) for i in (0, 1)}
        info = {"model": f"m-{k}", "family": "m", "size": "s", "n_params": 1000, "dataset": "d1",
                "init_scale": s}  # fmt: skip
        df = diff_table(tables, ["init-s0", "init-s1"], ["a"], {"samples": 0, "seed": 0, "ci": 0.95}, info)
        paths.append(tmp_path / f"{k}.parquet")
        df.to_parquet(paths[-1])
    out = tmp_path / "out"
    build(paths, out, config)
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(
        report_files(config).values()
    )
    table = pd.read_csv(out / "tables" / "init_scale.csv")
    assert table["init_scale"].tolist() == [0.25, 0.5, 1.0, 2.0]
    # Diff-eRank = eRank(M0) - eRank(M1), from the per-text entropies (mean of 2 seeds); per_text
    # scales every eRank by 1 + layer_index / 10 = 1.3
    expected = [1.3 * (6.0 * 4 * s * 1.025 - 10.0) for s in scales.values()]
    assert table["diff_erank"].tolist() == pytest.approx(expected, rel=0.02)
    assert (table["diff_erank_std"] > 0).all()
    summary = (out / "summary.md").read_text()
    assert "Sensitivity to the untrained model's init scale" in summary
    assert "the sign changes between x0.25 and x0.5" in summary
    assert (out / "figures" / "init_scale.png").stat().st_size > 10_000


def test_a_figure_registered_from_outside_is_validated_declared_and_drawn(report_run, tmp_path) -> None:
    """Adding a figure is one drawing function and its registration: the config accepts its name,
    the report rule declares its files and ``build`` draws it from the frame it names."""
    from diff_erank import figure_registry
    from diff_erank.config import _check_schema
    from diff_erank.errors import ConfigError
    from diff_erank.figures import _plt, save

    def reduced_loss_figure(main: pd.DataFrame, stem: Path, prov: dict) -> None:
        fig, ax = _plt().subplots()
        ax.plot(main["n_params"], main["reduced_loss"], marker="o")
        save(fig, stem, prov)

    out, config = report_run
    with pytest.raises(ConfigError, match=r"'figures.0' is 'reduced_loss'; valid choices: \['size'"):
        _check_schema({**_full_config(), "figures": ["reduced_loss"]})
    try:
        figure_registry.register_figure(
            "reduced_loss", reduced_loss_figure, frame="main", needs=lambda c: bool(c["models"])
        )
        _check_schema({**_full_config(), "figures": ["reduced_loss"]})  # a valid name now
        config = {**config, "figures": [*config["figures"], "reduced_loss"]}
        assert figure_kinds(config)[-1] == "reduced_loss"
        declared = set(report_files(config).values())
        new = {f"figures/reduced_loss.{ext}" for ext in ("png", "pdf", "provenance.json")}
        assert new <= declared
        diffs = sorted((out.parent / "diff").rglob("*.parquet"))
        accs = sorted((out.parent / "accuracy").rglob("*.json"))
        build(diffs, tmp_path / "out", config, accs)  # raises if a declared file is not written
        written = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
        assert written == declared
        assert (tmp_path / "out" / "figures" / "reduced_loss.png").read_bytes()[:4] == b"\x89PNG"
        with pytest.raises(ValueError, match="already registered"):
            figure_registry.register_figure("reduced_loss", reduced_loss_figure, frame="main")
    finally:
        figure_registry.FIGURES.pop("reduced_loss", None)
    assert "reduced_loss" not in figure_registry.figure_names()


def _full_config() -> dict:
    """A composed, valid run config (the demo experiment's)."""
    from diff_erank.config import load_config

    return load_config(REPO / "conf", ["experiment=demo"])


def test_summary_keeps_families_apart_and_describes_the_run_made(report_run) -> None:
    from diff_erank.report import main_notes

    out, _ = report_run
    summary = (out / "summary.md").read_text()
    assert "All families together" not in summary  # two families (opt, neox): no pooled trend
    assert "not comparable across families" in summary
    ran = "This run measured 4 models (neox: neox-s, neox-l; opt: opt-s, opt-l) on 2 datasets (d1, d2)."
    assert ran in summary
    # conf/experiment/ci.yaml composes zoo-opt-xs, zoo-opt-s, zoo-neox-xs on topics, "a smaller demo for CI"
    main = pd.DataFrame(
        {
            "model": ["zoo-opt-xs", "zoo-opt-s", "zoo-neox-xs"],
            "family": ["zoo-opt", "zoo-opt", "zoo-neox"],
            "size": ["xs", "s", "xs"],
            "n_params": [82_464, 239_000, 144_000],
            "dataset": "topics",
            "diff_erank": [15.0, 20.0, 7.0],
            "reduced_loss": [1.5, 2.0, 2.1],
        }
    )
    ci = {"name": "ci", "description": "a smaller demo for CI", "datasets": {"topics": {}}}
    ci["models"] = {m: {} for m in main["model"]}
    as_written = summarise(main, pd.DataFrame(), config=ci)
    assert "Experiment `ci`: a smaller demo for CI. This run measured 3 models" in as_written
    other = main[main["model"] != "zoo-opt-s"]  # ci with a model taken out: not the experiment as written
    made = summarise(other, pd.DataFrame(), config={**ci, "models": {m: {} for m in other["model"]}})
    assert "smaller demo" not in made
    ran = "This run measured 2 models (zoo-neox: zoo-neox-xs; zoo-opt: zoo-opt-xs) on 1 dataset (topics)."
    assert ran in made
    # footnotes only for the columns there are: no bootstrap interval, no note about it
    notes = " ".join(main_notes(main.assign(diff_erank_std=0.1)))
    assert "ci_low" not in notes and "diff_erank_std" in notes


# -- figures: what a reviewer looks for, read off the drawn matplotlib objects ------------------------
def _size_rows(order: list[tuple[str, str, float]], datasets=("d1", "d2")) -> pd.DataFrame:
    rows = []
    for ds in datasets:
        for k, (fam, size, n) in enumerate(order):
            rows.append({"model": f"{fam}-{size}", "family": fam, "size": size, "n_params": n, "dataset": ds,
                         "diff_erank": 10.0 + k, "ci_low": 9.0 + k, "ci_high": 11.0 + k,
                         "reduced_loss": 2.0 + k / 10})  # fmt: skip
    return pd.DataFrame(rows)


def _series_colors(fig) -> dict[str, tuple]:
    """Colour of each labelled data line (a family's series), over every panel."""
    from matplotlib.colors import to_rgba

    out: dict[str, set] = {}
    for ax in fig.axes:
        for c in ax.containers:  # an errorbar series: its label is the container's, its line the first
            out.setdefault(c.get_label(), set()).add(to_rgba(c.lines[0].get_color()))
    assert all(len(c) == 1 for c in out.values()), out  # one colour per family in every panel
    return {k: next(iter(v)) for k, v in out.items()}


def test_size_figure_two_panels_and_a_colour_per_family_whatever_the_run(tmp_path) -> None:
    import matplotlib.pyplot as plt

    from diff_erank.figures import size_fig

    run1 = _size_rows([("opt", "125m", 125e6), ("opt", "1.3b", 1.3e9), ("pythia", "1.4b", 1.4e9)])
    # another run: other families, listed in another order
    run2 = _size_rows([("pythia", "1.4b", 1.4e9), ("my-family", "1b", 1e9), ("opt", "1.3b", 1.3e9),
                       ("cerebras-gpt", "1.3b", 1.3e9)])  # fmt: skip
    fig1, fig2 = size_fig(run1), size_fig(run2)
    c1, c2 = _series_colors(fig1), _series_colors(fig2)
    assert c1["opt"] == c2["opt"] and c1["pythia"] == c2["pythia"]
    assert len(set(c2.values())) == 4  # four families, four colours
    # two panels per dataset, Diff-eRank above reduced loss, and no twin y-axis
    visible = [ax for ax in fig1.axes if ax.get_visible()]
    assert len(visible) == 4
    assert sorted(ax.get_ylabel() for ax in visible) == ["Diff-eRank"] * 2 + ["reduced loss (nats)"] * 2
    # OPT-1.3B and Cerebras-GPT-1.3B, one size, are drawn side by side, not on one spot
    xs = {c.get_label(): float(c.lines[0].get_xdata()[-1]) for c in fig2.axes[0].containers}
    assert xs["opt"] != xs["cerebras-gpt"] and abs(np.log10(xs["opt"] / xs["cerebras-gpt"])) < 0.1
    plt.close("all")


def test_stages_figure_has_error_bars_and_no_lone_dataset_legend(report_run) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from diff_erank.figures import stages_fig

    stages = pd.read_csv(report_run[0] / "tables" / "stages.csv")
    full = pd.read_csv(report_run[0] / "tables" / "all.csv")
    rows = full.query("role == 'stage' and layer == 'last' and algorithm == 'a'")
    cols = ["model", "dataset", "variant", "family", "n_params", "ci_low", "ci_high"]
    stages = stages.merge(rows[cols], on=["model", "dataset", "variant"])
    stages["order"] = stages["step"]
    one = stages[stages["dataset"] == "d1"]
    fig = stages_fig(one)
    diff_panels = [ax for ax in fig.axes if ax.get_ylabel() == "Diff-eRank"]
    bars = [c for ax in diff_panels for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars and all(c.has_yerr for c in bars)
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert not any("dataset" in t for t in texts)
    two = stages_fig(stages)
    assert {"dataset: d1", "dataset: d2"} <= {t.get_text() for leg in two.legends for t in leg.get_texts()}
    plt.close("all")


def test_algorithm_b_is_drawn_over_a_and_layers_can_share_a_scale(report_run) -> None:
    import matplotlib.pyplot as plt

    from diff_erank.figures import algorithms_fig, layers_fig

    out, _ = report_run
    full = pd.read_csv(out / "tables" / "all.csv")
    last = full[(full["role"] == "untrained") & (full["layer"] == "last")]
    fig = algorithms_fig(last)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")}
    a, b = lines["opt: algorithm (a)"], lines["opt: algorithm (b)"]
    assert b.get_zorder() > a.get_zorder() and b.get_markerfacecolor() == "none"
    assert b.get_markersize() > a.get_markersize()  # an open ring around (a)'s filled marker
    layers = pd.read_csv(out / "tables" / "layers.csv").merge(
        full[["model", "family"]].drop_duplicates(), on="model"
    )
    shared = layers_fig(layers, share_y=True)
    tops = [ax for ax in shared.axes if ax.get_visible() and ax.get_ylabel() != "Diff-eRank"]
    tops = [ax for ax in tops if any(ln.get_linestyle() == "--" for ln in ax.get_lines())]  # eRank panels
    assert len(tops) == 4 and len({ax.get_ylim() for ax in tops}) == 1
    own = layers_fig(layers)
    tops = [ax for ax in own.axes if any(ln.get_linestyle() == "--" for ln in ax.get_lines())]
    assert len({ax.get_ylim() for ax in tops}) > 1
    # tick labels name the layers, one name per line: first / middle over the index they share
    labels = {t.get_text() for ax in own.axes for t in ax.get_xticklabels()}
    assert "first\nmiddle\n(1)" in labels
    plt.close("all")


def test_the_html_reports_landing_page_names_the_run_and_its_numbers(report_run) -> None:
    from jinja2 import Environment

    out, _ = report_run
    rst = (out / "report.rst").read_text()
    assert rst.startswith("Diff-eRank: experiment fixture\n==============================\n")
    csv = pd.read_csv(out / "tables" / "diff_erank.csv")
    row = csv[(csv["model"] == "neox-l") & (csv["dataset"] == "d2")].iloc[0]
    # three significant digits, as the summary gives them
    cell = f"{row.diff_erank:.1f} [{row.ci_low:.1f}, {row.ci_high:.1f}]"
    assert f"   * - neox-l\n     - d2\n     - {cell}" in rst
    assert "3 of 12 texts cut at 64 tokens" in rst
    # Snakemake renders the page with Jinja, the categories it found: only those are listed
    from types import SimpleNamespace

    cats = [SimpleNamespace(name=n) for n in ("Summary", "Fig. 1 / Table 6: size")]
    env = Environment(trim_blocks=True, lstrip_blocks=True)  # as snakemake.report renders it
    page = env.from_string(rst).render(categories=cats, snakemake=None, files=[])
    listed = [line[2:] for line in page.splitlines() if line.startswith("- ")]
    assert listed == ["Fig. 1 / Table 6: size", "Summary"]
    import docutils.core

    html = docutils.core.publish_parts(page, writer_name="html")["html_body"]
    assert "<table" in html and "neox-l" in html and "System Message" not in html  # valid reST
