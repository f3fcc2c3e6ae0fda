# The demo zoo: a BPE tokenizer, then small causal LMs trained from scratch with checkpoints.


rule tokenizer:
    input:
        f"{OUT}/corpus/train.jsonl",
    output:
        directory(f"{OUT}/zoo/tokenizer"),
    params:
        vocab=C["corpus"]["vocab_size"] if C["corpus"] else 0,
    log:
        f"{OUT}/logs/tokenizer.log",
    benchmark:
        f"{OUT}/benchmarks/tokenizer.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "diff-erank tokenizer --corpus {input} --out {output} --vocab-size {params.vocab} > {log} 2>&1"


rule train:
    input:
        tokenizer=f"{OUT}/zoo/tokenizer",
        corpus=f"{OUT}/corpus/train.jsonl",
    output:
        directory(f"{OUT}/zoo/{{model}}"),
    params:
        spec=lambda w: as_json(C["models"][w.model]["train"]),
    log:
        f"{OUT}/logs/train/{{model}}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{model}}.tsv"
    threads: 1
    priority: lambda w: min(9, 2 * C["models"][w.model]["train"]["num_layers"])  # deepest (longest) first
    resources:
        mem_mb=lambda w: model_resources(w.model, "mem_mb", 2000),
        runtime=lambda w: model_resources(w.model, "runtime", 30),
    shell:
        "diff-erank train --spec {params.spec:q} --tokenizer {input.tokenizer} --corpus {input.corpus}"
        " --out {output} --threads {threads} > {log} 2>&1"
