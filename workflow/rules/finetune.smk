# Training stages: a variant trained further on a dataset's texts (ft-<name>, the paper's Table 10).


rule finetune:
    input:
        texts=lambda w: texts_path(finetune_recipe(w)["dataset"]),
        model=trained_input,
        start=finetune_from,
    output:
        directory(f"{OUT}/finetuned/{{model}}/{{name}}"),
    params:
        spec=model_spec,
        recipe=lambda w: as_json(finetune_recipe(w)),
        trained=trained_path_arg,
        start=lambda w, input: f"--from-path {input.start[0]}" if input.start else "",
        device=C["device"],
    log:
        f"{OUT}/logs/finetune/{{model}}/{{name}}.log",
    benchmark:
        f"{OUT}/benchmarks/finetune/{{model}}/{{name}}.tsv"
    threads: lambda w: finetune_estimate(w).threads
    resources:
        **_sized(finetune_estimate),
    shell:
        "diff-erank finetune --spec {params.spec:q} --recipe {params.recipe:q} --texts {input.texts}"
        " --out {output} --device {params.device} {params.trained} {params.start}"
        " --threads {threads} > {log} 2>&1"
