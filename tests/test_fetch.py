"""The fetch step (issue 25, item 3): what an experiment downloads, the size `plan` shows, fetching
into hf_home (here a real offline hub cache: no hub), and jobs that run with the hub offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from helpers.workflow import snakemake

from diff_erank.config import load_config
from diff_erank.hub import downloads, job_env
from diff_erank.plan import download_line

CONF = REPO / "conf"


def _entry(name: str) -> dict:
    """A model entry as its YAML file says (read apart from the composed configuration)."""
    return yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())


def test_fig1_downloads_each_opt_checkpoint_and_its_four_datasets() -> None:
    cfg = load_config(CONF, ["experiment=fig1"])
    got = downloads(cfg)
    sizes = ["125m", "1_3b", "2_7b", "6_7b", "13b"]
    want = {(_entry(f"opt-{s}")["source"], "main") for s in sizes}  # hf-base's revision: main
    assert {(d.repo, d.revision) for d in got if d.kind == "model"} == want
    assert sorted(d.repo for d in got if d.kind == "dataset") == sorted(
        [
            "databricks/databricks-dolly-15k",
            "suolyer/pile_openwebtext2",
            "Anthropic/hh-rlhf",
            "hf://datasets/legacy-datasets/wikipedia@main/data/20220301.en/train-*-of-00041.parquet",
        ]
    )
    # float32 entries: 4 bytes a parameter, the params each YAML file states
    gb = sum(float(_entry(f"opt-{s}")["params"]) for s in sizes) * 4 / 1e9
    assert f"download: {gb:,.1f} GB for 5 model checkpoint(s)" in download_line(cfg)
    assert "+ 4 hub dataset(s)" in download_line(cfg)


def test_every_revision_of_a_trajectory_and_a_separate_tokenizer_are_fetched() -> None:
    cfg = load_config(CONF, ["experiment=pythia-v1"])
    entry = _entry("pythia-160m")
    pythia = {d.revision for d in downloads(cfg) if d.repo == entry["source"]}
    assert pythia == {"main", entry["untrained"]["revision"]}  # the trained model and its step0
    elm = load_config(CONF, ["experiment=ci", "+model@models.elm=openelm-270m"])
    assert ("tokenizer", "meta-llama/Llama-2-7b-hf") in {(d.kind, d.repo) for d in downloads(elm)}
    zoo_only = load_config(CONF, ["experiment=ci"])
    assert downloads(zoo_only) == []  # the zoo is trained here, the demo texts made here


def _hub_cache(home: Path, model_dir: Path, repo: str, rev: str) -> str:
    """``<hf_home>/hub/models--org--name``: a snapshot and the ref that points at it, as the hub writes."""
    sha = "a" * 40
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, root / "snapshots" / sha)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / rev).write_text(sha)
    return sha


def _fetch(cfg: dict, home: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg, default=str))
    cmd = [sys.executable, "-m", "diff_erank.cli", "fetch", "--config-file", str(path)]
    cmd += ["--hf-home", str(home)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, timeout=300)


def test_fetch_check_finds_the_models_in_hf_home_and_names_a_missing_revision(tiny_opt, tmp_path) -> None:
    """``fetch --check`` runs the real ``snapshot_download`` offline against hf_home: what a job will read."""
    cfg = load_config(CONF, ["experiment=ci", "+model@models.o=opt-125m", "models.o.source=org/tiny-opt"])
    cfg["models"] = {"o": cfg["models"]["o"]}
    home = tmp_path / "hf"
    sha = _hub_cache(home, tiny_opt / "main", "org/tiny-opt", "main")
    r = _fetch(cfg, home, tmp_path, "--check", "--out", str(tmp_path / "fetched.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 item(s) present" in r.stdout
    fetched = json.loads((tmp_path / "fetched.json").read_text())["fetched"]
    assert fetched == {"model org/tiny-opt@main": str(home / "hub/models--org--tiny-opt/snapshots" / sha)}
    cfg["models"]["o"]["revision"] = "step0"  # never fetched
    r = _fetch(cfg, home, tmp_path, "--check")
    assert r.returncode == 2
    assert "cannot fetch model 'org/tiny-opt' at revision 'step0'" in r.stderr


def test_fetch_without_hf_home_says_what_to_set(tmp_path) -> None:
    cfg = load_config(CONF, ["experiment=ci"])
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg, default=str))
    from diff_erank.cli import main

    assert main(["fetch", "--config-file", str(path)]) == 2


def test_the_job_environment_reads_hf_home_offline(tmp_path) -> None:
    env = job_env(tmp_path / "hf")
    assert env == {
        "HF_HOME": str((tmp_path / "hf").resolve()),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@pytest.mark.slow
def test_jobs_run_with_the_hub_offline_and_hf_home_after_the_fetch_rule(tmp_path) -> None:
    """A real Snakemake run with hf_home set, from an environment with no HF variables: the local
    fetch rule records hf_home, and a job (a prepare) logs that it read HF_HOME with the hub offline."""
    home = tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    cfg = ["experiment=ci", f"hf_home={home}"]
    run = tmp_path / "results" / "ci"
    cfg_run = load_config(CONF, ["experiment=ci"])
    from diff_erank.cache import Keys

    texts = Keys({**cfg_run, "results_dir": str(tmp_path / "results")}, str(run)).texts_path("topics")
    r = snakemake(tmp_path, "fetch", str(Path(texts).relative_to(tmp_path)), config=cfg, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "fetched.json").read_text()) == {"hf_home": str(home.resolve()), "fetched": {}}
    logs = list((run / "logs" / "prepare").glob("*.log"))
    line = f"hub offline: models and datasets are read from HF_HOME={home.resolve()}"
    assert logs and line in logs[0].read_text()
