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

import sys
from pathlib import Path

from diff_erank.cache import cache_dir
from diff_erank.config import ConfigError, load_config, overrides_from_snakemake
from diff_erank.hub import shell_prefix as hub_prefix
from diff_erank.paper import PART as PART_KEY, Paper, is_paper, run_overrides
from diff_erank.runfolder import claim
from diff_erank.storage import RunLockedError, lock_run_dir

CONF = Path(workflow.basedir) / "conf"
# PART: set when a paper run (experiment=paper, diff_erank.paper) loads this file as the module of
# one of its experiments; PAPER: that paper run, in the file it loads them from.
PART = config.pop(PART_KEY, None)
try:  # C: the resolved configuration (diff_erank.plan reads it from here)
    OVERRIDES = overrides_from_snakemake(config, CONF)
    C = load_config(CONF, run_overrides(CONF, OVERRIDES))  # a paper run: its own (diff_erank.paper)
    cache_dir(C)  # <results_dir>/cache is the shared measurement cache, not a run folder
    PAPER = Paper(C, CONF, OVERRIDES) if is_paper(C) else None
except ConfigError as exc:
    sys.exit(f"Configuration error: {exc}")
OUT = f"{C['results_dir']}/{C['name']}"
RUNS = {OUT: C} | ({PAPER.run(e): cfg for e, cfg in PAPER.parts.items()} if PAPER else {})


onstart:
    # One run per run folder, whichever checkout it comes from (Snakemake's own lock is per working
    # directory): only the main process locks; the kernel drops the lock when Snakemake ends,
    # however it ends. Then the folder must hold this configuration's results or none. A paper
    # run locks its own folder (its report, of whichever experiments ran) and locks and claims each
    # of its experiments' (their modules' onstart is not run).
    if workflow.is_main_process:
        try:
            for run, cfg in RUNS.items():
                lock_run_dir(run)
                if not is_paper(cfg):  # a paper run's own folder: only its report, of what ran
                    claim(cfg, run)
        except (ConfigError, RunLockedError) as exc:
            sys.exit(f"Cannot start: {exc}")


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
