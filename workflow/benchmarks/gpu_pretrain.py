"""Pretraining throughput and peak GPU memory of the microstories model: the pipeline vs plain litgpt.

1. Generated stories (storylm.stories.storygen) are tokenized with the ChatGLM3-6B tokenizer into
   litdata shards by storylm.shards.build, the pipeline's own shards stage.
2. "pipeline": config/microstories.yaml (the real 44M model, bf16-mixed, micro batch 32,
   sequences of 512, global batch 512) is rendered by storylm.pretrain.render, the pipeline's
   pretrain_config rule, and run with `python -m storylm.pretrain run`, the pretrain rule.
3. "reference": plain `litgpt pretrain --config` on a YAML written like the reference run's
   own (LitData with its default 8 workers, devices: auto, ...) over the same shards.

Both train for --steps optimizer steps (the token budget is set to exactly that many) and log
every step. Steady-state tokens/s comes from the times at which the step lines arrive, leaving
out the first --skip steps (torch.compile, data loader start-up); avg_tok_s is the whole
training loop from litgpt's own "Total tokens" and "Training Time". wall_s includes start-up
and torch.compile: the first run compiles with a cold inductor cache, the second may reuse
it. Peak GPU memory is litgpt's
own "Memory Used" (torch.cuda.max_memory_allocated of the training process) and, where
nvidia-smi exists, the most memory the device showed in use while the run lasted.

    python workflow/benchmarks/gpu_pretrain.py --tokenizer-dir checkpoints/THUDM/chatglm3-6b
    python workflow/benchmarks/gpu_pretrain.py --smoke        # tiny sizes on a CPU, a few steps

Needs torch, lightning, litgpt, litdata, snakemake (for the config schema) and PyYAML; run it
from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[1]
REPO = WORKFLOW.parent
sys.path.insert(0, str(WORKFLOW))  # the storylm package

import yaml  # noqa: E402

STEP_LINE = re.compile(r"^Epoch \d+ \| iter (?P<iter>\d+) step (?P<step>\d+) \| loss train: (?P<loss>[\d.naninf]+)")
MEMORY_LINE = re.compile(r"Memory Used\s*:\s*(?P<gb>[\d.]+) GB")
# litgpt 0.5.13 prints "Tok/sec" as total tokens / time.perf_counter() at the start (not the elapsed
# time), so its figure is meaningless; the average is recomputed from these two lines instead.
TOTAL_TOKENS_LINE = re.compile(r"Total tokens\s*:\s*(?P<tokens>[\d,]+)")
TRAIN_TIME_LINE = re.compile(r"Training Time\s*:\s*(?P<seconds>[\d.]+) s")
PARAMS_LINE = re.compile(r"Total parameters: (?P<n>[\d,]+)")

# --smoke: the same run shrunk so a CPU does it in a minute or two.
SMOKE_MODEL = {"block_size": 64, "n_layer": 1, "n_head": 2, "n_query_groups": 2, "n_embd": 32, "head_size": 16,
               "intermediate_size": 48}
SMOKE_TRAIN = {"global_batch_size": 4, "micro_batch_size": 2, "max_seq_length": 64}


# ---------------------------------------------------------------------------
# Shards


def build_shards(work: Path, tokenizer_dir: Path, stories: int, val_stories: int, workers: int) -> Path:
    import inspect

    from storylm import shards
    from storylm.io.jsonl import write_texts
    from storylm.stories.storygen import generate_stories

    corpus, out = work / "corpus", work / "shards"
    corpus.mkdir(parents=True, exist_ok=True)
    texts = [story["text"] for story in generate_stories(stories + val_stories, seed=1234)]
    write_texts(corpus / "train.jsonl", texts[val_stories:])
    write_texts(corpus / "val.jsonl", texts[:val_stories])
    kwargs = {"corpus_dir": corpus, "tokenizer_dir": tokenizer_dir, "out_dir": out, "chunk_bytes": "64MB",
              "workers": workers}
    if "batch_size" in inspect.signature(shards.build).parameters:
        kwargs["batch_size"] = 1024
    start = time.perf_counter()
    stats = shards.build(**kwargs)
    stats["seconds"] = time.perf_counter() - start
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"shards: {stats['train_tokens']:,} train and {stats['val_tokens']:,} val tokens in {stats['seconds']:.1f} s",
          flush=True)
    return out


# ---------------------------------------------------------------------------
# The two configs


def microstories_config(args) -> dict:
    """config/microstories.yaml with the schema's defaults; a fixed step budget and nothing but training."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config" / "microstories.yaml").read_text())
    validate(config, str(REPO / "config" / "schema.yaml"))
    config["tokenizer"]["path"] = str(args.tokenizer_dir)
    if args.smoke:
        config["model_config"].update(SMOKE_MODEL)
        config["train"].update(SMOKE_TRAIN)
        config["precision"] = "32-true"
    if args.data_workers is not None:
        config["data_workers"] = args.data_workers
    train = config["train"]
    train["max_tokens"] = args.steps * train["global_batch_size"] * train["max_seq_length"]
    train["epochs"] = None
    train["log_interval"] = 1
    train["save_interval"] = None  # no step-* checkpoints inside the measured steps
    train["lr_warmup_steps"] = min(train["lr_warmup_steps"], args.steps // 2)
    config["eval"].update(interval=10**9, final_validation=False, initial_validation=False)
    config["logger_name"] = args.logger
    return config


def pipeline_yaml(config: dict, shards: Path, work: Path) -> Path:
    """What the pretrain_config rule writes: storylm.pretrain.render of the pretrain stage's record."""
    from storylm.plan import config as storylm_config
    from storylm.pretrain import render

    storylm_config.check(config)
    record = storylm_config.stage_record(config, "pretrain")
    litgpt_config = render(record["config"], shards, Path(config["tokenizer"]["path"]), work / "out-pipeline")
    path = work / "pipeline.yaml"
    path.write_text(yaml.safe_dump(litgpt_config, sort_keys=False, allow_unicode=True))
    return path


def reference_yaml(config: dict, shards: Path, work: Path) -> Path:
    """A litgpt pretrain YAML written the way the reference run wrote its own (same model and settings)."""
    train = config["train"]
    model = {key: value for key, value in config["model_config"].items() if key != "padding_multiple"}
    model.setdefault("vocab_size", 64798)
    reference = {
        "model_name": model["name"],
        "model_config": {"hf_config": {}, **model},
        "out_dir": str(work / "out-reference"),
        "precision": config["precision"],
        "initial_checkpoint_dir": None,
        # The reference said `resume: true`, which fails without a checkpoint; a fresh run is False.
        "resume": False,
        # LitData's own num_workers default (8), as the reference left it.
        "data": {"class_path": "litgpt.data.LitData",
                 "init_args": {"data_path": str(shards), "split_names": ["train", "val"]}},
        "train": {
            "save_interval": train["save_interval"],
            "log_interval": train["log_interval"],
            "global_batch_size": train["global_batch_size"],
            "micro_batch_size": train["micro_batch_size"],
            "lr_warmup_steps": train["lr_warmup_steps"],
            "epochs": None,
            "max_tokens": train["max_tokens"],
            "max_steps": None,
            "max_seq_length": train["max_seq_length"],
            "tie_embeddings": train["tie_embeddings"],
            "max_norm": train["max_norm"],
            "min_lr": train["min_lr"],
        },
        "eval": {"interval": config["eval"]["interval"], "max_new_tokens": None,
                 "max_iters": config["eval"]["max_iters"], "initial_validation": False, "final_validation": False},
        "optimizer": config["optimizer"],
        "devices": "auto",
        "num_nodes": 1,
        "tokenizer_dir": config["tokenizer"]["path"],
        "logger_name": config["logger_name"],
        "seed": config["seed"],
    }
    path = work / "reference.yaml"
    path.write_text(yaml.safe_dump(reference, sort_keys=False, allow_unicode=True))
    return path


# ---------------------------------------------------------------------------
# Running and measuring


class GpuMemoryPoller:
    """Largest memory.used that nvidia-smi reports while the run lasts (MiB), or None without nvidia-smi."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_mib = interval, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                used = max(int(v) for v in out.split())
                self.peak_mib = used if self.peak_mib is None else max(self.peak_mib, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *_exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def run_timed(name: str, command: list[str], work: Path, timeout: float) -> dict:
    """Run command, stamping each output line with the time it arrived; its output goes to <work>/<name>.log."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(WORKFLOW), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # lines must arrive when litgpt prints them, not when a buffer fills
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("WANDB_MODE", "offline")
    lines: list[tuple[float, str]] = []
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with GpuMemoryPoller() as poller, open(work / f"{name}.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1, start_new_session=True)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            for line in process.stdout:
                lines.append((time.perf_counter() - start, line.rstrip("\n")))
                log.write(line)
                if STEP_LINE.match(line) or re.search(r"Memory Used|Training Time|Total param|Error", line):
                    print(f"  [{lines[-1][0]:7.1f} s] {line.rstrip()}", flush=True)
            returncode = process.wait()
        finally:
            timer.cancel()
    return {"name": name, "returncode": returncode, "wall_s": time.perf_counter() - start, "lines": lines,
            "nvidia_smi_peak_mib": poller.peak_mib}


def measure(result: dict, tokens_per_iter: int, skip: int) -> dict:
    """Steady-state tokens/s between the step lines after the first `skip` steps and the last one."""
    steps = [(t, int(m["iter"]), int(m["step"])) for t, line in result["lines"] if (m := STEP_LINE.match(line))]
    summary = {"run": result["name"], "exit": result["returncode"], "wall_s": result["wall_s"],
               "steps": steps[-1][2] if steps else 0, "steady_steps": 0, "steady_tok_s": None,
               "avg_tok_s": None, "peak_alloc_gb": None, "nvidia_smi_peak_gib": None, "parameters": None}
    measured = [s for s in steps if s[2] >= skip]
    if len(measured) >= 2:
        (t0, iter0, step0), (t1, iter1, step1) = measured[0], measured[-1]
        summary["steady_steps"] = step1 - step0
        summary["steady_tok_s"] = (iter1 - iter0) * tokens_per_iter / (t1 - t0) if t1 > t0 else None
    total_tokens = train_seconds = None
    for _, line in result["lines"]:
        if m := MEMORY_LINE.search(line):
            summary["peak_alloc_gb"] = float(m["gb"])
        if m := TOTAL_TOKENS_LINE.search(line):
            total_tokens = int(m["tokens"].replace(",", ""))
        if m := TRAIN_TIME_LINE.search(line):
            train_seconds = float(m["seconds"])
        if m := PARAMS_LINE.search(line):
            summary["parameters"] = int(m["n"].replace(",", ""))
    if total_tokens and train_seconds:
        summary["avg_tok_s"] = total_tokens / train_seconds  # the whole run, first steps (compile) included
    if result["nvidia_smi_peak_mib"] is not None:
        summary["nvidia_smi_peak_gib"] = result["nvidia_smi_peak_mib"] / 1024
    return summary


def print_table(rows: list[dict]) -> None:
    columns = ["run", "exit", "parameters", "steps", "steady_steps", "steady_tok_s", "avg_tok_s", "peak_alloc_gb",
               "nvidia_smi_peak_gib", "wall_s"]

    def fmt(key, value):
        if value is None:
            return "n/a"
        if key in ("steady_tok_s", "avg_tok_s", "parameters"):
            return f"{value:,.0f}"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    cells = [[fmt(c, r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) + " |")


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO.parent / "shared" / "fixtures" / "chatglm3-6b",
                        help="ChatGLM3-6B tokenizer directory (tokenizer.model, tokenizer_config.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and batches, 32-true, a few steps (CPU)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 40; 6 with --smoke)")
    parser.add_argument("--skip", type=int, help="first steps left out of tokens/s (default 10; 2 with --smoke)")
    parser.add_argument("--stories", type=int, help="generated train stories (default 80000; 600 with --smoke)")
    parser.add_argument("--val-stories", type=int, default=None, help="generated val stories (default 1000; 200)")
    parser.add_argument("--runs", nargs="+", choices=["pipeline", "reference"], default=["pipeline", "reference"])
    parser.add_argument("--data-workers", type=int, help="data_workers of the pipeline run (default: the config's)")
    parser.add_argument("--logger", choices=["csv", "tensorboard", "wandb"], default="csv",
                        help="litgpt logger of both runs (the real config uses wandb; csv needs nothing extra)")
    parser.add_argument("--timeout", type=float, default=420, help="seconds before a run is killed")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="also write the summary rows here")
    args = parser.parse_args(argv)
    args.steps = args.steps or (6 if args.smoke else 40)
    args.skip = args.skip if args.skip is not None else (2 if args.smoke else 10)
    args.stories = args.stories or (600 if args.smoke else 80000)
    args.val_stories = args.val_stories or (200 if args.smoke else 1000)
    args.tokenizer_dir = args.tokenizer_dir.resolve()
    if args.skip >= args.steps - 1:
        parser.error("--skip must leave at least two measured steps")

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-pretrain-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"device: {device_line()}; work folder: {work}", flush=True)
    shards = build_shards(work, args.tokenizer_dir, args.stories, args.val_stories, workers=os.cpu_count() or 1)

    config = microstories_config(args)
    tokens_per_iter = config["train"]["micro_batch_size"] * config["train"]["max_seq_length"]
    commands = {
        "pipeline": [sys.executable, "-m", "storylm.pretrain", "run", "--config",
                     str(pipeline_yaml(config, shards, work))],
        "reference": ["litgpt", "pretrain", "--config", str(reference_yaml(config, shards, work))],
    }
    rows = []
    for name in args.runs:
        result = run_timed(name, commands[name], work, args.timeout)
        rows.append(measure(result, tokens_per_iter, args.skip))
        if result["returncode"] != 0:
            print("\n".join(line for _, line in result["lines"][-30:]), flush=True)

    train = config["train"]
    print(f"\n# {device_line()}; model {config['model_config']['name']}"
          f" ({'smoke sizes' if args.smoke else 'real sizes'}), precision {config['precision']},"
          f" micro batch {train['micro_batch_size']} x seq {train['max_seq_length']},"
          f" global batch {train['global_batch_size']}; {args.steps} steps,"
          f" tokens/s over steps {args.skip}..{args.steps}")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["exit"] == 0 and r["steady_tok_s"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
