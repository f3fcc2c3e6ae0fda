# Diff-eRank of one model on one dataset: this run's view of the cached per-variant tables (its layers,
# a sample's first texts; provenance names the cached table), then algorithms, reduced loss, bootstrap
# CI over texts, mean +- std over seeds, stages.


# seconds of work each: on a cluster they run in the main Snakemake process, not through sbatch
localrules:
    diff,


rule diff:
    input:
        unpack(diff_source),
    output:
        diff=f"{OUT}/diff/{{model}}/{{dataset}}.parquet",
        views=directory(f"{OUT}/erank/{{model}}/{{dataset}}"),
    params:
        spec=model_spec,
        layers=" ".join(str(x) for x in C["layers"]),
        first=diff_first,
        untrained=lambda w: " ".join(untrained_variants(C["models"][w.model])),
        algorithms=" ".join(C["algorithms"]),
        bootstrap=lambda w: spec(C["bootstrap"]),
    log:
        f"{OUT}/logs/diff/{{model}}/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/diff/{{model}}/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "diff-erank diff --spec {params.spec:q} --model {wildcards.model} --dataset {wildcards.dataset}"
        " --tables {input.tables:q} --texts {input.texts:q} --layers {params.layers} {params.first}"
        " --views {output.views:q} --untrained {params.untrained} --algorithms {params.algorithms}"
        " --bootstrap {params.bootstrap:q} --out {output.diff:q} > {log:q} 2>&1"
