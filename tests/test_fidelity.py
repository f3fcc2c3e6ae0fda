"""Fidelity to the paper's protocol: which rows each experiment fills, which accuracy metric each
paper number is, and that Table 10's overfitted stage never sees the evaluated questions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from conftest import REPO
from paper_fixtures import make_datasets

from diff_erank.config import load_config
from diff_erank.data import prepare_texts


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
    train_texts = prepare_texts(_local(train, files["openbookqa-train"]))["text"]
    eval_texts = prepare_texts(_local(evaluated, files["openbookqa"]))["text"]
    assert len(train_texts) == len(eval_texts) == 24
    assert not set(train_texts) & set(eval_texts)
    stems = [json.loads(line)["question_stem"] for line in Path(files["openbookqa"]).read_text().splitlines()]
    assert not any(stem in text for stem in stems for text in train_texts)
