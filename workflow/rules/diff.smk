# Diff-eRank of one model on one dataset: algorithms, reduced loss, bootstrap CI, seeds, stages.


rule diff:
    input:
        unpack(lambda w: erank_tables(w.model, w.dataset)),
    output:
        f"{OUT}/diff/{{model}}/{{dataset}}.parquet",
    params:
        spec=model_spec,
        tables=lambda w, input: " ".join(f"{k}={v}" for k, v in input.items()),
        untrained=lambda w: " ".join(untrained_variants(C["models"][w.model])),
        algorithms=" ".join(C["algorithms"]),
        bootstrap=lambda w: as_json(C["bootstrap"]),
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
        " --erank {params.tables} --untrained {params.untrained} --algorithms {params.algorithms}"
        " --bootstrap {params.bootstrap:q} --out {output} > {log} 2>&1"
