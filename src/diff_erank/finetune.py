"""Further training of a model variant on a dataset's texts: the paper's training stages.

Table 10 of the paper sets a random init, the pretrained model, the model trained further and an
overfitted one side by side. Each stage here is a recipe in the model entry
(``finetune: {further: {dataset: wikipedia, from: trained, steps: ...}}``) that becomes the
variant ``ft-<name>``, dumped and measured like any other. Works on a tiny model on the CPU and
on an OPT-1.3b on a GPU alike (plain AdamW, full fine-tuning, seeded).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from diff_erank.data import DataError
from diff_erank.dump import pad_right, pick_device, tokenise
from diff_erank.entries import ModelSource
from diff_erank.models import load_tokenizer, load_variant
from diff_erank.progress import tqdm
from diff_erank.provenance import provenance
from diff_erank.storage import atomic_publish_dir, read_parquet, write_json

log = logging.getLogger(__name__)


def finetune(
    source: ModelSource,
    recipe: dict[str, Any],
    texts_path: str | Path,
    out_dir: str | Path,
    device: str = "auto",
) -> dict[str, Any]:
    """Train the ``recipe['from']`` variant on the texts; save it (and the tokenizer) to ``out_dir``.

    ``source`` holds the directory of ``recipe['from']`` when that is an ``ft-`` variant itself.
    The weights are trained in float32 whatever the entry's dtype."""
    out_dir = Path(out_dir)
    tmp = Path(str(out_dir) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    dev = pick_device(device)
    tokenizer = load_tokenizer(source)
    tok = tokenise(tokenizer, list(read_parquet(texts_path)["text"].fillna("")), recipe["max_length"])
    if not tok.ids:
        raise DataError(f"{texts_path}: no text to train on (none has enough tokens)")
    model = load_variant(source, recipe["from"], dtype="float32").to(dev)
    model.train()
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    for _ in tqdm(range(recipe["steps"]), desc=f"finetune from {recipe['from']}", mininterval=2.0):
        pick = torch.randint(0, len(tok.ids), (recipe["batch_size"],), generator=gen).tolist()
        ids, mask = pad_right([tok.ids[i] for i in pick])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev), use_cache=False
        ).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
    model.eval()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    facts = {
        "steps": recipe["steps"],
        "texts": len(tok.ids),
        "first_loss": losses[0],
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "seconds": time.perf_counter() - t0,
    }
    write_json(provenance(source.entry.spec, recipe=recipe, finetune=facts), tmp / "finetune.json")
    atomic_publish_dir(tmp, out_dir)
    log.info("further trained: %s", facts)
    return facts
