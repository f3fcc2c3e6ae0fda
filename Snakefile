# diff-erank workflow: text -> hidden states -> eRank -> Diff-eRank tables and figures.
#
#   snakemake --cores 2                                   # the offline demo (experiment=demo)
#   snakemake --cores 2 --config overrides='[experiment=ci]'
#   snakemake --profile workflow/profiles/slurm --config overrides='[experiment=fig1]'
#
# Hydra composes conf/ (config only: no side effects, no network), the schema validates it, and
# every rule calls the package's `diff-erank` command line. Keep this file cheap: Snakemake
# evaluates it once per job, and on every cluster node.

from pathlib import Path

from diff_erank.config import load_config


def _overrides(value):
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


C = load_config(Path(workflow.basedir) / "conf", _overrides(config.get("overrides")))
OUT = f"{C['results_dir']}/{C['name']}"


include: "workflow/rules/common.smk"
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
    default_target: True
