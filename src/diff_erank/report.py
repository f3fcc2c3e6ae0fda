"""An experiment's tables, figures and generated summary, from its per-(model, dataset) results.

``build`` writes exactly the files ``outputs.report_files`` names for the config (the report
rule declares the same list): the tables (``tables``), the figures (``figures``), ``summary.md``
(sentences generated from the numbers, no claim hard-coded) with an HTML rendering for
Snakemake's report, and, for experiments that reproduce paper tables, the comparison with the
paper (``reproduce``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank import figures
from diff_erank.aggregate import headline
from diff_erank.erank import STANDARD_ALGORITHM
from diff_erank.figure_registry import FIGURES
from diff_erank.layers import DEPTH, LAST
from diff_erank.outputs import figure_kinds, report_files, reproduces_paper, table_names
from diff_erank.provenance import provenance
from diff_erank.storage import read_parquet, write_text
from diff_erank.tables import decimals, human_count, spearman, write_table
from diff_erank.variants import TRAINED, Variant, untrained_variants

log = logging.getLogger(__name__)

def step_of(variant: str, final_step: float = float("inf")) -> float:
    """Training step of a stage variant: rev-step200 -> 200, init-s0 -> 0, trained -> ``final_step``."""
    v = Variant.parse(variant)
    if v.kind == "trained":
        return final_step
    return float(v.step or 0)


def stage_rank(variant: str, model: dict[str, Any]) -> float:
    """Position of a stage in training order: M0, checkpoints by step, the trained model, then the
    further-trained stages in the order the config lists them."""
    v = Variant.parse(variant)
    if variant in untrained_variants(model):
        return 0.0
    if v.kind == "trained":
        return 2.0
    if v.kind == "ft":
        return 3.0 + list(model.get("finetune") or {}).index(v.name)
    return 1.0 + step_of(variant) / 1e12


def _at(row: Any) -> str:
    """'step 40' where the stage's step is known, else its name ('stage fully_trained')."""
    return f"step {row.step:.0f}" if np.isfinite(row.step) else f"stage {row.stage}"


def _series(values: Sequence[float]) -> str:
    """Numbers of one series at one precision: 2.90, 3.36, 5.06 (never 2.9, 3.36, 5.06)."""
    d = decimals(values, digits=3)
    return ", ".join(f"{v:.{d}f}" for v in values)


def _num(v: float, digits: int = 3) -> str:
    return f"{v:.{decimals([v], digits)}f}" if np.isfinite(v) else "n/a"


def _rho(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "n/a"


def _trend(g: pd.DataFrame) -> str:
    g = g.sort_values("n_params")
    d = g["diff_erank"].to_numpy()
    if len(g) < 2:
        return f"a single model (Diff-eRank {_num(d[0])})"
    mono = "grows monotonically" if np.all(np.diff(d) > 0) else "does not grow monotonically"
    sizes = ", ".join(f"{s} ({human_count(n)})" for s, n in zip(g["size"], g["n_params"], strict=True))
    return (
        f"Diff-eRank {mono} with size over {len(g)} models [{sizes}]: {_series(d)}; "
        f"Spearman rho with size {_rho(spearman(g['n_params'], g['diff_erank']))}, "
        f"with reduced loss {_rho(spearman(g['diff_erank'], g['reduced_loss']))}"
    )


def same_depth_notes(layers: pd.DataFrame) -> list[str]:
    """Footnotes for models whose named layers fall on the same hidden state (middle = first)."""
    notes = []
    idx = layers.drop_duplicates(["model", "layer"]).dropna(subset=["layer_index"])
    # named layers only: with `all`, index rows ("0" .. "L") coincide with the names by design
    idx = idx[(idx["layer_index"] >= 0) & ~idx["layer"].astype(str).str.fullmatch(r"-?\d+")]
    clashes: dict[tuple[str, ...], list[str]] = {}
    for (model, index), g in idx.groupby(["model", "layer_index"], sort=False):
        names = tuple(sorted(g["layer"], key=lambda n: (DEPTH.get(n, 9), n)))
        if len(names) > 1:
            clashes.setdefault((*names, str(int(index))), []).append(model)
    for key, models in clashes.items():
        *names, index = key
        notes.append(
            f"* {' = '.join(names)} for {', '.join(models)}: in models this shallow these names are one "
            f"hidden state, hidden_states[{index}] (first = 1, middle = L // 2, last = L), so their rows "
            "are the same measurement."
        )
    return notes


def collapse(g: pd.DataFrame) -> dict[str, Any] | None:
    """eRank falling to a minimum at an intermediate checkpoint and rising again by the last one.

    ``g`` is one (model, dataset) series of the stages table. Returns the numbers when the dip is
    real (minimum below 90 % of step 0 and the last checkpoint at least 10 % above the minimum).
    """
    g = g.sort_values("order")
    e = g["erank_trained"].to_numpy()
    if len(e) < 3:
        return None
    i = int(np.argmin(e))
    if 0 < i < len(e) - 1 and e[i] < 0.9 * e[0] and e[-1] > 1.1 * e[i]:
        loss = g["loss_trained"].to_numpy()
        return {
            "start": e[0],
            "min": e[i],
            "min_at": _at(g.iloc[i]),
            "end": e[-1],
            "end_at": _at(g.iloc[-1]),
            "loss_falls": bool(np.all(np.diff(loss) < 0)),
            "peak_at": _at(g.iloc[int(np.argmax(g["diff_erank"].to_numpy()))]),
        }
    return None


def _stage_lines(stages: pd.DataFrame) -> list[str]:
    out = [
        "",
        "## Training stages",
        "",
        f"Each checkpoint against step 0, algorithm ({STANDARD_ALGORITHM}), {LAST} layer; the rank "
        "correlation of Diff-eRank with the step leaves out step 0 itself (0 by definition).",
        "",
    ]
    dips = []
    for (model, ds), g in stages.groupby(["model", "dataset"], sort=False):
        g = g.sort_values("order")
        first, last = g.iloc[0], g.iloc[-1]
        later = g[g["order"] > 0]
        rho = spearman(later["order"], later["diff_erank"])
        rho_txt = _rho(rho) if np.isfinite(rho) else f"n/a ({len(later)} checkpoints after step 0)"
        c = collapse(g)
        dip = ""
        if c:
            dips.append((model, ds, c))
            dip = (
                f"; eRank collapses to {_num(c['min'])} at {c['min_at']} and re-expands to "
                f"{_num(c['end'])} by {c['end_at']}"
            )
        out.append(
            f"- {model} on {ds}: loss {_num(first.loss_trained)} -> {_num(last.loss_trained)}, "
            f"eRank {_num(first.erank_trained)} -> {_num(last.erank_trained)}, "
            f"Spearman rho(step, Diff-eRank) {rho_txt}{dip}."
        )
    n = stages.groupby(["model", "dataset"]).ngroups
    if dips:
        loss_falls = sum(c["loss_falls"] for *_, c in dips)
        peaks = list(dict.fromkeys(c["peak_at"] for *_, c in dips))
        out += [
            "",
            f"**Collapse, then re-expansion**: in {len(dips)} of {n} model x dataset series the eRank falls "
            f"to its minimum at an intermediate checkpoint and rises again by the last one (a dip below 90 % "
            f"of step 0, re-expanding by more than 10 %); the loss falls at every checkpoint in {loss_falls} "
            f"of them. Diff-eRank against step 0 therefore peaks early (at {', '.join(peaks)}) and "
            "declines afterwards instead of growing with training.",
        ]
    elif n:
        out += ["", f"No collapse-then-re-expansion of eRank in any of the {n} series."]
    return out


def _layer_lines(layers: pd.DataFrame) -> list[str]:
    depth = layers.groupby("layer")["layer_index"].max()
    names = sorted(depth.index, key=lambda n: (DEPTH.get(n, 9), depth[n]))
    if len(names) < 2:
        return []
    by_layer = f"Diff-eRank by layer (algorithm ({STANDARD_ALGORITHM})), models ordered by size:"
    out = ["", "## Layers", "", by_layer, ""]
    for (fam, ds), g in layers.groupby(["family", "dataset"], sort=False):
        if len(names) <= 6:
            d = decimals(g["diff_erank"], digits=3)  # one precision for the whole line
            parts = []
            for layer in names:
                h = g[g["layer"] == layer].sort_values("n_params")
                parts.append(f"{layer} " + ", ".join(f"{v:.{d}f}" for v in h["diff_erank"]))
            out.append(f"- {fam} on {ds}: " + "; ".join(parts) + ".")
        else:
            for model, h in g.groupby("model", sort=False):
                h = h.sort_values("layer_index").drop_duplicates("layer_index")  # a name = its index row
                d, idx = h["diff_erank"].to_numpy(), h["layer_index"].to_numpy()
                k = int(np.argmax(d))
                out.append(
                    f"- {model} on {ds}: Diff-eRank over {len(h)} layers from {_num(d[0])} (index {idx[0]}) "
                    f"to {_num(d[-1])} (index {idx[-1]}), largest {_num(d[k])} at index {idx[k]}."
                )
    if {"embeddings", "first"} <= set(names):
        w = layers.pivot_table(index=["model", "dataset"], columns="layer", values="diff_erank")
        out += [
            "",
            'The paper\'s "first layer" has two readings, both measured here: `embeddings` '
            "(hidden_states[0], the embedding output) and `first` (hidden_states[1], the first block's "
            f"output); Diff-eRank at `embeddings` exceeds `first` in "
            f"{int((w['embeddings'] > w['first']).sum())} of {len(w)} model x dataset pairs. "
            "reproduction.md compares each reading with the paper's Table 4.",
        ]
    return out


def experiment_members(name: str, conf_dir: Path | None = None) -> tuple[set[str], set[str]] | None:
    """The models and datasets experiment ``name``'s own YAML composes (following the experiments it
    extends), read from ``conf/experiment/``; ``None`` where there is no such file."""
    import yaml

    from diff_erank.config import DEFAULT_CONF_DIR

    folder = Path(conf_dir or DEFAULT_CONF_DIR) / "experiment"
    models: set[str] = set()
    datasets: set[str] = set()
    seen: set[str] = set()

    def read(exp: str) -> bool:
        path = folder / f"{exp}.yaml"
        if exp in seen or not path.is_file():
            return exp in seen
        seen.add(exp)
        node = yaml.safe_load(path.read_text()) or {}
        for item in node.get("defaults") or []:
            if isinstance(item, str) and item != "_self_":
                if not read(item.lstrip("/").removeprefix("experiment/")):
                    return False
            elif isinstance(item, dict):
                for key in item:
                    group, _, target = str(key).lstrip("/").partition("@")
                    if group == "model" and target.startswith("models."):
                        models.add(target.removeprefix("models."))
                    elif group == "dataset" and target.startswith("datasets."):
                        datasets.add(target.removeprefix("datasets."))
        models.update(node.get("models") or {})
        datasets.update(node.get("datasets") or {})
        return True

    return (models, datasets) if read(name) else None


def _names(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def run_lines(main: pd.DataFrame, config: dict[str, Any]) -> list[str]:
    """What this run measured, from its results (models by family, datasets), and the experiment's
    own description only where the run is that experiment: a run built from ``ci`` with other models
    or datasets is described as what it is, not as "a smaller demo for CI"."""
    fams = main.drop_duplicates("model").sort_values(["family", "n_params"]).groupby("family", sort=False)
    models = "; ".join(f"{fam}: {_names(list(g['model']))}" for fam, g in fams)
    datasets = sorted(set(main["dataset"]))
    n_models = main["model"].nunique()
    ran = (
        f"This run measured {n_models} model{'s' * (n_models != 1)} ({models}) on "
        f"{len(datasets)} dataset{'s' * (len(datasets) != 1)} ({_names(datasets)})."
    )
    name, description = config.get("name"), config.get("description")
    if not description:
        return [ran, ""]
    own = experiment_members(str(name)) if name else None
    if own is not None and own == (set(config.get("models") or {}), set(config.get("datasets") or {})):
        return [f"Experiment `{name}`: {str(description).rstrip('.')}. {ran}", ""]
    return [ran, ""]


def truncation_lines(main: pd.DataFrame, config: dict[str, Any]) -> list[str]:
    """A note when texts were cut at ``max_length``: they were measured on their first tokens only."""
    if "n_truncated" not in main:
        return []
    cut = main[main["n_truncated"].fillna(0) > 0]
    if cut.empty:
        return []
    models = config.get("models") or {}
    limits = cut["model"].map(lambda m: (models.get(m) or {}).get("max_length") or 0)
    parts = []  # models with the same count on a dataset in one clause
    for (ds, n, of, limit), g in cut.assign(limit=limits).groupby(
        ["dataset", "n_truncated", "n_texts", "limit"], sort=False
    ):
        at = f" at {limit} tokens" if limit else ""
        parts.append(f"{', '.join(g['model'])} on {ds}: {n:.0f} of {of:.0f} texts cut{at}")
    return [
        "**Texts cut at max_length**: " + "; ".join(parts) + ". A cut text is measured on its first "
        "max_length tokens only; raise the model's `max_length` to measure it whole (column "
        "`n_truncated` of the tables).",
        "",
    ]


def summarise(
    main: pd.DataFrame,
    stages: pd.DataFrame,
    layers: pd.DataFrame | None = None,
    by_alg: pd.DataFrame | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    """What was measured, in sentences generated from the numbers (no claim is hard-coded)."""
    config = config or {}
    out = [f"# Summary: {config.get('name', 'experiment')}", ""]
    out += run_lines(main, config)
    out += truncation_lines(main, config)
    out += [
        "## Diff-eRank against model size",
        "",
        f"Algorithm ({STANDARD_ALGORITHM}), {LAST} layer, trained against untrained "
        "(the mean over seeds where there are several).",
        "",
    ]
    for (fam, ds), g in main.groupby(["family", "dataset"], sort=False):
        out.append(f"- {fam} on {ds}: {_trend(g)}.")
    if main["family"].nunique() > 1:
        out += [
            "",
            "Each trend is within one family: Diff-eRank is not comparable across families (each is "
            "measured against its own untrained model, whose eRank depends on the architecture and "
            "width), so families are not pooled into one trend.",
        ]
    acc_cols = [c for c in main.columns if c.startswith("acc_")]
    if acc_cols:
        out += ["", "## Accuracy", ""]
        for (fam, ds), g in main.groupby(["family", "dataset"], sort=False):
            rhos = ", ".join(f"{c[4:]} {_rho(spearman(g['diff_erank'], g[c]))}" for c in acc_cols)
            out.append(f"- {fam} on {ds}: Spearman rho(Diff-eRank, accuracy): {rhos}.")
    if by_alg is not None and {"a", "b"} <= set(by_alg.columns):
        depths = by_alg.drop_duplicates(["model", "dataset", "layer_index"])  # a name = its index row
        ok = (depths["b"] >= depths["a"] - 1e-9).sum()
        out += [
            "",
            "## Algorithms",
            "",
            f"Diff-eRank by algorithm (b) >= (a) in {ok} of {len(depths)} model x dataset x depth rows. "
            "Jensen's inequality makes each model's eRank under (b) at least its eRank under (a); "
            "their difference, Diff-eRank, can go either way.",
        ]
    if layers is not None and not layers.empty:
        out += _layer_lines(layers)
        notes = same_depth_notes(layers)
        if notes:
            out += ["", *notes]
    if not stages.empty:
        out += _stage_lines(stages)
    return "\n".join(out) + "\n"


def init_scale_table(main_all: pd.DataFrame) -> pd.DataFrame:
    """The init-scale sweep's points: one row per model and dataset, in scale order."""
    standard = main_all["algorithm"] == STANDARD_ALGORITHM
    rows = main_all[standard & last_layer(main_all) & main_all["init_scale"].notna()]
    cols = ["family", "model", "dataset", "init_scale", "n_texts", "erank_untrained", "erank_trained",
            "diff_erank", "diff_erank_std", "ci_low", "ci_high", "reduced_loss"]  # fmt: skip
    rows = rows[[c for c in cols if c in rows]]
    return rows.sort_values(["family", "dataset", "init_scale"], ignore_index=True)


def init_scale_lines(table: pd.DataFrame) -> list[str]:
    """The summary's account of the sweep: the range of Diff-eRank over the init scales, and
    where its sign changes, per family and dataset (measured, whatever the sign)."""
    lines = ["## Sensitivity to the untrained model's init scale", ""]
    for (fam, ds), g in table.groupby(["family", "dataset"], sort=False):
        scales, diffs = g["init_scale"].to_numpy(), g["diff_erank"].to_numpy()
        pts = ", ".join(f"x{s:g}: {_num(d, 3)}" for s, d in zip(scales, diffs, strict=True))
        flips = [
            f"between x{scales[i]:g} and x{scales[i + 1]:g}"
            for i in range(len(diffs) - 1)
            if np.sign(diffs[i]) != np.sign(diffs[i + 1])
        ]
        sign = f"; the sign changes {' and '.join(flips)}" if flips else "; one sign throughout"
        lines.append(f"- **{fam}** on `{ds}`: Diff-eRank {pts} (M0 init std x the published one){sign}.")
    lines.append("")
    lines.append(
        "Diff-eRank is a difference against M0, so its size, and possibly its sign, is partly the "
        "choice of M0's init scale: compare models only at the same, published, init."
    )
    return lines


#: Rows of the headline table on the report's landing page; the rest are in Fig. 1 / Table 6.
LANDING_ROWS = 30

#: Snakemake centres its landing page in a full-screen box, which leaves half a screen of white
#: above a short page and cuts off the top of a long one; the page carries this style to start at
#: the top and use the window's width (a <style> in the page applies while the page is shown).
LANDING_STYLE = (
    "<style>div.h-screen.items-center{align-items:flex-start}"
    "div.prose.max-w-lg{max-width:60rem}div.prose table{font-variant-numeric:tabular-nums}</style>"
)


def landing_rst(main: pd.DataFrame, config: dict[str, Any]) -> str:
    """The landing page of Snakemake's HTML report (``report.rst``): the experiment's name, what this
    run measured, its headline numbers, and the report's sections. The section list is a Jinja loop
    over the categories Snakemake found, so it names only the sections this run has."""
    name = config.get("name", "experiment")
    title = f"Diff-eRank: experiment {name}"
    # Markdown's `code` is reST's ``code``
    md = [*run_lines(main, config), *(line for line in truncation_lines(main, config) if line)]
    out = [title, "=" * len(title), "", ".. raw:: html", "", f"   {LANDING_STYLE}", ""]
    out += [line.replace("`", "``") for line in md]
    rows = main.sort_values(["dataset", "family", "n_params"])
    d = decimals(rows["diff_erank"], digits=3)
    dl = decimals(rows["reduced_loss"], digits=3)
    out += [
        "",
        f"Headline: Diff-eRank (algorithm ({STANDARD_ALGORITHM}), {LAST} layer, trained against untrained) "
        "with its 95% bootstrap interval over texts, and the reduced loss (nats).",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - model",
        "     - dataset",
        "     - Diff-eRank [95% CI]",
        "     - reduced loss",
    ]
    for r in rows.head(LANDING_ROWS).itertuples():
        lo, hi = getattr(r, "ci_low", np.nan), getattr(r, "ci_high", np.nan)
        ci = f" [{lo:.{d}f}, {hi:.{d}f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        out += [
            f"   * - {r.model}",
            f"     - {r.dataset}",
            f"     - {r.diff_erank:.{d}f}{ci}",
            f"     - {r.reduced_loss:.{dl}f}",
        ]
    if len(rows) > LANDING_ROWS:
        out += ["", f"and {len(rows) - LANDING_ROWS} more rows in Fig. 1 / Table 6."]
    out += [
        "",
        "Sections of this report (menu on the left):",
        "",
        "{% for cat in categories|sort(attribute='name') %}",
        "- {{ cat.name }}",
        "{% endfor %}",
        "",
        "The effective rank (eRank) of a text's hidden states is exp of the entropy of their normalised "
        "covariance spectrum; Diff-eRank is eRank(untrained M0) - eRank(trained M1) (Wei et al., NeurIPS "
        "2024). Every table is also under ``tables/`` as CSV (full precision), Markdown and HTML, every "
        "figure under ``figures/`` as PNG and PDF, each with its provenance; the resolved configuration "
        "is ``config.json``.",
    ]
    return "\n".join(out) + "\n"


def md_to_html(text: str, title: str) -> str:
    """A Markdown page (summary, reproduction report) as HTML for Snakemake's report."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(text)
    style = (
        "body{font-family:sans-serif;font-size:14px;margin:1em;max-width:70em}"
        "table{border-collapse:collapse;font-size:12px}th,td{padding:2px 8px;border-bottom:1px solid #ddd}"
        "th{text-align:left;background:#f3f3f3}td{font-variant-numeric:tabular-nums}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
        f"</head><body>\n{body}</body></html>\n"
    )


def load_accuracy(files: Sequence[str | Path]) -> pd.DataFrame:
    """Accuracy records as rows (model, variant, task, accuracy = lm-eval's acc, accuracy_norm =
    its acc_norm, NaN where the task has none); combined means count as tasks."""

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


def _layer_index(full: pd.DataFrame) -> pd.Series:
    """``layer_index`` of every row; results from before it was recorded get the names' order."""
    if "layer_index" in full and (full["layer_index"] >= 0).all():
        return full["layer_index"].astype(int)
    log.warning("diff tables without layer_index: depth in the layers figure is the layers' order")
    return full["layer"].map(lambda s: DEPTH.get(s, int(s) if str(s).lstrip("-").isdigit() else 9))


def _depth_sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by family, size, dataset and depth; names on one hidden state as first, middle, last."""
    key = df["layer"].map(lambda n: DEPTH.get(n, 9))
    cols = ["family", "n_params", "dataset", "layer_index", "_name"]
    return df.assign(_name=key).sort_values(cols, ignore_index=True).drop(columns="_name")


def last_layer(df: pd.DataFrame) -> pd.Series:
    """Rows of each model's last hidden state: the layer named ``last``, else its deepest layer.

    With ``layers: all`` the layers may be named by index only; the last one is then the largest
    ``layer_index`` the model has.
    """
    named = df["layer"] == LAST
    has_named = named.groupby(df["model"]).transform("any")
    deepest = df["layer_index"] == df.groupby("model")["layer_index"].transform("max")
    return named | (~has_named & deepest)


@dataclass
class Frames:
    """The report's frames, each built once from the per-(model, dataset) results: every table,
    figure and summary sentence reads these (a figure by name: ``figure_registry.FRAMES``)."""

    all: pd.DataFrame  # every comparison as measured
    accuracy: pd.DataFrame  # accuracy records (model, variant, task, accuracy, accuracy_norm)
    main_all: pd.DataFrame  # headline comparisons, every algorithm and layer
    main: pd.DataFrame  # one row per model and dataset: algorithm (a), last layer, acc_<task>
    tasks: list[str]  # the accuracy tasks, in the wide table's order
    algorithms_layers: pd.DataFrame  # Diff-eRank by algorithm and layer
    layers: pd.DataFrame  # algorithm (a) per layer
    stages: pd.DataFrame  # each checkpoint against step 0
    init_scale: pd.DataFrame | None  # the init-scale sweep, where the config has one

    @property
    def last(self) -> pd.DataFrame:
        """Every algorithm at each model's last layer."""
        return self.main_all[last_layer(self.main_all)]

    def frame(self, name: str) -> Any:
        return getattr(self, name)


MAIN_COLUMNS = ["model", "family", "size", "init_scale", "n_params", "dataset", "n_texts", "diff_erank",
                "ci_low", "ci_high", "diff_erank_std", "reduced_loss", "reduced_loss_std", "erank_untrained",
                "erank_trained", "loss_untrained", "loss_trained", "n_skipped_empty",
                "n_skipped_short", "n_truncated"]  # fmt: skip


def _main(main_all: pd.DataFrame, accuracy: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The headline table (algorithm (a), last layer) with each accuracy task as ``acc_<task>``."""
    main = main_all[(main_all["algorithm"] == STANDARD_ALGORITHM) & last_layer(main_all)].copy()
    main = main[[c for c in MAIN_COLUMNS if c in main and main[c].notna().any()]]
    main = main.sort_values(["dataset", "family", "n_params"], ignore_index=True)
    tasks: list[str] = []
    if not accuracy.empty:
        wide = accuracy[accuracy["variant"] == TRAINED].pivot_table(
            index="model", columns="task", values="accuracy"
        )
        tasks = list(wide.columns)
        main = main.merge(wide.add_prefix("acc_").reset_index(), on="model", how="left")
    return main, tasks


def _stages(full: pd.DataFrame, models: dict[str, Any]) -> pd.DataFrame:
    """Each checkpoint against step 0 (algorithm (a), last layer), in training order."""
    standard = full["algorithm"] == STANDARD_ALGORITHM
    stages = full[(full["role"] == "stage") & standard & last_layer(full)].copy()
    # the step of each stage where it is known: checkpoints by name, a zoo model's last step
    final = {m: float((spec.get("train") or {}).get("steps", np.nan)) for m, spec in models.items()}
    pairs = list(zip(stages["variant"], stages["model"], strict=True))
    stages["step"] = [np.nan if Variant.parse(v).kind == "ft" else step_of(v, final[m]) for v, m in pairs]
    stages["order"] = [stage_rank(v, models[m]) for v, m in pairs]
    stages["stage"] = [(models[m].get("stage_labels") or {}).get(v, v) for v, m in pairs]
    has_stages = stages.groupby(["model", "dataset"])["variant"].transform("nunique") > 2
    return stages[has_stages].sort_values(["family", "n_params", "dataset", "order"], ignore_index=True)


def frames(
    diff_files: Sequence[str | Path], config: dict[str, Any], accuracy_files: Sequence[str | Path] = ()
) -> Frames:
    """Read the per-(model, dataset) results and build every frame of the report."""
    full = pd.concat([read_parquet(f) for f in diff_files], ignore_index=True)
    full["layer_index"] = _layer_index(full)
    lead = ["model", "family", "size", "n_params", "dataset"]
    full = full[lead + [c for c in full.columns if c not in lead]]
    accuracy = load_accuracy(accuracy_files)

    main_all = headline(full).copy()
    seeds = full[full["role"] == "untrained"].groupby(["model", "dataset", "layer", "algorithm"])
    rl_std = seeds["reduced_loss"].std(ddof=1).rename("reduced_loss_std")
    main_all = main_all.merge(rl_std.reset_index(), on=["model", "dataset", "layer", "algorithm"], how="left")
    main, tasks = _main(main_all, accuracy)

    order = ["model", "family", "n_params", "dataset", "layer", "layer_index"]
    by_alg = main_all.pivot_table(index=order, columns="algorithm", values="diff_erank").reset_index()
    by_alg.columns.name = None
    layers = _depth_sorted(
        main_all[main_all["algorithm"] == STANDARD_ALGORITHM][
            [*order, "erank_untrained", "erank_trained", "diff_erank", "ci_low", "ci_high"]
        ]
    )
    sweep = init_scale_table(main_all) if "init_scale" in table_names(config) else None
    return Frames(
        all=full,
        accuracy=accuracy,
        main_all=main_all,
        main=main,
        tasks=tasks,
        algorithms_layers=_depth_sorted(by_alg),
        layers=layers,
        stages=_stages(full, config["models"]),
        init_scale=sweep,
    )


def main_notes(main: pd.DataFrame) -> list[str]:
    """The headline table's footnotes, each naming only columns the table has."""
    cols = set(main.columns)
    notes = []
    if {"ci_low", "ci_high"} <= cols:
        notes.append("ci_low / ci_high: 95% bootstrap interval over texts.")
    std = [c for c in ("diff_erank_std", "reduced_loss_std") if c in cols]
    if std:
        notes.append(f"{' / '.join(std)}: std over the untrained seeds.")
    if "n_truncated" in cols:
        notes.append(
            "n_truncated: texts longer than the model's max_length, measured on their first max_length "
            "tokens; n_skipped_empty / n_skipped_short: texts skipped as blank or too short."
        )
    return notes


def write_tables(f: Frames, config: dict[str, Any], out_dir: Path, prov: dict[str, Any]) -> None:
    """``tables/``: CSV, Markdown and HTML of each table ``outputs.table_names`` lists (bar the
    reproduction, written with the summary)."""
    tables = out_dir / "tables"
    if config.get("accuracy"):
        write_table(f.accuracy, tables / "accuracy", prov, "Zero-shot accuracy (lm-evaluation-harness)")
    write_table(f.all, tables / "all", prov, "Every comparison of every model, dataset, layer and algorithm")
    write_table(
        f.main,
        tables / "diff_erank",
        prov,
        f"Diff-eRank (algorithm ({STANDARD_ALGORITHM}), {LAST} layer) and reduced loss against model size "
        "(paper Fig. 1 / Table 6)",
        notes=main_notes(f.main),
    )
    notes = same_depth_notes(f.layers)
    write_table(
        f.algorithms_layers.drop(columns=["family"]),
        tables / "algorithms_layers",
        prov,
        "Diff-eRank by algorithm (a, b) and layer (paper Tables 4 and 9)",
        notes=notes,
    )
    write_table(
        f.layers.drop(columns=["family"]),
        tables / "layers",
        prov,
        "eRank of the trained and untrained model and Diff-eRank per layer, "
        f"algorithm ({STANDARD_ALGORITHM})",
        notes=notes,
    )
    stages = f.stages
    stage_cols = [
        "model",
        "dataset",
        "variant",
        *(["stage"] if (stages["stage"] != stages["variant"]).any() else []),
        "step",
        "erank_trained",
        "loss_trained",
        "diff_erank",
        "reduced_loss",
    ]
    write_table(
        stages[stage_cols],
        tables / "stages",
        prov,
        f"Training stages: each checkpoint against step 0 (algorithm ({STANDARD_ALGORITHM}), {LAST} layer)",
        notes=[
            "step 0 is the untrained model itself, so its Diff-eRank and reduced loss are 0 by definition."
        ],
    )
    if f.init_scale is not None:
        write_table(
            f.init_scale,
            tables / "init_scale",
            prov,
            f"Diff-eRank against the init scale of the untrained model M0 (algorithm ({STANDARD_ALGORITHM}), "
            f"{LAST} layer)",
            notes=[
                "init_scale: M0's init std as a multiple of the published config's (1 = published)"
                + ("; diff_erank_std: std over the untrained seeds." if "diff_erank_std" in f.init_scale
                   else ".")
            ],
        )


def draw_figures(f: Frames, config: dict[str, Any], out_dir: Path, prov: dict[str, Any]) -> None:
    """``figures/``: each registered figure the config shows (``figure_registry``), from its frames."""
    options = config.get("figure_options") or {}  # e.g. {layers: {share_y: true}}
    for name in figure_kinds(config):
        fig = FIGURES[name]
        frames_ = (f.frame(frame) for frame in fig.frames)
        fig.drawer()(*frames_, out_dir / "figures" / name, prov, **(options.get(name) or {}))


def write_summary(f: Frames, config: dict[str, Any], out_dir: Path) -> None:
    """``summary.md`` and its HTML, and, for experiments that reproduce paper tables, the comparison."""
    summary = summarise(f.main, f.stages, f.layers, f.algorithms_layers, config)
    if f.init_scale is not None:
        summary += "\n" + "\n".join(init_scale_lines(f.init_scale)) + "\n"
    write_text(summary, out_dir / "summary.md")
    write_text(landing_rst(f.main, config), out_dir / "report.rst")
    write_text(md_to_html(summary, f"Summary: {config.get('name', '')}"), out_dir / "summary.html")
    if reproduces_paper(config):
        from diff_erank.reproduce import build_report

        build_report(f.all, f.accuracy, config, out_dir)
        text = (out_dir / "reproduction.md").read_text()
        write_text(md_to_html(text, f"Reproduction: {config['name']}"), out_dir / "reproduction.html")


def build(
    diff_files: Sequence[str | Path],
    out_dir: str | Path,
    config: dict[str, Any],
    accuracy_files: Sequence[str | Path] = (),
) -> dict[str, pd.DataFrame]:
    """The experiment's report from its per-(model, dataset) results: frames, then tables,
    figures and summary, exactly the files ``outputs.report_files`` declares."""
    out_dir = Path(out_dir)
    f = frames(diff_files, config, accuracy_files)
    prov = provenance(config, inputs=[str(p) for p in [*diff_files, *accuracy_files]])
    write_tables(f, config, out_dir, prov)
    draw_figures(f, config, out_dir, prov)
    write_summary(f, config, out_dir)
    missing = [p for p in report_files(config).values() if not (out_dir / p).exists()]
    if missing:
        raise RuntimeError(f"report did not write {missing} (outputs.report_files and report.build disagree)")
    return {
        "all": f.all,
        "main": f.main,
        "stages": f.stages,
        "algorithms_layers": f.algorithms_layers,
        "layers": f.layers,
        "accuracy": f.accuracy,
    }


def multimodal_report(
    files: dict[tuple[str, str, int], str], out_dir: str | Path, config: dict[str, Any]
) -> pd.DataFrame:
    """Tables 2-3 in the paper's layout, a bar figure of the five eRanks, and the comparison."""
    from diff_erank.multimodal import LEVELS, table

    plt = figures._plt()
    out_dir = Path(out_dir)
    mm = table(files, config["multimodal"]["algorithm"])
    prov = provenance(config, inputs=[str(f) for f in files.values()])
    write_table(mm, out_dir / "tables" / "multimodal", prov, "eRank1-5 (paper Tables 2-3)")
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
    figures.save(fig, out_dir / "figures" / "multimodal", prov)
    if any(t in config.get("paper_tables", []) for t in ("table2", "table3")):
        from diff_erank.reproduce import build_multimodal_report

        build_multimodal_report(mm, config, out_dir)
    return mm
