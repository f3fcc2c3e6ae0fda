# Per-text eRank of a dump, streamed shard by shard (memory does not grow with the texts).


rule erank:
    input:
        dump=f"{OUT}/dumps/{{model}}/{{variant}}/{{dataset}}",
        texts=f"{OUT}/texts/{{dataset}}.parquet",
    output:
        f"{OUT}/erank/{{model}}/{{variant}}/{{dataset}}.parquet",
    log:
        f"{OUT}/logs/erank/{{model}}/{{variant}}/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/erank/{{model}}/{{variant}}/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "diff-erank measure --dump {input.dump} --texts {input.texts} --out {output}"
        " --threads {threads} > {log} 2>&1"
