# Hidden-state dumps: one model variant (trained / init-s<seed> / rev-<revision>) x one dataset.


rule dump:
    input:
        texts=f"{OUT}/texts/{{dataset}}.parquet",
        model=variant_input,
    output:
        dump_output(),
    params:
        spec=model_spec,
        layers=lambda w: as_json(C["layers"]),
        trained=trained_path_arg,
        variant=variant_path_arg,
        device=C["device"],
    log:
        f"{OUT}/logs/dump/{{model}}/{{variant}}/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/dump/{{model}}/{{variant}}/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: model_resources(w.model, "mem_mb", 8000),
        runtime=lambda w: model_resources(w.model, "runtime", 60),
        gpu=lambda w: model_resources(w.model, "gpus", 0),
    shell:
        "diff-erank dump --spec {params.spec:q} --variant {wildcards.variant} --texts {input.texts}"
        " --out {output} --layers {params.layers:q} --device {params.device} {params.trained} {params.variant}"
        " --threads {threads} > {log} 2>&1"
