"""The paper's experiments: every DAG resolves offline, and each kind runs end to end on stand-ins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import EMPTY_EXPERIMENTS, REPO
from helpers.paper import local_source, make_datasets, make_models, make_tasks
from helpers.workflow import snakemake, texts_of

from diff_erank.config import load_config
from diff_erank.storage import read_provenance

pytestmark = pytest.mark.slow

OPT = 5
# jobs = prepare (datasets) + dump and erank (one job each per model x measured dataset, for all the
#        model's variants, once per cached measurement) + diff (models x datasets: the run folder's
#        view of the cached tables and Diff-eRank) + accuracy (models x evaluated variants)
#        + finetune + resolved_config + report + all
EXPECTED_JOBS = {
    "fig1": 4 + 2 * (OPT * 4) + OPT * 4 + 3,
    "table1": 2 + 2 * (OPT * 2) + OPT * 2 + OPT + 3,
    "fig3": 1 + 2 * 24 + 24 + 24 + 3,
    "table9": 1 + 2 * OPT + OPT + 3,
    "table4": 1 + 2 * OPT + OPT + 3,
    # the 1,000 and 5,000 samples are the first texts of the 10,000 one: prepared, dumped and
    # measured once, viewed three times
    "table11": 1 + 2 + 3 + 3,
    "table10": 3 + 2 + 1 + 4 + 2 + 3,
    "pythia-dynamics": 2 + 2 * (3 * 2) + 3 * 2 + 3,
    "pythia-v1": 4 + 2 * (10 * 4) + 10 * 4 + 3,
    # the demo at full length: corpus, tokenizer, 8 trainings, fetch + convert of SmolLM2's GGUF,
    # 2 prepare, (8 + 1) models x 2 sets x (dump, erank, diff), resolved_config + report + all
    "demo-full": 1 + 1 + 8 + 2 + 2 + 3 * (9 * 2) + 3,
    # multi-modal: mm_prepare (datasets) + convert_minigpt (MiniGPT-v2's published files)
    # + mm_erank (models x datasets x rotations) + resolved_config + mm_report + all
    "table2": 2 + 1 + 3 * 2 * 2 + 1 + 1 + 1,
    # the paper: the experiments above but pythia-dynamics, one DAG. prepare: the 7 distinct texts;
    # dump and erank: 82 distinct model x dataset sets (fig1 20, fig3 24 - 5 OPT, pythia-v1 40 - 8 of
    # fig3, table1 10, table10's staged OPT-1.3b 1; table4, table9, table11 share fig1's); diff 108,
    # accuracy 33, finetune 2 and report 8 as alone; 9 resolved_config, 16 multi-modal (table2 less
    # its all), paper_report + all
    "paper": 7 + 2 * 82 + 108 + 33 + 2 + 9 + 8 + 16 + 2,
}


@pytest.mark.parametrize(("experiment", "jobs"), sorted(EXPECTED_JOBS.items()))
def test_dry_run_resolves_the_full_dag_offline(experiment: str, jobs: int, tmp_path: Path) -> None:
    r = snakemake(tmp_path, "-n", overrides=f"[experiment={experiment}]")
    assert r.returncode == 0, r.stderr[-3000:]
    total = re.search(r"^total\s+(\d+)$", r.stdout + r.stderr, re.M)
    assert total and int(total.group(1)) == jobs
    assert not any(tmp_path.iterdir()) or not (tmp_path / "results").exists()  # a dry run writes nothing


def test_every_paper_table_has_an_experiment() -> None:
    from diff_erank.reproduce import reference

    tables = set(reference()["table"])
    covered = set()
    for f in (REPO / "conf" / "experiment").glob("*.yaml"):
        if f.stem in EMPTY_EXPERIMENTS:
            continue
        covered |= set(load_config(REPO / "conf", [f"experiment={f.stem}"])["paper_tables"])
    assert tables <= covered, tables - covered


@pytest.fixture(scope="module")
def standins(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("standins")
    files = make_datasets(root)
    return {
        "files": files,
        "tasks": make_tasks(root, files),
        "opt": make_models(root, tokenizer_dir, "opt"),
        "neox": make_models(root, tokenizer_dir, "gpt_neox"),
    }


COMMON = ["model.max_length=64", "model.batch_tokens=512", "bootstrap.samples=50", "model.dtype=float32"]


def run(tmp_path: Path, overrides: list[str]) -> Path:
    r = snakemake(tmp_path, overrides=overrides + COMMON)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    name = next(o.split("=")[1] for o in overrides if o.startswith("experiment="))
    return tmp_path / "results" / name


def test_benchmark_experiment_with_accuracy(standins, tmp_path: Path) -> None:
    """Table 1's kind: size sweep, question + answer texts, lm-eval accuracy, reproduction report."""
    f, (a, b) = standins["files"], standins["opt"]
    out = run(
        tmp_path,
        [
            "experiment=table1",
            "~models.opt-2_7b",
            "~models.opt-6_7b",
            "~models.opt-13b",
            f"models.opt-125m.source={a}",
            f"models.opt-1_3b.source={b}",
            *local_source("openbookqa", f["openbookqa"]),
            *local_source("piqa", f["piqa"]),
            f"accuracy.include_path={standins['tasks']}",
            "accuracy.include_defaults=false",
        ],
    )
    texts = texts_of(out, "opt-125m", "openbookqa")["text"]
    assert texts.str.len().gt(20).all() and len(texts) == 24
    acc = pd.read_csv(out / "tables" / "accuracy.csv")
    assert set(acc["task"]) == {"openbookqa", "piqa"} and acc["accuracy"].between(0, 1).all()
    rep = pd.read_csv(out / "tables" / "reproduction.csv")
    # every paper row of Table 1 for the two models this run keeps (the removed ones are out of scope)
    assert set(rep["table"]) == {"table1"} and len(rep) == 12 and set(rep["size"]) == {"125m", "1.3b"}
    have = rep
    assert have["ours"].notna().all()
    row = have[
        (have["metric"] == "diff_erank") & (have["dataset"] == "piqa") & (have["size"] == "125m")
    ].iloc[0]
    main = pd.read_csv(out / "tables" / "diff_erank.csv").set_index(["model", "dataset"])
    assert row["ours"] == pytest.approx(main.loc[("opt-125m", "piqa"), "diff_erank"])
    assert row["rel_diff"] == pytest.approx((row["ours"] - row["paper"]) / abs(row["paper"]))
    assert "Reproduction report" in (out / "reproduction.md").read_text()


def test_training_stages_experiment(standins, tmp_path: Path) -> None:
    """Table 10's kind: further training and overfitting as rules, stage labels, accuracy per stage."""
    f, (a, _) = standins["files"], standins["opt"]
    out = run(
        tmp_path,
        [
            "experiment=table10",
            f"models.opt-1_3b.source={a}",
            *local_source("openbookqa", f["openbookqa"]),
            *local_source("wikipedia", f["wiki"]),
            *local_source("openbookqa-train", f["openbookqa-train"]),
            "datasets.wikipedia.max_texts=30",
            "models.opt-1_3b.finetune.further.steps=4",
            "models.opt-1_3b.finetune.further.max_length=64",
            "models.opt-1_3b.finetune.overfit.steps=30",
            "models.opt-1_3b.finetune.overfit.lr=3e-3",
            "models.opt-1_3b.finetune.overfit.max_length=64",
            f"accuracy.include_path={standins['tasks']}",
            "accuracy.include_defaults=false",
        ],
    )
    rep = pd.read_csv(out / "tables" / "reproduction.csv").set_index(["metric", "variant"])
    assert rep["ours"].notna().all(), rep[rep["ours"].isna()]
    assert rep.loc[("diff_erank", "random_init"), "ours"] == 0
    # the overfitted stage trained on the train split's texts (disjoint from the evaluated ones)
    stages = [json.loads(p.read_text()) for p in (out.parent / "cache" / "finetuned").glob("*/finetune.json")]
    (facts,) = [f for f in stages if f["recipe"]["dataset"] == "openbookqa-train"]  # in the cache, by recipe
    assert facts["recipe"]["dataset"] == "openbookqa-train" and facts["finetune"]["texts"] == 24
    assert facts["finetune"]["final_loss"] < facts["finetune"]["first_loss"]
    assert not (out / "erank" / "opt-1_3b" / "wikipedia").exists()  # training texts only


def test_sample_size_experiment(standins, tmp_path: Path) -> None:
    """Table 11's kind: three sample sizes of one dataset, and the population std over them."""
    f, (a, _) = standins["files"], standins["opt"]
    src = f["wiki"]
    out = run(
        tmp_path,
        [
            "experiment=table11",
            f"models.opt-1_3b.source={a}",
            *local_source("wikipedia-10000", src),
            "datasets.wikipedia-10000.max_texts=40",
            *local_source("wikipedia-5000", src),
            "datasets.wikipedia-5000.max_texts=20",
            *local_source("wikipedia-1000", src),
            "datasets.wikipedia-1000.max_texts=10",
        ],
    )
    rep = pd.read_csv(out / "tables" / "reproduction.csv")
    d = rep[rep["metric"] == "diff_erank"].set_index("variant")["ours"]
    assert d.notna().all() and len(d) == 3
    std = rep[rep["metric"] == "diff_erank_std"]["ours"].iloc[0]
    assert std == pytest.approx(np.std(d.to_numpy(), ddof=0))
    # the 10- and 20-text samples are the first texts of the 40-text one: viewed, not dumped again
    small = read_provenance(out / "erank" / "opt-1_3b" / "wikipedia-1000" / "trained.parquet")
    big = read_provenance(out / "erank" / "opt-1_3b" / "wikipedia-10000" / "trained.parquet")
    assert small["cache"]["first"] == 10 and small["cache"]["table"] == big["cache"]["table"]
    assert small["dump"]["n_texts_in"] == 10 and big["dump"]["n_texts_in"] == 40
    assert len(list((tmp_path / "results" / "cache" / "erank").rglob("*.parquet"))) == 2  # trained, init


def test_paper_run_measures_shared_pairs_once_and_reports_every_row(standins, tmp_path: Path) -> None:
    """experiment=paper with two experiments on the same models and dataset (Tables 4 and 9: OPT x
    dolly-15k at four layers and at the last): one dump and one eRank job per model, at the union of
    the layers, two run folders each with its own report, and the paper's report over all rows."""
    f, (a, b) = standins["files"], standins["opt"]
    out = run(
        tmp_path,
        [
            "experiment=paper",
            "experiments=[table4,table9]",
            "~models.opt-2_7b",
            "~models.opt-6_7b",
            "~models.opt-13b",
            f"models.opt-125m.source={a}",
            f"models.opt-1_3b.source={b}",
            *local_source("dolly-15k", f["dolly"]),
        ],
    )
    cache = tmp_path / "results" / "cache" / "erank"
    entries = sorted(p.name for p in cache.glob("*/*") if p.is_dir() and not p.name.startswith("."))
    assert entries == ["embeddings+first+middle+last"] * 2  # (each a link to its hidden data folder)
    own = {e: pd.read_csv(out / e / "tables" / "reproduction.csv") for e in ("table4", "table9")}
    for e, rep in own.items():
        assert (out / e / "reproduction.md").is_file() and rep["ours"].notna().all(), e
    views = read_provenance(out / "table9" / "erank" / "opt-125m" / "dolly-15k" / "trained.parquet")
    assert views["cache"]["layers"] == ["last"] and "embeddings+first+middle+last" in views["cache"]["table"]
    rows = pd.read_csv(out / "tables" / "reproduction.csv", keep_default_na=False)
    assert len(rows) == 259 and (out / "reproduction.html").is_file()
    run_rows = rows[rows["experiment"] != ""]
    assert set(run_rows["table"]) == {"table4", "table6", "table9"}
    assert set(run_rows["status"]) <= {"reproduced", "differs"} and len(run_rows) == 2 * 3 + 2 * 2 + 2 * 2
    # each row's value is the one its first claiming experiment reported
    t9 = own["table9"].fillna({"variant": ""}).set_index(["table", "size", "metric", "variant"])["ours"]
    for r in run_rows[run_rows["table"] == "table9"].itertuples():
        assert float(r.ours) == pytest.approx(t9[(r.table, r.size, r.metric, r.variant)])
    left = rows.loc[rows["experiment"] == "", "status"]  # Table 10's two stages: by design, run or not
    assert left.value_counts().to_dict() == {"not run": 259 - 14 - 6, "not reproducible by design": 6}
    assert "## Summary per table" in (out / "reproduction.md").read_text()


def test_revision_trajectory_experiment(standins, tmp_path: Path) -> None:
    """The Pythia dynamics kind: published step0 as M0 and stepN revisions as stages."""
    f, (a, b) = standins["files"], standins["neox"]
    out = run(
        tmp_path,
        [
            "experiment=pythia-dynamics",
            "~models.pythia-1_4b",
            f"models.pythia-160m.source={a}",
            f"models.pythia-410m.source={b}",
            "models.pythia-160m.checkpoints=[step5]",
            "models.pythia-410m.checkpoints=[step5]",
            *local_source("dolly-15k", f["dolly"]),
            *local_source("hh-rlhf", f["hh"]),
        ],
    )
    stages = pd.read_csv(out / "tables" / "stages.csv")
    assert set(stages["variant"]) == {"rev-step0", "rev-step5", "trained"}
    assert len(stages) == 2 * 2 * 3 and np.isfinite(stages["erank_trained"]).all()
    texts = texts_of(out, "pythia-160m", "dolly-15k")
    assert texts["text"].str.len().gt(0).all()  # dolly's empty contexts were filtered out
    rep = pd.read_csv(out / "tables" / "reproduction.csv")
    have = rep[rep["ours"].notna()]
    assert set(have["metric"]) == {"loss", "normalized_matrix_entropy"} and set(have["size"]) == {
        "160m",
        "410m",
    }
