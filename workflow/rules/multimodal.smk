# Multi-modal eRanks (LLaVA, MiniGPT-v2): items -> eRank1..5 per item, model and rotation -> Tables 2-3.


rule mm_prepare:
    input:
        lambda w: image_files(MM["datasets"][w.dataset]["source"]),
    output:
        f"{OUT}/mm/items/{{dataset}}.parquet",
    params:
        spec=lambda w: spec(MM["datasets"][w.dataset]),
    log:
        f"{OUT}/logs/mm_prepare/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/mm_prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "diff-erank mm-prepare --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule mm_erank:
    input:
        table=f"{OUT}/mm/items/{{dataset}}.parquet",
        model=mm_model_input,
    output:
        f"{OUT}/mm/erank/{{model}}/{{dataset}}/rot{{rotation}}.parquet",
    wildcard_constraints:
        rotation=r"-?\d+",
    params:
        spec=lambda w: spec(MM["models"][w.model]),
        device=C["device"],
        model_path=mm_model_path_arg,
    log:
        f"{OUT}/logs/mm_erank/{{model}}/{{dataset}}/rot{{rotation}}.log",
    benchmark:
        f"{OUT}/benchmarks/mm_erank/{{model}}/{{dataset}}/rot{{rotation}}.tsv"
    threads: THREADS
    resources:
        **_sized(mm_estimate),
    shell:
        "diff-erank mm-erank --spec {params.spec:q} --items {input.table:q} --rotation {wildcards.rotation}"
        " --out {output:q} --device {params.device} --threads {threads} {params.model_path} > {log:q} 2>&1"


rule convert_minigpt:
    input:
        minigpt_files,
    output:
        directory(f"{OUT}/mm/minigpt/{{model}}"),
    params:
        spec=lambda w: spec(MM["models"][w.model]),
    log:
        f"{OUT}/logs/convert_minigpt/{{model}}.log",
    benchmark:
        f"{OUT}/benchmarks/convert_minigpt/{{model}}.tsv"
    threads: 1
    resources:
        **_cpu_sized(lambda w: sizing.minigpt_convert_need(MM["models"][w.model])),
    shell:
        "diff-erank convert-minigpt --spec {params.spec:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


localrules:
    mm_report,  # seconds: in the main Snakemake process on a cluster, not through sbatch


rule mm_report:
    input:
        **mm_inputs(),
        config=f"{OUT}/config.json",
    output:
        **report_rule_outputs(multimodal_files(C)),
    params:
        inputs=lambda w, input: " ".join(shlex.quote(f"{k}={v}") for k, v in input.items() if k != "config"),
        run=run_folder,
        experiment=C["name"],
    log:
        f"{OUT}/logs/mm_report.log",
    benchmark:
        f"{OUT}/benchmarks/mm_report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "diff-erank mm-report --inputs {params.inputs} --config-file {input.config:q}"
        " --out-dir {params.run:q} > {log:q} 2>&1"
