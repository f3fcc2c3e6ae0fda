# Per-text eRank of a set of dumps, one table per variant, one text in memory at a time, into the
# shared cache, with a key file saying what was measured (on a cluster, unless keep_dumps, it runs
# in its dump's group job, reading the dump from that node's scratch). Each run folder's view of
# the tables (its layers, or a sample's first texts) is made by the diff step.


rule erank:
    input:
        dump=dump_path(),
        texts=lambda w: texts_path(job(w).dataset),
    output:
        tables=directory(K.table_path("{key}", "{layers}")),
        key=K.table_path("{key}", "{layers}") + ".json",
    wildcard_constraints:
        layers=TAG,
        key=OWNED_SETS,
    params:
        key=lambda w: spec(K.describe(w.key, K.layers_of(w.layers))),
    log:
        f"{OUT}/logs/erank/{{key}}/{{layers}}.log",
    benchmark:
        f"{OUT}/benchmarks/erank/{{key}}/{{layers}}.tsv"
    threads: lambda w: erank_estimate(w).threads
    resources:
        **_cpu_grown(erank_estimate, "erank"),
    shell:
        "echo {ABOUT:{wildcards.key}} > {log:q} && "
        "cp {params.key:q} {output.key:q}.tmp && mv {output.key:q}.tmp {output.key:q} && "
        "diff-erank measure --dump {input.dump:q} --texts {input.texts:q} --out {output.tables:q}"
        " --threads {threads} --mem-mb {resources.mem_mb} --run-log {log:q}"
        f"{'' if C['keep_dumps'] else ' --drop-dump'} >> {{log:q}} 2>&1"
