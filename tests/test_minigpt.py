"""MiniGPT-v2 on a tiny model built from configs, each level against an independent reading.

The tiny model has MiniGPT-v2's shape at small sizes: an EVA tower of width 32 with 2 blocks on
56-pixel images (a 4 x 4 patch grid, the LAVIS-style file holding a 2 x 2 position grid to resize,
as the real one holds 16 x 16 for 32 x 32), a tiny Llama, and random weights written by the test
under the published files' names (``eva_vit_g.pth``: LAVIS ``VisionTransformer`` names;
``minigptv2_checkpoint.pth``: ``{"model": ...}`` with ``llama_proj``, ``ln_vision`` and peft 0.2.0's
LoRA names, as MiniGPT's trainer saves them). The references below are written from MiniGPT's own
code (Vision-CAIR/MiniGPT-4 at d94738a; files named in each test), not from the project's code.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import REPO
from helpers.multimodal import make_image

from diff_erank import minigpt as G
from diff_erank import multimodal as M
from diff_erank.config import ConfigError
from diff_erank.erank import erank
from diff_erank.storage import sha256

WIDTH, BLOCKS, HEADS, MLP, PATCH, IMAGE, PRE_GRID = 32, 2, 2, 64, 14, 56, 2
GRID = IMAGE // PATCH
HIDDEN, R, ALPHA = 48, 4, 16
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])  # blip_processors.py BlipImageBaseProcessor
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
ENTRY = yaml.safe_load((REPO / "conf" / "mm_model" / "minigpt-v2.yaml").read_text())


# -- the tiny published files ------------------------------------------------------------------
#: scale of what enters EVA's residual stream: its variance (~1e-5) is then of the order of the
#: LayerNorm eps (1e-6 in the blocks, 1e-5 in ln_vision), so a wrong eps fails the tower test
SMALL = 1e-3


def eva_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under LAVIS's EVA names (eva_vit.py VisionTransformer), one unused extra."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": rnd(1, 1, WIDTH, scale=SMALL),
        "pos_embed": rnd(1, 1 + PRE_GRID**2, WIDTH, scale=SMALL),
        "patch_embed.proj.weight": rnd(WIDTH, 3, PATCH, PATCH, scale=0.05 * SMALL),
        "patch_embed.proj.bias": rnd(WIDTH, scale=SMALL),
        "head.weight": rnd(3, WIDTH),  # not part of the tower: left unused, and recorded
    }
    for i in range(BLOCKS):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": 1 + rnd(WIDTH),
            b + "norm1.bias": rnd(WIDTH),
            b + "attn.qkv.weight": rnd(3 * WIDTH, WIDTH),
            b + "attn.q_bias": rnd(WIDTH),
            b + "attn.v_bias": rnd(WIDTH),
            b + "attn.proj.weight": rnd(WIDTH, WIDTH, scale=SMALL),
            b + "attn.proj.bias": rnd(WIDTH, scale=SMALL),
            b + "norm2.weight": 1 + rnd(WIDTH),
            b + "norm2.bias": rnd(WIDTH),
            b + "mlp.fc1.weight": rnd(MLP, WIDTH),
            b + "mlp.fc1.bias": rnd(MLP),
            b + "mlp.fc2.weight": rnd(WIDTH, MLP, scale=SMALL),
            b + "mlp.fc2.bias": rnd(WIDTH, scale=SMALL),
        }
    return sd


def minigpt_state(n_layers: int, seed: int = 1, ln_vision: bool = True) -> dict[str, torch.Tensor]:
    """MiniGPT-v2's trained tensors under the names its trainer saves (peft 0.2.0: no adapter name)."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "llama_proj.weight": torch.randn(HIDDEN, 4 * WIDTH, generator=g) * 0.1,
        "llama_proj.bias": torch.randn(HIDDEN, generator=g) * 0.1,
    }
    if ln_vision:
        sd |= {
            "ln_vision.weight": 1 + torch.randn(WIDTH, generator=g) * 0.2,
            "ln_vision.bias": torch.randn(WIDTH, generator=g) * 0.2,
        }
    for i in range(n_layers):
        for m in ("q_proj", "v_proj"):
            p = f"llama_model.base_model.model.model.layers.{i}.self_attn.{m}."
            sd[p + "lora_A.weight"] = torch.randn(R, HIDDEN, generator=g) * 0.2
            sd[p + "lora_B.weight"] = torch.randn(HIDDEN, R, generator=g) * 0.2
        # a non-persistent-looking buffer the old Llama code saved: computed, not learned
        sd[f"llama_model.base_model.model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(12)
    return sd


def save_tiny_llama(root, tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(3)
    out = root / "llama-2-7b-chat"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_spec(root, llama_dir, eva=None, mini=None) -> dict:
    """The real entry (template, LoRA targets, eps) with the tiny sizes and files."""
    eva = eva or root / "eva_vit_g.pth"
    mini = mini or root / "minigptv2_checkpoint.pth"
    mg = ENTRY["minigpt"]
    return {
        **ENTRY,
        "dtype": "float32",
        "minigpt": {
            **mg,
            "image_size": IMAGE,
            "vision_heads": HEADS,
            "lora": {**mg["lora"], "r": R, "alpha": ALPHA},
            "checkpoints": {
                "eva_vit": {"path": str(eva), "sha256": sha256(eva)},
                "minigpt": {"path": str(mini), "sha256": sha256(mini)},
                "llama": {"source": str(llama_dir), "revision": None},
            },
        },
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("minigpt")
    llama = save_tiny_llama(root, tokenizer_dir)
    torch.save(eva_state(), root / "eva_vit_g.pth")
    ckpt = {
        "model": minigpt_state(2),
        "optimizer": {"state": {}},
        "config": {"run": {"seed": 42}},
        "epoch": 3,
    }
    torch.save(ckpt, root / "minigptv2_checkpoint.pth")
    return {"root": root, "llama": llama, "spec": tiny_spec(root, llama)}


@pytest.fixture(scope="module")
def converted(files):
    out = files["root"] / "converted"
    facts = G.convert(files["spec"], out)
    return out, facts


@pytest.fixture(scope="module")
def probe(files, converted):
    return M.load_probe(files["spec"], torch.device("cpu"), str(converted[0]))


# -- independent readings ----------------------------------------------------------------------
def bicubic_resize_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a (g, g, d) grid to (size, size, d), written from the definition that
    MiniGPT's ``interpolate_pos_embed`` calls (``F.interpolate(mode='bicubic', align_corners=False)``):
    Keys' cubic convolution with a = -0.75, source coordinate (i + 0.5) * g / size - 0.5, the four
    neighbours clamped at the border; separable, rows then columns."""
    a = -0.75

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    g = grid.shape[0]
    mat = np.zeros((size, g))
    for i in range(size):
        src = (i + 0.5) * g / size - 0.5
        x0 = math.floor(src)
        for k in range(x0 - 1, x0 + 3):
            mat[i, min(max(k, 0), g - 1)] += kernel(src - k)
    return np.einsum("ir,jc,rcd->ijd", mat, mat, grid)


def minigpt_positions(pos: torch.Tensor, size: int) -> torch.Tensor:
    """``interpolate_pos_embed``'s result: CLS position kept, the raster grid resized."""
    g = math.isqrt(pos.shape[1] - 1)
    grid = pos[0, 1:].double().numpy().reshape(g, g, -1)
    resized = torch.from_numpy(bicubic_resize_grid(grid, size).reshape(size * size, -1))
    return torch.cat([pos[0, :1].double(), resized])[None].float()


def eva_forward(sd: dict[str, torch.Tensor], pix: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """EVA ViT's forward as eva_vit.py writes it (PatchEmbed, cls token, absolute positions,
    Blocks with LayerNorm eps 1e-6, q/v bias and zero k bias, q scaled before q k^T, exact GELU,
    no final norm)."""
    x = F.conv2d(pix, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + minigpt_positions(sd["pos_embed"], GRID)
    n, hd = x.shape[1], WIDTH // HEADS
    for i in range(BLOCKS):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (WIDTH,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=eps)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(WIDTH), sd[p + "attn.v_bias"]])
        qkv = (h @ sd[p + "attn.qkv.weight"].T + bias).reshape(1, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(1, n, WIDTH)
        x = x + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (WIDTH,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=eps)
        x = x + F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].T
        x = x + sd[p + "mlp.fc2.bias"]
    return x


def blip2_eval_pixels(image) -> torch.Tensor:
    """Blip2ImageEvalProcessor: Resize((s, s), bicubic) of the PIL image, ToTensor, CLIP Normalize."""
    from PIL import Image

    arr = np.asarray(image.resize((IMAGE, IMAGE), Image.BICUBIC), dtype=np.float64) / 255.0
    return torch.from_numpy(((arr - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)[None]).float()


def peft_llm(files):
    """The tiny Llama with MiniGPT-v2's LoRA attached, unmerged, as peft runs it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(files["llama"], dtype=torch.float32)
    cfg = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, bias="none"
    )
    model = get_peft_model(base, cfg)
    lora = {
        k.removeprefix("llama_model.").replace(".weight", ".default.weight"): t
        for k, t in minigpt_state(2).items()
        if ".lora_" in k
    }
    result = model.load_state_dict(lora, strict=False)
    assert not result.unexpected_keys and len(lora) == 8
    return model.eval()


# -- tests ---------------------------------------------------------------------------------------
def test_position_interpolation_is_minigpts_bicubic_resize() -> None:
    """The real sizes, 16 x 16 -> 32 x 32 (eva_vit.py interpolate_pos_embed), CLS kept."""
    pos = torch.randn(1, 1 + 16 * 16, 5, generator=torch.Generator().manual_seed(0))
    ours = G.interpolate_positions(pos, 32)
    assert ours.shape == (1, 1 + 32 * 32, 5)
    torch.testing.assert_close(ours[:, 0], pos[:, 0])
    torch.testing.assert_close(ours, minigpt_positions(pos, 32), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(G.interpolate_positions(pos, 16), pos)  # nothing to resize
    # raster order: a grid that varies along columns only stays so (rows equal to each other)
    cols = torch.arange(16.0).repeat(16)[None, :, None]
    grid = G.interpolate_positions(torch.cat([torch.zeros(1, 1, 1), cols], dim=1), 32)[0, 1:, 0].reshape(
        32, 32
    )
    torch.testing.assert_close(grid, grid[:1].expand(32, 32))
    assert grid[0, -1] > grid[0, 0]


def test_tower_equals_written_out_eva_and_erank1_drops_cls(probe, tmp_path) -> None:
    """eRank1 = ln_vision (eps 1e-5, the checkpoint's weights) of EVA's output, without CLS."""
    image = M.open_image(make_image(tmp_path / "a.png", 1))
    pix = probe.pixels(image)
    ln = minigpt_state(2)
    with torch.no_grad():
        ref = eva_forward(eva_state(), pix)
        ref = F.layer_norm(ref, (WIDTH,), ln["ln_vision.weight"], ln["ln_vision.bias"], eps=1e-5)
    feats = probe.vision_features(pix)
    assert feats.shape == (1, GRID * GRID, WIDTH)
    torch.testing.assert_close(feats, ref[:, 1:], rtol=1e-5, atol=1e-5)
    states = probe.states(image, "Describe it.", "Stripes.")
    assert list(states) == M.LEVELS
    torch.testing.assert_close(states["erank1_vision"], ref[0, 1:], rtol=1e-5, atol=1e-5)
    # the comparison tells the eps apart: 1e-6 for ln_vision, or 1e-5 in the blocks, is far off
    for block_eps, ln_eps in ((1e-6, 1e-6), (1e-5, 1e-5)):
        with torch.no_grad():
            other = eva_forward(eva_state(), pix, block_eps)
            other = F.layer_norm(other, (WIDTH,), ln["ln_vision.weight"], ln["ln_vision.bias"], eps=ln_eps)
        assert (feats - other[:, 1:]).abs().max() > 1e-2


def test_pixels_are_a_bicubic_resize_with_clip_normalisation(probe, tmp_path) -> None:
    image = M.open_image(make_image(tmp_path / "b.png", 2))  # 80 x 60: resized, not padded
    torch.testing.assert_close(probe.pixels(image), blip2_eval_pixels(image), rtol=0, atol=1e-5)


def test_erank2_is_linear_of_four_tokens_side_by_side(probe, tmp_path) -> None:
    """minigpt_v2.py encode_img: view(bs, pn / 4, hs * 4), then llama_proj."""
    states = probe.states(M.open_image(make_image(tmp_path / "c.png", 3)), "Describe it.", "Stripes.")
    feats, sd = states["erank1_vision"], minigpt_state(2)
    grouped = torch.stack([torch.cat(list(feats[4 * k : 4 * k + 4])) for k in range(GRID * GRID // 4)])
    ref = grouped @ sd["llama_proj.weight"].T + sd["llama_proj.bias"]
    assert states["erank2_connector"].shape == (GRID * GRID // 4, HIDDEN)
    torch.testing.assert_close(states["erank2_connector"], ref, rtol=1e-5, atol=1e-5)


def test_merged_llm_equals_peft_unmerged_lora(files, probe) -> None:
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 120, 8]])
    with torch.no_grad():
        ref = peft_llm(files)(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        ours = probe.llm(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        plain = probe.llm.__class__.from_pretrained(files["llama"])(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain.hidden_states[-1], ref, atol=1e-3)  # the adapter does change it


def test_llm_levels_follow_minigpts_prompt_layout(files, probe, tmp_path) -> None:
    """eRank5: BOS + "[INST] <Img>" + the image embeddings + "</Img> {instruction} [/INST] {answer}</s>",
    each text piece tokenised on its own (minigpt_base.py get_context_emb); eRank3: BOS + image;
    eRank4: the prompt without the image slot. All run through peft's unmerged LoRA model."""
    image = M.open_image(make_image(tmp_path / "d.png", 4))
    instruction, response = "Describe it.", "Stripes and a block."
    states = probe.states(image, instruction, response)
    full = ENTRY["template"].format(instruction=instruction, response=response)
    assert full == "[INST] <Img><ImageHere></Img> Describe it. [/INST] Stripes and a block.</s>"
    tok, model = probe.tok, peft_llm(files)
    first = [tok.bos_token_id, *tok("[INST] <Img>", add_special_tokens=False)["input_ids"]]
    rest = tok("</Img> Describe it. [/INST] Stripes and a block.</s>", add_special_tokens=False)["input_ids"]
    assert rest[-1] == tok.eos_token_id and tok.bos_token_id not in first[1:] + rest
    text = [
        tok.bos_token_id,
        *tok("[INST] Describe it. [/INST] Stripes and a block.</s>", add_special_tokens=False)["input_ids"],
    ]
    emb = model.get_input_embeddings()
    image_embeds = states["erank2_connector"][None]

    def last(embeds):
        with torch.no_grad():
            return model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1][0]

    def e(ids):
        return emb(torch.tensor([ids]))

    n = GRID * GRID // 4
    seq5 = torch.cat([e(first), image_embeds, e(rest)], dim=1)
    assert states["erank5_llm_image_text"].shape == (len(first) + n + len(rest), HIDDEN)
    torch.testing.assert_close(states["erank5_llm_image_text"], last(seq5), rtol=1e-5, atol=1e-5)
    seq3 = torch.cat([e([tok.bos_token_id]), image_embeds], dim=1)
    torch.testing.assert_close(states["erank3_llm_image"], last(seq3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states["erank4_llm_text"], last(e(text)), rtol=1e-5, atol=1e-5)


def test_rotation_changes_the_vision_levels_only(probe, tmp_path) -> None:
    path = make_image(tmp_path / "e.png", 5)
    up = probe.states(M.open_image(path), "Describe it.", "Text.")
    rot = probe.states(M.open_image(path, 90), "Describe it.", "Text.")
    assert erank(up["erank1_vision"]) != pytest.approx(erank(rot["erank1_vision"]), rel=1e-6)
    torch.testing.assert_close(up["erank4_llm_text"], rot["erank4_llm_text"])


def test_float16_as_published_stays_near_float32(files, probe, tmp_path) -> None:
    """The entry's dtype (float16): converted and run in it, every level's eRank within 1%."""
    spec = {**files["spec"], "dtype": "float16"}
    G.convert(spec, tmp_path / "fp16")
    half = M.load_probe(spec, torch.device("cpu"), str(tmp_path / "fp16"))
    image = M.open_image(make_image(tmp_path / "f.png", 6))
    ours, ref = (
        half.states(image, "Describe it.", "Stripes."),
        probe.states(image, "Describe it.", "Stripes."),
    )
    assert ours["erank5_llm_image_text"].dtype == torch.float16
    for level in M.LEVELS:
        assert erank(ours[level].float()) == pytest.approx(erank(ref[level]), rel=1e-2)


def test_conversion_records_what_it_used(converted, files) -> None:
    out, facts = converted
    assert facts["eva_vit"]["sha256"] == files["spec"]["minigpt"]["checkpoints"]["eva_vit"]["sha256"]
    assert facts["eva_vit"]["unused_tensors"] == ["head.weight"]
    assert facts["minigpt"]["ignored_buffers"] == 2 and facts["ln_vision"]["from"] == "checkpoint"
    assert facts["lora"]["merged_modules"] == 4 and facts["dtype"] == "float32"
    assert {p.name for p in out.iterdir()} == {"vision", "llm", "connector.safetensors", "minigpt.json"}
    assert not list(out.rglob("*.pth")) and not list(out.rglob("*.bin"))


def test_ln_vision_missing_from_the_checkpoint_is_its_initial_value(files, tmp_path) -> None:
    """MiniGPT's trainer saves only parameters with gradients; the frozen ln_vision keeps
    nn.LayerNorm's initial weight 1, bias 0 (runner_base.py _save_checkpoint, base_model.py)."""
    mini = tmp_path / "minigptv2_checkpoint.pth"
    torch.save({"model": minigpt_state(2, ln_vision=False)}, mini)
    torch.save(eva_state(), tmp_path / "eva_vit_g.pth")
    facts = G.convert(tiny_spec(tmp_path, files["llama"], mini=mini), tmp_path / "out")
    assert facts["ln_vision"]["from"].startswith("initial value")
    from safetensors.torch import load_file

    c = load_file(str(tmp_path / "out" / "connector.safetensors"))
    assert torch.equal(c["ln_vision.weight"], torch.ones(WIDTH)) and torch.equal(
        c["ln_vision.bias"], torch.zeros(WIDTH)
    )


def test_a_pth_that_would_run_code_is_refused(files, tmp_path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    evil = tmp_path / "minigptv2_checkpoint.pth"
    torch.save({"model": minigpt_state(2), "extra": Payload()}, evil)
    with pytest.raises(ConfigError, match=r"refusing .*holds more than tensors"):
        G.load_pth(evil)
    spec = tiny_spec(files["root"], files["llama"], mini=evil)  # pinned to the evil file's own hash
    with pytest.raises(ConfigError, match="holds more than tensors"):
        G.convert(spec, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_wrong_or_missing_hash_is_refused(files, tmp_path) -> None:
    spec = files["spec"]
    ck = spec["minigpt"]["checkpoints"]
    wrong = {
        **spec,
        "minigpt": {
            **spec["minigpt"],
            "checkpoints": {**ck, "eva_vit": {**ck["eva_vit"], "sha256": "0" * 64}},
        },
    }
    with pytest.raises(ConfigError, match=r"SHA-256 is .*refusing the file"):
        G.convert(wrong, tmp_path / "out")
    unpinned = {
        **spec,
        "minigpt": {**spec["minigpt"], "checkpoints": {**ck, "minigpt": {**ck["minigpt"], "sha256": None}}},
    }
    with pytest.raises(ConfigError, match=ck["minigpt"]["sha256"]):  # the message names the file's hash
        G.convert(unpinned, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_partial_adapter_is_refused(files, tmp_path) -> None:
    sd = {k: t for k, t in minigpt_state(2).items() if "layers.1.self_attn.v_proj" not in k}
    torch.save({"model": sd}, tmp_path / "minigptv2_checkpoint.pth")
    torch.save(eva_state(), tmp_path / "eva_vit_g.pth")
    with pytest.raises(ConfigError, match="LoRA adapter covers 3 modules"):
        G.convert(tiny_spec(tmp_path, files["llama"]), tmp_path / "out")


def test_table2_claims_minigpt_rows_and_the_report_sets_them_beside_the_papers() -> None:
    from diff_erank.config import load_config
    from diff_erank.reproduce import compare, multimodal_long

    cfg = load_config(REPO / "conf", ["experiment=table2"])
    assert cfg["multimodal"]["models"]["minigpt-v2"]["arch"] == "minigpt-v2"
    rows = [
        {
            "model": "minigpt-v2",
            "dataset": d,
            "rotation": rot,
            **{m: 10.0 + i for i, m in enumerate(M.LEVELS)},
        }
        for d in ("detail_23k", "cc_sbu_align")
        for rot in (0, 90)
    ]
    mm = pd.DataFrame(rows).assign(image_reduction_ratio=0.5, image_text_alignment=0.9)
    cmp = compare(multimodal_long(mm, cfg), ["table2", "table3"], config=cfg)
    mini = cmp[cmp["family"] == "minigpt-v2"]
    assert len(mini) == 14 and set(mini["table"]) == {"table2"} and mini["ours"].notna().all()
    row = mini[(mini["dataset"] == "detail_23k") & (mini["metric"] == "erank1_vision")].iloc[0]
    assert row["paper"] == pytest.approx(90.59) and row["ours"] == 10.0


def test_plan_and_sizes_include_minigpt(tmp_path) -> None:
    from diff_erank import plan, sizing

    jobs = plan.dag(["experiment=table2"], plan.snakefile_for(REPO / "conf"), tmp_path).jobs
    lines = plan.bill(jobs)
    assert lines["convert_minigpt"].jobs == 1 and lines["mm_erank"].jobs == 3 * 2 * 2
    entry = {**ENTRY, "resources": None}
    llava = yaml.safe_load((REPO / "conf" / "mm_model" / "llava-1_5-7b.yaml").read_text()) | {
        "resources": None
    }
    # the same 7B LLM, plus EVA-g's 1B parameters in float16
    extra = sizing.mm_need(entry, "cuda").gpu_mem_mb - sizing.mm_need(llava, "cuda").gpu_mem_mb
    assert 2000 < extra < 3000
    assert (
        sizing.minigpt_convert_need(entry).mem_mb > 7e9 * 2 / 1e6
        and sizing.minigpt_convert_need(entry).gpus == 0
    )


@pytest.mark.slow
def test_table2_with_minigpt_end_to_end(files, tmp_path) -> None:
    """table2 with LLaVA removed: the conversion rule, then every eRank job on the converted model."""
    from helpers.multimodal import local_table2_datasets
    from helpers.workflow import snakemake

    ck = files["spec"]["minigpt"]["checkpoints"]
    key = "multimodal.models.minigpt-v2"
    overrides = [
        "experiment=table2",
        "~multimodal.models.llava-1_5-7b",
        "~multimodal.models.llava-1_5-13b",
        f"{key}.dtype=float32",
        f"{key}.minigpt.image_size={IMAGE}",
        f"{key}.minigpt.vision_heads={HEADS}",
        f"{key}.minigpt.lora.r={R}",
        f"{key}.minigpt.checkpoints.eva_vit.path='{ck['eva_vit']['path']}'",
        f"{key}.minigpt.checkpoints.eva_vit.sha256='{ck['eva_vit']['sha256']}'",
        f"{key}.minigpt.checkpoints.minigpt.path='{ck['minigpt']['path']}'",
        f"{key}.minigpt.checkpoints.minigpt.sha256='{ck['minigpt']['sha256']}'",
        f"{key}.minigpt.checkpoints.llama.source='{files['llama']}'",
        *local_table2_datasets(tmp_path / "data", 3, 3),
    ]
    r = snakemake(tmp_path / "work", overrides=overrides)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "work" / "results" / "table2"
    mm = pd.read_csv(out / "tables" / "multimodal.csv")
    assert len(mm) == 4 and set(mm["model"]) == {"minigpt-v2"}
    rep = pd.read_csv(out / "tables" / "reproduction_multimodal.csv")
    assert len(rep) == 14 and rep["ours"].notna().all() and set(rep["family"]) == {"minigpt-v2"}
    from diff_erank.storage import read_provenance

    prov = read_provenance(out / "mm" / "erank" / "minigpt-v2" / "detail_23k" / "rot0.parquet")
    assert prov["checkpoint"]["minigpt"]["sha256"] == ck["minigpt"]["sha256"]
