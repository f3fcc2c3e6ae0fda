# Helpers shared by the rules: names, paths and the JSON specs passed to `diff-erank`.
import json
import re
import shlex

from types import SimpleNamespace

from diff_erank import sizing
from diff_erank.cache import KEY, Keys
from diff_erank.variants import TRAINED, Variant, untrained_variants, variants
from diff_erank.data import demo_corpus_file
from diff_erank.sources import dataset_files, image_files, model_files
from diff_erank.outputs import multimodal_files, report_files
from diff_erank.paper import keys_args as paper_keys_args, owned

NAME = r"[A-Za-z0-9_.-]+"


wildcard_constraints:
    key=KEY,
    model=NAME,
    variant=NAME,
    dataset=NAME,
    name=NAME,


MEASURED = [d for d, spec in C["datasets"].items() if spec.get("measure", True)]

# The shared measurement cache (diff_erank.cache): prepared texts, dumps and per-text eRank tables
# live under <results_dir>/cache/, keyed by what determines their numbers; the run folder holds views.
# In a paper run (diff_erank.paper, PART set by the Snakefile) the cache is the paper's, each job
# measures the union of its experiments' layers, and this experiment's cache rules make only the
# entries it owns (OWNED_SETS, OWNED_TEXTS: the `key` wildcard's constraint); otherwise any key.
K = Keys(C, OUT, **paper_keys_args(PART))
CACHE = K.root
LAYERS = "|".join(re.escape(tag) for tag in K.layer_tags())
OWNED_SETS, OWNED_TEXTS = owned(PART, "sets"), owned(PART, "texts")
#: threads of the jobs that use several (cpus-per-task on Slurm; capped by --cores locally)
THREADS = 4


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


def variant_dir(model, variant):
    """The directory the workflow trains a further-trained (ft-) variant into; None for the others."""
    v = Variant.parse(variant)
    return finetuned_dir(model, v.name) if v.kind == "ft" else None


def variant_input(w):
    """What a variant is loaded from: the zoo model, a further-trained stage, local model files."""
    path = variant_dir(w.model, w.variant)
    return trained_input(w) + ([path] if path else []) + model_files(C["models"][w.model], w.variant)


def variant_path_arg(w):
    path = variant_dir(w.model, w.variant)
    return f"--variant-path {path}" if path else ""


def model_resources(model, key, default):
    return (C["models"][model].get("resources") or {}).get(key) or default


def texts_path(dataset):
    return K.texts_path(dataset)


def job(w):
    """The (model, dataset) behind a cache key and the model's variants, as run-folder wildcards."""
    m, d = K.jobs_of[w.key]
    return SimpleNamespace(model=m, dataset=d, variants=K.variants_of(w.key))


def set_input(j):
    """What every variant of a set is loaded from (the union of :func:`variant_input`)."""
    files = []
    for v in j.variants:
        files += [f for f in variant_input(SimpleNamespace(model=j.model, variant=v)) if f not in files]
    return files


def variant_paths_arg(j):
    """``--variant-paths`` for the further-trained (ft-) variants of a set, if it has any."""
    paths = {v: path for v in j.variants if (path := variant_dir(j.model, v))}
    return f"--variant-paths {shlex.quote(as_json(paths))}" if paths else ""


def _cpu_sized(estimate):
    """Resources of a CPU-only rule from one estimate: memory and time, no GPU request (a GPU
    request of nothing has no ``constraint``/``gpu_model`` to give under cluster.gpu_types)."""
    return {k: (lambda w, k=k: getattr(estimate(w), k)) for k in ("mem_mb", "runtime")}


def _sized(estimate):
    """Resources of a rule from one estimate (diff_erank.sizing): memory, time, disk, GPU memory,
    and the GPU request the site's types make of it (cluster.gpu_types; profiles/slurm)."""

    def get(key):
        def value(w):
            need = estimate(w)
            if key in ("gpu", "constraint", "gpu_model", "gres"):
                return sizing.gpu_request(need.gpu_mem_mb if need.gpus else 0, C["cluster"])[key]
            return getattr(need, key)

        return value

    out = {k: get(k) for k in ("mem_mb", "runtime", "gpu_mem_mb")}
    if C["cluster"]["gpu_types"]:  # only when the site names its GPU types: -C '' would match none
        out |= {k: get(k) for k in sizing.gpu_request(1, C["cluster"]) if k != "gpu"}
    return out | {"gpu": get("gpu")}


def dump_estimate(w):
    j = job(w)
    model = C["models"][j.model]
    size = sizing.texts_size(C["datasets"][j.dataset], model, texts_path(j.dataset))
    layers = K.measure_layers(w.key)
    return sizing.dump_need(model, size, layers, C["device"], THREADS, n_variants=len(j.variants))


def erank_estimate(w):
    j = job(w)
    model = C["models"][j.model]
    size = sizing.texts_size(C["datasets"][j.dataset], model, texts_path(j.dataset))
    return sizing.erank_need(model, size, K.measure_layers(w.key), THREADS, n_variants=len(j.variants))


def finetune_estimate(w):
    return sizing.finetune_need(C["models"][w.model], finetune_recipe(w), C["device"], THREADS)


def accuracy_estimate(w):
    return sizing.accuracy_need(C["models"][w.model], C["accuracy"] or {}, C["device"], THREADS)


def mm_estimate(w):
    return sizing.mm_need(MM["models"][w.model], C["device"], THREADS)


def diff_source(w):
    """The cached tables a run's view reads, and the texts they were measured on."""
    src, first = K.prefix.get(w.dataset, (w.dataset, None))
    return {"tables": K.source_table(w.model, w.dataset), "texts": texts_path(src)}


def diff_first(w):
    return f"--first {K.prefix[w.dataset][1]}" if w.dataset in K.prefix else ""


def accuracy_files(model):
    if not C["accuracy"]:
        return []
    wanted = C["accuracy"].get("variants") or [TRAINED]
    return [f"{OUT}/accuracy/{model}/{v}.json" for v in variants(C["models"][model]) if v in wanted]


# Per-stage helpers (here, not beside their rule, so that rule files hold rules only).


def prepare_input(w):
    """The demo corpus part, or a local dataset's files (so editing one reruns `prepare`)."""
    source = C["datasets"][w.dataset]["source"]
    return [str(demo_corpus_file(OUT, source["part"]))] if source["kind"] == "demo" else dataset_files(source)


def finetune_recipe(w):
    return C["models"][w.model]["finetune"][w.name]


def finetune_from(w):
    start = variant_dir(w.model, finetune_recipe(w)["from"])
    return [start] if start else []


def dump_output():
    out = directory(f"{CACHE}/dumps/{{key}}/{{layers}}")
    return out if C["keep_dumps"] else temp(out)


MM = C["multimodal"] or {"models": {}, "datasets": {}, "rotations": []}


def minigpt_dir(model):
    """Where the workflow converts a MiniGPT-v2 entry without a source; None for any other entry."""
    spec = MM["models"][model]
    return f"{OUT}/mm/minigpt/{model}" if spec.get("arch") == "minigpt-v2" and not spec.get("source") else None


def mm_model_input(w):
    """What an mm_erank job loads: the converted MiniGPT-v2 directory, or the entry's local files."""
    converted = minigpt_dir(w.model)
    return [converted] if converted else model_files(MM["models"][w.model], TRAINED)


def mm_model_path_arg(w):
    converted = minigpt_dir(w.model)
    return f"--model-path {converted}" if converted else ""


def minigpt_files(w):
    """The published files a conversion reads (those present: a missing one is the command's error)."""
    ck = MM["models"][w.model]["minigpt"]["checkpoints"]
    files = [ck[k]["path"] for k in ("eva_vit", "minigpt") if Path(ck[k]["path"]).expanduser().is_file()]
    return files + model_files({"source": ck["llama"]["source"]}, "trained")


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

