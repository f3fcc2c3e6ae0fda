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
from diff_erank.runfolder import claim
from diff_erank.storage import RunLockedError, lock_run_dir

CONF = Path(workflow.basedir) / "conf"
try:  # C: the resolved configuration (diff_erank.plan reads it from here)
    C = load_config(CONF, overrides_from_snakemake(config, CONF))
    cache_dir(C)  # <results_dir>/cache is the shared measurement cache, not a run folder
except ConfigError as exc:
    sys.exit(f"Configuration error: {exc}")
OUT = f"{C['results_dir']}/{C['name']}"


onstart:
    # One run per run folder, whichever checkout it comes from (Snakemake's own lock is per working
    # directory): only the main process locks; the kernel drops the lock when Snakemake ends,
    # however it ends. Then the folder must hold this configuration's results or none.
    if workflow.is_main_process:
        try:
            lock_run_dir(OUT)
            claim(C, OUT)
        except (ConfigError, RunLockedError) as exc:
            sys.exit(f"Cannot start: {exc}")


# The HTML report's landing page: the one this run's report step wrote (its name, headline numbers
# and sections), else the generic page, before the run has results.
LANDING = Path(OUT, "report.rst").resolve()


report: str(LANDING) if LANDING.is_file() else "workflow/report/workflow.rst"


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
