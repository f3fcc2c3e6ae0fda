# Helpers shared by the rules: names, paths and the JSON specs passed to `diff-erank`.
import json

from diff_erank.config import untrained_variants, variants
from diff_erank.data import demo_corpus_file
from diff_erank.sources import dataset_files, image_files, model_files
from diff_erank.outputs import multimodal_files, report_files

NAME = r"[A-Za-z0-9_.-]+"


wildcard_constraints:
    model=NAME,
    variant=NAME,
    dataset=NAME,
    name=NAME,


MEASURED = [d for d, spec in C["datasets"].items() if spec.get("measure", True)]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def run_folder(w, output):
    """The run folder (OUT), read from a rule's first output, <OUT>/<stage>/<file>."""
    return str(Path(output[0]).parents[1])


def model_spec(w):
    return as_json(C["models"][w.model])


def zoo_dir(model):
    """Directory of a zoo model trained by the workflow (the train rule's output)."""
    return f"{OUT}/zoo/{model}"


def built_dir(model):
    """A model directory the workflow makes: a trained zoo model, or a converted GGUF checkpoint."""
    spec = C["models"][model]
    if spec.get("train"):
        return zoo_dir(model)
    return f"{OUT}/gguf/{model}/hf" if spec.get("gguf") else None


def trained_input(w):
    return [built_dir(w.model)] if built_dir(w.model) else []


def trained_path_arg(w):
    return f"--trained-path {built_dir(w.model)}" if built_dir(w.model) else ""


def finetuned_dir(model, name):
    return f"{OUT}/finetuned/{model}/{name}"


def variant_input(w):
    """What a variant is loaded from: the zoo model, a further-trained stage, local model files."""
    extra = [finetuned_dir(w.model, w.variant.removeprefix("ft-"))] if w.variant.startswith("ft-") else []
    return trained_input(w) + extra + model_files(C["models"][w.model], w.variant)


def variant_path_arg(w):
    if w.variant.startswith("ft-"):
        return f"--variant-path {finetuned_dir(w.model, w.variant.removeprefix('ft-'))}"
    return ""


def model_resources(model, key, default):
    return (C["models"][model].get("resources") or {}).get(key) or default


def erank_tables(model, dataset):
    return {v: f"{OUT}/erank/{model}/{v}/{dataset}.parquet" for v in variants(C["models"][model])}


def accuracy_files(model):
    if not C["accuracy"]:
        return []
    wanted = C["accuracy"].get("variants") or ["trained"]
    return [f"{OUT}/accuracy/{model}/{v}.json" for v in variants(C["models"][model]) if v in wanted]


# Per-stage helpers (here, not beside their rule, so that rule files hold rules only).


def prepare_input(w):
    """The demo corpus part, or a local dataset's files (so editing one reruns `prepare`)."""
    source = C["datasets"][w.dataset]["source"]
    return [str(demo_corpus_file(OUT, source["part"]))] if source["kind"] == "demo" else dataset_files(source)


def finetune_recipe(w):
    return C["models"][w.model]["finetune"][w.name]


def finetune_from(w):
    start = finetune_recipe(w)["from"]
    return [finetuned_dir(w.model, start.removeprefix("ft-"))] if start.startswith("ft-") else []


def dump_output():
    out = directory(f"{OUT}/dumps/{{model}}/{{variant}}/{{dataset}}")
    return out if C["keep_dumps"] else temp(out)


MM = C["multimodal"] or {"models": {}, "datasets": {}, "rotations": []}


def mm_inputs():
    return {
        f"{m}:{d}:{r}": f"{OUT}/mm/erank/{m}/{d}/rot{r}.parquet"
        for m in MM["models"]
        for d in MM["datasets"]
        for r in MM["rotations"]
    }


def mm_outputs():
    if not C["multimodal"]:
        return []
    return [f"{OUT}/{path}" for path in multimodal_files(C).values()]


def report_outputs():
    """What `all` asks for: the language-model report (if any models) and the multi-modal one."""
    outs = []
    if C["models"]:
        outs += [f"{OUT}/{path}" for path in report_files(C).values()]
    return outs + mm_outputs()

