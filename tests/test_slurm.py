"""The SLURM profile against a real Slurm (slurmctld, slurmd, slurmdbd + MariaDB) on localhost.

Skipped, with the reason, where such a cluster cannot be stood up (not root, no apt). The Debian
packages are installed only in CI (``CI=true``, as ``.ci/run`` sets) or when the user opts in with
``DIFF_ERANK_INSTALL_SLURM=1``; elsewhere the skip message says so. The daemons are
machine-wide: run one such test session at a time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO
from helpers.slurm_cluster import OPT_IN, SlurmCluster, SlurmUnavailable, ensure_installed
from helpers.workflow import snakemake

OVERRIDES = ["experiment=ci", "~models.zoo-opt-s", "~models.zoo-neox-xs", "bootstrap.samples=50"]
THREADS = min(4, os.cpu_count() or 2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(f"no real Slurm can run here: {exc}")
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture
def profile(tmp_path, cluster) -> Path:
    """The shipped profile with its two site lines set for this cluster, as a user edits it."""
    prof = tmp_path / "profile"
    shutil.copytree(REPO / "profiles" / "slurm", prof)
    cfg = prof / "config.yaml"
    text = cfg.read_text()
    text = text.replace('slurm_partition: "cpu"', f'slurm_partition: "{cluster.PARTITION}"')
    text = text.replace('slurm_partition: "gpu"', f'slurm_partition: "{cluster.GPU_PARTITION}"')
    text = re.sub(r"^(  \w+): 4$", rf"\1: {THREADS}", text, flags=re.M)  # set-threads: the node's cores
    text = re.sub(r'slurm_account: "[^"]*"', f'slurm_account: "{cluster.ACCOUNT}"', text)
    text = text.replace(
        "slurm-init-seconds-before-status-checks: 20", "slurm-init-seconds-before-status-checks: 2"
    )
    text = text.replace("latency-wait: 60", "latency-wait: 5")
    assert text.count(f'"{cluster.ACCOUNT}"') >= 1
    cfg.write_text(text)
    return prof


#: the steps of seconds that run in the main Snakemake process, never through sbatch (localrules)
LOCAL_RULES = ("resolved_config", "diff", "report")


def job_stats(workdir: Path, overrides: list[str]) -> dict[str, int]:
    """``snakemake -n``'s count of jobs per rule."""
    r = snakemake(workdir, "-n", overrides=overrides)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (r.stdout + r.stderr).split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


class Watcher(threading.Thread):
    """Polls folders while a run goes on: every path seen under ``shared`` that is (part of) a dump
    (a ``dumps`` folder, a shard, a dump's manifest or fingerprint, finished or ``.partial``) and
    every such path seen under ``scratch``."""

    def __init__(self, shared: Path, scratch: Path) -> None:
        super().__init__(daemon=True)
        self.shared, self.scratch = shared, scratch
        self.dumps_shared: set[str] = set()
        self.shards_scratch: set[str] = set()
        self.done = threading.Event()

    @staticmethod
    def is_dump(p: Path) -> bool:
        dump_files = ("manifest.json", "variants.json", "fingerprint.txt")
        return "dumps" in p.parts or p.name.startswith("shard-") or p.name in dump_files

    def run(self) -> None:
        while not self.done.is_set():
            for root, found in ((self.shared, self.dumps_shared), (self.scratch, self.shards_scratch)):
                with contextlib.suppress(OSError):  # a folder removed while walked
                    found |= {str(p) for p in root.rglob("*") if self.is_dump(p)}
            self.done.wait(0.05)


def test_system_packages_are_installed_only_when_asked(tmp_path, monkeypatch) -> None:
    """`make test` on a user's machine never apt-installs Slurm; the skip says how to opt in."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm binaries anywhere (and no apt-get)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(OPT_IN, raising=False)
    with pytest.raises(SlurmUnavailable, match=rf"not installed; run `{OPT_IN}=1 pytest tests/test_slurm"):
        ensure_installed()
    monkeypatch.setenv(OPT_IN, "1")  # allowed now: it gets as far as looking for apt-get
    with pytest.raises(SlurmUnavailable, match=r"no apt-get|not root"):
        ensure_installed()


@pytest.mark.slow
def test_ci_experiment_through_slurm_equals_a_local_run(cluster, profile, tmp_path) -> None:
    """Each dump and its eRank run in one Slurm job on node-local scratch, which the job asks for
    (--tmp): no dump ever appears under the shared results folder; the seconds-long steps
    (localrules) never reach sbatch; at most 2 variants a job (cluster.variants_per_job): the
    tables equal a local run's, which measures all 3 of a model in one job."""
    before = len(cluster.requests())
    node = tmp_path / "node-scratch"  # the compute node's $TMPDIR, as a site sets it
    overrides = [*OVERRIDES, f"scratch_dir={node}", "cluster.variants_per_job=2"]
    stats = job_stats(tmp_path / "dry", overrides)
    # `all` is a local target; the local rules run here; each erank runs inside its dump's job
    expected = sum(n for rule, n in stats.items() if rule not in ("total", "all", "erank", *LOCAL_RULES))
    slurm = tmp_path / "slurm"
    watcher = Watcher(slurm / "results", node)
    watcher.start()
    try:
        r = snakemake(slurm, "--profile", str(profile), overrides=overrides, env=cluster.env)
    finally:
        watcher.done.set()
        watcher.join()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + cluster.logs()
    assert watcher.shards_scratch, "the dumps should have been written to the node-local scratch"
    assert not watcher.dumps_shared, sorted(watcher.dumps_shared)[:10]
    left = [p for p in node.rglob("*") if p.is_file() and p.suffix != ".lock"]  # an empty lock file stays
    assert not left, left  # measured, then deleted on the node
    assert (slurm / "results" / "cache" / "erank").is_dir()  # the eRank tables are shared
    jobs = cluster.requests()[before:]
    states = {j["id"]: j["state"] for j in cluster.accounted_jobs()}
    assert len(jobs) == expected, jobs
    assert {states[j["id"]] for j in jobs} == {"COMPLETED"}
    rules = {j["comment"] for j in jobs}
    for rule in (*LOCAL_RULES, "erank", "dump"):  # dump and erank: as group jobs, not rule jobs
        assert not any(c.startswith(f"rule_{rule}") for c in rules), (rule, rules)
    groups = [j for j in jobs if not re.match(r"rule_(corpus|tokenizer|train|prepare)", j["comment"])]
    assert len(groups) == stats["dump"] == stats["erank"] == 2 * stats["diff"], jobs  # 3 variants: 2 jobs
    tmp = cluster.tmp_requests()
    for j in groups:  # the node-local disk reached sbatch (--tmp from cluster.scratch_request)
        assert j["partition"] == cluster.GPU_PARTITION
        assert int(re.match(r"\d+", tmp[j["id"]]).group()) > 0, (j, tmp.get(j["id"]))
    local = tmp_path / "local"
    r = snakemake(local, overrides=OVERRIDES)  # dumps in this machine's /tmp
    assert r.returncode == 0, r.stderr[-3000:]
    for f in sorted((slurm / "results" / "ci" / "erank").rglob("*.parquet")):
        other = local / "results" / "ci" / f.relative_to(slurm / "results" / "ci")
        pd.testing.assert_frame_equal(pd.read_parquet(f), pd.read_parquet(other), check_exact=True)
    a = pd.read_csv(slurm / "results" / "ci" / "tables" / "diff_erank.csv")
    b = pd.read_csv(local / "results" / "ci" / "tables" / "diff_erank.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.slow
def test_a_failed_job_names_its_slurm_log_and_a_rerun_finishes(cluster, profile, tmp_path) -> None:
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"text": "a fine first row of text"}\n{"text": broken json\n')
    overrides = [
        *OVERRIDES,
        "+dataset@datasets.extra=demo-docstrings",
        "datasets.extra.source.kind=jsonl",
        f"++datasets.extra.source.data_files='{extra}'",
        "++datasets.extra.source.split=train",
    ]
    work = tmp_path / "work"
    r = snakemake(work, "--profile", str(profile), overrides=overrides, env=cluster.env)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    logs = re.findall(r"(\S*slurm_logs/rule_prepare/\S+\.log)", out)
    assert logs, out[-3000:]
    assert any((work / p).is_file() or Path(p).is_file() for p in logs)
    results = work / "results" / "ci"
    assert (results / "diff" / "zoo-opt-xs" / "topics.parquet").is_file()  # the rest went on
    texts = list((work / "results" / "cache" / "texts").iterdir())
    assert len(texts) == 1 and texts[0].suffix == ".parquet"  # the failed prepare left nothing behind
    failed = [j for j in cluster.accounted_jobs() if j["state"] == "FAILED"]
    assert failed, "the failed job should be in Slurm's accounting"
    rows = [f'{{"text": "row {i} of a repaired file, long enough to count"}}\n' for i in range(12)]
    extra.write_text("".join(rows))
    r = snakemake(work, "--profile", str(profile), overrides=overrides, env=cluster.env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stats = r.stdout + r.stderr
    assert not re.search(r"^train\s+\d+$", stats, re.M)  # finished work is not redone
    assert re.search(r"^prepare\s+1$", stats, re.M)
    assert (results / "diff" / "zoo-opt-xs" / "extra.parquet").is_file()


@pytest.mark.slow
def test_job_sizes_reach_slurm(cluster, profile, tmp_path) -> None:
    """The estimates are what Slurm accounts: memory, CPUs, partition and the GPU as a typed GRES;
    without the site's GPU types a job needing more than cluster.gpu_mem_gb is never submitted."""
    from diff_erank import sizing
    from diff_erank.cache import Keys
    from diff_erank.config import load_config
    from diff_erank.entries import DatasetEntry, ModelEntry

    before = len(cluster.requests())
    big = [*OVERRIDES, "models.zoo-opt-xs.resources.gpus=1", "models.zoo-opt-xs.resources.gpu_mem_gb=100"]
    r = snakemake(tmp_path / "big", "--profile", str(profile), overrides=big, env=cluster.env)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "cluster.gpu_mem_gb" in out and "job dump (key=" in out, out[-3000:]
    assert len(cluster.requests()) == before  # the DAG stopped: nothing reached sbatch

    overrides = [
        *OVERRIDES,
        "models.zoo-opt-xs.resources.gpus=1",  # its dump asks for a GPU (runs on the CPU: no CUDA here)
        f"cluster.gpu_types={{{cluster.GPU_TYPE}:40}}",
        "cluster.gpu_request=gres",
    ]
    work = tmp_path / "work"
    before = len(cluster.requests())
    r = snakemake(work, "--profile", str(profile), overrides=overrides, env=cluster.env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + cluster.logs()
    jobs = cluster.requests()[before:]
    cfg = load_config(REPO / "conf", overrides)
    keys = Keys(cfg, str(work / "results" / "ci"))
    model = ModelEntry.from_spec(cfg["models"]["zoo-opt-xs"])
    topics = DatasetEntry.from_spec(cfg["datasets"]["topics"])
    texts = sizing.texts_size(topics, model, work / keys.texts_path("topics"))
    assert texts.known
    # the dump and its eRank: one group job (trained, rev-step0, rev-step20), the larger memory of the two
    groups = [j for j in jobs if not re.match(r"rule_(corpus|tokenizer|train|prepare)", j["comment"])]
    assert len(groups) == 1, jobs
    dump_need = sizing.dump_need(model, texts, cfg["layers"], cfg["device"], THREADS, n_variants=3)
    erank_need = sizing.erank_need(model, texts, cfg["layers"], THREADS, n_variants=3)
    default = 4000  # the profile's mem_mb
    assert dump_need.mem_mb != default and erank_need.mem_mb != default
    for j in groups:
        assert j["partition"] == cluster.GPU_PARTITION and int(j["cpus"]) == THREADS  # set-threads
        assert int(re.match(r"\d+", j["mem"]).group()) == max(dump_need.mem_mb, erank_need.mem_mb), j
        assert "gres/gpu" in j["tres"] and "gres/gpu:fake=1" in j["tres"], j
    others = [j for j in jobs if j["comment"].startswith(("rule_prepare", "rule_train"))]
    assert others and all(j["partition"] == cluster.PARTITION and j["cpus"] == "1" for j in others)
    assert not [j for j in jobs if j["comment"].startswith(tuple(f"rule_{r}" for r in LOCAL_RULES))]
