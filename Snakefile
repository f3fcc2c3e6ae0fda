# diff-erank workflow: text -> hidden states -> eRank -> Diff-eRank tables and figures.
#
#   snakemake --cores 2                                          # the offline demo (experiment=demo)
#   snakemake --cores 2 --config experiment=ci                   # any Hydra override as a --config pair
#   snakemake --cores 2 --config experiment=fig1 'layers=[first,last]' 'dataset={max_texts: 50}'
#   snakemake --cores 2 --config overrides='[experiment=ci,dataset.max_texts=50]'
#   snakemake --profile profiles/slurm --config experiment=fig1
#
# Hydra composes conf/ (config only: no side effects, no network), the schema validates it, and
# every rule calls the package's `diff-erank` command line. Keep this file cheap: Snakemake
# evaluates it once per job, and on every cluster node. profiles/default/ (beside this file) is
# Snakemake's workflow profile and applies to every run.

import atexit
import logging
import signal
import sys
from pathlib import Path

from diff_erank.cache import cache_dir
from diff_erank.config import ConfigError, load_config, missing_paths, overrides_from_snakemake
from diff_erank.device import device_problem
from diff_erank.headline import headline
from diff_erank.hub import shell_prefix as hub_prefix
from diff_erank.outputs import report_files
from diff_erank.paper import PART as PART_KEY, Paper, is_paper, run_overrides
from diff_erank.runfolder import claim, report_problem
from diff_erank.storage import RunLockedError, lock_run_dir

CONF = Path(workflow.basedir) / "conf"
# PART: set when a paper run (experiment=paper, diff_erank.paper) loads this file as the module of
# one of its experiments; PAPER: that paper run, in the file it loads them from.
PART = config.pop(PART_KEY, None)
try:  # C: the resolved configuration (diff_erank.plan reads it from here)
    OVERRIDES = overrides_from_snakemake(config, CONF)  # what the user asked for, recorded in the run folder
    C = load_config(CONF, run_overrides(CONF, OVERRIDES))  # a paper run: its own (diff_erank.paper)
    cache_dir(C)  # <results_dir>/cache is the shared measurement cache, not a run folder
    PAPER = Paper(C, CONF, OVERRIDES) if is_paper(C) else None
except ConfigError as exc:
    sys.exit(f"Configuration error: {exc}")
OUT = f"{C['results_dir']}/{C['name']}"
RUNS = {OUT: C} | ({PAPER.run(e): cfg for e, cfg in PAPER.parts.items()} if PAPER else {})
#: the overrides each run folder records (--config from=<folder> replays them)
RUN_OVERRIDES = {OUT: OVERRIDES} | ({PAPER.run(e): o for e, o in PAPER.overrides.items()} if PAPER else {})

if workflow.is_main_process:
    # a missing local file of a model or dataset entry stops a dry run too (onstart, which checks every
    # path, runs only when jobs run); the multi-modal experiments' published files are large downloads
    # that one plans before fetching: a dry run names them and goes on
    problems = missing_paths(C)
    if own := [p for p in problems if not p.startswith("multimodal.")]:
        sys.exit(f"Cannot start: {'; '.join(own)} (fix the path in the config, or the override)")
    for problem in problems:
        print(f"warning: {problem} (a run stops on it)", file=sys.stderr)
    if any(a == "--report" or a.startswith("--report=") for a in sys.argv) and C["models"]:
        if problem := report_problem(C, OUT, list(report_files(C).values())):
            sys.exit(f"Cannot build the report: {problem}")

#: how the run ended, for the lines printed last (after Snakemake's own; by then Snakemake has gone
#: back from --directory to where it was started, hence the working directory kept here)
ENDING = {"state": "stopped", "workdir": "."}


def closing_lines():
    state = ENDING["state"]
    if state == "success" and C["models"]:
        print("\n" + headline(C, OUT, ENDING["workdir"]), file=sys.stderr)
    elif state == "failed":
        print(
            "A job failed (its log is printed above): fix what it says and run the same command again; "
            "finished jobs are kept",
            file=sys.stderr,
        )
    elif state in ("interrupted", "stopped"):  # Ctrl-C, or Snakemake stopped before either hook
        print(
            "Interrupted: run the same command again to resume (finished jobs are kept, half-done ones "
            "are redone)",
            file=sys.stderr,
        )


def on_ctrl_c(previous):
    """Ctrl-C reaches every job too; each then exits 130 and Snakemake would report each one as a
    failed job (≈ 20 lines apiece). Mark the run interrupted, silence that report, and carry on
    with Snakemake's own handling; the closing line says how to resume."""

    def handler(signum, frame):
        ENDING["state"] = "interrupted"
        logging.getLogger("snakemake.logging").setLevel(logging.CRITICAL + 1)
        if callable(previous):
            previous(signum, frame)

    return handler


onstart:
    # One run per run folder, whichever checkout it comes from (Snakemake's own lock is per working
    # directory): only the main process locks; the kernel drops the lock when Snakemake ends,
    # however it ends. Then the folder must hold this configuration's results or none. A paper
    # run locks its own folder (its report, of whichever experiments ran) and locks and claims each
    # of its experiments' (their modules' onstart is not run).
    if workflow.is_main_process:
        try:
            if workflow.local_exec and (problem := device_problem(C["device"])):
                raise ConfigError(problem)
            for run, cfg in RUNS.items():
                lock_run_dir(run)
                if not is_paper(cfg):  # a paper run's own folder: only its report, of what ran
                    claim(cfg, run, overrides=RUN_OVERRIDES[run])
        except (ConfigError, RunLockedError) as exc:
            sys.exit(f"Cannot start: {exc}")
        ENDING["workdir"] = str(Path.cwd())
        atexit.register(closing_lines)  # after Snakemake's last lines, however the run ends
        try:
            signal.signal(signal.SIGINT, on_ctrl_c(signal.getsignal(signal.SIGINT)))
        except ValueError:  # not the main thread: keep Snakemake's own handling
            pass


onsuccess:
    ENDING["state"] = "success"


onerror:
    if ENDING["state"] != "interrupted":
        ENDING["state"] = "failed"


# The HTML report's landing page: the one this run's report step wrote (its name, headline numbers
# and sections), else the generic page, before the run has results.
LANDING = Path(OUT, "report.rst").resolve()


report: str(LANDING) if LANDING.is_file() else "workflow/report/workflow.rst"


if PAPER:  # every experiment of the paper, one module each, and the paper's own report

    include: "workflow/rules/paper.smk"

else:  # one experiment
    include: "workflow/rules/common.smk"
    include: "workflow/rules/fetch.smk"
    include: "workflow/rules/corpus.smk"
    include: "workflow/rules/train.smk"
    include: "workflow/rules/gguf.smk"
    include: "workflow/rules/prepare.smk"
    include: "workflow/rules/finetune.smk"
    include: "workflow/rules/dump.smk"
    include: "workflow/rules/erank.smk"
    include: "workflow/rules/diff.smk"
    include: "workflow/rules/accuracy.smk"
    include: "workflow/rules/report.smk"
    include: "workflow/rules/multimodal.smk"


rule all:
    input:
        report_outputs(),
        cache_entries(),
    default_target: True
