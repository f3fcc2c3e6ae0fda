# Tables (CSV + Markdown), figures (PNG + PDF) and the generated summary of the experiment.


rule report:
    input:
        diffs=expand(f"{OUT}/diff/{{model}}/{{dataset}}.parquet", model=list(C["models"]), dataset=MEASURED),
        accuracy=[f for m in C["models"] for f in accuracy_files(m)],
    output:
        table=report(f"{OUT}/tables/diff_erank.csv", caption="../report/diff_erank.rst", category="Tables"),
        summary=report(f"{OUT}/summary.md", caption="../report/summary.rst", category="Summary"),
        figure=report(f"{OUT}/figures/size.png", caption="../report/size.rst", category="Figures")
        if "size" in C["figures"]
        else [],
        reproduction=report(f"{OUT}/reproduction.md", caption="../report/reproduction.rst", category="Reproduction")
        if set(C["paper_tables"]) - {"table2", "table3"}
        else [],
    params:
        config=lambda w: as_json(C),
        run=run_folder,
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "diff-erank report --diffs {input.diffs} --accuracy {input.accuracy} --config {params.config:q}"
        " --out-dir {params.run} > {log} 2>&1"
