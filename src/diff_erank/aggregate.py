"""Diff-eRank of a dataset for one model: algorithms (a) and (b), reduced loss, bootstrap CI.

Inputs are the per-text tables of the trained model and of each untrained variant (one per seed,
or the published initial revision) and optionally of further stages (checkpoints). Texts are
paired by position, so a text skipped by one variant is dropped from the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank.erank import dataset_erank, dataset_eranks
from diff_erank.errors import UserError
from diff_erank.metrics import summarised
from diff_erank.storage import read_parquet, read_provenance
from diff_erank.variants import TRAINED

KEY = ["layer", "position"]


class MismatchError(UserError, ValueError):
    """Variants of one model that cannot be compared (different hidden sizes or texts)."""


def _check_dims(tables: Mapping[str, pd.DataFrame]) -> None:
    dims = {v: dict(t.groupby("layer")["dim"].first()) for v, t in tables.items()}
    first = next(iter(dims.values()))
    for v, d in dims.items():
        if d != first:
            raise MismatchError(f"hidden size differs between variants: {dims} (variant {v})")


def bootstrap_diff(
    h_untrained: np.ndarray, h_trained: np.ndarray, algorithm: str, samples: int, seed: int, ci: float
) -> tuple[float, float]:
    """Percentile CI of Diff-eRank over texts resampled with replacement (paired)."""
    if samples == 0 or len(h_trained) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(h_trained), size=(samples, len(h_trained)))
    stats = dataset_eranks(h_untrained[idx], algorithm) - dataset_eranks(h_trained[idx], algorithm)
    lo, hi = np.quantile(stats, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def compare(
    trained: pd.DataFrame,
    other: pd.DataFrame,
    algorithms: list[str],
    bootstrap: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Rows (per layer x algorithm) of ``other`` (M0 or a stage) against ``trained``."""
    rows = []
    for layer, t in trained.groupby("layer", sort=False):
        m = t.merge(other[other["layer"] == layer], on=KEY, suffixes=("_t", "_u"))
        if m.empty:
            raise MismatchError(f"layer {layer}: no text in common between the variants")
        ht, hu = m["entropy_t"].to_numpy(), m["entropy_u"].to_numpy()
        for alg in algorithms:
            e_t, e_u = dataset_erank(ht, alg), dataset_erank(hu, alg)
            lo, hi = bootstrap_diff(hu, ht, alg, bootstrap["samples"], bootstrap["seed"], bootstrap["ci"])
            rows.append(
                {
                    "layer": layer,
                    "layer_index": int(t["layer_index"].iloc[0]) if "layer_index" in t else -1,
                    "algorithm": alg,
                    "n_texts": len(m),
                    "erank_untrained": e_u,
                    "erank_trained": e_t,
                    "diff_erank": e_u - e_t,
                    "ci_low": lo,
                    "ci_high": hi,
                    "loss_untrained": float(m["loss_u"].mean()),
                    "loss_trained": float(m["loss_t"].mean()),
                    "reduced_loss": float(m["loss_u"].mean() - m["loss_t"].mean()),
                    **{f"{k}_trained": float(m[f"{k}_t"].mean()) for k in summarised()},
                }
            )
    return rows


def diff_table(
    tables: Mapping[str, pd.DataFrame],
    untrained: list[str],
    algorithms: list[str],
    bootstrap: Mapping[str, Any],
    model_info: Mapping[str, Any],
) -> pd.DataFrame:
    """All comparisons of one model on one dataset.

    ``role`` says what a row is: ``untrained`` (trained vs one M0), ``seeds`` (mean and std over the
    M0 seeds, when there are several) or ``stage`` (a checkpoint vs M0, for training dynamics:
    its "trained" columns are the checkpoint's).
    """
    _check_dims(tables)
    rows = []
    for u in untrained:
        for r in compare(tables[TRAINED], tables[u], algorithms, bootstrap):
            rows.append({"role": "untrained", "variant": u, **r})
    df = pd.DataFrame(rows)
    if len(untrained) > 1:
        agg = (
            df.groupby(["layer", "algorithm"], sort=False)
            .agg(
                layer_index=("layer_index", "first"),
                n_texts=("n_texts", "min"),
                erank_untrained=("erank_untrained", "mean"),
                erank_trained=("erank_trained", "first"),
                diff_erank=("diff_erank", "mean"),
                diff_erank_std=("diff_erank", lambda s: float(np.std(s, ddof=1))),
                loss_untrained=("loss_untrained", "mean"),
                loss_trained=("loss_trained", "first"),
                reduced_loss=("reduced_loss", "mean"),
                **{f"{k}_trained": (f"{k}_trained", "first") for k in summarised()},
            )
            .reset_index()
        )
        agg["role"], agg["variant"] = "seeds", f"mean of {len(untrained)}"
        df = pd.concat([df, agg], ignore_index=True)
    stages = [v for v in tables if v != TRAINED and v not in untrained]
    stage_rows = [
        {"role": "stage", "variant": s, **r}
        for s in [*untrained[:1], *stages, TRAINED]
        for r in compare(tables[s], tables[untrained[0]], algorithms, bootstrap)
    ]
    df = pd.concat([df, pd.DataFrame(stage_rows)], ignore_index=True)
    for k, v in model_info.items():
        df[k] = v
    return df


def headline(full: pd.DataFrame) -> pd.DataFrame:
    """One comparison per model, dataset, layer and algorithm: the mean over untrained seeds
    where there are several (role ``seeds``), else the comparison with the single M0."""
    key = full["model"] + "\0" + full["dataset"]
    seeded = set(key[full["role"] == "seeds"])
    return full[(full["role"] == "seeds") | ((full["role"] == "untrained") & ~key.isin(seeded))]


def load_tables(paths: Mapping[str, str | Path]) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Per-variant tables and the facts the dumps recorded (parameters, skipped and truncated texts)
    for the report.

    Every table's checksum is verified on reading (``storage.read_parquet``).
    """
    tables = {v: read_parquet(p) for v, p in paths.items()}
    dump = read_provenance(paths[TRAINED])["dump"]
    skipped = {k: dump.get(k, 0) for k in ("n_skipped_empty", "n_skipped_short")}
    # texts cut at max_length (measured, but only their first max_length tokens); NaN: not recorded
    truncated = dump.get("n_truncated")
    facts = {"n_params": dump["n_params"], **skipped}
    facts["n_truncated"] = np.nan if truncated is None else truncated
    return tables, facts
