"""Paper-scale runs on a cluster: dry runs under profiles/slurm ask for what the estimates say, and a
second experiment that shares a model and a dataset with a finished one dumps nothing again."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import EMPTY_EXPERIMENTS, REPO
from helpers.paper import local_source, make_datasets, make_models
from helpers.workflow import snakemake

from diff_erank.cache import Keys
from diff_erank.config import load_config
from diff_erank.storage import read_provenance

pytestmark = pytest.mark.slow

SITE = "cluster.gpu_types={a100_40g:40,a100_80g:80,h100:80,h200:141}"
DEMOS = ("demo", "demo-full", "ci", "init-scale")  # CPU experiments: no GPU to request
PAPER = sorted(
    p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml") if p.stem not in DEMOS + EMPTY_EXPERIMENTS
)
GPU_RULES = {"dump", "finetune", "accuracy", "mm_erank"}
#: erank runs in its dump's group job (the dump is node-local), so it asks for the dump's partition
GPU_PARTITION = GPU_RULES | {"erank"}
GB = 1e9


def dry_jobs(workdir: Path, overrides: list[str]) -> list[dict]:
    """Every job of a dry run under the shipped Slurm profile: rule, resources, shell command."""
    r = snakemake(workdir, "-n", "--profile", str(REPO / "profiles" / "slurm"), overrides=overrides)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", r.stdout + r.stderr):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        pairs = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        shell = re.search(r"^(?:Shell command: )?(.*diff-erank .*)$", block, re.M)
        jobs.append({"rule": rule.group(1), **pairs, "shell": shell.group(1) if shell else ""})
    return jobs


@pytest.mark.parametrize("experiment", PAPER)
def test_slurm_dry_run_asks_for_what_the_estimates_say(experiment: str, tmp_path: Path) -> None:
    jobs = dry_jobs(tmp_path, [f"experiment={experiment}", SITE])
    assert jobs
    for job in jobs:
        names = sorted(GPU_PARTITION, key=len, reverse=True)  # mm_erank before erank
        rule = next((r for r in names if job["rule"] == r or job["rule"].endswith(f"_{r}")), job["rule"])
        gpu_job = rule in GPU_RULES  # a paper run's rules are prefixed: fig1_dump
        assert job["slurm_partition"] == ("gpu" if rule in GPU_PARTITION else "cpu"), job
        if not gpu_job:
            assert int(job.get("gpu", 0)) == 0 and "constraint" not in job, job
            continue
        # the constraint lists exactly the site's GPU types with enough memory for the job
        need = int(job["gpu_mem_mb"])
        types = {"a100_40g": 40, "a100_80g": 80, "h100": 80, "h200": 141}
        assert set(job["constraint"].split("|")) == {t for t, gb in types.items() if gb * 1000 >= need}
        if rule == "dump":  # node-local scratch, asked of Slurm with --tmp
            assert int(job["disk_mb"]) > 0 and int(job["runtime"]) > 10
            assert job["slurm_extra"] == f"--tmp={job['disk_mb']}M", job
    if experiment != "fig1":
        return
    # OPT-13B x wikipedia, from the paper's shapes (40 blocks, d = 5120, ~13e9 parameters, float32)
    # and 10,000 articles of ~730 tokens: ~150 GB of last hidden states, 52 GB of weights
    key = Keys(load_config(REPO / "conf", ["experiment=fig1"]), "results/fig1").sets[("opt-13b", "wikipedia")]
    (dump,) = [
        j
        for j in jobs
        if j["rule"] == "dump"
        and f"/{key}/last " in j["shell"]
        and "--variants trained init-s0" in j["shell"]
        and int(j["disk_mb"]) > 280_000
        and int(j["disk_mb"]) < 320_000
    ]
    # one job dumps both variants (trained, init-s0), so its scratch is both dumps
    assert int(dump["disk_mb"]) * 1e6 == pytest.approx(2 * 10_000 * 730 * 5120 * 4, rel=0.03)
    assert 13e9 * 4 + 16384 * 41 * 5120 * 4 < int(dump["gpu_mem_mb"]) * 1e6 <= 80 * GB
    assert dump["constraint"] == "a100_80g|h100|h200" and int(dump["mem_mb"]) * 1e6 > 13e9 * 4
    # its eRank job holds one text (2048 x 5120 float64), far less than a 256-text shard (10.7 GB)
    eranks = [int(j["mem_mb"]) for j in jobs if j["rule"] == "erank"]
    assert 2048 * 5120 * 8 < max(eranks) * 1e6 < 5 * GB


def test_a_second_experiment_reuses_the_first_ones_measurements(tmp_path: Path, tokenizer_dir) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    files = make_datasets(tmp_path / "data")
    (model, _) = make_models(tmp_path / "models", tokenizer_dir, "opt")
    common = [
        f"models.opt-125m.source={model}",
        *local_source("dolly-15k", files["dolly"]),
        "model.max_length=64",
        "model.batch_tokens=512",
        "bootstrap.samples=50",
    ]
    others = [f"~models.opt-{s}" for s in ("1_3b", "2_7b", "6_7b", "13b")]
    work = tmp_path / "work"
    first = snakemake(work, overrides=["experiment=table9", *others, *common])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert re.search(r"^dump\s+1$", first.stdout + first.stderr, re.M)  # trained + init-s0, one job
    # fig1 on the same model and dataset (its other datasets left out): a different name, same numbers
    fig1 = ["experiment=fig1", *others, *[f"~datasets.{d}" for d in ("wikipedia", "openwebtext2", "hh-rlhf")]]
    second = snakemake(work, overrides=[*fig1, *common])
    stats = second.stdout + second.stderr
    assert second.returncode == 0, stats[-3000:]
    assert not re.search(r"^(dump|erank|prepare)\s+\d+$", stats, re.M), stats[-2000:]
    assert re.search(r"^diff\s+1$", stats, re.M)  # this run's view of the shared tables, and its Diff-eRank
    a, b = (
        work / "results" / e / "erank" / "opt-125m" / "dolly-15k" / "trained.parquet"
        for e in ("table9", "fig1")
    )
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True)
    pa, pb = read_provenance(a), read_provenance(b)
    assert pa["cache"]["table"] == pb["cache"]["table"] and pb["dump_provenance"]["variant"] == "trained"
    d1 = pd.read_csv(work / "results" / "table9" / "tables" / "diff_erank.csv")
    d2 = pd.read_csv(work / "results" / "fig1" / "tables" / "diff_erank.csv")
    assert d1["diff_erank"].tolist() == d2["diff_erank"].tolist()
    # plan counts the measurement (both variants, one job) as cached: no dump, no eRank job to pay for
    plan = subprocess.run(
        [
            str(Path(sys.executable).with_name("diff-erank")),
            "plan",
            "--conf-dir",
            str(REPO / "conf"),
            *fig1,
            *common,
        ],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"^dump\s+0\s+1\s+0\.0 ", plan, re.M) and re.search(r"^erank\s+0\s+1 ", plan, re.M), plan
    # any change to the key recomputes: here the model's truncation
    r = snakemake(work, "-n", overrides=[*fig1, *common, "model.max_length=32"])
    assert re.search(r"^dump\s+1$", r.stdout + r.stderr, re.M), (r.stdout + r.stderr)[-2000:]


def test_cpu_runs_and_site_limits_under_the_slurm_profile(tmp_path: Path) -> None:
    """device=cpu with the site's GPU types asks for no GPU (it was KeyError: 'constraint'); a job
    over cluster.max_runtime or, without GPU types, over cluster.gpu_mem_gb stops the dry run
    naming the job; the config, diff and report steps are local rules."""
    jobs = dry_jobs(tmp_path / "cpu", ["experiment=fig1", SITE, "device=cpu"])
    dumps = [j for j in jobs if j["rule"] == "dump"]
    assert dumps and all(int(j["gpu"]) == 0 and "constraint" not in j for j in dumps)
    r = snakemake(tmp_path / "t", "-n", "--profile", str(REPO / "profiles" / "slurm"),
                  overrides=["experiment=fig1", "cluster.max_runtime=600"])  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode != 0 and re.search(r"job dump \(key=[\w.-]+, layers=last\) asks for \d+ minutes", out)
    r = snakemake(tmp_path / "g", "-n", overrides=["experiment=fig1", "cluster.gpu_mem_gb=40"])
    out = r.stdout + r.stderr
    refused = re.search(r"job dump \(key=[\w.-]+, layers=last\) needs (\d+\.\d) GB .* have 40 GB", out)
    assert r.returncode != 0 and refused and float(refused.group(1)) > 40, out[-2000:]
    # a retry (Snakemake's attempt 2) asks 1.5 x the memory and time of the first attempt
    asked = []
    for attempt in ("1", "2"):
        r = snakemake(tmp_path / f"a{attempt}", "-n", "--attempt", attempt, overrides=["experiment=fig3"])
        assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
        pattern = r"rule dump:.*?key=([\w.-]+).*?resources: .*?runtime=(\d+).*?mem_mb=(\d+)"
        found = re.findall(pattern, r.stdout, re.S)
        asked.append({key: (int(t), int(m)) for key, t, m in found})
    assert asked[0] and asked[0].keys() == asked[1].keys()
    for key, (t1, m1) in asked[0].items():
        assert asked[1][key] == (-(-t1 * 3 // 2), -(-m1 * 3 // 2)), key
    from diff_erank.plan import dag

    local = {j.rule for j in dag(["experiment=ci"], REPO / "Snakefile", tmp_path / "ci").jobs if j.local}
    assert {"resolved_config", "diff", "report"} <= local and not local & {"dump", "erank", "train"}
