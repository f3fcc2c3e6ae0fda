"""A tiny LLaVA built from configs (CLIP vision tower + Llama) and generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TEMPLATE = "USER: <image>\n{instruction} ASSISTANT: {response}"


def save_tiny_llava(root: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_tokens(["<image>"], special_tokens=True)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    out = root / "tiny-llava"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        out
    )
    return out


def make_image(path: Path, k: int) -> Path:
    """An asymmetric picture (gradient, off-centre block, stripes), different for each k."""
    from PIL import Image

    rng = np.random.default_rng(k)
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 3 % 256, yy * 4 % 256, (xx + yy * k) % 256], axis=-1).astype(np.uint8)
    img[5 : 20 + k % 10, 50:75] = rng.integers(0, 255, 3)
    img[:, :: 7 + k % 3] = 255
    Image.fromarray(img).save(path)
    return path


def make_llava_instruct(root: Path, n: int = 6) -> tuple[Path, Path]:
    """A detail_23k-style annotation file and its image folder."""
    images = root / "coco"
    images.mkdir(parents=True, exist_ok=True)
    recs = []
    for k in range(n):
        make_image(images / f"{k:012d}.jpg", k)
        recs.append(
            {
                "id": f"{k:012d}",
                "image": f"{k:012d}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the following image in detail."},
                    {
                        "from": "gpt",
                        "value": f"The picture {k} shows stripes, a coloured block and a smooth gradient.",
                    },
                ],
            }
        )
    ann = root / "detail_23k.json"
    ann.write_text(json.dumps(recs))
    return ann, images


def make_cc_sbu(root: Path, n: int = 5) -> tuple[Path, Path]:
    """A cc_sbu_align-style caption file and its image folder."""
    images = root / "cc_sbu" / "image"
    images.mkdir(parents=True, exist_ok=True)
    anns = []
    for k in range(n):
        make_image(images / f"{k + 2}.jpg", 100 + k)
        anns.append(
            {"image_id": str(k + 2), "caption": f"A synthetic image number {k} with stripes and a block."}
        )
    ann = root / "cc_sbu" / "filter_cap.json"
    ann.write_text(json.dumps({"annotations": anns}))
    return ann, images


def local_table2_datasets(root: Path, n_detail: int, n_cc: int) -> list[str]:
    """Overrides that point table2's two datasets at generated local files (no hub)."""
    ann, images = make_llava_instruct(root, n_detail)
    ann2, images2 = make_cc_sbu(root, n_cc)
    return [
        "multimodal.datasets.detail_23k.source.hub=null",
        f"multimodal.datasets.detail_23k.source.annotations='{ann}'",
        f"multimodal.datasets.detail_23k.source.images='{images}'",
        f"multimodal.datasets.cc_sbu_align.source.annotations='{ann2}'",
        f"multimodal.datasets.cc_sbu_align.source.images='{images2}'",
    ]
