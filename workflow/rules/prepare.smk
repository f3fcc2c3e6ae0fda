# Dataset preparation: rows -> one text per row -> sampled texts (parquet, with source row ids), in the
# shared cache under the recipe's key (diff_erank.cache), so every experiment reads one copy.


rule prepare:
    input:
        lambda w: prepare_input(SimpleNamespace(dataset=K.datasets_of[w.key])),
    output:
        K.texts_file("{key}"),
    wildcard_constraints:
        key=OWNED_TEXTS,
    params:
        # what determines the texts only (no labels, no run folder but a demo corpus's): a params
        # change reruns a job, and this one is shared by every experiment whose texts have this key
        spec=lambda w: spec(K.texts_spec(K.datasets_of[w.key])),
        run=lambda w: DEMO if C["datasets"][K.datasets_of[w.key]]["source"]["kind"] == "demo" else ".",
    log:
        f"{OUT}/logs/prepare/{{key}}.log",
    benchmark:
        f"{OUT}/benchmarks/prepare/{{key}}.tsv"
    threads: 1
    priority: 20  # cheap, and every dump waits for it
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "echo {ABOUT:{wildcards.key}} > {log:q} && "
        "diff-erank prepare --spec {params.spec:q} --out {output:q} --results-root {params.run:q} >> {log:q} 2>&1"
