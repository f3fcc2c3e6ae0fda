# Multi-modal eRanks (LLaVA): items -> eRank1..5 per item, model and rotation -> Tables 2-3.


rule mm_prepare:
    input:
        lambda w: image_files(MM["datasets"][w.dataset]["source"]),
    output:
        f"{OUT}/mm/items/{{dataset}}.parquet",
    params:
        spec=lambda w: as_json(MM["datasets"][w.dataset]),
    log:
        f"{OUT}/logs/mm_prepare/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/mm_prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "diff-erank mm-prepare --spec {params.spec:q} --out {output} > {log} 2>&1"


rule mm_erank:
    input:
        table=f"{OUT}/mm/items/{{dataset}}.parquet",
        model=lambda w: model_files(MM["models"][w.model], "trained"),
    output:
        f"{OUT}/mm/erank/{{model}}/{{dataset}}/rot{{rotation}}.parquet",
    wildcard_constraints:
        rotation=r"-?\d+",
    params:
        spec=lambda w: as_json(MM["models"][w.model]),
        device=C["device"],
    log:
        f"{OUT}/logs/mm_erank/{{model}}/{{dataset}}/rot{{rotation}}.log",
    benchmark:
        f"{OUT}/benchmarks/mm_erank/{{model}}/{{dataset}}/rot{{rotation}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: (MM["models"][w.model].get("resources") or {}).get("mem_mb", 8000),
        runtime=lambda w: (MM["models"][w.model].get("resources") or {}).get("runtime", 60),
        gpu=lambda w: (MM["models"][w.model].get("resources") or {}).get("gpus", 0),
    shell:
        "diff-erank mm-erank --spec {params.spec:q} --items {input.table} --rotation {wildcards.rotation}"
        " --out {output} --device {params.device} --threads {threads} > {log} 2>&1"


rule mm_report:
    input:
        **mm_inputs(),
    output:
        table=report(f"{OUT}/tables/multimodal.csv", caption="../report/multimodal.rst", category="Multi-modal"),
        figure=report(f"{OUT}/figures/multimodal.png", caption="../report/multimodal.rst", category="Multi-modal"),
        reproduction=f"{OUT}/reproduction_multimodal.md" if {"table2", "table3"} & set(C["paper_tables"]) else [],
    params:
        inputs=lambda w, input: " ".join(f"{k}={v}" for k, v in input.items()),
        config=lambda w: as_json(C),
        run=run_folder,
    log:
        f"{OUT}/logs/mm_report.log",
    benchmark:
        f"{OUT}/benchmarks/mm_report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "diff-erank mm-report --inputs {params.inputs} --config {params.config:q} --out-dir {params.run} > {log} 2>&1"
