# Helpers shared by the rules: config checks, stage hashes and the hash-keyed folders.

import json
import os
import sys
from pathlib import Path

# The rules' commands import the storylm package from workflow/ (also inside Slurm jobs and conda envs).
STORYLM_PATH = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, STORYLM_PATH)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (STORYLM_PATH, os.environ.get("PYTHONPATH")) if p)

from storylm import config as storylm_config  # noqa: E402

try:
    storylm_config.check(config)
except storylm_config.ConfigError as error:
    raise WorkflowError(f"Invalid config: {error}") from None

HASHES = storylm_config.stage_hashes(config)
HASHES_JSON = json.dumps({stage: HASHES[stage] for stage in storylm_config.STAGE_ORDER if stage != "download"
                          or config["corpus"]["source"] != "builtin"})

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


def log_path(stage):
    return f"logs/{stage}/{HASHES[stage]}.log"


def benchmark_path(stage):
    return f"benchmarks/{stage}/{HASHES[stage]}.tsv"
