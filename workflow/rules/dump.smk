# Hidden-state dumps: up to cluster.variants_per_job variants of one model (trained / init-s<seed> /
# rev-<revision> / ft-<name>) on one dataset, in one process (the model code, tokenizer and tokenised
# texts are shared), under the key of that set of measurements. Sized from the model, the texts and the number of
# variants (diff_erank.sizing): host and GPU memory, the GPU type, time, and disk_mb. Unless
# keep_dumps, the dump is node-local scratch (common.smk's dump_output): on a cluster it and its
# eRank run in one job that asks for the disk (cluster.scratch_request, e.g. --tmp), and only the
# eRank tables (shared_mb) reach the shared results folder.


rule dump:
    input:
        texts=lambda w: texts_path(job(w).dataset),
        model=lambda w: set_input(job(w)),
    output:
        dump_output(),
    wildcard_constraints:
        layers=TAG,
        key=OWNED_SETS,
    params:
        spec=lambda w: spec(K.dump_spec(w.key)),
        variants=lambda w: " ".join(job(w).variants),
        layers=lambda w: " ".join(str(x) for x in K.layers_of(w.layers)),
        trained=lambda w: trained_path_arg(job(w)),
        variant_paths=lambda w: variant_paths_arg(job(w)),
        device=C["device"],
        tables=lambda w: K.table_path(w.key, w.layers),
    log:
        f"{OUT}/logs/dump/{{key}}/{{layers}}.log",
    benchmark:
        f"{OUT}/benchmarks/dump/{{key}}/{{layers}}.tsv"
    threads: lambda w: dump_estimate(w).threads
    priority: 10  # the longest jobs: started before the zoo's training, which fills the cores around them
    resources:
        **_sized(dump_estimate, "dump"),
        disk_mb=lambda w: dump_estimate(w).disk_mb,
        shared_mb=shared_mb,
        slurm_extra=scratch_request,
    shell:
        "echo {ABOUT:{wildcards.key}} > {log:q} && "
        "diff-erank dump --spec {params.spec:q} --variants {params.variants} --texts {input.texts:q}"
        " --out {output:q} --layers {params.layers} --device {params.device} {params.trained}"
        " {params.variant_paths} --threads {threads} --gpu-mem-mb {resources.gpu_mem_mb}"
        " --run-log {log:q} --tables {params.tables:q}"
        f"{'' if C['keep_dumps'] else ' --temp'} >> {{log:q}} 2>&1"
