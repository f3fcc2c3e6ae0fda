# The whole paper in one DAG (experiment=paper; diff_erank.paper): this Snakefile once more per
# experiment, as a module with that experiment's configuration and run folder (its rules renamed
# <experiment>_<rule>); the shared cache entries are made by their owner's rules only, at the union
# of the layers asked for. Then one reproduction report over every row of paper_reference.csv.
from diff_erank.cache import About, Keys, cache_dir, spec_file
from diff_erank.outputs import multimodal_files, report_files, reproduces_paper
from diff_erank.paper import alias as rule_prefix, keys_args



def site_settings_for_modules():
    """The profile's per-rule settings (profiles/slurm: set-resources, set-threads; a GPU rule's
    partition and threads) given to each experiment's renamed rules too (``fig1_dump`` as ``dump``):
    Snakemake applies them by rule name, and a module's rules are renamed before they are built."""
    settings = workflow.resource_settings
    for parsed in (settings._parsed_overwrite_resources, settings._parsed_overwrite_threads):
        for rule, value in list(parsed.items()):
            for experiment in PAPER.parts:
                parsed.setdefault(f"{rule_prefix(experiment)}{rule}", value)


site_settings_for_modules()

for experiment in PAPER.parts:
    module:
        name:
            experiment
        snakefile:
            workflow.main_snakefile
        config:
            PAPER.module_config(experiment)

    prefix = rule_prefix(experiment)

    use rule * from experiment exclude all as prefix*


#: every experiment's cache paths and keys (common.smk's K, one per module)
PART_KEYS = [
    Keys(cfg, PAPER.run(e), **keys_args(PAPER.module_config(e)[PART_KEY])) for e, cfg in PAPER.parts.items()
]
#: common.smk's ABOUT over every experiment: Snakemake formats a module's shell line with this
#: file's names when it prints it
ABOUT = About(PART_KEYS)


def part_outputs(experiment):
    """Everything one experiment's run writes (its own `all`), in its run folder."""
    cfg, run = PAPER.parts[experiment], PAPER.run(experiment)
    files = list(report_files(cfg).values()) if cfg["models"] else []
    return [f"{run}/{f}" for f in [*files, *multimodal_files(cfg).values()]]


def part_comparisons():
    """``experiment=<its comparison table>`` for the paper report, one per comparison it writes."""
    out = []
    for e, cfg in PAPER.parts.items():
        run = PAPER.run(e)
        if cfg["models"] and reproduces_paper(cfg):
            out.append(f"{e}={run}/tables/reproduction.csv")
        if "tables_reproduction_multimodal_csv" in multimodal_files(cfg):
            out.append(f"{e}={run}/tables/reproduction_multimodal.csv")
    return out


def spec(obj):
    """common.smk's ``spec`` (which a paper run's own rules do not include): a spec file's path."""
    return spec_file(cache_dir(C), obj, write=not workflow.dryrun)


rule paper_report:
    input:
        [f for e in PAPER.parts for f in part_outputs(e)],
    output:
        md=f"{OUT}/reproduction.md",
        html=report(
            f"{OUT}/reproduction.html",
            caption="../report/reproduction.rst",
            category="Reproduction of the paper",
            labels={"kind": "every paper row, one status each", "file": "reproduction.html"},
        ),
        table=multiext(f"{OUT}/tables/reproduction", ".csv", ".md", ".html", ".provenance.json"),
    params:
        comparisons=" ".join(part_comparisons()),
        config=lambda w: spec({**C, "claimers": PAPER.claimers}),
        run=OUT,
    log:
        f"{OUT}/logs/paper_report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "diff-erank paper-report --comparisons {params.comparisons} --config-file {params.config:q}"
        " --out-dir {params.run:q} > {log:q} 2>&1"


def cache_entries():
    """The cached table sets (and key files) every experiment's views read, as targets of `all`
    (common.smk's cache_entries, per experiment): a cache entry deleted under a finished paper
    run is measured again, by its owner's rules."""
    tables = {t for k in PART_KEYS for m, d in k.sets for t in k.source_tables(m, d)}
    return [f for t in sorted(tables) for f in (t, f"{t}.json")]


def report_outputs():
    """What `all` asks for: the paper's report (and through it every experiment's outputs)."""
    return list(rules.paper_report.output)
