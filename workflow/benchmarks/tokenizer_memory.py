"""Peak memory and time of the tokenizer stage's BPE training on a train split of TinyStoriesChinese size.

Writes (once) a synthetic train split in the corpus stage's format with train_copy_memory's
writer: builtin stories cycled with a running number appended (about 900M characters, 2.7 GB).
Then, for each case, a fresh Python process trains the byte-level BPE the way the tokenizer
stage does (storylm.tokenizer.training_texts + train_bpe, vocab 2048) and prints its wall
seconds, CPU seconds and peak RSS (ru_maxrss):

- the whole file with tokenizer.max_train_characters at its default (100M) and at 10M;
- no budget on the first 10M and 30M characters and on the whole file, to show how memory grows without one.

    python workflow/benchmarks/tokenizer_memory.py --dir /tmp/tokbench
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WORKFLOW))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import itertools, json, resource, sys, tempfile, time
from pathlib import Path
from storylm.io.jsonl import iter_texts
from storylm.tokenizer import train_bpe, training_texts

path, budget, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3])
budget = None if budget == "none" else int(budget)
if prefix:  # the first `prefix` characters of the file, as a file of their own
    part = Path(tempfile.mkdtemp()) / "train.jsonl"
    total = 0
    with open(part, "w", encoding="utf-8") as f:
        for text in iter_texts(path):
            if total >= prefix:
                break
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            total += len(text)
    path = part
start = time.perf_counter()
chars = 0
def counted(texts):
    global chars
    for text in texts:
        chars += len(text)
        yield text
train_bpe(counted(training_texts(Path(path), budget)), 2048, 2, Path(tempfile.mkdtemp()))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"budget": budget, "corpus_chars": prefix or "all", "trained_on_chars": chars,
                  "seconds": round(time.perf_counter() - start, 1),
                  "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                  "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}))
"""

CASES = [("100000000", 0), ("10000000", 0), ("none", 10_000_000), ("none", 30_000_000), ("none", 0)]


def main() -> None:
    from train_copy_memory import write_train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=900_000_000, help="size of the synthetic train split")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/train_copy_bench"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"train_{args.chars}.jsonl"
    if not path.exists():
        start = time.perf_counter()
        stories = write_train(path.with_suffix(".partial"), args.chars)
        path.with_suffix(".partial").rename(path)
        print(f"wrote {path}: {stories} stories, {path.stat().st_size / 1e9:.2f} GB in"
              f" {time.perf_counter() - start:.0f} s", flush=True)
    for budget, prefix in CASES:
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), budget, str(prefix)],
                             env=dict(os.environ, PYTHONPATH=str(WORKFLOW)), capture_output=True, text=True, check=True)
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
