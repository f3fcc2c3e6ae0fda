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

RECORD = "config.yaml"

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


def claim(cfg: dict[str, Any], out: str | Path, workdir: str | Path = ".") -> None:
    """Check that a run of ``cfg`` may start writing into ``out``, then record its configuration.

    Raises :class:`ConfigError` (one sentence, with the fix) when a local path is missing, when
    jobs of an earlier run still write here, or when ``out`` holds another configuration's results.
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
    if record.is_file():
        old = yaml.safe_load(record.read_text()) or {}
        diff = differences(old, cfg)
        if diff:
            shown = ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")
            tag = hashlib.sha256(json.dumps(_comparable(cfg), sort_keys=True).encode()).hexdigest()[:6]
            raise ConfigError(
                f"{out}/ holds the results of another configuration ({shown}); give this run its own "
                f"folder with name=<new name> (e.g. name={cfg['name']}-{tag}), or delete {record} to let "
                f"this configuration update those results in place"
            )
        if not diff and old == json.loads(json.dumps(cfg, default=str)):
            return
    out.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{RECORD}.{os.getpid()}.tmp")
    tmp.write_text(
        "# The configuration whose results this folder holds (written when the run started).\n"
        + yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False)
    )
    os.replace(tmp, record)
