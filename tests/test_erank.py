"""The eRank core against a plain float64 reading of the paper's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diff_erank import erank as E


def reference_entropy(r: np.ndarray) -> float:
    """The definition, word for word: d x d covariance of centred unit rows, full eigh, float64."""
    r = np.asarray(r, dtype=np.float64)
    z = r - r.mean(axis=0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sigma = z.T @ z / z.shape[0]
    lam = np.linalg.eigh(sigma / np.trace(sigma))[0]
    lam = lam[lam > 0]
    return float(-(lam * np.log(lam)).sum())


def _matrix(n: int, d: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if rank is None:
        return rng.standard_normal((n, d)) * rng.uniform(0.1, 10, size=d)
    return rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d))


SHAPES = [(2, 5), (7, 7), (16, 64), (64, 16), (33, 33), (100, 12), (3, 300), (50, 51), (51, 50)]


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_matches_reference_on_fixed_shapes(n: int, d: int) -> None:
    x = _matrix(n, d, seed=n * 1000 + d)
    assert E.matrix_entropy(x) == pytest.approx(reference_entropy(x), rel=1e-9)
    assert E.erank(x) == pytest.approx(math.exp(reference_entropy(x)), rel=1e-9)


@pytest.mark.parametrize(("n", "d", "rank"), [(40, 80, 3), (80, 40, 5), (60, 60, 1)])
def test_low_rank_inputs(n: int, d: int, rank: int) -> None:
    x = _matrix(n, d, seed=7, rank=rank)
    assert E.matrix_entropy(x) == pytest.approx(reference_entropy(x), rel=1e-9)
    assert E.erank(x) <= rank + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    d=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_matches_reference_property(n: int, d: int, seed: int, scale: float) -> None:
    x = _matrix(n, d, seed) * scale
    assert E.matrix_entropy(x) == pytest.approx(reference_entropy(x), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), d=st.integers(1, 30), seed=st.integers(0, 2**31 - 1))
def test_bounds(n: int, d: int, seed: int) -> None:
    x = _matrix(n, d, seed)
    r = E.erank(x)
    assert 1 - 1e-12 <= r <= min(n - 1, d) + 1e-9
    spec = E.covariance_spectrum(x)
    assert spec.dtype == np.float64
    assert spec.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(spec) <= 0)
    assert np.all(spec >= 0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 30), d=st.integers(2, 30), seed=st.integers(0, 2**31 - 1))
def test_invariances(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _matrix(n, d, seed)
    h = E.matrix_entropy(x)
    # permuting tokens
    assert E.matrix_entropy(x[rng.permutation(n)]) == pytest.approx(h, rel=1e-9, abs=1e-12)
    # rotating the hidden space
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    assert E.matrix_entropy(x @ q) == pytest.approx(h, rel=1e-9, abs=1e-12)
    # global scale and translation (centring)
    assert E.matrix_entropy(3.7 * x + rng.standard_normal(d)) == pytest.approx(h, rel=1e-9, abs=1e-12)
    # scaling a row: invariant once the rows are centred (normalisation removes row norms)
    z = x - x.mean(axis=0)
    z2 = z.copy()
    z2[rng.integers(n)] *= rng.uniform(0.01, 100)
    np.testing.assert_allclose(E.centred_spectrum(z2), E.centred_spectrum(z), atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 17, 64])
@pytest.mark.parametrize("extra_dims", [0, 9])
def test_regular_simplex_gives_n_minus_1(n: int, extra_dims: int) -> None:
    # the N standard basis vectors of R^N form a regular simplex; pad and rotate it
    x = np.hstack([np.eye(n), np.zeros((n, extra_dims))])
    q, _ = np.linalg.qr(np.random.default_rng(n).standard_normal((n + extra_dims,) * 2))
    assert E.erank(x @ q) == pytest.approx(n - 1, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_give_float64_answer_of_same_values(dtype: torch.dtype) -> None:
    x = torch.randn(50, 96, generator=torch.Generator().manual_seed(0)).to(dtype)
    exact = reference_entropy(x.double().numpy())
    assert E.matrix_entropy(x) == pytest.approx(exact, rel=1e-9)
    assert E.covariance_spectrum(x).dtype == np.float64


def test_torch_and_numpy_agree_and_gram_equals_covariance() -> None:
    x = _matrix(30, 90, 1)
    t = torch.from_numpy(x)
    assert E.matrix_entropy(t) == E.matrix_entropy(x)
    # N < d goes through the Gram matrix; transpose-free check against the d x d path on N >= d
    s_gram = E.covariance_spectrum(x)
    z = x - x.mean(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    s_cov = np.sort(np.linalg.eigvalsh(z.T @ z))[::-1]
    s_cov = np.clip(s_cov, 0, None) / s_cov.clip(0).sum()
    np.testing.assert_allclose(s_gram, s_cov[:30], atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tensor() -> None:  # pragma: no cover - runs where a GPU exists
    x = torch.randn(40, 128, dtype=torch.float32)
    assert E.matrix_entropy(x.cuda()) == pytest.approx(E.matrix_entropy(x), rel=1e-9)


def test_normalized_entropy_is_h_over_log_d() -> None:
    x = _matrix(20, 32, 3)
    assert E.normalized_matrix_entropy(x) == pytest.approx(reference_entropy(x) / math.log(32), rel=1e-9)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.ones((1, 4)), "at least 2 tokens"),
        (np.ones((5, 4)), "identical"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or infinite"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or infinite"),
        (np.ones(4), "2-D"),
        (np.ones((2, 3, 4)), "2-D"),
        ([[1.0, 2.0], [3.0, 4.0]], "torch.Tensor or numpy"),
    ],
)
def test_bad_input_raises_clear_error(bad, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        E.erank(bad)


def test_zero_rows_after_centring_are_dropped_and_counted() -> None:
    # row 2 equals the mean of the three rows, so its centred row is zero
    x = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, -2.0, 0.0]])
    stats = E.erank_stats(x)
    assert stats.n_dropped == 1
    assert stats.n_tokens == 5
    assert stats.erank == pytest.approx(2.0, rel=1e-12)
    assert math.isfinite(stats.entropy)


def test_dataset_algorithms() -> None:
    h = np.array([1.0, 2.0, 3.0])
    assert E.dataset_erank(h, "a") == pytest.approx(math.exp(2.0))
    assert E.dataset_erank(h, "b") == pytest.approx(np.exp(h).mean())
    assert E.dataset_erank(h, "b") >= E.dataset_erank(h, "a")
    h0 = np.array([4.0, 4.5, 5.0])
    assert E.diff_erank(h0, h, "a") == pytest.approx(math.exp(4.5) - math.exp(2.0))
    assert E.diff_erank(h0, h, "b") == pytest.approx(np.exp(h0).mean() - np.exp(h).mean())
    with pytest.raises(ValueError, match="algorithm"):
        E.dataset_erank(h, "c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        E.dataset_erank([], "a")
    with pytest.raises(ValueError, match="NaN"):
        E.diff_erank([1.0, float("nan")], h)


def test_entropies_helper() -> None:
    xs = [_matrix(n, 8, n) for n in (3, 9, 20)]
    np.testing.assert_allclose(E.entropies(xs), [reference_entropy(x) for x in xs], rtol=1e-9)
