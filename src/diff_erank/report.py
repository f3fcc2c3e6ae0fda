"""Tables (CSV + Markdown), figures (PDF + PNG) and a generated summary of one experiment.

The size figure follows the paper's Fig. 1: Diff-eRank (left axis) and reduced loss (right axis)
against model size, one panel per dataset, one line per family. The stages figure follows its
Table 10: eRank, loss and Diff-eRank against training step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank.aggregate import headline
from diff_erank.provenance import provenance
from diff_erank.storage import atomic_path, read_parquet, write_json, write_text


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


def step_of(variant: str, final_step: float = float("inf")) -> float:
    """Training step of a stage variant: rev-step200 -> 200, init-s0 -> 0, trained -> ``final_step``."""
    if variant == "trained":
        return final_step
    m = re.search(r"step(\d+)", variant)
    return float(m.group(1)) if m else 0.0


def markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = list(df.columns)

    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, stem: Path, prov: dict[str, Any]) -> None:
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    write_text(markdown(df), stem.with_suffix(".md"))
    write_json(prov, stem.with_suffix(".provenance.json"))


def _save(fig, stem: Path, prov: dict[str, Any]) -> None:
    for ext in ("png", "pdf"):
        key = "Software" if ext == "png" else "Creator"  # a PDF's info dictionary has no Software
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            fig.savefig(
                tmp,
                format=ext,
                dpi=150,
                bbox_inches="tight",
                metadata={key: f"diff-erank {prov['versions']['diff-erank']}"},
            )
    write_json(prov, stem.with_suffix(".provenance.json"))


def size_figure(main: pd.DataFrame, stem: Path, prov: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(main["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        sub = main[main["dataset"] == ds]
        ax2 = ax.twinx()
        for fam, g in sub.groupby("family", sort=False):
            g = g.sort_values("n_params")
            ax.errorbar(
                g["n_params"],
                g["diff_erank"],
                yerr=[g["diff_erank"] - g["ci_low"], g["ci_high"] - g["diff_erank"]],
                marker="o",
                capsize=3,
                label=f"{fam} Diff-eRank",
            )
            ax2.plot(
                g["n_params"], g["reduced_loss"], marker="s", ls="--", alpha=0.7, label=f"{fam} reduced loss"
            )
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("Diff-eRank")
        ax2.set_ylabel("reduced loss (nats)")
        ax.set_title(ds)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, stem, prov)
    plt.close(fig)


def stages_figure(stages: pd.DataFrame, stem: Path, prov: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("erank_trained", "eRank"), ("loss_trained", "loss"), ("diff_erank", "Diff-eRank vs step0")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    models = list(dict.fromkeys(stages["model"]))
    colors = plt.get_cmap("tab20" if len(models) > 10 else "tab10")
    styles = dict(zip(dict.fromkeys(stages["dataset"]), ["-", "--", ":", "-."] * 4, strict=False))
    for ax, (col, label) in zip(axes, metrics, strict=True):
        for (model, ds), g in stages.groupby(["model", "dataset"], sort=False):
            g = g.sort_values("step")
            ax.plot(
                g["step"],
                g[col],
                marker="o",
                ms=3,
                ls=styles[ds],
                color=colors(models.index(model)),
                label=f"{model} / {ds}",
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    _save(fig, stem, prov)
    plt.close(fig)


def _trend(g: pd.DataFrame) -> str:
    g = g.sort_values("n_params")
    d = g["diff_erank"].to_numpy()
    if len(g) < 2:
        return f"a single model (Diff-eRank {d[0]:.3g})"
    mono = "grows monotonically" if np.all(np.diff(d) > 0) else "does not grow monotonically"
    return (
        f"Diff-eRank {mono} with size over {len(g)} models ({', '.join(f'{v:.3g}' for v in d)}); "
        f"Spearman rho with size {spearman(g['n_params'], g['diff_erank']):.2f}, "
        f"with reduced loss {spearman(g['diff_erank'], g['reduced_loss']):.2f}"
    )


def summarise(main: pd.DataFrame, stages: pd.DataFrame) -> str:
    """What was measured, in sentences generated from the numbers (no claim is hard-coded)."""
    out = [
        "# Summary",
        "",
        "Diff-eRank: algorithm (a), last layer, trained vs untrained (mean over seeds).",
        "",
    ]
    for (fam, ds), g in main.groupby(["family", "dataset"], sort=False):
        out.append(f"- {fam} on {ds}: {_trend(g)}.")
    if main["family"].nunique() > 1:
        out += ["", "All families together:", ""]
        out += [f"- {ds}: {_trend(g)}." for ds, g in main.groupby("dataset", sort=False)]
    if not stages.empty:
        out += ["", "Training stages (checkpoint vs step0, algorithm (a), last layer):", ""]
        for (model, ds), g in stages.groupby(["model", "dataset"], sort=False):
            g = g.sort_values("step")
            first, last = g.iloc[0], g.iloc[-1]
            out.append(
                f"- {model} on {ds}: loss {first.loss_trained:.3g} -> {last.loss_trained:.3g}, "
                f"eRank {first.erank_trained:.3g} -> {last.erank_trained:.3g}, "
                f"Spearman rho(step, Diff-eRank) {spearman(g['step'], g['diff_erank']):.2f}."
            )
    return "\n".join(out) + "\n"


def load_accuracy(files: Sequence[str | Path]) -> pd.DataFrame:
    """Accuracy records as rows (model, variant, task, accuracy = lm-eval's acc, accuracy_norm =
    its acc_norm, NaN where the task has none); combined means count as tasks."""
    import json

    rows = []
    for f in files:
        rec = json.loads(Path(f).read_text())
        model = Path(f).parent.name
        norm = {**rec.get("accuracy_norm", {}), **rec.get("combined_norm", {})}
        for task, acc in {**rec["accuracy"], **rec.get("combined", {})}.items():
            value = norm.get(task)
            rows.append(
                {
                    "model": model,
                    "variant": rec["variant"],
                    "task": task,
                    "accuracy": acc,
                    "accuracy_norm": float("nan") if value is None else value,
                }
            )
    return pd.DataFrame(rows, columns=["model", "variant", "task", "accuracy", "accuracy_norm"])


def build(
    diff_files: Sequence[str | Path],
    out_dir: str | Path,
    config: dict[str, Any],
    accuracy_files: Sequence[str | Path] = (),
) -> dict[str, pd.DataFrame]:
    """Concatenate per-(model, dataset) results into the experiment's tables and figures."""
    out_dir = Path(out_dir)
    full = pd.concat([read_parquet(f) for f in diff_files], ignore_index=True)
    accuracy = load_accuracy(accuracy_files)
    prov = provenance(config, inputs=[str(f) for f in [*diff_files, *accuracy_files]])
    if not accuracy.empty:
        write_table(accuracy, out_dir / "tables" / "accuracy", prov)
    lead = ["model", "family", "size", "n_params", "dataset"]
    full = full[lead + [c for c in full.columns if c not in lead]]
    write_table(full, out_dir / "tables" / "all", prov)

    main_all = headline(full)
    main = main_all[(main_all["algorithm"] == "a") & (main_all["layer"] == "last")].copy()
    cols = [
        "model",
        "family",
        "size",
        "n_params",
        "dataset",
        "n_texts",
        "diff_erank",
        "ci_low",
        "ci_high",
        "reduced_loss",
        "erank_untrained",
        "erank_trained",
        "loss_untrained",
        "loss_trained",
        "n_skipped_empty",
        "n_skipped_short",
    ]
    if "diff_erank_std" in main:
        cols.insert(9, "diff_erank_std")
    main = main[[c for c in cols if c in main]].sort_values(["dataset", "family", "n_params"])
    if not accuracy.empty:
        wide = accuracy[accuracy["variant"] == "trained"].pivot_table(
            index="model", columns="task", values="accuracy"
        )
        main = main.merge(wide.add_prefix("acc_").reset_index(), on="model", how="left")
    write_table(main, out_dir / "tables" / "diff_erank", prov)

    by_alg = main_all.pivot_table(
        index=["model", "dataset", "layer"], columns="algorithm", values="diff_erank"
    ).reset_index()
    write_table(by_alg, out_dir / "tables" / "algorithms_layers", prov)

    stages = full[(full["role"] == "stage") & (full["algorithm"] == "a") & (full["layer"] == "last")].copy()
    final = {m: float((spec.get("train") or {}).get("steps", np.inf)) for m, spec in config["models"].items()}
    stages["step"] = [
        step_of(v, final.get(m, np.inf)) for v, m in zip(stages["variant"], stages["model"], strict=True)
    ]
    has_stages = stages.groupby(["model", "dataset"])["variant"].transform("nunique") > 2
    stages = stages[has_stages]
    stages = stages[
        ["model", "dataset", "variant", "step", "erank_trained", "loss_trained", "diff_erank", "reduced_loss"]
    ].sort_values(["model", "dataset", "step"])
    write_table(stages, out_dir / "tables" / "stages", prov)

    figures = config.get("figures", ["size", "stages"])
    if "size" in figures:
        size_figure(main, out_dir / "figures" / "size", prov)
    if "stages" in figures and not stages.empty:
        stages_figure(stages[np.isfinite(stages["step"])], out_dir / "figures" / "stages", prov)
    write_text(summarise(main, stages), out_dir / "summary.md")
    if set(config.get("paper_tables", [])) - {"table2", "table3"}:
        from diff_erank.reproduce import build_report

        build_report(full, accuracy, config, out_dir)
    return {"all": full, "main": main, "stages": stages, "algorithms_layers": by_alg, "accuracy": accuracy}


def multimodal_report(
    files: dict[tuple[str, str, int], str], out_dir: str | Path, config: dict[str, Any]
) -> pd.DataFrame:
    """Tables 2-3 in the paper's layout, a bar figure of the five eRanks, and the comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diff_erank.multimodal import LEVELS, table

    out_dir = Path(out_dir)
    mm = table(files, config["multimodal"]["algorithm"])
    prov = provenance(config, inputs=[str(f) for f in files.values()])
    write_table(mm, out_dir / "tables" / "multimodal", prov)
    groups = list(mm.groupby(["model", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.4), squeeze=False)
    for ax, ((model, ds), g) in zip(axes[0], groups, strict=True):
        width = 0.8 / len(g)
        for k, r in enumerate(g.sort_values("rotation").itertuples()):
            xs = np.arange(len(LEVELS)) + k * width
            ax.bar(xs, [getattr(r, lvl) for lvl in LEVELS], width, label=f"rotated {r.rotation} deg")
        ax.set_xticks(np.arange(len(LEVELS)) + 0.4 - width / 2, ["E1", "E2", "E3", "E4", "E5"])
        ax.set_title(f"{model} / {ds}", fontsize=9)
        ax.set_ylabel("eRank")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out_dir / "figures" / "multimodal", prov)
    plt.close(fig)
    if any(t in config.get("paper_tables", []) for t in ("table2", "table3")):
        from diff_erank.reproduce import build_multimodal_report

        build_multimodal_report(mm, config, out_dir)
    return mm
