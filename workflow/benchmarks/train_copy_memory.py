"""Peak memory and time of train_copy_fraction (storylm.stories.train_copy) on a train split of TinyStoriesChinese size.

Writes a synthetic train split in the corpus stage's format (JSON lines with "text") of
max(--chars) characters: builtin stories (storylm.stories.storygen) cycled with a running number
appended, so no two lines are equal, as after the corpus stage's dedup. The builtin
stories are more formulaic than TinyStoriesChinese, so the automaton finds more matches a
character than it would there: a pessimistic case for time.

Then, for each size in --chars, a fresh Python process reads the first that many
characters of the file the way the sample stage does (storylm.io.jsonl.iter_texts) and
computes train_copy over --samples stories of another seed (as stand-ins for model
samples), and prints its wall seconds, its CPU seconds (all of the process, imports
included; on a shared machine closer to what an idle core takes) and its peak RSS
(ru_maxrss), next to its RSS after the imports. A flat peak over the sizes shows that memory does not grow with
the split.

    python workflow/benchmarks/train_copy_memory.py --chars 90000000 900000000 --dir /tmp/train_copy_bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WORKFLOW))  # the storylm package in workflow/

# The measurement, run in a fresh process so that writing the file does not count.
CHILD = r"""
import json, resource, sys, time
from storylm.io.jsonl import iter_texts
from storylm.stories.storygen import generate_stories
from storylm.stories.train_copy import train_copy

path, max_chars, num_samples, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def vm_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def first_chars(texts, limit):
    total = 0
    for text in texts:
        if total >= limit:
            return
        total += len(text)
        yield text

samples = [s["text"][6:] for s in generate_stories(num_samples, 999_999)]  # drop a few opening characters
before = vm_rss_mb()
start = time.perf_counter()
result = train_copy({"samples": samples}, first_chars(iter_texts(path), max_chars), n)["samples"]
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"chars": max_chars, "seconds": round(seconds, 1),
                  "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "rss_after_imports_mb": round(before, 1),
                  "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                  "sample_ngrams": result["ngrams"], "train_copy_fraction": round(result["train_copy_fraction"], 4)}))
"""


def write_train(path: Path, chars: int, pool_size: int = 20_000) -> int:
    """Synthetic train split of at least `chars` characters; returns its stories."""
    from storylm.stories.storygen import generate_stories

    pool = [story["text"] for story in generate_stories(pool_size, 1)]
    written = stories = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < chars:
            for text in pool:
                text = f"{text}（{stories}）"
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                written += len(text)
                stories += 1
                if written >= chars:
                    break
    return stories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=float, nargs="+", default=[90e6, 900e6], help="train split sizes to measure")
    parser.add_argument("--samples", type=int, default=200, help="stories standing in for the model's samples")
    parser.add_argument("--n", type=int, default=20, help="n-gram length (sample.copy_ngram)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/train_copy_bench"))
    args = parser.parse_args()

    sizes = sorted(int(c) for c in args.chars)
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"train_{sizes[-1]}.jsonl"
    if not path.exists():  # the file is reused by later runs: writing 900M characters takes minutes
        start = time.perf_counter()
        stories = write_train(path.with_suffix(".partial"), sizes[-1])
        path.with_suffix(".partial").rename(path)
        print(f"wrote {path}: {stories} stories, {path.stat().st_size / 1e9:.2f} GB in"
              f" {time.perf_counter() - start:.0f} s", flush=True)
    for size in sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(size), str(args.samples), str(args.n)],
                             env=dict(os.environ, PYTHONPATH=str(WORKFLOW)), capture_output=True, text=True, check=True)
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
