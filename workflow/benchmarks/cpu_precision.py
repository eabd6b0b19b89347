"""What bf16-mixed and torch.compile buy on this CPU for the default model's training step, side by side.

    PYTHONPATH=workflow python workflow/benchmarks/cpu_precision.py [--steps 60] [--rounds 3]

Four variants of litgpt's own model and the pipeline's optimizer, built from the schema defaults
(config/schema.yaml: the embedded default run's model, micro batch and learning rate): 32-true and
bf16-mixed (Lightning Fabric's precision plugins, as `litgpt pretrain` uses them), each eager and
under torch.compile (which `litgpt pretrain` always applies). They start from the same weights and
see the same batches; the rounds alternate the variants, so a machine that slows down meets all.

It prints, per variant: the first step's seconds (the compile, with an empty inductor cache: what a
first run pays), the median step after it, tokens/s, the time a default training's step count
would take with the first step included, and the mean loss over the last steps (random tokens: the
figure shows the arithmetic agrees, not what the model learns). Also the CPU's bf16 support as
torch reports it, and the load average before and after: on a shared machine, the load is in the
figures. Precision in the pipeline: `storylm.model.precision` (`precision: auto`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from storylm.plan.schema import defaults


def build(variant: str, seed: int, config: dict):
    import lightning as L
    import torch
    from litgpt.model import GPT, Config

    precision, compiled = variant.split("/")
    fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
    model_config = {k: v for k, v in config["model_config"].items() if k != "name" and v is not None}
    model_config.setdefault("vocab_size", config["tokenizer"]["vocab_size"])
    torch.manual_seed(seed)
    with fabric.init_module(empty_init=False):
        model = GPT(Config(**model_config))
    model.max_seq_length = config["train"]["max_seq_length"]
    if compiled == "compiled":
        model = torch.compile(model)
    model = fabric.setup(model)
    init = config["optimizer"]["init_args"]
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(
        model.parameters(), lr=init["lr"], weight_decay=init["weight_decay"], betas=tuple(init["betas"])))
    return fabric, model, optimizer, model_config["vocab_size"]


def step(fabric, model, optimizer, batch) -> tuple[float, float]:
    from litgpt.utils import chunked_cross_entropy

    started = time.perf_counter()
    logits = model(batch[:, :-1])
    loss = chunked_cross_entropy(logits, batch[:, 1:])
    fabric.backward(loss)
    fabric.clip_gradients(model, optimizer, max_norm=1.0)
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started, loss.item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--variants", default="32-true/eager,32-true/compiled,bf16-mixed/eager,bf16-mixed/compiled")
    args = parser.parse_args(argv)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # a first run's cold cache
    import torch

    torch.set_num_threads(args.threads)
    config = defaults()
    micro, seq = config["train"]["micro_batch_size"], config["train"]["max_seq_length"]
    steps_per_training = config["train"]["max_tokens"] // (config["train"]["global_batch_size"] * seq)
    print(f"CPU bf16: avx512_bf16 {torch.cpu._is_avx512_bf16_supported()}, amx {torch.cpu._is_amx_tile_supported()};"
          f" torch {torch.__version__}, {args.threads} threads; load average {os.getloadavg()}")
    variants = args.variants.split(",")
    runs = {v: build(v, 0, config) for v in variants}
    vocab = next(iter(runs.values()))[3]
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (micro, seq + 1), generator=generator) for _ in range(args.steps * args.rounds + 1)]
    first, times, losses = {}, {v: [] for v in variants}, {v: [] for v in variants}
    for variant in variants:  # the first step of each: the compile (or eager warm-up)
        fabric, model, optimizer, _ = runs[variant]
        first[variant], _ = step(fabric, model, optimizer, batches[0])
    for round_ in range(args.rounds):
        for variant in variants:
            fabric, model, optimizer, _ = runs[variant]
            for i in range(args.steps):
                seconds, loss = step(fabric, model, optimizer, batches[1 + round_ * args.steps + i])
                times[variant].append(seconds)
                losses[variant].append(loss)
    base = statistics.median(times[variants[0]])
    print(f"\n{'variant':<22}{'first step s':>13}{'median ms':>11}{'tok/s':>9}{'vs ' + variants[0]:>22}"
          f"{'training s':>12}{'last loss':>11}")
    for variant in variants:
        median = statistics.median(times[variant])
        training = first[variant] + median * (steps_per_training - 1)
        tail = statistics.mean(losses[variant][-args.steps:])
        print(f"{variant:<22}{first[variant]:>13.1f}{median * 1e3:>11.1f}{micro * seq / median:>9.0f}"
              f"{base / median:>21.2f}x{training:>12.0f}{tail:>11.4f}")
    print(f"\n(training s: the first step plus {steps_per_training - 1} median steps, the default training's count;"
          f" load average after {os.getloadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
