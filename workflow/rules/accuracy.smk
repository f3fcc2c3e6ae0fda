# Zero-shot accuracy of a model variant with lm-evaluation-harness (tasks in the experiment).


rule accuracy:
    input:
        model=variant_input,
    output:
        f"{OUT}/accuracy/{{model}}/{{variant}}.json",
    params:
        spec=model_spec,
        accuracy=lambda w: spec(C["accuracy"]),
        trained=trained_path_arg,
        variant=variant_path_arg,
        device=C["device"],
    log:
        f"{OUT}/logs/accuracy/{{model}}/{{variant}}.log",
    benchmark:
        f"{OUT}/benchmarks/accuracy/{{model}}/{{variant}}.tsv"
    threads: lambda w: accuracy_estimate(w).threads
    resources:
        **_sized(accuracy_estimate),
    shell:
        "diff-erank accuracy --spec {params.spec:q} --variant {wildcards.variant}"
        " --accuracy {params.accuracy:q} --out {output:q} --device {params.device}"
        " {params.trained} {params.variant} --threads {threads} > {log:q} 2>&1"
