# Helpers shared by the rules: names, paths and the spec files passed to `diff-erank`.
import re
import shlex
import sys

from types import SimpleNamespace

from diff_erank import sizing
from diff_erank.cache import KEY, About, Keys, finetune_key, gguf_key, layers_tag, memo_dir, zoo_key
from diff_erank.variants import TRAINED, Variant, untrained_variants, variants
from diff_erank.data import demo_corpus_file
from diff_erank.entries import DatasetEntry, ModelEntry
from diff_erank.sources import changed_trained_file, dataset_files, image_files, model_files
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

#: the config's model and dataset entries, typed once from the validated config (diff_erank.entries):
#: what the job estimates read (a multi-modal entry has no typed class: MM stays dicts)
MODELS = {name: ModelEntry.from_spec(spec) for name, spec in C["models"].items()}
DATASETS = {name: DatasetEntry.from_spec(spec) for name, spec in C["datasets"].items()}

# The shared measurement cache (diff_erank.cache): prepared texts, dumps and per-text eRank tables
# live under <results_dir>/cache/, keyed by what determines their numbers; the run folder holds views.
# In a paper run (diff_erank.paper, PART set by the Snakefile) the cache is the paper's, each job
# measures the union of its experiments' layers, and this experiment's cache rules make only the
# entries it owns (OWNED_SETS, OWNED_TEXTS: the `key` wildcard's constraint); otherwise any key.
K = Keys(C, OUT, **paper_keys_args(PART))
CACHE = K.root
#: this run's own layer tag; the tags its dump and erank rules make (TAG, their wildcard's constraint)
#: are the tags its jobs measure (in a paper run the union of its experiments' layers) and a wider
#: finished set a view reads from (so that the view's table is an output of this run's DAG, which
#: reruns it when an input changes)
LAYERS = K.layers
TAGS = [*K.layer_tags(), *(t for t in K.wider_tables() if t not in K.layer_tags())]
TAG = "|".join(re.escape(t) for t in TAGS)
OWNED_SETS, OWNED_TEXTS = owned(PART, "sets"), owned(PART, "texts")


def one_of(keys):
    """A wildcard constraint matching exactly these keys (none: a regex that matches nothing). The
    zoo, stage and GGUF rules make only the entries this configuration names: in a paper run every
    experiment's module has those rules, and two rules that can make one file are ambiguous."""
    return "|".join(re.escape(k) for k in sorted(keys)) or "(?!x)x"


#: the demo corpus, its tokenizer and zoo models, under the corpus's key (shared by every run name)
DEMO = K.demo


def _check_zoo():
    """Stop before any job if a finished zoo model folder was edited (Snakemake dates a directory by
    its own timestamp file, so the edit would rerun nothing and the next load would refuse it)."""
    for key, model in K.zoo.items():
        folder = K.zoo_path(key)
        changed = changed_trained_file(folder, memo_dir(C)) if Path(folder).is_dir() else None
        if changed:
            sys.exit(
                f"Cannot start: {folder}/{changed} (zoo model {model}) differs from the file its training "
                f"wrote: delete the folder {folder} to train it again"
            )


_check_zoo()
#: threads of the jobs that use several (cpus-per-task on Slurm; capped by --cores locally)
THREADS = 4


def spec(obj):
    """The path of a spec file holding ``obj`` (a part of the configuration), for a rule's params and
    its step's ``--spec``: named by its content (Keys.spec_file), so Snakemake's params trigger
    reruns the job exactly when the part changes. A dry run names the file and writes nothing."""
    return K.spec_file(obj, write=not workflow.dryrun)


#: ``{ABOUT:{wildcards.key}}``: a cache job's names, its log's first line (diff_erank.cache.About)
ABOUT = About([K])


def run_folder(w, output):
    """The run folder (OUT), read from a rule's first output, <OUT>/<stage>/<file>."""
    return str(Path(output[0]).parents[1])


def model_spec(w):
    return spec(C["models"][w.model])


def zoo_dir(model):
    """Directory of a zoo model trained by the workflow (the train rule's output): in the cache,
    under the key of its recipe, so a second run name trains nothing."""
    return K.zoo_path(zoo_key(C, model))


def built_dir(model):
    """A model directory the workflow makes: a trained zoo model, or a converted GGUF checkpoint."""
    spec = C["models"][model]
    if spec.get("train"):
        return zoo_dir(model)
    return f"{K.gguf_path(gguf_key(C, model))}/hf" if spec.get("gguf") else None


def trained_input(w):
    return [built_dir(w.model)] if built_dir(w.model) else []


def trained_path_arg(w):
    return f"--trained-path {shlex.quote(built_dir(w.model))}" if built_dir(w.model) else ""


def finetuned_dir(model, name):
    """A further-trained stage: in the cache, under the key of what its weights are."""
    return K.finetuned_path(finetune_key(C, model, name))


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
    return f"--variant-path {shlex.quote(path)}" if path else ""


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
    """``--variant-paths ft-<name>=<dir> ...`` for the further-trained variants of a set, if any."""
    paths = [f"{v}={path}" for v in j.variants if (path := variant_dir(j.model, v))]
    return f"--variant-paths {shlex.join(paths)}" if paths else ""


def _cpu_sized(estimate):
    """Resources of a CPU-only rule from one estimate: memory and time, no GPU request (a GPU
    request of nothing has no ``constraint``/``gpu_model`` to give under cluster.gpu_types)."""
    return {k: (lambda w, k=k: getattr(estimate(w), k)) for k in ("mem_mb", "runtime")}


def job_name(rule, w):
    """A job as a user finds it in `snakemake -n` and in the messages: rule and wildcards."""
    return f"job {rule} ({', '.join(f'{k}={v}' for k, v in w.items())})"


def _sized(estimate, rule="job"):
    """Resources of a rule from one estimate (diff_erank.sizing): memory, time, disk, GPU memory,
    and the GPU request the site's types make of it (cluster.gpu_types; profiles/slurm). A retry
    (Snakemake's ``attempt``) asks more (sizing.grown); a first attempt over cluster.max_runtime or
    over the site's GPU memory stops the DAG naming the job."""

    def get(key):
        def value(w, attempt):
            need = sizing.grown(estimate(w), attempt)
            if key in ("gpu", "constraint", "gpu_model", "gres"):
                mb = need.gpu_mem_mb if need.gpus else 0
                return sizing.gpu_request(mb, C["cluster"], job_name(rule, w), retry=attempt > 1).get(key)
            if key == "runtime":
                return _runtime(need, rule, w, attempt)
            return getattr(need, key)

        return value

    out = {k: get(k) for k in ("mem_mb", "runtime", "gpu_mem_mb")}
    if C["cluster"]["gpu_types"]:  # only when the site names its GPU types: -C '' would match none
        out |= {k: get(k) for k in sizing.gpu_request(1, C["cluster"]) if k != "gpu"}
    return out | {"gpu": get("gpu")}


def _cpu_grown(estimate, rule="job"):
    """Memory and time of a CPU rule from one estimate, grown on retry, time checked on the first."""

    def mem(w, attempt):
        return sizing.grown(estimate(w), attempt).mem_mb

    def runtime(w, attempt):
        return _runtime(sizing.grown(estimate(w), attempt), rule, w, attempt)

    return {"mem_mb": mem, "runtime": runtime}


def _runtime(need, rule, w, attempt):
    """A first attempt over cluster.max_runtime stops the DAG; a retry asks at most the limit."""
    if attempt == 1:
        return sizing.check_runtime(need.runtime, C["cluster"], job_name(rule, w))
    return min(need.runtime, C["cluster"]["max_runtime"] or need.runtime)


def job_layers(w):
    """The layers a dump or erank job measures: its ``layers`` wildcard's (what its key measures, or
    a wider finished set a view reads from)."""
    return K.layers_of(w.layers)


def dump_estimate(w):
    j = job(w)
    model = MODELS[j.model]
    size = sizing.texts_size(DATASETS[j.dataset], model, texts_path(j.dataset))
    layers = job_layers(w)  # what this job measures, or a wider set a view reads from
    return sizing.dump_need(model, size, layers, C["device"], THREADS, n_variants=len(j.variants))


def erank_estimate(w):
    j = job(w)
    model = MODELS[j.model]
    size = sizing.texts_size(DATASETS[j.dataset], model, texts_path(j.dataset))
    return sizing.erank_need(model, size, job_layers(w), THREADS, n_variants=len(j.variants))


def finetune_estimate(w):
    return sizing.finetune_need(MODELS[w.model], finetune_recipe(w), C["device"], THREADS)


def accuracy_estimate(w):
    return sizing.accuracy_need(MODELS[w.model], C["accuracy"] or {}, C["device"], THREADS)


def mm_estimate(w):
    return sizing.mm_need(MM["models"][w.model], C["device"], THREADS)


def check_site_limits():
    """Stop before anything is submitted when a dump or eRank job asks for more than the site
    allows (cluster.gpu_mem_gb without gpu_types, cluster.max_runtime): a real run evaluates a job's
    resources only when it is ready, hours of upstream jobs later. The rules' own resources check
    again once the texts are prepared."""
    for key in K.jobs_of:
        w = {"key": key, "layers": layers_tag(K.measure_layers(key))}
        for rule, estimate in (("dump", dump_estimate), ("erank", erank_estimate)):
            need = estimate(SimpleNamespace(**w))
            sizing.check_runtime(need.runtime, C["cluster"], job_name(rule, w))
            if need.gpus:
                sizing.gpu_request(need.gpu_mem_mb, C["cluster"], job_name(rule, w))


if workflow.is_main_process:
    try:
        check_site_limits()
    except sizing.ResourceError as exc:
        sys.exit(f"Cannot start: {exc}")


def diff_source(w):
    """The cached tables a run's view reads, and the texts they were measured on."""
    src, first = K.prefix.get(w.dataset, (w.dataset, None))
    return {"tables": K.source_tables(w.model, w.dataset), "texts": texts_path(src)}


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
    return [str(demo_corpus_file(DEMO, source["part"]))] if source["kind"] == "demo" else dataset_files(source)


def stage(w):
    """The (model, stage name) of a finetune job, from its cache key."""
    m, name = K.finetuned[w.stage]
    return SimpleNamespace(model=m, name=name)


def finetune_recipe(w):
    return C["models"][w.model]["finetune"][w.name]


def finetune_from(w):
    start = variant_dir(w.model, finetune_recipe(w)["from"])
    return [start] if start else []


def scratch_root():
    """Where a dump is written when it is not kept: node-local scratch (``scratch_dir``, else the
    job's $TMPDIR, else /tmp), per user. Evaluated where the job runs: on a cluster the path is the
    compute node's, which the login node never reads (the dump is ``nodelocal``)."""
    import getpass
    import os
    import tempfile

    base = os.path.expandvars(C["scratch_dir"] or os.environ.get("TMPDIR") or tempfile.gettempdir())
    return f"{base}/diff-erank-{getpass.getuser()}/dumps"


#: where the dumps live: the shared cache (keep_dumps) or node-local scratch
DUMPS = f"{CACHE}/dumps" if C["keep_dumps"] else scratch_root()


def dump_path():
    return K.dump_path("{key}", "{layers}", DUMPS)


def dump_output():
    """A kept dump goes to the shared cache. Otherwise it is node-local and temporary: on a cluster
    Snakemake runs the dump and its eRank in one job (a group job: ``temp(..., group_jobs=True)``),
    so the shared filesystem receives only the eRank tables; locally the dump lives in /tmp."""
    out = directory(dump_path())
    return out if C["keep_dumps"] else temp(out, group_jobs=True)


def scratch_request(w):
    """The sbatch option asking for a dump job's node-local disk (cluster.scratch_request, e.g.
    ``--tmp=<MB>M``), through the Slurm plugin's ``slurm_extra``; empty for a kept dump."""
    template = C["cluster"]["scratch_request"]
    if C["keep_dumps"] or not template:
        return ""
    return template.replace("{mb}", str(dump_estimate(w).disk_mb))


def shared_mb(w):
    """MB a measurement leaves on the shared filesystem: its eRank tables, and the dump if kept."""
    j = job(w)
    model = MODELS[j.model]
    size = sizing.texts_size(DATASETS[j.dataset], model, texts_path(j.dataset))
    mb = int(sizing.table_bytes(size, C["layers"], model, len(j.variants)) / 1e6) + 1
    return mb + (dump_estimate(w).disk_mb if C["keep_dumps"] else 0)


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
    return f"--model-path {shlex.quote(converted)}" if converted else ""


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


def cache_entries():
    """The cached table sets (and key files) this run's views read. They are targets of `all`:
    Snakemake skips a missing intermediate whose consumers are up to date, so a cache entry deleted
    under a finished run folder would stay missing ("Nothing to be done"); as a target it is
    measured again, and the views that read it are then older than their input and remade."""
    if not C["models"]:
        return []
    tables = sorted({t for m, d in K.sets for t in K.source_tables(m, d)})
    return [f for t in tables for f in (t, f"{t}.json")]


def report_outputs():
    """What `all` asks for: the language-model report (if any models) and the multi-modal one."""
    outs = []
    if C["models"]:
        outs += [f"{OUT}/{path}" for path in report_files(C).values()]
    return outs + mm_outputs()

