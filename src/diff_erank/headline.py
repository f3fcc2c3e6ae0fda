"""What a finished run prints last: its Diff-eRank table and where the summary and the report are.

A successful run used to end at Snakemake's "Complete log" after some 300 lines; as lm-eval ends
with its results table, this ends with the answer (read from ``tables/diff_erank.csv``, what the
report wrote) and the commands to read more. Stdlib only: the Snakefile's main process prints it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


def _num(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return None if value is None or math.isnan(value) else value


def _interval(row: dict[str, str]) -> str:
    low, high, std = _num(row.get("ci_low")), _num(row.get("ci_high")), _num(row.get("diff_erank_std"))
    if low is not None and high is not None:
        return f"[{low:.2f}, {high:.2f}]"
    return f"± {std:.2f} (seeds)" if std is not None else ""


def table(rows: list[dict[str, str]], level: float) -> list[str]:
    """The headline rows: model, dataset, Diff-eRank with its interval, reduced loss."""
    head = ["model", "dataset", "Diff-eRank", f"{level:.0%} CI", "reduced loss"]
    body = []
    for row in rows:
        diff, loss = _num(row.get("diff_erank")), _num(row.get("reduced_loss"))
        body.append(
            [
                row.get("model", ""),
                row.get("dataset", ""),
                f"{diff:.2f}" if diff is not None else "-",
                _interval(row),
                f"{loss:.3f}" if loss is not None else "-",
            ]
        )
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.rjust(w) if i in (2, 4) else c.ljust(w) for i, (c, w) in pairs]
        return "  ".join(padded).rstrip()

    return [line(r) for r in [head, *body]]


def headline(cfg: dict[str, Any], out: str | Path, workdir: str | Path = ".") -> str:
    """The closing lines of a successful run of ``cfg`` whose folder is ``out``, relative to
    ``workdir`` (Snakemake's ``--directory``: it is no longer the current directory at exit)."""
    out, root = Path(out), Path(workdir)
    lines = []
    csv_path = out / "tables" / "diff_erank.csv"
    if (root / csv_path).is_file():
        with (root / csv_path).open(newline="") as f:
            rows = list(csv.DictReader(f))
        level = float((cfg.get("bootstrap") or {}).get("ci", 0.95))
        lines.append(f"Diff-eRank of {cfg.get('name')} (eRank of M0 - eRank of the trained), {csv_path}:")
        lines += table(rows, level)
    for name in ("summary.md", "reproduction.md"):
        if (root / out / name).is_file():
            lines.append(f"{name.split('.')[0]}: {out / name}")
    lines.append(f"report:  snakemake --report {out}/report.html --config from={out}")
    return "\n".join(lines)
