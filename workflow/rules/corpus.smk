# The offline demo's corpus: paragraphs of text that ships with Python, with held-out parts. It lives
# in the shared cache under the key of its settings (diff_erank.cache.corpus_key), not in the run
# folder, so every run name and twin experiment with the same corpus reads one copy.


rule corpus:
    output:
        train=f"{DEMO}/corpus/train.jsonl",
        parts=expand(f"{DEMO}/corpus/{{part}}.jsonl", part=["topics-eval", "docstrings-eval"]),
        facts=f"{DEMO}/corpus/corpus.json",
    params:
        spec=lambda w: spec(C["corpus"]),
        out=f"{DEMO}/corpus",
    log:
        f"{OUT}/logs/corpus.log",
    benchmark:
        f"{OUT}/benchmarks/corpus.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "diff-erank corpus --spec {params.spec:q} --out-dir {params.out:q} > {log:q} 2>&1"
