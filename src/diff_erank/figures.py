"""Figures of an experiment in the paper's style, each saved as PNG and PDF with its provenance.

- ``size``: Diff-eRank (above) and reduced loss (below) against model size (the paper's Fig. 1),
  two panels per dataset, one colour and marker per family (fixed by its name, :data:`FAMILY_STYLES`);
- ``stages``: eRank, loss and Diff-eRank against training step (Table 10's question, over the
  zoo's or Pythia's checkpoints), one row of panels per family;
- ``algorithms``: algorithm (a) against (b) over model size (Fig. 4);
- ``accuracy``: Diff-eRank and zero-shot accuracy against model size, one panel per family (Fig. 3);
- ``layers``: trained and untrained eRank and Diff-eRank against depth, per model and dataset
  (Table 4's layers, or every layer with ``layers: all``).

Each is registered in ``figure_registry`` (what it is drawn from, when a config can show it),
which is how the report finds it. Every figure carries a title that says what it shows
(algorithm, layer, what the bars are) and labelled axes; the functions take the report's tables,
never raw files. Each ``<kind>_figure`` saves what ``<kind>_fig`` draws, so tests read the drawn
panels, lines and legends.
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
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]

#: A family's colour and marker, fixed by its name: the same family looks the same in every figure of
#: every run, whatever other families a run has and in whatever order (conf/model/*.yaml's families).
FAMILY_STYLES: dict[str, tuple[str, str]] = {
    "opt": ("#1f77b4", "o"),
    "pythia": ("#d62728", "s"),
    "cerebras-gpt": ("#2ca02c", "^"),
    "openelm": ("#ff7f0e", "D"),
    "gemma3": ("#9467bd", "v"),
    "smollm2": ("#8c564b", "P"),
    "zoo-opt": ("#17becf", "o"),
    "zoo-neox": ("#e377c2", "s"),
    "llava-1.5": ("#bcbd22", "X"),
    "minigpt-v2": ("#7f7f7f", "h"),
}
#: Colours for families not listed above, picked by a hash of the name (stable across runs).
SPARE_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
                "#756bb1", "#636363", "#9c9ede", "#cedb9c"]  # fmt: skip

#: Type sizes for a figure read at the width of a paper's text column (about 5.5 in).
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 10}  # fmt: skip


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


def family_styles(families: Any) -> dict[str, tuple[str, str]]:
    """Colour and marker of each family: :data:`FAMILY_STYLES` by name, else a spare colour and
    marker chosen by a hash of the name (stable across runs; a family whose hash lands on a colour
    another family of this figure holds takes the next free one, in name order)."""
    from zlib import crc32

    fams = sorted(set(families))
    out = {f: FAMILY_STYLES[f] for f in fams if f in FAMILY_STYLES}
    taken = {c for c, _ in out.values()}
    for f in fams:
        if f in out:
            continue
        h = crc32(f.encode())
        color = SPARE_COLORS[h % len(SPARE_COLORS)]
        for k in range(len(SPARE_COLORS)):
            color = SPARE_COLORS[(h + k) % len(SPARE_COLORS)]
            if color not in taken:
                break
        taken.add(color)
        out[f] = (color, MARKERS[h % len(MARKERS)])
    return out


def _family_colors(df: pd.DataFrame) -> dict[str, Any]:
    return {f: c for f, (c, _) in family_styles(df["family"]).items()}


def _dodge(x: pd.Series, k: int, m: int, decades: float = 0.03) -> np.ndarray:
    """x nudged by family on a log axis (a few % of a decade) so models of one size in different
    families (OPT-1.3B, Cerebras-GPT-1.3B) stand side by side instead of on top of each other."""
    return x.to_numpy(dtype=float) * 10 ** (decades * (k - (m - 1) / 2)) if m > 1 else x.to_numpy(dtype=float)


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
            str(s), (x, y), textcoords="offset points", xytext=(-5, 4), ha="right", fontsize=8, color=color
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
    """Fig. 1: Diff-eRank (upper panel) and reduced loss (lower panel) against size, per dataset."""
    save(size_fig(main, algorithm, layer), stem, prov)


def size_fig(main: pd.DataFrame, algorithm: str = STANDARD_ALGORITHM, layer: str = LAST, per_row: int = 2):
    """The ``size`` figure: for each dataset two panels on one size axis, Diff-eRank above and
    reduced loss below (no twin y-axes), datasets wrapped ``per_row`` to a row; one colour and
    marker per family (:func:`family_styles`), families nudged apart where their sizes coincide."""
    plt = _plt()
    datasets = sorted(set(main["dataset"]))
    styles = family_styles(main["family"])
    fams = sorted(styles)
    ncol = min(per_row, len(datasets))
    nblocks = -(-len(datasets) // ncol)
    # a model's size as text beside its point, where a panel has few enough points to read them
    label = main.groupby("dataset").size().max() <= 10
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(
            2 * nblocks, ncol, figsize=(max(3.3 * ncol, 5.0), 4.6 * nblocks + 0.9), squeeze=False,
            layout="constrained",
        )  # fmt: skip
        for k in range(nblocks * ncol):
            top, bottom = axes[2 * (k // ncol)][k % ncol], axes[2 * (k // ncol) + 1][k % ncol]
            if k >= len(datasets):
                top.set_visible(False)
                bottom.set_visible(False)
                continue
            ds = datasets[k]
            bottom.sharex(top)
            top.tick_params(labelbottom=False)
            sub = main[main["dataset"] == ds]
            for fam, g in sub.groupby("family", sort=True):
                g = g.sort_values("n_params")
                color, marker = styles[fam]
                x = _dodge(g["n_params"], fams.index(fam), len(fams))
                for ax, col, err in (
                    (top, "diff_erank", _yerr(g, "diff_erank", "ci_low", "ci_high", "diff_erank_std")),
                    (bottom, "reduced_loss", _yerr(g, "reduced_loss", "", "", "reduced_loss_std")),
                ):
                    ax.errorbar(x, g[col], yerr=err, marker=marker, ms=5.5, color=color, mec="white", mew=0.6,
                                capsize=2, lw=1.3, elinewidth=0.9, label=fam)  # fmt: skip
                if label:
                    _label_sizes(top, x, g["diff_erank"], g["size"], color)
            _size_axis(bottom, sub["n_params"])
            top.set_title(f"dataset: {ds}")
            top.set_ylabel("Diff-eRank")
            bottom.set_ylabel("reduced loss (nats)")
            for ax in (top, bottom):
                ax.grid(alpha=0.25)
        _shared_legend(fig, ncol=4, fontsize=None)
        fig.suptitle(
            f"Diff-eRank (algorithm ({algorithm}), {layer} layer) and reduced loss against model size\n"
            "error bars: 95% bootstrap interval over texts, or std over untrained seeds"
        )
    return fig


def _shared_legend(fig, ncol: int = 4, fontsize: float | None = 8) -> None:
    """One legend below the panels, each label once (panels repeat the same series)."""
    labels: dict[str, Any] = {}
    for a in fig.axes:
        for h, lab in zip(*a.get_legend_handles_labels(), strict=True):
            labels.setdefault(lab, h)
    fig.legend(
        labels.values(),
        labels.keys(),
        loc="outside lower center",
        ncol=min(ncol, len(labels)),
        fontsize=fontsize,
        frameon=False,
    )


def _stage_axis(ax, categories: list[str]) -> None:
    """Stages in training order, evenly spaced, where their steps are not all known."""
    ax.set_xticks(range(len(categories)), categories, fontsize=8, rotation=30, ha="right")
    ax.minorticks_off()


def _step_axis(ax, steps: np.ndarray) -> None:
    """Symmetric-log step axis, linear below the first checkpoint, so step 0 and 40 are apart."""
    pos = steps[steps > 0]
    if len(pos):
        ax.set_xscale("symlog", linthresh=float(pos.min()), linscale=0.6)
    ticks = sorted(set(steps.tolist()))
    ax.set_xticks(ticks, [f"{t:.0f}" for t in ticks], fontsize=8, rotation=45 if len(ticks) > 6 else 0)
    ax.minorticks_off()


def stages_figure(
    stages: pd.DataFrame,
    stem: Path,
    prov: dict[str, Any],
    algorithm: str = STANDARD_ALGORITHM,
    layer: str = LAST,
) -> None:
    """Training dynamics: eRank, loss and Diff-eRank against step, one row per family."""
    save(stages_fig(stages, algorithm, layer), stem, prov)


def stages_fig(stages: pd.DataFrame, algorithm: str = STANDARD_ALGORITHM, layer: str = LAST):
    """The ``stages`` figure: eRank, loss and Diff-eRank (with its bootstrap interval) of each
    checkpoint, one row per family, one colour per model; a line style per dataset, with a dataset
    legend only where there are several datasets."""
    plt = _plt()
    metrics = [
        ("erank_trained", "eRank", "eRank of each checkpoint"),
        ("loss_trained", "loss (nats)", "loss of each checkpoint"),
        ("diff_erank", "Diff-eRank", "Diff-eRank against M0 (step 0)"),
    ]
    families = list(dict.fromkeys(stages["family"])) if "family" in stages else [""]
    datasets = sorted(set(stages["dataset"]))
    styles = dict(zip(datasets, DATASET_STYLES * 4, strict=False))
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
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(
            len(families), 3, figsize=(12, 3.2 * len(families) + 0.8), squeeze=False, layout="constrained"
        )
        for row, fam in zip(axes, families, strict=True):
            sub = stages[stages["family"] == fam] if fam else stages
            order = sub.groupby("model")["n_params"].first().sort_values() if "n_params" in sub else None
            models = list(order.index) if order is not None else list(dict.fromkeys(sub["model"]))
            cmap = plt.get_cmap("viridis")
            colors = {m: cmap(0.85 * i / max(1, len(models) - 1)) for i, m in enumerate(models)}
            for ax, (col, label, title) in zip(row, metrics, strict=True):
                for (model, ds), g in sub.groupby(["model", "dataset"], sort=False):
                    g = g.sort_values(xcol)
                    err = _yerr(g, col, "ci_low", "ci_high", "") if col == "diff_erank" else None
                    ax.errorbar(g[xcol], g[col], yerr=err, marker="o", ms=3.5, ls=styles[ds], capsize=2.5,
                                elinewidth=0.9, color=colors[model])  # fmt: skip
                if by_step:
                    _step_axis(ax, sub["step"].to_numpy(dtype=float))
                else:
                    _stage_axis(ax, labels)
                ax.set_ylabel(label)
                ax.set_title(f"{fam}: {title}" if fam else title)
                ax.set_xlabel("training step (symmetric log)" if by_step else "training stage")
                ax.grid(alpha=0.25)
            handles = [plt.Line2D([], [], color=colors[m], marker="o", ms=3.5) for m in models]
            row[-1].legend(handles, models, loc="center left", bbox_to_anchor=(1.02, 0.5), title="model")
        if len(datasets) > 1:  # one dataset: nothing to tell apart, no legend entry
            ds_handles = [plt.Line2D([], [], color="k", ls=styles[d]) for d in datasets]
            fig.legend(ds_handles, [f"dataset: {d}" for d in datasets], loc="outside lower center",
                       ncol=len(datasets), frameon=False)  # fmt: skip
        fig.suptitle(
            f"Training dynamics: each checkpoint against step 0 (algorithm ({algorithm}), {layer} layer)\n"
            "error bars on Diff-eRank: 95% bootstrap interval over texts"
        )
    return fig


def algorithms_figure(last: pd.DataFrame, stem: Path, prov: dict[str, Any], layer: str = LAST) -> None:
    """Fig. 4: Diff-eRank by algorithm (a) (solid) and (b) (dashed) against size, per dataset.

    ``last`` holds one row per model, dataset and algorithm (columns family, size, n_params,
    dataset, algorithm, diff_erank).
    """
    save(algorithms_fig(last, layer), stem, prov)


def algorithms_fig(last: pd.DataFrame, layer: str = LAST, per_row: int = 2):
    """The ``algorithms`` figure: (a) as filled markers on solid lines, (b) as larger open markers on
    dashed lines drawn over them, so (b) stays visible where the two coincide."""
    plt = _plt()
    datasets = sorted(set(last["dataset"]))
    styles = family_styles(last["family"])
    fams = sorted(styles)
    ncol = min(per_row, len(datasets))
    nrow = -(-len(datasets) // ncol)
    label = last.groupby(["dataset", "algorithm"]).size().max() <= 10
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(max(3.6 * ncol, 5.0), 3.2 * nrow + 0.9), squeeze=False, layout="constrained"
        )
        for k, ax in enumerate(axes.flat):
            if k >= len(datasets):
                ax.set_visible(False)
                continue
            ds = datasets[k]
            sub = last[last["dataset"] == ds]
            for (fam, alg), g in sub.groupby(["family", "algorithm"], sort=True):
                g = g.sort_values("n_params")
                color, marker = styles[fam]
                x = _dodge(g["n_params"], fams.index(fam), len(fams))
                standard = alg == STANDARD_ALGORITHM
                ax.plot(
                    x,
                    g["diff_erank"],
                    marker=marker,
                    ms=5 if standard else 8,
                    mfc=color if standard else "none",
                    mec=color,
                    mew=1.2,
                    ls="-" if standard else "--",
                    lw=1.3,
                    color=color,
                    zorder=2 if standard else 3,
                    label=f"{fam}: algorithm ({alg})",
                )
                if standard and label:
                    _label_sizes(ax, x, g["diff_erank"], g["size"], color)
            _size_axis(ax, sub["n_params"])
            ax.set_ylabel("Diff-eRank")
            ax.set_title(f"dataset: {ds}")
            ax.grid(alpha=0.25)
        # one entry per family (its colour and marker) and one per algorithm (fill and line style)
        handles = [plt.Line2D([], [], color=c, marker=m, ms=5, ls="") for c, m in styles.values()]
        labels = list(styles)
        for alg in sorted(set(last["algorithm"])):
            standard = alg == STANDARD_ALGORITHM
            fill, ls = ("0.3", "-") if standard else ("none", "--")
            size = 5 if standard else 8
            handles.append(plt.Line2D([], [], color="0.3", marker="o", ms=size, mfc=fill, ls=ls))
            labels.append(f"algorithm ({alg})")
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)
        fig.suptitle(
            f"Algorithm (a) exp(mean entropy), filled, against (b) mean of per-text eRanks, open; "
            f"{layer} layer\n"
            "each model's eRank is larger under (b) (Jensen); their difference need not be"
        )
    return fig


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
    share_y: bool = False,
) -> None:
    """Per layer: trained (solid) and untrained (dashed) eRank above, Diff-eRank below, against depth.

    One column per model (wrapped ``per_row`` to a row), one colour per dataset. Depth is the index
    into ``hidden_states`` (0 = embedding output, L = last hidden state); with a handful of named
    layers the ticks carry the names. ``share_y`` puts every model's eRank panels on one y-scale and
    every Diff-eRank panel on another (``figure_options: {layers: {share_y: true}}``), so models
    can be compared by eye; by default each panel fits its own model.
    """
    save(layers_fig(layers, algorithm, per_row, share_y), stem, prov)


def _layer_ticks(idx: pd.DataFrame) -> dict[int, str]:
    """Tick labels by hidden-state index: the layer names that fall on it, one per line, over the
    index (``first`` / ``middle`` / ``(1)``); an index with no name is the number alone."""
    out = {}
    for i, g in idx.groupby("layer_index"):
        names = sorted((n for n in g["layer"].astype(str) if not n.lstrip("-").isdigit()), key=_depth_key)
        out[int(i)] = "\n".join([*names, f"({int(i)})"]) if names else str(int(i))
    return out


def layers_fig(
    layers: pd.DataFrame, algorithm: str = STANDARD_ALGORITHM, per_row: int = 4, share_y: bool = False
):
    """The ``layers`` figure (see :func:`layers_figure`)."""
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
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(
            2 * nblocks,
            ncol,
            figsize=(max(3.3 * ncol, 6.0), 5.2 * nblocks + 0.8),
            squeeze=False,
            layout="constrained",
        )
        tops, bottoms = [], []
        for k in range(nblocks * ncol):
            top, bottom = axes[2 * (k // ncol)][k % ncol], axes[2 * (k // ncol) + 1][k % ncol]
            if k >= len(models):
                top.set_visible(False)
                bottom.set_visible(False)
                continue
            tops.append(top)
            bottoms.append(bottom)
            model = models[k]
            bottom.sharex(top)
            top.tick_params(labelbottom=False)
            sub = layers[layers["model"] == model]
            for ds in datasets:
                g = sub[sub["dataset"] == ds].sort_values("layer_index")
                if g.empty:
                    continue
                c = colors[ds]
                top.plot(g["layer_index"], g["erank_trained"], marker="o", ms=3.5, color=c)
                top.plot(g["layer_index"], g["erank_untrained"], marker="o", ms=3.5, ls="--", color=c,
                         alpha=0.7)  # fmt: skip
                bottom.plot(g["layer_index"], g["diff_erank"], marker="o", ms=3.5, color=c)
            bottom.axhline(0, color="0.6", lw=0.6)
            idx = sub.drop_duplicates(["layer", "layer_index"]).sort_values("layer_index")
            if idx["layer_index"].nunique() <= 6:
                ticks = _layer_ticks(idx)
                bottom.set_xticks(list(ticks), list(ticks.values()))
            else:
                from matplotlib.ticker import MaxNLocator

                bottom.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
            fam = order.loc[model, "family"]
            top.set_title(f"{model}\n({human_count(order.loc[model, 'n_params'])}, {fam})")
            bottom.set_xlabel("depth: hidden_states index")
            if k % ncol == 0:
                top.set_ylabel("eRank")
                bottom.set_ylabel("Diff-eRank")
            for ax in (top, bottom):
                ax.grid(alpha=0.25)
        if share_y:  # one scale per row kind, over every model
            for group in (tops, bottoms):
                lo = min(ax.get_ylim()[0] for ax in group)
                hi = max(ax.get_ylim()[1] for ax in group)
                for ax in group:
                    ax.set_ylim(lo, hi)
        handles = [plt.Line2D([], [], color=colors[d]) for d in datasets] if len(datasets) > 1 else []
        handles += [plt.Line2D([], [], color="k"), plt.Line2D([], [], color="k", ls="--")]
        labels = [f"dataset: {d}" for d in datasets] if len(datasets) > 1 else []
        labels += ["trained", "untrained (M0)"]
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
        scale = "one y-scale per row kind over all models" if share_y else "each panel on its own y-scale"
        fig.suptitle(
            "eRank (top: trained solid, untrained dashed) and Diff-eRank (bottom)\n"
            f"against depth (index into hidden_states), algorithm ({algorithm}); {scale}"
        )
    return fig


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
