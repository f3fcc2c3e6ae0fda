"""Issue 16: faults that used to give wrong or stale numbers with exit code 0, or a confusing error.

Each test reproduces the fault probe's case and fails on the code before the fix: a resumed dump
after the weights changed, a flipped bit in an intermediate table, blank and 2-token texts, a
pickle checkpoint, two runs in one run folder, an incomplete zoo model, an edited local input.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import model_spec, resolved, save_tiny

from diff_erank import dump as D
from diff_erank.cache import spec_file
from diff_erank.config import ConfigError
from diff_erank.measure import measure, measure_to_file


def _texts(path: Path, texts: list[str]) -> Path:
    pd.DataFrame({"text_id": range(len(texts)), "text": texts}).to_parquet(path)
    return path


def _paragraphs(n: int) -> list[str]:
    from diff_erank.stdlib_text import topic_paragraphs

    paras = topic_paragraphs()
    return [paras[i % len(paras)][:300] for i in range(n)]


class Interrupted(Exception):
    """Stands in for the kill: raised from inside the model's forward, mid-dump."""


# -- item 1: a resumed dump must not mix two models ------------------------------------------------
def test_resume_after_the_weights_changed_recomputes_everything(tokenizer_dir, tmp_path, caplog) -> None:
    src = save_tiny(tmp_path / "model", "opt", tokenizer_dir, seed=0)
    texts = _texts(tmp_path / "texts.parquet", _paragraphs(24))
    spec = resolved(src, shard_texts=4, batch_tokens=64)  # 6 shards, one text per forward
    out = tmp_path / "dump"
    job = D.DumpJob(spec, "trained", texts, out, device="cpu")
    calls = [0]

    def kill_after_9(*_):
        calls[0] += 1
        if calls[0] > 9:
            raise Interrupted

    job.load().register_forward_pre_hook(kill_after_9)
    with pytest.raises(Interrupted):
        job.run()
    assert len(list(out.with_name("dump.partial").glob("shard-*.json"))) == 2
    save_tiny(tmp_path / "model", "opt", tokenizer_dir, seed=1)  # the weights are replaced in place
    with caplog.at_level(logging.INFO, logger="diff_erank.dump"):
        resumed = D.dump(spec, "trained", texts, out, device="cpu")
    assert "discarding" in caplog.text and "resuming" not in caplog.text
    clean = D.dump(spec, "trained", texts, tmp_path / "clean", device="cpu")
    pd.testing.assert_frame_equal(measure(out), measure(tmp_path / "clean"), check_exact=True)
    assert resumed["weights"] == clean["weights"] and resumed["weights"]["format"] == "safetensors"


def test_hub_identity_is_the_commit_actually_loaded(tokenizer_dir, tmp_path) -> None:
    """`revision: main` resolved through a real (offline) hub cache; moving `main` moves the identity."""
    repo = tmp_path / "hub" / "models--org--tiny"
    for seed in (0, 1):
        save_tiny(tmp_path / f"m{seed}", "opt", tokenizer_dir, seed)
    code = textwrap.dedent(
        f"""
        import json, os, shutil
        from pathlib import Path
        from diff_erank.entries import ModelEntry
        from diff_erank.models import load_variant, weights_identity
        spec = ModelEntry.from_spec(json.loads({json.dumps(model_spec("org/tiny").spec)!r})).resolved()
        repo = Path({str(repo)!r})
        out = []
        for commit, seed in (("a" * 40, 0), ("b" * 40, 1)):
            shutil.copytree(Path({str(tmp_path)!r}) / f"m{{seed}}" / "main", repo / "snapshots" / commit)
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / "main").write_text(commit)
            model = load_variant(spec, "trained")
            out.append(weights_identity(spec, "trained", model=model))
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    first, second = json.loads(r.stdout.strip().splitlines()[-1])
    assert first == {"format": "safetensors", "hub": "org/tiny", "commit": "a" * 40}
    assert second["commit"] == "b" * 40


# -- item 3: intermediate tables carry a checksum ---------------------------------------------------
def _silent_flip(path: Path, column: str) -> bytes:
    """Bytes of ``path`` with one bit flipped inside ``column`` that parquet still decodes."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = path.read_bytes()
    before = pd.read_parquet(path)[column].to_numpy()
    for pos in range(start + chunk.total_compressed_size - 1, start, -1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        path.write_bytes(flipped)
        try:
            after = pd.read_parquet(path)[column].to_numpy()
        except Exception:
            continue
        if np.isfinite(after).all() and not np.array_equal(after, before):
            return bytes(flipped)
    raise AssertionError("no silent bit flip found")


def test_flipped_bit_in_an_erank_table_is_an_error_naming_the_file(tiny_opt, texts_file, tmp_path) -> None:
    from diff_erank.aggregate import load_tables
    from diff_erank.cli import main
    from diff_erank.storage import IntegrityError

    entry = model_spec(tiny_opt)
    paths = {}
    for v in ("trained", "init-s0"):
        D.dump(entry.resolved(), v, texts_file, tmp_path / v, device="cpu")
        paths[v] = tmp_path / f"{v}.parquet"
        measure_to_file(tmp_path / v, paths[v], texts_file)
    load_tables(paths)  # intact: reads
    _silent_flip(paths["trained"], "entropy")  # plain parquet reads another number without a word
    with pytest.raises(IntegrityError, match=rf"{paths['trained']} is corrupt"):
        load_tables(paths)
    args = [
        "diff",
        "--spec",
        spec_file(str(tmp_path), entry.spec),
        "--model",
        "m",
        "--dataset",
        "d",
        "--untrained",
        "init-s0",
    ]
    args += ["--out", str(tmp_path / "diff.parquet"), "--erank", *[f"{k}={v}" for k, v in paths.items()]]
    assert main(args) == 2 and not (tmp_path / "diff.parquet").exists()


# -- item 4: blank and degenerate texts are skipped and counted -------------------------------------
def test_blank_and_two_token_texts_are_skipped_and_counted(tiny_opt, tmp_path) -> None:
    from diff_erank.aggregate import load_tables
    from diff_erank.erank import erank_stats

    texts = _texts(tmp_path / "t.parquet", ["   ", "\n\t", "a", *_paragraphs(6)])
    m = D.dump(resolved(tiny_opt), "trained", texts, tmp_path / "d", device="cpu")
    assert (m["n_skipped_empty"], m["n_skipped_short"], m["n_texts"], m["min_tokens"]) == (2, 1, 6, 3)
    df = measure_to_file(tmp_path / "d", tmp_path / "e.parquet", texts)
    assert set(df["position"]) == set(range(3, 9)) and (df["n_tokens"] >= 3).all()
    _, facts = load_tables({"trained": tmp_path / "e.parquet"})  # what the diff table carries
    skipped = (facts["n_skipped_empty"], facts["n_skipped_short"], facts["n_truncated"])
    assert skipped == (2, 1, m["n_truncated"])
    # why 2 tokens are too few: two centred vectors are collinear, eRank exactly 1 whatever they are
    assert erank_stats(torch.randn(2, 64, dtype=torch.float64)).erank == pytest.approx(1.0, abs=1e-12)
    kept = D.dump(resolved(tiny_opt, min_tokens=2), "trained", texts, tmp_path / "d2", device="cpu")
    assert (kept["n_skipped_empty"], kept["n_skipped_short"], kept["n_texts"]) == (2, 0, 7)


# -- item 8: safetensors asked for; a .bin is tensors only, and says so -----------------------------
def _bin_only(src: Path, dst: Path, payload=None) -> Path:
    import pickle

    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    if payload is None:
        torch.save(state, dst / "pytorch_model.bin")
    else:
        (dst / "pytorch_model.bin").write_bytes(pickle.dumps({"x": payload}))
    return dst


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoints_are_tensors_only_and_recorded(tiny_opt, texts_file, tmp_path, caplog) -> None:
    from diff_erank.models import load_variant

    plain = _bin_only(tiny_opt / "main", tmp_path / "plain")
    with caplog.at_level(logging.WARNING, logger="diff_erank.models"):
        m = D.dump(resolved(plain, revision=None), "trained", texts_file, tmp_path / "d", device="cpu")
    assert m["weights"]["format"] == "bin" and "no safetensors" in caplog.text
    ref = D.dump(resolved(tiny_opt), "trained", texts_file, tmp_path / "ref", device="cpu")
    assert ref["weights"]["format"] == "safetensors"
    pd.testing.assert_frame_equal(measure(tmp_path / "d"), measure(tmp_path / "ref"), check_exact=True)

    marker = tmp_path / "payload-ran"
    evil = _bin_only(tiny_opt / "main", tmp_path / "evil", _Payload(marker))
    with pytest.raises(ConfigError, match=r"refusing the \.bin checkpoint .*holds more than tensors"):
        load_variant(resolved(evil, revision=None), "trained")
    assert not marker.exists()


# -- item 5: one run per run folder; an incomplete zoo model is not "done" ---------------------------
def test_run_folder_lock_excludes_a_second_run_and_dies_with_its_holder(tmp_path) -> None:
    from diff_erank.storage import RunLockedError, lock_run_dir

    run_dir = tmp_path / "results" / "ci"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from diff_erank.storage import lock_run_dir; lock_run_dir(sys.argv[1]);"
            "print('held', flush=True); time.sleep(120)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {holder.pid} on"):
            lock_run_dir(run_dir)
        os.kill(holder.pid, signal.SIGKILL)  # a killed Snakemake leaves no stale lock behind
        holder.wait(timeout=30)
        lock_run_dir(run_dir)
        lock_run_dir(run_dir)  # again in the same process: a no-op
    finally:
        if holder.poll() is None:
            holder.kill()


def test_incomplete_zoo_model_is_refused(corpus_file, tokenizer_dir, tmp_path) -> None:
    from diff_erank.models import load_variant
    from diff_erank.train import train_model

    recipe = {
        "arch": "opt",
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "steps": 4,
        "seq_len": 16,
        "batch_size": 2,
        "lr": 1e-3,
        "seed": 0,
        "checkpoint_steps": [0, 2],
    }
    zoo = tmp_path / "zoo" / "m"
    train_model(recipe, tokenizer_dir, corpus_file, zoo)
    assert not list(zoo.parent.glob(".m.partial*"))
    entry = model_spec("unused", checkpoints=["step2"], train=recipe).updated(source=None, revision=None)
    load_variant(entry.resolved(str(zoo)), "rev-step2")  # complete: loads
    broken = tmp_path / "broken"
    shutil.copytree(zoo, broken)
    shutil.rmtree(broken / "step2")  # what two runs racing on one results folder left behind
    with pytest.raises(
        ConfigError, match=r"zoo model .*broken is incomplete \(missing checkpoint.*forcerun train"
    ):
        entry.resolved(str(broken))
    shutil.copytree(zoo, broken, dirs_exist_ok=True)
    data = bytearray((broken / "main" / "model.safetensors").read_bytes())
    data[-5] ^= 1
    (broken / "main" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="differ from the ones trained"):
        entry.resolved(str(broken))


# -- items 2 and 5 through Snakemake: local files are inputs; the run folder is locked --------------
@pytest.mark.slow
def test_local_inputs_rerun_and_the_run_folder_is_locked(tokenizer_dir, tmp_path) -> None:
    from helpers.paper import local_source
    from helpers.workflow import snakemake

    def jobs(r: subprocess.CompletedProcess) -> set[str]:
        """Rules in the dry run's job-count table."""
        rows = [ln.split() for ln in r.stdout.splitlines()]
        return {w[0] for w in rows if len(w) == 2 and w[0].isidentifier() and w[1] == "1"}

    model = save_tiny(tmp_path / "model", "opt", tokenizer_dir)
    data = tmp_path / "dolly.jsonl"
    data.write_text("".join(json.dumps({"context": t}) + "\n" for t in _paragraphs(8)))
    overrides = [
        "experiment=table9",
        *[f"~models.opt-{s}" for s in ("1_3b", "2_7b", "6_7b", "13b")],
        f"models.opt-125m.source={model}",
        "models.opt-125m.revision=main",
        *local_source("dolly-15k", str(data)),
        "model.max_length=64",
        "model.batch_tokens=512",
    ]
    work = tmp_path / "wf"
    target = "results/table9/diff/opt-125m/dolly-15k.parquet"
    at = ("--cores", "2", target)  # an option first: after --configfile a bare target would be a config file
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from diff_erank.storage import lock_run_dir; lock_run_dir(sys.argv[1]);"
            "print('held', flush=True); time.sleep(300)",
            str(work / "results" / "table9"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        r = snakemake(work, *at, overrides=overrides)  # another checkout's run holds the folder
        assert r.returncode != 0 and "is in use by another run (pid" in r.stdout + r.stderr
        assert not (work / target).exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    r = snakemake(work, *at, overrides=overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Nothing to be done" in (r := snakemake(work, "-n", *at, overrides=overrides)).stdout + r.stderr
    stamp = data.stat().st_mtime_ns
    with data.open("a") as f:
        f.write(json.dumps({"context": "an edited dataset file is an input of prepare"}) + "\n")
    assert jobs(snakemake(work, "-n", *at, overrides=overrides)) >= {"prepare", "dump", "erank"}
    os.utime(data, ns=(stamp, stamp))  # the edit stays: its content is a new texts key (issue 29.4)
    assert jobs(snakemake(work, "-n", *at, overrides=overrides)) >= {"prepare", "dump", "erank"}
    save_tiny(tmp_path / "model", "opt", tokenizer_dir, seed=1)  # replaced weights rerun the dump
    assert jobs(snakemake(work, "-n", *at, overrides=overrides)) >= {"dump", "erank", "diff"}


def test_atomic_writes_get_the_usual_file_mode(tmp_path) -> None:
    """mkstemp creates 0600; a published result must be readable like any file the user writes."""
    import os

    from diff_erank.storage import write_text

    write_text("x", tmp_path / "f.txt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


# -- issue 29 item 3: manifests are checksummed like the tables -------------------------------------
def test_a_flipped_digit_in_a_dump_manifest_is_an_error_naming_it(tiny_opt, texts_file, tmp_path) -> None:
    from diff_erank.storage import IntegrityError

    D.dump_set(resolved(tiny_opt), ["trained"], texts_file, tmp_path / "set", device="cpu")
    manifest = tmp_path / "set" / "trained" / D.MANIFEST
    n_params = json.loads(manifest.read_text())["n_params"]
    text = manifest.read_text()
    flipped = str(n_params).replace(str(n_params)[0], str((int(str(n_params)[0]) + 1) % 10), 1)
    manifest.write_text(text.replace(f'"n_params": {n_params}', f'"n_params": {flipped}'))
    with pytest.raises(IntegrityError, match=rf"dump manifest {manifest} is corrupt.*delete the folder"):
        measure_to_file(tmp_path / "set" / "trained", tmp_path / "t.parquet", texts_file)
    manifest.write_text(text[: len(text) // 2])  # truncated: named, not a JSONDecodeError traceback
    with pytest.raises(IntegrityError, match=rf"dump manifest {manifest} is truncated or not JSON"):
        measure_to_file(tmp_path / "set" / "trained", tmp_path / "t.parquet", texts_file)
    assert not (tmp_path / "t.parquet").exists()


# -- issue 29 item 5: a truncated texts table and an out-of-memory read say what they are -----------
def test_truncated_texts_and_out_of_memory_name_the_file(tmp_path) -> None:
    from diff_erank.provenance import provenance
    from diff_erank.storage import IntegrityError, read_provenance, write_parquet

    texts = tmp_path / "texts.parquet"
    rng = np.random.default_rng(0)
    big = [rng.bytes(2000).hex() for _ in range(40_000)]  # ~160 MB of text, incompressible
    write_parquet(pd.DataFrame({"text_id": range(len(big)), "text": big}), texts, provenance({}))
    script = textwrap.dedent(
        f"""
        import re
        from diff_erank.sizing import limit_memory
        from diff_erank.storage import read_parquet
        used = int(re.search(r"VmData:\\s+(\\d+)", open("/proc/self/status").read())[1]) // 1024
        limit_memory(used + 64)  # a job's cap, well under the table
        read_parquet({str(texts)!r})
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"out of memory while reading {texts}" in r.stderr and "mem_mb" in r.stderr, r.stderr[-2000:]
    assert "unreadable" not in r.stderr
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(texts.read_bytes()[:-300])
    with pytest.raises(IntegrityError, match=rf"{cut} is not a complete parquet file"):
        read_provenance(cut)


# -- issue 29 item 6: names that are no run folder -------------------------------------------------
@pytest.mark.parametrize(
    "override", ["name=..", "name=.", "name=.hidden", f"name={'a' * 300}", "results_dir=''"]
)
def test_a_run_name_that_is_no_folder_is_refused(override: str) -> None:
    from helpers import REPO

    from diff_erank.config import load_config

    with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]}: "):
        load_config(REPO / "conf", ["experiment=ci", override])


# -- issue 29 items 1, 2 and 6 through Snakemake: shared caches, views, a results folder with a space ----
def _jobs(r: subprocess.CompletedProcess) -> dict[str, int]:
    """Rules and counts in a dry run's job table."""
    rows = [ln.split() for ln in r.stdout.splitlines()]
    return {w[0]: int(w[1]) for w in rows if len(w) == 2 and w[0].isidentifier() and w[1].isdigit()}


@pytest.mark.slow
def test_checkouts_sharing_a_cache_and_views_of_wider_tables_stay_true(tokenizer_dir, tmp_path) -> None:
    """Two checkouts share results/cache (a symlink), each with its own data/dolly.jsonl: each reports
    its own texts. A narrow run reading `last` from a wide run's table reruns that table when the
    model's weights are replaced (it used to say "Nothing to be done" and keep the old numbers). The
    results folder has a space in its name: every path of every rule is quoted."""
    from helpers.paper import local_source
    from helpers.workflow import snakemake

    save_tiny(tmp_path / "model", "opt", tokenizer_dir)
    base = [
        "experiment=table9",
        *[f"~models.opt-{s}" for s in ("1_3b", "2_7b", "6_7b", "13b")],
        f"models.opt-125m.source={tmp_path / 'model'}",
        "models.opt-125m.revision=main",
        *local_source("dolly-15k", "data/dolly.jsonl"),  # relative: each checkout's own file
        "model.max_length=64",
        "model.batch_tokens=512",
        "results_dir='my results'",
    ]
    n_texts = {"one": 8, "two": 6}
    for checkout, n in n_texts.items():
        (tmp_path / checkout / "data").mkdir(parents=True)
        (tmp_path / checkout / "data" / "dolly.jsonl").write_text(
            "".join(json.dumps({"context": t}) + "\n" for t in _paragraphs(n))
        )
    (tmp_path / "two" / "my results").mkdir()
    (tmp_path / "two" / "my results" / "cache").symlink_to(tmp_path / "one" / "my results" / "cache")

    def diff(checkout: str, name: str) -> pd.DataFrame:
        return pd.read_parquet(
            tmp_path / checkout / "my results" / name / "diff" / "opt-125m" / "dolly-15k.parquet"
        )

    target = ("--cores", "2", "my results/{}/diff/opt-125m/dolly-15k.parquet")
    for checkout in n_texts:
        at = (*target[:2], target[2].format("table9"))
        r = snakemake(tmp_path / checkout, *at, overrides=base)
        assert r.returncode == 0, r.stderr[-3000:]
        assert not (tmp_path / checkout / "with").exists()  # no stray file from an unquoted path
    assert (diff("one", "table9")["n_texts"] == 8).all() and (diff("two", "table9")["n_texts"] == 6).all()

    wide = [*base, "name=wide", "layers=[first,last]"]
    narrow = [*base, "name=narrow", "layers=[last]"]
    work = tmp_path / "one"
    r = snakemake(work, *target[:2], target[2].format("wide"), overrides=wide)
    assert r.returncode == 0, r.stderr[-3000:]
    r = snakemake(work, "-n", *target[:2], target[2].format("narrow"), overrides=narrow)
    assert "dump" not in _jobs(r) and _jobs(r).get("diff") == 1, r.stdout[-3000:]  # read from wide's table
    r = snakemake(work, *target[:2], target[2].format("narrow"), overrides=narrow)
    assert r.returncode == 0, r.stderr[-3000:]
    before = diff("one", "narrow")
    save_tiny(tmp_path / "model", "opt", tokenizer_dir, seed=1)  # other weights at the same path
    r = snakemake(work, "-n", *target[:2], target[2].format("narrow"), overrides=narrow)
    assert _jobs(r).get("dump") == 1 and _jobs(r).get("erank") == 1, r.stdout[-3000:]
    r = snakemake(work, *target[:2], target[2].format("narrow"), overrides=narrow)
    assert r.returncode == 0, r.stderr[-3000:]
    after = diff("one", "narrow")
    assert not np.allclose(after["diff_erank"], before["diff_erank"])


def test_every_path_in_every_rule_is_quoted() -> None:
    """A results_dir with a space broke `prepare` (its error went into a stray file `with`): each
    {input}/{output}/{log} of a shell command is quoted with `:q`, as Snakemake offers."""
    import re

    from helpers import REPO

    bare = re.compile(r"\{(input|output|log)(\.[A-Za-z_]+)?\}")
    found = [
        f"{smk.name}: {m.group(0)}"
        for smk in sorted((REPO / "workflow" / "rules").glob("*.smk"))
        for m in bare.finditer(smk.read_text())
    ]
    assert not found, found
