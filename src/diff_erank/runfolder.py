"""The run folder ``<results_dir>/<name>/``: one configuration per folder, claimed when a run starts.

Snakemake reruns whatever a config change touches, so two configurations that share a folder
overwrite each other's results without a word. The first run writes the resolved configuration to
``<run folder>/config.yaml``; a later run whose configuration differs stops before any job and
says how to name it. The same check refuses to start while jobs of an earlier, killed Snakemake
still write into the working directory (processes of this node, or Slurm jobs found with
``squeue``), and while local paths named by the config are missing.

Stdlib and PyYAML only: this runs in Snakemake's ``onstart`` handler.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from diff_erank.config import ConfigError, missing_paths
from diff_erank.overrides import OVERRIDES_RECORD

RECORD = "config.yaml"

#: What a run leaves that a configuration's numbers are in: a folder holding none of these has no
#: results to protect, so a changed configuration (a failed first run, fixed) may take it over.
RESULTS = ("diff", "erank", "tables", "figures", "accuracy", "mm", "summary.md")

#: Keys that do not change any number: a different value is the same configuration.
NEUTRAL = ("description", "keep_dumps", "scratch_dir", "results_dir", "cluster", "hf_home")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(cfg, sort_keys=True, default=str))
    return {k: v for k, v in plain.items() if k not in NEUTRAL}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs, in key order."""
    a, b = _flat(_comparable(old)), _flat(_comparable(new))
    return [
        f"{k}: {json.dumps(a.get(k, '(absent)'))} -> {json.dumps(b.get(k, '(absent)'))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(absent)") != b.get(k, "(absent)")
    ]


def running_jobs(workdir: Path) -> list[int]:
    """Pids of ``diff-erank`` step processes working in ``workdir`` (Linux ``/proc``; else none)."""
    proc, me, found = Path("/proc"), os.getpid(), []
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(a.endswith(b"diff-erank") or a == b"diff_erank.cli" for a in argv[:3]):
                continue
            if Path(os.readlink(entry / "cwd")).resolve() == workdir.resolve():
                found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)


def slurm_jobs(workdir: Path) -> list[str]:
    """Ids of this user's queued or running Slurm jobs whose working directory is ``workdir``.

    The jobs of a killed Snakemake run on compute nodes, where this node's ``/proc`` cannot see
    them; the Slurm executor submits each job with ``-D <working directory>`` (squeue's ``%Z``).
    Empty where there is no ``squeue`` or it does not answer (no Slurm here).
    """
    if not shutil.which("squeue"):
        return []
    cmd = ["squeue", "--noheader", "--user", getpass.getuser(), "--format", "%i %Z"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if r.returncode != 0:
        return []
    here, found = workdir.resolve(), []
    for line in r.stdout.splitlines():
        job, _, cwd = line.strip().partition(" ")
        if job and cwd and Path(cwd.strip()).resolve() == here:
            found.append(job)
    return found


def holds_results(out: str | Path) -> bool:
    """Whether ``out`` holds any file of :data:`RESULTS` (a run got as far as one result)."""
    out = Path(out)
    for name in RESULTS:
        path = out / name
        if path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*"))):
            return True
    return False


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_overrides(out: str | Path, overrides: list[str]) -> None:
    """Write the user's overrides to ``<out>/overrides.yaml`` (``--config from=<out>`` replays them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(
        out / OVERRIDES_RECORD,
        f"# The overrides of the last run started here; replay it: snakemake --config from={out}\n"
        + yaml.safe_dump(list(overrides), sort_keys=False, allow_unicode=True, width=10**6),
    )


def claim(
    cfg: dict[str, Any], out: str | Path, workdir: str | Path = ".", overrides: list[str] | None = None
) -> None:
    """Check that a run of ``cfg`` may start writing into ``out``, then record its configuration
    (and, given, the ``overrides`` it was composed from).

    Raises :class:`ConfigError` (one sentence, with the fix) when a local path is missing, when
    jobs of an earlier run still write here, or when ``out`` holds another configuration's results.
    A folder with a record but no result yet (a first run that failed early) takes the new one.
    """
    problems = missing_paths(cfg)
    if problems:
        raise ConfigError("; ".join(problems) + " (fix the path in the config, or the override)")
    pids = running_jobs(Path(workdir))
    if pids:
        raise ConfigError(
            f"jobs of an earlier run still write into this directory (pids {', '.join(map(str, pids))}): "
            f"wait for them to end or stop them (kill {' '.join(map(str, pids))}), then run again"
        )
    jobs = slurm_jobs(Path(workdir))
    if jobs:
        raise ConfigError(
            f"Slurm jobs of an earlier run still write into this directory (job ids {', '.join(jobs)}): "
            f"wait for them to end or cancel them (scancel {' '.join(jobs)}), then run again"
        )
    out = Path(out)
    record = out / RECORD
    old = None
    if record.is_file():
        old = yaml.safe_load(record.read_text()) or {}
        diff = differences(old, cfg)
        if diff and holds_results(out):
            shown = ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")
            tag = hashlib.sha256(json.dumps(_comparable(cfg), sort_keys=True).encode()).hexdigest()[:6]
            raise ConfigError(
                f"{out}/ holds the results of another configuration ({shown}); give this run its own "
                f"folder with name=<new name> (e.g. name={cfg['name']}-{tag}), or delete {record} to let "
                f"this configuration update those results in place"
            )
    same = old is not None and old == json.loads(json.dumps(cfg, default=str))
    out.mkdir(parents=True, exist_ok=True)
    if overrides is not None:
        record_overrides(out, overrides)
    if same:
        return
    _write(
        record,
        "# The configuration whose results this folder holds (written when the run started;\n"
        f"# replay the run: snakemake --config from={out}).\n"
        + yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False),
    )


def report_problem(cfg: dict[str, Any], out: str | Path, files: list[str]) -> str | None:
    """Why ``snakemake --report`` cannot show ``cfg``'s run in ``out``, in one sentence; None if it can.

    ``files``: the report's files (``outputs.report_files``). Without this Snakemake names one
    missing file, or, given a partial ``--config``, builds the report of another configuration.
    """
    out = Path(out)
    record = out / RECORD
    hint = "name the run with --config from=<its folder> (e.g. from=results/ci), or run it first"
    if record.is_file():
        diff = differences(yaml.safe_load(record.read_text()) or {}, cfg)
        if diff:
            return f"{out}/ holds another configuration's results ({diff[0]}); {hint}"
    missing = [f for f in files if not (out / f).is_file()]
    if missing:
        return f"{out}/ has no finished run of this configuration ({out / missing[0]} is missing); {hint}"
    return None
