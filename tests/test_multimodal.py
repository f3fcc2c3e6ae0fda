"""LLaVA eRanks on a tiny LLaVA built from configs and generated images."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from mm_fixtures import TEMPLATE, make_cc_sbu, make_image, make_llava_instruct, save_tiny_llava

from diff_erank import multimodal as M
from diff_erank.erank import dataset_erank, erank


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, tokenizer_dir):
    return save_tiny_llava(tmp_path_factory.mktemp("llava"), tokenizer_dir)


@pytest.fixture(scope="module")
def probe(llava_dir):
    spec = {"source": str(llava_dir), "revision": None, "dtype": "float32", "template": TEMPLATE}
    return M.LlavaProbe.load(spec, torch.device("cpu"))


def test_levels_come_from_the_right_tensors(probe, tmp_path) -> None:
    image = M.open_image(make_image(tmp_path / "a.png", 1))
    states = probe.states(image, "Describe it.", "Stripes and a block.")
    model = probe.model
    n_patches = (56 // 14) ** 2
    assert states["erank1_vision"].shape == (n_patches, 32)  # CLS dropped, vision width
    assert states["erank2_connector"].shape == (n_patches, 48)  # projected to the LLM width
    assert states["erank3_llm_image"].shape == (n_patches, 48)
    pix = probe.pixels(image)
    with torch.no_grad():
        hs = model.model.vision_tower(pix, output_hidden_states=True).hidden_states
        feats = hs[model.config.vision_feature_layer][:, 1:]
        torch.testing.assert_close(states["erank1_vision"], feats[0])
        projected = model.model.multi_modal_projector(feats)
        torch.testing.assert_close(states["erank2_connector"], projected[0])
        # image alone == the language model on the projected tokens
        lm = model.model.language_model(inputs_embeds=projected).last_hidden_state[0]
        torch.testing.assert_close(states["erank3_llm_image"], lm, rtol=1e-5, atol=1e-5)
        # text alone == the language model on the text's tokens (template without the image)
        text = TEMPLATE.format(instruction="Describe it.", response="Stripes and a block.").replace(
            "<image>\n", ""
        )
        ids = probe.tok(text, return_tensors="pt")["input_ids"]
        lm_text = model.model.language_model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(states["erank4_llm_text"], lm_text, rtol=1e-5, atol=1e-5)
    full = probe._ids(TEMPLATE.format(instruction="Describe it.", response="Stripes and a block."), n_patches)
    assert (full == model.config.image_token_id).sum() == n_patches  # the image expanded in place
    assert states["erank5_llm_image_text"].shape == (full.shape[1], 48)
    assert full.shape[1] > n_patches + 10


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
    from test_workflow import snakemake

    ann, images = make_llava_instruct(tmp_path / "data", 5)
    ann2, images2 = make_cc_sbu(tmp_path / "data", 4)
    overrides = [
        "experiment=table2",
        "~multimodal.models.llava-1_5-13b",
        f"multimodal.models.llava-1_5-7b.source={llava_dir}",
        "multimodal.models.llava-1_5-7b.dtype=float32",
        "multimodal.datasets.detail_23k.source.hub=null",
        f"multimodal.datasets.detail_23k.source.annotations='{ann}'",
        f"multimodal.datasets.detail_23k.source.images='{images}'",
        f"multimodal.datasets.cc_sbu_align.source.annotations='{ann2}'",
        f"multimodal.datasets.cc_sbu_align.source.images='{images2}'",
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
