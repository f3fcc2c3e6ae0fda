"""diff-erank: measure language models by the geometry of their hidden states (Diff-eRank).

The metric lives in :mod:`diff_erank.erank` (torch/numpy only); everything else is the pipeline
around it. Nothing is re-exported here so that ``diff_erank.erank`` always names the module.
"""

__version__ = "0.1.0"
