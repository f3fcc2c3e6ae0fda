"""Per-text metrics beside the matrix entropy: one registration each.

The matrix entropy H of each text (``erank.py``, the paper's metric) is what Diff-eRank is made
of, by algorithm (a) or (b); it is always measured. Every other per-text number is a registered
metric, a function of the text's :class:`~diff_erank.erank.ERankStats` and of its covariance
spectrum (eigenvalues, descending, summing to 1)::

    register_metric("erank", lambda stats, spectrum: stats.erank)
    register_metric("normalized_entropy", lambda stats, spectrum: stats.normalized_entropy, summary=True)

- ``measure`` writes each metric as a column of the per-text tables (between ``entropy`` and
  ``loss``, in registration order);
- with ``summary=True`` the Diff-eRank table (``aggregate.compare``) also carries
  ``<name>_trained``, the metric's mean over the compared texts of the trained model (of the
  stage, for a stage row), and so the report's ``tables/all``.

A new metric changes what the per-text tables hold: bump ``cache.MEASURE_VERSION`` with it, so
that cached tables are measured again. numpy and the stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diff_erank.erank import ERankStats

PerText = Callable[[ERankStats, np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    """A registered per-text metric: its column name, its function, and whether the Diff-eRank
    table carries its mean over the trained model's texts (``<name>_trained``)."""

    name: str
    per_text: PerText
    summary: bool = False


#: Every registered metric by name, in registration order (the order of the columns).
METRICS: dict[str, Metric] = {}

#: Columns of the per-text tables that are not registered metrics.
RESERVED = ("position", "text_id", "layer", "layer_index", "n_tokens", "n_dropped", "dim", "entropy", "loss")


def register_metric(name: str, per_text: PerText | None = None, *, summary: bool = False):
    """Register a per-text metric; without ``per_text``, a decorator for the function."""
    if per_text is None:

        def decorator(fn: PerText) -> PerText:
            register_metric(name, fn, summary=summary)
            return fn

        return decorator
    if name in METRICS or name in RESERVED:
        raise ValueError(f"a per-text column named {name!r} already exists")
    METRICS[name] = Metric(name, per_text, summary)
    return METRICS[name]


def per_text_values(stats: ERankStats, spectrum: np.ndarray) -> dict[str, float]:
    """Every registered metric of one text, by name."""
    return {name: m.per_text(stats, spectrum) for name, m in METRICS.items()}


def summarised() -> list[str]:
    """The metrics whose mean over the trained model's texts the Diff-eRank table carries."""
    return [name for name, m in METRICS.items() if m.summary]


# -- the metrics of the paper --------------------------------------------------------------------

#: eRank = exp(H) of each text (the dataset's eRank is made from the entropies, not from these).
register_metric("erank", lambda stats, spectrum: stats.erank)


@register_metric("normalized_entropy", summary=True)
def normalized_entropy(stats: ERankStats, spectrum: np.ndarray) -> float:
    """H / log(d), the metric of the paper's first version (Table 11's ``normalized_matrix_entropy``)."""
    return stats.entropy / math.log(stats.dim)
