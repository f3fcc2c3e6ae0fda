"""Which files an experiment's report writes, decided from the resolved config alone.

The report rule declares exactly these as its outputs (so deleting any one of them reruns it) and
``report.build`` writes exactly these, checked at its end: one list, so the two cannot drift.
Kept free of pandas and matplotlib because the Snakefile imports it on every job.
"""

from __future__ import annotations

import re
from typing import Any

from diff_erank.figure_registry import FIGURES

#: Multi-modal paper tables, reported by the multi-modal rule rather than this one.
MULTIMODAL_TABLES = frozenset({"table2", "table3"})
TABLE_FILES = ("csv", "md", "html", "provenance.json")
FIGURE_FILES = ("png", "pdf", "provenance.json")


def reproduces_paper(config: dict[str, Any]) -> bool:
    return bool(set(config["paper_tables"]) - MULTIMODAL_TABLES)


def figure_kinds(config: dict[str, Any]) -> list[str]:
    """The figures of ``config['figures']`` that the config gives something to show, in the
    registry's order (``figure_registry``: each figure's ``needs``)."""
    wanted = set(config.get("figures") or [])
    return [name for name, fig in FIGURES.items() if name in wanted and fig.needs(config)]


def table_names(config: dict[str, Any]) -> list[str]:
    names = ["diff_erank", "all", "algorithms_layers", "layers", "stages"]
    if config.get("accuracy"):
        names.append("accuracy")
    if "init_scale" in figure_kinds(config):
        names.append("init_scale")
    if reproduces_paper(config):
        names.append("reproduction")
    return names


def key(path: str) -> str:
    """A Snakemake output name for a relative path: figures/size.png -> figures_size_png."""
    return re.sub(r"\W", "_", path)


def report_files(config: dict[str, Any]) -> dict[str, str]:
    """Every file the report writes, relative to the experiment's folder, by output name."""
    files = [f"tables/{t}.{ext}" for t in table_names(config) for ext in TABLE_FILES]
    files += [f"figures/{f}.{ext}" for f in figure_kinds(config) for ext in FIGURE_FILES]
    files += ["summary.md", "summary.html", "report.rst"]  # report.rst: the HTML report's landing page
    if reproduces_paper(config):
        files += ["reproduction.md", "reproduction.html"]
    return {key(f): f for f in files}


def multimodal_files(config: dict[str, Any]) -> dict[str, str]:
    """Every file the multi-modal report (Tables 2-3) writes, by output name."""
    if not config.get("multimodal"):
        return {}
    files = [f"tables/multimodal.{ext}" for ext in TABLE_FILES]
    files += [f"figures/multimodal.{ext}" for ext in FIGURE_FILES]
    if MULTIMODAL_TABLES & set(config["paper_tables"]):
        files += [f"tables/reproduction_multimodal.{ext}" for ext in TABLE_FILES]
        files.append("reproduction_multimodal.md")
    return {key(f): f for f in files}
