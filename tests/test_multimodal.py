"""LLaVA eRanks on a tiny LLaVA built from configs and generated images."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO
from helpers.multimodal import (
    TEMPLATE,
    local_table2_datasets,
    make_cc_sbu,
    make_image,
    make_llava_instruct,
    save_tiny_llava,
)

from diff_erank import multimodal as M
from diff_erank.erank import dataset_erank, erank


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, tokenizer_dir):
    return save_tiny_llava(tmp_path_factory.mktemp("llava"), tokenizer_dir)


@pytest.fixture(scope="module")
def probe(llava_dir):
    spec = {"source": str(llava_dir), "revision": None, "dtype": "float32", "template": TEMPLATE}
    return M.LlavaProbe.load(spec, torch.device("cpu"))


VICUNA = yaml.safe_load((REPO / "conf" / "mm_model" / "llava-1_5-7b.yaml").read_text())["template"]


def expand2square(image, background):
    """LLaVA's own padding (llava/mm_utils.py), written out here as the independent reading."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def test_levels_come_from_the_right_tensors(probe, tmp_path) -> None:
    """Each level against transformers' own functions and processor, with LLaVA-1.5's padding,
    Vicuna prompt and split tokenisation."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image = M.open_image(make_image(tmp_path / "a.png", 1))  # 80 x 60: not square
    probe.template = VICUNA
    instruction, response = "Describe it.", "Stripes and a block."
    states = probe.states(image, instruction, response)
    model, tok = probe.model, probe.tok
    n_patches = (56 // 14) ** 2
    # pixels: pad to a square with the mean colour, then CLIP's own resize / crop / normalise
    clip = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    mean = tuple(int(x * 255) for x in clip.image_mean)
    pix = clip(images=expand2square(image, mean), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(probe.pixels(image), pix)
    assert not torch.allclose(probe.pixels(image), clip(images=image, return_tensors="pt")["pixel_values"])
    with torch.no_grad():
        hs = model.model.vision_tower(pix, output_hidden_states=True).hidden_states
        feats = hs[model.config.vision_feature_layer][:, 1:]
        torch.testing.assert_close(states["erank1_vision"], feats[0])
        projected = model.get_image_features(pixel_values=pix, return_dict=True).pooler_output[0]
        torch.testing.assert_close(states["erank2_connector"], projected.reshape(n_patches, -1))
        # image alone: after the BOS the text levels start with, on the projected tokens
        bos = model.get_input_embeddings()(torch.tensor([[tok.bos_token_id]]))
        embeds = torch.cat([bos, projected.reshape(1, n_patches, -1)], dim=1)
        lm = model.model.language_model(inputs_embeds=embeds).last_hidden_state[0]
        assert states["erank3_llm_image"].shape == (n_patches + 1, 48)
        torch.testing.assert_close(states["erank3_llm_image"], lm, rtol=1e-5, atol=1e-5)
        # text alone: the whole Vicuna prompt without the image (system prompt included)
        full = VICUNA.format(instruction=instruction, response=response)
        text = full.replace("<image>\n", "")
        assert text.startswith("A chat between a curious human") and text.endswith(
            f"ASSISTANT: {response}</s>"
        )
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id and ids[0, -1] == tok.eos_token_id
        lm_text = model.model.language_model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(states["erank4_llm_text"], lm_text, rtol=1e-5, atol=1e-5)
        # image and text: LLaVA's processor on the whole string gives the same ids here (a byte-level
        # BPE; a SentencePiece tokenizer would differ by the prefix space after <image>) and the same
        # hidden states
        proc = LlavaProcessor(
            image_processor=probe.proc,
            tokenizer=tok,
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # the CLS token, as llava-hf's processor config says
        )
        batch = proc(images=image, text=full, return_tensors="pt")
        ours = probe._ids(full, n_patches)
        assert ours[0].tolist() == batch["input_ids"][0].tolist()
        assert (ours == model.config.image_token_id).sum() == n_patches and ours[0, 0] == tok.bos_token_id
        torch.testing.assert_close(batch["pixel_values"], pix)
        out = model(**batch, output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(states["erank5_llm_image_text"], out, rtol=1e-5, atol=1e-5)


def test_tokenizer_image_token_splits_like_llava(probe) -> None:
    """LLaVA's rule: every piece tokenised on its own, one BOS at the very start."""
    tok = probe.tok
    prompt = "SYS USER: <image>\nWhat? ASSISTANT: It.</s>"
    ids = M.tokenizer_image_token(prompt, tok, 7, 3)
    first, second = (tok(p, add_special_tokens=False)["input_ids"] for p in prompt.split("<image>"))
    assert ids == [tok.bos_token_id, *first, 7, 7, 7, *second]
    assert M.tokenizer_image_token("<image>\nx", tok, 7, 2)[:3] == [tok.bos_token_id, 7, 7]


def test_rotation_changes_erank1(probe, tmp_path) -> None:
    path = make_image(tmp_path / "b.png", 2)
    upright = probe.states(M.open_image(path), "Describe it.", "Text.")
    rotated = probe.states(M.open_image(path, 90), "Describe it.", "Text.")
    assert erank(upright["erank1_vision"]) != pytest.approx(erank(rotated["erank1_vision"]), rel=1e-6)
    assert M.open_image(path, 90).size == M.open_image(path).size[::-1]  # clockwise quarter turn


def test_ratios_match_hand_computed_values() -> None:
    assert M.image_reduction_ratio(18.34, 11.28) == pytest.approx(0.385, abs=5e-4)  # the paper's Table 2
    assert M.image_text_alignment(45.62, 74.21, 76.34) == pytest.approx(0.8566, abs=5e-5)
    rows = [
        {"id": str(i), "level": lvl, "entropy": h + i * 0.1}
        for i in range(3)
        for lvl, h in zip(M.LEVELS, [3.0, 2.5, 3.5, 4.0, 4.2], strict=True)
    ]
    s = M.summarise(pd.DataFrame(rows), "a")
    e = [math.exp(h + 0.1) for h in [3.0, 2.5, 3.5, 4.0, 4.2]]  # exp of the mean entropy
    assert s["erank1_vision"] == pytest.approx(e[0])
    assert s["image_reduction_ratio"] == pytest.approx((e[0] - e[1]) / e[0])
    assert s["image_text_alignment"] == pytest.approx((e[2] + e[3] + e[4]) / 3 / max(e[2:]))
    sb = M.summarise(pd.DataFrame(rows), "b")
    assert sb["erank1_vision"] == pytest.approx(dataset_erank([3.0, 3.1, 3.2], "b"))


def test_items_from_both_dataset_formats(tmp_path) -> None:
    ann, images = make_llava_instruct(tmp_path, 4)
    df = M.load_items({"source": {"kind": "llava_instruct", "annotations": str(ann), "images": str(images)}})
    assert len(df) == 4 and df["instruction"].iloc[0] == "Describe the following image in detail."
    assert "<image>" not in "".join(df["instruction"])
    ann2, images2 = make_cc_sbu(tmp_path, 3)
    spec = {
        "source": {"kind": "cc_sbu_align", "annotations": str(ann2), "images": str(images2)},
        "instruction": "Describe this image in detail.",
    }
    df2 = M.load_items(spec)
    assert list(df2["id"]) == ["2", "3", "4"] and df2["response"].str.len().gt(0).all()


def test_bad_items(tmp_path, probe) -> None:
    ann, images = make_llava_instruct(tmp_path, 4)
    (images / "000000000001.jpg").unlink()
    spec = {"source": {"kind": "llava_instruct", "annotations": str(ann), "images": str(images)}}
    with pytest.raises(M.MultimodalDataError, match=r"000000000001\.jpg"):
        M.load_items(spec)
    df = M.load_items({**spec, "skip_bad": True})
    assert len(df) == 3 and df.attrs["n_skipped"] == 1
    # an item with no text
    import json

    recs = json.loads(ann.read_text())
    recs[2]["conversations"] = []
    ann.write_text(json.dumps(recs))
    with pytest.raises(M.MultimodalDataError, match="has no text"):
        M.load_items({**spec, "skip_bad": False})
    # an unreadable image
    (images / "000000000003.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(M.MultimodalDataError, match=r"unreadable image .*000000000003\.jpg"):
        M.open_image(images / "000000000003.jpg")


@pytest.mark.slow
def test_table2_experiment_end_to_end(llava_dir, tmp_path) -> None:
    """The real table2 config with the model and data swapped for a tiny LLaVA and generated images."""
    from helpers.workflow import snakemake

    overrides = [
        "experiment=table2",
        "~multimodal.models.llava-1_5-13b",
        "~multimodal.models.minigpt-v2",  # its own end-to-end test: test_minigpt.py
        f"multimodal.models.llava-1_5-7b.source={llava_dir}",
        "multimodal.models.llava-1_5-7b.dtype=float32",
        *local_table2_datasets(tmp_path / "data", 5, 4),
    ]
    r = snakemake(tmp_path / "work", overrides=overrides)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "work" / "results" / "table2"
    mm = pd.read_csv(out / "tables" / "multimodal.csv")
    assert len(mm) == 4 and set(mm["rotation"]) == {0, 90}
    assert (mm["n_items"] == mm["dataset"].map({"detail_23k": 5, "cc_sbu_align": 4})).all()
    assert mm["image_reduction_ratio"].to_numpy() == pytest.approx(
        ((mm["erank1_vision"] - mm["erank2_connector"]) / mm["erank1_vision"]).to_numpy()
    )
    up = mm[(mm.dataset == "detail_23k") & (mm.rotation == 0)].iloc[0]
    rot = mm[(mm.dataset == "detail_23k") & (mm.rotation == 90)].iloc[0]
    assert up["erank4_llm_text"] == pytest.approx(rot["erank4_llm_text"])  # text alone ignores the image
    assert up["erank1_vision"] != pytest.approx(rot["erank1_vision"])
    rep = pd.read_csv(out / "tables" / "reproduction_multimodal.csv")
    llava = rep[rep["family"] == "llava-1.5"]
    assert llava["ours"].notna().all() and len(llava) == 14 + 7
    assert not (rep["family"] == "minigpt-v2").any()  # not a model of this run: out of its scope
    assert (out / "figures" / "multimodal.png").stat().st_size > 1000


def test_mm_erank_records_the_hub_commit_it_read(llava_dir, tmp_path) -> None:
    """The recorded commit is the one the revision resolves to (``models.hub_commit``, here through a
    real offline hub cache: ``refs/main`` -> ``snapshots/<sha>``), not ``config._commit_hash``, which
    transformers 5 leaves unset; a local directory records None by design."""
    import os
    import shutil
    import subprocess
    import sys

    from diff_erank.cache import spec_file
    from diff_erank.storage import read_provenance, write_parquet

    sha = "c" * 40
    repo = tmp_path / "hub" / "models--org--tiny-llava"
    shutil.copytree(llava_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    ann, images = make_llava_instruct(tmp_path / "data", 2)
    source = {"kind": "llava_instruct", "annotations": str(ann), "images": str(images)}
    write_parquet(M.load_items({"source": source}), tmp_path / "items.parquet", {})
    runs = {"hub.parquet": "org/tiny-llava", "local.parquet": str(llava_dir)}
    calls = [
        [
            "mm-erank",
            "--spec",
            spec_file(
                str(tmp_path), {"source": src, "revision": "main", "dtype": "float32", "template": TEMPLATE}
            ),
            "--items",
            str(tmp_path / "items.parquet"),
            "--out",
            str(tmp_path / out),
        ]
        for out, src in runs.items()
    ]
    code = f"from diff_erank.cli import main\nfor args in {calls!r}:\n    assert main(args) == 0\n"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_provenance(tmp_path / "hub.parquet")["commit"] == sha
    assert read_provenance(tmp_path / "local.parquet")["commit"] is None


def test_llava_with_a_corrupted_buffer_is_refused(llava_dir, monkeypatch) -> None:
    """LLaVA is loaded outside ``load_variant`` and gets the same buffer check (no false alarm: the
    ``probe`` fixture loads it); a RoPE ``inv_freq`` scaled to the ~1e-29 of the real fault is refused."""
    from transformers import LlavaForConditionalGeneration

    from diff_erank.config import ConfigError

    original = LlavaForConditionalGeneration.from_pretrained

    def corrupted(*args, **kwargs):
        model = original(*args, **kwargs)
        with torch.no_grad():
            model.model.language_model.rotary_emb.inv_freq.mul_(1e-29)
        return model

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", corrupted)
    spec = {"source": str(llava_dir), "revision": None, "dtype": "float32", "template": TEMPLATE}
    with pytest.raises(ConfigError, match=r"buffer 'inv_freq' of module 'model\.language_model\.rotary_emb'"):
        M.LlavaProbe.load(spec, torch.device("cpu"))
