# Per-text eRank of a set of dumps, one table per variant, one text in memory at a time, into the shared
# cache (with a key file saying what was measured). Each run folder's view of the tables (its layers,
# or a sample's first texts) is made by the diff step.


rule erank:
    input:
        dump=f"{CACHE}/dumps/{{key}}/{{layers}}",
        texts=lambda w: texts_path(job(w).dataset),
    output:
        tables=directory(f"{CACHE}/erank/{{key}}/{{layers}}"),
        key=f"{CACHE}/erank/{{key}}/{{layers}}.json",
    wildcard_constraints:
        layers=LAYERS,
        key=OWNED_SETS,
    params:
        key=lambda w: as_json(K.describe(w.key)),
    log:
        f"{OUT}/logs/erank/{{key}}/{{layers}}.log",
    benchmark:
        f"{OUT}/benchmarks/erank/{{key}}/{{layers}}.tsv"
    threads: lambda w: erank_estimate(w).threads
    resources:
        mem_mb=lambda w: erank_estimate(w).mem_mb,
        runtime=lambda w: erank_estimate(w).runtime,
    shell:
        "printf '%s\\n' {params.key:q} > {output.key}.tmp && mv {output.key}.tmp {output.key} && "
        "diff-erank measure --dump {input.dump} --texts {input.texts} --out {output.tables}"
        " --threads {threads} --mem-mb {resources.mem_mb} > {log} 2>&1"
