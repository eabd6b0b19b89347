"""What is bit-for-bit reproducible: one pretrain config trained again under other torch thread counts,
and one checkpoint evaluated and sampled under other thread counts.

    PYTHONPATH=workflow python workflow/benchmarks/determinism.py results/pretrain/<hash>/pretrain.yaml \
        [--threads 1 2 2] [--out /tmp/determinism]

Each training is `litgpt pretrain --config` on the rendered config into its own folder, with
OMP_NUM_THREADS set as Snakemake sets it for a job (the rule's threads, capped by --cores). It
prints, per training: the thread count, a sha256 of the final weights, the final val loss of
litgpt's log, and the sampled stories' and the whole-story bits per character of the checkpoint
under 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from storylm.results import litgpt_log  # noqa: E402


def weights_sha256(checkpoint: Path) -> str:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = state.get("model", state)
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train(config: Path, out: Path, threads: int) -> tuple[str, float]:
    env = {**os.environ, **{var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train.log"
    with open(log, "w") as f:
        litgpt = str(Path(sys.executable).parent / "litgpt")
        subprocess.run([litgpt, "pretrain", "--config", str(config), "--out_dir", str(out)], env=env, stdout=f,
                       stderr=subprocess.STDOUT, check=True)
    _, val = litgpt_log.parse(log)
    return weights_sha256(out / "final" / "lit_model.pth"), float(val["val_loss"].iloc[-1])


def probe(checkpoint_dir: Path, val: Path, threads: int) -> tuple[str, float]:
    """(a sha256 of 30 sampled stories, whole-story bits per character of the first val stories) under `threads`."""
    code = f"""
import hashlib, json, math, torch
torch.set_num_threads({threads})
from pathlib import Path
from storylm.model.checkpoint import load_model
from storylm.evaluate import story_scores, val_stories
from storylm.sample import never_sample_beyond, sample_prompt
from storylm.plan.schema import defaults
from storylm.model.tokens import StoryTokenizer
model, tokenizer = load_model(Path({str(checkpoint_dir)!r}), "cpu"), StoryTokenizer(Path({str(checkpoint_dir)!r}))
never_sample_beyond(model, tokenizer.ids)
settings = defaults()["sample"]
stories = sample_prompt(model, tokenizer, settings["prompts"][0], list(range(30)), settings)
scores = story_scores(model, *val_stories(Path({str(val)!r}), tokenizer, 20000), 256, 8)
print(hashlib.sha256(json.dumps(stories, ensure_ascii=False).encode()).hexdigest()[:16],
      repr(float(scores["nats"].sum() / scores["characters"].sum() / math.log(2))))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    sha, bpc = result.stdout.split()
    return sha, float(bpc)


def main(argv: list[str] | None = None) -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a rendered pretrain.yaml (results/pretrain/<hash>/pretrain.yaml)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/determinism"))
    args = parser.parse_args(argv)
    shards = Path(yaml.safe_load(args.config.read_text())["data"]["init_args"]["data_path"])
    corpus_val = next(Path("Data/corpus").glob("*/val.jsonl"))  # the one corpus of the config's workdir
    print(f"config {args.config}, shards {shards}, val stories {corpus_val}")
    print("training  threads  weights sha256    final val loss    samples@1t        samples@2t        story bpc@1t"
          "          story bpc@2t")
    for i, threads in enumerate(args.threads):
        out = args.out / f"train-{i}-threads-{threads}"
        sha, loss = train(args.config, out, threads)
        one, two = probe(out / "final", corpus_val, 1), probe(out / "final", corpus_val, 2)
        print(f"{i:8d}  {threads:7d}  {sha}  {loss:.10f}  {one[0]}  {two[0]}  {one[1]:.12f}  {two[1]:.12f}"
              + ("" if math.isclose(one[1], two[1], rel_tol=0, abs_tol=0) else "  (bpc differs by threads)"))


if __name__ == "__main__":
    main()
