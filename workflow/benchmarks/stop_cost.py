"""What a stop costs a training: the seconds from SIGTERM to a saved, exited training, and the overhead
of checking for a stop before each batch (storylm.model.litgpt_train).

    PYTHONPATH=workflow python workflow/benchmarks/stop_cost.py --stops 3

Renders the smoke config's pretrain stage (config/test.yaml, 2,000 steps) in a temporary copy of
the workflow, then runs its training (`python -m storylm.pretrain run`, as the rule does), sends
SIGTERM every --every steps, and runs it again until it ends. For each stop it prints the step
the signal came at, the step saved, the steps lost (what was trained after the saved step: the
goal is none), the seconds from the signal to the exit, and the save's own seconds, against the
median step time. Then it times Stopper.before_batch, the check run before every batch, against
that step time (the goal: under 1%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))

from storylm.model.litgpt_train import STOPPED, Stopper  # noqa: E402
from storylm.model.training_runner import LIVE_LOG  # noqa: E402
from storylm.results import litgpt_log  # noqa: E402

STEPS = 2000


def prepared_workflow(root: Path) -> Path:
    """A copy of the workflow with the smoke config's pretrain stage rendered; its pretrain.yaml."""
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, root / name)
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["train"].update(max_tokens=STEPS * 4 * 64, save_interval=None, log_interval=1)
    config["eval"] = {**config.get("eval", {}), "interval": 100000, "final_validation": False}
    (root / "bench.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "bench.yaml", "--until",
                    "pretrain_config", "--quiet"], cwd=root, check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})  # the rules' python
    return next((root / "results" / "pretrain").glob("*/pretrain.yaml"))


def steps_logged(out: Path) -> list[tuple[int, float]]:
    """(step, iter ms) of every training line so far."""
    text = (out / LIVE_LOG).read_text() if (out / LIVE_LOG).is_file() else ""
    return [(int(m["step"]), float(m["iter_ms"])) for line in text.splitlines()
            if (m := litgpt_log.TRAIN_LINE.match(line))]


def one_part(root: Path, config: Path, out: Path, stop_after: int | None) -> dict | None:
    """Train until `stop_after` more steps are logged, then SIGTERM; None when it ran to its end."""
    output = open(root / "stage.log", "w")  # the stage command's own output: shown if it fails
    process = subprocess.Popen([sys.executable, "-m", "storylm.pretrain", "run", "--config", str(config)], cwd=root,
                               stdout=output, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(root / "workflow"),
                                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    start = steps_logged(out)[-1][0] if steps_logged(out) else 0
    if stop_after is None:
        process.wait()
        return None
    while not steps_logged(out) or steps_logged(out)[-1][0] < start + stop_after:
        if process.poll() is not None:
            tail = "\n".join((root / "stage.log").read_text().splitlines()[-20:])
            sys.exit(f"stop_cost: the training exited ({process.returncode}) before step {start + stop_after}:\n{tail}")
        time.sleep(0.05)
    at_signal = steps_logged(out)[-1][0]
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait()
    exited = time.monotonic() - sent
    stopped = json.loads((out / STOPPED).read_text())
    return {"signal_at_step": at_signal, "saved_step": stopped["step"],
            "steps_lost": steps_logged(out)[-1][0] - stopped["step"],
            "signal_to_exit_s": exited, "save_s": stopped["save_s"], "returncode": process.returncode}


def check_overhead_s() -> float:
    """Seconds per Stopper.before_batch call at a step boundary, one rank, a deadline far off."""
    stopper = Stopper(deadline=time.time() + 1e6, margin=None)
    stopper.fit = {"state": {"iter_num": 0}, "fabric": SimpleNamespace(world_size=1)}
    calls = 100_000
    return timeit.timeit(stopper.before_batch, number=calls) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stops", type=int, default=3)
    parser.add_argument("--every", type=int, default=300, help="steps trained between two stops")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = prepared_workflow(root)
        out = config.parent
        stops = [one_part(root, config, out, args.every) for _ in range(args.stops)]
        one_part(root, config, out, None)
        step_ms = statistics.median(ms for _, ms in steps_logged(out))
        assert (out / "final" / "lit_model.pth").is_file(), "the training did not finish"
    print(f"{'stop':>4} {'signal at':>9} {'saved':>6} {'lost':>5} {'signal->exit s':>14} {'save s':>7}")
    for number, stop in enumerate(stops, 1):
        print(f"{number:>4} {stop['signal_at_step']:>9} {stop['saved_step']:>6} {stop['steps_lost']:>5}"
              f" {stop['signal_to_exit_s']:>14.2f} {stop['save_s']:>7.2f}")
    overhead = check_overhead_s()
    print(f"median step {step_ms:.2f} ms; steps lost per stop: {max(s['steps_lost'] for s in stops)} at most")
    print(f"stop check before each batch: {overhead * 1e6:.2f} us, {100 * overhead / (step_ms / 1000):.3f}%"
          " of a step")


if __name__ == "__main__":
    main()
