"""Diff-eRank of a dataset from per-text tables: algorithms, CI, seeds, stages, mismatches."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diff_erank.aggregate import MismatchError, bootstrap_diff, diff_table
from diff_erank.erank import diff_erank
from diff_erank.report import step_of
from diff_erank.tables import spearman

BOOT = {"samples": 300, "seed": 0, "ci": 0.9}


def table(entropy, loss, dim=16, layer="last"):
    n = len(entropy)
    return pd.DataFrame(
        {
            "position": range(n),
            "layer": layer,
            "dim": dim,
            "entropy": entropy,
            "loss": loss,
            "normalized_entropy": np.asarray(entropy) / math.log(dim),
        }
    )


def test_diff_table_matches_the_definitions() -> None:
    rng = np.random.default_rng(0)
    ht, hu0, hu1 = rng.uniform(1, 2, 50), rng.uniform(2.5, 3, 50), rng.uniform(2.4, 3.1, 50)
    tables = {
        "trained": table(ht, np.full(50, 2.0)),
        "init-s0": table(hu0, np.full(50, 7.0)),
        "init-s1": table(hu1, np.full(50, 7.5)),
    }
    df = diff_table(tables, ["init-s0", "init-s1"], ["a", "b"], BOOT, {"model": "m"})
    row = df[(df.role == "untrained") & (df.variant == "init-s0") & (df.algorithm == "a")].iloc[0]
    assert row.diff_erank == pytest.approx(diff_erank(hu0, ht, "a"))
    assert row.reduced_loss == pytest.approx(5.0)
    assert row.ci_low < row.diff_erank < row.ci_high
    b = df[(df.role == "untrained") & (df.variant == "init-s1") & (df.algorithm == "b")].iloc[0]
    assert b.diff_erank == pytest.approx(np.exp(hu1).mean() - np.exp(ht).mean())
    seeds = df[(df.role == "seeds") & (df.algorithm == "a")].iloc[0]
    both = [diff_erank(hu0, ht, "a"), diff_erank(hu1, ht, "a")]
    assert seeds.diff_erank == pytest.approx(np.mean(both))
    assert seeds.diff_erank_std == pytest.approx(np.std(both, ddof=1))
    assert (df["model"] == "m").all()


def test_rows_carry_the_depth_of_their_layer() -> None:
    """Every row, the mean over seeds included, says which hidden_states index it measured."""
    rng = np.random.default_rng(2)
    tables = {}
    for v in ("trained", "init-s0", "init-s1"):
        parts = [
            table(rng.uniform(1, 3, 8), np.ones(8), layer=n).assign(layer_index=i)
            for n, i in [("first", 1), ("last", 4)]
        ]
        tables[v] = pd.concat(parts, ignore_index=True)
    df = diff_table(tables, ["init-s0", "init-s1"], ["a"], {**BOOT, "samples": 0}, {})
    assert set(df["role"]) == {"untrained", "seeds", "stage"}
    assert (
        df.groupby("layer")["layer_index"].unique().map(list) == pd.Series({"first": [1], "last": [4]})
    ).all()


def test_stages_are_compared_with_the_initialisation() -> None:
    h0, h1, h2 = np.full(10, 3.0), np.full(10, 2.0), np.full(10, 1.5)
    tables = {
        "trained": table(h2, np.ones(10)),
        "rev-step0": table(h0, np.ones(10) * 6),
        "rev-step5": table(h1, np.ones(10) * 3),
    }
    df = diff_table(tables, ["rev-step0"], ["a"], {**BOOT, "samples": 0}, {})
    st = df[df.role == "stage"].set_index("variant")["diff_erank"]
    assert st["rev-step0"] == 0
    assert st["rev-step5"] == pytest.approx(math.exp(3) - math.exp(2))
    assert st["trained"] == pytest.approx(math.exp(3) - math.exp(1.5))


def test_hidden_size_mismatch_between_variants() -> None:
    tables = {"trained": table([1.0, 2.0], [1, 1], dim=16), "init-s0": table([1.0, 2.0], [1, 1], dim=32)}
    with pytest.raises(MismatchError, match="hidden size differs"):
        diff_table(tables, ["init-s0"], ["a"], BOOT, {})


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(1)
    hu, ht = rng.uniform(2, 3, 40), rng.uniform(1, 2, 40)
    assert bootstrap_diff(hu, ht, "a", 200, 7, 0.95) == bootstrap_diff(hu, ht, "a", 200, 7, 0.95)
    assert bootstrap_diff(hu, ht, "a", 200, 7, 0.95) != bootstrap_diff(hu, ht, "a", 200, 8, 0.95)


def test_spearman_and_steps() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert step_of("rev-step150") == 150 and step_of("init-s3") == 0 and step_of("trained", 400) == 400
