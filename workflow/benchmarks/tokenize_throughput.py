"""Tokenization throughput of the shards stage: characters per second, and per core.

Measures the ChatGLM3-6B tokenizer (SentencePiece, the reference run's) and a byte-level BPE
tokenizer trained by the pipeline's own code, each on

  real       the real fixture stories (TinyStoriesChinese row 0 + 54 picture books), repeated
  generated  stories from the builtin generator (storylm.stories.storygen)

through storylm.shards.build, the litdata optimize path the pipeline runs (JSONL in, shards
out, EOS after each story), at each --workers count; plus, as a baseline without litdata and
without process start-up, one in-process StoryTokenizer.encode_batch pass on one core.

    python workflow/benchmarks/tokenize_throughput.py --tokenizer-dir ../shared/fixtures/chatglm3-6b \\
        --stories 50000 --workers 1 2

Seconds are wall-clock for the whole build (both splits: the val split is a single story),
so they include litdata's worker start-up and the final merge of the index; chars/s/core is
chars/s divided by the number of workers, and chars/cpu_s divides by the CPU seconds of this
process and its worker processes (the Hugging Face tokenizers backend may run several threads
in one worker). chars/token leaves the EOS tokens out.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the storylm package in workflow/

REPO = Path(__file__).resolve().parents[2]
FIXTURE_STORIES = REPO.parent / "shared" / "fixtures" / "stories_zh"


def real_stories(repeat: int) -> list[str]:
    stories = []
    for name in ("tinystories_zh_row0.jsonl", "picturebooks_ccby.jsonl"):
        path = FIXTURE_STORIES / name
        with open(path, encoding="utf-8") as f:
            stories += [json.loads(line)["story_zh"] for line in f if line.strip()]
    # Numbered copies, so no two stories are the same text (as after the corpus stage's dedup).
    return [f"{story}（{i}）" for i in range(repeat) for story in stories]


def generated_stories(count: int, seed: int = 1234) -> list[str]:
    from storylm.stories.storygen import generate_stories

    return [story["text"] for story in generate_stories(count, seed)]


def write_corpus(texts: list[str], corpus_dir: Path) -> None:
    from storylm.io.jsonl import write_texts

    corpus_dir.mkdir(parents=True, exist_ok=True)
    write_texts(corpus_dir / "train.jsonl", texts)
    write_texts(corpus_dir / "val.jsonl", texts[:1])


def build_shards(corpus_dir: Path, tokenizer_dir: Path, out_dir: Path, workers: int, batch_size: int) -> dict:
    from storylm import shards

    kwargs = {"corpus_dir": corpus_dir, "tokenizer_dir": tokenizer_dir, "out_dir": out_dir, "chunk_bytes": "64MB",
              "workers": workers}
    if "batch_size" in inspect.signature(shards.build).parameters:
        kwargs["batch_size"] = batch_size
    return shards.build(**kwargs)


def train_bpe_tokenizer(texts: list[str], out_dir: Path, vocab_size: int) -> Path:
    from storylm.tokenizer import train_bpe

    train_bpe(iter(texts), vocab_size=vocab_size, min_frequency=2, out_dir=out_dir)
    return out_dir


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (litdata's worker processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def in_process(tokenizer_dir: Path, texts: list[str], batch_size: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and tokens of encode_batch over texts in this process (no litdata)."""
    from storylm.model.tokens import StoryTokenizer
    from storylm.tokenizer import batched

    tokenizer = StoryTokenizer(tokenizer_dir)
    start, cpu = time.perf_counter(), cpu_seconds()
    tokens = sum(len(ids) for batch in batched(texts, batch_size) for ids in tokenizer.encode_batch(batch))
    return time.perf_counter() - start, cpu_seconds() - cpu, tokens


def row(tokenizer: str, corpus: str, path: str, workers: int, stories: int, characters: int, tokens: int,
        seconds: float, cpu: float) -> dict:
    return {"tokenizer": tokenizer, "corpus": corpus, "path": path, "workers": workers, "stories": stories,
            "characters": characters, "tokens": tokens, "seconds": seconds, "chars/s": characters / seconds,
            "chars/s/core": characters / seconds / workers, "cpu_s": cpu, "chars/cpu_s": characters / max(cpu, 1e-9),
            "chars/token": characters / max(tokens - stories, 1)}


def print_table(rows: list[dict]) -> None:
    columns = ["tokenizer", "corpus", "path", "workers", "stories", "characters", "tokens", "seconds", "chars/s",
               "chars/s/core", "cpu_s", "chars/cpu_s", "chars/token"]
    formats = {"seconds": "{:.2f}", "chars/s": "{:,.0f}", "chars/s/core": "{:,.0f}", "chars/token": "{:.3f}",
               "stories": "{:,}", "characters": "{:,}", "tokens": "{:,}", "cpu_s": "{:.2f}", "chars/cpu_s": "{:,.0f}"}
    cells = [[formats.get(c, "{}").format(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in cells:
        print("| " + " | ".join(v.rjust(w) if i > 2 else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True)))
              + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO.parent / "shared" / "fixtures" / "chatglm3-6b",
                        help="the ChatGLM3-6B tokenizer directory (tokenizer.model, tokenizer_config.json)")
    parser.add_argument("--stories", type=int, default=50000, help="generated stories")
    parser.add_argument("--repeat", type=int, default=200, help="copies of the 55 real fixture stories")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=1024, help="stories per tokenizer call")
    parser.add_argument("--bpe-vocab-size", type=int, default=2048,
                        help="vocabulary of the trained BPE tokenizer (the default config's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each row this many times and keep the fastest (for a busy machine)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    corpora = {"real": real_stories(args.repeat), "generated": generated_stories(args.stories)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokenize-throughput-") as tmp:
        tmp = Path(tmp)
        # The BPE tokenizer is trained as the pipeline trains it: on (generated) train stories.
        bpe_dir = train_bpe_tokenizer(corpora["generated"], tmp / "bpe", args.bpe_vocab_size)
        tokenizers = {"chatglm3": args.tokenizer_dir, f"bpe-{args.bpe_vocab_size}": bpe_dir}
        for corpus_name, texts in corpora.items():
            corpus_dir = tmp / f"corpus-{corpus_name}"
            write_corpus(texts, corpus_dir)
            characters = sum(len(t) for t in texts)
            for tok_name, tok_dir in tokenizers.items():
                tries = []
                for _ in range(args.repeats):
                    seconds, cpu, tokens = in_process(tok_dir, texts, args.batch_size)
                    tries.append(row(tok_name, corpus_name, "encode_batch", 1, len(texts), characters, tokens,
                                     seconds, cpu))
                    print_progress(tries[-1])
                rows.append(min(tries, key=lambda r: r["seconds"]))
                for workers in args.workers:
                    tries = []
                    for attempt in range(args.repeats):
                        out = tmp / f"shards-{corpus_name}-{tok_name}-{workers}-{attempt}"
                        start, cpu = time.perf_counter(), cpu_seconds()
                        stats = build_shards(corpus_dir, tok_dir, out, workers, args.batch_size)
                        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
                        tries.append(row(tok_name, corpus_name, "shards.build", workers, len(texts), characters,
                                         stats["train_tokens"], seconds, cpu))
                        print_progress(tries[-1])
                        shutil.rmtree(out)
                    rows.append(min(tries, key=lambda r: r["seconds"]))
    print()
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, fastest of {args.repeats};"
          " shards.build seconds include litdata start-up and both splits;"
          " cpu_s counts this process and its worker processes")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def print_progress(r: dict) -> None:
    print(f"{r['tokenizer']:>10} {r['corpus']:>9} {r['path']:>12} workers={r['workers']}: {r['seconds']:.2f} s,"
          f" {r['chars/s/core']:,.0f} chars/s/core", flush=True)


if __name__ == "__main__":
    main()
