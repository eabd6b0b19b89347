# Helpers shared by the rules: the runs, their stage folders, and the input and param functions.
#
# Every stage folder is named by a hash of its settings (storylm/plan/stages.py). The plan below
# resolves every run of the config (storylm/plan/runs.py) and keeps one entry per distinct hash, so
# each rule is a wildcard rule over its hash folders and each folder is built by one job, for
# however many runs use it.

import json
import re
import shlex
import sys
from pathlib import Path

# The rules' commands (python -m storylm.<stage>) import the storylm package from workflow/. Every
# job's shell sets the path itself, after any conda activation: Snakemake clears an inherited
# PYTHONPATH when it activates a conda env. ("set -euo pipefail" is Snakemake's default prefix.)
# File descriptor 3 is Snakemake's own stderr, opened before each command sends its output to
# the job's log: the long stages write their one live progress line there (storylm.io.progress).
STORYLM_PATH = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, STORYLM_PATH)
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={shlex.quote(STORYLM_PATH)}; exec 3>&2; export STORYLM_PROGRESS_FD=3; "
)

from storylm.io.entry import StageError  # noqa: E402
from storylm.plan.runs import plan  # noqa: E402
from storylm.plan import stages  # noqa: E402
from storylm.plan.integrity import mark_damaged, rebuild_counts, with_rebuilds  # noqa: E402
from storylm.io.stopjobs import stop_jobs_at_sigterm  # noqa: E402
from storylm.model.tokens import TOKENIZER_FILES  # noqa: E402

# A job's own snakemake (a Slurm job's, Snakemake's remote mode) trusts the checks its main process
# made: they build each model with litgpt, whose import takes seconds of every job's time limit.
try:
    PLAN = plan(config, check_values=workflow.is_main_process)
except StageError as error:
    raise WorkflowError(f"Invalid config: {error}") from None

# A finished folder that is not what its record lists (a file deleted or overwritten, an input replaced)
# is rebuilt by this run, with what reads it: a result that exists is one that is right. Its rebuild
# count enters its record param, so Snakemake's params trigger reruns it (storylm.plan.integrity).
if workflow.is_main_process:
    for line in mark_damaged(PLAN):
        print(line, file=sys.stderr)
REBUILDS = rebuild_counts()


# A SIGTERM to this snakemake stops the running jobs (a training saves first), not only new ones.
onstart:
    stop_jobs_at_sigterm()


# The stages' rule files, in the order of the table (the Snakefile includes them).
STAGE_RULE_FILES = list(dict.fromkeys(spec.rule_file for spec in stages.STAGES))
RUNS = list(PLAN.runs)
TRAININGS = PLAN.trainings()  # (run, seed): each run once per seed
ONE_TRAINING = len(TRAININGS) == 1
ENV = "../../envs/storylm.yaml"


def hash_pattern(stage):
    """Wildcard constraint: only the hashes some run needs (a stage no run needs matches nothing)."""
    return "|".join(PLAN.stages.get(stage, {})) or "(?!)"


def stage_of(stage, wildcards):
    return PLAN.stage(stage, wildcards.hash)


def upstream(stage, wildcards, name):
    """The folder of the stage `name` that the `stage` folder of this job reads."""
    return PLAN.upstream(stage, wildcards.hash, name).folder


def role_key(role):
    """A role as a Snakemake input or output name ("train split": train_split)."""
    return role.replace(" ", "_")


def stage_inputs(stage, *roles):
    """Input function: the files this job's `stage` folder reads by role (the table's uses, or these roles),
    as the plan resolves them for its runs (storylm.plan.stages: uses, provider). A role that only a stage
    some runs lack provides (the download of a builtin corpus) is no input of those runs."""
    return lambda wildcards: {
        role_key(name): path for name, path in PLAN.files(stage, wildcards.hash, roles or None).items()
    }


def role(stage, name):
    """Input function: the one file of role `name` this job's `stage` folder reads (none where its runs
    lack every stage that provides it)."""
    return lambda wildcards: PLAN.files(stage, wildcards.hash, (name,)).get(name, [])


def stage_outputs(stage, *roles):
    """A rule's outputs: the files of the stage's hash folders by role (all it provides, or one step's roles),
    where the stage table puts them."""
    folder = f"{stages.BY_NAME[stage].parent}/{{hash}}"
    return {role_key(name): path for name, path in stages.outputs(stage, folder, roles or None).items()}


def protocol(stage, *roles):
    """Param function: the stage protocol's arguments (storylm.plan.stage): the folder's record (its settings
    and input hashes; its rebuild count, once above zero, reruns it), the files it reads by role, its folder."""

    def value(wildcards):
        entry = stage_of(stage, wildcards)
        record = json.dumps(with_rebuilds(entry.record, REBUILDS.get(entry.folder, 0)), sort_keys=True)
        files = json.dumps(PLAN.files(stage, wildcards.hash, roles or None), sort_keys=True)
        return f"--record {shlex.quote(record)} --inputs {shlex.quote(files)} --out {shlex.quote(entry.folder)}"

    return value


def run_file(run, seed, name):
    """A file of role `name` of one training: from the last stage that provides it (its final model...)."""
    return PLAN.run_file(run, seed, name)


def stage_setting(stage, *keys):
    """Param function: one value of the resolved config of the folder's first run."""

    def value(wildcards):
        found = stage_of(stage, wildcards).config
        for key in keys:
            found = found[key]
        return json.dumps(found) if isinstance(found, (dict, list)) else found

    return value


# The stages a sample folder descends from that every run has (no download for builtin stories).
LINEAGE = [name for name in stages.ancestors("sample") if stages.always_needed(name)]


def lineage(wildcards):
    """Param function of sample: the stage hashes its stories descend from, for their header."""
    run, seed = stage_of("sample", wildcards).trainings[0]
    return json.dumps({name: PLAN.hashes[run][seed][name] for name in [*LINEAGE, "sample"]})


def local_paths(wildcards):
    """The files or folders of a local corpus (corpus.local.paths) that the download folder was planned from."""
    corpus = stage_of("download", wildcards).config["corpus"]
    return corpus["local"]["paths"] if corpus["source"] == "local" else []


def tokenizer_files(wildcards):
    """A local pretrained tokenizer's files (a hub one comes as the download's files, by role)."""
    tok = stage_of("tokenizer", wildcards).config["tokenizer"]
    if tok["kind"] == "train" or tok["source"] == "hf":
        return []
    return [f"{tok['path']}/{name}" for name in TOKENIZER_FILES if Path(tok["path"], name).is_file()]


def pretrained_tokenizer_args(wildcards):
    """A local pretrained tokenizer's folder: a setting, not a stage's file (a hub one is the download's)."""
    tok = stage_of("tokenizer", wildcards).config["tokenizer"]
    local = tok["kind"] == "pretrained" and tok["source"] == "local"
    return f"--pretrained {shlex.quote(tok['path'])}" if local else ""


def extra_set_files(wildcards):
    """The files of evaluate.extra_sets: a changed file reruns evaluate (its sha256 is in the hash too)."""
    return [entry["path"] for entry in stage_of("evaluate", wildcards).config["evaluate"]["extra_sets"]]


# Lightning wants one process per device: D = devices per node, M = num_nodes. On Slurm the job
# asks for D GPUs and D tasks per node on M nodes, and (when D x M > 1) the command itself starts
# the D x M processes with srun; elsewhere Lightning starts them. See docs/slurm.md.
def devices_nodes(wildcards):
    run_config = stage_of("pretrain", wildcards).config
    return run_config["devices"], run_config["num_nodes"]


def multi_process(wildcards):
    devices, nodes = devices_nodes(wildcards)
    return devices * nodes > 1


def srun_args(wildcards, threads, resources):
    """Param function of pretrain: how the pretrain wrapper launches litgpt under srun."""
    if not multi_process(wildcards):
        return ""
    devices, nodes = devices_nodes(wildcards)
    return (
        f"--srun-args '--nodes={nodes} --ntasks-per-node={devices} --cpus-per-task={threads}"
        f" --gres={resources.gres}'"
    )


def gpu_resource(kind):
    """Resource functions of pretrain: the Slurm request for D GPUs on M nodes."""

    def value(wildcards):
        devices, nodes = devices_nodes(wildcards)
        multi = devices * nodes > 1
        return {
            "gres": f"gpu:{devices}",  # GPUs per node (sbatch --gres)
            "nodes": nodes,
            "tasks_per_node": devices if devices > 1 else None,  # sbatch --ntasks-per-node (with mpi)
            "tasks": nodes if multi and devices == 1 else None,  # one task per node ...
            "tasks_per_gpu": 0 if multi and devices == 1 else None,  # ... and no --ntasks-per-gpu
            "mpi": "srun" if multi else None,  # the plugin leaves the launch to our srun
        }[kind]

    return value


def local_gpu_jobs(wildcards):
    """1 for a local run, where profiles/default allows one GPU job at a time; 0 under a cluster
    executor, where that global limit (the workflow profile applies there too) must not queue
    the runs' trainings one behind another: Slurm shares out the GPUs."""
    return 1 if workflow.local_exec else 0


# Per-training results: results/runs/<run>/seed-<seed>/.
def training_dir(run, seed):
    return f"results/runs/{run}/seed-{seed}"


TRAINING_DIRS = [training_dir(run, seed) for run, seed in TRAININGS]


def training_pattern():
    """Wildcard constraint of run: exactly the runs of the config."""
    return "|".join(re.escape(run) for run in RUNS)


RUN_INPUTS = {
    "pretrain_config": "litgpt config",
    "train_log": "train log",
    "checkpoint": "final model",
    "evaluate": "metrics",
    "plot": "loss plot",
    "story_scores": "story scores",
    "samples": "samples text",
    "sample_figures": "sample checks",
    "figures": "sample figures",
}


def run_inputs(wildcards):
    run, seed = wildcards.run, int(wildcards.seed)
    return {key: run_file(run, seed, name) for key, name in RUN_INPUTS.items()}


def run_info(wildcards):
    """Param function of run_results: the training's stage hashes, config, and how its run differs from the base."""
    # sort_keys: key order in the YAML must not change the params (and rerun the job).
    return json.dumps(PLAN.training_info(wildcards.run, int(wildcards.seed)), sort_keys=True)


def run_roles(wildcards):
    """Param function of run_results: the training's files by role (its inputs), and its results folder."""
    run, seed = wildcards.run, int(wildcards.seed)
    files = json.dumps({name: run_file(run, seed, name) for name in RUN_INPUTS.values()}, sort_keys=True)
    return f"--inputs {shlex.quote(files)} --out {training_dir(run, seed)}"


def run_exports():
    """Every training's Hugging Face export (the default target builds them; results/samples.txt does not)."""
    return [run_file(run, seed, "export") for run, seed in TRAININGS]


def training_labels():
    """Param function of all_samples: a heading per training (the run, and its seed when it has several)."""
    return [f"{run} (seed {seed})" if len(PLAN.seeds[run]) > 1 else run for run, seed in TRAININGS]


def log_path(stage):
    return f"logs/{stage}/{{hash}}.log"


def benchmark_path(stage):
    return f"benchmarks/{stage}/{{hash}}.tsv"
