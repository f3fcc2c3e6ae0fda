"""The authors' published eRank computation, kept verbatim in spirit as a baseline.

float32, d x d covariance, ``torch.svd``, one text at a time (github.com/waltonfuture/Diff-eRank).
Used only by the benchmarks: the project's own metric is :mod:`diff_erank.erank`.
"""

from __future__ import annotations

import math

import torch


def authors_erank(hidden: torch.Tensor) -> float:
    """eRank as the authors compute it (NaN for identical tokens, float32 throughout)."""
    with torch.no_grad():
        r = hidden.float()
        r = r - r.mean(dim=0)
        r = r / torch.norm(r, p=2, dim=1, keepdim=True)
        z = torch.nn.functional.normalize(r, dim=1)
        a = torch.matmul(z.T, z) / z.shape[0]
        eig_val = torch.svd(a / torch.trace(a))[1]
        entropy = -(eig_val * torch.log(eig_val)).nansum().item()
        return math.exp(entropy)
