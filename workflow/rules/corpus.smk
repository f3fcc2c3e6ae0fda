# The offline demo's corpus: paragraphs of text that ships with Python, with held-out parts.


rule corpus:
    output:
        train=f"{OUT}/corpus/train.jsonl",
        parts=expand(f"{OUT}/corpus/{{part}}.jsonl", part=["topics-eval", "docstrings-eval"]),
        facts=f"{OUT}/corpus/corpus.json",
    params:
        spec=lambda w: as_json(C["corpus"]),
        run=run_folder,
    log:
        f"{OUT}/logs/corpus.log",
    benchmark:
        f"{OUT}/benchmarks/corpus.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "diff-erank corpus --spec {params.spec:q} --out-dir {params.run}/corpus > {log} 2>&1"
