"""MiniGPT-v2 for the multi-modal eRanks (the paper's second model of Tables 2-3).

transformers has no MiniGPT-v2 class, but each of its parts is a transformers class, so the three
published files are converted once (:func:`convert`) into one directory of safetensors that
those classes load. What MiniGPT-v2 is, read in its code (Vision-CAIR/MiniGPT-4 at d94738a):

- vision tower: BLIP-2's EVA ViT-g/14 (``minigpt4/models/eva_vit.py``, ``create_eva_vit_g``: 39
  blocks, width 1408, 1408 // 88 = 16 heads, MLP int(1408 * 4.3637) = 6144 with exact GELU, q and
  v biases (the k bias is zero), LayerNorm eps 1e-6, no final norm). The LAVIS checkpoint has the
  16 x 16 position grid of 224-pixel images; ``interpolate_pos_embed`` resizes it bicubically to the
  32 x 32 grid of 448-pixel images, CLS position kept. transformers' ``Blip2VisionModel`` is the
  same network (its conversion, ``convert_blip_2_original_to_pytorch.py``, maps these names); its
  qkv bias is cat(q_bias, 0, v_bias) as EVA's forward builds it. Its encoder output is read before
  its own ``post_layernorm``.
- ``ln_vision``: a LayerNorm(1408) with torch's default eps 1e-5, computed in float32
  (``minigpt4/models/base_model.py``: ``init_vision_encoder``, ``LayerNorm``). It is frozen, and
  MiniGPT's trainer saves only parameters with gradients (``minigpt4/runners/runner_base.py``,
  ``_save_checkpoint``), so unless ``minigptv2_checkpoint.pth`` holds it, it is its initial value
  (weight 1, bias 0); the conversion records which.
- connector: CLS dropped, every 4 consecutive tokens concatenated (``view(bs, pn / 4, 4 * hs)``: 256 x
  5632 from 1024 x 1408), then ``llama_proj = Linear(5632, 4096)`` (``minigpt4/models/minigpt_v2.py``,
  ``encode_img``).
- LLM: Llama-2-7b-chat with LoRA r 64, alpha 16 on ``q_proj`` and ``v_proj`` (``minigpt_v2.py``
  defaults, ``minigpt4/configs/models/minigpt_v2.yaml``); peft 0.2.0 (MiniGPT's pin) computes
  ``W x + (alpha / r) B A x``, merged here into ``W + (alpha / r) B A``.
- prompt: ``[INST] <Img><ImageHere></Img> {instruction} [/INST]`` (``minigpt4/conversation/
  conversation.py``: ``CONV_VISION_minigptv2``, ``Chat.ask``); the pieces around ``<ImageHere>``
  are tokenised on their own, BOS on the first only (``minigpt_base.py``, ``get_context_emb``);
  the answer ends with end_sym ``</s>`` (``eval_configs/minigptv2_eval.yaml``).
- pixels: ``Resize((448, 448), bicubic)`` of the PIL image (no padding to a square), ``ToTensor``,
  CLIP mean and std (``minigpt4/processors/blip_processors.py``, ``Blip2ImageEvalProcessor``).

Levels (as :mod:`diff_erank.multimodal` defines them for LLaVA): eRank1 the tower's tokens after
``ln_vision`` without CLS, eRank2 after ``llama_proj``, eRank3..5 the LLM's last hidden states.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diff_erank.checkpoint import check_sha256
from diff_erank.config import ConfigError
from diff_erank.entries import resolve_source
from diff_erank.models import DTYPES, check_buffers, hub_commit
from diff_erank.storage import atomic_publish_dir, sha256, write_json

log = logging.getLogger(__name__)

IMAGE_HERE = "<ImageHere>"
#: the image as MiniGPT-v2's prompts wrap it; the text-only level drops it with the space after it
IMAGE_SLOT = "<Img><ImageHere></Img>"
#: consecutive visual tokens concatenated into one LLM token (minigpt_v2.py ``encode_img``)
GROUP = 4
FACTS = "minigpt.json"
#: the five eRank levels of an image-text probe, LLaVA's and MiniGPT-v2's alike (diff_erank.multimodal
#: imports them from here: this module cannot import it back)
LEVELS = ["erank1_vision", "erank2_connector", "erank3_llm_image", "erank4_llm_text", "erank5_llm_image_text"]
#: buffers a training checkpoint may hold that are computed from the config, not learned
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")
_LORA = re.compile(r"^llama_model\.base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$")


# -- reading the published files ---------------------------------------------------------------
def load_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file, with torch's weights-only unpickler: a file that holds any
    other object (which could run code when unpickled) is refused. A training checkpoint's
    weights are under ``model`` (MiniGPT's ``load_checkpoint``); its other entries are dropped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"refusing {path}: it holds more than tensors (torch's weights-only loader rejected it: {first})"
        ) from None
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return state


def checked_file(entry: dict[str, Any]) -> tuple[Path, str]:
    """``(path, sha256)`` of a checkpoint file whose hash matches the one the entry pins.

    An entry without a hash is refused too, with the file's hash in the message: the published
    files come without hashes, so a researcher checks a download once and pins it, and every
    later conversion uses those bytes or none.
    """
    path = Path(entry["path"]).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint file does not exist: {path} (download it from {entry.get('url')})")
    if not entry.get("sha256"):
        raise ConfigError(
            f"{path}: no sha256 pinned in the model entry; the file's SHA-256 is {sha256(path)}: "
            "check the download, then set it in the entry (minigpt.checkpoints) to use the file"
        )
    return path, check_sha256(path, entry["sha256"])


# -- the vision tower --------------------------------------------------------------------------
def interpolate_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, 1 + g*g, d)`` position embeddings for a ``grid x grid`` patch grid: the CLS position
    kept, the ``g x g`` grid (raster order) resized bicubically, in float32 (eva_vit.py
    ``interpolate_pos_embed``)."""
    pos = pos.float()
    cls, patches = pos[:, :1], pos[:, 1:]
    g = math.isqrt(patches.shape[1])
    if g * g != patches.shape[1]:
        raise ConfigError(f"pos_embed has {patches.shape[1]} patch positions, not a square grid")
    if g == grid:
        return pos
    x = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, x.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def vision_model(eva: dict[str, torch.Tensor], spec: dict[str, Any]):
    """A ``Blip2VisionModel`` holding the LAVIS EVA weights (positions resized to ``image_size``),
    and the names of the file's tensors that the tower does not use."""
    from transformers import Blip2VisionConfig, Blip2VisionModel

    patch_w = eva["patch_embed.proj.weight"]
    width, patch = patch_w.shape[0], patch_w.shape[-1]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in eva if k.startswith("blocks."))
    cfg = Blip2VisionConfig(
        hidden_size=width,
        intermediate_size=eva["blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=n_blocks,
        num_attention_heads=spec["vision_heads"],
        image_size=spec["image_size"],
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
    )
    names = {
        "cls_token": "embeddings.class_embedding",
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    }
    for i in range(n_blocks):
        b, h = f"blocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in [
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("attn.proj", "self_attn.projection"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ]:
            for p in ("weight", "bias"):
                names[f"{b}{ours}.{p}"] = f"{h}{theirs}.{p}"
        names[f"{b}attn.qkv.weight"] = f"{h}self_attn.qkv.weight"
    missing = [k for k in [*names, "pos_embed"] if k not in eva]
    missing += [
        f"blocks.{i}.attn.{q}_bias"
        for i in range(n_blocks)
        for q in "qv"
        if f"blocks.{i}.attn.{q}_bias" not in eva
    ]
    if missing:
        raise ConfigError(f"the EVA checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    state = {theirs: eva[ours] for ours, theirs in names.items()}
    state["embeddings.position_embedding"] = interpolate_positions(
        eva["pos_embed"], spec["image_size"] // patch
    )
    for i in range(n_blocks):
        q, v = eva[f"blocks.{i}.attn.q_bias"], eva[f"blocks.{i}.attn.v_bias"]
        state[f"encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    model = Blip2VisionModel(cfg)
    # BLIP-2's conversion puts ln_vision here; MiniGPT's eps differs, so ours is applied apart
    # (the probe never runs post_layernorm): identity values, so that a forward cannot mislead
    state["post_layernorm.weight"] = torch.ones(width)
    state["post_layernorm.bias"] = torch.zeros(width)
    model.load_state_dict({k: t.float() for k, t in state.items()}, strict=True)
    used = {*names, "pos_embed"} | {f"blocks.{i}.attn.{q}_bias" for i in range(n_blocks) for q in "qv"}
    return model, sorted(set(eva) - used)


# -- the language model ------------------------------------------------------------------------
def merge_lora(llm, lora: dict[str, dict[str, torch.Tensor]], spec: dict[str, Any]) -> int:
    """Add ``(alpha / r) B A`` (computed in float32) to each target weight of ``llm``, in place.

    Every layer's every target must have its pair: a partial adapter is refused, not half merged.
    """
    r, alpha, targets = spec["lora"]["r"], spec["lora"]["alpha"], spec["lora"]["targets"]
    modules = dict(llm.named_modules())
    expected = {n for n in modules if n.rsplit(".", 1)[-1] in targets and ".layers." in f".{n}"}
    if set(lora) != expected or any(set(ab) != {"A", "B"} for ab in lora.values()):
        raise ConfigError(
            f"the LoRA adapter covers {len(lora)} modules, the LLM has {len(expected)} {targets} modules "
            f"(e.g. missing {sorted(expected - set(lora))[:2]}, unknown {sorted(set(lora) - expected)[:2]})"
        )
    with torch.no_grad():
        for name, ab in lora.items():
            if ab["A"].shape[0] != r:
                raise ConfigError(f"{name}: LoRA rank {ab['A'].shape[0]}, the entry says r={r}")
            w = modules[name].weight
            w.copy_((w.float() + (alpha / r) * (ab["B"].float() @ ab["A"].float())).to(w.dtype))
    return len(lora)


def split_minigpt(state: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """MiniGPT-v2's checkpoint as (connector tensors, LoRA pairs by LLM module, ignored buffers).

    Anything else is refused: a trained part this conversion does not know would be lost.
    """
    connector, lora, ignored, unknown = {}, {}, [], []
    for k, t in state.items():
        m = _LORA.match(k)
        if m:
            lora.setdefault(m.group(1), {})[m.group(2)] = t
        elif k in ("llama_proj.weight", "llama_proj.bias", "ln_vision.weight", "ln_vision.bias"):
            connector[k] = t
        elif _IGNORED.search(k):
            ignored.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise ConfigError(
            f"the MiniGPT-v2 checkpoint holds tensors this conversion does not place: {unknown[:5]}"
        )
    if "llama_proj.weight" not in connector:
        raise ConfigError("the MiniGPT-v2 checkpoint has no llama_proj.weight")
    return connector, lora, ignored


# -- the conversion ----------------------------------------------------------------------------
def convert(spec: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """The three published files -> ``out_dir``: ``vision/`` (Blip2VisionModel and its image
    processor), ``connector.safetensors`` (ln_vision, llama_proj), ``llm/`` (Llama with the LoRA
    merged, and its tokenizer), ``minigpt.json`` (hashes, sources, what was merged or assumed).

    Both ``.pth`` files are checked against the SHA-256 the entry pins before they are read, and
    read with the weights-only unpickler. Tensors are saved in the entry's dtype.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, BlipImageProcessorPil

    mg, dtype = spec["minigpt"], DTYPES[spec["dtype"]]
    ck = mg["checkpoints"]
    eva_path, eva_sha = checked_file(ck["eva_vit"])
    mini_path, mini_sha = checked_file(ck["minigpt"])
    tower, unused = vision_model(load_pth(eva_path), mg)
    connector, lora, ignored = split_minigpt(load_pth(mini_path))
    width = tower.config.hidden_size
    ln_source = "checkpoint" if "ln_vision.weight" in connector else "initial value (weight 1, bias 0)"
    connector.setdefault("ln_vision.weight", torch.ones(width))
    connector.setdefault("ln_vision.bias", torch.zeros(width))
    if connector["llama_proj.weight"].shape[1] != GROUP * width:
        raise ConfigError(
            f"llama_proj takes {connector['llama_proj.weight'].shape[1]} inputs, not {GROUP} x {width}"
        )

    llama = ck["llama"]
    name, rev = resolve_source(llama["source"], llama.get("revision"))
    for file, expected in (llama.get("sha256") or {}).items():
        check_sha256(Path(name) / file, expected)
    llm = AutoModelForCausalLM.from_pretrained(name, revision=rev, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=rev)
    merged = merge_lora(llm, lora, mg)
    if connector["llama_proj.weight"].shape[0] != llm.config.hidden_size:
        raise ConfigError("llama_proj's output width is not the LLM's hidden size")

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tower.to(dtype).save_pretrained(tmp / "vision")
    size = mg["image_size"]
    BlipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(tmp / "vision")
    save_file({k: t.to(dtype).contiguous() for k, t in connector.items()}, str(tmp / "connector.safetensors"))
    llm.save_pretrained(tmp / "llm")
    tokenizer.save_pretrained(tmp / "llm")
    facts = {
        "checkpoint": mg.get("checkpoint_name"),
        "dtype": spec["dtype"],
        "eva_vit": {"file": eva_path.name, "sha256": eva_sha, "unused_tensors": unused},
        "minigpt": {"file": mini_path.name, "sha256": mini_sha, "ignored_buffers": len(ignored)},
        "llama": {"source": llama["source"], "revision": rev, "commit": hub_commit(name, rev)},
        "ln_vision": {"from": ln_source, "eps": mg["ln_vision_eps"]},
        "positions": {"grid": size // tower.config.patch_size},
        "lora": {**mg["lora"], "merged_modules": merged},
    }
    write_json(facts, tmp / FACTS)
    atomic_publish_dir(tmp, out_dir)
    log.info("converted MiniGPT-v2 -> %s: %s", out_dir, facts)
    return facts


# -- the probe ---------------------------------------------------------------------------------
def tokenize_around_image(prompt: str, tokenizer) -> list[list[int]]:
    """The ids of each piece of ``prompt`` around ``<ImageHere>``, BOS on the first piece only
    (``get_context_emb``)."""
    return [
        tokenizer(piece, add_special_tokens=(k == 0))["input_ids"]
        for k, piece in enumerate(prompt.split(IMAGE_HERE))
    ]


class MiniGPTv2Probe:
    """The five hidden-state matrices of one item, from a converted MiniGPT-v2 directory."""

    def __init__(
        self, vision, connector: dict[str, torch.Tensor], llm, tokenizer, processor, spec, device
    ) -> None:
        template = spec["template"]
        if template.count(IMAGE_HERE) != 1 or "{instruction}" not in template or "{response}" not in template:
            raise ConfigError(
                f"template {template!r} needs one {IMAGE_HERE}, {{instruction}} and {{response}}"
            )
        self.vision, self.llm, self.tok, self.proc, self.template, self.device = (
            vision, llm, tokenizer, processor, template, device
        )  # fmt: skip
        self.model = llm
        self.commit = None  # a local converted directory: the checkpoints' own commits are in ``facts``
        self.ln_eps = spec["minigpt"]["ln_vision_eps"]
        self.connector = {k: t.to(device, llm.dtype) for k, t in connector.items()}
        self.facts: dict[str, Any] = {}

    @classmethod
    def load(cls, spec: dict[str, Any], device: torch.device, path: str | None = None) -> MiniGPTv2Probe:
        import json

        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer, Blip2VisionModel, BlipImageProcessorPil

        folder = Path(path or spec.get("source") or "")
        if not (folder / FACTS).is_file():
            raise ConfigError(
                f"{folder} is not a converted MiniGPT-v2 directory (no {FACTS}): run convert-minigpt"
            )
        dtype = DTYPES[spec["dtype"]]
        vision = Blip2VisionModel.from_pretrained(folder / "vision", dtype=dtype).to(device).eval()
        llm = AutoModelForCausalLM.from_pretrained(folder / "llm", dtype=dtype).to(device).eval()
        for part, model in (("vision", vision), ("llm", llm)):  # no uninitialised buffers, as load_variant
            check_buffers(model, dtype, f"{folder / part}")
        probe = cls(
            vision,
            load_file(str(folder / "connector.safetensors")),
            llm,
            AutoTokenizer.from_pretrained(folder / "llm"),
            BlipImageProcessorPil.from_pretrained(folder / "vision"),
            spec,
            device,
        )
        probe.facts = json.loads((folder / FACTS).read_text())
        return probe

    def pixels(self, image) -> torch.Tensor:
        pix = self.proc(images=image, return_tensors="pt")["pixel_values"]
        return pix.to(self.device, self.vision.dtype)

    @torch.no_grad()
    def vision_features(self, pix: torch.Tensor) -> torch.Tensor:
        """eRank1's tokens: the tower's last block output, ``ln_vision`` (in float32), CLS dropped."""
        x = self.vision.encoder(inputs_embeds=self.vision.embeddings(pix)).last_hidden_state
        c = self.connector
        x = F.layer_norm(
            x.float(), x.shape[-1:], c["ln_vision.weight"].float(), c["ln_vision.bias"].float(), self.ln_eps
        )
        return x.to(self.llm.dtype)[:, 1:]

    @torch.no_grad()
    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """eRank2's tokens: 4 consecutive tokens side by side, then ``llama_proj``."""
        b, n, d = feats.shape
        c = self.connector
        return F.linear(
            feats.reshape(b, n // GROUP, GROUP * d), c["llama_proj.weight"], c.get("llama_proj.bias")
        )

    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.llm.get_input_embeddings()(torch.tensor([ids], device=self.device))

    @torch.no_grad()
    def _last(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.llm.model(inputs_embeds=embeds).last_hidden_state[0]

    @torch.no_grad()
    def sequence(self, prompt: str, projected: torch.Tensor) -> torch.Tensor:
        """The LLM input of a prompt with one ``<ImageHere>``: text, image embeddings, text."""
        first, rest = tokenize_around_image(prompt, self.tok)
        return torch.cat([self._embed(first), projected, self._embed(rest)], dim=1)

    @torch.no_grad()
    def states(self, image, instruction: str, response: str) -> dict[str, torch.Tensor]:
        feats = self.vision_features(self.pixels(image))
        projected = self.project(feats)
        full = self.template.format(instruction=instruction, response=response)
        text_only = full.replace(IMAGE_SLOT + " ", "").replace(IMAGE_SLOT, "")
        bos = self.tok("")["input_ids"]  # the special prefix the text levels start with
        hs3 = self._last(torch.cat([self._embed(bos), projected], dim=1))
        hs4 = self._last(self._embed(self.tok(text_only)["input_ids"]))
        hs5 = self._last(self.sequence(full, projected))
        return dict(zip(LEVELS, [feats[0], projected[0], hs3, hs4, hs5], strict=True))
