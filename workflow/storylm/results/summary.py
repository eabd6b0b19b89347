"""One training's results in one place: the evaluate stage's figures, the sample stage's, throughput and
FLOPs from litgpt's log and config, and the machine it ran on.

Training FLOPs are litgpt's own estimate (litgpt.utils.estimate_flops, the figure its
throughput monitor uses for MFU): 6 x trainable parameters per token for the forward and
backward pass, plus the attention's 12 x n_layer x n_embd x seq_len, per token trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from storylm.results import litgpt_log
from storylm.io.entry import read_json
from storylm.io.environment import ENVIRONMENT
from storylm.results.figures import sample_figure_files



def flops_per_token(litgpt_config: dict) -> float:
    """litgpt's estimate of training FLOPs per token for the rendered model (on the meta device: no memory)."""
    import torch
    from litgpt import GPT, Config
    from litgpt.utils import estimate_flops

    seq_length = litgpt_config["train"]["max_seq_length"]
    with torch.device("meta"):
        model = GPT(Config(**litgpt_config["model_config"]))
        model.max_seq_length = seq_length
    return estimate_flops(model, training=True) / seq_length


def val_curve(train_log: Path, tokens_per_iter: int, flops: float) -> pd.DataFrame:
    """litgpt's validations during training: val loss against tokens and FLOPs trained."""
    _, val = litgpt_log.parse(train_log)
    curve = pd.DataFrame({"iter": val["iter"], "val_loss_nats_per_token": val["val_loss"]})
    curve["train_tokens"] = curve["iter"] * tokens_per_iter
    curve["train_flops"] = curve["train_tokens"] * flops
    return curve


# The files of a training it reads, by role (storylm.plan.stages: provides); the sample figures may be missing.
ROLES = ("litgpt config", "train log", "metrics", "sample checks", "sample figures")
# The stage folders whose machine it records, each as the folder of one of its files.
MACHINES = (("pretrain", "train log"), ("evaluate", "metrics"), ("sample", "sample checks"))


def training_results(info: dict, files: dict[str, Path]) -> tuple[dict, pd.DataFrame]:
    """(metrics, val curve) of one training, from its files by role (ROLES). info: run, seed, stage_hashes,
    corpus_source, differs_from_base, export_dir (what the plan knows of it)."""
    litgpt_config = yaml.safe_load(files["litgpt config"].read_text())
    train = litgpt_config["train"]
    tokens_per_iter = train["micro_batch_size"] * train["max_seq_length"] * litgpt_config["devices"] \
        * litgpt_config["num_nodes"]
    flops = flops_per_token(litgpt_config)
    performance = litgpt_log.performance(files["train log"])
    evaluation = read_json(files["metrics"], "the evaluate stage's metrics")
    if performance["train_tokens"] is None:  # a log without litgpt's closing lines
        performance["train_tokens"] = evaluation["train_iters"] * tokens_per_iter
    sample_figures = {}
    for path in sample_figure_files(files):
        sample_figures.update(json.loads(path.read_text()))
    environment = {stage: read_json(files[role].parent / ENVIRONMENT, "the machine a stage ran on")
                   for stage, role in MACHINES if (files[role].parent / ENVIRONMENT).is_file()}
    metrics = {
        "run": info["run"],
        "seed": info["seed"],
        "differs_from_base": info["differs_from_base"],
        "corpus_source": info["corpus_source"],
        "stage_hashes": info["stage_hashes"],
        **evaluation,
        "flops_per_token": flops,
        "train_flops": flops * performance["train_tokens"],
        **performance,
        "sample_figures": sample_figures,
        "export_dir": info["export_dir"],
        "environment": environment,
    }
    return metrics, val_curve(files["train log"], tokens_per_iter, flops)
