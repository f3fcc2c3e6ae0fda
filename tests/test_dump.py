"""Hidden-state dumps on tiny real models: exactness, batching, skipping, atomicity, resumption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.models import model_spec, resolved
from transformers import AutoModel, AutoTokenizer

from diff_erank import dump as D
from diff_erank.config import ConfigError
from diff_erank.entries import resolve_source
from diff_erank.measure import measure
from diff_erank.models import load_variant


def _collect(dump_dir: Path) -> dict[int, tuple[float, dict[str, torch.Tensor]]]:
    return {pos: (loss, layers) for pos, loss, layers in D.iter_texts(dump_dir)}


def test_last_layer_is_automodel_last_hidden_state(tiny_model, texts_file, tmp_path) -> None:
    spec = resolved(tiny_model)
    out = tmp_path / "dump"
    manifest = D.dump(spec, "trained", texts_file, out, layers=["first", "last"], device="cpu")
    assert manifest["layers"]["last"]["index"] == manifest["num_hidden_layers"] == 2
    base = AutoModel.from_pretrained(tiny_model / "main", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model / "main")
    texts = pd.read_parquet(texts_file)["text"]
    got = _collect(out)
    assert len(got) == manifest["n_texts"] > 5
    for pos, (_, layers) in got.items():
        ids = tok(texts[pos], return_tensors="pt")["input_ids"][:, : spec.entry.max_length]
        with torch.no_grad():
            ref = base(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(layers["last"], ref, rtol=1e-5, atol=1e-5)
        assert layers["first"].shape == ref.shape


def test_batched_equals_one_text_at_a_time(tiny_model, texts_file, tmp_path) -> None:
    batched = D.dump(
        resolved(tiny_model, batch_tokens=4096, shard_texts=100),
        "trained",
        texts_file,
        tmp_path / "b",
        device="cpu",
    )
    single = D.dump(
        resolved(tiny_model, batch_tokens=1, shard_texts=1),
        "trained",
        texts_file,
        tmp_path / "s",
        device="cpu",
    )
    assert batched["n_texts"] == single["n_texts"]
    b, s = _collect(tmp_path / "b"), _collect(tmp_path / "s")
    assert b.keys() == s.keys()
    for pos in b:
        assert b[pos][0] == pytest.approx(s[pos][0], rel=1e-5)
        torch.testing.assert_close(b[pos][1]["last"], s[pos][1]["last"], rtol=1e-5, atol=1e-5)
    mb, ms = measure(tmp_path / "b"), measure(tmp_path / "s")
    pd.testing.assert_series_equal(mb["erank"], ms["erank"], rtol=1e-6)


def test_batch_planning_respects_budget() -> None:
    lengths = [5, 50, 7, 20, 20, 3, 64]
    batches = D.plan_batches(lengths, range(len(lengths)), batch_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 64
    shards = D.plan_shards(lengths, 3)
    assert [len(s) for s in shards] == [3, 3, 1]
    assert shards[0][0] == 6  # longest first


def test_short_and_long_texts_are_counted(tiny_opt, texts_file, tmp_path) -> None:
    m = D.dump(resolved(tiny_opt), "trained", texts_file, tmp_path / "d", device="cpu")
    assert m["n_skipped_empty"] == 1  # the empty text
    assert m["n_skipped_short"] == 1  # "a": BOS + 1 token, an eRank of exactly 1 whatever the model
    assert m["n_truncated"] >= 1  # the long text, cut at max_length
    assert m["n_texts"] == m["n_texts_in"] - 2
    df = measure(tmp_path / "d")
    assert df["erank"].notna().all() and (df["n_tokens"] <= 64).all()
    tok = AutoTokenizer.from_pretrained(tiny_opt / "main")
    t = D.tokenise(tok, ["", "abc def"], max_length=1)
    assert (t.n_empty, t.n_short) == (1, 1)  # one-token texts are skipped
    # which texts were cut, by position (a prefix of the sample counts its own): the long one only
    long = " ".join(["word"] * 200)
    t = D.tokenise(tok, ["short text here", long, "", long], max_length=16)
    assert (t.n_truncated, t.truncated) == (2, [1, 3]) and all(len(i) == 16 for i in t.ids[1:])
    assert m["truncated_positions"] and len(m["truncated_positions"]) == m["n_truncated"]


def test_untrained_variants(tiny_opt, texts_file, tmp_path) -> None:
    spec = resolved(tiny_opt)
    a = load_variant(spec, "init-s0")
    b = load_variant(spec, "init-s0")
    c = load_variant(spec, "init-s1")
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))
    rev = load_variant(spec, "rev-step0")
    assert rev.dtype == torch.float32
    with pytest.raises(ConfigError, match="no revision directory 'step9'"):
        load_variant(spec, "rev-step9")
    with pytest.raises(ConfigError, match="unknown variant"):
        load_variant(spec, "finetuned")


def test_missing_local_path_is_clear(tmp_path) -> None:
    with pytest.raises(ConfigError, match="local model path does not exist"):
        resolve_source(str(tmp_path / "nope"), "main")


def test_hub_id_offline_is_clear() -> None:
    spec = resolved("facebook/opt-125m", revision="main")
    with pytest.raises(ConfigError, match=r"cannot load 'facebook/opt-125m'.*offline"):
        load_variant(spec, "trained")


def test_killed_dump_leaves_nothing_complete_and_resumes(tiny_opt, texts_file, tmp_path, monkeypatch) -> None:
    spec = resolved(tiny_opt, shard_texts=3)
    out = tmp_path / "dump"
    calls = {"n": 0}
    real = D.forward_batch

    def dies_after_two_batches(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)

    monkeypatch.setattr(D, "forward_batch", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        D.dump(spec, "trained", texts_file, out, device="cpu")
    assert not out.exists()
    partial = out.with_name("dump.partial")
    done = sorted(p.name for p in partial.glob("shard-*.json"))
    assert done  # at least one finished shard survived
    monkeypatch.setattr(D, "forward_batch", real)
    resumed = D.dump(spec, "trained", texts_file, out, device="cpu")
    fresh = D.dump(spec, "trained", texts_file, tmp_path / "fresh", device="cpu")
    assert not partial.exists()
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in fresh["shards"]]


def test_partial_from_other_config_is_discarded(tiny_opt, texts_file, tmp_path) -> None:
    out = tmp_path / "dump"
    partial = out.with_name("dump.partial")
    partial.mkdir()
    (partial / "fingerprint.txt").write_text("something else")
    (partial / "shard-00000.json").write_text(json.dumps({"file": "x", "sha256": "0"}))
    D.dump(resolved(tiny_opt), "trained", texts_file, out, device="cpu")
    assert out.is_dir() and not partial.exists()


def test_corrupt_shard_is_named(tiny_opt, texts_file, tmp_path) -> None:
    out = tmp_path / "dump"
    D.dump(resolved(tiny_opt), "trained", texts_file, out, device="cpu")
    shard = sorted(out.glob("shard-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(D.ShardError, match=shard.name):
        measure(out)
    with pytest.raises(D.ShardError, match=rf"delete the folder {tmp_path} and rerun"):  # advice (issue 29.5)
        measure(out)
    shutil.rmtree(out)
    with pytest.raises(D.ShardError, match="not a finished dump"):
        measure(out)


def test_out_of_memory_halves_the_batch(tiny_opt, texts_file, tmp_path, monkeypatch, caplog) -> None:
    real = D.forward_batch
    sizes = []

    def oom_on_big_batches(model, seqs, *args, **kw):
        sizes.append(len(seqs))
        if len(seqs) > 2:
            raise torch.OutOfMemoryError("injected")
        return real(model, seqs, *args, **kw)

    monkeypatch.setattr(D, "forward_batch", oom_on_big_batches)
    spec = resolved(tiny_opt, batch_tokens=100000, shard_texts=100)
    with caplog.at_level("WARNING"):
        m = D.dump(spec, "trained", texts_file, tmp_path / "d", device="cpu")
    assert "halving" in caplog.text
    assert max(sizes) > 2  # the big batch was tried, failed and was split
    monkeypatch.setattr(D, "forward_batch", real)
    ref = D.dump(spec, "trained", texts_file, tmp_path / "r", device="cpu")
    pd.testing.assert_frame_equal(measure(tmp_path / "d"), measure(tmp_path / "r"), rtol=1e-6)
    assert ref["n_texts"] == m["n_texts"]


def test_layer_indices() -> None:
    assert D.layer_indices(["first", "middle", "last"], 12) == {"first": 1, "middle": 6, "last": 12}
    assert D.layer_indices([0, -1], 4) == {"0": 0, "-1": 4}
    with pytest.raises(ConfigError, match="out of range"):
        D.layer_indices([7], 4)
    with pytest.raises(ConfigError, match="valid"):
        D.layer_indices(["top"], 4)


def test_remote_code_is_refused_by_default(tiny_opt, tmp_path) -> None:
    remote = tmp_path / "remote"
    shutil.copytree(tiny_opt / "main", remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "configuration_evil.py").write_text("raise SystemExit('remote code ran')\n")
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    spec = resolved(remote)
    model = load_variant(spec, "trained")  # the auto_map is ignored without trust_remote_code
    assert type(model).__module__.startswith("transformers.")
    with pytest.raises(SystemExit, match="remote code ran"):
        load_variant(resolved(remote, trust_remote_code=True), "trained")


def test_a_set_dumps_each_variant_as_its_own_dump_would_and_keeps_finished_ones(
    tiny_model, texts_file, tmp_path
) -> None:
    """Every variant of a model in one process gives, bit for bit, the dumps of one process each; a
    set interrupted after a variant keeps it (same fingerprint) and redoes one made from other weights."""
    spec = resolved(tiny_model, untrained={"kind": "random_init", "seeds": [0, 1]})
    names = ["trained", "init-s0", "init-s1"]
    out = tmp_path / "set"
    manifests = D.dump_set(spec, names, texts_file, out, layers=["first", "last"], device="cpu")
    assert D.set_variants(out) == names and list(manifests) == names
    for v in names:
        alone = D.dump(spec, v, texts_file, tmp_path / f"alone-{v}", layers=["first", "last"], device="cpu")
        assert manifests[v]["fingerprint"] == alone["fingerprint"]
        pd.testing.assert_frame_equal(measure(out / v), measure(tmp_path / f"alone-{v}"), check_exact=True)
    assert not measure(out / "init-s0")["erank"].equals(measure(out / "init-s1")["erank"])
    # the shared tokenisation, read independently: transformers' own tokenizer and AutoModel
    base = AutoModel.from_pretrained(tiny_model / "main", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model / "main")
    texts = pd.read_parquet(texts_file)["text"]
    for pos, (_, layers) in _collect(out / "trained").items():
        ids = tok(texts[pos], return_tensors="pt")["input_ids"][:, : spec.entry.max_length]
        with torch.no_grad():
            ref = base(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(layers["last"], ref, rtol=1e-5, atol=1e-5)
    # a set killed after its first two variants: the partial holds them finished
    partial = tmp_path / "again.partial"
    partial.mkdir()
    shutil.copytree(out / "trained", partial / "trained")
    shutil.copytree(out / "init-s1", partial / "init-s0")  # stands for a dump made from other weights
    stamp = (partial / "trained" / "manifest.json").stat().st_mtime_ns
    D.dump_set(spec, names, texts_file, tmp_path / "again", layers=["first", "last"], device="cpu")
    again = tmp_path / "again"
    assert (again / "trained" / "manifest.json").stat().st_mtime_ns == stamp  # kept, not redone
    for v in names:
        pd.testing.assert_frame_equal(measure(again / v), measure(out / v), check_exact=True)
    assert not partial.exists()


def test_a_set_of_dumps_is_measured_into_one_table_per_variant(tiny_model, texts_file, tmp_path) -> None:
    from diff_erank.measure import measure_set_to_dir

    spec = resolved(tiny_model)
    D.dump_set(spec, ["trained", "init-s0"], texts_file, tmp_path / "set", device="cpu")
    rows = measure_set_to_dir(tmp_path / "set", tmp_path / "tables", texts_file)
    tables = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert tables == ["init-s0.parquet", "trained.parquet"]
    trained = pd.read_parquet(tmp_path / "tables" / "trained.parquet")
    alone = measure(tmp_path / "set" / "trained", texts_file)
    pd.testing.assert_frame_equal(trained, alone, check_exact=True)
    assert rows == 2 * len(trained) and not (tmp_path / "tables.partial").exists()


def test_a_local_model_folder_whose_tokenizer_is_missing_or_foreign_is_refused(tiny_opt, tmp_path) -> None:
    """transformers builds some tokenizer from what a folder holds; a wrong one used to surface
    only as "no text has 3 or more tokens" after the dumps."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from diff_erank.errors import ConfigError
    from diff_erank.models import load_tokenizer

    assert len(load_tokenizer(resolved(tiny_opt))) > 2  # its own tokenizer passes
    bare = tmp_path / "bare"
    shutil.copytree(tiny_opt / "main", bare / "main")
    for f in bare.glob("main/*"):
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    no_tokenizer = r"model folder .*bare/main has no tokenizer; save one or set `tokenizer:`"
    with pytest.raises(ConfigError, match=no_tokenizer):
        load_tokenizer(resolved(bare))
    one = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))  # the 1-token tokenizer
    one.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=one, unk_token="<unk>").save_pretrained(bare / "main")
    with pytest.raises(ConfigError, match=r"tokenizer in the model folder .* is not the model's \(its 1 tok"):
        load_tokenizer(resolved(bare))


def test_the_fingerprint_hashes_local_weights_once_until_a_file_changes(
    tiny_opt, texts_file, tmp_path, monkeypatch
) -> None:
    """A second dump process reads the weights' SHA-256 from the cache's memo; an edited file is hashed."""
    import builtins
    import os

    from diff_erank import sources

    model = tmp_path / "model"
    shutil.copytree(tiny_opt / "main", model)
    weights = next(p for p in model.iterdir() if p.suffix == ".safetensors")
    memo = tmp_path / "cache" / "sha256"
    memo.parent.mkdir()
    hashed: list[str] = []

    def spy_open(path, mode="r", *a, **kw):  # counts the reads file_sha256 makes, then reads for real
        hashed.append(Path(path).name)
        return builtins.open(path, mode, *a, **kw)

    monkeypatch.setattr(sources, "open", spy_open, raising=False)

    def dump_once(out: str) -> str:
        sources._SEEN.clear()  # what a new process starts with
        hashed.clear()
        return D.dump(resolved(model), "trained", texts_file, tmp_path / out, device="cpu", memo_dir=memo)[
            "fingerprint"
        ]

    first = dump_once("a")
    assert weights.name in hashed and "config.json" in hashed
    assert len(list(memo.iterdir())) == len(list(model.iterdir()))
    assert dump_once("b") == first and hashed == []  # unchanged: nothing read again
    config = model / "config.json"
    config.write_text(config.read_text() + "\n")  # a real edit: new size, mtime, content
    edited = dump_once("c")
    assert hashed == ["config.json"] and edited != first
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert dump_once("d") == edited and hashed == [weights.name]


def test_the_dump_step_remembers_the_weights_hashes_in_its_cache(tiny_opt, texts_file, tmp_path) -> None:
    """As the rule calls it (``--tables <cache>/erank/<key>/<layers>``): ``<cache>/sha256/`` holds the
    SHA-256 of every file of the model folder, each equal to a plain hash of that file."""
    import hashlib

    from diff_erank.cli import main

    root = tmp_path / "cache"
    from diff_erank.cache import spec_file

    step = ["dump", "--spec", spec_file(str(tmp_path), model_spec(tiny_opt).spec), "--variants", "trained"]
    step += ["--device", "cpu"]
    step += ["--texts", str(texts_file), "--out", str(root / "dumps" / "k" / "last")]
    root.mkdir()
    assert main([*step, "--tables", str(root / "erank" / "k" / "last")]) == 0
    remembered = {p.read_text().strip() for p in (root / "sha256").iterdir()}
    files = [p for p in (tiny_opt / "main").iterdir() if p.is_file()]
    assert remembered >= {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
