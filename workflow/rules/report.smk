# Tables (CSV + Markdown + HTML), figures (PNG + PDF), the generated summary and the comparison with the
# paper. Every file the report writes is a declared output (diff_erank.outputs.report_files: one
# list for the rule and the code), so deleting any one of them reruns the rule.
from diff_erank.figure_registry import both_algorithms, has_stages, several_layers
from diff_erank.outputs import multimodal_files, report_files

# What Snakemake's HTML report shows, by file: caption, category (a paper table or figure) and labels.
# Tables appear as their HTML rendering (readable in the page); CSV, Markdown and PDF stay as files.
REPORT_ITEMS = {
    "summary.html": ("summary.rst", "Summary", "generated summary"),
    "reproduction.html": ("reproduction.rst", "Reproduction of the paper", "every paper number beside ours"),
    "tables/reproduction.html": ("reproduction.rst", "Reproduction of the paper", "comparison rows"),
    "figures/size.png": ("size.rst", "Fig. 1 / Table 6: size", "figure"),
    "tables/diff_erank.html": ("diff_erank.rst", "Fig. 1 / Table 6: size", "table"),
    "figures/accuracy.png": ("accuracy.rst", "Fig. 3 / Tables 1, 7-8: accuracy", "figure"),
    "tables/accuracy.html": ("accuracy.rst", "Fig. 3 / Tables 1, 7-8: accuracy", "table"),
    "figures/layers.png": ("layers.rst", "Table 4: layers", "figure"),
    "tables/layers.html": ("layers.rst", "Table 4: layers", "table"),
    "figures/algorithms.png": ("algorithms.rst", "Table 9 / Fig. 4: algorithms (a) and (b)", "figure"),
    "tables/algorithms_layers.html": (
        "algorithms.rst",
        "Table 9 / Fig. 4: algorithms (a) and (b)",
        "table",
    ),
    "figures/stages.png": ("stages.rst", "Table 10: training stages", "figure"),
    "tables/stages.html": ("stages.rst", "Table 10: training stages", "table"),
    "tables/all.html": ("all.rst", "All results", "table"),
    "tables/multimodal.html": ("multimodal.rst", "Tables 2-3: multi-modal", "table"),
    "figures/multimodal.png": ("multimodal.rst", "Tables 2-3: multi-modal", "figure"),
}


# Tables the report shows only where the run has what they compare: no "Table 4: layers" section
# for a one-layer run (the files are still written, and stay in tables/).
SHOWN_IF = {
    "tables/layers.html": several_layers,
    "tables/algorithms_layers.html": both_algorithms,
    "tables/stages.html": has_stages,
}


def report_rule_outputs(files=None):
    """A report rule's named outputs; the files Snakemake's report shows are wrapped in report()."""
    outs = {}
    for name, path in (report_files(C) if files is None else files).items():
        item = REPORT_ITEMS.get(path)
        if item and SHOWN_IF.get(path, lambda c: True)(C):
            caption, category, kind = item
            outs[name] = report(
                f"{OUT}/{path}",
                caption=f"../report/{caption}",
                category=category,
                labels={"kind": kind, "file": path},
            )
        else:
            outs[name] = f"{OUT}/{path}"
    return outs


# seconds of work each: on a cluster they run in the main Snakemake process, not through sbatch
localrules:
    resolved_config,
    report,


rule resolved_config:
    output:
        f"{OUT}/config.json",
    params:
        config=lambda w: spec(C),
    log:
        f"{OUT}/logs/resolved_config.log",
    threads: 1
    resources:
        mem_mb=100,
        runtime=1,
    shell:
        "cp {params.config:q} {output:q} 2> {log:q}"


rule report:
    input:
        diffs=expand(f"{OUT}/diff/{{model}}/{{dataset}}.parquet", model=list(C["models"]), dataset=MEASURED),
        accuracy=[f for m in C["models"] for f in accuracy_files(m)],
        config=f"{OUT}/config.json",
    output:
        **report_rule_outputs(),
    params:
        # what the report's "job parameters" show; the whole resolved config is input.config
        experiment=C["name"],
        models=" ".join(C["models"]),
        datasets=" ".join(MEASURED),
        layers=" ".join(str(x) for x in (C["layers"] if isinstance(C["layers"], list) else [C["layers"]])),
        algorithms=" ".join(C["algorithms"]),
        paper_tables=" ".join(C["paper_tables"]) or "none",
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
        "diff-erank report --diffs {input.diffs:q} --accuracy {input.accuracy:q} --config-file {input.config:q}"
        " --out-dir {params.run:q} > {log:q} 2>&1"
