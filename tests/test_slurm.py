"""The SLURM profile against a real Slurm (slurmctld, slurmd, slurmdbd + MariaDB) on localhost.

Skipped, with the reason, where such a cluster cannot be stood up (not root, no apt). The Debian
packages are installed only in CI (``CI=true``, as ``.ci/run`` sets) or when the user opts in with
``DIFF_ERANK_INSTALL_SLURM=1``; elsewhere the skip message says so. The daemons are
machine-wide: run one such test session at a time.
"""

from __future__ import annotations

import os
import re
import shutil
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


def n_jobs(workdir: Path, overrides: list[str]) -> int:
    r = snakemake(workdir, "-n", overrides=overrides)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(re.search(r"^total\s+(\d+)$", r.stdout + r.stderr, re.M).group(1))


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
    before = len(cluster.accounted_jobs())
    expected = n_jobs(tmp_path / "dry", OVERRIDES) - 1  # `all` is a local target, not a job
    slurm = tmp_path / "slurm"
    r = snakemake(slurm, "--profile", str(profile), overrides=OVERRIDES, env=cluster.env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + cluster.logs()
    jobs = cluster.accounted_jobs()[before:]
    assert len(jobs) == expected, jobs
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    local = tmp_path / "local"
    r = snakemake(local, overrides=OVERRIDES)
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
    """The estimates are what Slurm accounts: memory, CPUs, partition and the GPU as a typed GRES."""
    from diff_erank import sizing
    from diff_erank.cache import Keys
    from diff_erank.config import load_config

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
    model = cfg["models"]["zoo-opt-xs"]
    texts = sizing.texts_size(cfg["datasets"]["topics"], model, work / keys.texts_path("topics"))
    assert texts.known
    dumps = [j for j in jobs if j["comment"].startswith("rule_dump")]
    eranks = [j for j in jobs if j["comment"].startswith("rule_erank")]
    assert len(dumps) == len(eranks) == 1, jobs  # one job each for trained, rev-step0, rev-step20
    dump_need = sizing.dump_need(model, texts, cfg["layers"], cfg["device"], THREADS, n_variants=3)
    erank_need = sizing.erank_need(model, texts, cfg["layers"], THREADS, n_variants=3)
    default = 4000  # the profile's mem_mb
    assert dump_need.mem_mb != default and erank_need.mem_mb != default
    for j in dumps:
        assert j["partition"] == cluster.GPU_PARTITION and int(j["cpus"]) == THREADS  # set-threads
        assert int(re.match(r"\d+", j["mem"]).group()) == dump_need.mem_mb, j
        assert "gres/gpu" in j["tres"] and "gres/gpu:fake=1" in j["tres"], j
    for j in eranks:
        assert j["partition"] == cluster.PARTITION and int(j["cpus"]) == THREADS
        assert int(re.match(r"\d+", j["mem"]).group()) == erank_need.mem_mb, j
        assert "gres/gpu" not in j["tres"]
    others = [j for j in jobs if j["comment"].startswith(("rule_diff", "rule_report", "rule_select"))]
    assert others and all(j["partition"] == cluster.PARTITION and j["cpus"] == "1" for j in others)
