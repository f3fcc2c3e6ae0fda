# Dataset preparation: rows -> one text per row -> sampled texts (parquet, with source row ids).
from diff_erank.data import demo_corpus_file


def prepare_input(w):
    source = C["datasets"][w.dataset]["source"]
    return [str(demo_corpus_file(OUT, source["part"]))] if source["kind"] == "demo" else []


rule prepare:
    input:
        prepare_input,
    output:
        f"{OUT}/texts/{{dataset}}.parquet",
    params:
        spec=lambda w: as_json(C["datasets"][w.dataset]),
    log:
        f"{OUT}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "diff-erank prepare --spec {params.spec:q} --out {output} --results-root {OUT} > {log} 2>&1"
