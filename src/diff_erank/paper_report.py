"""One reproduction report for the whole paper: every row of ``paper_reference.csv``, one status each.

A paper run (``experiment=paper``, :mod:`diff_erank.paper`) runs each experiment in its own folder,
and each writes its comparison with the paper (``tables/reproduction.csv``; the multi-modal one
``tables/reproduction_multimodal.csv``): the rows it claims, with its value beside the paper's.
This module joins them onto the whole reference, so that a row no experiment of the run claims is
in the report too, and gives each row one status under one tolerance policy:

- ``reproduced``: |ours - paper| <= :data:`REL_TOL` x |paper| (a paper value of 0: |ours| below
  half a unit of the paper's third decimal, :data:`ZERO_TOL`);
- ``differs``: a value outside that bound;
- ``not run``: no value, with the reason (the experiment that claims it is not in this run, and
  why one would leave it out: gated weights; or its jobs produced none);
- ``not reproducible by design``: the paper does not say how the number was made, so ours is of
  our recipe (:data:`BY_DESIGN`, with the fidelity note), shown but not judged.

The paper gives no spread for any row (no interval over texts or seeds), so the bound is relative
and the same for every row; each experiment's own tables keep the bootstrap intervals over texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank.reproduce import reference, size_value, trend_checks, trend_section
from diff_erank.tables import markdown

ROW = ["table", "family", "size", "dataset", "metric", "variant"]
#: The tolerance policy, applied to every row alike (module docstring).
REL_TOL = 0.05
ZERO_TOL = 0.0005
STATUSES = ("reproduced", "differs", "not run", "not reproducible by design")

#: Rows whose number the paper does not say how to make: (table, variant) -> the fidelity note.
BY_DESIGN = {
    (table, variant): (
        "the paper gives no recipe for this training stage (steps, learning rate, data); this run's "
        "recipe is conf/experiment/table10.yaml's, recorded in its provenance: its number is of that "
        "recipe, not of the authors' model"
    )
    for table in ("table10",)
    for variant in ("fully_trained", "overfitting")
}
#: Rows no experiment of the paper run claims, with the reason (none today: the coverage test
#: holds every other row to a claiming experiment).
OUT_OF_REACH: dict[tuple[str, ...], str] = {}
#: Why a run would leave out the experiments of these families (docs/paper.md: a partial run).
GATED = {
    "openelm": "OpenELM needs the gated meta-llama/Llama-2-7b-hf tokenizer (accept the licence, HF_TOKEN)",
    "minigpt-v2": (
        "MiniGPT-v2 is converted from the gated meta-llama/Llama-2-7b-chat-hf and two downloaded "
        "checkpoints (conf/mm_model/minigpt-v2.yaml)"
    ),
}


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["variant"] = df["variant"].fillna("").astype(str)
    df["size"] = df["size"].astype(str)
    return df


def read_comparison(path: str | Path) -> pd.DataFrame:
    """An experiment's ``tables/reproduction*.csv`` (the rows it claims, ours beside the paper's)."""
    df = pd.read_csv(path, dtype={"variant": str, "size": str}, keep_default_na=False, na_values=[""])
    return _rows(df)


def within(paper: pd.Series, ours: pd.Series) -> pd.Series:
    """The tolerance policy, row by row (NaN ours: False)."""
    bound = np.where(paper == 0, ZERO_TOL, REL_TOL * paper.abs())
    return (ours - paper).abs() <= bound


def statuses(
    comparisons: Mapping[str, pd.DataFrame],
    claimers: Mapping[str, Sequence[str]] | None = None,
    ref: pd.DataFrame | None = None,
    experiments: Sequence[str] = (),
) -> pd.DataFrame:
    """Every reference row with ``experiment``, ``ours``, ``rel_diff``, ``status`` and ``reason``.

    ``comparisons``: each experiment of the run -> its comparison rows (what it claims). A row that
    several claim takes the first value in the run's order (their views read one cached table).
    ``claimers``: each paper table -> the paper's experiments that claim it, for the reason of a row
    this run leaves out; ``experiments``: the run's (default: those of ``comparisons``).
    """
    experiments = list(experiments or comparisons)
    ref = _rows(reference() if ref is None else ref).reset_index(drop=True)
    ref = ref.rename(columns={"value": "paper"})
    ref["experiment"], ref["ours"] = "", np.nan
    index = {tuple(r): i for i, r in enumerate(ref[ROW].itertuples(index=False, name=None))}
    for experiment, cmp in comparisons.items():
        for r in cmp.itertuples(index=False):
            i = index.get(tuple(getattr(r, c) for c in ROW))
            if i is None:  # an experiment's own comparison of a row the reference lacks: not ours to judge
                continue
            if not ref.at[i, "experiment"] or (np.isnan(ref.at[i, "ours"]) and pd.notna(r.ours)):
                ref.at[i, "experiment"], ref.at[i, "ours"] = experiment, r.ours
    ref["rel_diff"] = (ref["ours"] - ref["paper"]) / ref["paper"].abs()
    ref.loc[ref["paper"] == 0, "rel_diff"] = np.nan
    ok = within(ref["paper"], ref["ours"])
    ref["status"] = np.where(ref["ours"].isna(), "not run", np.where(ok, "reproduced", "differs"))
    ref["reason"] = ""
    for i, r in ref.iterrows():
        note = BY_DESIGN.get((r["table"], r["variant"]))
        if note:
            ref.at[i, "status"], ref.at[i, "reason"] = "not reproducible by design", note
        elif r["status"] == "not run":
            ref.at[i, "reason"] = _why_not_run(r, claimers or {}, experiments)
    return ref


def _why_not_run(row: pd.Series, claimers: Mapping[str, Sequence[str]], experiments: Sequence[str]) -> str:
    if row["experiment"]:
        return f"{row['experiment']} claims it but produced no value (see its logs and reproduction.md)"
    key = tuple(row[c] for c in ROW)
    if key in OUT_OF_REACH:
        return OUT_OF_REACH[key]
    here = [e for e in claimers.get(row["table"], []) if e in experiments]
    if here:
        return (
            f"{', '.join(here)} of this run claim(s) {row['table']}, but without this row's model or "
            "dataset (left out by an override)"
        )
    who = ", ".join(claimers.get(row["table"], [])) or "no experiment"
    gated = f"; {GATED[row['family']]}" if row["family"] in GATED else ""
    return f"not in this run's experiments ({who} claim(s) {row['table']}){gated}"


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per table: rows, each status's count, median |relative difference| of the run rows."""
    out = []
    for table, g in rows.groupby("table", sort=False):
        line: dict[str, Any] = {"table": table, "rows": len(g)}
        line |= {s: int((g["status"] == s).sum()) for s in STATUSES}
        judged = g[g["status"].isin(["reproduced", "differs"])]
        line["median |rel_diff|"] = float(judged["rel_diff"].abs().median()) if len(judged) else np.nan
        line["experiments"] = " ".join(sorted({e for e in g["experiment"] if e}))
        out.append(line)
    return pd.DataFrame(out)


def render(rows: pd.DataFrame, name: str, experiments: Sequence[str]) -> str:
    counts = rows["status"].value_counts()
    out = [
        f"# Reproduction report: the paper ({name})",
        "",
        f"Every row of paper_reference.csv ({len(rows)}), with the value of this run (experiments: "
        f"{', '.join(experiments)}), the relative difference (ours - paper) / |paper| and one status: "
        + "; ".join(f"**{s}** {int(counts.get(s, 0))}" for s in STATUSES)
        + ".",
        "",
        f"Tolerance policy, the same for every row: **reproduced** when |ours - paper| <= "
        f"{100 * REL_TOL:g}% of |paper| (a paper value of 0: |ours| <= {ZERO_TOL:g}, half its last printed "
        "digit). The paper reports no spread (no interval over texts or seeds) for any row, so the bound "
        "is relative; each experiment's own tables give this run's bootstrap interval over texts. "
        "**not reproducible by design**: the paper does not say how the number was made; ours is shown, "
        "not judged, with the fidelity note. **not run**: no value, with the reason.",
        "",
        "## Summary per table",
        "",
        markdown(summary(rows), percent=["median |rel_diff|"]),
    ]
    checks = trend_checks(rows.assign(size_value=rows["size"].map(size_value)))
    cols = ["family", "size", "dataset", "metric", "variant", "paper", "ours", "rel_diff", "status", "reason"]
    for table, g in rows.groupby("table", sort=False):
        out += ["", f"## {table}", ""]
        g = g.assign(size_value=g["size"].map(size_value))
        g = g.sort_values(["metric", "dataset", "variant", "size_value"])
        out.append(markdown(g[cols], percent=["rel_diff"]))
        out += trend_section(checks, table, heading="Trend claims")
    return "\n".join(out) + "\n"


def build(
    comparisons: Sequence[tuple[str, str | Path]], config: dict[str, Any], out_dir: str | Path
) -> pd.DataFrame:
    """Write ``reproduction.md``/``.html`` and ``tables/reproduction.*`` of a paper run from its
    experiments' comparison tables, ``(experiment, csv)`` in the run's order."""
    from diff_erank.provenance import provenance
    from diff_erank.report import md_to_html
    from diff_erank.storage import write_text
    from diff_erank.tables import write_table

    out_dir = Path(out_dir)
    parts: dict[str, list[pd.DataFrame]] = {}
    for experiment, path in comparisons:
        parts.setdefault(experiment, []).append(read_comparison(path))
    tables = {e: pd.concat(d, ignore_index=True) for e, d in parts.items()}
    rows = statuses(tables, config.get("claimers"), experiments=config["experiments"])
    prov = provenance(config, comparisons=[[e, str(path)] for e, path in comparisons])
    write_table(rows, out_dir / "tables" / "reproduction", prov)
    text = render(rows, config["name"], list(config["experiments"]))
    write_text(text, out_dir / "reproduction.md")
    write_text(md_to_html(text, f"Reproduction: {config['name']}"), out_dir / "reproduction.html")
    return rows
