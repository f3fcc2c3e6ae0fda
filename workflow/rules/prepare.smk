# Dataset preparation: rows -> one text per row -> sampled texts (parquet, with source row ids).


rule prepare:
    input:
        prepare_input,
    output:
        f"{OUT}/texts/{{dataset}}.parquet",
    params:
        spec=lambda w: as_json(C["datasets"][w.dataset]),
        run=run_folder,
    log:
        f"{OUT}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "diff-erank prepare --spec {params.spec:q} --out {output} --results-root {params.run} > {log} 2>&1"
