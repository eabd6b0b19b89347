# Helpers shared by the rules: config checks, stage hashes and the hash-keyed folders.

import json
import os
import sys
from pathlib import Path

# The rules' commands import the storylm package from workflow/ (also inside Slurm jobs and conda envs).
STORYLM_PATH = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, STORYLM_PATH)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (STORYLM_PATH, os.environ.get("PYTHONPATH")) if p)


envvars:
    "PYTHONPATH",


from storylm import config as storylm_config  # noqa: E402

try:
    storylm_config.check(config)
except storylm_config.ConfigError as error:
    raise WorkflowError(f"Invalid config: {error}") from None

HASHES = storylm_config.stage_hashes(config)
HASHES_JSON = json.dumps({stage: HASHES[stage] for stage in storylm_config.STAGE_ORDER if stage != "download"
                          or config["corpus"]["source"] != "builtin"})
# The sampled stories' lineage: what their header names (evaluation settings do not touch them).
SAMPLE_LINEAGE_JSON = json.dumps({stage: HASHES[stage] for stage in ("corpus", "tokenizer", "shards", "pretrain", "sample")})

# Each stage's folder is named by the hash of the settings it depends on (see storylm/config.py).
DIRS = {
    "download": f"Data/raw/{HASHES['download']}",
    "corpus": f"Data/corpus/{HASHES['corpus']}",
    "tokenizer": f"Data/tokenizer/{HASHES['tokenizer']}",
    "shards": f"Data/shards/{HASHES['shards']}",
    "pretrain": f"results/pretrain/{HASHES['pretrain']}",
    "evaluate": f"results/evaluate/{HASHES['evaluate']}",
    "sample": f"results/sample/{HASHES['sample']}",
}

REPORT = {
    "samples": "results/samples.txt",
    "metrics": "results/metrics.json",
    "plot": "results/loss.png",
}

ENV = "../../envs/storylm.yaml"


def record(stage):
    """The stage's settings and input hashes, as the JSON its command writes to <folder>/config.json."""
    return json.dumps(storylm_config.stage_record(config, stage))


def settings(stage):
    """Only the settings the stage depends on, so a change elsewhere never reruns it."""
    return json.dumps(storylm_config.stage_configs(config)[stage])


def input_dir(name, up=1):
    """Param function: the folder holding the named input file (or its parent, with up=2)."""
    return lambda wildcards, input: str(Path(input[name]).parents[up - 1])


def output_dir(name):
    """Param function: the folder holding the named output file."""
    return lambda wildcards, output: str(Path(output[name]).parent)


# Lightning wants one process per device: D = devices per node, M = num_nodes. On Slurm the job
# asks for D GPUs and D tasks per node on M nodes, and (when D x M > 1) the command itself starts
# the D x M processes with srun; elsewhere Lightning starts them. See docs/slurm.md.
DEVICES, NODES = config["devices"], config["num_nodes"]
MULTI_PROCESS = DEVICES * NODES > 1


def srun_args(wildcards, threads, resources):
    """Param function of pretrain: how the pretrain wrapper launches litgpt under srun."""
    if not MULTI_PROCESS:
        return ""
    return (f"--srun-args '--nodes={NODES} --ntasks-per-node={DEVICES} --cpus-per-task={threads}"
            f" --gres={resources.gres}'")


def log_path(stage):
    return f"logs/{stage}/{HASHES[stage]}.log"


def benchmark_path(stage):
    return f"benchmarks/{stage}/{HASHES[stage]}.tsv"
