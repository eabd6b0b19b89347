"""What more ranks cost and give: the per-step cost of a second rank on a CPU, and tokens/s at 1, 2, 4, 8 GPUs.

    PYTHONPATH=workflow python workflow/benchmarks/multirank_scaling.py                 # CPU: 1 and 2 ranks
    PYTHONPATH=workflow python workflow/benchmarks/multirank_scaling.py --ranks 1 2 4 8 \\
        --configfile config/microstories.yaml --steps 200                            # a machine of 8 GPUs

Builds the stages before pretrain of config/test.yaml (or of --configfile) in a temporary copy of the
workflow, then trains its rendered pretrain config once per rank count with the same micro-batch on
each rank (so each rank does the same work, and the global batch grows with the ranks), as the
pretrain rule does (storylm.model.litgpt_train, strategy auto: DDP on a CPU, litgpt's FSDP on CUDA).
For each it prints the median step time after the first 10 steps, tokens/s, the scaling efficiency
(tokens/s over ranks x tokens/s of one rank) and what a step costs more than one rank's. On a CPU
that difference is the second rank's price: the gradient all-reduce, the stop-flag exchange and the
validation all-reduce, with the two ranks sharing the machine's cores (--threads each).
Then it times the stop-flag exchange alone between two gloo processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))

from storylm.model.litgpt_train import STRATEGY_ENV, Stopper  # noqa: E402
from storylm.results import litgpt_log  # noqa: E402

SKIP = 10  # steps left out of the median: compilation and warm-up


def prepared(root: Path, configfile: Path | None, steps: int) -> Path:
    """A copy of the workflow with its pretrain config rendered; the rendered litgpt YAML."""
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, root / name)
    config = yaml.safe_load((configfile or REPO / "config" / "test.yaml").read_text())
    train = config.setdefault("train", {})
    micro = train.get("micro_batch_size", 4)
    seq = train.get("max_seq_length", 64)
    train.update(global_batch_size=micro, max_tokens=steps * micro * seq, save_interval=None, log_interval=1)
    config["eval"] = {**config.get("eval", {}), "interval": 100000, "final_validation": False}
    (root / "bench.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all", "--configfile", "bench.yaml", "--until",
                    "pretrain_config", "--quiet"], cwd=root, check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    return next((root / "results" / "pretrain").glob("*/pretrain.yaml"))


def train(root: Path, rendered: Path, ranks: int, threads: int) -> dict:
    """One training on `ranks` local processes (devices), each with its own micro-batch; its step times."""
    litgpt = yaml.safe_load(rendered.read_text())
    out = root / f"ranks-{ranks}"
    litgpt.update(devices=ranks, out_dir=str(out))
    litgpt["train"]["global_batch_size"] = litgpt["train"]["micro_batch_size"] * ranks  # one micro-batch a rank
    litgpt["train"]["max_tokens"] *= ranks  # the same steps
    config = root / f"ranks-{ranks}.yaml"
    config.write_text(yaml.safe_dump(litgpt))
    log = root / f"ranks-{ranks}.log"
    env = {**os.environ, "PYTHONPATH": str(root / "workflow"), STRATEGY_ENV: "auto", "OMP_NUM_THREADS": str(threads)}
    with open(log, "w") as output:
        done = subprocess.run([sys.executable, "-m", "storylm.model.litgpt_train", "pretrain", "--config", str(config),
                               "--out_dir", str(out)], cwd=root, stdout=output, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        sys.exit(f"multirank_scaling: {ranks} ranks failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    table, _ = litgpt_log.parse(log)
    step_ms = statistics.median(table["iter_ms"].iloc[SKIP:])
    tokens = litgpt["train"]["micro_batch_size"] * litgpt["train"]["max_seq_length"] * ranks
    return {"ranks": ranks, "step_ms": step_ms, "tokens_per_s": tokens / (step_ms / 1000)}


def _exchange(rank: int, world: int, init: str, calls: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    stopper = Stopper(deadline=None, margin=None)
    stopper.flags = dist.new_group(backend="gloo")
    started = time.perf_counter()
    for _ in range(calls):
        stopper.agreed()
        stopper.post(False)
    stopper.agreed()
    if rank == 0:
        Path(out).write_text(str((time.perf_counter() - started) / calls))
    dist.destroy_process_group()


def flag_exchange_s(calls: int = 2000) -> float:
    """Seconds per step of the stop-flag exchange (post this step's flag, read the previous one's), 2 ranks."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds"
        mp.spawn(_exchange, args=(2, f"file://{tmp}/rendezvous", calls, str(out)), nprocs=2)
        return float(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--configfile", type=Path, help="a config overlay (default: config/test.yaml)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each rank")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rendered = prepared(root, args.configfile and args.configfile.resolve(), args.steps)
        results = [train(root, rendered, ranks, args.threads) for ranks in args.ranks]
    one = next((r for r in results if r["ranks"] == 1), None)
    print(f"{'ranks':>5} {'step ms':>8} {'tokens/s':>10} {'efficiency':>10} {'+ms a step':>10}")
    for r in results:
        efficiency = r["tokens_per_s"] / (r["ranks"] * one["tokens_per_s"]) if one else float("nan")
        extra = r["step_ms"] - one["step_ms"] if one else float("nan")
        print(f"{r['ranks']:>5} {r['step_ms']:>8.2f} {r['tokens_per_s']:>10.0f} {efficiency:>10.2f} {extra:>10.2f}")
    print(f"stop-flag exchange between 2 gloo ranks: {flag_exchange_s() * 1e6:.1f} us a step")


if __name__ == "__main__":
    main()
