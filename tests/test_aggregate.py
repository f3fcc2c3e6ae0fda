"""Diff-eRank of a dataset from per-text tables: algorithms, CI, seeds, stages, mismatches."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diff_erank.aggregate import MismatchError, bootstrap_diff, diff_table

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


def erank_a(h) -> float:
    """The paper's algorithm (a), written out: the eRank of a dataset is exp of its mean entropy."""
    return float(np.exp(np.mean(h)))


def erank_b(h) -> float:
    """Its ablation (b): the mean over texts of each text's eRank, exp(H)."""
    return float(np.mean(np.exp(h)))


def test_diff_table_matches_the_definitions() -> None:
    """Diff-eRank = eRank(M0) - eRank(trained) under each algorithm, reduced loss = loss(M0) -
    loss(trained), and the seeds row is the mean and sample std over the M0 seeds: each worked out
    here from the definitions, not by the package's erank module."""
    rng = np.random.default_rng(0)
    ht, hu0, hu1 = rng.uniform(1, 2, 50), rng.uniform(2.5, 3, 50), rng.uniform(2.4, 3.1, 50)
    tables = {
        "trained": table(ht, np.full(50, 2.0)),
        "init-s0": table(hu0, np.full(50, 7.0)),
        "init-s1": table(hu1, np.full(50, 7.5)),
    }
    df = diff_table(tables, ["init-s0", "init-s1"], ["a", "b"], BOOT, {"model": "m"})
    rows = df.set_index(["role", "variant", "algorithm"])
    for u, hu, loss in (("init-s0", hu0, 5.0), ("init-s1", hu1, 5.5)):
        a, b = rows.loc[("untrained", u, "a")], rows.loc[("untrained", u, "b")]
        assert a.diff_erank == pytest.approx(erank_a(hu) - erank_a(ht), rel=1e-12)
        assert b.diff_erank == pytest.approx(erank_b(hu) - erank_b(ht), rel=1e-12)
        assert (a.erank_untrained, a.erank_trained) == pytest.approx((erank_a(hu), erank_a(ht)))
        assert a.reduced_loss == b.reduced_loss == pytest.approx(loss)
        assert a.n_texts == 50 and a.normalized_entropy_trained == pytest.approx(np.mean(ht) / math.log(16))
        assert a.ci_low < a.diff_erank < a.ci_high
    both = [erank_a(hu0) - erank_a(ht), erank_a(hu1) - erank_a(ht)]
    seeds = rows.loc[("seeds", "mean of 2", "a")]
    assert seeds.diff_erank == pytest.approx(np.mean(both))
    assert seeds.diff_erank_std == pytest.approx(abs(both[0] - both[1]) / math.sqrt(2))  # n = 2, ddof 1
    assert seeds.reduced_loss == pytest.approx(5.25)
    assert (df["model"] == "m").all()


def test_hand_worked_example() -> None:
    """Three texts, worked out by hand: trained H = 1, 2, 3 and M0 H = 2, 3, 4.
    (a): e^3 - e^2 = 12.6965; (b): (e^2 + e^3 + e^4)/3 - (e + e^2 + e^3)/3 = (e^4 - e)/3 = 17.2933."""
    tables = {"trained": table([1.0, 2.0, 3.0], [3.0] * 3), "init-s0": table([2.0, 3.0, 4.0], [5.0] * 3)}
    df = diff_table(tables, ["init-s0"], ["a", "b"], {**BOOT, "samples": 0}, {})
    got = df[df.role == "untrained"].set_index("algorithm")["diff_erank"]
    assert got["a"] == pytest.approx(12.6965, abs=1e-4)
    assert got["b"] == pytest.approx(17.2933, abs=1e-4)


def test_texts_are_paired_by_position() -> None:
    """A text one variant lacks (skipped by its dump) leaves both sides: the comparison is on the
    texts they share. Trained H = 1, 2, 3 at positions 0-2; M0 has positions 0 and 2 only, H = 2, 4:
    (a) over the shared texts is e^(6/2) - e^(4/2)."""
    trained = table([1.0, 2.0, 3.0], [1.0] * 3)
    untrained = table([2.0, 4.0], [4.0, 6.0]).assign(position=[0, 2])
    tables = {"trained": trained, "init-s0": untrained}
    df = diff_table(tables, ["init-s0"], ["a"], {**BOOT, "samples": 0}, {})
    row = df[df.role == "untrained"].iloc[0]
    assert row.n_texts == 2
    assert row.diff_erank == pytest.approx(math.exp(3) - math.exp(2))
    assert row.reduced_loss == pytest.approx(5.0 - 1.0)


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


def test_bootstrap_interval_of_texts_that_do_not_vary_is_the_value() -> None:
    """Every resample of texts with one entropy each (M0: 3, trained: 2) has Diff-eRank e^3 - e^2,
    so the interval is that point; texts that vary give an interval around the point estimate."""
    lo, hi = bootstrap_diff(np.full(30, 3.0), np.full(30, 2.0), "a", 100, 0, 0.9)
    assert lo == pytest.approx(math.exp(3) - math.exp(2)) and hi == pytest.approx(math.exp(3) - math.exp(2))
    rng = np.random.default_rng(3)
    hu, ht = rng.uniform(2, 3, 200), rng.uniform(1, 2, 200)
    lo, hi = bootstrap_diff(hu, ht, "a", 500, 0, 0.9)
    point = erank_a(hu) - erank_a(ht)
    assert lo < point < hi
    # the spread of a mean of 200 uniform entropies (sd 1/sqrt(12) each), through exp, bounds the width
    se = math.hypot(erank_a(hu), erank_a(ht)) / math.sqrt(12 * 200)
    assert 2 * 1.645 * se * 0.7 < hi - lo < 2 * 1.645 * se * 1.3
