# Training stages: a variant trained further on a dataset's texts (ft-<name>, the paper's Table 10).


rule finetune:
    input:
        texts=lambda w: texts_path(finetune_recipe(stage(w))["dataset"]),
        model=lambda w: trained_input(stage(w)),
        start=lambda w: finetune_from(stage(w)),
    output:
        directory(K.finetuned_path("{stage}")),
    wildcard_constraints:
        stage=one_of(K.finetuned),
    params:
        spec=lambda w: model_spec(stage(w)),
        recipe=lambda w: spec(finetune_recipe(stage(w))),
        trained=lambda w: trained_path_arg(stage(w)),
        start=lambda w, input: f"--from-path {shlex.quote(input.start[0])}" if input.start else "",
        device=C["device"],
    log:
        f"{OUT}/logs/finetune/{{stage}}.log",
    benchmark:
        f"{OUT}/benchmarks/finetune/{{stage}}.tsv"
    threads: lambda w: finetune_estimate(stage(w)).threads
    resources:
        **_sized(lambda w: finetune_estimate(stage(w))),
    shell:
        "echo {ABOUT:{wildcards.stage}} > {log:q} && "
        "diff-erank finetune --spec {params.spec:q} --recipe {params.recipe:q} --texts {input.texts:q}"
        " --out {output:q} --device {params.device} {params.trained} {params.start}"
        " --threads {threads} >> {log:q} 2>&1"
