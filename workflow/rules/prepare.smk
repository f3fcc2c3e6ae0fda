# Dataset preparation: rows -> one text per row -> sampled texts (parquet, with source row ids).
from diff_erank.data import demo_corpus_file
from diff_erank.sources import dataset_files


def prepare_input(w):
    """The demo corpus part, or a local dataset's files (so editing one reruns `prepare`)."""
    source = C["datasets"][w.dataset]["source"]
    return [str(demo_corpus_file(OUT, source["part"]))] if source["kind"] == "demo" else dataset_files(source)


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
