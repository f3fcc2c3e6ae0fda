# Helpers shared by the rules: names, paths and the JSON specs passed to `diff-erank`.
import json

from diff_erank.config import untrained_variants, variants

NAME = r"[A-Za-z0-9_.-]+"


wildcard_constraints:
    model=NAME,
    variant=NAME,
    dataset=NAME,
    name=NAME,


MEASURED = [d for d, spec in C["datasets"].items() if spec.get("measure", True)]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


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
    """Directories a variant is loaded from: the zoo model, and a further-trained stage."""
    extra = [finetuned_dir(w.model, w.variant.removeprefix("ft-"))] if w.variant.startswith("ft-") else []
    return trained_input(w) + extra


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


def report_outputs():
    """What `all` asks for: the language-model report (if any models) and the multi-modal one."""
    outs = []
    if C["models"]:
        outs += [f"{OUT}/tables/diff_erank.csv", f"{OUT}/summary.md"]
        if set(C["paper_tables"]) - {"table2", "table3"}:
            outs.append(f"{OUT}/reproduction.md")
        if "size" in C["figures"]:
            outs.append(f"{OUT}/figures/size.png")
    return outs + mm_outputs()
