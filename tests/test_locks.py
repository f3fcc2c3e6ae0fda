"""Locks that work or say why (issue 25, item 5), and cache entries no run deletes under another.

A filesystem without POSIX locks (Lustre mounted ``noflock``: every ``fcntl`` lock request fails
with ENOSYS) is simulated by making ``fcntl.lockf`` raise that error, in this process and in the
holder processes the tests start.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from diff_erank import cache, storage
from diff_erank.storage import FileLock, LockError, RunLockedError, atomic_publish_dir, lock_run_dir

NOFLOCK = (
    "import errno, fcntl\n"
    "def refuse(*a, **k):\n"
    "    raise OSError(errno.ENOSYS, 'Function not implemented')\n"
    "fcntl.lockf = refuse\n"
)


def _refuse_locks(monkeypatch, code: int = errno.ENOSYS) -> None:
    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "lockf", refuse)


def _holder(code: str, *args: str) -> subprocess.Popen:
    """A process that takes a lock (``code``), prints 'held' and sleeps until killed."""
    script = NOFLOCK + code + "\nprint('held', flush=True)\nimport time\ntime.sleep(300)\n"
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.fixture(autouse=True)
def _fresh_run_locks(monkeypatch):
    monkeypatch.setattr(storage, "_LOCKS", {})
    monkeypatch.delenv(storage.LOCKS_ENV, raising=False)


def test_without_posix_locks_the_run_folder_lock_is_a_lock_file_naming_its_holder(tmp_path, monkeypatch):
    _refuse_locks(monkeypatch)
    run_dir = tmp_path / "results" / "ci"
    take = "import sys; from diff_erank.storage import lock_run_dir; lock_run_dir(sys.argv[1])"
    holder = _holder(take, str(run_dir))
    try:
        excl = run_dir / ".run.lock.excl"
        assert excl.read_text().split()[:2] == [socket.gethostname(), str(holder.pid)]
        # before: "in use by another run (unknown process)" whoever held it, or nobody
        who = rf"in use by another run \(pid {holder.pid} on {socket.gethostname()}"
        with pytest.raises(RunLockedError, match=who):
            lock_run_dir(run_dir)
        os.kill(holder.pid, signal.SIGKILL)  # the lock file outlives its process ...
        holder.wait(timeout=30)
        assert excl.exists()
    finally:
        if holder.poll() is None:
            holder.kill()
    lock_run_dir(run_dir)  # ... and is taken over: its holder was a process of this host, now gone
    assert excl.read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]


def test_a_lock_file_of_another_host_is_reported_with_how_to_clear_it(tmp_path, monkeypatch):
    _refuse_locks(monkeypatch)
    run_dir = tmp_path / "ci"
    run_dir.mkdir()
    (run_dir / ".run.lock.excl").write_text("login2 4242 0\npid 4242 on login2, working directory /x\n")
    with pytest.raises(RunLockedError, match=r"\(pid 4242 on login2, working directory /x\)"):
        lock_run_dir(run_dir)


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EACCES])
def test_held_is_told_from_unsupported(tmp_path, monkeypatch, code):
    _refuse_locks(monkeypatch, code)
    lock = FileLock(tmp_path / "x.lock")
    assert lock.try_acquire() is False  # another process holds it: no lock file is made
    assert not (tmp_path / "x.lock.excl").exists()


def test_another_lock_error_names_the_file(tmp_path, monkeypatch):
    _refuse_locks(monkeypatch, errno.EIO)
    with pytest.raises(LockError, match=r"cannot lock .*x\.lock: Input/output error \(errno 5\)"):
        FileLock(tmp_path / "x.lock").try_acquire()


def test_lock_files_can_be_forced_where_fcntl_locks_are_node_local(tmp_path, monkeypatch):
    """``localflock`` answers fcntl on each node alone: DIFF_ERANK_LOCKS=file uses O_EXCL files."""
    monkeypatch.setenv(storage.LOCKS_ENV, "file")
    holder = _holder(
        "import sys, os; os.environ['DIFF_ERANK_LOCKS'] = 'file'\n"
        "from diff_erank.storage import FileLock; FileLock(sys.argv[1]).try_acquire()",
        str(tmp_path / "x.lock"),
    )
    try:
        monkeypatch.undo()  # fcntl works in this process: the holder's lock file is still honoured
        monkeypatch.setattr(storage, "_LOCKS", {})
        assert FileLock(tmp_path / "x.lock").try_acquire() is False
    finally:
        holder.kill()
        holder.wait()


def test_the_cache_entry_lock_waits_on_a_filesystem_without_locks(tmp_path, monkeypatch):
    """Before: ``OSError: [Errno 38] Function not implemented`` from the entry lock."""
    _refuse_locks(monkeypatch)
    entry = tmp_path / "cache" / "erank" / "k" / "last"
    holder = _holder(
        "import sys; from diff_erank.storage import FileLock; FileLock(sys.argv[1] + '.lock').try_acquire()",
        str(entry),
    )
    got = threading.Event()

    def take():
        with cache.entry_lock(entry):
            got.set()

    t = threading.Thread(target=take)
    t.start()
    assert not got.wait(2.5)  # waits while the holder lives
    holder.kill()
    holder.wait()
    assert got.wait(10)  # and takes the lock once its holder is gone
    t.join()
    assert not Path(f"{entry}.lock.excl").exists()  # released


def test_publishing_a_directory_swaps_it_in_one_step(tmp_path):
    final = tmp_path / "out"
    seen_missing = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if not (final / "done").exists():
                seen_missing.append(1)

    for i in range(3):
        new = tmp_path / f"new{i}"
        new.mkdir()
        (new / "done").write_text(str(i))
        atomic_publish_dir(new, final)
        if i == 0:
            t = threading.Thread(target=watch)
            t.start()
    stop.set()
    t.join()
    assert (final / "done").read_text() == "2" and not seen_missing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing staged or old is left


def test_publishing_without_an_exchange_still_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
    final = tmp_path / "out"
    for i in range(2):
        new = tmp_path / f"new{i}"
        new.mkdir()
        (new / "v").write_text(str(i))
        atomic_publish_dir(new, final)
    assert (final / "v").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_slurm_jobs_of_a_killed_run_are_found_with_squeue(tmp_path, monkeypatch):
    """A stand-in ``squeue`` printing what ``squeue --format '%i %Z'`` prints: job id, working directory."""
    from diff_erank.config import ConfigError
    from diff_erank.runfolder import claim, slurm_jobs

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    fake = bin_dir / "squeue"
    fake.write_text(f"#!/bin/sh\necho \"$*\" > {tmp_path}/args\nprintf '101 {work}\\n102 /elsewhere\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert slurm_jobs(work) == ["101"]
    assert "--format %i %Z" in (tmp_path / "args").read_text()
    cfg = {"name": "ci", "models": {}, "datasets": {}}
    with pytest.raises(ConfigError, match=r"Slurm jobs of an earlier run .*\(job ids 101\).*scancel 101"):
        claim(cfg, tmp_path / "results" / "ci", work)


# -- cache entries: links to data no run deletes under another ----------------------------------------
def _partial(tmp_path: Path, value: str) -> Path:
    p = tmp_path / f"partial-{value}"
    p.mkdir()
    (p / "t.parquet").write_text(value)
    return p


def test_an_entry_whose_link_snakemake_removed_is_linked_again_not_recomputed(tmp_path):
    final = tmp_path / "erank" / "k" / "last"
    final.parent.mkdir(parents=True)
    data = cache.publish_entry(_partial(tmp_path, "A"), final)
    assert final.is_symlink() and (final / "t.parquet").read_text() == "A"
    reader = final.resolve()
    os.remove(final)  # what Snakemake does to a job's existing output before the job runs
    assert (reader / "t.parquet").read_text() == "A"  # a run reading the data is unaffected
    with cache.entry_lock(final):
        assert cache.reuse_entry(final) == data
    assert (final / "t.parquet").read_text() == "A"


def test_a_real_directory_from_before_links_is_replaced_by_a_link(tmp_path):
    final = tmp_path / "last"
    final.mkdir()
    (final / "old").write_text("x")
    cache.publish_entry(_partial(tmp_path, "B"), final)
    assert final.is_symlink() and (final / "t.parquet").read_text() == "B"


def test_a_dump_is_deleted_only_when_no_run_folder_claims_it(tmp_path):
    dump = tmp_path / "dumps" / "k" / "last"
    dump.parent.mkdir(parents=True)
    data = cache.publish_entry(_partial(tmp_path, "D"), dump)
    cache.claim(data, tmp_path / "run-a")
    cache.claim(data, tmp_path / "run-b")
    assert not cache.drop_dump(dump, data, tmp_path / "run-a")  # run-b's eRank job is still to come
    assert data.is_dir()
    assert cache.drop_dump(dump, data, tmp_path / "run-b")
    assert not data.exists()


def test_an_elided_dump_points_at_its_finished_tables(tmp_path):
    dump = tmp_path / "cache" / "dumps" / "k" / "last"
    dump.parent.mkdir(parents=True)
    assert cache.measured_entry(dump) == tmp_path / "cache" / "erank" / "k" / "last"
    data = cache.elide_dump(dump)
    assert (data / cache.ELIDED).is_file() and (dump / cache.ELIDED).is_file()


# -- end to end: two checkouts share one cache, one is killed mid-dump, both rerun ---------------------
@pytest.mark.slow
def test_two_runs_sharing_the_cache_compute_each_entry_once(tmp_path, tokenizer_dir) -> None:
    """Checkout A dumps; checkout B (another run folder, same measurement) starts and waits on the
    entry's lock; A is killed mid-dump; B finishes (resuming A's shards); A reruns. Before: A's rerun
    removed B's finished tables before its job ran and measured again (or failed on missing files)."""
    import getpass
    import re
    import time

    import pandas as pd
    from helpers.paper import local_source, make_datasets, make_models
    from helpers.workflow import snakemake, snakemake_cmd, snakemake_env

    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    files = make_datasets(tmp_path / "data", n=200)
    (model, _) = make_models(tmp_path / "models", tokenizer_dir, "opt")
    shared = tmp_path / "shared"
    scratch = tmp_path / "scratch"  # the node-local scratch both checkouts' dumps go to (one node)
    dumps = scratch / f"diff-erank-{getpass.getuser()}" / "dumps"

    def overrides(name: str, results: Path, node: Path = scratch, length: int = 64) -> list[str]:
        return [
            "experiment=table9",
            *[f"~models.opt-{s}" for s in ("1_3b", "2_7b", "6_7b", "13b")],
            f"models.opt-125m.source={model}",
            *local_source("dolly-15k", files["dolly"]),
            f"model.max_length={length}",
            "model.batch_tokens=256",
            "models.opt-125m.shard_texts=8",
            "bootstrap.samples=50",
            f"name={name}",
            f"results_dir={results}",
            f"scratch_dir={node}",
        ]

    wa, wb = tmp_path / "checkout-a", tmp_path / "checkout-b"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    cmd_a = snakemake_cmd(wa, overrides=overrides("run-a", shared))
    a = subprocess.Popen(cmd_a, env=snakemake_env(), **quiet)
    b = None
    try:
        deadline = time.monotonic() + 600
        while not list(dumps.glob("*/last.partial/trained/shard-*.json")):
            assert a.poll() is None and time.monotonic() < deadline, "A's dump never started"
            time.sleep(0.05)
        os.killpg(a.pid, signal.SIGSTOP)  # A mid-dump, held there while B starts
        b = subprocess.Popen(
            snakemake_cmd(wb, overrides=overrides("run-b", shared)),
            env=snakemake_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        b_log = shared / "run-b" / "logs" / "dump"
        while not any("being written by another run" in f.read_text() for f in b_log.glob("*/*.log")):
            assert b.poll() is None and time.monotonic() < deadline, "B never waited on A's dump"
            time.sleep(0.1)
        assert not list(dumps.glob("*/last")) and a.poll() is None  # nothing published
        os.killpg(a.pid, signal.SIGKILL)  # Snakemake A and its dump job, mid-dump
        a.wait(timeout=30)
        out_b, _ = b.communicate(timeout=900)
        assert b.returncode == 0, out_b[-3000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert snakemake(wa, "--unlock", overrides=overrides("run-a", shared)).returncode == 0
    rerun_a = snakemake(wa, overrides=overrides("run-a", shared))
    assert rerun_a.returncode == 0, rerun_a.stderr[-3000:]
    rerun_b = snakemake(wb, overrides=overrides("run-b", shared))
    assert rerun_b.returncode == 0, rerun_b.stderr[-3000:]
    assert not re.search(r"^(dump|erank|prepare)\s+\d+$", rerun_b.stdout + rerun_b.stderr, re.M)

    (key,) = [p.name for p in (shared / "cache" / "erank").iterdir()]
    measured = list((shared / "cache" / "erank" / key).glob(".last.data-*"))
    assert len(measured) == 1  # the tables were computed once, by B, and linked again by A's rerun
    (dump_log,) = (shared / "run-b" / "logs" / "dump").glob("*/*.log")
    assert "trained is already dumped from the same weights" in dump_log.read_text()  # B resumed A's
    stats_a = rerun_a.stdout + rerun_a.stderr  # A's rerun measured nothing again: B's tables are its
    assert not re.search(r"^(dump|erank|prepare)\s+\d+$", stats_a, re.M)
    assert re.search(r"^diff\s+1$", stats_a, re.M)
    left = (dumps / key).glob(".last.data-*")
    assert not [p for p in left if (p / "trained").exists()]  # measured: no run claims it, deleted

    # two more checkouts started together on a new measurement: both plan the dump and its tables;
    # the second to get each lock reuses what the first published (before: it recomputed and replaced
    # it, and Snakemake failed the other run on "Missing files")
    runs = [
        subprocess.Popen(
            snakemake_cmd(tmp_path / f"checkout-{n}", overrides=overrides(f"run-{n}", shared, length=48)),
            env=snakemake_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in ("c", "d")
    ]
    for p in runs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    (new_key,) = [p.name for p in (shared / "cache" / "erank").iterdir() if p.name != key]
    assert len(list((shared / "cache" / "erank" / new_key).glob(".last.data-*"))) == 1
    dumped = [
        f
        for n in ("c", "d")
        for f in (shared / f"run-{n}" / "logs" / "dump").glob("*/*.log")
        if "dump trained:" in f.read_text()
    ]
    assert len(dumped) == 1, dumped  # one of the two runs dumped, the other reused it

    alone = overrides("clean", tmp_path / "alone", tmp_path / "node2")
    clean = snakemake(tmp_path / "clean", overrides=alone)
    assert clean.returncode == 0, clean.stderr[-3000:]
    views = Path("erank") / "opt-125m" / "dolly-15k"
    for run in (shared / "run-a", shared / "run-b"):
        for v in ("trained", "init-s0"):
            want = pd.read_parquet(tmp_path / "alone" / "clean" / views / f"{v}.parquet")
            got = pd.read_parquet(run / views / f"{v}.parquet")
            pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_cache_gc_deletes_what_no_run_folder_references(tmp_path) -> None:
    import pandas as pd

    from diff_erank.cli import main
    from diff_erank.storage import write_parquet

    results = tmp_path / "results"
    k1, k2 = "opt-125m.dolly-15k." + "1" * 16, "2" * 16  # k2: a bare digest, an entry from before names
    erank = results / "cache" / "erank"
    (erank / k1).mkdir(parents=True)
    (erank / k2).mkdir(parents=True)
    kept = cache.publish_entry(_partial(tmp_path, "k1"), erank / k1 / "last")
    (erank / k1 / "last.json").write_text("{}")
    orphan = erank / k1 / ".last.data-oldhost-1-aaaa"  # data a link no longer points to
    orphan.mkdir()
    gone = cache.publish_entry(_partial(tmp_path, "k2"), erank / k2 / "last")  # no view made from it
    dump = results / "cache" / "dumps" / k1 / "last"
    dump.parent.mkdir(parents=True)
    stub = cache.elide_dump(dump)
    partial = results / "cache" / "dumps" / k2 / "last.partial"
    partial.mkdir(parents=True)
    view = results / "r1" / "erank" / "m" / "d" / "trained.parquet"  # as the diff step records it
    table = f"results/cache/erank/{k1}/last/trained.parquet"
    write_parquet(pd.DataFrame({"x": [1]}), view, {"cache": {"table": table}})
    (results / "r1" / "config.yaml").write_text("name: r1\n")
    k3 = "m.d." + "3" * 16  # read by a paper run's experiment folder, one level deeper (results/paper/fig1/)
    (erank / k3).mkdir(parents=True)
    nested = cache.publish_entry(_partial(tmp_path, "k3"), erank / k3 / "last")
    part = results / "paper" / "fig1"
    write_parquet(
        pd.DataFrame({"x": [1]}),
        part / "erank" / "m" / "d" / "trained.parquet",
        {"cache": {"table": f"results/cache/erank/{k3}/last/trained.parquet"}},
    )
    (part / "config.yaml").write_text("name: fig1\n")

    take = "import sys; from diff_erank.storage import lock_run_dir; lock_run_dir(sys.argv[1])"
    holder = _holder(take, str(results / "r1"))
    try:
        assert main(["cache", "gc", "--results-dir", str(results)]) == 2  # r1 is running: nothing deleted
        assert gone.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert main(["cache", "gc", "--results-dir", str(results), "--dry-run"]) == 0 and gone.is_dir()
    assert main(["cache", "gc", "--results-dir", str(results)]) == 0
    assert (erank / k1 / "last" / "t.parquet").read_text() == "k1" and kept.is_dir()
    assert (erank / k1 / "last.json").is_file()
    assert nested.is_dir() and (erank / k3 / "last" / "t.parquet").read_text() == "k3"
    for p in (orphan, gone, erank / k2 / "last", stub, dump, partial):
        assert not p.exists() and not p.is_symlink(), p


def test_dump_and_erank_steps_reuse_a_finished_entry_whose_link_was_removed(tiny_opt, texts_file, tmp_path):
    """The steps as the rules call them (``--run``, ``--temp``, ``--drop-dump``), with the link removed
    between runs as Snakemake removes a job's outputs: the data are computed once."""

    from helpers.models import model_spec

    from diff_erank.cli import main

    root = tmp_path / "cache"
    dump, tables = root / "dumps" / "k" / "last", root / "erank" / "k" / "last"
    spec = cache.spec_file(str(tmp_path), model_spec(tiny_opt).spec)
    step_dump = ["dump", "--spec", spec, "--variants", "trained", "init-s0", "--texts", str(texts_file)]
    step_dump += ["--out", str(dump), "--device", "cpu", "--temp"]
    step_measure = ["measure", "--dump", str(dump), "--texts", str(texts_file), "--out", str(tables)]
    step_measure += ["--drop-dump"]

    assert main([*step_dump, "--run", str(tmp_path / "run-a")]) == 0
    assert main([*step_dump, "--run", str(tmp_path / "run-b")]) == 0  # reused: a second claim
    (dumped,) = dump.parent.glob(".last.data-*")
    assert sorted(p.name for p in (dumped / cache.CLAIMS).iterdir()) == sorted(
        [cache._run_tag(tmp_path / "run-a"), cache._run_tag(tmp_path / "run-b")]
    )
    assert main([*step_measure, "--run", str(tmp_path / "run-a")]) == 0
    (measured,) = tables.parent.glob(".last.data-*")
    assert dumped.is_dir()  # run-b has still to measure it
    first = (measured / "trained.parquet").read_bytes()
    os.remove(tables)  # Snakemake, before run-b's erank job
    assert main([*step_measure, "--run", str(tmp_path / "run-b")]) == 0
    assert list(tables.parent.glob(".last.data-*")) == [measured]  # linked again, not measured again
    assert (tables / "trained.parquet").read_bytes() == first
    assert not dumped.exists()  # measured by both: deleted
    os.remove(dump)  # Snakemake's temp() deletion: the link
    assert main([*step_dump, "--run", str(tmp_path / "run-c")]) == 0  # a third run: tables finished
    assert (dump / cache.ELIDED).is_file() and not (dump / "trained").exists()
