"""Figures of an experiment in the paper's style, each saved as PNG and PDF with its provenance.

- ``size``: Diff-eRank and reduced loss against model size (the paper's Fig. 1), one panel per
  dataset, one colour per family;
- ``stages``: eRank, loss and Diff-eRank against training step (Table 10's question, over the
  zoo's or Pythia's checkpoints), one row of panels per family;
- ``algorithms``: algorithm (a) against (b) over model size (Fig. 4);
- ``accuracy``: Diff-eRank and zero-shot accuracy against model size, one panel per family (Fig. 3);
- ``layers``: trained and untrained eRank and Diff-eRank against depth, per model and dataset
  (Table 4's layers, or every layer with ``layers: all``).

Each is registered in ``figure_registry`` (what it is drawn from, when a config can show it),
which is how the report finds it. Every figure carries a title that says what it shows
(algorithm, layer, what the bars are) and labelled axes; the functions take the report's tables,
never raw files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank.erank import STANDARD_ALGORITHM
from diff_erank.layers import DEPTH, LAST
from diff_erank.storage import atomic_path, write_json
from diff_erank.tables import human_count

DATASET_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path, prov: dict[str, Any]) -> None:
    """PNG (150 dpi) and PDF side by side, written atomically, and the provenance beside them."""
    plt = _plt()
    for ext in ("png", "pdf"):
        # PNG metadata takes any key; PDF's Info dictionary only its standard ones (Creator, ...).
        meta_key = "Software" if ext == "png" else "Creator"
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            fig.savefig(
                tmp,
                format=ext,
                dpi=150,
                bbox_inches="tight",
                metadata={meta_key: f"diff-erank {prov['versions']['diff-erank']}"},
            )
    write_json(prov, stem.with_suffix(".provenance.json"))
    plt.close(fig)


def _family_colors(df: pd.DataFrame) -> dict[str, Any]:
    plt = _plt()
    fams = sorted(set(df["family"]))  # the same family has the same colour in every figure
    cmap = plt.get_cmap("tab10")
    return {f: cmap(i % 10) for i, f in enumerate(fams)}


def _size_axis(ax, n_params: pd.Series) -> None:
    """Log-scaled parameter axis with human tick labels (82K, 1.3M, 1.3B)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_count(v)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    lo, hi = float(n_params.min()), float(n_params.max())
    if lo > 0:
        ax.set_xlim(lo / 1.6, hi * 1.6)
        if hi / lo < 10:  # less than a decade: label the models' own sizes
            ticks = sorted(set(n_params.astype(float)))
            ax.set_xticks(ticks, [human_count(t) for t in ticks])
    ax.set_xlabel("parameters")


def _label_sizes(ax, xs, ys, labels, color) -> None:
    ax.margins(y=0.12)
    for x, y, s in zip(xs, ys, labels, strict=True):
        ax.annotate(
            str(s), (x, y), textcoords="offset points", xytext=(-5, 4), ha="right", fontsize=7, color=color
        )


def _yerr(g: pd.DataFrame, value: str, low: str, high: str, std: str) -> np.ndarray | None:
    """Error bars: the bootstrap interval where there is one, else the std over seeds, else none."""
    if low in g and high in g and g[low].notna().all() and g[high].notna().all():
        return np.vstack([g[value] - g[low], g[high] - g[value]])
    if std in g and g[std].notna().all():
        return g[std].to_numpy()
    return None


def size_figure(
    main: pd.DataFrame,
    stem: Path,
    prov: dict[str, Any],
    algorithm: str = STANDARD_ALGORITHM,
    layer: str = LAST,
) -> None:
    """Fig. 1: Diff-eRank (left axis, solid) and reduced loss (right axis, dashed) against size."""
    plt = _plt()
    datasets = sorted(set(main["dataset"]))
    colors = _family_colors(main)
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(4.6 * len(datasets), 3.8), squeeze=False, layout="constrained"
    )
    for ax, ds in zip(axes[0], datasets, strict=True):
        sub = main[main["dataset"] == ds]
        ax2 = ax.twinx()
        for fam, g in sub.groupby("family", sort=False):
            g = g.sort_values("n_params")
            c = colors[fam]
            ax.errorbar(
                g["n_params"],
                g["diff_erank"],
                yerr=_yerr(g, "diff_erank", "ci_low", "ci_high", "diff_erank_std"),
                marker="o",
                capsize=3,
                color=c,
                label=f"{fam}: Diff-eRank",
            )
            _label_sizes(ax, g["n_params"], g["diff_erank"], g["size"], c)
            ax2.errorbar(
                g["n_params"],
                g["reduced_loss"],
                yerr=_yerr(g, "reduced_loss", "", "", "reduced_loss_std"),
                marker="s",
                ls="--",
                capsize=3,
                color=c,
                alpha=0.6,
                label=f"{fam}: reduced loss",
            )
        _size_axis(ax, sub["n_params"])
        ax.set_ylabel("Diff-eRank (solid)")
        ax2.set_ylabel("reduced loss, nats (dashed)")
        ax.set_title(f"dataset: {ds}", fontsize=10)
    _shared_legend(fig)
    fig.suptitle(
        f"Diff-eRank (algorithm ({algorithm}), {layer} layer) and reduced loss against model size\n"
        "error bars: 95% bootstrap interval over texts, or std over untrained seeds",
        fontsize=10,
    )
    save(fig, stem, prov)


def _shared_legend(fig) -> None:
    """One legend below the panels, each label once (panels repeat the same series)."""
    labels: dict[str, Any] = {}
    for a in fig.axes:
        for h, lab in zip(*a.get_legend_handles_labels(), strict=True):
            labels.setdefault(lab, h)
    fig.legend(
        labels.values(),
        labels.keys(),
        loc="outside lower center",
        ncol=min(4, len(labels)),
        fontsize=8,
        frameon=False,
    )


def _stage_axis(ax, categories: list[str]) -> None:
    """Stages in training order, evenly spaced, where their steps are not all known."""
    ax.set_xticks(range(len(categories)), categories, fontsize=7, rotation=30, ha="right")
    ax.minorticks_off()


def _step_axis(ax, steps: np.ndarray) -> None:
    """Symmetric-log step axis, linear below the first checkpoint, so step 0 and 40 are apart."""
    pos = steps[steps > 0]
    if len(pos):
        ax.set_xscale("symlog", linthresh=float(pos.min()), linscale=0.6)
    ticks = sorted(set(steps.tolist()))
    ax.set_xticks(ticks, [f"{t:.0f}" for t in ticks], fontsize=7, rotation=45 if len(ticks) > 6 else 0)
    ax.minorticks_off()


def stages_figure(
    stages: pd.DataFrame,
    stem: Path,
    prov: dict[str, Any],
    algorithm: str = STANDARD_ALGORITHM,
    layer: str = LAST,
) -> None:
    """Training dynamics: eRank, loss and Diff-eRank against step, one row per family."""
    plt = _plt()
    metrics = [
        ("erank_trained", "eRank", "eRank of each checkpoint"),
        ("loss_trained", "loss (nats)", "loss of each checkpoint"),
        ("diff_erank", "Diff-eRank", "Diff-eRank against M0 (step 0)"),
    ]
    families = list(dict.fromkeys(stages["family"])) if "family" in stages else [""]
    datasets = sorted(set(stages["dataset"]))
    styles = dict(zip(datasets, DATASET_STYLES * 4, strict=False))
    fig, axes = plt.subplots(
        len(families), 3, figsize=(13, 3.1 * len(families) + 0.6), squeeze=False, layout="constrained"
    )
    # the x axis: training steps (symmetric log) where every stage has one, else the stages in order
    by_step = "step" in stages and bool(np.isfinite(stages["step"].to_numpy(dtype=float)).all())
    if not by_step:
        stages = stages.copy()
        cats = stages.drop_duplicates("stage").sort_values("order")
        labels = [
            f"{r.step:.0f}" if np.isfinite(r.step) and r.stage == r.variant else str(r.stage)
            for r in cats.itertuples()
        ]
        stages["x"] = stages["stage"].map({s: i for i, s in enumerate(cats["stage"])})
    xcol = "step" if by_step else "x"
    for row, fam in zip(axes, families, strict=True):
        sub = stages[stages["family"] == fam] if fam else stages
        order = sub.groupby("model")["n_params"].first().sort_values() if "n_params" in sub else None
        models = list(order.index) if order is not None else list(dict.fromkeys(sub["model"]))
        cmap = plt.get_cmap("viridis")
        colors = {m: cmap(0.85 * i / max(1, len(models) - 1)) for i, m in enumerate(models)}
        for ax, (col, label, title) in zip(row, metrics, strict=True):
            for (model, ds), g in sub.groupby(["model", "dataset"], sort=False):
                g = g.sort_values(xcol)
                ax.plot(g[xcol], g[col], marker="o", ms=3, ls=styles[ds], color=colors[model], label=model)
            if by_step:
                _step_axis(ax, sub["step"].to_numpy(dtype=float))
            else:
                _stage_axis(ax, labels)
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(f"{fam}: {title}" if fam else title, fontsize=9)
            ax.set_xlabel("training step (symmetric log)" if by_step else "training stage", fontsize=8)
        handles = [plt.Line2D([], [], color=colors[m], marker="o", ms=3) for m in models]
        row[-1].legend(
            handles,
            models,
            fontsize=7,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            title="model",
            title_fontsize=7,
        )
    ds_handles = [plt.Line2D([], [], color="k", ls=styles[d]) for d in datasets]
    fig.legend(
        ds_handles,
        [f"dataset: {d}" for d in datasets],
        loc="outside lower center",
        ncol=len(datasets),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"Training dynamics: each checkpoint against step 0 (algorithm ({algorithm}), {layer} layer)",
        fontsize=10,
    )
    save(fig, stem, prov)


def algorithms_figure(last: pd.DataFrame, stem: Path, prov: dict[str, Any], layer: str = LAST) -> None:
    """Fig. 4: Diff-eRank by algorithm (a) (solid) and (b) (dashed) against size, per dataset.

    ``last`` holds one row per model, dataset and algorithm (columns family, size, n_params,
    dataset, algorithm, diff_erank).
    """
    plt = _plt()
    datasets = sorted(set(last["dataset"]))
    colors = _family_colors(last)
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(4.6 * len(datasets), 3.8), squeeze=False, layout="constrained"
    )
    for ax, ds in zip(axes[0], datasets, strict=True):
        sub = last[last["dataset"] == ds]
        for (fam, alg), g in sub.groupby(["family", "algorithm"], sort=False):
            g = g.sort_values("n_params")
            ax.plot(
                g["n_params"],
                g["diff_erank"],
                marker="o" if alg == STANDARD_ALGORITHM else "s",
                ls="-" if alg == STANDARD_ALGORITHM else "--",
                color=colors[fam],
                label=f"{fam}: algorithm ({alg})",
            )
            if alg == STANDARD_ALGORITHM:
                _label_sizes(ax, g["n_params"], g["diff_erank"], g["size"], colors[fam])
        _size_axis(ax, sub["n_params"])
        ax.set_ylabel("Diff-eRank")
        ax.set_title(f"dataset: {ds}", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(4, len(labels)),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"Algorithm (a) exp(mean entropy) against (b) mean of per-text eRanks, {layer} layer\n"
        "each model's eRank is larger under (b) (Jensen); their difference need not be",
        fontsize=10,
    )
    save(fig, stem, prov)


def accuracy_figure(
    main: pd.DataFrame,
    tasks: list[str],
    stem: Path,
    prov: dict[str, Any],
    algorithm: str = STANDARD_ALGORITHM,
    layer: str = LAST,
) -> None:
    """Fig. 3: Diff-eRank (left, solid, per dataset) and accuracy (right, dotted, per task) by size."""
    plt = _plt()
    families = list(dict.fromkeys(main["family"]))
    datasets = sorted(set(main["dataset"]))
    styles = dict(zip(datasets, DATASET_STYLES * 4, strict=False))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(
        1, len(families), figsize=(max(4.6 * len(families), 7.0), 3.8), squeeze=False, layout="constrained"
    )
    for ax, fam in zip(axes[0], families, strict=True):
        sub = main[main["family"] == fam]
        ax2 = ax.twinx()
        for ds in datasets:
            g = sub[sub["dataset"] == ds].sort_values("n_params")
            ax.plot(
                g["n_params"],
                g["diff_erank"],
                marker="o",
                color="k",
                ls=styles[ds],
                label=f"Diff-eRank on {ds}",
            )
            _label_sizes(ax, g["n_params"], g["diff_erank"], g["size"], "k")
        per_model = sub.drop_duplicates("model").sort_values("n_params")
        for i, task in enumerate(tasks):
            col = f"acc_{task}"
            if col in per_model and per_model[col].notna().any():
                ax2.plot(
                    per_model["n_params"],
                    per_model[col],
                    marker="s",
                    ls=":",
                    color=cmap(i % 10),
                    label=f"accuracy: {task}",
                )
        _size_axis(ax, sub["n_params"])
        ax.set_ylabel("Diff-eRank (black)")
        ax2.set_ylabel("zero-shot accuracy (coloured, dotted)")
        ax.set_title(f"family: {fam}", fontsize=10)
    _shared_legend(fig)
    fig.suptitle(
        f"Diff-eRank (algorithm ({algorithm}), {layer} layer) and zero-shot accuracy (lm-eval) "
        "against model size",
        fontsize=10,
    )
    save(fig, stem, prov)


def _depth_key(name: str) -> tuple[int, str]:
    """Named layers in depth order, for labels where several names fall on one hidden state."""
    return (DEPTH.get(name, 4), name)


def layers_figure(
    layers: pd.DataFrame,
    stem: Path,
    prov: dict[str, Any],
    algorithm: str = STANDARD_ALGORITHM,
    per_row: int = 4,
) -> None:
    """Per layer: trained (solid) and untrained (dashed) eRank above, Diff-eRank below, against depth.

    One column per model (wrapped ``per_row`` to a row), one colour per dataset. Depth is the index
    into ``hidden_states`` (0 = embedding output, L = last hidden state); with a handful of named
    layers the ticks carry the names.
    """
    plt = _plt()
    order = (
        layers.groupby("model", sort=False)[["family", "n_params"]]
        .first()
        .sort_values(["family", "n_params"])
    )
    models = list(order.index)
    datasets = sorted(set(layers["dataset"]))
    cmap = plt.get_cmap("tab10")
    colors = {d: cmap(i % 10) for i, d in enumerate(datasets)}
    ncol = min(per_row, len(models))
    nblocks = -(-len(models) // ncol)
    fig, axes = plt.subplots(
        2 * nblocks,
        ncol,
        figsize=(max(3.4 * ncol, 6.0), 5.0 * nblocks + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for k in range(nblocks * ncol):
        top, bottom = axes[2 * (k // ncol)][k % ncol], axes[2 * (k // ncol) + 1][k % ncol]
        if k >= len(models):
            top.set_visible(False)
            bottom.set_visible(False)
            continue
        model = models[k]
        bottom.sharex(top)
        top.tick_params(labelbottom=False)
        sub = layers[layers["model"] == model]
        for ds in datasets:
            g = sub[sub["dataset"] == ds].sort_values("layer_index")
            if g.empty:
                continue
            top.plot(g["layer_index"], g["erank_trained"], marker="o", ms=3, color=colors[ds])
            top.plot(
                g["layer_index"], g["erank_untrained"], marker="o", ms=3, ls="--", color=colors[ds], alpha=0.7
            )
            bottom.plot(g["layer_index"], g["diff_erank"], marker="o", ms=3, color=colors[ds])
        bottom.axhline(0, color="0.6", lw=0.6)
        idx = sub.drop_duplicates(["layer", "layer_index"]).sort_values("layer_index")
        if idx["layer_index"].nunique() <= 6:
            names = idx.groupby("layer_index")["layer"].agg(lambda s: "=".join(sorted(s, key=_depth_key)))
            bottom.set_xticks(list(names.index), [f"{n}\n({i})" for i, n in names.items()], fontsize=7)
        fam = order.loc[model, "family"]
        top.set_title(f"{model} ({human_count(order.loc[model, 'n_params'])}, {fam})", fontsize=9)
        bottom.set_xlabel("depth: hidden_states index", fontsize=8)
        if k % ncol == 0:
            top.set_ylabel("eRank", fontsize=9)
            bottom.set_ylabel("Diff-eRank", fontsize=9)
    handles = [plt.Line2D([], [], color=colors[d]) for d in datasets]
    handles += [plt.Line2D([], [], color="k"), plt.Line2D([], [], color="k", ls="--")]
    labels = [f"dataset: {d}" for d in datasets] + ["trained", "untrained (M0)"]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=len(labels),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "eRank (top: trained solid, untrained dashed) and Diff-eRank (bottom)\n"
        f"against depth (index into hidden_states), algorithm ({algorithm})",
        fontsize=10,
    )
    save(fig, stem, prov)


def init_scale_figure(table: pd.DataFrame, stem: Path, prov: dict[str, Any]) -> None:
    """Diff-eRank and M0's eRank against the init scale of M0 (x the published std), per model.

    Two panels, a shared log2 axis: Diff-eRank (error bars: std over the untrained seeds), and the
    eRank of M0 beside the trained model's (dashed, one per model). The published init (x1) is the
    dotted vertical line: what a reader needs to see is how much of a Diff-eRank moves with it.
    """
    plt = _plt()
    fig, (ax_d, ax_e) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    colors = _family_colors(table)
    for (fam, ds), g in table.groupby(["family", "dataset"], sort=True):
        g = g.sort_values("init_scale")
        label = f"{fam} ({ds})"
        std = g.get("diff_erank_std")
        err = std.to_numpy() if std is not None and std.notna().all() else None
        ax_d.errorbar(g["init_scale"], g["diff_erank"], yerr=err, marker="o", ms=4, capsize=3,
                      color=colors[fam], label=label)  # fmt: skip
        ax_e.plot(g["init_scale"], g["erank_untrained"], marker="o", ms=4, color=colors[fam], label=label)
        ax_e.axhline(float(g["erank_trained"].iloc[0]), color=colors[fam], ls="--", lw=1)
    scales = sorted(set(table["init_scale"]))
    for ax, title in ((ax_d, "Diff-eRank = eRank(M0) - eRank(M1)"), (ax_e, "eRank of M0 (dashed: trained)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(scales, [f"x{s:g}" for s in scales])
        ax.minorticks_off()
        ax.axvline(1.0, color="0.5", ls=":", lw=1)
        ax.set_xlabel("init std of M0 (x the published value)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    ax_d.axhline(0.0, color="0.3", lw=0.8)
    _shared_legend(fig)
    fig.suptitle(
        "Sensitivity of Diff-eRank to the untrained model's init scale "
        f"(algorithm ({STANDARD_ALGORITHM}), {LAST} layer)",
        fontsize=10,
    )
    save(fig, stem, prov)
