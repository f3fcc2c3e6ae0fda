"""The reproduction report: every number a run produced beside the paper's, row by row.

Our results are turned into the long form of ``paper_reference.csv`` (table, family, size,
dataset, metric, variant, value) and joined on (family, size, dataset, metric, variant) with the
rows of the tables the experiment reproduces. A paper row the run did not produce stays in the
report as missing. Trend checks follow the paper's claims: Diff-eRank monotone in model size,
and its rank correlation with reduced loss and accuracy, for the run and for the paper alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank.aggregate import headline
from diff_erank.erank import STANDARD_ALGORITHM
from diff_erank.layers import FIRST_LAYER_READINGS, LAST
from diff_erank.sizing import size_value
from diff_erank.tables import markdown, spearman
from diff_erank.variants import TRAINED

KEY = ["family", "size", "dataset", "metric", "variant"]


def reference() -> pd.DataFrame:
    """The paper's numbers, shipped with the package (a copy of shared/paper_reference.csv)."""
    with resources.files("diff_erank").joinpath("data/paper_reference.csv").open() as f:
        return pd.read_csv(f, dtype={"variant": str, "size": str}, keep_default_na=False, na_values=[""])


def _row(model: dict, dataset: str, metric: str, variant: str, value: float, name: str) -> dict[str, Any]:
    return {
        "model": name,
        "family": model["family"],
        "size": model["size"],
        "dataset": dataset,
        "metric": metric,
        "variant": variant,
        "value": float(value),
    }


def long_results(full: pd.DataFrame, accuracy: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """All of a run's numbers in the long form of the reference CSV."""
    rows = []
    ds_name = {d: (s.get("paper_name") or d) for d, s in config["datasets"].items()}
    ds_variant = {d: (s.get("paper_variant") or "") for d, s in config["datasets"].items()}
    # layer_* and algorithm_* rows only where the run compares several (Tables 4 and 9)
    several_layers, several_algorithms = full["layer"].nunique() > 1, full["algorithm"].nunique() > 1
    for r in headline(full).itertuples():
        model = config["models"][r.model]
        if r.algorithm == STANDARD_ALGORITHM and r.layer == LAST:
            rows.append(
                _row(model, ds_name[r.dataset], "diff_erank", ds_variant[r.dataset], r.diff_erank, r.model)
            )
            rows.append(
                _row(
                    model, ds_name[r.dataset], "reduced_loss", ds_variant[r.dataset], r.reduced_loss, r.model
                )
            )
            rows.append(
                _row(
                    model,
                    ds_name[r.dataset],
                    "normalized_matrix_entropy",
                    "trained",
                    r.normalized_entropy_trained,
                    r.model,
                )
            )
            rows.append(_row(model, ds_name[r.dataset], "loss", "trained", r.loss_trained, r.model))
        if r.layer == LAST and several_algorithms:
            rows.append(
                _row(
                    model, ds_name[r.dataset], "diff_erank", f"algorithm_{r.algorithm}", r.diff_erank, r.model
                )
            )
        if r.algorithm == STANDARD_ALGORITHM and several_layers:
            rows.append(
                _row(model, ds_name[r.dataset], "diff_erank", f"layer_{r.layer}", r.diff_erank, r.model)
            )
    standard = (full["algorithm"] == STANDARD_ALGORITHM) & (full["layer"] == LAST)
    stages = full[(full["role"] == "stage") & standard]
    for r in stages.itertuples():
        label = (config["models"][r.model].get("stage_labels") or {}).get(r.variant)
        if label:
            model = config["models"][r.model]
            rows.append(_row(model, ds_name[r.dataset], "diff_erank", label, r.diff_erank, r.model))
            rows.append(_row(model, ds_name[r.dataset], "loss", label, r.loss_trained, r.model))
    for r in accuracy.itertuples():
        model = config["models"][r.model]
        labels = [""] if r.variant == TRAINED else []
        labels += [lab for v, lab in (model.get("stage_labels") or {}).items() if v == r.variant]
        rows += [_row(model, r.task, "accuracy", lab, r.accuracy, r.model) for lab in labels]
        norm = getattr(r, "accuracy_norm", float("nan"))  # lm-eval's acc_norm (NaN: the task has none)
        rows += [_row(model, r.task, "accuracy_norm", lab, norm, r.model) for lab in labels]
    out = pd.DataFrame(rows, columns=["model", *KEY, "value"])
    # the spread over sample sizes (Table 11): population std of the same dataset's variants
    samples = out[(out["metric"] == "diff_erank") & out["variant"].str.startswith("samples=")]
    for (model, fam, size, ds), g in samples.groupby(["model", "family", "size", "dataset"]):
        if len(g) > 1:
            variant = "samples=" + ",".join(v.removeprefix("samples=") for v in g["variant"])
            extra = {
                "model": model,
                "family": fam,
                "size": size,
                "dataset": ds,
                "metric": "diff_erank_std",
                "variant": variant,
                "value": float(np.std(g["value"], ddof=0)),
            }
            out = pd.concat([out, pd.DataFrame([extra])], ignore_index=True)
    return out.drop_duplicates(subset=KEY, keep="first")


def accuracy_metrics() -> pd.DataFrame:
    """Which lm-eval metric (acc or acc_norm) each paper accuracy is, per (table, dataset), with
    the evidence for the choice (``data/accuracy_metrics.csv``). ``settled`` is ``no`` where the
    evidence does not decide (Table 1's piqa): ``metric`` is then only the one the main table
    joins on, and the report sets both beside the paper (:func:`unsettled_lines`)."""
    with resources.files("diff_erank").joinpath("data/accuracy_metrics.csv").open() as f:
        return pd.read_csv(f, keep_default_na=False)


def _accuracy_columns(ref: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Accuracy rows get the metric the paper used (``lm_eval_metric``), the metric to join on,
    and both of our values (``ours_acc``, ``ours_acc_norm``) for the report."""
    choice = accuracy_metrics().rename(columns={"metric": "lm_eval_metric"})[
        ["table", "dataset", "lm_eval_metric"]
    ]
    ref = ref.merge(choice, on=["table", "dataset"], how="left")
    is_acc = ref["metric"] == "accuracy"
    ref["lm_eval_metric"] = ref["lm_eval_metric"].where(is_acc, "").fillna("acc")
    ref["join_metric"] = ref["metric"].where(
        ~(is_acc & (ref["lm_eval_metric"] == "acc_norm")), "accuracy_norm"
    )
    for metric, col in (("accuracy", "ours_acc"), ("accuracy_norm", "ours_acc_norm")):
        mine = ours[ours["metric"] == metric].drop(columns=["model", "metric"]).rename(columns={"value": col})
        ref = ref.merge(mine, on=[k for k in KEY if k != "metric"], how="left")
        ref.loc[~is_acc.to_numpy(), col] = np.nan
    return ref


def in_scope(ref: pd.DataFrame, config: dict[str, Any]) -> pd.Series:
    """Rows of the reference that concern the experiment's own models and datasets: its models'
    (family, size), and the datasets it measures (accuracy rows: the tasks it scores). A claimed
    table is compared on these rows; one of them the run did not produce stays as missing."""
    mm = config.get("multimodal") or {}
    models = {
        (s["family"], str(s["size"]))
        for s in [*config["models"].values(), *(mm.get("models") or {}).values()]
    }
    measured = {s.get("paper_name") for s in config["datasets"].values() if s.get("measure", True)}
    measured |= {s.get("paper_name") for s in (mm.get("datasets") or {}).values()}
    acc = config.get("accuracy") or {}
    scored = {*(acc.get("tasks") or []), *(acc.get("combine") or {})}
    is_model = pd.Series(
        [(f, s) in models for f, s in zip(ref["family"], ref["size"], strict=True)], ref.index
    )
    is_acc = ref["metric"] == "accuracy"
    return is_model & ((is_acc & ref["dataset"].isin(scored)) | (~is_acc & ref["dataset"].isin(measured)))


def compare(
    ours: pd.DataFrame,
    tables: Sequence[str],
    ref: pd.DataFrame | None = None,
    config: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Reference rows of ``tables`` with our value beside them (NaN where the run has none);
    with ``config``, only the rows in the experiment's scope (:func:`in_scope`)."""
    ref = reference() if ref is None else ref
    ref = ref[ref["table"].isin(tables)].copy()
    if config is not None:
        ref = ref[in_scope(ref, config)]
    ref["variant"] = ref["variant"].fillna("")
    ref = _accuracy_columns(ref, ours)  # accuracy rows: the lm-eval metric the paper used
    joined = ours.drop(columns=["model"]).rename(columns={"metric": "join_metric"})
    keys = ["family", "size", "dataset", "join_metric", "variant"]
    merged = ref.merge(joined, on=keys, how="left", suffixes=("", "_ours")).drop(columns=["join_metric"])
    merged = merged.rename(columns={"value": "paper", "value_ours": "ours"})
    merged["rel_diff"] = (merged["ours"] - merged["paper"]) / merged["paper"].abs()
    merged.loc[merged["paper"] == 0, "rel_diff"] = np.nan
    merged["size_value"] = merged["size"].map(size_value)
    return merged


def trend_checks(cmp: pd.DataFrame) -> pd.DataFrame:
    """Per table and series: monotone in size, and rank correlations, for the paper and the run.

    The run's checks use the sizes it produced; accuracy is matched on the same dataset where the
    table has one (Table 1), else on the table's accuracy column for the family (Tables 7-8).
    """
    rows = []
    series = cmp[cmp["metric"] == "diff_erank"]
    for (table, fam, ds, var), g in series.groupby(["table", "family", "dataset", "variant"], dropna=False):
        if len(g) < 2:
            continue
        row: dict[str, Any] = {"table": table, "family": fam, "dataset": ds, "variant": var}
        same = cmp[(cmp["table"] == table) & (cmp["family"] == fam)]
        for who in ("paper", "ours"):
            h = g[g[who].notna()].sort_values("size_value")
            row[f"n_{who}"] = len(h)
            row[f"monotone_{who}"] = bool(np.all(np.diff(h[who]) > 0)) if len(h) > 1 else None
            row[f"rho_size_{who}"] = spearman(h["size_value"], h[who])
            for other in ("reduced_loss", "accuracy"):
                o = same[same["metric"] == other]
                if (o["dataset"] == ds).any() or other == "reduced_loss":
                    o = o[o["dataset"] == ds]
                o = o.groupby("size")[who].mean()
                joined = h.set_index("size")[who].to_frame("d").join(o.rename("o"), how="inner")
                row[f"rho_{other}_{who}"] = spearman(joined["d"], joined["o"]) if len(o) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def trend_section(checks: pd.DataFrame, table: str, heading: str = "Trend checks") -> list[str]:
    """One paper table's trend checks (:func:`trend_checks`) as report lines: the experiment's
    reproduction report and the whole paper's (``paper_report``) print them alike."""
    c = checks[checks["table"] == table] if not checks.empty else checks
    if c.empty:
        return []
    return [
        f"{heading} (Diff-eRank): monotone in size, Spearman rho with size, reduced loss and "
        "accuracy, for the paper and this run:",
        "",
        markdown(c.drop(columns=["table"])),
    ]


def render(cmp: pd.DataFrame, checks: pd.DataFrame, title: str) -> str:
    out = [
        f"# Reproduction report: {title}",
        "",
        "Every number of the paper's tables that this experiment reproduces, with this run's value "
        "and the relative difference (ours - paper) / |paper|. Empty cells: not produced by this run.",
        "",
    ]
    n_have = int(cmp["ours"].notna().sum())
    out.append(
        f"{n_have} of {len(cmp)} paper numbers reproduced; median |relative difference| "
        f"{100 * cmp['rel_diff'].abs().median():.1f}%.\n"
    )
    for table, g in cmp.groupby("table", sort=False):
        out += [f"## {table}", ""]
        cols = ["family", "size", "dataset", "metric", "variant", "paper", "ours", "rel_diff"]
        out.append(
            markdown(
                g.sort_values(["metric", "dataset", "variant", "size_value"])[cols], percent=["rel_diff"]
            )
        )
        out += trend_section(checks, table)
    out += accuracy_section(cmp)
    return "\n".join(out)


def accuracy_section(cmp: pd.DataFrame) -> list[str]:
    """Markdown lines: per (table, dataset), the lm-eval metric each paper accuracy is compared
    with and why, then both of this run's metrics beside the paper's number."""
    acc = cmp[cmp["metric"] == "accuracy"] if "lm_eval_metric" in cmp else cmp.iloc[:0]
    if acc.empty:
        return []
    choice = accuracy_metrics().merge(acc[["table", "dataset"]].drop_duplicates(), on=["table", "dataset"])
    out = [
        "## Accuracy: which lm-eval metric",
        "",
        "Both acc and acc_norm are recorded for every task; each paper row is compared with the one "
        "the paper used where the evidence says which, and with both where it does not (winogrande "
        "defines no acc_norm: its acc enters the acc_norm mean):",
        "",
    ]
    for r in choice.itertuples():
        if r.settled == "no":
            out.append(
                f"- {r.table}, {r.dataset}: **not settled by the evidence** (the table above uses "
                f"{r.metric}). {r.evidence}"
            )
            out += unsettled_lines(acc[(acc["table"] == r.table) & (acc["dataset"] == r.dataset)])
        else:
            out.append(f"- {r.table}, {r.dataset}: **{r.metric}**. {r.evidence}")
    cols = [
        "table",
        "family",
        "size",
        "dataset",
        "variant",
        "paper",
        "lm_eval_metric",
        "ours_acc",
        "ours_acc_norm",
    ]
    return [*out, "", markdown(acc.sort_values(["table", "dataset", "size_value"])[cols])]


def unsettled_lines(acc: pd.DataFrame) -> list[str]:
    """For a paper accuracy whose lm-eval metric the evidence leaves open: this run's acc and
    acc_norm beside the paper's, per size, and each metric's summed distance to the paper (in
    points, over the sizes the run scored with both), computed from the run's own numbers."""
    both = acc.dropna(subset=["paper", "ours_acc", "ours_acc_norm"]).sort_values("size_value")
    if both.empty:
        return ["  This run scored none of its sizes: no distance to report."]
    dist = {m: 100 * float((both[f"ours_{m}"] - both["paper"]).abs().sum()) for m in ("acc", "acc_norm")}
    side = both[["family", "size", "paper", "ours_acc", "ours_acc_norm"]].assign(
        abs_diff_acc=(both["ours_acc"] - both["paper"]).abs(),
        abs_diff_acc_norm=(both["ours_acc_norm"] - both["paper"]).abs(),
    )
    closer = min(dist, key=dist.get) if dist["acc"] != dist["acc_norm"] else None
    return [
        f"  This run's summed distance to the paper over {len(both)} size(s): "
        f"**{dist['acc']:.1f} points with acc, {dist['acc_norm']:.1f} with acc_norm**"
        + (
            f" ({closer} closer here; one run's sizes do not settle the paper's metric either):"
            if closer
            else ":"
        ),
        "",
        *("  " + line for line in markdown(side).splitlines()),
        "",
    ]


def build_report(
    full: pd.DataFrame, accuracy: pd.DataFrame, config: dict[str, Any], out_dir: Path
) -> pd.DataFrame:
    from diff_erank.provenance import provenance
    from diff_erank.storage import write_text
    from diff_erank.tables import write_table

    ours = long_results(full, accuracy, config)
    cmp = compare(ours, config["paper_tables"], config=config)
    checks = trend_checks(cmp)
    prov = provenance(config)
    write_table(cmp.drop(columns=["size_value"]), out_dir / "tables" / "reproduction", prov)
    readings = first_layer_section(first_layer_readings(ours, config["paper_tables"]))
    write_text(render(cmp, checks, config["name"]) + readings, out_dir / "reproduction.md")
    return cmp


def multimodal_long(mm: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """The multi-modal table in the reference's long form (Tables 2-3)."""
    from diff_erank.multimodal import LEVELS

    section = config["multimodal"]
    labels = {int(k): v for k, v in (section.get("rotation_labels") or {}).items()}
    rows = []
    for r in mm.itertuples():
        model = section["models"][r.model]
        ds = section["datasets"][r.dataset].get("paper_name") or r.dataset
        variant = "" if r.rotation == 0 else labels.get(r.rotation, f"rotated_{r.rotation}")
        for metric in [*LEVELS, "image_reduction_ratio", "image_text_alignment"]:
            rows.append(_row(model, ds, metric, variant, getattr(r, metric), r.model))
    return pd.DataFrame(rows, columns=["model", *KEY, "value"])


def build_multimodal_report(mm: pd.DataFrame, config: dict[str, Any], out_dir: Path) -> pd.DataFrame:
    from diff_erank.provenance import provenance
    from diff_erank.storage import write_text
    from diff_erank.tables import write_table

    tables = [t for t in config["paper_tables"] if t in ("table2", "table3")]
    cmp = compare(multimodal_long(mm, config), tables, config=config)
    write_table(
        cmp.drop(columns=["size_value"]), out_dir / "tables" / "reproduction_multimodal", provenance(config)
    )
    write_text(
        render(cmp, pd.DataFrame(), f"{config['name']} (multi-modal)"), out_dir / "reproduction_multimodal.md"
    )
    return cmp


def first_layer_readings(
    ours: pd.DataFrame, tables: Sequence[str], ref: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The paper's first-layer rows beside each reading the run measured (no choice is made here).

    One row per paper row and reading: family, size, dataset, reading, paper, ours, rel_diff.
    """
    ref = reference() if ref is None else ref
    paper = ref[
        ref["table"].isin(tables) & (ref["metric"] == "diff_erank") & (ref["variant"] == "layer_first")
    ]
    key = ["family", "size", "dataset"]
    parts = []
    for reading in FIRST_LAYER_READINGS:
        mine = ours[(ours["metric"] == "diff_erank") & (ours["variant"] == f"layer_{reading}")]
        if mine.empty or paper.empty:
            continue
        m = paper[[*key, "value"]].merge(
            mine[[*key, "value"]], on=key, how="left", suffixes=("_paper", "_ours")
        )
        m = m.rename(columns={"value_paper": "paper", "value_ours": "ours"})
        m["reading"] = reading
        m["rel_diff"] = (m["ours"] - m["paper"]) / m["paper"].abs()
        parts.append(m)
    cols = [*key, "reading", "paper", "ours", "rel_diff"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def first_layer_section(readings: pd.DataFrame) -> str:
    """Markdown comparing both readings with the paper's Table 4 (empty unless both were measured)."""
    if readings.empty or readings["reading"].nunique() < 2 or readings["ours"].isna().all():
        return ""
    readings = readings.assign(size_value=readings["size"].map(size_value))
    wide = readings.pivot_table(
        index=["family", "size", "dataset", "size_value", "paper"],
        columns="reading",
        values=["ours", "rel_diff"],
    )
    wide.columns = [f"{r} ({'Diff-eRank' if v == 'ours' else 'rel_diff'})" for v, r in wide.columns]
    wide = wide.reset_index().sort_values(["family", "dataset", "size_value"]).drop(columns=["size_value"])
    out = [
        "",
        '## Table 4: which "first layer"?',
        "",
        'The paper does not say which hidden state its "first layer" is; this run measured both readings: '
        + "; ".join(f"`{r}` = {d}" for r, d in FIRST_LAYER_READINGS.items())
        + ". Each is set beside the paper's first-layer row (nothing is tuned; the closer one is "
        "only reported).",
        "",
        markdown(wide, percent=[c for c in wide.columns if c.endswith("(rel_diff)")]),
    ]
    stats = []
    for reading, g in readings.groupby("reading", sort=False):
        g = g.dropna(subset=["ours"]).sort_values("size_value")
        med = float(g["rel_diff"].abs().median()) if len(g) else float("nan")
        stats.append((reading, med, spearman(g["paper"], g["ours"]), len(g)))
    out += [
        f"- `{r}`: {n} sizes, median |relative difference| {100 * med:.1f}%, "
        f"Spearman rho with the paper's values over sizes {rho:.2f}."
        for r, med, rho, n in stats
    ]
    ranked = sorted((s for s in stats if np.isfinite(s[1])), key=lambda s: s[1])
    if len(ranked) > 1:
        best, other = ranked[0], ranked[1]
        out += [
            "",
            f"Closer to the paper's numbers: **`{best[0]}`** ({100 * best[1]:.1f}% against "
            f"{100 * other[1]:.1f}% for `{other[0]}`, median |relative difference|).",
        ]
    return "\n".join(out) + "\n"
