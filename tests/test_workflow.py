"""Real Snakemake runs of the workflow: the CI experiment end to end, re-runs, dry runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO
from helpers.workflow import snakemake, snakemake_cmd, snakemake_env, texts_of, zoo_model_dir

from diff_erank.storage import read_provenance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wf")
    r = snakemake(work)
    assert r.returncode == 0, r.stderr[-5000:]
    (work / "snakemake.stderr").write_text(r.stderr)  # what the user saw last
    return work / "results" / "ci"


def test_tables_hold_finite_values_for_every_model_and_checkpoint(ci_run: Path) -> None:
    main = pd.read_csv(ci_run / "tables" / "diff_erank.csv")
    assert sorted(main["model"]) == ["zoo-neox-xs", "zoo-opt-s", "zoo-opt-xs"]
    num = main.select_dtypes("number")
    assert np.isfinite(num.to_numpy()).all()
    assert (main["n_texts"] == 40).all()
    assert (main["ci_low"] <= main["diff_erank"]).all() and (main["diff_erank"] <= main["ci_high"]).all()
    # trained zoo models have a lower loss than their own initialisation (step0)
    assert (main["loss_trained"] < main["loss_untrained"]).all()
    assert np.allclose(main["reduced_loss"], main["loss_untrained"] - main["loss_trained"])
    stages = pd.read_csv(ci_run / "tables" / "stages.csv")
    assert set(stages["variant"]) == {"rev-step0", "rev-step20", "trained"}
    assert np.isfinite(stages.select_dtypes("number").to_numpy()).all()
    assert (stages[stages.variant == "rev-step0"]["diff_erank"] == 0).all()


def test_tables_agree_with_per_text_erank(ci_run: Path) -> None:
    main = pd.read_csv(ci_run / "tables" / "diff_erank.csv").set_index("model")
    t = pd.read_parquet(ci_run / "erank" / "zoo-opt-xs" / "topics" / "trained.parquet")
    u = pd.read_parquet(ci_run / "erank" / "zoo-opt-xs" / "topics" / "rev-step0.parquet")
    expected = np.exp(u["entropy"].mean()) - np.exp(t["entropy"].mean())
    assert main.loc["zoo-opt-xs", "diff_erank"] == pytest.approx(expected, rel=1e-12)
    texts = texts_of(ci_run, "zoo-opt-xs", "topics")
    assert list(t["text_id"]) == list(texts["text_id"])
    # texts cut at max_length, counted again with the run's own tokenizer: the table says as many
    from transformers import AutoTokenizer

    zoo = ci_run.parents[1] / zoo_model_dir("zoo-opt-xs")  # the cache's zoo, beside its tokenizer
    tok = AutoTokenizer.from_pretrained(zoo.parent / "tokenizer")
    limit = json.loads((ci_run / "config.json").read_text())["models"]["zoo-opt-xs"]["max_length"]
    cut = sum(len(tok(x, add_special_tokens=True)["input_ids"]) > limit for x in texts["text"])
    assert cut > 0 and main.loc["zoo-opt-xs", "n_truncated"] == cut
    assert f"{cut} of 40 texts cut at {limit} tokens" in (ci_run / "summary.md").read_text()


def test_outputs_carry_provenance_and_dumps_are_temporary(ci_run: Path) -> None:
    prov = read_provenance(ci_run / "erank" / "zoo-opt-xs" / "topics" / "trained.parquet")
    assert prov["dump"]["n_params"] > 0 and prov["dump_provenance"]["variant"] == "trained"
    side = json.loads((ci_run / "tables" / "diff_erank.provenance.json").read_text())
    assert side["config"]["name"] == "ci" and "transformers" in side["versions"]
    assert (ci_run / "figures" / "size.png").stat().st_size > 1000
    assert "Spearman" in (ci_run / "summary.md").read_text()
    assert not any((ci_run.parent / "cache" / "dumps").rglob("*.safetensors"))  # dumps are temp()
    assert prov["cache"]["key"]["layers"] == ["last"] and prov["cache"]["table"].startswith(
        "results/cache/erank/"
    )
    for bench in (ci_run / "benchmarks").rglob("*.tsv"):
        assert pd.read_csv(bench, sep="\t")["s"].iloc[0] >= 0


def test_job_logs_are_clean_lines(ci_run: Path) -> None:
    """No carriage-return walls, no library warnings: `less results/ci/logs/...` reads well."""
    logs = sorted((ci_run / "logs").rglob("*.log"))
    assert len(logs) > 10
    for log in logs:
        text = log.read_bytes().decode()
        assert "\r" not in text and "Warning" not in text, f"{log}:\n{text[-2000:]}"
    zoo_key = Path(zoo_model_dir("zoo-opt-xs")).name
    assert "(end)" in (ci_run / "logs" / "train" / f"{zoo_key}.log").read_text()


def test_a_cache_job_log_names_what_its_key_measures(ci_run: Path) -> None:
    """Dump and eRank logs and benchmarks are filed by cache key, which reads
    ``<model>.<dataset>.<digest>``; the first line of each log names the model, dataset and variants
    the key measures (one job per model on ci's one dataset)."""
    from diff_erank.cache import KEY
    from diff_erank.variants import variants

    cfg = json.loads((ci_run / "config.json").read_text())
    for kind in ("dump", "erank"):
        named = []
        for log in sorted((ci_run / "logs" / kind).glob("*/*.log")):
            first = log.read_text().splitlines()[0]
            found = re.fullmatch(rf"(\S+) on (\S+): (.+) \(cache key ({KEY})\)", first)
            assert found and found[4] == log.parent.name, f"{log}: {first}"
            assert found[4].startswith(f"{found[1]}.{found[2]}.")  # the folder reads by model and dataset
            assert (ci_run / "benchmarks" / kind / found[4] / log.with_suffix(".tsv").name).is_file()
            assert found[2] in cfg["datasets"] and found[3].split() == variants(cfg["models"][found[1]])
            named.append(found[1])
        assert sorted(named) == sorted(cfg["models"])


def test_second_run_does_nothing(ci_run: Path) -> None:
    r = snakemake(ci_run.parents[1])
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr


def test_same_config_twice_is_bit_identical(ci_run: Path, tmp_path: Path) -> None:
    r = snakemake(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in sorted((ci_run / "erank").rglob("*.parquet")):
        other = tmp_path / "results" / "ci" / f.relative_to(ci_run)
        pd.testing.assert_frame_equal(pd.read_parquet(f), pd.read_parquet(other), check_exact=True)


def test_dry_run_of_default_config_offline(tmp_path: Path) -> None:
    r = snakemake(tmp_path, "-n", overrides="[]")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "train" in out and "dump" in out
    # (8 zoo models + SmolLM2) x 1 dataset, each job dumping every variant of its model
    counts = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) == 2)
    assert counts["dump"] == counts["erank"] == counts["diff"] == "9"
    assert counts["fetch_gguf"] == counts["convert_gguf"] == "1"


def test_bad_config_stops_before_any_job(tmp_path: Path) -> None:
    r = snakemake(tmp_path, "-n", overrides="[experiment=ci,+datasets.topics.max_txts=3]")
    assert r.returncode != 0
    assert r.stderr.strip().endswith(
        "Configuration error: invalid configuration: unknown key 'max_txts' at 'datasets.topics'; "
        "did you mean 'max_texts'?"
    )
    assert 'File "' not in r.stderr  # no traceback stubs


def test_config_pairs_reach_the_jobs_and_unknown_keys_stop(tmp_path: Path) -> None:
    """`--config experiment=ci 'layers=[first,last]' ...` as a user types it, in a real dry run."""
    pairs = ["experiment=ci", "layers=[first,last]", "dataset={max_texts: 7}"]
    r = snakemake(tmp_path, "-n", "-p", config=pairs)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "--layers first last " in out
    steps = [line for line in out.splitlines() if "diff-erank " in line]
    assert len(steps) > 10 and not [line for line in steps if '{"' in line or '["' in line]  # no JSON
    r = snakemake(tmp_path, "-n", "-p", overrides="[experiment=ci,layers=[first,last]]")
    assert r.returncode == 0 and "--layers first last " in r.stdout + r.stderr
    # the texts' spec file (named by its content; a dry run writes none) is another one at max_texts 7
    prepare = re.compile(r"diff-erank prepare --spec (\S+)")
    assert prepare.findall(out) != prepare.findall(r.stdout + r.stderr)
    assert not (tmp_path / "results").exists()
    r = snakemake(tmp_path, "-n", config=["overide=[experiment=ci]"])
    assert r.returncode != 0
    assert r.stderr.strip().endswith(
        "Configuration error: --config overide=...: 'overide' is not a key of the configuration; "
        "did you mean 'overrides'?"
    )
    assert not (tmp_path / "results").exists()


def test_lists_on_the_command_line_fan_out_over_models_and_datasets(tmp_path: Path) -> None:
    """experiment=custom filled from the command line, a hub id among the names: one DAG, 3 x 2."""
    pairs = ["experiment=custom", "models=[pythia-70m,opt-125m,hf:EleutherAI/pythia-160m]"]
    r = snakemake(tmp_path, "-n", config=[*pairs, "datasets=[dolly-15k,piqa]"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    counts = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) == 2)
    assert counts["dump"] == counts["erank"] == counts["diff"] == "6" and counts["prepare"] == "2"
    assert "results/custom/diff/EleutherAI--pythia-160m/piqa.parquet" in out
    r = snakemake(tmp_path, "-n", config=["experiment=ci", "model=pythia-70m"])
    assert r.returncode != 0 and "write models=[pythia-70m], or +models=[pythia-70m]" in r.stderr


def test_a_run_folder_holds_one_configuration(ci_run: Path, tmp_path: Path) -> None:
    """A changed config stops before any job once the folder holds a result, unless the run is named;
    a folder without results yet (a first run that failed early, fixed) takes the changed config."""
    corpus = "results/ci/config.json"  # a cheap job of the run folder (the corpus lives in the cache)
    r = snakemake(tmp_path, corpus, config=["experiment=ci"])
    assert r.returncode == 0, r.stderr[-3000:]
    changed = ["experiment=ci", "dataset={max_texts: 5}"]
    r = snakemake(tmp_path, corpus, "--forcerun", "resolved_config", config=changed)
    assert r.returncode == 0, r.stderr[-3000:]  # no result yet: the fixed configuration goes on
    assert "max_texts: 5" in (tmp_path / "results/ci/config.yaml").read_text()
    work, before = ci_run.parents[1], (ci_run / "config.json").stat().st_mtime_ns
    r = snakemake(work, corpus, "--forcerun", "resolved_config", config=changed)
    assert r.returncode != 0
    assert "Cannot start: results/ci/ holds the results of another configuration" in r.stderr
    assert "datasets.topics.max_texts: null -> 5" in r.stderr and "name=ci-" in r.stderr
    assert (ci_run / "config.json").stat().st_mtime_ns == before  # no job ran
    named = "results/ci-5/config.json"
    r = snakemake(tmp_path, named, config=["experiment=ci", "dataset={max_texts: 5}", "name=ci-5"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / named).is_file() and (tmp_path / "results/ci-5/config.yaml").is_file()
    nowhere = ["experiment=ci", "models={zoo-opt-xs: {source: ./nowhere}}"]
    r = snakemake(tmp_path, "-n", config=nowhere)  # a dry run stops on it too
    assert r.returncode != 0
    assert "Cannot start: models.zoo-opt-xs.source: the local model directory ./nowhere" in r.stderr


def test_a_run_ends_with_its_answer_and_replays_from_its_folder(ci_run: Path) -> None:
    """The last lines of the run: the headline table (read against the CSV), the summary, the report
    command; that command works as printed; the run folder replays (--config from=)."""
    work = ci_run.parents[1]
    lines = (work / "snakemake.stderr").read_text().rstrip().splitlines()
    table = pd.read_csv(ci_run / "tables" / "diff_erank.csv")
    report = "snakemake --report results/ci/report.html --config from=results/ci"
    assert lines[-2:] == ["summary: results/ci/summary.md", f"report:  {report}"]
    head = ["model", "dataset", "Diff-eRank", "95%", "CI", "reduced", "loss"]
    assert lines[-3 - len(table)].split() == head
    for line, row in zip(lines[-2 - len(table) : -2], table.itertuples(), strict=True):
        cells = line.split()
        assert cells[:3] == [row.model, row.dataset, f"{row.diff_erank:.2f}"]
        assert line.split("[")[1].split("]")[0] == f"{row.ci_low:.2f}, {row.ci_high:.2f}"
        assert float(cells[-1]) == pytest.approx(row.reduced_loss, abs=5e-4)
    assert yaml.safe_load((ci_run / "overrides.yaml").read_text()) == ["experiment=ci"]
    r = snakemake(work, "-n", config=["from=results/ci"])
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stderr[-3000:]
    r = snakemake(work, *report.split()[1:3], config=report.split()[-1:])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (ci_run / "report.html").stat().st_size > 10000
    r = snakemake(work, "--report", "report.html", config=["experiment=ci", "dataset={max_texts: 5}"])
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        "Cannot build the report: results/ci/ holds another configuration's results "
        "(dataset.max_texts: null -> 5); name the run with --config from=<its folder> "
        "(e.g. from=results/ci), or run it first"
    )


def test_a_hard_killed_run_is_recovered_by_the_plain_rerun(tmp_path: Path) -> None:
    """Snakemake killed mid-job: its orphan finishes an output marked incomplete. The rerun says what
    to do about the lock, refuses to start beside the orphan, and then redoes the output by itself
    (the workflow profile's rerun-incomplete; without it Snakemake stops on IncompleteFilesException).
    """
    from diff_erank.runfolder import running_jobs

    target = zoo_model_dir("zoo-opt-xs")
    cmd = snakemake_cmd(tmp_path, target, config=["experiment=ci"])
    log = tmp_path / f"results/ci/logs/train/{Path(target).name}.log"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with subprocess.Popen(cmd, env=snakemake_env(), **quiet) as run:
        deadline = time.monotonic() + 300
        while not running_jobs(tmp_path) or not log.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the train job never started"
            time.sleep(0.2)
        run.kill()  # Snakemake itself dies (kill -9); its job does not
    (orphan,) = running_jobs(tmp_path)
    os.kill(orphan, signal.SIGSTOP)  # hold the orphan while the reruns look at it
    try:
        r = snakemake(tmp_path, target, config=["experiment=ci"])
        assert r.returncode != 0 and "--unlock" in r.stderr  # Snakemake's own advice for the lock
        assert snakemake(tmp_path, "--unlock", config=["experiment=ci"]).returncode == 0
        r = snakemake(tmp_path, target, config=["experiment=ci"])
        assert r.returncode != 0
        assert f"jobs of an earlier run still write into this directory (pids {orphan})" in r.stderr
    finally:
        os.kill(orphan, signal.SIGCONT)
    while Path(f"/proc/{orphan}").exists():  # the orphan finishes the output; Snakemake never saw it
        time.sleep(0.2)
    r = snakemake(tmp_path, target, "-n", "--workflow-profile", "none", config=["experiment=ci"])
    assert r.returncode != 0 and "IncompleteFilesException" in r.stdout + r.stderr
    r = snakemake(tmp_path, target, config=["experiment=ci"])  # the plain rerun
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / target / "main" / "config.json").is_file()


def test_ctrl_c_ends_with_one_line_and_the_same_command_resumes(tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the whole foreground group, jobs included): no
    tracebacks, no failed-job reports, a last line that says how to resume, and the rerun resumes."""
    from diff_erank.runfolder import running_jobs

    target = zoo_model_dir("zoo-opt-xs")  # in the shared cache, under its recipe's key
    log = tmp_path / f"results/ci/logs/train/{Path(target).name}.log"
    with subprocess.Popen(
        snakemake_cmd(tmp_path, target, config=["experiment=ci"]),
        env=snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as run:
        deadline = time.monotonic() + 300
        while not running_jobs(tmp_path) or not log.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the train job never started"
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGINT)
        out, _ = run.communicate(timeout=300)
    assert run.returncode != 0
    assert out.strip().splitlines()[-1].startswith("Interrupted: run the same command again to resume")
    assert "Traceback" not in out and "RuleException" not in out and "Error in rule" not in out
    r = snakemake(tmp_path, target, config=["experiment=ci"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / target / "main" / "config.json").is_file()


def test_every_report_file_is_declared_and_rebuilt_when_deleted(ci_run: Path) -> None:
    from diff_erank.config import load_config
    from diff_erank.outputs import report_files

    declared = set(report_files(load_config(REPO / "conf", ["experiment=ci"])).values())
    on_disk = {str(p.relative_to(ci_run)) for d in ("tables", "figures") for p in (ci_run / d).iterdir()}
    assert on_disk | {"summary.md", "summary.html", "report.rst"} == declared  # nothing undeclared written
    assert {"figures/stages.pdf", "figures/algorithms.png", "tables/stages.md"} <= declared
    for f in ("figures/stages.pdf", "tables/stages.md"):
        (ci_run / f).unlink()
    r = snakemake(ci_run.parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Missing output files" in r.stdout + r.stderr
    assert (ci_run / "figures" / "stages.pdf").read_bytes()[:4] == b"%PDF"
    assert (ci_run / "tables" / "stages.md").read_text().startswith("| model | dataset |")


def test_html_report(ci_run: Path) -> None:
    html = ci_run.parents[1] / "report.html"
    r = snakemake(ci_run.parents[1], "--report", str(html))
    assert r.returncode == 0, r.stderr[-3000:]
    text = html.read_text(errors="replace")
    assert "Diff-eRank" in text and len(text) > 10000
    # a landing page that names the run and gives its numbers, one category per paper table or
    # figure this run has (ci measures one layer: no Table 4), tables as HTML pages, readable params
    desc = re.search(r'workflow_desc = "(.*?)";\n', text, re.S).group(1)
    assert "Diff-eRank: experiment ci</h1>" in desc and "zoo-opt-s" in desc and "<table" in desc
    assert "<li>Summary</li>" in desc and "Table 4" not in desc and "System Message" not in desc
    assert "div.h-screen.items-center{align-items:flex-start}" in desc  # the page starts at the top
    for category in ("Fig. 1 / Table 6: size", "Table 10: training stages", "Summary"):
        assert f'"{category}": {{' in text
    assert '"Table 4: layers": {' not in text
    for item in ("tables/diff_erank.html", "tables/stages.html", "figures/stages.png", "summary.html"):
        assert f"Adding {Path(item).name}" in r.stdout + r.stderr
    params = re.findall(r'"rule": "report", "wildcards": "", "params": "(.*?)"}', text)
    assert len(params) == 8  # one per result shown
    assert all(p.startswith("experiment=ci, models=zoo-opt-xs zoo-opt-s zoo-neox-xs, ") for p in params)
    assert all(len(p) < 200 for p in params)  # not the resolved config as escaped JSON


def _jobs(r: subprocess.CompletedProcess) -> dict[str, int]:
    """Rules and counts in a dry run's job table."""
    rows = [ln.split() for ln in r.stdout.splitlines()]
    return {w[0]: int(w[1]) for w in rows if len(w) == 2 and w[0].isidentifier() and w[1].isdigit()}


def test_a_twin_or_a_copy_of_ci_trains_and_dumps_nothing(ci_run: Path, tmp_path: Path) -> None:
    """Issue 25.9 and 29.1: the corpus, tokenizer and zoo are cached by their recipe and no key holds
    a run folder, so another name plans only its views; a copied checkout plans nothing. Issue
    29.4: a deleted cache entry is measured again, and an edit inside a zoo model folder stops the
    run (Snakemake alone would never see it)."""
    import shutil

    work = ci_run.parents[1]
    r = snakemake(work, "-n", config=["experiment=ci", "name=ci-twin"])
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _jobs(r)
    assert not {"corpus", "tokenizer", "train", "prepare", "dump", "erank"} & set(jobs), jobs
    assert jobs["diff"] == 3
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    r = snakemake(copy, "-n")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-3000:]
    prov = read_provenance(copy / "results" / "ci" / "erank" / "zoo-opt-xs" / "topics" / "trained.parquet")
    entry = copy / prov["cache"]["table"]
    folder = entry.parent  # the entry: a link to its data folder (cache.publish_entry)
    folder.unlink() if folder.is_symlink() else shutil.rmtree(folder)
    folder.with_suffix(".json").unlink()
    r = snakemake(copy, "-n")  # it used to say "Nothing to be done" and leave the entry missing
    assert _jobs(r).get("dump") == 1 and _jobs(r).get("erank") == 1, r.stdout[-3000:]
    assert _jobs(r).get("diff") == 1 and _jobs(r).get("report") == 1
    tok = copy / zoo_model_dir("zoo-opt-xs") / "main" / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")  # an edit inside a directory output
    r = snakemake(copy, "-n")
    assert r.returncode != 0
    assert "main/tokenizer.json (zoo model zoo-opt-xs) differs from the file its training wrote" in r.stderr
