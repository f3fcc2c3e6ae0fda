"""Multi-modal eRanks of a LLaVA model (the paper's Tables 2 and 3).

For one image-text item (instruction + response) five hidden-state matrices are measured:

1. eRank1: the vision tower's output tokens as fed to the projector
   (``hidden_states[vision_feature_layer]``, CLS dropped under the default strategy);
2. eRank2: the same tokens after the multi-modal projector;
3. eRank3: the language model's last hidden states for the image tokens alone (after the BOS
   that the text levels start with too, so the three language-model levels compare like things);
4. eRank4: the language model's last hidden states for the text alone;
5. eRank5: the language model's last hidden states for the image and the text together.

Per dataset the five are aggregated with algorithm (a) (exp of the mean entropy, the natural
reading of the paper) or (b); then Image Reduction Ratio = (E1 - E2) / E1 and Image-Text
Alignment = mean(E3, E4, E5) / max(E3, E4, E5). Rotated images (clockwise, 90 degrees by
default) give Table 3.

The model is run as LLaVA-1.5's authors run it: every image is padded to a square with the CLIP
mean colour before CLIP preprocessing (their ``expand2square``; ``LlavaImageProcessorPil`` with
``do_pad=True``), the prompt is the Vicuna v1 conversation with its system prompt (the model
entry's ``template``), and its pieces around ``<image>`` are tokenised separately
(:func:`tokenizer_image_token`, their ``tokenizer_image_token``).

MiniGPT-v2 (an entry with ``arch: minigpt-v2``) has its own probe with the same five levels, in
:mod:`diff_erank.minigpt`; :func:`load_probe` picks by the entry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diff_erank.config import ConfigError
from diff_erank.entries import resolve_source
from diff_erank.erank import STANDARD_ALGORITHM, dataset_erank, erank_stats
from diff_erank.errors import UserError
from diff_erank.minigpt import LEVELS
from diff_erank.models import DTYPES, check_buffers, hub_commit
from diff_erank.progress import tqdm
from diff_erank.storage import read_parquet

log = logging.getLogger(__name__)

IMAGE = "<image>"


class MultimodalDataError(UserError, RuntimeError):
    """An image-text item that cannot be measured; the message names the item and file."""


# -- items -------------------------------------------------------------------------------------
def _annotations(source: dict[str, Any]) -> Any:
    path = source.get("annotations")
    if source.get("hub"):
        from huggingface_hub import hf_hub_download

        hub = source["hub"]
        try:
            path = hf_hub_download(
                hub["repo"], hub["filename"], repo_type="dataset", revision=hub.get("revision")
            )
        except Exception as exc:
            raise MultimodalDataError(
                f"cannot download {hub['repo']}/{hub['filename']} ({type(exc).__name__}); offline? "
                "point `annotations` at a local copy"
            ) from None
    if not path or not Path(path).is_file():
        raise MultimodalDataError(f"annotation file does not exist: {path}")
    return json.loads(Path(path).read_text())


def load_items(spec: dict[str, Any]) -> pd.DataFrame:
    """Items as rows (id, image, instruction, response), checked; bad ones skipped or fatal."""
    source = spec["source"]
    data = _annotations(source)
    images = Path(source["images"])
    rows = []
    if source["kind"] == "llava_instruct":
        for rec in data:
            conv = rec.get("conversations") or []
            human = next((c["value"] for c in conv if c.get("from") == "human"), "")
            gpt = next((c["value"] for c in conv if c.get("from") == "gpt"), "")
            instruction = human.replace(IMAGE, "").strip()
            rows.append(
                {
                    "id": str(rec.get("id")),
                    "image": str(images / rec.get("image", "")),
                    "instruction": instruction,
                    "response": gpt.strip(),
                }
            )
    elif source["kind"] == "cc_sbu_align":
        for rec in data["annotations"]:
            rows.append(
                {
                    "id": str(rec["image_id"]),
                    "image": str(images / f"{rec['image_id']}.jpg"),
                    "instruction": spec.get("instruction") or "",
                    "response": (rec.get("caption") or "").strip(),
                }
            )
    else:
        raise ConfigError(
            f"multimodal dataset kind {source['kind']!r}; valid: ['llava_instruct', 'cc_sbu_align']"
        )
    df = pd.DataFrame(rows, columns=["id", "image", "instruction", "response"])
    problems = []
    for r in df.itertuples():
        if not (r.instruction or r.response):
            problems.append((r.Index, f"item {r.id} has no text"))
        elif not Path(r.image).is_file():
            problems.append((r.Index, f"item {r.id}: image file does not exist: {r.image}"))
    if problems and not spec.get("skip_bad", False):
        raise MultimodalDataError(
            "; ".join(p for _, p in problems[:5]) + (" ..." if len(problems) > 5 else "")
        )
    for _, p in problems:
        log.warning("skipped: %s", p)
    df = df.drop(index=[i for i, _ in problems]).reset_index(drop=True)
    k = spec.get("max_items")
    if k and k < len(df):
        import random

        random.seed(spec.get("seed", 123))
        df = df.iloc[sorted(random.sample(range(len(df)), k))].reset_index(drop=True)
    df.attrs["n_skipped"] = len(problems)
    return df


def open_image(path: str | Path, rotate_clockwise: int = 0):
    """The RGB image, rotated clockwise by ``rotate_clockwise`` degrees; unreadable files name themselves."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise MultimodalDataError(f"unreadable image {path}: {exc}") from None
    return image.rotate(-rotate_clockwise, expand=True) if rotate_clockwise % 360 else image


# -- the model ---------------------------------------------------------------------------------
def tokenizer_image_token(prompt: str, tokenizer, image_id: int, n_image: int) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: each piece around ``<image>`` is tokenised on its own
    (with special tokens, the leading BOS of every piece but the first dropped) and each
    ``<image>`` becomes ``n_image`` image-token ids, as the model expands it.

    With a SentencePiece (Llama) tokenizer a piece after the image starts a fresh sequence and so
    gets the prefix space that tokenising the whole string would not give it: that difference is
    the original's, and kept.
    """
    chunks = [tokenizer(chunk)["input_ids"] for chunk in prompt.split(IMAGE)]
    bos = tokenizer.bos_token_id
    offset = 1 if chunks and chunks[0] and chunks[0][0] == bos else 0
    ids = [bos] if offset else []
    for k, chunk in enumerate(chunks):
        ids += chunk[offset:] if (offset and chunk[:1] == [bos]) else chunk
        if k < len(chunks) - 1:
            ids += [image_id] * n_image
    return ids


class LlavaProbe:
    """The five hidden-state matrices of one item, from a ``LlavaForConditionalGeneration``."""

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        template: str,
        device: torch.device,
        commit: str | None = None,
    ) -> None:
        if IMAGE not in template or "{instruction}" not in template or "{response}" not in template:
            raise ConfigError(f"template {template!r} needs {IMAGE}, {{instruction}} and {{response}}")
        self.model, self.tok, self.proc, self.template, self.device = (
            model,
            tokenizer,
            image_processor,
            template,
            device,
        )
        self.image_id = model.config.image_token_id
        #: the hub commit model, tokenizer and processor were read at (None: a local directory)
        self.commit = commit

    @classmethod
    def load(cls, spec: dict[str, Any], device: torch.device) -> LlavaProbe:
        from transformers import AutoTokenizer, LlavaForConditionalGeneration, LlavaImageProcessorPil

        name, rev = resolve_source(spec["source"], spec.get("revision"))
        dtype = DTYPES[spec["dtype"]]
        # the commit `rev` points to now, as the model entries resolve theirs (transformers 5 leaves
        # `config._commit_hash` unset); all three pieces are read at that commit, so a `main` that
        # moves meanwhile cannot mix two
        commit = hub_commit(name, rev)
        rev = commit or rev
        model = LlavaForConditionalGeneration.from_pretrained(
            name, revision=rev, dtype=dtype, use_safetensors=True
        )
        check_buffers(model, dtype, f"{spec['source']}")  # no uninitialised buffers, as in load_variant
        model = model.to(device).eval()
        tok = AutoTokenizer.from_pretrained(name, revision=rev)
        # pad to a square with the mean colour (image_mean x 255) first, as LLaVA's expand2square
        proc = LlavaImageProcessorPil.from_pretrained(name, revision=rev, do_pad=True)
        return cls(model, tok, proc, spec["template"], device, commit)

    def pixels(self, image) -> torch.Tensor:
        pix = self.proc(images=image, return_tensors="pt")["pixel_values"]
        return pix.to(self.device, self.model.dtype)

    @torch.no_grad()
    def vision_features(self, pix: torch.Tensor) -> torch.Tensor:
        """The vision tower's tokens as the projector receives them (one image)."""
        cfg = self.model.config
        out = self.model.model.vision_tower(pix, output_hidden_states=True)
        layer = cfg.vision_feature_layer
        feats = (
            out.hidden_states[layer]
            if isinstance(layer, int)
            else torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        )
        return feats[:, 1:] if cfg.vision_feature_select_strategy == "default" else feats

    def _ids(self, text: str, n_image: int) -> torch.Tensor:
        return torch.tensor(
            [tokenizer_image_token(text, self.tok, self.image_id, n_image)], device=self.device
        )

    @torch.no_grad()
    def states(self, image, instruction: str, response: str) -> dict[str, torch.Tensor]:
        pix = self.pixels(image)
        feats = self.vision_features(pix)
        projected = self.model.model.multi_modal_projector(feats)
        n = feats.shape[1]
        full = self.template.format(instruction=instruction, response=response)
        text_only = full.replace(IMAGE + "\n", "").replace(IMAGE, "")
        both = self._ids(full, n)
        # the image tokens after the same special prefix (BOS) the two text levels start with
        prefix = self.tok("")["input_ids"]
        image_only = torch.tensor([[*prefix, *[self.image_id] * n]], device=self.device)
        hs3 = self.model(input_ids=image_only, pixel_values=pix, output_hidden_states=True).hidden_states[-1][
            0
        ]
        hs4 = self.model(input_ids=self._ids(text_only, 0), output_hidden_states=True).hidden_states[-1][0]
        hs5 = self.model(input_ids=both, pixel_values=pix, output_hidden_states=True).hidden_states[-1][0]
        return dict(zip(LEVELS, [feats[0], projected[0], hs3, hs4, hs5], strict=True))


def load_probe(spec: dict[str, Any], device: torch.device, path: str | None = None):
    """The probe of a multi-modal model entry: LLaVA, or MiniGPT-v2 from its converted directory
    (``path``, the workflow's conversion, or the entry's ``source``)."""
    if spec.get("arch", "llava") == "minigpt-v2":
        from diff_erank.minigpt import MiniGPTv2Probe

        return MiniGPTv2Probe.load(spec, device, path)
    return LlavaProbe.load(spec, device)


def measure_items(probe: LlavaProbe, items: pd.DataFrame, rotate_clockwise: int = 0) -> pd.DataFrame:
    """Per item and level: tokens, dimension, entropy, eRank."""
    rows = []
    for r in tqdm(list(items.itertuples()), desc=f"mm rot{rotate_clockwise}", mininterval=2.0):
        image = open_image(r.image, rotate_clockwise)
        for level, hidden in probe.states(image, r.instruction, r.response).items():
            s = erank_stats(hidden)
            rows.append(
                {
                    "id": r.id,
                    "level": level,
                    "rotation": rotate_clockwise,
                    "n_tokens": s.n_tokens,
                    "dim": s.dim,
                    "entropy": s.entropy,
                    "erank": s.erank,
                }
            )
    return pd.DataFrame(rows)


# -- the ratios --------------------------------------------------------------------------------
def image_reduction_ratio(e1: float, e2: float) -> float:
    return (e1 - e2) / e1


def image_text_alignment(e3: float, e4: float, e5: float) -> float:
    return (e3 + e4 + e5) / 3 / max(e3, e4, e5)


def summarise(per_item: pd.DataFrame, algorithm: str = STANDARD_ALGORITHM) -> dict[str, float]:
    """Dataset-level eRank of each level and the two ratios."""
    e = {lvl: dataset_erank(per_item.loc[per_item["level"] == lvl, "entropy"], algorithm) for lvl in LEVELS}
    e["image_reduction_ratio"] = image_reduction_ratio(e[LEVELS[0]], e[LEVELS[1]])
    e["image_text_alignment"] = image_text_alignment(*(e[lvl] for lvl in LEVELS[2:]))
    e["n_items"] = float(per_item["id"].nunique())
    return e


def table(
    per_item_files: dict[tuple[str, str, int], str], algorithm: str = STANDARD_ALGORITHM
) -> pd.DataFrame:
    """One row per (model, dataset, rotation) in the paper's layout."""
    rows = []
    for (model, dataset, rotation), path in per_item_files.items():
        s = summarise(read_parquet(path), algorithm)
        rows.append({"model": model, "dataset": dataset, "rotation": rotation, **s})
    return pd.DataFrame(rows)
