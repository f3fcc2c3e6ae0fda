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
