"""Per-text eRank of a dump: token count, matrix entropy, the registered metrics (eRank, ...) and
loss, per layer.

Streams the shards, so peak memory is one text whatever the number of texts. A set of dumps
(every variant of a model on a dataset, :func:`diff_erank.dump.dump_set`) gives one table per
variant, measured in one process.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diff_erank.dump import iter_spectra, iter_texts, read_manifest, set_variants
from diff_erank.erank import ERankStats, spectrum_and_dropped, spectrum_entropy
from diff_erank.metrics import METRICS, per_text_values
from diff_erank.progress import tqdm
from diff_erank.provenance import provenance
from diff_erank.storage import atomic_publish_dir, read_parquet, write_parquet


def columns() -> list[str]:
    """The per-text table's columns: the registered metrics (``metrics``) between entropy and loss."""
    fixed = ["position", "text_id", "layer", "layer_index", "n_tokens", "n_dropped", "dim", "entropy"]
    return [*fixed, *METRICS, "loss"]


def _text(n_tokens: int, dim: int, spectrum: np.ndarray, n_dropped: int) -> tuple[ERankStats, np.ndarray]:
    h = spectrum_entropy(spectrum)
    return ERankStats(n_tokens, n_dropped, dim, h, math.exp(h)), spectrum


def _stats(dump_dir: str | Path, manifest: dict[str, Any]):
    """``(position, loss, {layer: (ERankStats, spectrum)})`` per text, from either kind of dump."""
    if manifest.get("store") == "spectra":
        dims = {n: v["dim"] for n, v in manifest["layers"].items()}
        for pos, loss, n_tokens, layers in iter_spectra(dump_dir):
            yield pos, loss, {name: _text(n_tokens, dims[name], *sd) for name, sd in layers.items()}
    else:
        for pos, loss, layers in iter_texts(dump_dir):
            yield pos, loss, {
                name: _text(int(hidden.shape[0]), int(hidden.shape[1]), *spectrum_and_dropped(hidden))
                for name, hidden in layers.items()
            }


def measure(dump_dir: str | Path, texts_path: str | Path | None = None) -> pd.DataFrame:
    """One row per text and layer; a ``store: spectra`` dump gives the same rows from its spectra."""
    manifest = read_manifest(dump_dir)
    text_ids = read_parquet(texts_path, columns=["text_id"])["text_id"] if texts_path else None
    rows: list[dict[str, Any]] = []
    for pos, loss, layers in tqdm(
        _stats(dump_dir, manifest), total=manifest["n_texts"], desc="erank", mininterval=2.0
    ):
        for name, (s, spectrum) in layers.items():
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
                    **per_text_values(s, spectrum),
                    "loss": loss,
                }
            )
    return pd.DataFrame(rows, columns=columns()).sort_values(["layer", "position"], ignore_index=True)


def measure_to_file(
    dump_dir: str | Path, out: str | Path, texts_path: str | Path | None = None
) -> pd.DataFrame:
    manifest = read_manifest(dump_dir)
    df = measure(dump_dir, texts_path)
    dump_facts = {k: v for k, v in manifest.items() if k not in ("shards", "provenance")}
    write_parquet(df, out, provenance(dump=dump_facts, dump_provenance=manifest["provenance"]))
    return df


def measure_set_to_dir(
    dump_dir: str | Path,
    out_dir: str | Path,
    texts_path: str | Path | None = None,
    publish: Callable[[Path, Path], Any] = atomic_publish_dir,
) -> int:
    """``<out>/<variant>.parquet`` for every variant of a set of dumps; published when all are done
    (by ``publish``: the shared cache's is :func:`diff_erank.cache.publish_entry`).

    Returns the number of rows written.
    """
    dump_dir, out_dir = Path(dump_dir), Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows = 0
    for variant in set_variants(dump_dir):
        rows += len(measure_to_file(dump_dir / variant, partial / f"{variant}.parquet", texts_path))
    publish(partial, out_dir)
    return rows
