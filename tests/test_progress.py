"""The live progress line (storylm.io.progress), the training's line, and litgpt's corrected Tok/sec."""

from __future__ import annotations

import io
import os

import pytest

from storylm.io.progress import FD_VARIABLE, Progress, duration, progress_stream, render
from storylm.model.litgpt_train import CorrectedThroughput, plan_line, read_plan
from storylm.model.training_runner import STOP_EXIT, TrainingWatch


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_a_person_reads_them():
    assert [duration(s) for s in (0, 5.4, 59.6, 185, 3600, 7380)] == ["0 s", "5 s", "1 min 00 s", "3 min 05 s",
                                                                       "1 h 00 min", "2 h 03 min"]


def test_the_line_says_done_of_total_the_figures_and_the_time_left():
    assert render("evaluate", 120, 300, "stories", "loss 3.21", 12, 18) == \
        "evaluate: 120/300 stories (40%) | loss 3.21 | 12 s, about 18 s left"
    assert render("pretrain", 1171, 1171, "steps", "", 229, 0) == "pretrain: 1,171/1,171 steps (100%) | 3 min 49 s"
    assert render("shards", 3, None, "splits", "", 2, None) == "shards: 3 splits | 2 s"


def test_in_a_log_a_line_at_each_quarter_after_the_first_seconds_and_the_last_once():
    clock, stream = Clock(), io.StringIO()
    progress = Progress("sample", 8, "stories", stream=stream, clock=clock)
    for done in range(1, 9):
        clock.now += 5  # 5 s a story: the first quarter (2 stories) comes at 10 s
        progress.update(done)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "sample: 2/8 stories (25%) | 10 s, about 30 s left",
        "sample: 4/8 stories (50%) | 20 s, about 20 s left",
        "sample: 6/8 stories (75%) | 30 s, about 10 s left",
        "sample: 8/8 stories (100%) | 40 s",
    ]


def test_a_stage_of_a_few_seconds_prints_its_last_line_only():
    clock, stream = Clock(), io.StringIO()
    with Progress("evaluate", 4, "val stories", stream=stream, clock=clock) as progress:
        for done in range(1, 5):
            clock.now += 1
            progress.update(done)
    assert stream.getvalue() == "evaluate: 4/4 val stories (100%) | 4 s\n"


def test_a_long_stage_prints_between_quarters_every_five_minutes():
    clock, stream = Clock(), io.StringIO()
    progress = Progress("pretrain", 1000, "steps", stream=stream, clock=clock)
    for done in range(1, 101):  # 10 % in 1000 s
        clock.now += 10
        progress.update(done)
    assert stream.getvalue().splitlines() == ["pretrain: 30/1,000 steps (3%) | 5 min 00 s, about 2 h 41 min left",
                                              "pretrain: 60/1,000 steps (6%) | 10 min 00 s, about 2 h 36 min left",
                                              "pretrain: 90/1,000 steps (9%) | 15 min 00 s, about 2 h 31 min left"]


def test_on_a_terminal_the_line_is_rewritten_in_place_and_kept_at_the_end():
    main, secondary = os.openpty()
    terminal = open(secondary, "w", encoding="utf-8", closefd=True)
    clock = Clock()
    try:
        progress = Progress("sample", 3, "stories", stream=terminal, clock=clock)
        assert progress.tty
        for done in range(1, 4):
            clock.now += 1
            progress.update(done)
        progress.close()
        terminal.close()  # then the pty gives all that was written, and EIO after it (one read may get a part)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 10_000)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        written = b"".join(chunks).decode()
    finally:
        terminal.close()
        os.close(main)
    lines = [f"sample: {done}/3 stories ({round(100 * done / 3)}%) | {done} s" for done in (1, 2, 3)]
    assert written == (f"\r{lines[0]}\x1b[K\r{lines[1]}, about 1 s left\x1b[K\r{lines[2]}\x1b[K"
                       f"\r{lines[2]}\x1b[K\r\n")  # the pty turns the closing \n into \r\n


def test_snakemake_jobs_write_to_the_descriptor_the_rules_name(monkeypatch):
    read, write = os.pipe()
    try:
        monkeypatch.setenv(FD_VARIABLE, str(write))
        stream = progress_stream()
        stream.write("shards: 2/2 splits\n")
        stream.flush()
        assert os.read(read, 100) == b"shards: 2/2 splits\n"
        os.close(write)
        assert progress_stream() is __import__("sys").stderr  # a descriptor that is not open: stderr
    finally:
        os.close(read)


PLAN = plan_line(first_iter=0, max_iters=48, accumulation=4, tokens_per_iter=256)


def step_line(iteration: int, loss: float) -> str:
    return (f"Epoch 1 | iter {iteration} step {iteration // 4} | loss train: {loss:.3f}, val: n/a |"
            f" iter time: 5.00 ms (step) remaining time: 0:00:01\n")


def test_the_training_line_has_step_of_total_loss_tokens_per_second_and_time_left():
    clock, stream = Clock(), io.StringIO()
    watch = TrainingWatch(Progress("pretrain", None, "steps", stream=stream, clock=clock), clock=clock)
    watch.see("Total parameters: 1,115,264\n")
    clock.now += 30  # import and model set-up
    watch.see(PLAN + "\n")
    assert read_plan(PLAN) == {"first_iter": 0, "max_iters": 48, "accumulation": 4, "tokens_per_iter": 256}
    clock.now += 20  # compilation: not in the rate
    watch.see(step_line(8, 6.5))
    clock.now += 2  # 8 iterations of 256 tokens in 2 s
    watch.see(step_line(16, 6.25))
    watch.close(0)
    # In a log: the first quarter of the 12 steps, then nothing new at the close (the same step and figures).
    # 1,024 tokens/s: 8 iterations of 256 tokens in 2 s; 8 s left: 2 steps in 2 s, 8 to go.
    assert stream.getvalue() == "pretrain: 4/12 steps (33%) | loss 6.250 | 1,024 tokens/s | 52 s, about 8 s left\n"


@pytest.mark.parametrize(("returncode", "ending"), [(STOP_EXIT, " | stopped"), (1, " | failed (exit 1)")])
def test_a_stopped_or_failed_training_says_so_on_its_last_line(returncode, ending):
    clock, stream = Clock(), io.StringIO()
    watch = TrainingWatch(Progress("pretrain", None, "steps", stream=stream, clock=clock), clock=clock)
    watch.see(PLAN + "\n")
    watch.see(step_line(8, 6.5))
    watch.close(returncode)
    assert stream.getvalue().splitlines()[-1] == f"pretrain: 2/12 steps (17%) | loss 6.500{ending} | 0 s"


def test_litgpts_tok_per_sec_is_replaced_by_tokens_over_training_time():
    printed = []
    corrected = CorrectedThroughput(printed.append, part_tokens=2_398_208)
    # litgpt 0.5.13's performance block, as its pretrain.py prints it (Tok/sec: total_tokens / a clock reading)
    for line in ("| - Total tokens  : 2,398,208", "| - Training Time : 228.12 s", "| - Tok/sec       : 8701.23 tok/s"):
        corrected(line)
    assert printed == ["| - Total tokens  : 2,398,208", "| - Training Time : 228.12 s",
                       "| - Tok/sec       : 10512.92 tok/s (storylm: 2,398,208 tokens of this part / 228.12 s;"
                       " litgpt 0.5.13 divides by a clock reading)"]
    assert 2_398_208 / 228.12 == pytest.approx(10512.92, abs=0.005)
