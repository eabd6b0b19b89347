"""A litgpt training that stops at a signal, or before its Slurm job's deadline, with a resumable checkpoint.

    python -m storylm.model.litgpt_train pretrain --config results/pretrain/<hash>/pretrain.yaml --out_dir ...
    python -m storylm.model.litgpt_train finetune_full --config ... --out_dir ...

takes exactly the arguments of `litgpt <command>` and runs litgpt's own loop, model, checkpoint format
and `resume: auto`. litgpt installs no signal handler and knows no time budget (its issues #1445 and
#1819), so a SIGTERM from Slurm's time limit, a preemption or a Ctrl-C loses everything since the
last step-* checkpoint. This entry point adds one thing: before fit() draws each batch (it draws them
from the CycleIterator of the command's module, replaced here by a subclass), it asks whether to stop.

The seam is the one all of litgpt's training scripts share: setup() builds `L.Fabric` and launches
main(), which calls the module's fit(fabric, state, ..., out_dir, train, ...); fit draws batches from
the module's CycleIterator and validates with its validate(). ENTRIES says, for each command that can
stop and resume, what differs: its step-* name, how its loop saves one, how far fit() trains, whether
it counts an iteration before drawing its batch and replays the seen batches on resume (finetune), and
whether it clips gradients. finetune_lora and the adapters are refused: litgpt 0.5's step checkpoints
of those hold only the adapter weights and their setup() takes no `resume`, so a stopped one could
only start over. It stops

- when the process got SIGTERM, SIGINT or SIGUSR1 (every process of a Slurm job step gets the signal);
- a margin before the job's end (SLURM_JOB_END_TIME, else `squeue -o %e`; or STORYLM_TRAIN_UNTIL,
  seconds since the epoch, anywhere), so that a training is safe where the signal comes too late or
  never reaches it. The margin is the longest step seen plus the save's time (measured on each save,
  estimated from the state's size before the first one) plus 15 s; STORYLM_STOP_MARGIN (seconds)
  replaces it.

It stops only between two optimizer steps, so the state is exactly the one litgpt's own step-*
checkpoints hold (model, optimizer, data-loader position, iter_num, step_count) and the resumed run
goes on as if never stopped. With several ranks, all ranks agree on the step first: at each step
each rank posts its flag to a max all-reduce on a CPU (gloo) group without waiting for it, and
every rank stops at the next step when any flag of the previous one was set (Megatron's
`--exit-signal-handler` reduces such a flag too), so the check costs no host sync of a GPU. The save
goes to saving-step-N/ and is renamed step-N/ once whole (a kill during the save leaves no step-*
that resume would pick). Then it writes stopped.json, says in its log which step it saved and why,
and, once every rank is there, exits STOP_EXIT without writing final/. A second Ctrl-C stops at
once, without a save.

Several processes (devices x num_nodes > 1): litgpt 0.5.13 always trains them with FSDP, which
neither Lightning nor torch runs on a CPU (litgpt issue #1731). STORYLM_STRATEGY (auto, ddp or
fsdp; the config's `strategy`) chooses here: `auto` keeps litgpt's FSDP where CUDA is and trains
with DDP elsewhere. The choice is made in litgpt.pretrain's own call of `Fabric`, so litgpt's model,
loop, checkpoint format and resume stay as they are. Besides, on every rank: a log line is printed
once (by global rank 0, not once per node), and the validation loss is the mean over the ranks
(litgpt's is each rank's own shard's).

Two more lines for the one who watches (storylm.model.training_runner reads them):

- before the first step, `storylm: training plan {...}`: the iterations this part trains from and
  to, the micro-batches an optimizer step and the tokens an iteration, as litgpt's own objects say;
- litgpt 0.5.13's closing `| - Tok/sec` line divides the tokens by a perf_counter() reading, not
  by the training time (its pretrain.py: `total_tokens / train_time`, where train_time is the
  clock at the start): the default run printed 8,701 tok/s where it trained 10.5k. Its line is
  replaced by this part's tokens over the `Training Time` litgpt printed just above it, the same
  figure metrics.json computes (storylm.results.litgpt_log.performance).
"""

from __future__ import annotations

import atexit
import importlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

STRATEGY_ENV = "STORYLM_STRATEGY"  # auto, ddp or fsdp (config key `strategy`)
DRAWN_ENV = "STORYLM_RECORD_DRAWN"  # a folder: each rank appends the token rows it trains on (a data check)
STOP_EXIT = 75  # EX_TEMPFAIL: stopped on purpose; the same command resumes
DIVERGED_EXIT = 65  # EX_DATAERR: the loss or the gradients turned NaN or infinite; rerunning would not help
STOPPED = "stopped.json"  # why and where the last part of the training stopped
SAVING_PREFIX = "saving-"  # a checkpoint being written: not a step-* folder until it is whole
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SLACK_S = 15.0  # on top of a step and a save: the process's exit, a slow file system
SAVE_BYTES_PER_S = 100e6  # a save's time before the first one is measured (a slow network disk)
PLAN_PREFIX = "storylm: training plan "
TRAINING_TIME_LINE = re.compile(r"^\| - Training Time\s*: (?P<seconds>[\d.]+) s")
TOK_SEC_LINE = re.compile(r"^\| - Tok/sec\s*:")


def _save_pretrain(module, fit: dict, path: Path) -> None:
    module.save_checkpoint(fit["fabric"], fit["state"], fit["tokenizer_dir"], path)


def _save_finetune(module, fit: dict, path: Path) -> None:
    """As finetune's loop saves its step-*: the whole state, then the base model's config files, the
    hyperparameters and the prompt style beside it."""
    fabric = fit["fabric"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fabric.save(path, fit["state"])
    if fabric.global_rank == 0:
        module.copy_config_files(fit["checkpoint_dir"], path.parent)
        module.save_hyperparameters(module.setup, path.parent)
        module.save_prompt_style(fit["data"].prompt_style, path.parent)


def _pretrain_iters(fit: dict) -> int:
    """The micro-batches litgpt.pretrain.fit trains to: its max_tokens over the ranks and the tokens of one."""
    train = fit["train"]
    return train.max_tokens // fit["fabric"].world_size // (train.micro_batch_size * fit["state"]["model"].max_seq_length)


def _finetune_iters(fit: dict) -> int:
    """The micro-batches finetune's fit trains to: its epochs over the train loader, or fewer by max_steps."""
    train = fit["train"]
    iters = train.epochs * len(fit["train_dataloader"])
    if train.max_steps:
        iters = min(iters, train.max_steps * train.gradient_accumulation_iters(fit["devices"], fit["num_nodes"]))
    return iters


@dataclass(frozen=True)
class Entry:
    """One litgpt training command as this wrapper stops it."""

    module: str  # whose fit, CycleIterator, validate and L are replaced
    step_name: str  # its step-* folders, formatted with the step
    save: Callable  # (module, fit's arguments, path): a step checkpoint as the command's own loop saves one
    max_iters: Callable[[dict], int]  # (fit's arguments): the micro-batches fit() trains to
    counts_first: bool = False  # fit() adds an iteration to iter_num before it draws the iteration's batch
    replays: bool = False  # a resumed fit() draws the batches already trained on again, to reach its place
    clips: bool = True  # litgpt clips the gradients: the guard reads that norm (else it computes one)


ENTRIES = {
    "pretrain": Entry("litgpt.pretrain", "step-{:08d}", _save_pretrain, _pretrain_iters),
    "finetune_full": Entry("litgpt.finetune.full", "step-{:06d}", _save_finetune, _finetune_iters,
                           counts_first=True, replays=True, clips=False),
}


def plan_line(first_iter: int, max_iters: int, accumulation: int, tokens_per_iter: int) -> str:
    """The line that tells the runner what this part of the training will do (parsed by read_plan)."""
    return PLAN_PREFIX + json.dumps({"first_iter": first_iter, "max_iters": max_iters, "accumulation": accumulation,
                                     "tokens_per_iter": tokens_per_iter})


def read_plan(line: str) -> dict | None:
    return json.loads(line[len(PLAN_PREFIX):]) if line.startswith(PLAN_PREFIX) else None


class CorrectedThroughput:
    """fabric.print after fit(): litgpt's `| - Tok/sec` line replaced by tokens / training time.

    `part_tokens` are the tokens this part trained (a resumed part counts only its own); the time
    is the `| - Training Time` litgpt printed just before (fit and the final save, as metrics.json
    counts it).
    """

    def __init__(self, print_function, part_tokens: int):
        self.print_function = print_function
        self.part_tokens = part_tokens
        self.seconds: float | None = None

    def line(self, message: str) -> str:
        if m := TRAINING_TIME_LINE.match(message):
            self.seconds = float(m["seconds"])
        elif TOK_SEC_LINE.match(message):
            if not self.seconds:
                return "| - Tok/sec       : not measured (no training time; litgpt 0.5.13's own figure is wrong)"
            return (f"| - Tok/sec       : {self.part_tokens / self.seconds:.2f} tok/s (storylm: {self.part_tokens:,}"
                    f" tokens of this part / {self.seconds:.2f} s; litgpt 0.5.13 divides by a clock reading)")
        return message

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], str):
            args = (self.line(args[0]),)
        return self.print_function(*args, **kwargs)


def job_deadline(environ=os.environ) -> tuple[float | None, str | None]:
    """When this training must be done by (seconds since the epoch) and what said so (the variable's
    name, or `squeue`); (None, None) when nothing limits it."""
    for key in ("STORYLM_TRAIN_UNTIL", "SLURM_JOB_END_TIME"):
        if environ.get(key, "").strip():
            return float(environ[key]), key
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None, None
    try:
        end = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        return datetime.fromisoformat(end).timestamp(), "squeue"  # squeue prints the local time
    except (OSError, subprocess.SubprocessError, ValueError):  # no squeue, or "Unknown": no known end
        return None, None


class Stopper:
    """Decides before each batch whether the training stops there, and stops it with a checkpoint."""

    def __init__(self, deadline: float | None, margin: float | None, deadline_source: str | None = None,
                 out_dir: Path | None = None):
        self.deadline = deadline
        self.deadline_source = deadline_source  # the variable (or squeue) that set the deadline
        self.out_dir = out_dir  # litgpt's out_dir, known from the command line before fit() starts
        self.started = time.monotonic()
        self.fixed_margin = margin
        self.reason: str | None = None  # set by a signal
        self.longest_step = 0.0
        self.longest_save: float | None = None
        self.state_bytes = 0
        self.fit: dict = {}  # fit()'s arguments: fabric, state, out_dir, train, ...
        self.entry = ENTRIES["pretrain"]  # the command being trained (install sets it)
        self.module = None  # its module, imported
        self.replaying = 0  # batches a resumed fit() still draws to reach its place (not training)
        self.first_iter = 0
        self.accumulation = 1  # micro-batches an optimizer step (fixed for a fit() call)
        self.max_iters = 0  # the micro-batches fit() trains to, as litgpt.pretrain.fit counts them
        self.tokens_per_iter = 0  # across all processes
        self.last_boundary: float | None = None
        self.flags = None  # several ranks: the gloo group the stop flags are reduced on
        self.posted = None  # (the all-reduce in flight, its flag tensor): the previous step's flags

    # --- hooks -----------------------------------------------------------------------------------

    def on_signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGINT and self.reason == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a save
        self.reason = self.reason or signal.Signals(signum).name
        if not self.fit:  # still starting (imports, data, resume): nothing to save, so out at once
            self.stop_before_training()

    def start(self, fit_arguments: dict) -> None:
        """fit() is about to run: remember what a save needs."""
        self.fit = fit_arguments
        state = fit_arguments["state"]
        self.first_iter = state["iter_num"]
        self.replaying = self.first_iter if self.entry.replays and fit_arguments.get("resume") else 0
        train, fabric = fit_arguments["train"], fit_arguments["fabric"]
        self.accumulation = train.gradient_accumulation_iters(fit_arguments["devices"], fit_arguments["num_nodes"])
        self.max_iters = self.entry.max_iters(fit_arguments)
        # At most, for a finetune: its fit() cuts the model's length to the longest sample, and pads each batch.
        self.tokens_per_iter = train.micro_batch_size * state["model"].max_seq_length * fabric.world_size
        self.state_bytes = sum(p.numel() * p.element_size() for p in state["model"].parameters()) * 4
        self.last_boundary = None
        self.posted = None
        if fabric.world_size > 1 and self.flags is None:
            import torch.distributed as dist

            self.flags = dist.new_group(backend="gloo")  # every rank calls it here: a collective
        fabric.print(plan_line(self.first_iter, self.max_iters, self.accumulation, self.tokens_per_iter), flush=True)

    def part_tokens(self) -> int:
        """Tokens trained by this part of the training (since fit() started) across all processes."""
        return (self.fit["state"]["iter_num"] - self.first_iter) * self.tokens_per_iter

    def done(self) -> int:
        """The micro-batches trained so far, as a batch is drawn (a finetune has counted the next one already)."""
        return self.fit["state"]["iter_num"] - (1 if self.entry.counts_first else 0)

    def margin(self) -> float:
        if self.fixed_margin is not None:
            return self.fixed_margin
        save = self.longest_save if self.longest_save is not None else 5.0 + self.state_bytes / SAVE_BYTES_PER_S
        steps = 2 if self.flags is not None else 1  # several ranks stop a step after the flag is posted
        return steps * self.longest_step + save + SLACK_S

    def before_batch(self) -> None:
        """Called before each batch: stop here if asked and this is the end of an optimizer step."""
        if not self.fit:
            return
        if self.replaying:  # a resumed finetune reaching its place: no step is trained yet
            self.replaying -= 1
            return
        if self.done() % self.accumulation:
            return  # inside an optimizer step: its gradients are not in the state a checkpoint holds
        now = time.monotonic()
        if self.last_boundary is not None:
            self.longest_step = max(self.longest_step, now - self.last_boundary)
        self.last_boundary = now
        if self.reason is None and self.deadline is not None and time.time() + self.margin() >= self.deadline:
            self.reason = "deadline"
        stop = self.reason is not None
        if self.flags is not None:  # every rank stops at the same step, or none does
            stop = self.agreed()
            if stop:
                self.reason = self.reason or "another rank"
            else:
                self.post(self.reason is not None)
        if stop and self.done() < self.max_iters:
            self.stop()

    def agreed(self) -> bool:
        """Whether any rank's flag was set at the previous step (its all-reduce ran during this step)."""
        if self.posted is None:
            return False
        work, flag = self.posted
        work.wait()
        self.posted = None
        return bool(flag.item())

    def post(self, flag: bool) -> None:
        """Start the max all-reduce of this rank's flag, on the CPU, without waiting for it."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(flag)])
        self.posted = (dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.flags, async_op=True), tensor)

    def timed_save(self, save, *args, **kwargs) -> None:
        """Fabric's save, timed: the margin holds the longest save. A state whose weights are not finite
        is never saved: the last good checkpoint stays the one to resume from."""
        from storylm.model.checkpoint import non_finite_tensor

        found = non_finite_tensor(dict(self.fit["state"]["model"].named_parameters())) if self.fit else None
        if found is not None:
            self.diverged(f"the weights hold {found[1]} NaN or infinite values (tensor {found[0]})")
        started = time.monotonic()
        save(*args, **kwargs)
        self.longest_save = max(self.longest_save or 0.0, time.monotonic() - started)

    # --- the stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        fabric, state, out_dir = self.fit["fabric"], self.fit["state"], Path(self.fit["out_dir"])
        state["iter_num"] = self.done()  # the checkpoint holds the iterations trained, as the loop's own do
        step = state["step_count"]
        trained = (state["iter_num"] - self.first_iter) // self.accumulation
        target = out_dir / self.entry.step_name.format(step)
        started = time.monotonic()
        if trained and not (target / "lit_model.pth").is_file():  # litgpt's save_interval may have saved it
            saving = out_dir / f"{SAVING_PREFIX}{target.name}"
            self.entry.save(self.module, self.fit, saving / "lit_model.pth")
            fabric.barrier()
            if fabric.global_rank == 0:
                saving.rename(target)
        fabric.barrier()
        seconds = time.monotonic() - started
        if fabric.global_rank == 0:
            record = {"reason": self.reason, "step": step, "iter_num": state["iter_num"],
                      "max_steps": self.max_iters // self.accumulation,
                      "steps_this_part": trained, "checkpoint": str(target) if trained or target.is_dir() else None,
                      "save_s": round(seconds, 3), "margin_s": round(self.margin(), 3), "time": time.time(),
                      "deadline_source": self.deadline_source, "deadline": self.deadline}
            (out_dir / STOPPED).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        saved = f"saved {target} in {seconds:.1f} s" if trained else "nothing new to save"
        fabric.print(f"Stopped at step {step} ({self.reason}): {saved}; the same command resumes from it", flush=True)
        for logger in fabric.loggers:  # what the loggers hold goes to their files first
            logger.finalize("success")
        sys.stdout.flush()
        sys.stderr.flush()
        # No rank exits before rank 0 has written stopped.json and its line: srun --kill-on-bad-exit ends
        # the others at the first exit, and the runner requeues only a stop that says where it saved.
        fabric.barrier()
        end_data_workers()
        os._exit(STOP_EXIT)  # out at once: nothing is left to tidy (the loader's shutdown would wait for workers)

    def stop_before_training(self) -> None:
        """A stop before fit()'s first step: say so in stopped.json (the runner words what to do) and exit."""
        if self.out_dir is not None:
            from storylm.io.entry import write_json

            write_json(self.out_dir / STOPPED, {
                "reason": self.reason, "step": None, "max_steps": None, "steps_this_part": 0, "checkpoint": None,
                "before_training": True, "startup_s": round(time.monotonic() - self.started, 1),
                "deadline_source": self.deadline_source, "deadline": self.deadline, "time": time.time()})
        print(f"Stopped ({self.reason}) while starting, before the first step: nothing to save", flush=True)
        end_data_workers()
        os._exit(STOP_EXIT)

    def check_gradients(self, norm) -> None:
        """After litgpt's gradient clipping: a NaN or infinite gradient norm ends the training here, before
        the optimizer step would write it into the weights."""
        import torch

        if norm is not None and not bool(torch.isfinite(norm)):  # one host sync, as torch's own check makes
            self.diverged(f"the gradient norm is {float(norm)}")

    def diverged(self, figure: str) -> None:
        """One line with the step, the figure and the settings to change; exit DIVERGED_EXIT (never requeued)."""
        state, fabric = self.fit["state"], self.fit["fabric"]
        out_dir = Path(self.fit["out_dir"])
        kept = sorted(p.parent.name for p in out_dir.glob("step-*/lit_model.pth"))
        lr = state["optimizer"].param_groups[0]["lr"]
        fabric.print(f"storylm: the training diverged at step {state['step_count'] + 1} (iteration {state['iter_num']}):"
                     f" {figure}, at a learning rate of {lr:.3g}. Lower optimizer.init_args.lr or raise"
                     " train.lr_warmup_steps (in bf16 or fp16 precision, 32-true may also help);"
                     f" {'the last good checkpoint is ' + kept[-1] if kept else 'no checkpoint was saved'}",
                     flush=True)
        for logger in fabric.loggers:
            logger.finalize("failed")
        sys.stdout.flush()
        end_data_workers()
        os._exit(DIVERGED_EXIT)


def deaf_to_stop_signals() -> None:
    """In the DataLoader's workers: ignore the stop signals. Slurm signals every process of the job
    step, and torch's worker handler dies at SIGTERM, which fails the training ("DataLoader worker is
    killed by signal") before it can save; the workers end with the training, as always."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def end_data_workers() -> None:
    """Kill the DataLoader's workers once the training is over. They ignore SIGTERM (deaf_to_stop_signals),
    and Python's exit ends its daemon processes with SIGTERM and then waits for them: it would wait forever."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join()


class StrategyError(ValueError):
    """A strategy this machine cannot run (the planning refuses it first where it can tell)."""


def strategy_kind(requested: str, processes: int, cuda: bool) -> str:
    """What trains `processes` processes: "single" (one process), "fsdp" (litgpt's own) or "ddp"."""
    if requested not in ("auto", "ddp", "fsdp"):
        raise StrategyError(f"strategy: {requested!r} is not one of auto, ddp, fsdp")
    if processes == 1:
        return "single"
    if requested == "fsdp" and not cuda:
        raise StrategyError("strategy: fsdp needs CUDA, and this machine has none (auto trains with DDP here)")
    if requested == "auto":
        return "fsdp" if cuda else "ddp"
    return requested


def fabric_class(requested: str):
    """lightning.Fabric as litgpt.pretrain.setup calls it, with the strategy chosen by `requested`, and
    printing once (on global rank 0; Fabric's own print is once per node)."""
    import lightning
    import torch
    from lightning.fabric.strategies import DDPStrategy

    class Fabric(lightning.Fabric):
        def __init__(self, *args, strategy="auto", devices=1, num_nodes=1, **kwargs):
            kind = strategy_kind(requested, int(devices) * int(num_nodes), torch.cuda.is_available())
            if kind == "ddp":
                strategy = DDPStrategy()  # gloo on a CPU, NCCL on CUDA
            super().__init__(*args, strategy=strategy, devices=devices, num_nodes=num_nodes, **kwargs)

        def print(self, *args, **kwargs) -> None:
            if self.global_rank == 0:
                print(*args, **kwargs)

    return Fabric


def lightning_with(fabric):
    """The lightning module as litgpt.pretrain sees it (its `L`), with `fabric` as L.Fabric."""
    import types

    import lightning

    shim = types.ModuleType("lightning")
    shim.__dict__.update(vars(lightning))
    shim.Fabric = fabric
    return shim


def mean_over_ranks(validate):
    """litgpt's validate returns the mean over this rank's share of the val windows: make it all ranks'."""

    def validate_all(fabric, *args, **kwargs):
        loss = validate(fabric, *args, **kwargs)
        if fabric.world_size > 1:
            loss = fabric.all_reduce(loss, reduce_op="mean")
        return loss

    return validate_all


def drawn_recorder(folder: Path):
    """Appends each batch's token rows to <folder>/rank-<global rank>.jsonl (which data each rank trained on)."""

    def record(batch) -> None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rank-{rank}.jsonl", "a", encoding="utf-8") as file:
            for row in batch.tolist():
                file.write(json.dumps(row) + "\n")

    return record


class CommandError(ValueError):
    """A litgpt command this wrapper cannot stop and resume."""


def install(stopper: Stopper, strategy: str = "auto", drawn: Path | None = None, command: str = "pretrain") -> None:
    """Wrap the command's fit and CycleIterator, and Fabric's save, so that `stopper` sees each batch and
    save, make the data loader's workers ignore the stop signals, train several processes with
    `strategy`, print once and validate over all ranks (and, with `drawn`, record what each rank trained on)."""
    if command not in ENTRIES:
        raise CommandError(f"litgpt {command}: storylm can stop and resume only {', '.join(ENTRIES)} (litgpt's"
                           " adapter and LoRA step checkpoints hold no optimizer state, and their setup no resume)")
    stopper.entry = ENTRIES[command]
    module = stopper.module = importlib.import_module(stopper.entry.module)
    from torch.utils.data._utils import signal_handling

    from storylm.model.precision import training_precision

    set_worker_handlers = signal_handling._set_worker_signal_handlers

    def worker_signal_handlers(*args):  # each worker calls it first thing (torch's worker loop)
        set_worker_handlers(*args)
        deaf_to_stop_signals()

    signal_handling._set_worker_signal_handlers = worker_signal_handlers

    original_fit = module.fit
    fit_signature = inspect.signature(original_fit)

    record = drawn_recorder(drawn) if drawn else None

    class StoppableCycle(module.CycleIterator):
        def __next__(self):
            stopper.before_batch()
            batch = super().__next__()
            if record is not None and stopper.fit and stopper.done() < stopper.max_iters:
                record(batch)  # a batch fit() trains on (it draws one more, then ends)
            return batch

    def fit(*args, **kwargs):
        bound = fit_signature.bind(*args, **kwargs)
        bound.apply_defaults()
        fabric, state = bound.arguments["fabric"], bound.arguments["state"]
        if stopper.entry.clips:
            guard_gradients(fabric, stopper)
        else:
            guard_steps(fabric, state, stopper)
        save = fabric.save  # every checkpoint the training writes, the final one too
        fabric.save = lambda *save_args, **save_kwargs: stopper.timed_save(save, *save_args, **save_kwargs)
        stopper.start(dict(bound.arguments))
        result = original_fit(*args, **kwargs)
        fabric.print = CorrectedThroughput(fabric.print, stopper.part_tokens())  # litgpt prints its figures next
        return result

    module.CycleIterator = StoppableCycle
    module.fit = fit
    module.validate = mean_over_ranks(module.validate)
    module.L = lightning_with(fabric_class(strategy))
    # precision: null (the config's auto) is this machine's choice, made as storylm.model.precision says
    if hasattr(module, "get_default_supported_precision"):
        module.get_default_supported_precision = lambda training: training_precision()


def guard_gradients(fabric, stopper: Stopper) -> None:
    """litgpt clips with torch's error_if_nonfinite, a traceback that names neither the step nor a remedy:
    clip without it and let the stopper check the norm instead."""
    clip = fabric.clip_gradients

    def clip_gradients(module, optimizer, clip_val=None, max_norm=None, norm_type=2.0, **_error_if_nonfinite):
        norm = clip(module, optimizer, clip_val=clip_val, max_norm=max_norm, norm_type=norm_type,
                    error_if_nonfinite=False)
        stopper.check_gradients(norm)
        return norm

    fabric.clip_gradients = clip_gradients


def guard_steps(fabric, state: dict, stopper: Stopper) -> None:
    """A training litgpt does not clip (finetune): the gradient norm, measured before each optimizer step
    (a clip to an infinite norm changes nothing), is checked as guard_gradients checks a clipped one."""
    optimizer, model = state["optimizer"], state["model"]
    step = optimizer.step

    def checked_step(*args, **kwargs):
        stopper.check_gradients(fabric.clip_gradients(model, optimizer, max_norm=float("inf"), error_if_nonfinite=False))
        return step(*args, **kwargs)

    optimizer.step = checked_step


def out_dir_argument(argv: list[str]) -> Path | None:
    """litgpt's --out_dir on the command line (the runner always passes it)."""
    for index, word in enumerate(argv):
        if word == "--out_dir" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if word.startswith("--out_dir="):
            return Path(word.split("=", 1)[1])
    return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    margin = os.environ.get("STORYLM_STOP_MARGIN", "").strip()
    deadline, source = job_deadline()
    stopper = Stopper(deadline, float(margin) if margin else None, source, out_dir_argument(argv))
    for signum in SIGNALS:
        signal.signal(signum, stopper.on_signal)
    drawn = os.environ.get(DRAWN_ENV, "").strip()
    try:
        install(stopper, os.environ.get(STRATEGY_ENV, "").strip() or "auto", Path(drawn) if drawn else None,
                argv[0] if argv else "")
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.stdout.reconfigure(line_buffering=True)  # each line reaches the runner (a pipe) as it is printed
    atexit.register(end_data_workers)  # after multiprocessing's own exit handler, so it runs before it
    from litgpt.__main__ import main as litgpt_main

    # litgpt's CLI (and save_hyperparameters, which parses it again) read sys.argv as `litgpt <command> ...`.
    sys.argv = ["litgpt", *argv]
    try:
        litgpt_main()
    except StrategyError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
