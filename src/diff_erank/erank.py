"""Effective rank (eRank) and matrix entropy of one text's hidden states.

This module is the metric of Diff-eRank (Wei et al., NeurIPS 2024) and nothing else: it depends
on torch and numpy only, so that a reader can check every line against the paper.

For one text with hidden states R (N tokens x d dimensions):

1. centre over the tokens:            z_i = r_i - mean(r)
2. normalise every row to unit norm:  z_i / ||z_i||
3. Sigma = (1/N) sum_i z_i z_i^T      (d x d, PSD, trace 1)
4. H = -sum_k lambda_k log lambda_k   over the eigenvalues of Sigma / trace(Sigma), 0 log 0 = 0
5. eRank = exp(H)

The non-zero eigenvalues of Z^T Z (d x d) and of Z Z^T (N x N) coincide, so the smaller of the two
is decomposed. Everything is computed in float64 whatever the input dtype: the authors' float32
d x d SVD turns near-zero eigenvalues into noise that adds entropy (2e-5 to 1e-3 relative).

Degenerate input policy (the authors' code silently returns NaN there):

* fewer than 2 tokens, a non-2-D array or non-finite values raise ``ValueError``;
* a row that is zero after centring (a token equal to the mean of the text) has no direction;
  such rows are *dropped* before normalisation and their number is reported in
  :class:`ERankStats` ``n_dropped``. A row counts as zero when its centred norm is at most
  ``ZERO_ROW_RTOL`` times the largest row norm of the uncentred input (the data's scale), which
  absorbs the rounding of the mean;
* if every centred row is zero (all tokens identical) the eRank is undefined: ``ValueError``.

torch is imported by the functions that measure a text, not by the module: the dataset-level
step (Diff-eRank from stored entropies, numpy only) then starts without torch's 1.5 s import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayLike = "torch.Tensor | np.ndarray"
Algorithm = Literal["a", "b"]
#: The two ways to make one eRank of a dataset from its texts' entropies (:func:`dataset_erank`).
ALGORITHMS: tuple[Algorithm, ...] = ("a", "b")
#: The paper's standard algorithm; (b) is its ablation (Table 9).
STANDARD_ALGORITHM: Algorithm = "a"

#: Relative tolerance under which a centred row is treated as the zero vector.
ZERO_ROW_RTOL = 1e-10


@dataclass(frozen=True)
class ERankStats:
    """Everything the metric yields for one text: the pipeline stores all of it per text."""

    n_tokens: int
    n_dropped: int
    dim: int
    entropy: float
    erank: float

    @property
    def normalized_entropy(self) -> float:
        """H / log(d), the metric of the paper's first version."""
        return self.entropy / math.log(self.dim)


def _as_float64(hidden: ArrayLike) -> torch.Tensor:
    """Return ``hidden`` as a float64 tensor on its own device, checking rank and finiteness."""
    import torch

    if isinstance(hidden, np.ndarray):
        if not np.issubdtype(hidden.dtype, np.number):
            raise ValueError(f"hidden states must be numeric, got dtype {hidden.dtype}")
        t = torch.from_numpy(np.asarray(hidden, dtype=np.float64))
    elif isinstance(hidden, torch.Tensor):
        t = hidden.detach().to(torch.float64)
    else:
        raise ValueError(f"hidden states must be a torch.Tensor or numpy.ndarray, got {type(hidden)!r}")
    if t.ndim != 2:
        raise ValueError(f"hidden states must be 2-D (tokens x dims), got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"eRank needs at least 2 tokens, got {t.shape[0]}")
    if t.shape[1] < 1:
        raise ValueError("hidden states have zero dimensions")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("hidden states contain NaN or infinite values")
    return t


def _normalised_centred_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Steps 1-2: centre, drop rows that are zero after centring, scale rows to unit norm."""
    import torch

    scale = torch.linalg.vector_norm(t, dim=1).max()
    z = t - t.mean(dim=0, keepdim=True)
    norms = torch.linalg.vector_norm(z, dim=1)
    keep = norms > ZERO_ROW_RTOL * scale
    n_keep = int(keep.sum())
    if n_keep == 0:
        raise ValueError(
            "all tokens are identical after centring (every centred row is zero): eRank is undefined"
        )
    return z[keep] / norms[keep, None], t.shape[0] - n_keep


def centred_spectrum(z: ArrayLike) -> np.ndarray:
    """Steps 3-4 on rows that are already centred and non-zero: normalise, decompose.

    Rows are normalised here, so scaling any row leaves the spectrum unchanged; exposed so that
    this invariance (which holds after centring, not before) can be checked directly.
    """
    import torch

    t = _as_float64(z)
    norms = torch.linalg.vector_norm(t, dim=1)
    if bool((norms == 0).any()):
        raise ValueError("centred rows must be non-zero")
    return _spectrum_of_unit_rows(t / norms[:, None])


def _spectrum_of_unit_rows(z: torch.Tensor) -> np.ndarray:
    """Eigenvalues of Z^T Z / trace, via the N x N Gram matrix when N < d."""
    import torch

    n, d = z.shape
    gram = z @ z.T if n < d else z.T @ z
    eig = torch.linalg.eigvalsh(gram).clamp_min_(0.0)  # eigvalsh gives -1e-17 for true zeros
    eig = eig / eig.sum()
    return eig.flip(0).cpu().numpy()


def covariance_spectrum(hidden: ArrayLike) -> np.ndarray:
    """Eigenvalues (float64, descending, summing to 1) of the trace-normalised covariance."""
    return _spectrum_and_dropped(hidden)[0]


def _spectrum_and_dropped(hidden: ArrayLike) -> tuple[np.ndarray, int]:
    z, n_dropped = _normalised_centred_rows(_as_float64(hidden))
    return _spectrum_of_unit_rows(z), n_dropped


def spectrum_and_dropped(hidden: ArrayLike) -> tuple[np.ndarray, int]:
    """The covariance spectrum and the number of dropped rows, computed on ``hidden``'s device.

    What a dump in ``store: spectra`` mode keeps per text and layer instead of the hidden states:
    :func:`spectrum_entropy` of it is the text's matrix entropy.
    """
    return _spectrum_and_dropped(hidden)


def spectrum_entropy(spectrum: np.ndarray) -> float:
    """Von Neumann entropy -sum p log p of a probability spectrum, with 0 log 0 = 0."""
    p = np.asarray(spectrum, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def erank_stats(hidden: ArrayLike) -> ERankStats:
    """All per-text quantities at once (one eigendecomposition)."""
    spectrum, n_dropped = _spectrum_and_dropped(hidden)
    h = spectrum_entropy(spectrum)
    return ERankStats(
        n_tokens=int(hidden.shape[0]),
        n_dropped=n_dropped,
        dim=int(hidden.shape[1]),
        entropy=h,
        erank=math.exp(h),
    )


def matrix_entropy(hidden: ArrayLike) -> float:
    """Matrix (von Neumann) entropy H of one text's hidden states."""
    return spectrum_entropy(covariance_spectrum(hidden))


def erank(hidden: ArrayLike) -> float:
    """Effective rank exp(H) of one text's hidden states; 1 <= eRank <= min(N - 1, d)."""
    return math.exp(matrix_entropy(hidden))


def normalized_matrix_entropy(hidden: ArrayLike) -> float:
    """H / log(d): the metric of the paper's v1 ("matrix entropy"); lower is better there."""
    return erank_stats(hidden).normalized_entropy


def entropies(hiddens: Iterable[ArrayLike]) -> np.ndarray:
    """Matrix entropy of each text in turn (the per-text input of the dataset metrics)."""
    return np.array([matrix_entropy(h) for h in hiddens], dtype=np.float64)


def _check_entropies(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of entropies, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (a < 0).any():
        raise ValueError(f"{name} contains negative entropies")
    return a


def dataset_erank(entropies: Sequence[float] | np.ndarray, algorithm: Algorithm = "a") -> float:
    """eRank of a dataset from its per-text entropies.

    Algorithm (a), the paper's standard, is exp(mean H); algorithm (b), its ablation, is
    mean(exp H). By Jensen (b) >= (a).
    """
    a = _check_entropies(entropies, "entropies")
    if algorithm == "a":
        return float(math.exp(a.mean()))
    if algorithm == "b":
        return float(np.exp(a).mean())
    raise ValueError(f"algorithm must be 'a' or 'b', got {algorithm!r}")


def dataset_eranks(entropies: np.ndarray, algorithm: Algorithm = "a") -> np.ndarray:
    """:func:`dataset_erank` of each row of a 2-D array of entropies (one row per resample),
    unchecked: the bootstrap's inner loop."""
    if algorithm == "a":
        return np.exp(entropies.mean(1))
    if algorithm == "b":
        return np.exp(entropies).mean(1)
    raise ValueError(f"algorithm must be 'a' or 'b', got {algorithm!r}")


def diff_erank(
    entropies_untrained: Sequence[float] | np.ndarray,
    entropies_trained: Sequence[float] | np.ndarray,
    algorithm: Algorithm = "a",
) -> float:
    """Diff-eRank of a dataset: eRank(untrained M0) - eRank(trained M1) (positive = noise removed)."""
    return dataset_erank(entropies_untrained, algorithm) - dataset_erank(entropies_trained, algorithm)
