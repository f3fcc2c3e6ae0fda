"""The bill is Snakemake's own DAG: ``diff-erank plan`` and ``snakemake -n`` agree on every experiment."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest
from helpers import EMPTY_EXPERIMENTS, REPO

from diff_erank.plan import Job, PlanError, bill, dag, snakefile_for

SNAKEFILE = REPO / "Snakefile"
ALL_EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
#: Every experiment of conf/experiment/ as a command line runs it; an empty one filled there.
CUSTOM = ["experiment=custom", "models=[pythia-70m,hf:EleutherAI/pythia-160m]", "datasets=[dolly-15k,piqa]"]
RUNS = {e: [f"experiment={e}"] for e in ALL_EXPERIMENTS if e not in EMPTY_EXPERIMENTS} | {"custom": CUSTOM}
#: the resources a rule asks for, as a dry run prints them (0: not declared)
ASKED = ("mem_mb", "runtime", "disk_mb", "gpu_mem_mb", "gpu")


def test_bill_adds_up_the_jobs_to_run_and_sets_apart_the_cached() -> None:
    def res(mem_gb: int, runtime: int, **more: object) -> dict:
        return {"mem_mb": mem_gb * 1000, "runtime": runtime, "tmpdir": "/tmp", **more}

    jobs = [
        Job("dump", True, 4, res(8, 90, gpu=1, gpu_mem_mb=40_000, disk_mb=300_000)),
        Job("dump", True, 2, res(6, 60, gpu=0, gres="gpu:a100:2", disk_mb=100_000)),  # GPUs in the gres
        Job("dump", False, 8, res(999, 999, gpu=1, disk_mb=999_000)),  # outputs there: counted, not paid
        Job("report", True, 1, res(2, 10)),
        Job("all", True, 1, {"tmpdir": "/tmp"}),
    ]
    lines = bill(jobs)
    assert list(lines) == ["dump", "report", "all", "total"]
    dump, report, total = lines["dump"], lines["report"], lines["total"]
    assert (dump.jobs, dump.cached, dump.threads) == (2, 1, 4)
    assert dump.gpu_hours == pytest.approx(1 * 1.5 + 2 * 1.0)
    assert dump.hours == pytest.approx(2.5)
    assert (dump.mem_mb, dump.gpu_mem_mb, dump.disk_mb, dump.disk_peak_mb) == (8000, 40000, 400000, 300000)
    assert (report.jobs, report.mem_mb, report.disk_mb) == (1, 2000, 0)
    assert report.hours == pytest.approx(10 / 60)
    assert (total.jobs, total.cached, total.mem_mb, total.disk_mb) == (4, 1, 8000, 400000)
    assert total.hours == pytest.approx(2.5 + 10 / 60) and total.gpu_hours == pytest.approx(3.5)


def test_disk_is_billed_where_it_lies() -> None:
    """Not kept, a dump is node-local: the plan gives the largest job's (what --tmp asks) and what
    stays shared (the tables); kept, the dumps are shared and nothing is node-local."""
    from diff_erank.plan import render

    jobs = [
        Job("dump", True, 4, {"disk_mb": 300_000, "shared_mb": 5, "gpu": 1, "runtime": 60}),
        Job("dump", True, 4, {"disk_mb": 100_000, "shared_mb": 3, "gpu": 1, "runtime": 60}),
        Job("erank", True, 4, {"runtime": 30}),
    ]
    cfg = {"name": "x", "results_dir": "results", "keep_dumps": False}
    rows = {r.split()[0]: r.split() for r in render(bill(jobs), cfg).splitlines() if r[:1].isalpha()}
    assert rows["total"][7:9] == ["300.0", "0.0"]  # node GB: the largest job; shared: 8 MB
    assert "held 0.5 h more" in render(bill(jobs), cfg)  # the eRank holds its dump's GPU
    kept = {r.split()[0]: r.split() for r in render(bill(jobs), cfg | {"keep_dumps": True}).splitlines()}
    assert kept["total"][7] == "-"  # no node-local scratch when the dumps are kept


def test_the_report_job_asks_what_its_rule_asks(tmp_path: Path) -> None:
    """workflow/rules/report.smk asks 2,000 MB and 10 minutes; the plan used to bill 4,000 and 20."""
    report = [j for j in dag(["experiment=fig1"], SNAKEFILE, tmp_path).jobs if j.rule == "report"]
    assert len(report) == 1 and report[0].needrun
    assert (report[0].get("mem_mb"), report[0].get("runtime")) == (2000, 10)
    assert bill(report)["report"].mem_mb == 2000


def test_what_the_cache_holds_is_counted_as_cached(tmp_path: Path) -> None:
    """table9: prepared texts and one model's eRank tables in the cache; its dump (temp, deleted once
    measured) and eRank are not run again, the other four models' are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jobs = dag(["experiment=table9"], SNAKEFILE, tmp_path).jobs
    counts = Counter(j.rule for j in jobs)
    assert (counts["prepare"], counts["dump"], counts["erank"]) == (1, 5, 5)
    (prepare,) = [j for j in jobs if j.rule == "prepare"]
    erank = next(j for j in jobs if j.rule == "erank")
    texts = tmp_path / prepare.output[0]
    texts.parent.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a prepared text " * 20] * 10}), texts)
    tables, key = (tmp_path / f for f in erank.output)
    tables.mkdir(parents=True)
    (tables / "trained.parquet").write_bytes(b"")
    key.write_text("{}")
    later = texts.stat().st_mtime + 10
    for f in (tables, tables / "trained.parquet", key):
        os.utime(f, (later, later))
    lines = bill(dag(["experiment=table9"], SNAKEFILE, tmp_path).jobs)
    assert (lines["prepare"].jobs, lines["prepare"].cached) == (0, 1)
    assert (lines["dump"].jobs, lines["dump"].cached) == (4, 1)
    assert (lines["erank"].jobs, lines["erank"].cached) == (4, 1)
    assert (lines["diff"].jobs, lines["diff"].cached) == (5, 0)  # this run folder's views: not made yet


def test_a_dag_snakemake_cannot_build_stops_with_its_reason(tmp_path: Path) -> None:
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text('rule all:\n    input: "missing.txt"\n')
    with pytest.raises(PlanError, match=r"(?s)snakemake -n fails the same way.*missing\.txt"):
        dag([], snakefile, tmp_path)
    snakefile.write_text('import sys\nsys.exit("Configuration error: no such model")\n')
    with pytest.raises(PlanError, match=r"^Configuration error: no such model$"):
        dag([], snakefile, tmp_path)
    with pytest.raises(PlanError, match="no Snakefile beside"):
        snakefile_for(tmp_path / "elsewhere" / "conf")
    assert snakefile_for(REPO / "conf") == SNAKEFILE


def dry_run_jobs(text: str) -> tuple[list[Job], Counter]:
    """The jobs ``snakemake -n`` prints (rule, threads, resources) and its "Job stats" table."""
    jobs, rule, threads, resources = [], None, 1, {}

    def close() -> None:
        if rule:
            jobs.append(Job(rule, True, threads, resources))

    for line in text.splitlines():
        if m := re.match(r"^(?:local)?rule (\S+):$", line):
            close()
            rule, threads, resources = m.group(1), 1, {}
        elif m := re.match(r"^    threads: (\d+)$", line):
            threads = int(m.group(1))
        elif line.startswith("    resources: "):
            for item in line.removeprefix("    resources: ").split(", "):
                k, v = item.split("=", 1)
                resources[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
        elif line.startswith("Job stats:"):
            close()
            rule = None
    stats = Counter()
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M):
        if m.group(1) != "total":
            stats[m.group(1)] = int(m.group(2))
    return jobs, stats


def test_every_experiment_is_planned() -> None:
    assert sorted(RUNS) == ALL_EXPERIMENTS


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(RUNS))
def test_plan_and_the_dry_run_agree(experiment: str, tmp_path: Path) -> None:
    """Per rule, the plan's jobs are those ``snakemake -n`` runs, each asking what the dry run shows
    (threads uncapped: --cores 64), and the bill's totals are their sums."""
    from helpers.workflow import snakemake

    r = snakemake(tmp_path, "-n", "--cores", "64", overrides=RUNS[experiment])
    assert r.returncode == 0, r.stderr[-3000:]
    printed, stats = dry_run_jobs(r.stdout + r.stderr)
    assert Counter(j.rule for j in printed) == stats

    planned = [j for j in dag(RUNS[experiment], SNAKEFILE, tmp_path).jobs if j.needrun]
    lines = bill(planned)
    assert {k: v.jobs for k, v in lines.items() if k != "total"} == dict(stats)

    def asked(jobs: list[Job]) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for j in jobs:
            out.setdefault(j.rule, Counter())[(j.threads, *(j.get(k) for k in ASKED))] += 1
        return out

    assert asked(planned) == asked(printed)
    total = lines["total"]
    assert total.jobs == sum(stats.values())
    assert total.disk_mb == sum(j.get("disk_mb") for j in printed)
    assert total.hours == pytest.approx(sum(j.get("runtime") for j in printed) / 60)
    assert total.mem_mb == max(j.get("mem_mb") for j in printed)
