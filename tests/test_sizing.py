"""Job sizes: estimates against numbers derived here (the hub configs' real parameter counts, byte
counts of hidden states, an eRank's FLOPs), and what they map to."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import yaml
from helpers import REPO

from diff_erank import sizing
from diff_erank.config import load_config
from diff_erank.entries import DatasetEntry, ModelEntry
from diff_erank.provenance import provenance
from diff_erank.storage import write_parquet

GB = 1e9


def opt_config(d: int, layers: int, heads: int):
    """An OPT as its hub config.json gives it (FFN 4d, vocabulary 50,272, 2,048 positions)."""
    from transformers import OPTConfig

    return OPTConfig(
        hidden_size=d, num_hidden_layers=layers, ffn_dim=4 * d, num_attention_heads=heads,
        vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=d,
    )  # fmt: skip


@functools.cache
def opt13b() -> tuple[Any, int]:
    """facebook/opt-13b's config (40 blocks, d = 5120, 40 heads) and its real parameter count."""
    config = opt_config(5120, 40, 40)
    return config, real_params(config)


def real_params(config) -> int:
    """The parameter count of the model a config builds (on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def dump_gpu_bytes(batch_tokens: int) -> float:
    """The least OPT-13B's dump holds on the GPU: the float32 weights, and for one batch every
    block's hidden state (L + 1 of them, the embeddings' included) and the float32 logits."""
    config, params = opt13b()
    per_token = (config.num_hidden_layers + 1) * config.hidden_size + config.vocab_size
    return params * 4 + batch_tokens * per_token * 4


@pytest.fixture(scope="module")
def fig1():
    return load_config(REPO / "conf", ["experiment=fig1"])


def entries(cfg: dict[str, Any], model: str, dataset: str | None = None):
    """A config's model entry (and dataset entry) typed, as the Snakefile builds them."""
    m = ModelEntry.from_spec(cfg["models"][model])
    return m if dataset is None else (m, DatasetEntry.from_spec(cfg["datasets"][dataset]))


def test_opt13b_on_wikipedia_fits_the_hardware_it_asks_for(fig1) -> None:
    """Each estimate against what OPT-13B's hub config makes of it: its real parameter count, every
    token's hidden state in float32, a batch's activations, one text's eRank counted in FLOPs."""
    hub, P = opt13b()
    L, D = hub.num_hidden_layers, hub.hidden_size
    opt, wiki = entries(fig1, "opt-13b", "wikipedia")
    assert (opt.shape["num_layers"], opt.shape["hidden_size"]) == (L, D)
    assert (opt.shape["vocab_size"], opt.params) == (hub.vocab_size, pytest.approx(P, rel=0.02))
    texts = sizing.texts_size(wiki, opt)
    dump = sizing.dump_need(opt, texts, ["last"])
    # scratch: every token's last hidden state in float32; 10,000 articles of ~730 tokens is the
    # ~150 GB issue 12 measured for one dump
    tokens = 10_000 * 730
    assert dump.disk_mb * 1e6 == pytest.approx(tokens * D * 4, rel=0.03)
    assert 140 * GB < dump.disk_mb * 1e6 < 160 * GB
    # GPU: the float32 weights plus one 16,384-token batch's 41 hidden states and logits; fits an
    # 80 GB card
    weights = P * 4
    assert dump.gpu_mem_mb * 1e6 > dump_gpu_bytes(opt.batch_tokens)
    assert dump.gpu_mem_mb <= 80_000 and dump.gpus == 1
    # host: the weights are loaded on the CPU first
    assert dump.mem_mb * 1e6 > weights
    # the eRank step holds one text (2048 x 5120 in float64), not a shard of 256 (10.7 GB in float32)
    erank = sizing.erank_need(opt, texts, ["last"])
    one_text = opt.max_length * D * 8
    shard = opt.shard_texts * opt.max_length * D * 4
    assert one_text < erank.mem_mb * 1e6 < shard / 2
    # time: 10,000 texts of 730 x 5120, each a float64 Gram (2 N^2 d) and an N x N eigensolver (about
    # 10 N^3), over 4 threads at no more than 100 GFLOP/s each (a float64 GEMM on one modern core is
    # well under that): a floor no estimate may undercut; and within a day
    n = 730
    work = 10_000 * (2 * n * n * D + 10 * n**3)
    assert work / (4 * 100e9) / 60 < erank.runtime < 24 * 60, (work, erank.runtime)
    assert erank.threads == 4


def test_finetune_is_sized_for_adamw_and_overrides_win() -> None:
    table10 = load_config(REPO / "conf", ["experiment=table10"])
    opt = entries(table10, "opt-1_3b")
    need = sizing.finetune_need(opt, opt.finetune["further"])
    # float32 weights, gradients and AdamW's two moments: 16 bytes for each of OPT-1.3B's parameters
    # (facebook/opt-1.3b: 24 blocks, d = 2048, 32 heads), 21 GB
    params = real_params(opt_config(2048, 24, 32))
    assert opt.params == pytest.approx(params, rel=0.02)
    assert need.gpu_mem_mb * 1e6 > 16 * params > 20 * GB
    bigger = opt.updated(resources={"gpus": 1, "gpu_mem_gb": 141, "mem_mb": 123456})
    over = sizing.finetune_need(bigger, opt.finetune["further"])
    assert (over.gpu_mem_mb, over.mem_mb) == (141_000, 123456)


def test_prepared_texts_replace_the_size_hint(tmp_path, fig1) -> None:
    """Once prepared, a dataset is sized from its own texts' lengths: as many texts as the table
    holds, each at least the tokens an English BPE (4-4.5 characters a token) makes of it and at
    most max_length; the dump stores every token's state for each layer asked for."""
    import math

    import pandas as pd

    opt, wiki = entries(fig1, "opt-125m", "wikipedia")
    short, long, over = "a" * 35, "c" * 7000, "b" * 12000  # 12,000 characters: over 2,048 tokens
    texts = [short, over, *[long] * 200]
    path = tmp_path / "t.parquet"
    df = pd.DataFrame({"text_id": range(len(texts)), "text": texts})
    write_parquet(df, path, provenance(wiki.spec, n_chars=[len(t) for t in texts]))
    size = sizing.texts_size(wiki, opt, path)
    assert size.known and (size.n, size.longest) == (202, opt.max_length)
    bpe = math.ceil(35 / 4.5) + opt.max_length + 200 * math.ceil(7000 / 4.5)
    assert bpe <= size.tokens <= 35 / 2 + opt.max_length + 200 * 7000 / 2
    dump = sizing.dump_need(opt, size, ["embeddings", "last"])
    d = opt.shape["hidden_size"]
    assert dump.disk_mb * 1e6 == pytest.approx(size.tokens * d * 4 * 2, rel=0.05)
    assert dump.disk_mb * 1e6 >= size.tokens * d * 4 * 2


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
def test_model_shapes_agree_with_their_parameter_counts(name: str) -> None:
    """hidden size and layers (from the hub configs) against the nominal params, independently:
    a decoder block has ~12 d^2 weights, embeddings V d (Pythia unties its output layer)."""
    entry = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
    if entry.get("shape") is None:
        pytest.skip("a base entry or a zoo model (sized from its train section)")
    s = entry["shape"]
    d, layers, vocab = s["hidden_size"], s["num_layers"], s["vocab_size"]
    embeddings = vocab * d * (2 if entry["family"] == "pythia" else 1)
    estimate = 12 * layers * d**2 + embeddings
    # OpenELM scales its layers' widths (smaller in the first blocks), so 12 L d^2 overcounts
    tolerance = 0.45 if entry["family"] == "openelm" else 0.2
    assert estimate == pytest.approx(float(entry["params"]), rel=tolerance)


def test_gpu_memory_becomes_the_sites_gpu_types() -> None:
    types = {"a100_40g": 40, "a100_80g": 80, "h100": 80, "h200": 141}
    assert sizing.gpu_request(75_000, {"gpu_types": types, "gpu_request": "constraint"}) == {
        "gpu": 1,
        "constraint": "a100_80g|h100|h200",
    }
    assert sizing.gpu_request(75_000, {"gpu_types": types, "gpu_request": "gpu_model"}) == {
        "gpu": 1,
        "gpu_model": "a100_80g",
    }
    # the plugin refuses gpu and a gpu gres together
    assert sizing.gpu_request(30_000, {"gpu_types": types, "gpu_request": "gres"}) == {
        "gpu": 0,
        "gres": "gpu:a100_40g:1",
    }
    assert sizing.gpu_request(30_000, {"gpu_types": None, "gpu_request": "constraint"}) == {"gpu": 1}
    with pytest.raises(sizing.ResourceError, match=r"needs 150 GB .* resources.gpu_mem_gb"):
        sizing.gpu_request(150_000, {"gpu_types": types, "gpu_request": "constraint"})


def test_plan_prints_fig1s_bill(capsys, tmp_path, monkeypatch, fig1) -> None:
    """The totals, against the DAG's job count, and scratch and peak GPU worked out here from the shapes."""
    from diff_erank.cli import main

    monkeypatch.chdir(tmp_path)  # an empty results_dir: nothing cached
    assert main(["plan", "--conf-dir", str(REPO / "conf"), "experiment=fig1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:1].isalpha()}
    # 4 prepare + 20 dump + 20 erank (one each per model x dataset, both variants) + 20 diff
    # + resolved_config + report + all: Snakemake's 67 (tests/test_experiments.py)
    assert rows["total"][0] == "67" and rows["dump"][:2] == ["20", "0"]
    # scratch: two variants x every token of the four datasets (dolly's 4,500 rows with a context,
    # 10,000 Wikipedia articles and OpenWebText2 pages, hh-rlhf's 8,550 test dialogues, at the
    # mean tokens each entry gives) x the five hidden sizes, in float32
    texts = {"dolly-15k": 4500, "wikipedia": 10_000, "openwebtext2": 10_000, "hh-rlhf": 8550}
    tokens = sum(n * fig1["datasets"][d]["size_hint"]["mean_tokens"] for d, n in texts.items())
    hidden = sum(m["shape"]["hidden_size"] for m in fig1["models"].values())
    assert tokens * hidden * 4 * 2 > 2 * 1000 * GB  # all of fig1's dumps: over 2 TB, never at once
    # node-local scratch: the largest single job, OPT-13B (d = 5120) on OpenWebText2 (the longest
    # texts), both variants, float32; nothing else of a dump is left anywhere
    owt = 10_000 * fig1["datasets"]["openwebtext2"]["size_hint"]["mean_tokens"]
    node_gb = float(rows["total"][6].replace(",", ""))
    assert node_gb * GB == pytest.approx(2 * owt * 5120 * 4, rel=0.03)
    # shared: only the eRank tables, a row per text and variant (a few hundred bytes each)
    shared_gb = float(rows["total"][7].replace(",", ""))
    rows_in_all = 5 * 2 * sum(texts.values())
    assert rows_in_all * 50 < shared_gb * GB < rows_in_all * 1000 + 20 * 10 * 1e6
    # peak GPU: OPT-13B's dump, on an 80 GB card
    least = dump_gpu_bytes(fig1["models"]["opt-13b"]["batch_tokens"])
    assert least < float(rows["total"][4]) * GB <= 80 * GB
    # store: spectra keeps min(tokens, d) float64 eigenvalues a text (texts shorter than d: 8 bytes a
    # token): OPT-13B on OpenWebText2 is ~72 MB a variant, not ~190 GB
    assert main(["plan", "--conf-dir", str(REPO / "conf"), "experiment=fig1", "model.store=spectra"]) == 0
    rows = {
        line.split()[0]: line.split()[1:]
        for line in capsys.readouterr().out.splitlines()
        if line[:1].isalpha()
    }
    assert float(rows["total"][6]) * GB == pytest.approx(2 * (owt * 8 * 1.02 + 50e6), abs=0.05 * GB)
    assert float(rows["total"][6]) < 1


def test_spectra_are_sized_for_what_they_write(fig1) -> None:
    """store: spectra writes one float64 eigenvalue per token of a text shorter than d (its Gram
    matrix's rank), at most d per text; the eRank step then reads those, not hidden states."""
    opt = entries(fig1, "opt-13b")
    texts = sizing.Texts(n=1000, tokens=1000 * 900, longest=2048, known=True)
    hidden = sizing.dump_need(opt, texts, ["last"])
    spectra = sizing.dump_need(opt.updated(store="spectra"), texts, ["last", "first"])
    assert hidden.disk_mb * 1e6 == pytest.approx(900_000 * 5120 * 4, rel=0.03)
    # 2,048-token texts can exceed d = 5120? no: min(tokens, d) = tokens here, 8 bytes each, 2 layers
    assert spectra.disk_mb * 1e6 == pytest.approx(2 * 900_000 * 8 * 1.02 + 50e6, rel=0.01)
    assert spectra.mem_mb < hidden.mem_mb  # a shard of spectra, not of hidden states
    wide = sizing.Texts(n=10, tokens=10 * 8000, longest=8000, known=True)  # texts longer than d
    assert sizing.spectra_bytes(wide, 5120) == 10 * 5120 * 8
    slow = sizing.erank_need(opt, texts, ["last"])
    fast = sizing.erank_need(opt.updated(store="spectra"), texts, ["last"])
    assert fast.runtime < slow.runtime and fast.mem_mb < slow.mem_mb


def test_without_gpu_types_a_job_over_the_sites_gpu_memory_stops() -> None:
    """cluster.gpu_mem_gb (no gpu_types): a job needing more is refused naming it, not sent to any
    GPU; a retry is never refused; a CPU job gives no GPU keys (device=cpu with gpu_types)."""
    site = {"gpu_types": None, "gpu_request": "constraint", "gpu_mem_gb": 40}
    assert sizing.gpu_request(39_000, site) == {"gpu": 1}
    with pytest.raises(
        sizing.ResourceError, match=r"^job dump \(key=k\) needs 75\.0 GB .*cluster\.gpu_mem_gb"
    ):
        sizing.gpu_request(75_000, site, "job dump (key=k)")
    assert sizing.gpu_request(75_000, site, retry=True) == {"gpu": 1}
    types = {"gpu_types": {"a100": 40}, "gpu_request": "constraint"}
    assert sizing.gpu_request(0, types) == {"gpu": 0, "constraint": None}  # dropped by Snakemake
    assert sizing.gpu_request(0, {**types, "gpu_request": "gres"}) == {"gpu": 0, "gres": None}
    assert sizing.gpu_request(50_000, types, retry=True) == {"gpu": 1, "constraint": "a100"}


def test_retries_ask_for_more_and_runtimes_meet_the_partition_limit() -> None:
    need = sizing.Need(mem_mb=1000, runtime=60, gpus=1, gpu_mem_mb=20_000)
    assert sizing.grown(need, 1) is need
    again = sizing.grown(need, 2)
    assert (again.mem_mb, again.runtime, again.gpu_mem_mb) == (1500, 90, 30_000)
    assert sizing.grown(need, 3).mem_mb == 2000
    assert sizing.check_runtime(60, {"max_runtime": 60}, "job dump (key=k)") == 60
    with pytest.raises(
        sizing.ResourceError, match=r"^job dump \(key=k\) asks for 61 minutes .*max_runtime is 60"
    ):
        sizing.check_runtime(61, {"max_runtime": 60}, "job dump (key=k)")


def test_an_erank_job_over_its_memory_fails_naming_the_resource(tiny_opt, texts_file, tmp_path) -> None:
    """Above its mem_mb the step stops with the resource and the override, not a silent OOM kill."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers.models import resolved

    from diff_erank.dump import dump

    out = tmp_path / "dump"
    dump(resolved(tiny_opt), "trained", texts_file, out, device="cpu")
    cli = str(Path(sys.executable).with_name("diff-erank"))
    small = subprocess.run(
        [cli, "measure", "--dump", str(out), "--out", str(tmp_path / "a.parquet"), "--mem-mb", "100"],
        capture_output=True,
        text=True,
    )
    assert small.returncode == 2, small.stderr[-2000:]
    assert "out of host memory (this job asked for mem_mb=100" in small.stderr
    assert "--set-resources erank:mem_mb=" in small.stderr and not (tmp_path / "a.parquet").exists()
    enough = subprocess.run(
        [cli, "measure", "--dump", str(out), "--out", str(tmp_path / "b.parquet"), "--mem-mb", "2000"],
        capture_output=True,
        text=True,
    )
    assert enough.returncode == 0, enough.stderr[-2000:]


def test_a_trajectory_is_many_bounded_jobs(tmp_path) -> None:
    """cluster.variants_per_job splits a model's variants into jobs, in order, each its own cache
    key; a model with no more variants than that keeps the one key it always had."""
    from diff_erank.cache import Keys, set_key

    run = str(tmp_path / "results" / "ci")
    whole = Keys(load_config(REPO / "conf", ["experiment=ci"]), run)
    cfg = load_config(REPO / "conf", ["experiment=ci", "cluster.variants_per_job=2"])
    split = Keys(cfg, run)
    job = ("zoo-opt-xs", "topics")
    assert whole.set_keys[job] == [whole.sets[job]] == [set_key(cfg, *job, run)]  # unchanged
    keys = split.set_keys[job]
    assert [split.variants_of(k) for k in keys] == [["trained", "rev-step0"], ["rev-step20"]]
    assert len(set(keys)) == 2 and whole.sets[job] not in keys
    assert split.source_tables(*job) == [split.table_path(k) for k in keys]
    for k in keys:  # each job's dump names only its own variants
        assert split.jobs_of[k] == job and split.describe(k)["variants"].keys() == set(split.variants_of(k))


def test_an_out_of_memory_while_loading_says_so() -> None:
    """Moving the weights to a too-small GPU fails before any batch: the message says so and points
    at the GPU request, not at "batches were halved down to 1". (No GPU here: a module whose move
    raises CUDA's own out-of-memory error stands for the card; a real one raises the same type.)"""
    import torch

    from diff_erank.dump import to_device

    class TooBig(torch.nn.Linear):
        def to(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 52.00 GiB")

    with pytest.raises(sizing.ResourceError, match=r"while loading the weights of trained \(0\.0 GB") as err:
        to_device(TooBig(100, 100), "cpu", "trained")
    assert "cluster.gpu_types" in str(err.value) and "halved" not in str(err.value)


def test_size_labels_are_read_once_for_ordering_and_multimodal_jobs() -> None:
    """One reading of a size label: the report orders rows by it, and a multi-modal job is sized
    from it (LLaVA's LLM; its vision tower is small beside it)."""
    assert sizing.size_value("1.3b") == 1.3e9 and sizing.size_value("1_1b") == 1.1e9
    assert sizing.size_value("125m") == 1.25e8 and sizing.size_value("13B") == 13e9
    assert math.isnan(sizing.size_value("-"))
    assert sizing._mm_params({"size": "13b"}) == 13e9 and sizing._mm_params({"size": "1_5b"}) == 1.5e9
