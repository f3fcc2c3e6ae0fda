"""The per-text metric registry: a metric registered from outside reaches the per-text tables
(both kinds of dump) and, with ``summary=True``, the Diff-eRank table."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.models import resolved

from diff_erank import dump as D
from diff_erank import metrics
from diff_erank.aggregate import diff_table
from diff_erank.erank import covariance_spectrum, erank_stats
from diff_erank.measure import measure


@pytest.fixture
def participation_ratio():
    """A metric beside eRank, registered the way a new one is: a function and its registration."""

    def fn(stats, spectrum: np.ndarray) -> float:
        return float(1.0 / np.square(spectrum).sum())

    metrics.register_metric("participation_ratio", fn, summary=True)
    yield fn
    metrics.METRICS.pop("participation_ratio")


def test_the_paper_metrics_are_registered_in_column_order() -> None:
    assert list(metrics.METRICS) == ["erank", "normalized_entropy"]
    assert metrics.summarised() == ["normalized_entropy"]
    with pytest.raises(ValueError, match="already exists"):
        metrics.register_metric("entropy", lambda s, p: 0.0)


def test_a_registered_metric_is_measured_and_summarised(
    participation_ratio, tiny_model, texts_file, tmp_path
) -> None:
    import torch

    tables = {}
    for store in ("hidden", "spectra"):
        variants = ["trained", "init-s0"]
        D.dump_set(resolved(tiny_model, store=store), variants, texts_file, tmp_path / store, device="cpu")
        tables[store] = {v: measure(tmp_path / store / v) for v in ("trained", "init-s0")}
    hidden, spectra = tables["hidden"], tables["spectra"]
    trained = hidden["trained"]
    assert list(trained.columns)[7:11] == ["entropy", "erank", "normalized_entropy", "participation_ratio"]
    # an independent reading: 1 / sum p^2 of the covariance spectrum, against exp(H) >= it
    rng = torch.Generator().manual_seed(0)
    h = torch.randn(9, 16, generator=rng, dtype=torch.float64)
    p = covariance_spectrum(h)
    assert participation_ratio(erank_stats(h), p) == pytest.approx(1 / (p**2).sum())
    assert (trained["participation_ratio"] <= trained["erank"] + 1e-9).all()  # Renyi-2 <= Shannon
    from_spectra = spectra["trained"]["participation_ratio"]
    np.testing.assert_allclose(from_spectra, trained["participation_ratio"], rtol=1e-6)
    info = {"model": "m", "family": "f", "size": "s", "n_params": 1, "dataset": "d"}
    df = diff_table(hidden, ["init-s0"], ["a"], {"samples": 0, "seed": 0, "ci": 0.95}, info)
    row = df[(df["role"] == "untrained") & (df["layer"] == trained["layer"].iloc[0])].iloc[0]
    texts = trained[trained["layer"] == row["layer"]]
    assert row["participation_ratio_trained"] == pytest.approx(texts["participation_ratio"].mean())
    assert (
        list(df.columns).index("participation_ratio_trained")
        == list(df.columns).index("normalized_entropy_trained") + 1
    )
