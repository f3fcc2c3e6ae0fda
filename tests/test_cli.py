"""The user-facing command line: list, config, help, and errors as one plain sentence."""

from __future__ import annotations

import pytest
import yaml
from helpers import REPO

from diff_erank.cache import spec_file
from diff_erank.cli import STEPS, main, parser


def test_list_shows_every_experiment_and_dataset_with_its_own_description(capsys) -> None:
    assert main(["list", "--conf-dir", str(REPO / "conf")]) == 0
    out = capsys.readouterr().out
    listed: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = listed.setdefault(line[:-1], {})
        elif line.startswith("  "):
            name, text = line.split(None, 1)
            current[name] = text
    assert list(listed) == ["experiments", "models", "datasets"], out
    for group in ("experiment", "dataset"):
        files = sorted((REPO / "conf" / group).glob("*.yaml"))
        assert sorted(listed[f"{group}s"]) == sorted(f.stem for f in files), f"list misses a {group}"
        for f in files:
            text = f.read_text()
            described = yaml.safe_load(text).get("description")
            line = listed[f"{group}s"][f.stem]
            if described:
                assert line == described, f"{f.name}: listed as {line!r}, its description is {described!r}"
            else:  # a base entry: the file's own comment says what it is
                assert f"# {line}\n" in text, f"{f.name} has no description; listed as {line!r}"
    opt = yaml.safe_load((REPO / "conf" / "model" / "opt-125m.yaml").read_text())
    assert opt["source"] in listed["models"]["opt-125m"]
    assert "trained by the demo" in listed["models"]["zoo-opt-xs"]
    assert "snakemake --cores 2 --config experiment=<name>" in out


def test_list_one_group_and_a_wrong_one(capsys) -> None:
    assert main(["list", "models", "--conf-dir", str(REPO / "conf")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("models:\n") and "experiments:" not in out
    assert main(["list", "tables"]) == 2
    assert capsys.readouterr().err == (
        "diff-erank list: error: cannot list 'tables'; "
        "choose from experiments, models, datasets, mm_models, mm_datasets\n"
    )


def test_help_separates_user_commands_from_the_steps_and_has_no_rest_markup() -> None:
    text = parser().format_help()
    commands, steps = text.split("steps (what the Snakemake rules call")
    assert "`" not in text
    for name in ("list", "config", "pin"):
        assert f"\n    {name} " in commands
    for name in STEPS:
        assert f"\n  {name} " in steps and f"\n    {name} " not in commands
    assert "snakemake --cores 2 --config experiment=ci" in text


def test_config_error_is_one_line_without_logging_prefix(capsys) -> None:
    assert main(["config", "--conf-dir", str(REPO / "conf"), "experiment=ci", "dataset.max_txts=5"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "diff-erank config: error: 'dataset.max_txts=5': there is no key 'dataset.max_txts'; "
        "did you mean 'dataset.max_texts'?\n"
    )


@pytest.mark.parametrize("overrides", [["experiment=ci"], ["experiment=ci", "layers=[first,last]"]])
def test_config_prints_the_run_folder_and_the_resolved_yaml(overrides, capsys) -> None:
    assert main(["config", "--conf-dir", str(REPO / "conf"), *overrides]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# results go to results/ci/\n")
    assert yaml.safe_load(out)["layers"] == (["first", "last"] if len(overrides) > 1 else ["last"])


def test_a_table_step_reports_a_user_error_without_importing_the_model_stack(tmp_path) -> None:
    """``diff`` on a damaged table exits 2 with one sentence, and never imported torch or
    transformers: the table and report jobs do not pay the model stack's start-up."""
    import subprocess
    import sys

    bad = tmp_path / "trained.parquet"
    bad.write_bytes(b"not a parquet file")
    spec = spec_file(str(tmp_path), {})
    probe = (
        "import sys\nfrom diff_erank.cli import main\n"
        f"code = main(['diff', '--spec', '{spec}', '--model', 'm', '--dataset', 'd', '--erank', "
        f"'trained={bad}', 'init={bad}', '--untrained', 'init', '--out', '{tmp_path / 'out.parquet'}'])\n"
        "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[-2] == "2 []", done.stdout + done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diff-erank diff: error: ") and str(bad) in err[0], err


def test_config_takes_the_snakemake_spelling_and_a_run_folder_to_replay(tmp_path, capsys) -> None:
    conf = ["config", "--conf-dir", str(REPO / "conf")]
    assert main([*conf, "overrides=[experiment=ci,dataset.max_texts=5]", "description=the library's"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["datasets"]["topics"]["max_texts"] == 5 and cfg["description"] == "the library's"
    run = tmp_path / "results" / "ci"
    run.mkdir(parents=True)
    (run / "overrides.yaml").write_text("- experiment=ci\n- dataset.max_texts=5\n")
    assert main([*conf, f"from={run}", "name=ci-again"]) == 0
    again = yaml.safe_load(capsys.readouterr().out)
    assert again["name"] == "ci-again" and again["datasets"] == cfg["datasets"]


def test_config_warns_of_device_cuda_where_there_is_no_gpu(capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, on any machine
    assert main(["config", "--conf-dir", str(REPO / "conf"), "experiment=ci", "device=cuda"]) == 0
    assert "warning: device=cuda, but this machine has no CUDA GPU" in capsys.readouterr().err


def test_a_step_reads_plain_arguments_and_runs_with_its_threads(tmp_path, capsys) -> None:
    """Layers and ft- variant folders as plain words (no JSON on a shell line); a step that takes
    --threads runs with them, set in main before the step (here one that stops on a missing dump)."""
    import torch

    spec = spec_file(str(tmp_path), {"source": "m"})
    dump = ["dump", "--spec", spec, "--variants", "trained", "ft-a", "--texts", "t", "--out", "o"]
    args = parser().parse_args([*dump, "--layers", "first", "-1", "--variant-paths", "ft-a=/x/a=b"])
    assert (
        args.layers == ["first", -1]
        and args.variant_paths == {"ft-a": "/x/a=b"}
        and args.spec == {"source": "m"}
    )
    with pytest.raises(SystemExit):
        parser().parse_args([*dump, "--variant-paths", "/x/a"])
    assert "--variant-paths: '/x/a' is not NAME=VALUE" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        measure = ["measure", "--dump", str(tmp_path / "none"), "--out", str(tmp_path / "tables")]
        assert main([*measure, "--threads", str(before + 1)]) == 2
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
    assert "is not a finished dump" in capsys.readouterr().err
