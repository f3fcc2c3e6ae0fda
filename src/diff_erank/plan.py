"""The bill of an experiment before it runs: ``diff-erank plan experiment=<name>``.

The jobs are Snakemake's own: the workflow's DAG for the experiment, built through Snakemake's API
the way ``snakemake -n`` builds it (same Snakefile, same overrides, same working directory), and
each job's resources as its rule evaluates them (the rules size themselves with
:mod:`diff_erank.sizing`: before ``prepare`` from the datasets' ``size_hint``, after it from the
prepared texts). Nothing here counts jobs or sizes them again, so the plan and the dry run cannot
disagree. A job whose outputs already exist and are up to date (a measurement the shared cache
holds, :mod:`diff_erank.cache`, or a step this run folder has done) is counted as cached: it costs
nothing and is not run again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diff_erank.errors import UserError


class PlanError(UserError, RuntimeError):
    """Snakemake could not build the experiment's DAG (the dry run would fail the same way)."""


@dataclass(frozen=True)
class Job:
    """One job of the DAG: its rule, whether it runs, its threads, evaluated resources and outputs."""

    rule: str
    needrun: bool
    threads: int
    resources: Mapping[str, Any] = field(default_factory=dict)
    output: tuple[str, ...] = ()
    local: bool = False  # a localrule: on a cluster it runs in the main Snakemake process, not via sbatch

    def get(self, name: str) -> float:
        """A numeric resource, 0 if the rule does not declare it."""
        value = self.resources.get(name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    @property
    def gpus(self) -> int:
        """GPUs asked for: ``gpu``, or the count of a ``gres`` of ``gpu:<type>:<n>``."""
        gres = self.resources.get("gres")
        if isinstance(gres, str) and gres.startswith("gpu"):
            count = gres.rsplit(":", 1)[-1]
            return int(count) if count.isdigit() else 1
        return int(self.get("gpu"))


def snakefile_for(conf_dir: str | Path) -> Path:
    """The workflow that reads ``conf_dir`` (the Snakefile composes the ``conf/`` beside it)."""
    snakefile = Path(conf_dir).resolve().parent / "Snakefile"
    if not snakefile.is_file():
        raise PlanError(
            f"plan reads the workflow's own DAG, and there is no Snakefile beside {conf_dir}: "
            "run it in a checkout of the workflow (or give --conf-dir <checkout>/conf)"
        )
    return snakefile


@dataclass(frozen=True)
class Dag:
    """The experiment's configuration as the workflow composed it, and every job of its DAG."""

    config: dict[str, Any]
    jobs: list[Job]


def dag(overrides: Sequence[str], snakefile: str | Path, workdir: str | Path = ".") -> Dag:
    """The DAG ``snakemake -n --config overrides=[...]`` builds in ``workdir``.

    Snakemake's API loads the Snakefile and builds the DAG as a dry run does (the workflow profile's
    ``rerun-incomplete`` included), without executing, locking or running ``onstart``. The Snakefile
    composes and validates the configuration (its error stops here in one sentence). Threads are the
    rules' own (not capped by a machine's cores); jobs come in the order the rules are defined.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.exceptions import RuleException, WorkflowError
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
    )

    output = OutputSettings(quiet={Quietness.ALL}, enable_file_logging=False)
    log = logging.getLogger("snakemake.logging")  # quiet: not through the command line's root handler
    propagate, log.propagate = log.propagate, False
    try:
        with SnakemakeApi(output) as api:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(cores=2**16),
                config_settings=ConfigSettings(config={"overrides": list(overrides)}),
                snakefile=Path(snakefile).resolve(),
                workdir=Path(workdir).resolve(),
            )
            workflow_api.dag(DAGSettings(force_incomplete=True))
            # what DAGApi.printdag/summary do (Workflow.printdag): the DAG, its needrun jobs and
            # their resources, with no executor
            workflow = workflow_api._workflow
            workflow._prepare_dag(forceall=False, ignore_incomplete=False, lock_warn_only=True)
            workflow._build_dag()
            graph = workflow.dag
            order = {rule.name: i for i, rule in enumerate(workflow.rules)}
            config = workflow.globals.get("C", {})  # the configuration the Snakefile composed
            jobs = [
                Job(
                    job.rule.name,
                    graph.needrun(job),
                    int(job.threads),
                    dict(job.resources.items()),
                    tuple(str(f) for f in job.output),
                    job.rule.name in workflow._localrules or job.rule.norun,  # local on a cluster
                )
                for job in graph.jobs
            ]
    except (WorkflowError, RuleException) as exc:
        raise PlanError(f"Snakemake cannot build the DAG (snakemake -n fails the same way): {exc}") from None
    except SystemExit as exc:  # the Snakefile's own one-sentence stop (a configuration error)
        raise PlanError(str(exc.code)) from None
    finally:
        log.propagate = propagate
    return Dag(config, sorted(jobs, key=lambda j: order.get(j.rule, len(order))))


@dataclass
class Line:
    kind: str
    jobs: int = 0
    cached: int = 0
    gpu_hours: float = 0.0
    hours: float = 0.0
    gpu_mem_mb: int = 0
    mem_mb: int = 0
    disk_mb: int = 0  # written in all (dumps: scratch)
    disk_peak_mb: int = 0  # the largest single job
    shared_mb: int = 0  # what stays on the shared filesystem (eRank tables; dumps if kept)
    threads: int = 0  # the most of one job

    def add(self, job: Job) -> None:
        if not job.needrun:
            self.cached += 1
            return
        self.jobs += 1
        runtime = job.get("runtime")
        self.gpu_hours += job.gpus * runtime / 60
        self.hours += runtime / 60
        self.gpu_mem_mb = max(self.gpu_mem_mb, int(job.get("gpu_mem_mb")))
        self.mem_mb = max(self.mem_mb, int(job.get("mem_mb")))
        self.disk_mb += int(job.get("disk_mb"))
        self.disk_peak_mb = max(self.disk_peak_mb, int(job.get("disk_mb")))
        self.shared_mb += int(job.get("shared_mb"))
        self.threads = max(self.threads, job.threads)

    def merge(self, other: Line) -> None:
        self.jobs += other.jobs
        self.cached += other.cached
        self.gpu_hours += other.gpu_hours
        self.hours += other.hours
        self.gpu_mem_mb = max(self.gpu_mem_mb, other.gpu_mem_mb)
        self.mem_mb = max(self.mem_mb, other.mem_mb)
        self.disk_mb += other.disk_mb
        self.disk_peak_mb = max(self.disk_peak_mb, other.disk_peak_mb)
        self.shared_mb += other.shared_mb
        self.threads = max(self.threads, other.threads)


def bill(jobs: Iterable[Job]) -> dict[str, Line]:
    """``{rule: Line}`` in the order the jobs come, plus ``total``: jobs to run and their
    resources, and the jobs whose outputs are already there (``cached``)."""
    lines: dict[str, Line] = {}
    for job in jobs:
        lines.setdefault(job.rule, Line(job.rule)).add(job)
    total = Line("total")
    for line in lines.values():
        total.merge(line)
    return {**lines, "total": total}


def render(lines: dict[str, Line], cfg: dict[str, Any]) -> str:
    """A fixed-width table; sizes in GB (10^9 bytes), times in hours.

    Disk in two places: ``node GB``, the largest node-local scratch one job needs (a dump, written
    to the compute node's $TMPDIR and deleted once its eRank is measured in the same job: what
    ``--tmp`` asks for), and ``shared GB``, what stays on the shared filesystem (the eRank tables;
    with ``keep_dumps`` the dumps too, and then no node-local scratch)."""

    def gb(mb: int) -> str:
        return f"{mb / 1000:,.1f}" if mb else "-"

    kept = bool(cfg.get("keep_dumps"))
    width = max(10, *(len(k) for k in lines))
    head = (
        f"{'job kind':<{width}} {'jobs':>5} {'cached':>6} {'GPU-h':>8} {'job-h':>8} "
        f"{'peak GPU GB':>11} {'peak host GB':>12} {'node GB':>9} {'shared GB':>10} {'threads':>7}"
    )
    rows = [
        f"{line.kind:<{width}} {line.jobs:>5} {line.cached:>6} {line.gpu_hours:>8.1f} {line.hours:>8.1f} "
        f"{gb(line.gpu_mem_mb):>11} {gb(line.mem_mb):>12} {gb(0 if kept else line.disk_peak_mb):>9} "
        f"{gb(line.shared_mb):>10} {line.threads or '-':>7}"
        for line in lines.values()
    ]
    where = (
        "dumps kept in the shared cache (keep_dumps): shared GB includes them"
        if kept
        else "node GB = the largest node-local scratch of one job (a dump, measured and deleted in "
        "its job: --tmp); shared GB = what stays on the shared filesystem (eRank tables)"
    )
    note = (
        f"experiment {cfg['name']}: Snakemake's own jobs and resources (snakemake -n runs the same jobs); "
        f"cached = outputs already there (the shared {cfg['results_dir']}/cache, or this run folder): "
        f"not run again; {where}; threads = the most of one job (--cpus-per-task)"
    )
    if not kept and lines.get("erank") and lines["erank"].jobs and lines.get("dump"):
        note += (
            f"; on a cluster each erank runs in its dump's job, on its GPU node: the GPUs are held "
            f"{lines['erank'].hours:.1f} h more than GPU-h says"
        )
    return "\n".join([head, "-" * len(head), *rows[:-1], "-" * len(head), rows[-1], note])


def download_line(cfg: dict[str, Any]) -> str:
    """The fetch step's bill: what `diff-erank fetch` downloads into hf_home before any job, from the
    model entries' ``params`` and ``dtype`` (each ``rev-`` variant is another full checkpoint)."""
    from diff_erank.hub import download_bytes, downloads

    size, n_datasets = download_bytes(cfg)
    n_models = sum(d.kind == "model" for d in downloads(cfg))
    where = cfg.get("hf_home") or "~/.cache/huggingface (set hf_home to fetch on the login node)"
    return (
        f"download: {size / 1e9:,.1f} GB for {n_models} model checkpoint(s) (params x dtype bytes) "
        f"+ {n_datasets} hub dataset(s), into {where}"
    )
# -- a paper run (experiment=paper, diff_erank.paper): one bill over its experiments' modules ------

#: Bytes per parameter of the published checkpoints the download estimate assumes (16-bit weights).
DOWNLOAD_BYTES_PER_PARAM = 2


def by_kind(jobs: Iterable[Job], experiments: Sequence[str]) -> list[Job]:
    """The jobs with each experiment's rule prefix taken off (``fig1_dump`` -> ``dump``), so a paper
    run's bill has one line per kind of job over all its experiments."""
    from dataclasses import replace

    from diff_erank.paper import alias

    prefixes = sorted((alias(e) for e in experiments), key=len, reverse=True)
    out = []
    for job in jobs:
        kind = next((job.rule[len(p) :] for p in prefixes if job.rule.startswith(p)), job.rule)
        out.append(replace(job, rule=kind))
    return out


def downloads(parts: Mapping[str, dict[str, Any]]) -> dict[str, float]:
    """GB of model weights a paper run downloads, per family: each distinct (source, revision) its
    experiments load once (the hub cache keeps it), sized as ``params`` x 2 bytes (16-bit weights as
    published; a multi-modal entry by its size label, its LLM alone). Datasets are not counted."""
    from diff_erank.sizing import size_value
    from diff_erank.variants import Variant, variants

    seen: dict[tuple[str, str, str], float] = {}
    for cfg in parts.values():
        for m in cfg["models"].values():
            if not m.get("source"):
                continue  # trained by the workflow or converted from local files: nothing to download
            for v in variants(m):
                parsed = Variant.parse(v)
                if parsed.made_from == "weights":  # a revision's weights (init-s: a config; ft-: made here)
                    rev = parsed.source_revision(m) or "main"
                    seen[(m["family"], m["source"], rev)] = float(m.get("params") or size_value(m["size"]))
        for m in ((cfg.get("multimodal") or {}).get("models") or {}).values():
            llama = ((m.get("minigpt") or {}).get("checkpoints") or {}).get("llama") or {}
            source = m.get("source") or llama.get("source")
            seen[(m["family"], str(source), "main")] = size_value(m["size"])
    out: dict[str, float] = {}
    for (family, _, _), params in seen.items():
        out[family] = out.get(family, 0.0) + params * DOWNLOAD_BYTES_PER_PARAM / 1e9
    return dict(sorted(out.items()))


def render_paper(
    shared: Line, separate: Mapping[str, Line], dumps: tuple[int, int], gb: Mapping[str, float]
) -> str:
    """What sharing saves (the paper run against its experiments run one by one) and the downloads."""
    alone = Line("one by one")
    for line in separate.values():
        alone.merge(line)

    def row(label: str, jobs: int, n_dumps: int, gpu_h: float, job_h: float, disk_mb: float) -> str:
        return f"{label:<22} {jobs:>6} {n_dumps:>9} {gpu_h:>8.1f} {job_h:>8.1f} {disk_mb / 1000:>10,.1f}"

    rows = [
        f"{'':<22} {'jobs':>6} {'dump jobs':>9} {'GPU-h':>8} {'job-h':>8} {'scratch GB':>10}",
        row("paper, one DAG", shared.jobs, dumps[0], shared.gpu_hours, shared.hours, shared.disk_mb),
        row("experiments one by one", alone.jobs, dumps[1], alone.gpu_hours, alone.hours, alone.disk_mb),
        row(
            "saved",
            alone.jobs - shared.jobs,
            dumps[1] - dumps[0],
            alone.gpu_hours - shared.gpu_hours,
            alone.hours - shared.hours,
            alone.disk_mb - shared.disk_mb,
        ),
        "",
        "download (model weights, 16-bit, each source and revision once): "
        + ", ".join(f"{f} {v:,.0f} GB" for f, v in gb.items())
        + f"; total {sum(gb.values()):,.0f} GB",
    ]
    return "\n".join(rows)


def paper_plan(whole: Dag, overrides: Sequence[str], snakefile: str | Path, workdir: str | Path = ".") -> str:
    """``diff-erank plan experiment=paper``: the paper run's bill (``whole``, its DAG) by kind of
    job, what sharing the cache saves against running its experiments one by one (each one's own
    DAG, in the same run folder), and the download per family."""
    from diff_erank.paper import part_overrides

    cfg = whole.config
    jobs = by_kind(whole.jobs, cfg["experiments"])
    lines = bill(jobs)
    separate, parts, n_dumps = {}, {}, 0
    for e in cfg["experiments"]:
        one = dag(part_overrides(overrides, cfg, e), snakefile, workdir)
        separate[e], parts[e] = bill(one.jobs)["total"], one.config
        n_dumps += sum(1 for j in one.jobs if j.rule == "dump" and j.needrun)
    shared_dumps = sum(1 for j in jobs if j.rule == "dump" and j.needrun)
    saving = render_paper(lines["total"], separate, (shared_dumps, n_dumps), downloads(parts))
    return "\n".join([render(lines, cfg), "", saving])
