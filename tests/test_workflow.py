"""Real Snakemake runs of the workflow: the CI experiment end to end, re-runs, dry runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from diff_erank.storage import read_provenance

pytestmark = pytest.mark.slow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(
    workdir: Path, *args: str, overrides: str | list[str] = "[experiment=ci]", env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI; a list of overrides goes through a --configfile (any quoting)."""
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if isinstance(overrides, list):
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "overrides.yaml"
        cfg.write_text(json.dumps({"overrides": overrides}))
        cmd += ["--configfile", str(cfg)]
    else:
        cmd += ["--config", f"overrides={overrides}"]
    cmd += list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wf")
    r = snakemake(work)
    assert r.returncode == 0, r.stderr[-5000:]
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
    t = pd.read_parquet(ci_run / "erank" / "zoo-opt-xs" / "trained" / "topics.parquet")
    u = pd.read_parquet(ci_run / "erank" / "zoo-opt-xs" / "rev-step0" / "topics.parquet")
    expected = np.exp(u["entropy"].mean()) - np.exp(t["entropy"].mean())
    assert main.loc["zoo-opt-xs", "diff_erank"] == pytest.approx(expected, rel=1e-12)
    texts = pd.read_parquet(ci_run / "texts" / "topics.parquet")
    assert list(t["text_id"]) == list(texts["text_id"])


def test_outputs_carry_provenance_and_dumps_are_temporary(ci_run: Path) -> None:
    prov = read_provenance(ci_run / "erank" / "zoo-opt-xs" / "trained" / "topics.parquet")
    assert prov["dump"]["n_params"] > 0 and prov["dump_provenance"]["variant"] == "trained"
    side = json.loads((ci_run / "tables" / "diff_erank.provenance.json").read_text())
    assert side["config"]["name"] == "ci" and "transformers" in side["versions"]
    assert (ci_run / "figures" / "size.png").stat().st_size > 1000
    assert "Spearman" in (ci_run / "summary.md").read_text()
    assert not (ci_run / "dumps").exists() or not any((ci_run / "dumps").rglob("*.safetensors"))
    for bench in (ci_run / "benchmarks").rglob("*.tsv"):
        assert pd.read_csv(bench, sep="\t")["s"].iloc[0] >= 0


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
    # 8 zoo models x (trained, step0, 2 checkpoints) x 2 datasets + SmolLM2 x (trained, 3 seeds) x 2
    counts = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) == 2)
    assert counts["dump"] == "72" and counts["fetch_gguf"] == counts["convert_gguf"] == "1"


def test_bad_config_stops_before_any_job(tmp_path: Path) -> None:
    r = snakemake(tmp_path, "-n", overrides="[experiment=ci,+datasets.topics.max_txts=3]")
    assert r.returncode != 0
    assert "unknown key(s) ['max_txts'] at 'datasets.topics'" in r.stdout + r.stderr


def test_html_report(ci_run: Path) -> None:
    html = ci_run.parents[1] / "report.html"
    r = snakemake(ci_run.parents[1], "--report", str(html))
    assert r.returncode == 0, r.stderr[-3000:]
    text = html.read_text(errors="replace")
    assert "Diff-eRank" in text and len(text) > 10000
