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


@torch.no_grad()
def authors_loop(model_dir, texts: list[str], max_length: int) -> tuple[dict[str, list[float]], int]:
    """Their loop: the trained ``AutoModel`` and one seeded ``from_config`` init (seed 0), one text at
    a time, no LM head, no loss; per-text eRanks of each (``trained``, ``untrained``) and the tokens."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    trained = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    untrained = AutoModel.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32).eval()
    eranks: dict[str, list[float]] = {}
    n_tok = 0
    for name, model in (("trained", trained), ("untrained", untrained)):
        eranks[name] = []
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            eranks[name].append(authors_erank(model(input_ids=ids).last_hidden_state[0]))
            n_tok += ids.shape[1]
    return eranks, n_tok
