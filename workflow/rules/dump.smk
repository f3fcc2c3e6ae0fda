# Hidden-state dumps: one model variant (trained / init-s<seed> / rev-<revision>) x one dataset, in the
# shared cache under the measurement's key. Sized from the model and the texts (diff_erank.sizing):
# host and GPU memory, the GPU type, time, and disk_mb, so `--resources disk_mb=N` caps the scratch.


rule dump:
    input:
        texts=lambda w: texts_path(job(w).dataset),
        model=lambda w: variant_input(job(w)),
    output:
        dump_output(),
    wildcard_constraints:
        layers=re.escape(LAYERS),
    params:
        spec=lambda w: as_json(K.dump_spec(w.key)),
        variant=lambda w: job(w).variant,
        layers=lambda w: as_json(C["layers"]),
        trained=lambda w: trained_path_arg(job(w)),
        variant_path=lambda w: variant_path_arg(job(w)),
        device=C["device"],
    log:
        f"{OUT}/logs/dump/{{key}}/{{layers}}.log",
    benchmark:
        f"{OUT}/benchmarks/dump/{{key}}/{{layers}}.tsv"
    threads: lambda w: dump_estimate(w).threads
    resources:
        **_sized(dump_estimate),
        disk_mb=lambda w: dump_estimate(w).disk_mb,
    shell:
        "diff-erank dump --spec {params.spec:q} --variant {params.variant} --texts {input.texts}"
        " --out {output} --layers {params.layers:q} --device {params.device} {params.trained}"
        " {params.variant_path} --threads {threads} --gpu-mem-mb {resources.gpu_mem_mb} > {log} 2>&1"
