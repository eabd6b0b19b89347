"""Many stories of one prompt at once: litgpt's model and KV cache over a batch, each row drawing from
its own random stream.

litgpt's `generate` makes one story at a time (the default sample stage drew 300 stories in 62 s on
2 cores, nearly all of it per-token overhead of a batch of one); its `batched_generate_fn` draws every
row from the one global generator, so a story would depend on its batch-mates. Here each row draws
from a torch.Generator seeded with the story's own seed, after litgpt's sampling rule (top-k, then
temperature, then top-p with litgpt's `sample_top_p`, then one multinomial draw). So a story is what
`litgpt.generate.base.generate` gives after `torch.manual_seed(seed)`, up to the last bits of a
batched matrix product. The stories of one prompt share its length, so the batch needs no padding;
positions and the KV cache's attention limit advance as in litgpt's `generate_fn`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from litgpt.generate.base import sample_top_p

# Rows per forward pass: enough to amortize the per-token overhead on a CPU, small enough that the
# microstories model's KV cache (64 rows x 6 layers x 512 positions) stays near 200 MB.
BATCH_ROWS = 64


def pick(logits: torch.Tensor, generators: list[torch.Generator], temperature: float, top_k: int | None,
         top_p: float) -> torch.Tensor:
    """One next token per row of logits [rows, vocab]: litgpt's `sample` for every row, each row's draw
    from its own generator."""
    if top_k is not None:
        values, indices = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)
    if temperature > 0.0 and top_p > 0.0:
        logits = logits / temperature
        if top_p < 1.0:
            logits = torch.stack([sample_top_p(row, top_p) for row in logits])
        probs = torch.nn.functional.softmax(logits, dim=-1)
        return torch.cat([torch.multinomial(row, num_samples=1, generator=generator)
                          for row, generator in zip(probs, generators, strict=True)])
    return torch.argmax(logits, dim=-1)


@torch.inference_mode()
def continuations(model, prompt_ids: torch.Tensor, seeds: list[int], max_new_tokens: int, temperature: float,
                  top_k: int | None, top_p: float, eos_id: int,
                  on_batch: Callable[[int], None] | None = None) -> list[tuple[list[int], bool]]:
    """For each seed: the ids the model wrote after the prompt (without its eos), and whether it wrote eos.
    `on_batch(rows)` is called after each batch with the rows it wrote (a progress line)."""
    found = []
    for start in range(0, len(seeds), BATCH_ROWS):
        batch = _batch(model, prompt_ids, seeds[start:start + BATCH_ROWS], max_new_tokens, temperature, top_k,
                       top_p, eos_id)
        found += batch
        if on_batch is not None:
            on_batch(len(batch))
    return found


def _batch(model, prompt_ids, seeds, max_new_tokens, temperature, top_k, top_p, eos_id):
    device, size, rows = prompt_ids.device, prompt_ids.numel(), len(seeds)
    max_returned = min(size + max_new_tokens, model.config.block_size)
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    model.set_kv_cache(batch_size=rows, max_seq_length=max_returned, device=device)
    tokens = prompt_ids.view(1, -1).expand(rows, -1)
    input_pos = torch.arange(size, device=device, dtype=torch.int64)
    written = torch.empty(rows, max_returned - size, dtype=torch.int64, device=device)
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    steps = 0
    for step in range(max_returned - size):
        # The first pass reads the whole prompt; each later one the last token, at the next position.
        logits = model(tokens, input_pos, input_pos_maxp1=size + step)[:, -1]
        written[:, step] = pick(logits, generators, temperature, top_k, top_p)
        steps = step + 1
        ended |= written[:, step] == eos_id
        if ended.all():
            break
        tokens = written[:, step:step + 1]
        input_pos = torch.tensor([size + step], device=device, dtype=torch.int64)
    model.clear_kv_cache()
    stories = []
    for row in written[:, :steps].tolist():
        stories.append((row[:row.index(eos_id)], True) if eos_id in row else (row, False))
    return stories
