"""The demo's model zoo: a BPE tokenizer and small causal LMs trained from scratch on the CPU.

Each model is saved with ``save_pretrained`` as ``<out>/main`` (the trained model) plus
``<out>/step<N>`` checkpoints, ``step0`` being the initialisation itself: the zoo's analogue of
Pythia's ``stepN`` revisions, read back through the same ``from_pretrained`` path as a hub model.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from diff_erank.entries import check_trained_dir
from diff_erank.progress import tqdm
from diff_erank.provenance import provenance
from diff_erank.storage import atomic_path, atomic_publish_dir, sha256, write_json

log = logging.getLogger(__name__)

SPECIAL = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}


def _read_jsonl(path: str | Path) -> list[str]:
    return [json.loads(line)["text"] for line in Path(path).read_text().splitlines() if line.strip()]


def train_tokenizer(corpus_file: str | Path, out_dir: str | Path, vocab_size: int = 2048):
    """Byte-level BPE trained with ``tokenizers``, saved as a transformers fast tokenizer.

    It prepends BOS like OPT's tokenizer does, so the BOS row is part of every text's hidden states.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_read_jsonl(corpus_file), trainer=trainer)
    bos_id = tok.token_to_id(SPECIAL["bos"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos']} $A", special_tokens=[(SPECIAL["bos"], bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
    )
    tmp = Path(str(out_dir) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    atomic_publish_dir(tmp, Path(out_dir))
    return fast


def model_config(arch: str, spec: dict[str, Any], tokenizer):
    """A transformers config for the zoo architecture (OPT, or GPTNeoX as in Pythia)."""
    from transformers import GPTNeoXConfig, OPTConfig

    h = spec["hidden_size"]
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": h,
        "num_hidden_layers": spec["num_layers"],
        "num_attention_heads": spec["num_heads"],
        "max_position_embeddings": spec["seq_len"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "opt":
        return OPTConfig(
            ffn_dim=4 * h,
            word_embed_proj_dim=h,
            do_layer_norm_before=True,
            dropout=0.0,
            attention_dropout=0.0,
            **common,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            intermediate_size=4 * h,
            rotary_pct=0.25,
            use_parallel_residual=True,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            **common,
        )
    raise ValueError(f"unknown zoo architecture {arch!r}; valid: ['opt', 'gpt_neox']")


def train_model(
    spec: dict[str, Any], tokenizer_dir: str | Path, corpus_file: str | Path, out_dir: str | Path
) -> dict:
    """Train one zoo model; writes ``main``, ``step<N>`` checkpoints and ``loss.csv``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    shutil.rmtree(Path(str(out_dir) + ".partial"), ignore_errors=True)  # left by an older version
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # a folder of its own: two trainings of one model never write into each other's files
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    stream = torch.tensor(
        [
            t
            for text in _read_jsonl(corpus_file)
            for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        ]
    )
    seq = spec["seq_len"]
    if len(stream) <= seq + 1:
        raise ValueError(f"training corpus has {len(stream)} tokens, fewer than one window of {seq}")
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_config(model_config(spec["arch"], spec, tokenizer), dtype=torch.float32)
    gen = torch.Generator().manual_seed(spec["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01, betas=(0.9, 0.95))
    steps, warmup = spec["steps"], max(1, spec["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )

    def save(name: str) -> None:
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)

    checkpoints = sorted(set(spec["checkpoint_steps"]) - {steps})
    losses = []
    t0 = time.perf_counter()
    model.train()
    for step in tqdm(range(steps + 1), desc=f"train {spec['arch']} h{spec['hidden_size']}", mininterval=2.0):
        if step in checkpoints:
            save(f"step{step}")
        if step == steps:
            break
        starts = torch.randint(0, len(stream) - seq - 1, (spec["batch_size"],), generator=gen)
        batch = torch.stack([stream[s : s + seq] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("step %d loss %.4f", step, losses[-1])
    model.eval()
    save("main")
    with atomic_path(tmp / "loss.csv") as f:
        f.write_text("step,loss\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(losses)))
    facts = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_tokens": steps * spec["batch_size"] * seq,
        "seconds": time.perf_counter() - t0,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "checkpoints": [f"step{c}" for c in checkpoints],
    }
    files = {
        str(f.relative_to(tmp)): sha256(f)
        for d in ["main", *facts["checkpoints"]]
        for f in sorted((tmp / d).rglob("*"))
        if f.is_file()
    }
    write_json(provenance(spec, training=facts, files=files), tmp / "training.json")
    check_trained_dir(tmp)
    atomic_publish_dir(tmp, out_dir)
    return facts
