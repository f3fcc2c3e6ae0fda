"""Writing result tables (CSV, Markdown, HTML) and the statistics both reports share.

The CSV keeps every number at full precision for machines; the Markdown and HTML renderings are
for readers: one number of decimals per column (so "2.82" and "3.014" never stand in one column),
parameter counts as 125M / 1.3B, and footnotes under the table. Both the experiment report
(``report``) and the comparison with the paper (``reproduce``) write through here, which is what
keeps them from importing each other.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank.storage import atomic_path, write_json, write_text


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 points."""
    a, b = pd.Series(x, dtype=float), pd.Series(y, dtype=float)
    ok = a.notna() & b.notna()
    if ok.sum() < 3:
        return float("nan")
    ra, rb = a[ok].rank(), b[ok].rank()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def human_count(n: float) -> str:
    """A parameter count as a reader writes it: 82464 -> '82K', 1317632 -> '1.3M', 1.3e9 -> '1.3B'."""
    if n is None or not np.isfinite(n):
        return ""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.2g}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def decimals(values: Sequence[float], digits: int = 4) -> int:
    """Decimals that give the column's largest value about ``digits`` significant digits (0-3)."""
    v = np.abs(np.asarray([x for x in values if x is not None], dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 2
    return int(min(3, max(0, digits - 1 - math.floor(math.log10(v.max())))))


def formatted(df: pd.DataFrame, percent: Sequence[str] = ()) -> pd.DataFrame:
    """The table as strings for reading: floats at one precision per column, counts humanised.

    ``n_params`` reads 125M (the column keeps its name, so the CSV's column names are the
    Markdown's and HTML's); integer-valued columns stay integers;
    ``percent`` columns (relative differences) are shown as signed percentages.
    """
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        s = df[col]
        if col == "n_params":
            out[col] = [human_count(v) for v in pd.to_numeric(s, errors="coerce")]
        elif col in percent:
            out[col] = ["" if pd.isna(v) else f"{100 * v:+.1f}%" for v in s]
        elif pd.api.types.is_bool_dtype(s):
            out[col] = s.map({True: "yes", False: "no"}).fillna("")
        elif pd.api.types.is_float_dtype(s):
            finite = s[np.isfinite(s.astype(float))]
            if len(finite) and (finite == finite.round()).all() and finite.abs().max() < 1e15:
                out[col] = ["" if pd.isna(v) else f"{v:.0f}" for v in s]
            else:
                d = decimals(finite)
                out[col] = ["" if pd.isna(v) else f"{v:.{d}f}" for v in s]
        else:
            out[col] = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in s]
    return out


def markdown(df: pd.DataFrame, notes: Sequence[str] = (), percent: Sequence[str] = ()) -> str:
    """A GitHub Markdown table at even precision per column, with numbered footnotes below."""
    f = formatted(df, percent)
    lines = ["| " + " | ".join(f.columns) + " |", "|" + "---|" * len(f.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in f.itertuples(index=False)]
    if notes:
        lines.append("")
        lines += [f"{note}" for note in notes]
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, title: str, notes: Sequence[str] = (), percent: Sequence[str] = ()) -> str:
    """A self-contained HTML page of the table, which Snakemake's report shows in the page."""
    f = formatted(df, percent)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in f.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
        for row in f.itertuples(index=False)
    )
    foot = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    style = (
        "body{font-family:sans-serif;font-size:13px;margin:1em}"
        "table{border-collapse:collapse}th,td{padding:2px 8px;border-bottom:1px solid #ddd}"
        "th{text-align:left;background:#f3f3f3;position:sticky;top:0}"
        "td{text-align:right;font-variant-numeric:tabular-nums}.note{color:#444;max-width:60em}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n<h3>{html.escape(title)}</h3>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>\n{foot}\n</body></html>\n"
    )


def write_table(
    df: pd.DataFrame,
    stem: Path,
    prov: dict[str, Any],
    title: str | None = None,
    notes: Sequence[str] = (),
    percent: Sequence[str] = (),
) -> None:
    """``stem``.csv (full precision), .md and .html (for reading) and .provenance.json."""
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    write_text(markdown(df, notes, percent), stem.with_suffix(".md"))
    write_text(html_table(df, title or stem.name, notes, percent), stem.with_suffix(".html"))
    write_json(prov, stem.with_suffix(".provenance.json"))
