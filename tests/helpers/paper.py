"""Local stand-ins for the paper's hub models, datasets and lm-eval tasks (same columns/shapes).

Each experiment config of the paper is run end to end with its models swapped for tiny local
ones and its datasets for local files with the hub datasets' columns, through Hydra overrides,
so the real configs (text recipes, stages, sample sizes) are what is tested.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd

from diff_erank.corpus import stdlib_paragraphs


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_datasets(root: Path, n: int = 24) -> dict[str, str]:
    """jsonl files with the columns of dolly, wikipedia, hh-rlhf, openbookqa, piqa, winogrande."""
    rng = random.Random(0)
    text = stdlib_paragraphs(max_chars=1200)  # the docstrings as a bare interpreter has them
    paras, docs = text["topics"][:200], text["docstrings"][:200]
    out = {}
    out["dolly"] = _jsonl(
        root / "dolly.jsonl",
        [{"context": p if i % 5 else "", "instruction": "x"} for i, p in enumerate(paras[: n + 6])],
    )
    out["wiki"] = _jsonl(root / "wiki.jsonl", [{"text": p, "title": "t"} for p in docs[: 3 * n]])
    out["hh"] = _jsonl(
        root / "hh.jsonl",
        [{"chosen": f"Human: {p[:80]} Assistant: {p[80:]}", "rejected": "no"} for p in paras[n : 2 * n]],
    )
    obqa, piqa, wino = [], [], []
    for i, p in enumerate(paras[2 * n : 3 * n]):
        words = p.split()[:20]  # short enough for the tiny models' 64 positions
        half = len(words) // 2
        stem, correct = " ".join(words[:half]), " ".join(words[half:])
        wrong = [" ".join(rng.sample(words, max(1, len(words) - half))) for _ in range(3)]
        labels = ["A", "B", "C", "D"]
        k = i % 4
        texts = [*wrong[:k], correct, *wrong[k:]]
        obqa.append(
            {
                "id": str(i),
                "question_stem": stem,
                "choices": {"text": texts, "label": labels},
                "answerKey": labels[k],
            }
        )
        piqa.append(
            {
                "goal": stem,
                "sol1": correct if i % 2 == 0 else wrong[0],
                "sol2": wrong[0] if i % 2 == 0 else correct,
                "label": i % 2,
            }
        )
        wino.append(
            {
                "sentence": f"{stem} _ {words[-1]}",
                "option1": words[0],
                "option2": words[1],
                "answer": "1" if i % 2 == 0 else "2",
            }
        )
    out["openbookqa"] = _jsonl(root / "openbookqa.jsonl", obqa)
    # a train split of other questions (OpenBookQA's train split is disjoint from its test split)
    train = []
    for i, p in enumerate(paras[3 * n : 4 * n]):
        words = p.split()[:20]
        half = len(words) // 2
        texts = [" ".join(words[half:]), *(" ".join(rng.sample(words, half)) for _ in range(3))]
        train.append(
            {
                "id": f"train-{i}",
                "question_stem": " ".join(words[:half]),
                "choices": {"text": texts, "label": ["A", "B", "C", "D"]},
                "answerKey": "A",
            }
        )
    out["openbookqa-train"] = _jsonl(root / "openbookqa-train.jsonl", train)
    out["piqa"] = _jsonl(root / "piqa.jsonl", piqa)
    out["winogrande"] = _jsonl(root / "winogrande.jsonl", wino)
    return out


def make_tasks(root: Path, files: dict[str, str]) -> str:
    """lm-eval task YAMLs named like the real tasks, reading the local files."""
    tasks = root / "tasks"
    tasks.mkdir()
    specs = {
        "openbookqa": ("{{question_stem}}", "{{choices.text}}", "{{choices.label.index(answerKey)}}"),
        "piqa": ("Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}", "{{label}}"),
        "winogrande": ("{{sentence.split('_')[0]}}", "{{[option1, option2]}}", "{{answer | int - 1}}"),
    }
    for name, (text, choice, target) in specs.items():
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {files[name]}\n"
            f'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{text}"\n'
            f'doc_to_choice: "{choice}"\ndoc_to_target: "{target}"\n'
            "metric_list:\n  - metric: acc\n"
            + ("" if name == "winogrande" else "  - metric: acc_norm\n")  # lm-eval's winogrande: acc only
        )
    return str(tasks)


def make_models(root: Path, tokenizer_dir: Path, arch: str = "opt", sizes=(16, 32)) -> list[Path]:
    """Tiny models of increasing width, with ``main``, ``step0`` and ``step5`` revision folders
    (each a different seeded init: what matters here is the plumbing, not the values)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diff_erank.train import model_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dirs = []
    for i, h in enumerate(sizes):
        d = root / f"{arch}-{h}"
        spec = {"hidden_size": h, "num_layers": 2, "num_heads": 2, "seq_len": 64}
        for k, rev in enumerate(("step0", "step5", "main")):
            torch.manual_seed(100 * k + i)
            model = AutoModelForCausalLM.from_config(model_config(arch, spec, tok), dtype=torch.float32)
            model.save_pretrained(d / rev)
            tok.save_pretrained(d / rev)
        dirs.append(d)
    return dirs


def local_source(dataset: str, path: str) -> list[str]:
    """Hydra overrides that point a hub dataset entry at a local jsonl file."""
    return [
        f"datasets.{dataset}.source.kind=jsonl",
        f"++datasets.{dataset}.source.data_files='{path}'",
        f"datasets.{dataset}.source.split=train",
    ]


def per_text_table(layers: list, rng: np.random.Generator) -> pd.DataFrame:
    """A per-text eRank table of 3 texts for each layer (values arbitrary)."""
    rows = [
        {"layer": str(layer), "layer_index": i, "position": pos, "dim": 8, "entropy": rng.uniform(1, 2),
         "loss": rng.uniform(1, 5), "normalized_entropy": rng.random()}
        for i, layer in enumerate(layers)
        for pos in range(3)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def synthetic_results(cfg: dict) -> pd.DataFrame:
    """What a run of ``cfg`` writes in the reference's long form: every measured variant of every
    model on every measured dataset through the aggregate stage (``diff_table``, as the diff rule
    calls it), the accuracy rule's scores, the multi-modal table's rows, then ``long_results`` and
    ``multimodal_long`` as the report calls them. Values are arbitrary; the keys are the run's."""
    from diff_erank.aggregate import diff_table
    from diff_erank.multimodal import LEVELS
    from diff_erank.reproduce import KEY, long_results, multimodal_long
    from diff_erank.variants import untrained_variants, variants

    rng = np.random.default_rng(0)
    full, acc = [], []
    no_ci = {"samples": 0, "seed": 0, "ci": 0.9}
    for m, spec in cfg["models"].items():
        for d, ds in cfg["datasets"].items():
            if ds.get("measure", True):
                tables = {v: per_text_table(cfg["layers"], rng) for v in variants(spec)}
                info = {"model": m, "dataset": d}
                full.append(diff_table(tables, untrained_variants(spec), cfg["algorithms"], no_ci, info))
        accuracy = cfg.get("accuracy") or {}
        for v in variants(spec) if accuracy else []:
            if v in (accuracy.get("variants") or ["trained"]):
                for task in [*accuracy["tasks"], *(accuracy.get("combine") or {})]:
                    score = {"accuracy": rng.random(), "accuracy_norm": rng.random()}  # acc, acc_norm
                    acc.append({"model": m, "variant": v, "task": task, **score})
    accuracy = pd.DataFrame(acc, columns=["model", "variant", "task", "accuracy", "accuracy_norm"])
    out = [long_results(pd.concat(full, ignore_index=True), accuracy, cfg)] if full else []
    mm = cfg.get("multimodal") or {}
    if mm:  # the multi-modal table: one row per model, dataset and rotation
        metrics = [*LEVELS, "image_reduction_ratio", "image_text_alignment"]
        keys = [(m, d, rot) for m in mm["models"] for d in mm["datasets"] for rot in mm["rotations"]]
        values = rng.random((len(keys), len(metrics)))
        table = pd.DataFrame(keys, columns=["model", "dataset", "rotation"]).join(
            pd.DataFrame(values, columns=metrics)
        )
        out.append(multimodal_long(table, cfg))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=KEY)
