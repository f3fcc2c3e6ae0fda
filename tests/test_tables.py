"""Table helpers: Spearman's rank correlation against hand-worked values."""

from __future__ import annotations

import math

import pytest

from diff_erank.tables import spearman


def test_spearman_against_hand_worked_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) with d = -1, 1, -1, 1, 0: 1 - 24/120
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # a tie takes the mean rank: x ranks 1, 2.5, 2.5, 4 against 1, 3, 2, 4; Pearson 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # a missing value drops its pair: what is left is 3 points in the same order
    assert spearman([1, None, 2, 3], [5, 1, 6, 7]) == pytest.approx(1.0)


def test_spearman_is_undefined_below_three_points_or_without_spread() -> None:
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
