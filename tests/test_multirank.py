"""Training on several processes (storylm.model.litgpt_train's strategy, config key `strategy`): the real
snakemake, litgpt, litdata and torch.distributed (gloo) on CPU, locally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    REPO,
    changed,
    copy_workflow,
    load_json,
    logged_steps,
    owned_env,
    snakemake,
    stage_hashes,
    tiny_config,
    training_pid,
    wait_for,
    write_config,
)
from storylm.model.litgpt_train import DRAWN_ENV, Stopper, StrategyError, mean_over_ranks, strategy_kind
from storylm.model.training_runner import LIVE_LOG
from storylm.results import litgpt_log

MICRO = 2  # sequences per rank and forward pass; the global batch is 4 for both 1 and 2 ranks
WINDOW = 64 + 1  # litgpt's TokensLoader windows: max_seq_length + 1 tokens
ONE_THREAD = ("--set-threads", "pretrain=1")  # equal weights need the same float sums


# ---------------------------------------------------------------------------
# The setting: what it chooses, what it refuses, and the folders it leaves where they were


def test_the_strategy_is_litgpts_fsdp_on_cuda_and_ddp_elsewhere():
    assert strategy_kind("auto", 1, cuda=False) == "single"
    assert strategy_kind("fsdp", 1, cuda=False) == "single"  # one process: nothing to share
    assert strategy_kind("auto", 2, cuda=False) == "ddp"
    assert strategy_kind("auto", 8, cuda=True) == "fsdp"
    assert strategy_kind("ddp", 8, cuda=True) == "ddp"
    assert strategy_kind("fsdp", 8, cuda=True) == "fsdp"
    with pytest.raises(StrategyError, match="^strategy: fsdp needs CUDA"):
        strategy_kind("fsdp", 2, cuda=False)


def test_the_strategy_moves_no_folder_at_its_default_or_with_one_process():
    config = tiny_config()
    base = stage_hashes(config)
    assert stage_hashes(changed(config, "strategy", "auto")) == base
    assert stage_hashes(changed(config, "strategy", "ddp")) == base  # one process: no strategy
    two = changed(changed(config, "devices", 2), "train.micro_batch_size", MICRO)
    assert stage_hashes(changed(two, "strategy", "auto"))["pretrain"] == stage_hashes(two)["pretrain"]
    moved = stage_hashes(changed(two, "strategy", "ddp"))
    assert moved["pretrain"] != stage_hashes(two)["pretrain"] and moved["shards"] == base["shards"]


@pytest.mark.parametrize("overrides, line", [
    ({"strategy": "fsdp", "devices": 2, "train": {"micro_batch_size": MICRO}},
     "strategy: fsdp needs CUDA, and this machine has none; auto trains with FSDP where it finds CUDA"
     " (a cluster's GPU nodes) and with DDP elsewhere"),
    ({"devices": 2, "num_nodes": 2, "train": {"global_batch_size": 4, "micro_batch_size": 2}},
     "train.global_batch_size: 4 is not a multiple of micro_batch_size x devices x num_nodes = 8"),
    ({"strategy": "deepspeed"}, "strategy: 'deepspeed' is not one of ['auto', 'ddp', 'fsdp']"),
])
def test_a_strategy_that_cannot_run_stops_the_plan_with_one_line_naming_the_key(workdir, overrides, line):
    if "strategy: fsdp" in line:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: fsdp can run")
    config = tiny_config()
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    write_config(workdir, config)
    result = snakemake(workdir, "--cores", "1", "--dry-run", check=False)
    assert result.returncode == 1
    errors = [text for text in (result.stdout + result.stderr).splitlines() if "Invalid config" in text]
    assert errors == [f"Invalid config: {line}"], result.stdout + result.stderr
    assert not (workdir / "Data").exists()


# ---------------------------------------------------------------------------
# The parts each rank runs, on two real gloo processes


def _mean_of_ranks(fabric):
    import torch

    return mean_over_ranks(lambda fab, *args: torch.tensor(float(fab.global_rank + 1)))(fabric).item()


def test_the_validation_loss_is_the_mean_over_the_ranks():
    from lightning import Fabric

    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    assert fabric.launch(_mean_of_ranks) == 1.5  # rank 0's own is 1.0, rank 1's 2.0


def _stop_steps(rank, world, init, out):
    """Stopper.before_batch's flag exchange: rank 1 alone is signalled at boundary 3."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    stopper = Stopper(deadline=None, margin=None)
    stopper.flags = dist.new_group(backend="gloo")
    stopped_at = None
    for boundary in range(6):
        if rank == 1 and boundary == 3:
            stopper.reason = "SIGTERM"
        if stopper.agreed():
            stopped_at = boundary  # where stop() saves and exits
            break
        stopper.post(stopper.reason is not None)
    Path(out, f"rank-{rank}.json").write_text(json.dumps(stopped_at))
    dist.destroy_process_group()


def test_a_stop_flag_on_one_rank_stops_every_rank_at_the_same_next_step(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_stop_steps, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2)
    assert [load_json(tmp_path / f"rank-{r}.json") for r in (0, 1)] == [4, 4]  # posted at 3, agreed at 4 by both


def test_with_several_ranks_the_deadline_margin_holds_the_step_the_flag_waits_for():
    """A flag set at one step stops the ranks at the next: the margin before a deadline holds two steps."""
    stopper = Stopper(deadline=None, margin=None)
    stopper.longest_step, stopper.longest_save = 2.0, 3.5
    assert stopper.margin() == 2.0 + 3.5 + 15.0
    stopper.flags = object()  # the gloo group of several ranks
    assert stopper.margin() == 2 * 2.0 + 3.5 + 15.0


# ---------------------------------------------------------------------------
# Two local processes through the pipeline


def epoch_windows(shards: Path) -> list[list[int]]:
    """Every train window of the shards, as litgpt's loader cuts them, read by one process in order."""
    from litdata.streaming import StreamingDataset, TokensLoader

    dataset = StreamingDataset(input_dir=str(shards / "train"), item_loader=TokensLoader(block_size=WINDOW),
                               shuffle=False)
    return [dataset[i].tolist() for i in range(len(dataset))]


def two_rank_config(devices: int = 2) -> dict:
    config = tiny_config()
    config["devices"] = devices
    config["train"].update(global_batch_size=4, micro_batch_size=MICRO, save_interval=100, log_interval=1)
    config["eval"].update(interval=1000, max_iters=1000)  # the whole val split, on 1 rank as on 2
    return config


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One epoch of the tiny shards on two local processes (every batch each rank drew recorded), then the
    same global batch on one process."""
    workdir = copy_workflow(tmp_path_factory.mktemp("multirank") / "wf")
    config = two_rank_config()
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2", "--until", "shards")
    shards = workdir / "Data" / "shards" / stage_hashes(config)["shards"]
    windows = epoch_windows(shards)
    steps = len(windows) // 4  # an optimizer step draws 4 windows, 2 on each rank
    config["train"]["max_tokens"] = steps * 4 * 64
    write_config(workdir, config)
    drawn = workdir / "drawn"
    env = {**owned_env(), DRAWN_ENV: str(drawn)}
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *ONE_THREAD, "--until", "pretrain"],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    one = changed(config, "devices", 1)
    write_config(workdir, one)
    snakemake(workdir, "--cores", "2", *ONE_THREAD, "--until", "pretrain")
    pretrain = workdir / "results" / "pretrain"
    return {"windows": windows, "steps": steps, "drawn": drawn, "config": config,
            "two": pretrain / stage_hashes(config)["pretrain"], "one": pretrain / stage_hashes(one)["pretrain"]}


@pytest.mark.slow
def test_two_local_processes_train_through_the_pipeline_and_print_each_line_once(two_ranks):
    out = two_ranks["two"]
    assert (out / "final" / "lit_model.pth").is_file()
    assert logged_steps(out) == list(range(1, two_ranks["steps"] + 1))  # once each, not once per rank
    log = (out / LIVE_LOG).read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith("Final evaluation | val loss:") for line in log) == 1
    assert sum(line.startswith("Saving checkpoint to") for line in log) == 1 + two_ranks["steps"] // 100
    assert sum(line.startswith("Total parameters:") for line in log) == 1


@pytest.mark.slow
def test_the_ranks_draw_disjoint_halves_of_an_epoch(two_ranks):
    rows = [[tuple(json.loads(line)) for line in (two_ranks["drawn"] / f"rank-{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    per_rank = two_ranks["steps"] * MICRO
    assert [len(r) for r in rows] == [per_rank, per_rank]
    # Windows by their tokens; a few stories of the generated corpus share their first 65 tokens.
    epoch = Counter(tuple(window) for window in two_ranks["windows"])
    drawn = Counter(rows[0]) + Counter(rows[1])
    assert not {window for window in set(rows[0]) & set(rows[1]) if epoch[window] == 1}  # none trained on by both
    assert all(drawn[window] <= epoch[window] for window in drawn)  # none twice: together at most the epoch
    assert epoch.total() - drawn.total() < 4  # and the whole epoch, but for what fills no step


# Measured on this config (one epoch, 421 steps, final val loss in nats/token): one rank with seeds 42-45
# ends at 3.766, 3.735, 3.707, 3.744; two ranks with seeds 42, 43 at 3.837, 3.684, i.e. +0.071 and -0.051 from
# one rank with the same seed. The tolerance is twice the largest of those differences.
VAL_TOLERANCE = 0.15


@pytest.mark.slow
def test_two_ranks_end_near_one_rank_with_the_same_global_batch(two_ranks):
    """The same global batch (4 sequences a step: 2 ranks x 2, or 1 rank x 2 micro-batches of 2) takes the same
    number of steps with the same learning rates on the same epoch of data, in another order: litdata deals the
    windows to the ranks, so a step holds other windows than on one rank. Both validate on the whole val split.
    The difference is then data-order noise, as large as another seed's (VAL_TOLERANCE says how large)."""
    two, one = (litgpt_log.parse(two_ranks[k] / "train.log")[1] for k in ("two", "one"))
    final_two, final_one = (float(val[val["final"]]["val_loss"].iloc[0]) for val in (two, one))
    assert abs(final_two - final_one) < VAL_TOLERANCE, (final_two, final_one)


@pytest.mark.slow
def test_a_sigterm_to_one_local_rank_stops_both_at_one_step_and_resumes_to_the_same_weights(two_ranks, tmp_path):
    """Rank 1 alone gets SIGTERM: both ranks save the same step, and the rerun ends with the weights of the
    never-stopped two-rank training above."""
    import torch

    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, two_ranks["config"])
    out = workdir / "results" / "pretrain" / two_ranks["two"].name
    env = owned_env()
    pipeline = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *ONE_THREAD, "--until",
                                 "pretrain"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        rank0 = wait_for(lambda: logged_steps(out)[-1:] >= [20] and training_pid(out, env), timeout=600,
                         what="step 20")
        children = Path(f"/proc/{rank0}/task/{rank0}/children").read_text().split()
        rank1 = next(int(pid) for pid in children
                     if b"LOCAL_RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        os.kill(rank1, signal.SIGTERM)
        output, _ = pipeline.communicate(timeout=300)
    finally:
        pipeline.kill()
    assert pipeline.returncode != 0, output
    record = load_json(out / "stopped.json")
    assert record["reason"] == "another rank" and record["checkpoint"].endswith(f"step-{record['step']:08d}")
    assert record["step"] < two_ranks["steps"]
    snakemake(workdir, "--cores", "2", *ONE_THREAD, "--until", "pretrain")
    assert logged_steps(out)[-1] == two_ranks["steps"]
    ours, theirs = (torch.load(o / "final" / "lit_model.pth", weights_only=False)["model"]
                    for o in (out, two_ranks["two"]))
    assert not [name for name in ours if not ours[name].equal(theirs[name])]


def test_the_config_readme_lists_the_strategy():
    assert "| `strategy` |" in (REPO / "config" / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# Slurm as sites run it: what the job step's environment lost, and the rendezvous


def test_the_slurm_conf_the_jobstep_plugin_removed_comes_back_from_the_jobs_own_processes(tmp_path):
    """As in a Slurm job: the batch script's shell has SLURM_CONF; the rule runs without it (env -u, as
    snakemake-executor-plugin-slurm-jobstep's Popen does); the runner finds it in its ancestors."""
    probe = ("import json, os; from storylm.model.training_runner import ancestor_environments, site_settings;"
             " print(json.dumps(site_settings(dict(os.environ), ancestor_environments(os.getpid()))))")

    def restored(job_of_shell: str, job_of_rule: str) -> dict:
        shell = f"env -u SLURM_CONF SLURM_JOB_ID={job_of_rule} {sys.executable} -c {json.dumps(probe)}"
        env = {**os.environ, "SLURM_JOB_ID": job_of_shell, "SLURM_CONF": str(tmp_path / "site.conf")}
        return json.loads(subprocess.run(["bash", "-c", f"{shell}; true"], env=env, capture_output=True,
                                         text=True, check=True).stdout)

    assert restored("7", "7") == {"SLURM_CONF": str(tmp_path / "site.conf")}
    assert restored("8", "7") == {}  # another job's settings are not this job's


def test_the_rendezvous_port_is_free_here_and_a_users_choice_is_kept():
    import socket

    from storylm.model.training_runner import rendezvous

    chosen = rendezvous({})
    assert chosen["MASTER_ADDR"] == socket.gethostname()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", int(chosen["MASTER_PORT"])))  # nobody listens there
    assert rendezvous({"MASTER_ADDR": "node7", "MASTER_PORT": "29500"}) == {"MASTER_ADDR": "node7",
                                                                           "MASTER_PORT": "29500"}
