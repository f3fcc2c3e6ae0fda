"""Per-text eRank of a dump: token count, matrix entropy, eRank and loss, per layer.

Streams the shards, so peak memory is one shard whatever the number of texts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from diff_erank.dump import iter_spectra, iter_texts, read_manifest
from diff_erank.erank import ERankStats, erank_stats, spectrum_entropy
from diff_erank.progress import tqdm
from diff_erank.provenance import provenance
from diff_erank.storage import read_parquet, write_parquet

COLUMNS = [
    "position",
    "text_id",
    "layer",
    "layer_index",
    "n_tokens",
    "n_dropped",
    "dim",
    "entropy",
    "erank",
    "normalized_entropy",
    "loss",
]


def _stats(dump_dir: str | Path, manifest: dict[str, Any]):
    """``(position, loss, {layer: ERankStats})`` per text, from either kind of dump."""
    if manifest.get("store") == "spectra":
        dims = {n: v["dim"] for n, v in manifest["layers"].items()}
        for pos, loss, n_tokens, layers in iter_spectra(dump_dir):
            out = {}
            for name, (spectrum, n_dropped) in layers.items():
                h = spectrum_entropy(spectrum)
                out[name] = ERankStats(n_tokens, n_dropped, dims[name], h, math.exp(h))
            yield pos, loss, out
    else:
        for pos, loss, layers in iter_texts(dump_dir):
            yield pos, loss, {name: erank_stats(hidden) for name, hidden in layers.items()}


def measure(dump_dir: str | Path, texts_path: str | Path | None = None) -> pd.DataFrame:
    """One row per text and layer; a ``store: spectra`` dump gives the same rows from its spectra."""
    manifest = read_manifest(dump_dir)
    text_ids = read_parquet(texts_path, columns=["text_id"])["text_id"] if texts_path else None
    rows: list[dict[str, Any]] = []
    for pos, loss, layers in tqdm(
        _stats(dump_dir, manifest), total=manifest["n_texts"], desc="erank", mininterval=2.0
    ):
        for name, s in layers.items():
            rows.append(
                {
                    "position": pos,
                    "text_id": int(text_ids.iloc[pos]) if text_ids is not None else pos,
                    "layer": name,
                    "layer_index": manifest["layers"][name]["index"],
                    "n_tokens": s.n_tokens,
                    "n_dropped": s.n_dropped,
                    "dim": s.dim,
                    "entropy": s.entropy,
                    "erank": s.erank,
                    "normalized_entropy": s.entropy / math.log(s.dim),
                    "loss": loss,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["layer", "position"], ignore_index=True)


def measure_to_file(
    dump_dir: str | Path, out: str | Path, texts_path: str | Path | None = None
) -> pd.DataFrame:
    manifest = read_manifest(dump_dir)
    df = measure(dump_dir, texts_path)
    dump_facts = {k: v for k, v in manifest.items() if k not in ("shards", "provenance")}
    write_parquet(df, out, provenance(dump=dump_facts, dump_provenance=manifest["provenance"]))
    return df
