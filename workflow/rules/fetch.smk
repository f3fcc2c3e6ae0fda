# Models and datasets fetched before any job (diff_erank.hub, docs/cluster.md): with hf_home set,
# `snakemake fetch --config ...` on the login node downloads every hub model of the experiment (its
# revision, each rev- variant, a separate tokenizer) and every hub dataset into hf_home, and every
# job runs with HF_HOME there and the hub offline: a compute node never downloads.

if C["hf_home"]:
    shell.prefix("set -euo pipefail; " + hub_prefix(C["hf_home"]))


localrules:
    fetch,


rule fetch:
    input:
        config=f"{OUT}/config.json",
    output:
        f"{OUT}/fetched.json",
    log:
        f"{OUT}/logs/fetch.log",
    shell:
        "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 TRANSFORMERS_OFFLINE=0"
        " diff-erank fetch --config-file {input.config:q} --out {output:q} > {log:q} 2>&1"
