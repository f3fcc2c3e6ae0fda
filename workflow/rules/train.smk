# The demo zoo: a BPE tokenizer, then small causal LMs trained from scratch with checkpoints. Both live
# in the shared cache beside their corpus, a model under the key of its recipe (diff_erank.cache.zoo_key):
# a new run name, a copied results folder or a twin experiment trains nothing again.


rule tokenizer:
    input:
        f"{DEMO}/corpus/train.jsonl",
    output:
        directory(f"{DEMO}/zoo/tokenizer"),
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
        "diff-erank tokenizer --corpus {input:q} --out {output:q} --vocab-size {params.vocab} > {log:q} 2>&1"


rule train:
    input:
        tokenizer=f"{DEMO}/zoo/tokenizer",
        corpus=f"{DEMO}/corpus/train.jsonl",
    output:
        directory(K.zoo_path("{zoo}")),
    wildcard_constraints:
        zoo=one_of(K.zoo),
    params:
        spec=lambda w: spec(C["models"][K.zoo[w.zoo]]["train"]),
    log:
        f"{OUT}/logs/train/{{zoo}}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{zoo}}.tsv"
    threads: 1
    priority: lambda w: min(9, 2 * C["models"][K.zoo[w.zoo]]["train"]["num_layers"])  # deepest (longest) first
    resources:
        mem_mb=lambda w: model_resources(K.zoo[w.zoo], "mem_mb", 2000),
        runtime=lambda w: model_resources(K.zoo[w.zoo], "runtime", 30),
    shell:
        "echo {ABOUT:{wildcards.zoo}} > {log:q} && "
        "diff-erank train --spec {params.spec:q} --tokenizer {input.tokenizer:q} --corpus {input.corpus:q}"
        " --out {output:q} --threads {threads} >> {log:q} 2>&1"
