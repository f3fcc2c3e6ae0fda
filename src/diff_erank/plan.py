"""The bill of an experiment before it runs: ``diff-erank plan experiment=<name>``.

Counts the jobs per kind as the workflow makes them and sizes each with the estimates the rules
ask Slurm for (:mod:`diff_erank.sizing`). A measurement the shared cache already holds
(:mod:`diff_erank.cache`) costs nothing: its dump and eRank jobs are counted as cached, not run.
Before ``prepare`` the texts are sized from the datasets' ``size_hint``; after, from the texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diff_erank import sizing
from diff_erank.cache import Keys
from diff_erank.variants import TRAINED, variants


@dataclass
class Line:
    kind: str
    jobs: int = 0
    cached: int = 0
    gpu_hours: float = 0.0
    hours: float = 0.0
    gpu_mem_mb: int = 0
    mem_mb: int = 0
    disk_mb: int = 0  # written in all (dumps: scratch)
    disk_peak_mb: int = 0  # the largest single job

    def add(self, need: sizing.Need) -> None:
        self.jobs += 1
        self.gpu_hours += need.gpu_hours
        self.hours += need.runtime / 60
        self.gpu_mem_mb = max(self.gpu_mem_mb, need.gpu_mem_mb)
        self.mem_mb = max(self.mem_mb, need.mem_mb)
        self.disk_mb += need.disk_mb
        self.disk_peak_mb = max(self.disk_peak_mb, need.disk_mb)


def bill(cfg: dict[str, Any], out: str) -> dict[str, Line]:
    """``{job kind: Line}`` plus ``total``, for the experiment ``cfg`` run into ``out``."""
    keys = Keys(cfg, out)
    lines: dict[str, Line] = {}

    def line(kind: str) -> Line:
        return lines.setdefault(kind, Line(kind))

    device, layers = cfg["device"], cfg["layers"]
    texts_needed = set()
    seen: set[str] = set()
    for (m, d), key in keys.sets.items():
        model = cfg["models"][m]
        n = len(variants(model))
        line("diff").add(sizing.Need(mem_mb=2000, runtime=10))
        if key in seen:
            continue
        seen.add(key)
        src = keys.prefix.get(d, (d, None))[0]
        if Path(keys.source_table(m, d)).is_dir():
            line("dump").cached += 1
            line("erank").cached += 1
            continue
        texts_needed.add(src)
        size = sizing.texts_size(cfg["datasets"][src], model, keys.texts_path(src))
        line("dump").add(sizing.dump_need(model, size, layers, device, n_variants=n))
        line("erank").add(sizing.erank_need(model, size, layers, n_variants=n))
    for model in cfg["models"].values():
        for recipe in (model.get("finetune") or {}).values():
            texts_needed.add(recipe["dataset"])
            line("finetune").add(sizing.finetune_need(model, recipe, device))
        if model.get("train"):
            line("train").add(sizing.Need(mem_mb=2000, runtime=30))
        if cfg["accuracy"]:
            wanted = cfg["accuracy"].get("variants") or [TRAINED]
            for v in variants(model):
                if v in wanted:
                    line("accuracy").add(sizing.accuracy_need(model, cfg["accuracy"], device))
    for key in sorted({keys.texts[d] for d in texts_needed}):
        if Path(f"{keys.root}/texts/{key}.parquet").is_file():
            line("prepare").cached += 1
        else:
            line("prepare").add(sizing.Need(mem_mb=8000, runtime=60))
    mm = cfg.get("multimodal") or {}
    for _ in mm.get("datasets") or {}:
        line("mm_prepare").add(sizing.Need(mem_mb=4000, runtime=30))
    for model in (mm.get("models") or {}).values():
        if model.get("arch") == "minigpt-v2" and not model.get("source"):
            line("mm_convert").add(sizing.minigpt_convert_need(model))
        for _ in mm.get("datasets") or {}:
            for _ in mm.get("rotations") or []:
                line("mm_erank").add(sizing.mm_need(model, device))
    if cfg["models"] or mm:
        line("report").add(sizing.Need(mem_mb=4000, runtime=20))
    total = Line("total")
    for item in lines.values():
        total.jobs += item.jobs
        total.cached += item.cached
        total.gpu_hours += item.gpu_hours
        total.hours += item.hours
        total.gpu_mem_mb = max(total.gpu_mem_mb, item.gpu_mem_mb)
        total.mem_mb = max(total.mem_mb, item.mem_mb)
        total.disk_mb += item.disk_mb
        total.disk_peak_mb = max(total.disk_peak_mb, item.disk_peak_mb)
    order = [
        "prepare",
        "train",
        "finetune",
        "dump",
        "erank",
        "diff",
        "accuracy",
        "mm_prepare",
        "mm_convert",
        "mm_erank",
        "report",
    ]
    out_lines = {k: lines[k] for k in [*order, *sorted(set(lines) - set(order))] if k in lines}
    out_lines["total"] = total
    return out_lines


def render(lines: dict[str, Line], cfg: dict[str, Any]) -> str:
    """A fixed-width table; sizes in GB (10^9 bytes), times in hours."""

    def gb(mb: int) -> str:
        return f"{mb / 1000:,.1f}" if mb else "-"

    head = (
        f"{'job kind':<10} {'jobs':>5} {'cached':>6} {'GPU-h':>8} {'job-h':>8} "
        f"{'peak GPU GB':>11} {'peak host GB':>12} {'scratch GB':>10} {'largest GB':>10}"
    )
    rows = [
        f"{line.kind:<10} {line.jobs:>5} {line.cached:>6} {line.gpu_hours:>8.1f} {line.hours:>8.1f} "
        f"{gb(line.gpu_mem_mb):>11} {gb(line.mem_mb):>12} {gb(line.disk_mb):>10} {gb(line.disk_peak_mb):>10}"
        for line in lines.values()
    ]
    note = (
        f"experiment {cfg['name']}: cached = already in {cfg['results_dir']}/cache (not run again); "
        "scratch = hidden-state dumps written in all (temp: deleted once measured); largest = one dump, "
        "the least `--resources disk_mb=N` must allow"
    )
    return "\n".join([head, "-" * len(head), *rows[:-1], "-" * len(head), rows[-1], note])
