"""The run folder: one configuration per folder, no leftover jobs writing into it, paths checked first."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import pytest
import yaml
from helpers import REPO

from diff_erank.config import ConfigError, load_config
from diff_erank.runfolder import RECORD, claim, running_jobs


@pytest.fixture(scope="module")
def ci_config() -> dict:
    return load_config(REPO / "conf", ["experiment=ci"])


def test_the_first_run_records_its_configuration(ci_config, tmp_path) -> None:
    out = tmp_path / "results" / "ci"
    claim(ci_config, out, tmp_path)
    assert yaml.safe_load((out / RECORD).read_text()) == ci_config
    claim(ci_config, out, tmp_path)  # the same configuration again: fine


def test_another_configuration_is_stopped_with_how_to_name_it(ci_config, tmp_path) -> None:
    out = tmp_path / "results" / "ci"
    claim(ci_config, out, tmp_path)
    (out / "diff" / "zoo-opt-xs").mkdir(parents=True)
    (out / "diff" / "zoo-opt-xs" / "topics.parquet").write_bytes(b"PAR1")  # a first result landed
    other = load_config(REPO / "conf", ["experiment=ci", "dataset.max_texts=5"])
    with pytest.raises(ConfigError) as info:
        claim(other, out, tmp_path)
    msg = str(info.value)
    assert "holds the results of another configuration" in msg
    assert "datasets.topics.max_texts: null -> 5" in msg and "name=ci-" in msg and "\n" not in msg
    assert yaml.safe_load((out / RECORD).read_text()) == ci_config  # nothing changed
    (out / RECORD).unlink()  # what the message offers: update those results in place
    claim(other, out, tmp_path)
    assert yaml.safe_load((out / RECORD).read_text()) == other


def test_settings_that_change_no_number_are_the_same_configuration(ci_config, tmp_path) -> None:
    out = tmp_path / "ci"
    claim(ci_config, out, tmp_path)
    same = copy.deepcopy(ci_config)
    same.update(description="reworded", keep_dumps=True)
    claim(same, out, tmp_path)


def test_a_missing_local_path_stops_the_start(ci_config, tmp_path) -> None:
    cfg = copy.deepcopy(ci_config)
    cfg["models"]["zoo-opt-xs"]["source"] = str(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"models.zoo-opt-xs.source: the local model directory .*gone"):
        claim(cfg, tmp_path / "ci", tmp_path)
    assert not (tmp_path / "ci").exists()


def test_jobs_of_a_killed_run_still_writing_here_stop_the_start(ci_config, tmp_path) -> None:
    """After a hard kill of Snakemake its jobs run on; a rerun must not write beside them."""
    job = subprocess.Popen(["bash", "-c", "exec -a diff-erank sleep 60"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while job.pid not in running_jobs(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running_jobs(tmp_path) == [job.pid]
        assert running_jobs(REPO) == []  # other directories are not concerned
        with pytest.raises(ConfigError, match=rf"still write into this directory \(pids {job.pid}\)"):
            claim(ci_config, tmp_path / "ci", tmp_path)
    finally:
        os.kill(job.pid, signal.SIGTERM)
        job.wait()
    claim(ci_config, tmp_path / "ci", tmp_path)


def test_a_folder_without_results_takes_a_changed_configuration(ci_config, tmp_path) -> None:
    """A first run that failed before any result (a typo in the YAML, fixed): the rerun goes on."""
    out = tmp_path / "results" / "ci"
    claim(ci_config, out, tmp_path, overrides=["experiment=ci"])
    for leftover in ("logs/train/zoo-opt-xs.log", "corpus/corpus.json", "zoo/zoo-opt-xs/loss.csv"):
        (out / leftover).parent.mkdir(parents=True, exist_ok=True)
        (out / leftover).write_text("x")
    fixed = load_config(REPO / "conf", ["experiment=ci", "dataset.max_texts=5"])
    claim(fixed, out, tmp_path, overrides=["experiment=ci", "dataset.max_texts=5"])
    assert yaml.safe_load((out / RECORD).read_text()) == fixed
    assert yaml.safe_load((out / "overrides.yaml").read_text()) == ["experiment=ci", "dataset.max_texts=5"]
    (out / "tables").mkdir()
    (out / "tables" / "diff_erank.csv").write_text("model\n")
    with pytest.raises(ConfigError, match="holds the results of another configuration"):
        claim(ci_config, out, tmp_path)


def test_the_report_of_a_run_that_is_not_there_is_refused_in_one_sentence(ci_config, tmp_path) -> None:
    from diff_erank.outputs import report_files
    from diff_erank.runfolder import report_problem

    files = list(report_files(ci_config).values())
    out = tmp_path / "results" / "ci"
    msg = report_problem(ci_config, out, files)
    assert msg == (
        f"{out}/ has no finished run of this configuration ({out}/tables/diff_erank.csv is missing); "
        "name the run with --config from=<its folder> (e.g. from=results/ci), or run it first"
    )
    claim(ci_config, out, tmp_path)
    for f in files:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_text("x")
    assert report_problem(ci_config, out, files) is None
    other = load_config(REPO / "conf", ["experiment=ci", "dataset.max_texts=5"])
    assert report_problem(other, out, files) == (
        f"{out}/ holds another configuration's results (dataset.max_texts: null -> 5); "
        "name the run with --config from=<its folder> (e.g. from=results/ci), or run it first"
    )


def test_device_cuda_is_refused_where_torch_sees_no_gpu(monkeypatch) -> None:
    import torch

    from diff_erank.device import device_problem

    assert (device_problem("cuda") is None) == torch.cuda.is_available()  # torch: the independent reading
    assert device_problem("cpu") is None and device_problem("auto") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden, as torch then sees none
    assert device_problem("cuda").startswith("device=cuda, but this machine has no CUDA GPU")
