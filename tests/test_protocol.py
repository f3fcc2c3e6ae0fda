"""Fidelity to the paper's protocol: which rows each experiment fills, which accuracy metric each
paper number is, and that Table 10's overfitted stage never sees the evaluated questions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import EMPTY_EXPERIMENTS, REPO
from helpers.paper import make_datasets, synthetic_results

from diff_erank.config import load_config
from diff_erank.data import prepare_texts
from diff_erank.entries import DatasetEntry


def _local(spec: dict, path: str) -> dict:
    spec = copy.deepcopy(spec)
    spec["source"] = {"kind": "jsonl", "data_files": path, "split": "train"}
    return spec


def test_overfitted_stage_trains_on_texts_disjoint_from_the_evaluation(tmp_path: Path) -> None:
    """Table 10: the overfit recipe's texts share no question with the measured and scored split."""
    import lm_eval
    import yaml

    cfg = load_config(REPO / "conf", ["experiment=table10"])
    recipe = cfg["models"]["opt-1_3b"]["finetune"]["overfit"]
    train, evaluated = cfg["datasets"][recipe["dataset"]], cfg["datasets"]["openbookqa"]
    assert recipe["dataset"] != "openbookqa" and train.get("measure") is False
    # lm-eval scores OpenBookQA's test split (read from lm-eval's own task file) and so do we
    task = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/openbookqa/openbookqa.yaml").read_text())
    assert evaluated["source"]["path"] == train["source"]["path"] == task["dataset_path"]
    assert evaluated["source"]["split"] == task["test_split"] == "test"
    assert train["source"]["split"] == task["training_split"] == "train"
    # the same text recipe on generated rows of the two splits gives disjoint texts and questions
    files = make_datasets(tmp_path)
    train_texts = prepare_texts(DatasetEntry.from_spec(_local(train, files["openbookqa-train"])))["text"]
    eval_texts = prepare_texts(DatasetEntry.from_spec(_local(evaluated, files["openbookqa"])))["text"]
    assert len(train_texts) == len(eval_texts) == 24
    assert not set(train_texts) & set(eval_texts)
    stems = [json.loads(line)["question_stem"] for line in Path(files["openbookqa"]).read_text().splitlines()]
    assert not any(stem in text for stem in stems for text in train_texts)


EXPERIMENTS = sorted(
    f.stem for f in (REPO / "conf" / "experiment").glob("*.yaml") if f.stem not in EMPTY_EXPERIMENTS
)

# Rows of paper_reference.csv each experiment fills, per table, counted by hand from the CSV:
# e.g. v1_table11 = Pythia 10 sizes x 4 datasets x (H/log d, loss); fig3's Pythia = 8 sizes x dolly x 2.
FILLS = {
    "pythia-v1": {"v1_table11": 80},
    "pythia-dynamics": {"v1_table11": 12},
    "fig1": {"table6": 40, "table9": 10},
    "fig3": {"table1": 5, "table6": 10, "table7": 12, "table8": 21, "table9": 10, "v1_table11": 16},
    "table1": {"table1": 30},
    "table10": {"table1": 3, "table10": 12},
    "table4": {"table4": 15, "table6": 10, "table9": 10},
    "table9": {"table6": 10, "table9": 10},
    "table11": {"table11": 4},
    "table2": {"table2": 28, "table3": 7},
    "demo": {},
    "demo-full": {},
    "ci": {},
    "init-scale": {},
    "paper": {},  # its experiments claim the rows, each in its own folder (tests/test_paper.py)
}


def _fillable_and_claimed(experiment: str):
    from diff_erank.reproduce import KEY, in_scope, reference

    cfg = load_config(REPO / "conf", [f"experiment={experiment}"])
    ref = reference()
    ref["variant"] = ref["variant"].fillna("")
    keys = set(synthetic_results(cfg)[KEY].apply(tuple, axis=1))
    fillable = ref[ref[KEY].apply(tuple, axis=1).isin(keys)]
    claimed = ref[ref["table"].isin(cfg["paper_tables"]) & in_scope(ref, cfg)]
    return fillable, claimed


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_claims_exactly_the_rows_it_fills(experiment: str) -> None:
    fillable, claimed = _fillable_and_claimed(experiment)
    assert fillable.groupby("table").size().to_dict() == FILLS[experiment]
    assert sorted(claimed.index) == sorted(fillable.index)


def test_every_v1_pythia_row_has_an_experiment() -> None:
    fillable, _ = _fillable_and_claimed("pythia-v1")
    from diff_erank.reproduce import reference

    v1 = reference().query("table == 'v1_table11'")
    assert set(v1.index) == set(fillable.index) and len(v1) == 80


# -- accuracy: which lm-eval metric each paper number is ------------------------------------------
# The model cards' zero-shot (PIQA, WinoGrande), read off the cards (Cerebras-GPT: "0-shot
# Evaluation"; OpenELM: "Zero-Shot"), in percent for OpenELM as the card prints them.
CARDS = {
    ("cerebras-gpt", "111m"): (0.594, 0.488),
    ("cerebras-gpt", "256m"): (0.613, 0.511),
    ("cerebras-gpt", "590m"): (0.627, 0.498),
    ("cerebras-gpt", "1.3b"): (0.664, 0.521),
    ("cerebras-gpt", "2.7b"): (0.701, 0.559),
    ("cerebras-gpt", "6.7b"): (0.739, 0.602),
    ("cerebras-gpt", "13b"): (0.766, 0.646),
    ("openelm", "270m"): (69.75, 53.91),
    ("openelm", "450m"): (72.31, 58.01),
    ("openelm", "1.1b"): (75.57, 61.72),
    ("openelm", "3b"): (78.24, 65.51),
}


def test_tables_7_8_accuracies_are_the_model_cards_means() -> None:
    from diff_erank.reproduce import reference

    rows = reference().query("table in ['table7', 'table8'] and metric == 'accuracy'")
    assert len(rows) == len(CARDS) == 11
    for r in rows.itertuples():
        piqa, wino = CARDS[(r.family, r.size)]
        scale = 100 if r.family == "openelm" else 1
        assert r.value == pytest.approx((piqa + wino) / 2 / scale, abs=5.1e-5), (r.family, r.size)


def test_every_paper_accuracy_has_a_metric_with_evidence() -> None:
    from diff_erank.reproduce import accuracy_metrics, reference

    ref = reference()
    wanted = set(
        ref.loc[ref["metric"] == "accuracy", ["table", "dataset"]].itertuples(index=False, name=None)
    )
    choice = accuracy_metrics()
    assert set(choice[["table", "dataset"]].itertuples(index=False, name=None)) == wanted
    assert set(choice["metric"]) <= {"acc", "acc_norm"} and choice["evidence"].str.len().gt(40).all()


def test_each_paper_accuracy_is_compared_with_its_own_metric() -> None:
    """Table 1's openbookqa is acc_norm, Table 8's winogrande+piqa acc; both values are kept."""
    from diff_erank.reproduce import compare, long_results, reference, render

    cfg = {
        "models": {
            "opt-125m": {"family": "opt", "size": "125m"},
            "c-111m": {"family": "cerebras-gpt", "size": "111m"},
        },
        "datasets": {},
    }
    accuracy = pd.DataFrame(
        [
            ("opt-125m", "trained", "openbookqa", 0.17, 0.28),
            ("c-111m", "trained", "winogrande+piqa", 0.54, 0.55),
        ],
        columns=["model", "variant", "task", "accuracy", "accuracy_norm"],
    )
    full = pd.DataFrame(columns=["model", "dataset", "role", "variant", "layer", "algorithm", "diff_erank"])
    ours = long_results(full, accuracy, cfg)
    cmp = compare(ours, ["table1", "table8"], reference())
    acc = cmp[(cmp["metric"] == "accuracy") & cmp["size"].isin(["125m", "111m"])]
    acc = acc[acc["dataset"] != "piqa"].set_index(["table", "size"])
    assert (
        acc.loc[("table1", "125m"), "ours"] == 0.28
        and acc.loc[("table1", "125m"), "lm_eval_metric"] == "acc_norm"
    )
    assert (
        acc.loc[("table8", "111m"), "ours"] == 0.54 and acc.loc[("table8", "111m"), "lm_eval_metric"] == "acc"
    )
    assert (
        acc.loc[("table1", "125m"), "ours_acc"] == 0.17
        and acc.loc[("table8", "111m"), "ours_acc_norm"] == 0.55
    )
    text = render(cmp, pd.DataFrame(), "fixture")
    assert "table1, openbookqa: **acc_norm**" in text and "table8, winogrande+piqa: **acc**" in text


def test_accuracy_records_both_metrics_as_lm_eval_computes_them(tmp_path, tiny_opt) -> None:
    """Our HFLM-on-the-loaded-model run against lm-eval's own loading of the same directory."""
    import json

    import lm_eval
    from helpers.models import resolved
    from helpers.paper import make_tasks
    from lm_eval.tasks import TaskManager

    from diff_erank.accuracy import evaluate

    tasks = make_tasks(tmp_path, make_datasets(tmp_path))
    acc_cfg = {
        "tasks": ["openbookqa", "winogrande"],
        "include_path": tasks,
        "include_defaults": False,
        "limit": 8,
        "batch_size": 4,
        "combine": {"winogrande+openbookqa": ["winogrande", "openbookqa"]},
    }
    rec = evaluate(resolved(tiny_opt), "trained", acc_cfg, tmp_path / "acc.json", device="cpu")
    theirs = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_opt / 'main'},dtype=float32",
        tasks=["openbookqa", "winogrande"],
        task_manager=TaskManager(include_path=tasks, include_defaults=False),
        limit=8,
        device="cpu",
        bootstrap_iters=0,
    )["results"]
    assert rec["accuracy"]["openbookqa"] == pytest.approx(theirs["openbookqa"]["acc,none"])
    assert rec["accuracy_norm"]["openbookqa"] == pytest.approx(theirs["openbookqa"]["acc_norm,none"])
    assert rec["accuracy"]["winogrande"] == pytest.approx(theirs["winogrande"]["acc,none"])
    assert rec["accuracy_norm"]["winogrande"] is None  # our local winogrande, like lm-eval's, has none
    mean_norm = (theirs["openbookqa"]["acc_norm,none"] + theirs["winogrande"]["acc,none"]) / 2
    assert rec["combined_norm"]["winogrande+openbookqa"] == pytest.approx(mean_norm)
    assert json.loads((tmp_path / "acc.json").read_text())["combined_norm"] == rec["combined_norm"]
