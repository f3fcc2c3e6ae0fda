# Per-text eRank of a dump, one text in memory at a time, into the shared cache (with a key file saying
# what was measured); then each run folder's view of it: its layers, or a sample's first texts.


rule erank:
    input:
        dump=f"{CACHE}/dumps/{{key}}/{{layers}}",
        texts=lambda w: texts_path(job(w).dataset),
    output:
        table=f"{CACHE}/erank/{{key}}/{{layers}}.parquet",
        key=f"{CACHE}/erank/{{key}}/{{layers}}.json",
    wildcard_constraints:
        layers=re.escape(LAYERS),
    params:
        key=lambda w: as_json(K.describe(w.key)),
    log:
        f"{OUT}/logs/erank/{{key}}/{{layers}}.log",
    benchmark:
        f"{OUT}/benchmarks/erank/{{key}}/{{layers}}.tsv"
    threads: THREADS
    resources:
        mem_mb=lambda w: erank_estimate(w).mem_mb,
        runtime=lambda w: erank_estimate(w).runtime,
    shell:
        "printf '%s\\n' {params.key:q} > {output.key}.tmp && mv {output.key}.tmp {output.key} && "
        "diff-erank measure --dump {input.dump} --texts {input.texts} --out {output.table}"
        " --threads {threads} --mem-mb {resources.mem_mb} > {log} 2>&1"


rule select:
    input:
        unpack(select_source),
    output:
        f"{OUT}/erank/{{model}}/{{variant}}/{{dataset}}.parquet",
    params:
        layers=lambda w: as_json(C["layers"]),
        first=select_first,
    log:
        f"{OUT}/logs/select/{{model}}/{{variant}}/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "diff-erank select --table {input.table} --texts {input.texts} --layers {params.layers:q}"
        " {params.first} --out {output} > {log} 2>&1"
