"""Zero-shot accuracy through lm-evaluation-harness, on exactly the model the dump measured.

The variant is loaded by :func:`diff_erank.models.load_variant` (same dtype, revision, seed and
remote-code policy as the dump) and handed to lm-eval's ``HFLM`` as an object, so a seeded
random init is evaluated as readily as a published checkpoint. Task names, versions and the
lm-eval version are recorded with the result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diff_erank.dump import pick_device
from diff_erank.entries import ModelEntry, ModelSource
from diff_erank.models import load_tokenizer, load_variant
from diff_erank.provenance import provenance
from diff_erank.storage import write_json

log = logging.getLogger(__name__)


def hflm_kwargs(entry: ModelEntry, acc: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's ``HFLM`` settings for a model entry: batch size, context length, and the entry's
    own ``lm_eval:`` settings (OpenELM's ``add_bos_token: true``, as its model card's lm-eval
    command has it; lm-eval's default for every other model)."""
    return {
        "batch_size": acc.get("batch_size", 8),
        "max_length": entry.max_length,
        **(entry.lm_eval or {}),
    }


def evaluate(
    source: ModelSource, variant: str, acc: dict[str, Any], out: str | Path, device: str = "auto"
) -> dict[str, Any]:
    """Evaluate one variant on ``acc['tasks']``; the record (written to ``out``)."""
    import importlib.metadata

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    dev = pick_device(device)
    model = load_variant(source, variant).to(dev)
    tokenizer = load_tokenizer(source)  # further training keeps the tokenizer
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device=str(dev), **hflm_kwargs(source.entry, acc))
    manager = TaskManager(
        include_path=acc.get("include_path"), include_defaults=acc.get("include_defaults", True)
    )
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(acc["tasks"]),
        num_fewshot=acc.get("num_fewshot", 0),
        limit=acc.get("limit"),
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=0,
    )
    scores = {}
    for task in acc["tasks"]:
        metrics = res["results"][task]
        scores[task] = {k.split(",")[0]: v for k, v in metrics.items() if k.startswith(("acc,", "acc_norm,"))}
    combined = {
        name: sum(scores[t]["acc"] for t in tasks) / len(tasks)
        for name, tasks in (acc.get("combine") or {}).items()
    }
    # the same means of acc_norm, where a task defines it (winogrande does not: its acc counts)
    combined_norm = {
        name: sum(scores[t].get("acc_norm", scores[t]["acc"]) for t in tasks) / len(tasks)
        for name, tasks in (acc.get("combine") or {}).items()
    }
    record = {
        "variant": variant,
        "accuracy": {t: s["acc"] for t, s in scores.items()},
        "accuracy_norm": {t: s.get("acc_norm") for t, s in scores.items()},
        "combined": combined,
        "combined_norm": combined_norm,
        "task_versions": res.get("versions", {}),
        "n_samples": res.get("n-samples", {}),
        "provenance": provenance(
            source.entry.spec, accuracy=acc, lm_eval=importlib.metadata.version("lm_eval")
        ),
    }
    write_json(record, out)
    log.info(
        "accuracy %s: acc %s %s, acc_norm %s %s",
        variant,
        record["accuracy"],
        combined,
        record["accuracy_norm"],
        combined_norm,
    )
    return record
