# Hidden-state dumps: every variant of one model (trained / init-s<seed> / rev-<revision> / ft-<name>) on
# one dataset, in one process (the model code, tokenizer and tokenised texts are shared), in the shared
# cache under the key of that set of measurements. Sized from the model, the texts and the number of
# variants (diff_erank.sizing): host and GPU memory, the GPU type, time, and disk_mb, so
# `--resources disk_mb=N` caps the scratch.


rule dump:
    input:
        texts=lambda w: texts_path(job(w).dataset),
        model=lambda w: set_input(job(w)),
    output:
        dump_output(),
    wildcard_constraints:
        layers=LAYERS,
        key=OWNED_SETS,
    params:
        spec=lambda w: as_json(K.dump_spec(w.key)),
        variants=lambda w: " ".join(job(w).variants),
        layers=lambda w: as_json(K.measure_layers(w.key)),
        trained=lambda w: trained_path_arg(job(w)),
        variant_paths=lambda w: variant_paths_arg(job(w)),
        device=C["device"],
    log:
        f"{OUT}/logs/dump/{{key}}/{{layers}}.log",
    benchmark:
        f"{OUT}/benchmarks/dump/{{key}}/{{layers}}.tsv"
    threads: lambda w: dump_estimate(w).threads
    priority: 10  # the longest jobs: started before the zoo's training, which fills the cores around them
    resources:
        **_sized(dump_estimate),
        disk_mb=lambda w: dump_estimate(w).disk_mb,
    shell:
        "diff-erank dump --spec {params.spec:q} --variants {params.variants} --texts {input.texts}"
        " --out {output} --layers {params.layers:q} --device {params.device} {params.trained}"
        " {params.variant_paths} --threads {threads} --gpu-mem-mb {resources.gpu_mem_mb} > {log} 2>&1"
